//! The transparency log: `GET /v1/log/{tenant}/head` (the signed tree head, with its C2SP
//! checkpoint), `/checkpoint` (the checkpoint alone, as witness tooling reads it),
//! `/inclusion/{receipt_id}` and `/consistency?from=N&to=M` (RFC 9162 proofs).
//!
//! Heads are signed by control's newest capability root key (`GET /v1/keys`), as a C2SP signed
//! note whose key name is the log's origin, `fleetforge/log/{tenant}`. A tenant's log is readable
//! by the tenant's tokens and the bootstrap token; another tenant's answers 404, as an unknown
//! tenant does — an empty log (size 0) for a tenant a token may read.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use fleetforge_trust::canonical::hex;
use fleetforge_trust::tlog::{self, Checkpoint};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, App, bad_query, principal};
use crate::auth::Principal;
use crate::store::LogHead;

/// The log origin (and note key name) of `tenant`.
pub fn origin(tenant: &str) -> String {
    crate::store::log_origin(tenant)
}

/// A signed tree head.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignedHead {
    /// The tenant.
    pub tenant: String,
    /// The log's origin line and note key name.
    pub origin: String,
    /// Number of receipts logged.
    pub size: u64,
    /// The tree head (RFC 9162 `MTH`), hex.
    pub root: String,
    /// The head as a C2SP `tlog-checkpoint` signed note.
    pub checkpoint: String,
    /// The signing key as `GET /v1/keys` lists it.
    pub key_id: String,
    /// The signing key as a note verifier key (`name+hash+base64`).
    pub verifier_key: String,
}

/// An inclusion proof.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InclusionProof {
    /// The tenant.
    pub tenant: String,
    /// The receipt.
    pub receipt: String,
    /// The receipt hash (the leaf's data; the leaf hash is SHA-256(0x00 ‖ it)), hex.
    pub receipt_hash: String,
    /// Its leaf index.
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The head of that tree, hex.
    pub root: String,
    /// The audit path (RFC 9162 §2.1.3), leaf side first, hex.
    pub path: Vec<String>,
}

/// A consistency proof.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyProof {
    /// The tenant.
    pub tenant: String,
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The head at `from`, hex (a verifier compares it with the head it kept).
    pub from_root: String,
    /// The head at `to`, hex.
    pub to_root: String,
    /// The proof (RFC 9162 §2.1.4), hex.
    pub proof: Vec<String>,
}

/// `?size=N` of an inclusion proof.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AtSize {
    size: Option<u64>,
}

/// `?from=N&to=M` of a consistency proof.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Between {
    from: u64,
    to: Option<u64>,
}

/// The caller may read `tenant`'s log.
fn readable(p: &Principal, tenant: &str) -> ApiResult<()> {
    if p.can_read(tenant) { Ok(()) } else { Err(ApiError::not_found(&format!("log of tenant {tenant}"))) }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "transparency log");
    ApiError::internal("the control service could not compute the proof; see its log")
}

/// Signs `head` of `tenant` as a checkpoint.
pub fn sign(app: &App, tenant: &str, head: &LogHead) -> ApiResult<SignedHead> {
    let root = app.roots.newest().ok_or_else(|| ApiError::internal("no capability root key is loaded"))?;
    let pair = root.ring().ok_or_else(|| ApiError::internal("the capability root key cannot sign"))?;
    let origin = origin(tenant);
    let checkpoint = Checkpoint { origin: origin.clone(), size: head.size, root: head.root }.sign(&origin, &pair);
    Ok(SignedHead {
        tenant: tenant.to_owned(),
        verifier_key: tlog::verifier_key(&origin, &root.public()),
        origin,
        size: head.size,
        root: hex(&head.root),
        checkpoint,
        key_id: root.key_id(),
    })
}

/// The tenant's signed tree head.
#[utoipa::path(get, path = "/v1/log/{tenant}/head", params(("tenant" = String, Path)),
    responses((status = 200, body = SignedHead), (status = 404, description = "`not_found`: not a tenant this token may read")),
    security(("bearer" = [])))]
pub(super) async fn head(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> ApiResult<Json<SignedHead>> {
    let p = principal(&app, &headers).await?;
    readable(&p, &tenant)?;
    let head = app.store.log_head(&tenant).await?;
    Ok(Json(sign(&app, &tenant, &head)?))
}

/// The tenant's signed tree head as a C2SP `tlog-checkpoint` signed note (`text/plain`).
#[utoipa::path(get, path = "/v1/log/{tenant}/checkpoint", params(("tenant" = String, Path)),
    responses((status = 200, content_type = "text/plain", body = String,
            description = "`{origin}\\n{size}\\n{base64 root}\\n\\n— {origin} {base64(key hash ‖ ed25519 signature)}\\n`"),
        (status = 404, description = "`not_found`: not a tenant this token may read")),
    security(("bearer" = [])))]
