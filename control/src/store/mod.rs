//! The control service's store: Postgres in production, SQLite as the embedded default.
//!
//! One code path for both, over sqlx's `Any` driver: every statement uses `$1, $2, …` in the
//! order the parameters first appear (SQLite reads `$N` as named parameters numbered by first
//! appearance, so this order keeps both engines binding the same values), and the few places the
//! dialects differ (row locks) branch on [`Backend`]. Migrations live in `migrations/postgres` and
//! `migrations/sqlite` and are embedded at build time.
//!
//! One module per resource: [`runs`], [`receipts`] (reading), [`keys`], [`tokens`],
//! [`capabilities`] (revocations), [`leases`] (the budget slices of fleets), [`seals`] (sealed
//! blobs and run datasets), and [`ingest`], the transaction `POST /v1/receipts` writes in.
//!
//! The ingest step itself is written once (`crate::ingest`, over [`IngestTx`]); only its seven
//! statements have a second form, on Postgres, where the native driver binds arrays (`= ANY($1)`,
//! `UNNEST`) — which sqlx's `Any` driver cannot — for about twice the rows per second.

/// Runs `$body` with `$conn` bound to the open ingest transaction's connection, whichever driver
/// it is (the SQLite `Any` one or native Postgres): one statement written once for both.
macro_rules! on_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match $tx {
            $crate::store::IngestTx::Any(t) => {
                let $conn = &mut **t;
                $body
            }
            $crate::store::IngestTx::Pg(t) => {
                let $conn = &mut **t;
                $body
            }
        }
    };
}

mod attestations;
mod capabilities;
mod ingest;
mod keys;
mod leases;
mod log;
mod pg;
mod receipts;
mod retention;
mod runs;
mod scitt;
mod seals;
mod sessions;
#[cfg(test)]
pub(crate) mod tests;
mod tokens;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

pub use self::attestations::AttestationRow;
pub use self::ingest::{
    DatasetRow, IngestTx, ReceiptRow, RunDelta, add_datasets, bump_runs, existing, insert_receipts, lane_heads,
    run_tenants_or_create, set_lane_heads,
};
pub use self::keys::KeyRow;
pub use self::leases::{Granted, LeaseRow};
pub use self::log::{LogEntry, LogHead, log_origin};
pub use self::receipts::StoredReceipt;
pub use self::runs::RunRow;
pub use self::scitt::{ChainLink, NewStatement, OutboxItem, StatementRow};
pub use self::seals::SealRow;
pub use self::tokens::TokenRow;

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
    /// Stored data is not what control writes (altered or partly written).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A blocking worker preparing or hashing data panicked (a bug: see the log).
    #[error("worker failed: {0}")]
    Worker(String),
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

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// On Postgres, a native pool for the ingest transaction (see [`IngestTx`]).
    pg: Option<sqlx::PgPool>,
    backend: Backend,
}

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Cuts a connection's socket buffers back to at most 8 KiB as it goes back to its pool.
/// sqlx keeps the largest message a connection ever carried (an ingest batch's arrays: a few
/// MiB) in its write and read buffers, so without this each pooled connection's share of memory
/// creeps up to the biggest batch it has seen; a small reallocation per release is cheap beside
/// any statement.
fn shrink<C: sqlx::Connection>(conn: &mut C) -> Result<bool, sqlx::Error> {
    conn.shrink_buffers();
    Ok(true)
}

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
            .after_release(|conn, _| Box::pin(async move { shrink(conn) }))
            .connect_with(options)
            .await?;
        let pg = match backend {
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .after_release(|conn, _| Box::pin(async move { shrink(conn) }))
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
}
