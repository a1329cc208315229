//! Receipt ingest: verify a batch, then store what verifies in one transaction.
//!
//! Per receipt, in order: hash and Merkle proof ([`fleetforge_trust::verify::prove`]); the
//! signing key must be registered by the caller's tenant (or the caller sees every tenant); the
//! batch signature (checked once per distinct batch root, with a bounded cache across requests,
//! since a proxy signs about a hundred receipts per root); duplicates by id change nothing (a
//! different receipt under a stored id is rejected); the run must belong to the caller's tenant
//! (an unknown run is created in it); and the receipt must continue its lane's chain: next seq,
//! previous hash. A receipt that fails any check is rejected with a per-item error and the rest of
//! the batch still lands. Accepted receipts, the datasets they name, lane heads and run counters
//! are written in one transaction; a concurrent ingest of the same lane (another control replica)
//! is serialized by a row lock on Postgres and, as a last resort, by the unique
//! `(run_id, lane, seq)` constraint — the batch is then retried once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::canonical::hex;
use fleetforge_trust::receipt::{DatasetDigest, genesis_hex};
use fleetforge_trust::sign::verify_batch;
use fleetforge_trust::verify::prove;
use serde_json::Value;

use crate::auth::Principal;
use crate::store::{self, DatasetRow, ReceiptRow, Store, StoreError};

pub use fleetforge_trust::wire::{IngestResponse, ItemResult, ItemStatus};

/// Batch roots whose signature verified, so each is checked once.
#[derive(Debug, Default)]
pub struct SignatureCache {
    verified: Mutex<HashSet<(String, String)>>,
}

/// A batch's receipts arrive in one or two ingest requests, so only the last few roots of each
/// proxy are ever asked for again: 256 entries (about 80 KiB) cover a large fleet, and a miss only
/// costs one signature check. (A cache of thousands, over 1 MiB, takes minutes of steady load to
/// fill before its first clear: memory that reads as growth in a soak.)
const CACHE_MAX: usize = 256;

impl SignatureCache {
    fn check(&self, key_id: &str, public_key: &[u8], root: &[u8; 32], size: u64, sig: &str) -> bool {
        let entry = (key_id.to_owned(), format!("{}:{size}:{sig}", hex(root)));
        if self.verified.lock().unwrap_or_else(|e| e.into_inner()).contains(&entry) {
            return true;
        }
        if !verify_batch(public_key, root, size, sig) {
            return false;
        }
        let mut set = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= CACHE_MAX {
            set.clear();
        }
        set.insert(entry);
        true
    }
}

/// Ingest batches being parsed, proven and written at once. A batch of a thousand receipts holds
/// several MiB while it is in flight (its body, the parsed JSON, the rows to insert); letting every
/// batch that arrives proceed at once lets a burst set control's memory high water, which its
/// allocator then keeps. Waiting batches hold only their body; the shipper waits for the answer.
#[derive(Debug)]
pub struct IngestSlots(tokio::sync::Semaphore);

impl Default for IngestSlots {
    /// One slot per CPU, at least 2 and at most 8: the work is CPU-bound parsing and hashing,
    /// then a database transaction.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        Self(tokio::sync::Semaphore::new(cpus.clamp(2, 8)))
    }
}

impl IngestSlots {
    /// Waits for a slot; the batch holds it until the permit is dropped. (`None` only if the
    /// semaphore were closed, which nothing does: the batch then goes ahead unbounded.)
    pub async fn acquire(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.0.acquire().await.ok()
    }
}

/// Registered keys by id, loaded on first use and refreshed when an unknown id shows up.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: std::sync::RwLock<HashMap<String, (Vec<u8>, String)>>,
}

impl KeyCache {
    /// The public key and tenant of `key_id`, from the cache or the store.
    pub async fn get(&self, store: &Store, key_id: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        if let Some(hit) = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(key_id) {
            return Ok(Some(hit.clone()));
        }
        let Some(row) = store.key(key_id).await? else { return Ok(None) };
        let Ok(public) = URL_SAFE_NO_PAD.decode(&row.public_key) else { return Ok(None) };
        let entry = (public, row.tenant);
        self.keys.write().unwrap_or_else(|e| e.into_inner()).insert(key_id.to_owned(), entry.clone());
        Ok(Some(entry))
    }
}

struct Candidate {
    index: usize,
    row: ReceiptRow,
    /// The receipt hash (the log leaf's data).
    hash: [u8; 32],
    input_tokens: i64,
    output_tokens: i64,
    cost: i64,
    ended_micros: i64,
    /// The receipt's `datasets` (almost always empty: only a run's first receipt on a proxy).
    datasets: Vec<DatasetDigest>,
}

