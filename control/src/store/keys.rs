//! Receipt-signing keys proxies register.

use sqlx::Row as _;

use super::{Store, StoreError, now_micros};

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

impl Store {
    /// Registers a key; returns the tenant that owns the key id (this one, or an earlier one).
    pub async fn put_key(&self, key_id: &str, alg: &str, public_key: &str, tenant: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO keys (key_id, alg, public_key, tenant, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (key_id) DO NOTHING",
        )
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
}
