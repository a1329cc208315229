//! Web-view sign-in secrets (one-time login codes and sessions), kept by their SHA-256.

use sqlx::Row as _;

use super::{Store, StoreError, now_micros};

impl Store {
    /// Stores a login code or session (`kind`) until `expires_at` (unix µs), and forgets expired ones.
    pub async fn insert_ui_secret(
        &self,
        token_hash: &str,
        kind: &str,
        tenant: Option<&str>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at < $1").bind(now_micros()).execute(&self.pool).await?;
        sqlx::query("INSERT INTO ui_sessions (token_hash, kind, tenant, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(kind)
            .bind(tenant)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Spends a live login code: `Some(tenant)` (`Some(None)`: every tenant) once, then `None`.
    pub async fn take_login_code(&self, token_hash: &str) -> Result<Option<Option<String>>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM ui_sessions WHERE token_hash = $1 AND kind = 'code' AND expires_at > $2 RETURNING tenant",
        )
        .bind(token_hash)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>("tenant")).transpose()?)
    }

    /// The tenant of a live session: `Some(tenant)` (`Some(None)`: every tenant), or `None`.
    pub async fn ui_session(&self, token_hash: &str) -> Result<Option<Option<String>>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant FROM ui_sessions WHERE token_hash = $1 AND kind = 'session' AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_micros())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>("tenant")).transpose()?)
    }
}