/// Unix microseconds of an RFC 3339 time; 0 when it does not parse.
pub(crate) fn micros_of(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(0))
        .unwrap_or(0)
}

/// One receipt of a batch, parsed, hashed and proven, with the text to store: the CPU work of an
/// ingest, done by [`prepare`] off the async workers.
#[derive(Debug)]
pub struct Prepared {
    id: String,
    run: Option<String>,
    proof: Result<fleetforge_trust::verify::Proven, fleetforge_trust::verify::VerifyError>,
    body: String,
}

/// Parses, canonicalizes, hashes and proves one receipt, and renders the text to store: about
/// 20 µs of CPU work.
fn prepare_one(value: &Value) -> Prepared {
    Prepared {
        id: value["id"].as_str().unwrap_or_default().to_owned(),
        run: value["run"].as_str().map(str::to_owned),
        proof: prove(value),
        body: value.to_string(),
    }
}

/// Prepares a batch on tokio's blocking pool, off the async workers. A large batch is split over
/// the machine's CPUs (at most four parts), since the shipper waits for the answer. The parts run
/// on the pool's threads, which live on between batches, rather than on threads started (and each
/// given its own allocator heap) for every batch.
pub async fn prepare(items: Vec<Value>) -> Result<Vec<Prepared>, StoreError> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(4);
    let per_part = if threads < 2 || items.len() < 64 { items.len().max(1) } else { items.len().div_ceil(threads) };
    let total = items.len();
    let mut items = items.into_iter();
    let mut parts = Vec::new();
    loop {
        let part: Vec<Value> = items.by_ref().take(per_part).collect();
        if part.is_empty() {
            break;
        }
        parts.push(tokio::task::spawn_blocking(move || part.iter().map(prepare_one).collect::<Vec<_>>()));
    }
    let mut out = Vec::with_capacity(total);
    for part in parts {
        out.extend(part.await.map_err(|e| StoreError::Worker(format!("preparing an ingest batch: {e}")))?);
    }
    Ok(out)
}

/// Verifies and stores a batch. Store failures are errors of the whole batch (nothing is half
/// written); everything about individual receipts is in the per-item results.
pub async fn ingest(
    store: &Store,
    cache: &SignatureCache,
    keys: &KeyCache,
    principal: &Principal,
    items: Vec<Value>,
) -> Result<IngestResponse, StoreError> {
    let prepared = prepare(items).await?;
    ingest_prepared(store, cache, keys, principal, prepared).await
}

