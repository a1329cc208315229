//! SCITT storage: ending runs with their outbox row, claiming outbox rows, registering signed
//! statements in the tenant's transparency log, and reading them back.
//!
//! A run ends ([`Store::end_run`]) in one transaction that sets `runs.closed_at` and writes the
//! `scitt_outbox` row, so an ended run always gets its statement and a run that did not end never
//! does. Workers claim rows with [`Store::claim_outbox`] — `FOR UPDATE SKIP LOCKED` on Postgres,
//! so two control replicas never claim one row; SQLite has one writer (`BEGIN IMMEDIATE`) — and
//! register the statement, mark the row done and commit in that same transaction.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleetforge_trust::canonical::hex;
use fleetforge_trust::merkle::Hash;
use sqlx::Row as _;

use super::{IngestTx, Store, StoreError, now_micros};

/// An outbox row: a run that ended and awaits its statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Row id.
    pub id: i64,
    /// The run's tenant.
    pub tenant: String,
    /// The run.
    pub run_id: String,
    /// Why it ended: `closed` or `idle`.
    pub reason: String,
}

/// A registered statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    /// SHA-256 of the COSE bytes, hex.
    pub id: String,
    /// Tenant whose log holds it.
    pub tenant: String,
    /// `run`, `receipt` or `external`.
    pub kind: String,
    /// The run or receipt id, or an external statement's CWT `sub`.
    pub subject: String,
    /// The run it is about, if any.
    pub run_id: Option<String>,
    /// CWT `iss`.
    pub issuer: String,
    /// The payload's content type.
    pub content_type: Option<String>,
    /// A run statement: the receipts it covers.
    pub receipts: Option<i64>,
    /// The COSE_Sign1 bytes.
    pub cose: Vec<u8>,
    /// Its leaf index in the tenant's log.
    pub log_index: u64,
    /// Registered, unix µs.
    pub created_at: i64,
}

/// A statement to register.
#[derive(Debug, Clone)]
pub struct NewStatement<'a> {
    /// SHA-256 of `cose`.
    pub id: Hash,
    /// Tenant whose log takes it.
    pub tenant: &'a str,
    /// `run`, `receipt` or `external`.
    pub kind: &'a str,
    /// What it is about.
    pub subject: &'a str,
    /// The run, if any.
    pub run_id: Option<&'a str>,
    /// CWT `iss`.
    pub issuer: &'a str,
    /// The payload's content type.
    pub content_type: Option<&'a str>,
    /// A run statement: the receipts it covers.
    pub receipts: Option<i64>,
    /// The COSE_Sign1 bytes.
    pub cose: &'a [u8],
}

/// One receipt of a run's chain, as a run statement summarises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// Receipt id.
    pub id: String,
    /// Lane.
    pub lane: String,
    /// Position in the lane.
    pub seq: i64,
    /// Receipt hash, hex.
    pub hash: String,
}

const STATEMENT_COLUMNS: &str =
    "id, tenant, kind, subject, run_id, issuer, content_type, receipts, cose, log_index, created_at";

macro_rules! statement_row {
    ($r:expr) => {{
        let r = $r;
        let id: String = r.try_get(0)?;
        let cose: String = r.try_get(8)?;
        let index: i64 = r.try_get(9)?;
        StatementRow {
            tenant: r.try_get(1)?,
            kind: r.try_get(2)?,
            subject: r.try_get(3)?,
            run_id: r.try_get(4)?,
            issuer: r.try_get(5)?,
            content_type: r.try_get(6)?,
            receipts: r.try_get(7)?,
            cose: STANDARD
                .decode(cose.as_bytes())
                .map_err(|e| StoreError::Corrupt(format!("statement {id} is not base64: {e}")))?,
            log_index: u64::try_from(index).map_err(|_| StoreError::Corrupt(format!("statement log index {index}")))?,
            created_at: r.try_get(10)?,
            id,
        }
    }};
}

impl Store {
    /// Ends run `id` for `reason` (`closed` or `idle`) unless it has ended already: sets its
    /// `closed_at` and writes its outbox row in one transaction. `true` when this call ended it.
    pub async fn end_run(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let now = now_micros();
        let mut tx = self.begin().await?;
        let ended =
            sqlx::query("UPDATE runs SET closed_at = $1, close_reason = $2 WHERE id = $3 AND closed_at IS NULL")
                .bind(now)
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if ended {
            sqlx::query(
                "INSERT INTO scitt_outbox (tenant, run_id, reason, created_at) SELECT tenant, id, $1, $2 FROM runs WHERE id = $3",
            )
            .bind(reason)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ended)
    }

