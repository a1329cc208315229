//! The control service's store: Postgres in production, SQLite as the embedded default.
//!
//! One code path for both, over sqlx's `Any` driver: every statement uses `$1, $2, …` in the
//! order the parameters first appear (SQLite reads `$N` as named parameters numbered by first
//! appearance, so this order keeps both engines binding the same values), and the few places the
//! dialects differ (row locks) branch on [`Backend`]. Migrations live in `migrations/postgres` and
//! `migrations/sqlite` and are embedded at build time.
//!
//! Functions that must run inside an ingest transaction take `&mut AnyConnection`, so a caller
//! can pass a transaction (`&mut *tx`) or a pooled connection alike.

mod pg;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Row as _};

/// Why a store operation failed. The text goes to logs, never to API clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL is not usable.
    #[error("{0}")]
    Url(String),
}

/// Which engine the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Postgres.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Backend {
    /// Name for logs and the ready line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// Now, in unix microseconds.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A bearer token's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// `admin`, `proxy` or `reader`.
    pub role: String,
    /// Tenant.
    pub tenant: String,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// Run id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Labels (JSON object text).
    pub labels: String,
    /// Budget (JSON object text).
    pub budget: String,
    /// Created, unix µs.
    pub created_at: i64,
    /// Last receipt's end, unix µs.
    pub last_activity: Option<i64>,
    /// Receipts stored.
    pub calls: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost in micro-USD.
    pub cost_micro_usd: i64,
    /// Receipts refused at ingest.
    pub rejected: i64,
    /// When the run was last verified in full, unix µs.
    pub verified_at: Option<i64>,
    /// Whether that verification passed.
    pub verify_ok: Option<bool>,
    /// How many receipts it checked.
    pub verify_checked: Option<i64>,
    /// Agent named at creation.
    pub agent: Option<String>,
    /// Grants (JSON object text).
    pub grants: String,
    /// Run token expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Revocation id of the run token, hex.
    pub token_id: Option<String>,
    /// When the run's token was revoked, unix µs.
    pub revoked_at: Option<i64>,
}

/// A registered receipt-signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key id.
    pub key_id: String,
    /// `ed25519`.
    pub alg: String,
    /// Public key, base64url.
    pub public_key: String,
    /// Tenant that registered it.
    pub tenant: String,
}

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
}

/// A stored receipt, as read back.
#[derive(Debug, Clone)]
pub struct StoredReceipt {
    /// Receipt id.
    pub id: String,
    /// Lane.
    pub lane: String,
    /// Seq.
    pub seq: i64,
    /// Tenant.
    pub tenant: String,
    /// The receipt JSON.
    pub body: String,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// On Postgres, a native pool for the ingest transaction (see [`IngestTx`]).
    pg: Option<sqlx::PgPool>,
    backend: Backend,
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
}

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