/// [`ingest`] of receipts [`prepare`] has already parsed and proven.
pub async fn ingest_prepared(
    store: &Store,
    cache: &SignatureCache,
    keys: &KeyCache,
    principal: &Principal,
    items: Vec<Prepared>,
) -> Result<IngestResponse, StoreError> {
    let mut attempt = 0;
    loop {
        match ingest_once(store, cache, keys, principal, &items).await {
            Err(StoreError::Db(e)) if is_conflict(&e) && attempt == 0 => {
                tracing::info!(error = %e, "concurrent ingest of the same lane; retrying the batch once");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Unique violation, deadlock or serialization failure: another writer got there first.
fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() || matches!(db.code().as_deref(), Some("40P01" | "40001"))
        }
        _ => false,
    }
}

async fn ingest_once(
    store: &Store,
    cache: &SignatureCache,
    keys: &KeyCache,
    principal: &Principal,
    items: &[Prepared],
) -> Result<IngestResponse, StoreError> {
    let mut results: Vec<ItemResult> = items
        .iter()
        .map(|v| ItemResult { id: v.id.clone(), status: ItemStatus::Rejected, error: Some("not processed".into()) })
        .collect();
    let reject = |r: &mut ItemResult, why: String| {
        r.status = ItemStatus::Rejected;
        r.error = Some(why);
    };

    // 1. Stateless checks: hash and proof (done above), key, signature.
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut early_rejects: BTreeMap<String, i64> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        let proven = match &item.proof {
            Ok(p) => p,
            Err(e) => {
                reject(&mut results[index], e.to_string());
                if let Some(run) = &item.run {
                    *early_rejects.entry(run.clone()).or_default() += 1;
                }
                continue;
            }
        };
        let sig = &proven.receipt.signature;
        let run = proven.receipt.body.run.to_string();
        let Some((public_key, key_tenant)) = keys.get(store, &sig.key_id).await? else {
            *early_rejects.entry(run).or_default() += 1;
            reject(
                &mut results[index],
                format!("unknown signing key {}; register it with PUT /v1/keys/{{key_id}}", sig.key_id),
            );
            continue;
        };
        if !principal.can_read(&key_tenant) {
            reject(&mut results[index], format!("signing key {} is not registered in this tenant", sig.key_id));
            continue;
        }
        if !cache.check(&sig.key_id, &public_key, &proven.root, sig.batch.size, &sig.sig) {
            *early_rejects.entry(run).or_default() += 1;
            reject(&mut results[index], format!("the batch signature does not verify with key {}", sig.key_id));
            continue;
        }
        let body = &proven.receipt.body;
        let usage = body.usage.as_ref();
        let as_i64 = |v: Option<u64>| v.and_then(|n| i64::try_from(n).ok()).unwrap_or(0);
        candidates.push(Candidate {
            index,
            hash: proven.hash,
            input_tokens: as_i64(usage.and_then(|u| u.input_tokens)),
            output_tokens: as_i64(usage.and_then(|u| u.output_tokens)),
            cost: as_i64(usage.and_then(|u| u.cost_micro_usd)),
            ended_micros: micros_of(&body.ended_at),
            datasets: body.datasets.clone(),
            row: ReceiptRow {
                id: body.id.to_string(),
                run_id: body.run.to_string(),
                tenant: String::new(),
                lane: body.chain.lane.clone(),
                seq: i64::try_from(body.chain.seq).unwrap_or(i64::MAX),
                step: i64::try_from(body.step).unwrap_or(i64::MAX),
                hash: hex(&proven.hash),
                prev_hash: body.chain.prev_hash.clone(),
                kind: body.kind.clone(),
                started_at: body.started_at.clone(),
                ended_at: body.ended_at.clone(),
                method: body.upstream.method.clone(),
                host: body.upstream.host.clone(),
                path: body.upstream.path.clone(),
                status: body.seal.status.map(i64::from),
                allow: body.decision.allow,
                outcome: body.outcome.clone(),
                request_bytes: i64::try_from(body.seal.request_bytes).unwrap_or(i64::MAX),
                response_bytes: i64::try_from(body.seal.response_bytes).unwrap_or(i64::MAX),
                request_digest: body.seal.request_digest.clone(),
                response_digest: body.seal.response_digest.clone(),
                body: item.body.clone(),
                log_index: None,
            },
        });
    }

    // 2. Stateful checks and the write, in one transaction.
    let mut tx = store.begin_ingest().await?;
    let ids: Vec<&str> = candidates.iter().map(|c| c.row.id.as_str()).collect();
    let existing = tx.existing(&ids).await?;
    let mut seen_in_batch: HashMap<String, String> = HashMap::new();
    let mut fresh: Vec<Candidate> = Vec::new();
    for c in candidates {
        let prior = existing.get(&c.row.id).or_else(|| seen_in_batch.get(&c.row.id));
        match prior {
            Some(hash) if *hash == c.row.hash => {
                results[c.index].status = ItemStatus::Duplicate;
                results[c.index].error = None;
            }
            Some(_) => reject(&mut results[c.index], "a different receipt with this id is already stored".into()),
            None => {
                seen_in_batch.insert(c.row.id.clone(), c.row.hash.clone());
                fresh.push(c);
            }
        }
    }
    // Runs: their tenant decides where receipts belong.
    let mut runs: Vec<&str> = fresh.iter().map(|c| c.row.run_id.as_str()).collect();
    runs.sort_unstable();
    runs.dedup();
    let run_tenants = tx.run_tenants_or_create(&runs, principal.write_tenant()).await?;
    // Chains: in (run, lane, seq) order, each continuing its lane's head.
    let mut heads = tx.lane_heads(&runs).await?;
    fresh.sort_by(|a, b| (&a.row.run_id, &a.row.lane, a.row.seq).cmp(&(&b.row.run_id, &b.row.lane, b.row.seq)));
    let mut moved: HashSet<(String, String)> = HashSet::new();
    let mut accepted: Vec<Candidate> = Vec::new();
    let mut per_run: BTreeMap<String, store::RunDelta> = BTreeMap::new();
    for mut c in fresh {
        let tenant = run_tenants.get(&c.row.run_id).cloned().unwrap_or_default();
        let stats = per_run.entry(c.row.run_id.clone()).or_default();
        if !principal.can_read(&tenant) {
            reject(&mut results[c.index], format!("run {} is not in this tenant", c.row.run_id));
            continue;
        }
        let key = (c.row.run_id.clone(), c.row.lane.clone());
        let (head_seq, head_hash) =
            heads.get(&key).cloned().unwrap_or_else(|| (0, genesis_hex(&c.row.run_id, &c.row.lane)));
        if c.row.seq != head_seq + 1 || c.row.prev_hash != head_hash {
            stats.rejected += 1;
            reject(
                &mut results[c.index],
                format!(
                    "chain break in lane {}: expected seq {} after {}, got seq {} after {}",
                    c.row.lane,
                    head_seq + 1,
                    head_hash,
                    c.row.seq,
                    c.row.prev_hash
                ),
            );
            continue;
        }
        heads.insert(key.clone(), (c.row.seq, c.row.hash.clone()));
        moved.insert(key);
        c.row.tenant = tenant;
        stats.calls += 1;
        stats.input_tokens += c.input_tokens;
        stats.output_tokens += c.output_tokens;
        stats.cost_micro_usd += c.cost;
        stats.last_activity = stats.last_activity.max(c.ended_micros);
        results[c.index].status = ItemStatus::Accepted;
        results[c.index].error = None;
        accepted.push(c);
    }
    // The transparency log: each tenant's accepted receipts appended in this transaction, in
    // the order they were checked, so a receipt is stored if and only if it is logged.
    let mut tenants: Vec<&str> = accepted.iter().map(|c| c.row.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut indexes: HashMap<usize, i64> = HashMap::with_capacity(accepted.len());
    for tenant in tenants {
        let members: Vec<(usize, [u8; 32])> =
            accepted.iter().enumerate().filter(|(_, c)| c.row.tenant == tenant).map(|(i, c)| (i, c.hash)).collect();
        let hashes: Vec<[u8; 32]> = members.iter().map(|(_, h)| *h).collect();
        let first = tx.append_log(tenant, &hashes).await?;
        for (n, (i, _)) in members.iter().enumerate() {
            indexes.insert(*i, i64::try_from(first + n as u64).unwrap_or(i64::MAX));
        }
    }
    let rows: Vec<ReceiptRow> = accepted
        .iter()
        .enumerate()
        .map(|(i, c)| ReceiptRow { log_index: indexes.get(&i).copied(), ..c.row.clone() })
        .collect();
    tx.insert_receipts(&rows).await?;
    // Datasets ride on few receipts (a run's first on each proxy): no statement without them.
    let mut datasets: Vec<DatasetRow> = accepted
        .iter()
        .flat_map(|c| {
            c.datasets.iter().map(|d| DatasetRow {
                run_id: c.row.run_id.clone(),
                tenant: c.row.tenant.clone(),
                name: d.name.clone(),
                sha256: d.sha256.clone(),
                size: i64::try_from(d.size).unwrap_or(i64::MAX),
            })
        })
        .collect();
    if !datasets.is_empty() {
        datasets.sort_by(|a, b| (&a.run_id, &a.name, &a.sha256).cmp(&(&b.run_id, &b.name, &b.sha256)));
        datasets.dedup_by(|a, b| (&a.run_id, &a.name, &a.sha256) == (&b.run_id, &b.name, &b.sha256));
        tx.add_datasets(&datasets).await?;
    }
    let new_heads: Vec<(&str, &str, i64, &str)> = moved
        .iter()
        .filter_map(|key| heads.get(key).map(|(seq, hash)| (key.0.as_str(), key.1.as_str(), *seq, hash.as_str())))
        .collect();
    tx.set_lane_heads(&new_heads).await?;
    let deltas: Vec<(&str, store::RunDelta)> = per_run
        .iter()
        .filter(|(_, d)| d.calls > 0 || d.rejected > 0)
        .map(|(run, d)| (run.as_str(), d.clone()))
        .collect();
    tx.bump_runs(&deltas).await?;
    tx.commit().await?;
    // Refusals of receipts naming a run this principal may see, counted on the run.
    for (run, n) in early_rejects {
        if let Some(r) = store.run(&run).await?
            && principal.can_read(&r.tenant)
        {
            store.count_rejected(&run, n).await?;
        }
    }

    let count = |s: ItemStatus| results.iter().filter(|r| r.status == s).count();
    Ok(IngestResponse {
        accepted: count(ItemStatus::Accepted),
        duplicates: count(ItemStatus::Duplicate),
        rejected: count(ItemStatus::Rejected),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch large enough to be split keeps its order: result `i` is receipt `i`, whatever part
    /// prepared it. (Chain checks and per-item results depend on it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepare_keeps_the_batch_order() {
        for n in [0, 1, 63, 64, 65, 1001] {
            let items: Vec<Value> =
                (0..n).map(|i| serde_json::json!({"id": format!("r{i}"), "run": format!("run-{}", i % 7)})).collect();
            let prepared = prepare(items).await.unwrap();
            assert_eq!(prepared.len(), n);
            for (i, p) in prepared.iter().enumerate() {
                assert_eq!(p.id, format!("r{i}"));
                assert_eq!(p.run.as_deref(), Some(format!("run-{}", i % 7).as_str()));
                assert!(p.proof.is_err(), "receipt {i} is not a signed receipt and cannot prove");
            }
        }
    }
}
