//! Capability revocations, in the order proxies poll them.

use sqlx::Row as _;

use super::{Store, StoreError, now_micros};

impl Store {
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

    /// The tenant of the run whose token carries revocation id `revocation_id`, if any.
    pub async fn token_tenant(&self, revocation_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT tenant FROM runs WHERE token_id = $1")
            .bind(revocation_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
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
}