fn run_row(row: &sqlx::any::AnyRow) -> Result<RunRow, sqlx::Error> {
    Ok(RunRow {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        labels: row.try_get("labels")?,
        budget: row.try_get("budget")?,
        created_at: row.try_get("created_at")?,
        last_activity: row.try_get("last_activity")?,
        calls: row.try_get("calls")?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        cost_micro_usd: row.try_get("cost_micro_usd")?,
        rejected: row.try_get("rejected")?,
        verified_at: row.try_get("verified_at")?,
        verify_ok: row.try_get::<Option<i64>, _>("verify_ok")?.map(|v| v != 0),
        verify_checked: row.try_get("verify_checked")?,
        agent: row.try_get("agent")?,
        grants: row.try_get("grants")?,
        expires_at: row.try_get("expires_at")?,
        token_id: row.try_get("token_id")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const RUN_COLUMNS: &str = "id, tenant, labels, budget, created_at, last_activity, calls, input_tokens, output_tokens, \
     cost_micro_usd, rejected, verified_at, verify_ok, verify_checked, agent, grants, expires_at, token_id, revoked_at";

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://PATH`; a SQLite file is created if missing).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Url(format!(
                "unsupported database URL scheme in {:?}; use postgres://… or leave DATABASE_URL unset for SQLite",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let options: AnyConnectOptions =
            url.parse().map_err(|e: sqlx::Error| StoreError::Url(format!("invalid database URL: {e}")))?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Postgres => 16,
                Backend::Sqlite => 4,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // One writer at a time: wait for it instead of failing with SQLITE_BUSY.
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        // Evidence: an acknowledged receipt must survive a power loss too.
                        sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let pg = match backend {
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(
                        url.parse().map_err(|e: sqlx::Error| StoreError::Url(format!("invalid database URL: {e}")))?,
                    )
                    .await?,
            ),
            Backend::Sqlite => None,
        };
        Ok(Self { pool, pg, backend })
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => POSTGRES.run(&self.pool).await?,
            Backend::Sqlite => SQLITE.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Runs one administrative statement (e.g. `CREATE DATABASE` for tests and benchmarks).
    pub async fn execute_admin(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`): two deferred transactions that both read and then write would deadlock, and
    /// SQLite breaks that with an immediate "database is locked" instead of waiting.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Postgres => self.pool.begin().await?,
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        })
    }

    /// Starts an ingest transaction (see [`IngestTx`]).
    pub async fn begin_ingest(&self) -> Result<IngestTx, StoreError> {
        Ok(match &self.pg {
            Some(pg) => IngestTx::Pg(pg.begin().await?),
            None => IngestTx::Any(self.begin().await?),
        })
    }

    /// Stores a token by its hash.
    pub async fn insert_token(
        &self,
        id: &str,
        token_hash: &str,
        role: &str,
        tenant: &str,
        label: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, token_hash, role, tenant, label, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(token_hash)
        .bind(role)
        .bind(tenant)
        .bind(label)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token with this hash.
    pub async fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query("SELECT role, tenant FROM tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| -> Result<TokenRow, sqlx::Error> {
                Ok(TokenRow { role: r.try_get("role")?, tenant: r.try_get("tenant")? })
            })
            .transpose()?)
    }

    /// Creates a run.
    pub async fn create_run(
        &self,
        id: &str,
        tenant: &str,
        labels: &str,
        budget: &str,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO runs (id, tenant, labels, budget, token_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(tenant)
        .bind(labels)
        .bind(budget)
        .bind(token_hash)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records what a run's capability token carries.
    pub async fn set_capability(
        &self,
        id: &str,
        agent: Option<&str>,
        grants: &str,
        expires_at: i64,
        token_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET agent = $1, grants = $2, expires_at = $3, token_id = $4 WHERE id = $5")
            .bind(agent)
            .bind(grants)
            .bind(expires_at)
            .bind(token_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revokes a capability id (idempotent); with `run`, marks the run revoked too. Returns
    /// whether it was new.
    pub async fn revoke(
        &self,
        revocation_id: &str,
        run: Option<&str>,
        tenant: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO revocations (revocation_id, run_id, tenant, reason, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (revocation_id) DO NOTHING",
        )
        .bind(revocation_id)
        .bind(run)
        .bind(tenant)
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if let Some(run) = run {
            sqlx::query("UPDATE runs SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(run)
                .execute(&self.pool)
                .await?;
        }
        Ok(inserted > 0)
    }

    /// Revocations after `seq`, oldest first: `(seq, revocation_id)`.
    pub async fn revocations(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query("SELECT seq, revocation_id FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("seq")?, r.try_get("revocation_id")?))).collect()
    }

    /// One run.
    pub async fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(run_row).transpose()?)
    }

    /// Runs, newest first; `tenant` `None` = every tenant; keyset after `(created_at, id)`.
    pub async fn runs(
        &self,
        tenant: Option<&str>,
        limit: i64,
        after: Option<(i64, &str)>,
    ) -> Result<Vec<RunRow>, StoreError> {
        let (after_at, after_id) = after.unwrap_or((i64::MAX, ""));
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ($1 = '' OR tenant = $1) AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        let after_id = if after.is_some() { after_id.to_owned() } else { "\u{10ffff}".to_owned() };
        let rows = sqlx::query(&sql)
            .bind(tenant.unwrap_or(""))
            .bind(after_at)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(run_row).collect::<Result<_, _>>()?)
    }

    /// Registers a key; returns the tenant that owns the key id (this one, or an earlier one).
    pub async fn put_key(&self, key_id: &str, alg: &str, public_key: &str, tenant: &str) -> Result<String, StoreError> {
        let insert = match self.backend {
            Backend::Postgres | Backend::Sqlite => {
                "INSERT INTO keys (key_id, alg, public_key, tenant, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING"
            }
        };
        sqlx::query(insert)
            .bind(key_id)
            .bind(alg)
            .bind(public_key)
            .bind(tenant)
            .bind(now_micros())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT tenant FROM keys WHERE key_id = $1").bind(key_id).fetch_one(&self.pool).await?;
        Ok(row.try_get("tenant")?)
    }

    /// Every registered key.
    pub async fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query("SELECT key_id, alg, public_key, tenant FROM keys ORDER BY key_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<KeyRow, StoreError> {
                Ok(KeyRow {
                    key_id: r.try_get("key_id")?,
                    alg: r.try_get("alg")?,
                    public_key: r.try_get("public_key")?,
                    tenant: r.try_get("tenant")?,
                })
            })
            .collect()
    }

    /// A run's receipts with `seq > after`, in (seq, lane) order: about `limit` of them, and
    /// never part of a seq (several lanes can share one), so `after = last seq` pages correctly.
    pub async fn receipts(&self, run: &str, after: i64, limit: i64) -> Result<Vec<StoredReceipt>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, lane, seq, tenant, body FROM receipts WHERE run_id = $1 AND seq > $2 ORDER BY seq, lane LIMIT $3",
        )
        .bind(run)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut page: Vec<StoredReceipt> = rows.iter().map(stored).collect::<Result<_, _>>()?;
        if i64::try_from(page.len()).unwrap_or(i64::MAX) >= limit
            && let Some(last) = page.last().map(|r| r.seq)
        {
            // The page may have cut a seq short: take that seq whole.
            page.retain(|r| r.seq != last);
            let rest = sqlx::query(
                "SELECT id, lane, seq, tenant, body FROM receipts WHERE run_id = $1 AND seq = $2 ORDER BY lane",
            )
            .bind(run)
            .bind(last)
            .fetch_all(&self.pool)
            .await?;
            for r in &rest {
                page.push(stored(r)?);
            }
        }
        Ok(page)
    }

    /// Records the outcome of a full verification of a run.
    pub async fn set_verified(&self, run: &str, ok: bool, checked: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET verified_at = $1, verify_ok = $2, verify_checked = $3 WHERE id = $4")
            .bind(now_micros())
            .bind(i64::from(ok))
            .bind(checked)
            .bind(run)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts receipts of an existing run refused before they reached the chain checks.
    pub async fn count_rejected(&self, run: &str, n: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET rejected = rejected + $1 WHERE id = $2")
            .bind(n)
            .bind(run)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One registered key.
    pub async fn key(&self, key_id: &str) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query("SELECT key_id, alg, public_key, tenant FROM keys WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| -> Result<KeyRow, StoreError> {
            Ok(KeyRow {
                key_id: r.try_get("key_id")?,
                alg: r.try_get("alg")?,
                public_key: r.try_get("public_key")?,
                tenant: r.try_get("tenant")?,
            })
        })
        .transpose()
    }

    /// Every receipt of a run, in (lane, seq) order, for verification.
    pub async fn chain(&self, run: &str) -> Result<Vec<StoredReceipt>, StoreError> {
        let rows = sqlx::query("SELECT id, lane, seq, tenant, body FROM receipts WHERE run_id = $1 ORDER BY lane, seq")
            .bind(run)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored).collect()
    }

    /// One receipt.
    pub async fn receipt(&self, id: &str) -> Result<Option<StoredReceipt>, StoreError> {
        let row = sqlx::query("SELECT id, lane, seq, tenant, body FROM receipts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(stored).transpose()
    }
}

fn stored(r: &sqlx::any::AnyRow) -> Result<StoredReceipt, StoreError> {
    Ok(StoredReceipt {
        id: r.try_get("id")?,
        lane: r.try_get("lane")?,
        seq: r.try_get("seq")?,
        tenant: r.try_get("tenant")?,
        body: r.try_get("body")?,
    })
}

// ---- inside an ingest transaction ---------------------------------------------------------------

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

const RECEIPT_COLUMNS: [&str; 23] = [
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
                .bind(now);
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
             THEN v.column7 ELSE runs.last_activity END \
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
