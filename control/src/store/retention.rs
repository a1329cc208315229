//! Retention and legal holds.
//!
//! A run on hold keeps everything. Otherwise [`Store::prune_receipts`] empties the bodies of
//! receipts ingested before a cutoff — each keeps its row, chain position, hash and log leaf, so
//! the run's chain and the log still verify — and [`Store::prune_seals`] deletes sealed blobs
//! stored before a cutoff that no held run's receipts name. Every pruning is itself appended to
//! the tenant's transparency log, in the transaction that prunes, as a record
//! `{"at", "hash", "pruned", "subject", "type": "fleetforge.pruned/v1"}` (JCS; its SHA-256 is the
//! leaf's data), so what is gone is provably gone by retention, not silently missing.

use std::collections::{BTreeMap, HashSet};

use fleetforge_trust::canonical::{hex, sha256, to_canonical};
use fleetforge_trust::merkle::Hash;
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;
use sqlx::Row as _;

use super::{IngestTx, Store, StoreError, now_micros};

/// Most items pruned in one transaction.
const BATCH: i64 = 1000;

/// The record of one pruning, as logged.
fn record(kind: &str, subject: &str, hash: &str, at: i64) -> Result<(Hash, String), StoreError> {
    let v = serde_json::json!({
        "at": rfc3339(at),
        "hash": hash,
        "pruned": kind,
        "subject": subject,
        "type": "fleetforge.pruned/v1",
    });
    let bytes = to_canonical(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((sha256(text.as_bytes()), text))
}

impl IngestTx {
    /// Appends pruning records to `tenant`'s log: the records' leaves and their bodies.
    async fn log_records(&mut self, tenant: &str, records: &[(Hash, String)]) -> Result<(), StoreError> {
        let hashes: Vec<Hash> = records.iter().map(|(h, _)| *h).collect();
        let first = self.append_log(tenant, &hashes).await?;
        for (i, (hash, body)) in records.iter().enumerate() {
            let index = i64::try_from(first + i as u64).unwrap_or(i64::MAX);
            let sql = "INSERT INTO log_leaves (tenant, log_index, hash, body) VALUES ($1, $2, $3, $4)";
            on_tx!(self, |conn| {
                sqlx::query(sql).bind(tenant).bind(index).bind(hex(hash)).bind(body.as_str()).execute(conn).await?;
            });
        }
        Ok(())
    }

    async fn execute(&mut self, sql: &str, binds: &[&str], at: Option<i64>) -> Result<(), StoreError> {
        on_tx!(self, |conn| {
            let mut q = sqlx::query(sql);
            if let Some(at) = at {
                q = q.bind(at);
            }
            for b in binds {
                q = q.bind(*b);
            }
            q.execute(conn).await?;
        });
        Ok(())
    }
}

/// `$from, $from+1, …` for `n` values.
fn list(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

impl Store {
    /// Puts run `id` on legal hold (or releases it with `None`).
    pub async fn set_hold(&self, id: &str, reason: Option<&str>) -> Result<(), StoreError> {
        match reason {
            Some(reason) => {
                sqlx::query("UPDATE runs SET held_at = $2, hold_reason = $3 WHERE id = $1")
                    .bind(id)
                    .bind(now_micros())
                    .bind(reason)
                    .execute(&self.pool)
                    .await?;
            }
            None => {
                sqlx::query("UPDATE runs SET held_at = NULL, hold_reason = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// When run `id` was put on hold, and why.
    pub async fn hold(&self, id: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT held_at, hold_reason FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let at: Option<i64> = r.try_get(0)?;
        let reason: Option<String> = r.try_get(1)?;
        Ok(at.map(|at| (at, reason.unwrap_or_default())))
    }

    /// Empties the bodies of receipts ingested before `before` (unix µs) of runs not on hold,
    /// logging each pruning; the number pruned.
    pub async fn prune_receipts(&self, before: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let rows = sqlx::query(
                "SELECT r.id, r.tenant, r.hash FROM receipts r JOIN runs u ON u.id = r.run_id \
                 WHERE r.ingested_at < $1 AND r.pruned_at IS NULL AND r.log_index IS NOT NULL AND u.held_at IS NULL \
                 ORDER BY r.ingested_at, r.id LIMIT $2",
            )
            .bind(before)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let now = now_micros();
            let mut by_tenant: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
            for r in &rows {
                by_tenant.entry(r.try_get(1)?).or_default().push((r.try_get(0)?, r.try_get(2)?));
            }
            let mut tx = self.begin_ingest().await?;
            for (tenant, items) in &by_tenant {
                let records =
                    items.iter().map(|(id, hash)| record("receipt", id, hash, now)).collect::<Result<Vec<_>, _>>()?;
                tx.log_records(tenant, &records).await?;
                let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
                for chunk in ids.chunks(500) {
                    let sql = format!(
                        "UPDATE receipts SET body = '', pruned_at = $1 WHERE id IN ({}) AND pruned_at IS NULL",
                        list(2, chunk.len())
                    );
                    tx.execute(&sql, chunk, Some(now)).await?;
                }
            }
            tx.commit().await?;
            total += rows.len() as u64;
        }
    }

    /// Deletes sealed blobs stored before `before` (unix µs) that no receipt of a held run names,
    /// logging each deletion in the log of the blob's tenant; the number deleted.
    pub async fn prune_seals(&self, before: i64) -> Result<u64, StoreError> {
        // The blobs held runs need: every address their receipts name.
        let held = sqlx::query(
            "SELECT r.body FROM receipts r JOIN runs u ON u.id = r.run_id \
             WHERE u.held_at IS NOT NULL AND r.pruned_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut keep: HashSet<String> = HashSet::new();
        for r in &held {
            let body: String = r.try_get(0)?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                for field in ["request_blob", "response_meta", "response_digest"] {
                    if let Some(a) = v["seal"][field].as_str() {
                        keep.insert(a.to_owned());
                    }
                }
            }
        }
        let rows = sqlx::query("SELECT address, tenant FROM seals WHERE created_at < $1 ORDER BY created_at, address")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        let mut by_tenant: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &rows {
            let address: String = r.try_get(0)?;
            if !keep.contains(&address) {
                by_tenant.entry(r.try_get(1)?).or_default().push(address);
            }
        }
        let now = now_micros();
        let mut total = 0;
        for (tenant, addresses) in &by_tenant {
            for chunk in addresses.chunks(BATCH as usize) {
                let mut tx = self.begin_ingest().await?;
                let records = chunk.iter().map(|a| record("seal", a, a, now)).collect::<Result<Vec<_>, _>>()?;
                tx.log_records(tenant, &records).await?;
                let binds: Vec<&str> = chunk.iter().map(String::as_str).collect();
                tx.execute(&format!("DELETE FROM seals WHERE address IN ({})", list(1, binds.len())), &binds, None)
                    .await?;
                tx.commit().await?;
                total += chunk.len() as u64;
            }
        }
        Ok(total)
    }
}