    /// Open runs whose last receipt ended before `before` (unix µs), at most `limit`.
    pub async fn idle_runs(&self, before: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM runs WHERE closed_at IS NULL AND last_activity IS NOT NULL AND last_activity < $1 \
             ORDER BY last_activity LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// When run `id` ended and why; `None` while it is open.
    pub async fn run_end(&self, id: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT closed_at, close_reason FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let at: Option<i64> = r.try_get(0)?;
        let reason: Option<String> = r.try_get(1)?;
        Ok(at.map(|at| (at, reason.unwrap_or_default())))
    }

    /// Outbox rows not done yet: how many.
    pub async fn outbox_pending(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM scitt_outbox WHERE done_at IS NULL").fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
    }

    /// Opens an ingest transaction and claims up to `limit` outbox rows in it, oldest first.
    /// On Postgres rows another transaction holds are skipped (`FOR UPDATE SKIP LOCKED`).
    pub async fn claim_outbox(&self, limit: i64) -> Result<(IngestTx, Vec<OutboxItem>), StoreError> {
        let mut tx = self.begin_ingest().await?;
        let sql = match &tx {
            IngestTx::Pg(_) => {
                "SELECT id, tenant, run_id, reason FROM scitt_outbox WHERE done_at IS NULL \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
            // One writer at a time (BEGIN IMMEDIATE): nothing to skip.
            IngestTx::Any(_) => {
                "SELECT id, tenant, run_id, reason FROM scitt_outbox WHERE done_at IS NULL ORDER BY id LIMIT $1"
            }
        };
        let items = on_tx!(&mut tx, |conn| {
            let rows = sqlx::query(sql).bind(limit).fetch_all(conn).await?;
            rows.iter()
                .map(|r| {
                    Ok(OutboxItem {
                        id: r.try_get(0)?,
                        tenant: r.try_get(1)?,
                        run_id: r.try_get(2)?,
                        reason: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        Ok((tx, items))
    }

    /// Statement `id` (hex).
    pub async fn statement(&self, id: &str) -> Result<Option<StatementRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {STATEMENT_COLUMNS} FROM scitt_statements WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(statement_row!(&r)),
            None => None,
        })
    }

    /// The statements about run `id`, oldest first.
    pub async fn statements_of_run(&self, id: &str) -> Result<Vec<StatementRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STATEMENT_COLUMNS} FROM scitt_statements WHERE run_id = $1 ORDER BY created_at, log_index"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(statement_row!(r));
        }
        Ok(out)
    }
}

impl IngestTx {
    /// Run `id`'s receipts in chain order: lane (by its bytes, whatever the database's
    /// collation), then seq.
    pub async fn run_chain(&mut self, id: &str) -> Result<Vec<ChainLink>, StoreError> {
        let sql = "SELECT id, lane, seq, hash FROM receipts WHERE run_id = $1";
        let mut chain = on_tx!(self, |conn| {
            let rows = sqlx::query(sql).bind(id).fetch_all(conn).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(ChainLink { id: r.try_get(0)?, lane: r.try_get(1)?, seq: r.try_get(2)?, hash: r.try_get(3)? });
            }
            out
        });
        chain.sort_by(|a, b| (a.lane.as_bytes(), a.seq).cmp(&(b.lane.as_bytes(), b.seq)));
        Ok(chain)
    }

    /// The newest statement of `kind` about `subject`, if any.
    pub async fn latest_statement(&mut self, kind: &str, subject: &str) -> Result<Option<StatementRow>, StoreError> {
        let sql = format!(
            "SELECT {STATEMENT_COLUMNS} FROM scitt_statements WHERE kind = $1 AND subject = $2 \
             ORDER BY log_index DESC LIMIT 1"
        );
        Ok(on_tx!(self, |conn| {
            match sqlx::query(&sql).bind(kind).bind(subject).fetch_optional(conn).await? {
                Some(r) => Some(statement_row!(&r)),
                None => None,
            }
        }))
    }

    /// Statement `id` (hex), read in the transaction.
    pub async fn statement(&mut self, id: &str) -> Result<Option<StatementRow>, StoreError> {
        let sql = format!("SELECT {STATEMENT_COLUMNS} FROM scitt_statements WHERE id = $1");
        Ok(on_tx!(self, |conn| {
            match sqlx::query(&sql).bind(id).fetch_optional(conn).await? {
                Some(r) => Some(statement_row!(&r)),
                None => None,
            }
        }))
    }

    /// Registers a statement: appends its leaf to the tenant's log and stores it; its leaf index.
    pub async fn register_statement(&mut self, s: &NewStatement<'_>) -> Result<u64, StoreError> {
        let index = self.append_log(s.tenant, &[s.id]).await?;
        let id = hex(&s.id);
        let body = serde_json::json!({ "statement": id, "type": "fleetforge.scitt/v1" }).to_string();
        let at = i64::try_from(index).unwrap_or(i64::MAX);
        let now = now_micros();
        let cose = STANDARD.encode(s.cose);
        on_tx!(self, |conn| {
            sqlx::query("INSERT INTO log_leaves (tenant, log_index, hash, body) VALUES ($1, $2, $3, $4)")
                .bind(s.tenant)
                .bind(at)
                .bind(&id)
                .bind(&body)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO scitt_statements (id, tenant, kind, subject, run_id, issuer, content_type, receipts, cose, \
                 log_index, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&id)
            .bind(s.tenant)
            .bind(s.kind)
            .bind(s.subject)
            .bind(s.run_id)
            .bind(s.issuer)
            .bind(s.content_type)
            .bind(s.receipts)
            .bind(&cose)
            .bind(at)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        });
        Ok(index)
    }

    /// Marks outbox row `id` done with `statement`.
    pub async fn finish_outbox(&mut self, id: i64, statement: &str) -> Result<(), StoreError> {
        let now = now_micros();
        on_tx!(self, |conn| {
            sqlx::query("UPDATE scitt_outbox SET done_at = $1, statement = $2 WHERE id = $3")
                .bind(now)
                .bind(statement)
                .bind(id)
                .execute(conn)
                .await?;
        });
        Ok(())
    }

    /// The tenant's log head as this transaction sees it: (size, root hex).
    pub async fn log_head_in_tx(&mut self, tenant: &str) -> Result<(i64, String), StoreError> {
        Ok(on_tx!(self, |conn| {
            match sqlx::query("SELECT size, root FROM log_heads WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(conn)
                .await?
            {
                Some(r) => (r.try_get(0)?, r.try_get(1)?),
                None => (0, hex(&fleetforge_trust::canonical::sha256(b""))),
            }
        }))
    }
}