pub(super) async fn checkpoint(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers).await?;
    readable(&p, &tenant)?;
    let head = app.store.log_head(&tenant).await?;
    let signed = sign(&app, &tenant, &head)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], signed.checkpoint).into_response())
}

/// The inclusion proof of a receipt in its tenant's log, for the current size or `?size=N`.
#[utoipa::path(get, path = "/v1/log/{tenant}/inclusion/{receipt_id}",
    params(("tenant" = String, Path), ("receipt_id" = String, Path),
        ("size" = Option<u64>, Query, description = "Tree size to prove against (default: the current size)")),
    responses((status = 200, body = InclusionProof),
        (status = 400, description = "`invalid_request`: a size past the log's, or one the receipt is not in yet"),
        (status = 404, description = "`not_found`: no such receipt in the tenant, or not a tenant this token may read")),
    security(("bearer" = [])))]
pub(super) async fn inclusion(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((tenant, receipt)): Path<(String, String)>,
    q: Result<Query<AtSize>, QueryRejection>,
) -> ApiResult<Json<InclusionProof>> {
    let p = principal(&app, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    readable(&p, &tenant)?;
    let (entry, head) = tokio::try_join!(app.store.log_entry(&receipt), app.store.log_head(&tenant))?;
    let entry = match entry {
        Some(e) if e.tenant == tenant => e,
        _ => return Err(ApiError::not_found(&format!("receipt {receipt} in tenant {tenant}"))),
    };
    let Some(index) = entry.index else {
        return Err(ApiError::new(
            super::ErrorKind::Conflict,
            format!(
                "receipt {receipt} is not logged yet: control appends receipts stored before the log existed when it starts"
            ),
        ));
    };
    let size = q.size.unwrap_or(head.size);
    if size > head.size {
        return Err(ApiError::bad_request(format!(
            "size {size} is past the log of tenant {tenant}, which holds {} receipts",
            head.size
        )));
    }
    if index >= size {
        return Err(ApiError::bad_request(format!(
            "receipt {receipt} is leaf {index}, not in the tree of size {size}; ask for a size above {index}"
        )));
    }
    let (path, root) = app
        .store
        .with_log_nodes(&tenant, |nodes| Ok((tlog::inclusion(nodes, index, size)?, tlog::root(nodes, size)?)))
        .await?
        .map_err(internal)?;
    Ok(Json(InclusionProof {
        tenant,
        receipt,
        receipt_hash: hex(&entry.hash),
        index,
        size,
        root: hex(&root),
        path: path.iter().map(|h| hex(h)).collect(),
    }))
}

/// The consistency proof between two sizes of the tenant's log (`to` defaults to the current
/// size).
#[utoipa::path(get, path = "/v1/log/{tenant}/consistency",
    params(("tenant" = String, Path), ("from" = u64, Query, description = "The older size (at least 1)"),
        ("to" = Option<u64>, Query, description = "The newer size (default: the current size)")),
    responses((status = 200, body = ConsistencyProof),
        (status = 400, description = "`invalid_request`: sizes that are not 0 < from <= to <= the log's size"),
        (status = 404, description = "`not_found`: not a tenant this token may read")),
    security(("bearer" = [])))]
pub(super) async fn consistency(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    q: Result<Query<Between>, QueryRejection>,
) -> ApiResult<Json<ConsistencyProof>> {
    let p = principal(&app, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    readable(&p, &tenant)?;
    let head = app.store.log_head(&tenant).await?;
    let to = q.to.unwrap_or(head.size);
    if q.from == 0 || q.from > to || to > head.size {
        return Err(ApiError::bad_request(format!(
            "from={} to={to}: a consistency proof needs 0 < from <= to <= {} (the size of the log of tenant {tenant})",
            q.from, head.size
        )));
    }
    let from = q.from;
    let (proof, from_root, to_root) = app
        .store
        .with_log_nodes(&tenant, |nodes| {
            Ok((tlog::consistency(nodes, from, to)?, tlog::root(nodes, from)?, tlog::root(nodes, to)?))
        })
        .await?
        .map_err(internal)?;
    Ok(Json(ConsistencyProof {
        tenant,
        from,
        to,
        from_root: hex(&from_root),
        to_root: hex(&to_root),
        proof: proof.iter().map(|h| hex(h)).collect(),
    }))
}
