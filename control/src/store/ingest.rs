//! The ingest transaction: what `crate::ingest` writes a batch in. Portable statements over the
//! `Any` driver (SQLite), or the native Postgres ones in `super::pg`; every step has one entry
//! point on [`IngestTx`].
//!
//! Functions take `&mut AnyConnection`, so a caller can pass a transaction (`&mut *tx`) or a pooled
//! connection alike.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row as _};

use super::{Store, StoreError, now_micros, pg};

/// One receipt to insert, with the columns extracted from it.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    /// Receipt id.
    pub id: String,
    /// Run.
    pub run_id: String,
    /// Tenant (the run's).
    pub tenant: String,
    /// Lane.
    pub lane: String,
    /// Seq in the lane.
    pub seq: i64,
    /// Step.
    pub step: i64,
    /// Receipt hash (hex).
    pub hash: String,
    /// Previous hash (hex).
    pub prev_hash: String,
    /// `call` or `tunnel`.
    pub kind: String,
    /// Start time (RFC 3339).
    pub started_at: String,
    /// End time (RFC 3339).
    pub ended_at: String,
    /// Method.
    pub method: String,
    /// Host.
    pub host: String,
    /// Path.
    pub path: String,
    /// Status.
    pub status: Option<i64>,
    /// Allowed out.
    pub allow: bool,
    /// Outcome.
    pub outcome: String,
    /// Request bytes.
    pub request_bytes: i64,
    /// Response bytes.
    pub response_bytes: i64,
    /// Request digest.
    pub request_digest: Option<String>,
    /// Response digest.
    pub response_digest: Option<String>,
    /// The receipt JSON as received.
    pub body: String,
    /// Its leaf index in its tenant's transparency log.
    pub log_index: Option<i64>,
}

/// A dataset a stored receipt names, for `run_datasets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRow {
    /// Run.
    pub run_id: String,
    /// Tenant (the run's).
    pub tenant: String,
    /// The dataset's configured name.
    pub name: String,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
}

