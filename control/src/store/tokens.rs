//! Bearer tokens of the API, kept by their SHA-256.

use sqlx::Row as _;

use super::{Store, StoreError, now_micros};

/// A bearer token's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// `admin`, `proxy` or `reader`.
    pub role: String,
    /// Tenant.
    pub tenant: String,
}

impl Store {
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
}
