//! Runs: created by the API or by the first receipt ingested for them; what their token carries;
//! their verification state.

use sqlx::Row as _;

use super::{Store, StoreError, now_micros};

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
    /// When the run ended (closed, or idle past `control.scitt.idle_secs`), unix µs; `None` while open.
    pub closed_at: Option<i64>,
    /// Why it ended: `closed` or `idle`.
    pub close_reason: Option<String>,
}

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
        closed_at: row.try_get("closed_at")?,
        close_reason: row.try_get("close_reason")?,
    })
}

const RUN_COLUMNS: &str = "id, tenant, labels, budget, created_at, last_activity, calls, input_tokens, output_tokens, \
     cost_micro_usd, rejected, verified_at, verify_ok, verify_checked, agent, grants, expires_at, token_id, revoked_at, \
     closed_at, close_reason";

impl Store {
    /// Creates a run; `false` when a run with this id exists already (nothing is changed).
    pub async fn create_run(
        &self,
        id: &str,
        tenant: &str,
        labels: &str,
        budget: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO runs (id, tenant, labels, budget, token_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(tenant)
        .bind(labels)
        .bind(budget)
        .bind(token_hash)
        .bind(now_micros())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted > 0)
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
}
