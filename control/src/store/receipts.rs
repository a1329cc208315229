//! Receipts as read back: a run's page, its whole chain, one receipt.

use sqlx::Row as _;

use super::{Store, StoreError};

/// A stored receipt, as read back.
#[derive(Debug, Clone)]
pub struct StoredReceipt {
    /// Receipt id.
    pub id: String,
    /// Its run.
    pub run_id: String,
    /// Lane.
    pub lane: String,
    /// Seq.
    pub seq: i64,
    /// Tenant.
    pub tenant: String,
    /// The receipt JSON (empty once pruned).
    pub body: String,
    /// Its hash (hex).
    pub hash: String,
    /// The previous hash of its lane (hex).
    pub prev_hash: String,
    /// When retention pruned its body (unix microseconds).
    pub pruned_at: Option<i64>,
}

impl StoredReceipt {
    /// The receipt as the API serves it: its JSON, or for a pruned one what is left of it
    /// (`{"id", "pruned": true, "pruned_at", "hash", "chain": {"lane", "seq", "prev_hash"}}`).
    pub fn json(&self) -> serde_json::Value {
        match self.pruned_at {
            Some(at) => serde_json::json!({
                "id": self.id,
                "pruned": true,
                "pruned_at": fleetforge_trust::text::rfc3339_from_unix_micros(at),
                "hash": self.hash,
                "chain": { "lane": self.lane, "seq": self.seq, "prev_hash": self.prev_hash },
            }),
            None => serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl Store {
    /// A run's receipts with `seq > after`, in (seq, lane) order: about `limit` of them, and
    /// never part of a seq (several lanes can share one), so `after = last seq` pages correctly.
    pub async fn receipts(&self, run: &str, after: i64, limit: i64) -> Result<Vec<StoredReceipt>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, run_id, lane, seq, tenant, body, hash, prev_hash, pruned_at FROM receipts WHERE run_id = $1 AND seq > $2 ORDER BY seq, lane LIMIT $3",
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
                "SELECT id, run_id, lane, seq, tenant, body, hash, prev_hash, pruned_at FROM receipts WHERE run_id = $1 AND seq = $2 ORDER BY lane",
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

    /// Every receipt of a run, in (lane, seq) order, for verification.
    pub async fn chain(&self, run: &str) -> Result<Vec<StoredReceipt>, StoreError> {
        let rows = sqlx::query("SELECT id, run_id, lane, seq, tenant, body, hash, prev_hash, pruned_at FROM receipts WHERE run_id = $1 ORDER BY lane, seq")
            .bind(run)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored).collect()
    }

    /// One receipt.
    pub async fn receipt(&self, id: &str) -> Result<Option<StoredReceipt>, StoreError> {
        let row = sqlx::query(
            "SELECT id, run_id, lane, seq, tenant, body, hash, prev_hash, pruned_at FROM receipts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored).transpose()
    }
}

fn stored(r: &sqlx::any::AnyRow) -> Result<StoredReceipt, StoreError> {
    Ok(StoredReceipt {
        id: r.try_get("id")?,
        run_id: r.try_get("run_id")?,
        lane: r.try_get("lane")?,
        seq: r.try_get("seq")?,
        tenant: r.try_get("tenant")?,
        body: r.try_get("body")?,
        hash: r.try_get("hash")?,
        prev_hash: r.try_get("prev_hash")?,
        pruned_at: r.try_get("pruned_at")?,
    })
}
