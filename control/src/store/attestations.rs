//! The attestation vault's rows (`attestations`).

use sqlx::Row as _;

use super::{Store, StoreError, now_micros};

/// A stored attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationRow {
    /// Its id.
    pub id: String,
    /// Tenant of the principal that stored it.
    pub tenant: String,
    /// The run it is about.
    pub run_id: Option<String>,
    /// `in-toto`, `slsa-provenance` or `dsse`.
    pub kind: String,
    /// The in-toto predicate type.
    pub predicate_type: Option<String>,
    /// SHA-256 (hex) of the body.
    pub sha256: String,
    /// The body as received.
    pub body: String,
    /// Unix microseconds.
    pub created_at: i64,
}

fn row(r: &sqlx::any::AnyRow) -> Result<AttestationRow, StoreError> {
    Ok(AttestationRow {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        run_id: r.try_get("run_id")?,
        kind: r.try_get("kind")?,
        predicate_type: r.try_get("predicate_type")?,
        sha256: r.try_get("sha256")?,
        body: r.try_get("body")?,
        created_at: r.try_get("created_at")?,
    })
}

const COLUMNS: &str = "id, tenant, run_id, kind, predicate_type, sha256, body, created_at";

impl Store {
    /// Stores `a` unless its id is taken; `false` (nothing changed) when it is.
    pub async fn put_attestation(&self, a: &AttestationRow) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO attestations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
        ))
        .bind(a.id.as_str())
        .bind(a.tenant.as_str())
        .bind(a.run_id.as_deref())
        .bind(a.kind.as_str())
        .bind(a.predicate_type.as_deref())
        .bind(a.sha256.as_str())
        .bind(a.body.as_str())
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// One attestation.
    pub async fn attestation(&self, id: &str) -> Result<Option<AttestationRow>, StoreError> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM attestations WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// The attestations linked to `run`, oldest first.
    pub async fn run_attestations(&self, run: &str) -> Result<Vec<AttestationRow>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {COLUMNS} FROM attestations WHERE run_id = $1 ORDER BY created_at, id"))
                .bind(run)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row).collect()
    }
}
