//! Receipts: `POST /v1/receipts` (ingest, proxy role), `GET /v1/runs/{id}/receipts`,
//! `GET /v1/receipts/{id}` and `GET /v1/runs/{id}/verify` (signatures, chain, and the sealed blobs
//! receipts name).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::text::hex;
use fleetforge_trust::verify::{ChainProblem, Link, check_chain, verify};
use fleetforge_trust::wire::ReceiptBatch;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, App, ErrorKind, bad_query, json_error, principal, require, require_json, run_of};
use crate::auth::Role;
use crate::ingest::{self, IngestResponse};
use crate::replay::blob_addresses;

/// Receipt page parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReceiptPage {
    /// Return receipts with `chain.seq` greater than this (default 0).
    after: Option<i64>,
    /// Page size (default 100, max 1000).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/runs/{id}/receipts", params(("id" = String, Path), ReceiptPage), responses((status = 200), (status = 404)), security(("bearer" = [])))]
pub(super) async fn run_receipts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ReceiptPage>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    run_of(&app, &p, &id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = app.store.receipts(&id, q.after.unwrap_or(0), limit).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.seq)).flatten();
    let receipts: Vec<Value> = rows.iter().map(crate::store::StoredReceipt::json).filter(|v| !v.is_null()).collect();
    Ok(Json(json!({ "receipts": receipts, "next_after": next })))
}

#[utoipa::path(get, path = "/v1/receipts/{id}", params(("id" = String, Path)), responses((status = 200), (status = 404)), security(("bearer" = [])))]
pub(super) async fn one_receipt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    match app.store.receipt(&id).await? {
        Some(r) if p.can_read(&r.tenant) => Ok(Json(r.json())),
        _ => Err(ApiError::not_found(&format!("receipt {id}"))),
    }
}

/// `GET /v1/runs/{id}/verify` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    /// Every signature, proof and chain link checked out, and every sealed blob the receipts name
    /// is on control with bytes that hash to its address.
    pub ok: bool,
    /// Receipts checked.
    pub checked: usize,
    /// Receipts whose bodies retention pruned: their chain links and log leaves are checked,
    /// their signatures no longer can be.
    #[serde(skip_serializing_if = "is_zero")]
    pub pruned: usize,
    /// What is wrong, naming the receipt.
    pub problems: Vec<Problem>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One verification problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// The receipt.
    pub receipt_id: String,
    /// What is wrong.
    pub problem: String,
}

#[utoipa::path(get, path = "/v1/runs/{id}/verify", params(("id" = String, Path)), responses((status = 200, body = VerifyReport), (status = 404)), security(("bearer" = [])))]
pub(super) async fn verify_run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<VerifyReport>> {
    let p = principal(&app, &headers).await?;
    run_of(&app, &p, &id).await?;
    Ok(Json(verify_report(&app, &id).await?))
}

