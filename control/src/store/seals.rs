//! Sealed blobs: content-addressed bytes proxies seal calls into (`PUT /v1/seals/{sha256}`), and
//! the datasets a run's receipts name.
//!
//! The store keeps a blob under the address it is given; the API checks that the bytes hash to it
//! before storing, and verification hashes them again ([`Store::seal_digests`]), so bytes altered
//! in the database afterwards are found, not trusted.

use std::collections::HashMap;

use fleetforge_trust::canonical::{hex, sha256};
use fleetforge_trust::receipt::DatasetDigest;
use sqlx::Row as _;

use super::{Backend, Store, StoreError, now_micros};

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealRow {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Tenant of the principal that stored it.
    pub tenant: String,
}

/// Most bytes [`Store::seal_digests`] reads in one statement; a run whose blobs add up to more
/// is read in several, so verifying it never holds all of them at once.
const DIGEST_BATCH_BYTES: i64 = 64 << 20;

/// Most addresses in one `IN (…)` list.
const ADDRESSES_PER_STATEMENT: usize = 500;

impl Store {
    /// `$1, $2, …` (SQLite: `?, ?, …`) for an `IN (…)` list of `n` values.
    fn in_list(&self, n: usize) -> String {
        let one = |i: usize| match self.backend {
            Backend::Postgres => format!("${i}"),
            Backend::Sqlite => "?".to_owned(),
        };
        (1..=n).map(one).collect::<Vec<_>>().join(", ")
    }

    /// Stores `bytes` under `address` for `tenant`; `false` when the address is stored already
    /// (nothing is changed). The caller has checked that the bytes hash to the address.
    pub async fn put_seal(&self, address: &str, bytes: &[u8], tenant: &str) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO seals (address, bytes, size, tenant, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(address)
        .bind(bytes)
        .bind(i64::try_from(bytes.len()).unwrap_or(i64::MAX))
        .bind(tenant)
        .bind(now_micros())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted > 0)
    }

    /// One blob.
    pub async fn seal(&self, address: &str) -> Result<Option<SealRow>, StoreError> {
        let row = sqlx::query("SELECT bytes, tenant FROM seals WHERE address = $1")
            .bind(address)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| -> Result<SealRow, StoreError> {
            Ok(SealRow { bytes: r.try_get("bytes")?, tenant: r.try_get("tenant")? })
        })
        .transpose()
    }

    /// What the stored bytes of each of `addresses` hash to (SHA-256, hex), for those stored: a
    /// digest that differs from its address means the bytes were altered after they were stored.
    ///
    /// One statement reads the lengths of all of them, then one statement per 64 MiB of bytes
    /// (one for almost every run) reads and hashes them.
    pub async fn seal_digests(&self, addresses: &[&str]) -> Result<HashMap<String, String>, StoreError> {
        let mut lengths: Vec<(String, i64)> = Vec::new();
        for chunk in addresses.chunks(ADDRESSES_PER_STATEMENT) {
            let sql = format!(
                "SELECT address, CAST(length(bytes) AS BIGINT) AS n FROM seals WHERE address IN ({})",
                self.in_list(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for a in chunk {
                q = q.bind(*a);
            }
            for row in q.fetch_all(&self.pool).await? {
                lengths.push((row.try_get("address")?, row.try_get("n")?));
            }
        }
        let mut batches: Vec<Vec<String>> = Vec::new();
        let mut size = 0i64;
        for (address, n) in lengths {
            match batches.last_mut() {
                Some(batch)
                    if size.saturating_add(n) <= DIGEST_BATCH_BYTES && batch.len() < ADDRESSES_PER_STATEMENT =>
                {
                    size = size.saturating_add(n);
                    batch.push(address);
                }
                _ => {
                    size = n;
                    batches.push(vec![address]);
                }
            }
        }
        let mut out = HashMap::new();
        for batch in batches {
            let sql = format!("SELECT address, bytes FROM seals WHERE address IN ({})", self.in_list(batch.len()));
            let mut q = sqlx::query(&sql);
            for a in &batch {
                q = q.bind(a.as_str());
            }
            let blobs: Vec<(String, Vec<u8>)> = q
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("address")?, r.try_get("bytes")?)))
                .collect::<Result<_, sqlx::Error>>()?;
            // Hashing up to 64 MiB is CPU work: off the async workers.
            let digests = tokio::task::spawn_blocking(move || {
                blobs.into_iter().map(|(address, bytes)| (address, hex(&sha256(&bytes)))).collect::<Vec<_>>()
            })
            .await
            .map_err(|e| StoreError::Url(format!("seal digest worker failed: {e}")))?;
            out.extend(digests);
        }
        Ok(out)
    }

    /// The datasets a run's receipts named, by name then digest.
    pub async fn datasets(&self, run: &str) -> Result<Vec<DatasetDigest>, StoreError> {
        let rows = sqlx::query("SELECT name, sha256, size FROM run_datasets WHERE run_id = $1 ORDER BY name, sha256")
            .bind(run)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<DatasetDigest, StoreError> {
                Ok(DatasetDigest {
                    name: r.try_get("name")?,
                    sha256: r.try_get("sha256")?,
                    size: u64::try_from(r.try_get::<i64, _>("size")?).unwrap_or(0),
                })
            })
            .collect()
    }
}