/// An open ingest transaction: portable statements on SQLite, array-bound statements over the
/// native driver on Postgres (the hot path of `POST /v1/receipts`).
pub enum IngestTx {
    /// SQLite, through the `Any` driver.
    Any(sqlx::Transaction<'static, sqlx::Any>),
    /// Postgres, native.
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl IngestTx {
    /// Hashes of the receipts among `ids` that are already stored.
    pub async fn existing(&mut self, ids: &[&str]) -> Result<HashMap<String, String>, StoreError> {
        match self {
            IngestTx::Any(tx) => existing(tx, ids).await,
            IngestTx::Pg(tx) => pg::existing(tx, ids).await,
        }
    }

    /// The tenant of each of `runs`, creating the missing ones in `tenant`.
    pub async fn run_tenants_or_create(
        &mut self,
        runs: &[&str],
        tenant: &str,
    ) -> Result<HashMap<String, String>, StoreError> {
        match self {
            IngestTx::Any(tx) => run_tenants_or_create(tx, runs, tenant).await,
            IngestTx::Pg(tx) => pg::run_tenants_or_create(tx, runs, tenant).await,
        }
    }

    /// The heads of every lane of `runs`, locked against concurrent ingests.
    pub async fn lane_heads(&mut self, runs: &[&str]) -> Result<HashMap<(String, String), (i64, String)>, StoreError> {
        match self {
            IngestTx::Any(tx) => lane_heads(tx, runs).await,
            IngestTx::Pg(tx) => pg::lane_heads(tx, runs).await,
        }
    }

    /// Moves lane heads: `(run, lane, seq, hash)` each.
    pub async fn set_lane_heads(&mut self, heads: &[(&str, &str, i64, &str)]) -> Result<(), StoreError> {
        match self {
            IngestTx::Any(tx) => set_lane_heads(tx, heads).await,
            IngestTx::Pg(tx) => pg::set_lane_heads(tx, heads).await,
        }
    }

    /// Inserts receipts.
    pub async fn insert_receipts(&mut self, rows: &[ReceiptRow]) -> Result<(), StoreError> {
        match self {
            IngestTx::Any(tx) => insert_receipts(tx, rows).await,
            IngestTx::Pg(tx) => pg::insert_receipts(tx, rows).await,
        }
    }

    /// Records the datasets receipts name (distinct rows; one already recorded is kept).
    pub async fn add_datasets(&mut self, rows: &[DatasetRow]) -> Result<(), StoreError> {
        match self {
            IngestTx::Any(tx) => add_datasets(tx, rows).await,
            IngestTx::Pg(tx) => pg::add_datasets(tx, rows).await,
        }
    }

    /// Adds a batch's figures to its runs.
    pub async fn bump_runs(&mut self, deltas: &[(&str, RunDelta)]) -> Result<(), StoreError> {
        match self {
            IngestTx::Any(tx) => bump_runs(tx, deltas).await,
            IngestTx::Pg(tx) => pg::bump_runs(tx, deltas).await,
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            IngestTx::Any(tx) => tx.commit().await?,
            IngestTx::Pg(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Rolls the transaction back (dropping it does too, less promptly).
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            IngestTx::Any(tx) => tx.rollback().await?,
            IngestTx::Pg(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

impl Store {
    /// Starts an ingest transaction (see [`IngestTx`]).
    pub async fn begin_ingest(&self) -> Result<IngestTx, StoreError> {
        Ok(match &self.pg {
            Some(pg) => IngestTx::Pg(pg.begin().await?),
            None => IngestTx::Any(self.begin().await?),
        })
    }
}

/// Hashes of the receipts among `ids` that are already stored.
pub async fn existing(conn: &mut AnyConnection, ids: &[&str]) -> Result<HashMap<String, String>, StoreError> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(500) {
        let sql = format!("SELECT id, hash FROM receipts WHERE id IN ({})", placeholders(conn, chunk.len()));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.insert(row.try_get("id")?, row.try_get("hash")?);
        }
    }
    Ok(out)
}

/// Placeholders for `rows` tuples of `width` values each, every value bound once, in order:
/// `($1, $2), ($3, $4)` on Postgres, `(?, ?), (?, ?)` on SQLite. (SQLite looks up each named
/// parameter by a linear scan, which makes a 10,000-parameter `$N` statement quadratic; plain
/// `?` parameters bind by position.)
fn tuples(conn: &AnyConnection, rows: usize, width: usize) -> String {
    let sqlite = conn.backend_name().eq_ignore_ascii_case("sqlite");
    let mut out = String::with_capacity(rows * width * 6);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 1..=width {
            if c > 1 {
                out.push_str(", ");
            }
            if sqlite {
                out.push('?');
            } else {
                out.push_str(&format!("${}", r * width + c));
            }
        }
        out.push(')');
    }
    out
}

/// `$1, $2, …` (or `?, ?, …` on SQLite) for an `IN (…)` list of `n` values.
fn placeholders(conn: &AnyConnection, n: usize) -> String {
    let list = tuples(conn, 1, n);
    list[1..list.len() - 1].to_owned()
}

/// The tenant of each of `runs`, creating the missing ones in `tenant`.
pub async fn run_tenants_or_create(
    conn: &mut AnyConnection,
    runs: &[&str],
    tenant: &str,
) -> Result<HashMap<String, String>, StoreError> {
    let now = now_micros();
    let mut out = HashMap::new();
    for chunk in runs.chunks(500) {
        let sql = format!(
            "INSERT INTO runs (id, tenant, labels, budget, created_at) VALUES {} ON CONFLICT (id) DO NOTHING",
            tuples(conn, chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for run in chunk {
            q = q.bind(*run).bind(tenant).bind(r#"{"created_by":"ingest"}"#).bind("{}").bind(now);
        }
        q.execute(&mut *conn).await?;
        let sql = format!("SELECT id, tenant FROM runs WHERE id IN ({})", placeholders(conn, chunk.len()));
        let mut q = sqlx::query(&sql);
        for run in chunk {
            q = q.bind(*run);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.insert(row.try_get("id")?, row.try_get("tenant")?);
        }
    }
    Ok(out)
}

/// The heads of every lane of `runs` (the portable path; SQLite has one writer, so no row locks).
pub async fn lane_heads(
    conn: &mut AnyConnection,
    runs: &[&str],
) -> Result<HashMap<(String, String), (i64, String)>, StoreError> {
    let mut out = HashMap::new();
    for chunk in runs.chunks(500) {
        let sql = format!(
            "SELECT run_id, lane, seq, hash FROM lanes WHERE run_id IN ({}) ORDER BY run_id, lane",
            placeholders(conn, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for run in chunk {
            q = q.bind(*run);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.insert((row.try_get("run_id")?, row.try_get("lane")?), (row.try_get("seq")?, row.try_get("hash")?));
        }
    }
    Ok(out)
}

/// Moves lane heads: `(run, lane, seq, hash)` each.
pub async fn set_lane_heads(conn: &mut AnyConnection, heads: &[(&str, &str, i64, &str)]) -> Result<(), StoreError> {
    for chunk in heads.chunks(500) {
        let sql = format!(
            "INSERT INTO lanes (run_id, lane, seq, hash) VALUES {} \
             ON CONFLICT (run_id, lane) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            tuples(conn, chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for (run, lane, seq, hash) in chunk {
            q = q.bind(*run).bind(*lane).bind(*seq).bind(*hash);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

const RECEIPT_COLUMNS: [&str; 24] = [
    "id",
    "run_id",
    "tenant",
    "lane",
    "seq",
    "step",
    "hash",
    "prev_hash",
    "kind",
    "started_at",
    "ended_at",
    "method",
    "host",
    "path",
    "status",
    "allow",
    "outcome",
    "request_bytes",
    "response_bytes",
    "request_digest",
    "response_digest",
    "body",
    "log_index",
    "ingested_at",
];

/// Inserts receipts with multi-row INSERTs (500 rows per statement).
pub async fn insert_receipts(conn: &mut AnyConnection, rows: &[ReceiptRow]) -> Result<(), StoreError> {
    let now = now_micros();
    let n = RECEIPT_COLUMNS.len();
    for chunk in rows.chunks(500) {
        let sql =
            format!("INSERT INTO receipts ({}) VALUES {}", RECEIPT_COLUMNS.join(", "), tuples(conn, chunk.len(), n));
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.id.as_str())
                .bind(r.run_id.as_str())
                .bind(r.tenant.as_str())
                .bind(r.lane.as_str())
                .bind(r.seq)
                .bind(r.step)
                .bind(r.hash.as_str())
                .bind(r.prev_hash.as_str())
                .bind(r.kind.as_str())
                .bind(r.started_at.as_str())
                .bind(r.ended_at.as_str())
                .bind(r.method.as_str())
                .bind(r.host.as_str())
                .bind(r.path.as_str())
                .bind(r.status)
                .bind(r.allow)
                .bind(r.outcome.as_str())
                .bind(r.request_bytes)
                .bind(r.response_bytes)
                .bind(r.request_digest.as_deref())
                .bind(r.response_digest.as_deref())
                .bind(r.body.as_str())
                .bind(r.log_index)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Records the datasets receipts name, 500 rows per statement; a row already recorded is kept.
pub async fn add_datasets(conn: &mut AnyConnection, rows: &[DatasetRow]) -> Result<(), StoreError> {
    for chunk in rows.chunks(500) {
        let sql = format!(
            "INSERT INTO run_datasets (run_id, tenant, name, sha256, size) VALUES {} \
             ON CONFLICT (run_id, name, sha256) DO NOTHING",
            tuples(conn, chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.run_id.as_str())
                .bind(r.tenant.as_str())
                .bind(r.name.as_str())
                .bind(r.sha256.as_str())
                .bind(r.size);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A batch's figures for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunDelta {
    /// Receipts accepted.
    pub calls: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost in micro-USD.
    pub cost_micro_usd: i64,
    /// Receipts refused.
    pub rejected: i64,
    /// Latest `ended_at`, unix microseconds.
    pub last_activity: i64,
}

/// Adds a batch's figures to its runs, in one statement per 500 runs.
pub async fn bump_runs(conn: &mut AnyConnection, deltas: &[(&str, RunDelta)]) -> Result<(), StoreError> {
    for chunk in deltas.chunks(500) {
        // VALUES columns are named column1, column2, … on both engines.
        let sql = format!(
            "UPDATE runs SET calls = runs.calls + v.column2, input_tokens = runs.input_tokens + v.column3, \
             output_tokens = runs.output_tokens + v.column4, cost_micro_usd = runs.cost_micro_usd + v.column5, \
             rejected = runs.rejected + v.column6, \
             last_activity = CASE WHEN runs.last_activity IS NULL OR runs.last_activity < v.column7 \
             THEN v.column7 ELSE runs.last_activity END, \
             closed_at = CASE WHEN v.column2 > 0 THEN NULL ELSE runs.closed_at END, \
             close_reason = CASE WHEN v.column2 > 0 THEN NULL ELSE runs.close_reason END \
             FROM (VALUES {}) AS v WHERE runs.id = v.column1",
            tuples(conn, chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for (run, d) in chunk {
            q = q
                .bind(*run)
                .bind(d.calls)
                .bind(d.input_tokens)
                .bind(d.output_tokens)
                .bind(d.cost_micro_usd)
                .bind(d.rejected)
                .bind(d.last_activity);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