/// Log inclusion: each receipt that verified is a leaf of its tenant's transparency log, holding
/// the receipt's own hash, whose inclusion proof reaches the log's current head.
async fn check_log(app: &App, run: &str, links: &[Link]) -> ApiResult<Vec<Problem>> {
    let entries: std::collections::HashMap<String, crate::store::LogEntry> =
        app.store.log_entries_of_run(run).await?.into_iter().collect();
    let mut problems = Vec::new();
    let mut leaves: Vec<(String, String, u64, [u8; 32])> = Vec::new();
    for link in links {
        let Some(entry) = entries.get(&link.id) else { continue };
        match entry.index {
            None => problems.push(Problem {
                receipt_id: link.id.clone(),
                problem: "not in the transparency log yet (control appends older receipts when it starts)".into(),
            }),
            Some(_) if hex(&entry.hash) != link.hash => problems.push(Problem {
                receipt_id: link.id.clone(),
                problem: "the hash stored beside the receipt is not the receipt's hash".into(),
            }),
            Some(index) => leaves.push((link.id.clone(), entry.tenant.clone(), index, entry.hash)),
        }
    }
    let mut tenants: Vec<&str> = leaves.iter().map(|l| l.1.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    for tenant in tenants {
        let head = app.store.log_head(tenant).await?;
        let mine: Vec<&(String, String, u64, [u8; 32])> = leaves.iter().filter(|l| l.1 == tenant).collect();
        let proofs: Vec<Option<Vec<[u8; 32]>>> = app
            .store
            .with_log_nodes(tenant, |nodes| {
                Ok(mine.iter().map(|l| fleetforge_trust::tlog::inclusion(nodes, l.2, head.size).ok()).collect())
            })
            .await?
            .unwrap_or_default();
        for (i, leaf) in mine.iter().enumerate() {
            let reaches = proofs.get(i).and_then(Option::as_ref).is_some_and(|p| {
                fleetforge_trust::merkle::root_from_path(&leaf.3, leaf.2, head.size, p) == Some(head.root)
            });
            if !reaches {
                problems.push(Problem {
                    receipt_id: leaf.0.clone(),
                    problem: format!(
                        "its inclusion proof (leaf {}) does not reach the head of the log of tenant {tenant} (size {})",
                        leaf.2, head.size
                    ),
                });
            }
        }
    }
    Ok(problems)
}

/// Checks every receipt of run `id` (the caller has checked the run is visible) and records
/// the verdict on the run.
pub(super) async fn verify_report(app: &App, id: &str) -> ApiResult<VerifyReport> {
    let keys: std::collections::HashMap<String, Vec<u8>> = app
        .store
        .keys()
        .await?
        .into_iter()
        .filter_map(|k| Some((k.key_id, URL_SAFE_NO_PAD.decode(k.public_key).ok()?)))
        .collect();
    let rows = app.store.chain(id).await?;
    let mut problems = Vec::new();
    let mut links = Vec::new();
    // (receipt id, blob address) of every sealed blob a receipt names.
    let mut blobs: Vec<(String, String)> = Vec::new();
    let mut pruned = 0;
    for r in &rows {
        if r.pruned_at.is_some() {
            // What is left of a pruned receipt still holds its place in the chain and the log.
            pruned += 1;
            links.push(Link {
                id: r.id.clone(),
                lane: r.lane.clone(),
                seq: u64::try_from(r.seq).unwrap_or(0),
                hash: r.hash.clone(),
                prev_hash: r.prev_hash.clone(),
            });
            continue;
        }
        let value: Value = match serde_json::from_str(&r.body) {
            Ok(v) => v,
            Err(e) => {
                problems
                    .push(Problem { receipt_id: r.id.clone(), problem: format!("stored receipt is not JSON: {e}") });
                continue;
            }
        };
        match verify(&value, |kid| keys.get(kid).cloned()) {
            Ok(v) => {
                if v.receipt.body.id.to_string() != r.id || v.receipt.body.run.as_str() != id {
                    problems.push(Problem {
                        receipt_id: r.id.clone(),
                        problem: "stored receipt names another id or run".into(),
                    });
                }
                links.push(Link {
                    id: r.id.clone(),
                    lane: v.receipt.body.chain.lane.clone(),
                    seq: v.receipt.body.chain.seq,
                    hash: hex(&v.hash),
                    prev_hash: v.receipt.body.chain.prev_hash.clone(),
                });
                blobs.extend(blob_addresses(&v.receipt.body).into_iter().map(|a| (r.id.clone(), a.to_owned())));
            }
            Err(e) => problems.push(Problem { receipt_id: r.id.clone(), problem: e.to_string() }),
        }
    }
    for ChainProblem { receipt_id, problem } in check_chain(id, &links) {
        problems.push(Problem { receipt_id, problem });
    }
    problems.extend(check_blobs(app, &blobs).await?);
    problems.extend(check_log(app, id, &links).await?);
    let ok = problems.is_empty();
    app.store.set_verified(id, ok, i64::try_from(rows.len()).unwrap_or(i64::MAX)).await?;
    Ok(VerifyReport { ok, checked: rows.len(), pruned, problems })
}

/// Problems with the sealed blobs receipts name (`(receipt id, address)` each): missing from
/// control, or stored with bytes that no longer hash to their address. The blobs of a run are read
/// together ([`crate::store::Store::seal_digests`]), not one query per receipt. A blob counts
/// whichever tenant stored it: its address fixes its bytes.
async fn check_blobs(app: &App, blobs: &[(String, String)]) -> ApiResult<Vec<Problem>> {
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut addresses: Vec<&str> = blobs.iter().map(|(_, a)| a.as_str()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    let digests = app.store.seal_digests(&addresses).await?;
    let problems = blobs
        .iter()
        .filter_map(|(receipt, address)| {
            let problem = match digests.get(address) {
                None => format!("seal blob {address} of receipt {receipt} is not on control (not yet shipped, or deleted)"),
                Some(digest) if digest != address => format!(
                    "seal blob {address} of receipt {receipt} does not match its address: it was altered after it was stored"
                ),
                Some(_) => return None,
            };
            Some(Problem { receipt_id: receipt.clone(), problem })
        })
        .collect();
    Ok(problems)
}

#[utoipa::path(post, path = "/v1/receipts", request_body = ReceiptBatch,
    responses((status = 200, body = IngestResponse), (status = 401), (status = 403), (status = 413)), security(("bearer" = [])))]
pub(super) async fn post_receipts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<IngestResponse>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Proxy, Role::Admin])?;
    require_json(&headers)?;
    let max_batch = app.max_batch;
    let _slot = app.ingest_slots.acquire().await;
    // Parsing a batch, then canonicalizing and hashing its receipts, is CPU work: on the blocking
    // pool.
    let receipts = tokio::task::spawn_blocking(move || {
        let batch: ReceiptBatch = serde_json::from_slice(&body).map_err(json_error)?;
        if batch.receipts.len() > max_batch {
            return Err(ApiError::new(
                ErrorKind::BatchTooLarge,
                format!("{} receipts in one batch; the limit is {max_batch} (control.max_batch)", batch.receipts.len()),
            ));
        }
        Ok(batch.receipts)
    })
    .await
    .map_err(|e| ApiError::internal(format!("ingest worker failed: {e}")))??;
    let prepared = ingest::prepare(receipts).await?;
    let start = Instant::now();
    let answer = ingest::ingest_prepared(&app.store, &app.signatures, &app.keys, &p, prepared).await?;
    app.metrics.ingested(answer.accepted, answer.duplicates, answer.rejected, start.elapsed());
    Ok(Json(answer))
}
