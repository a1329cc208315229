//! Capability revocations: `POST /v1/capabilities/revoke` and `GET /v1/revocations` (what proxies
//! poll).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use fleetforge_trust::wire::RevocationPage;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, App, bad_json, bad_query, principal, require};
use crate::auth::Role;

/// `POST /v1/capabilities/revoke` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeCapability {
    /// A revocation id (hex) of any block of a capability token: the run token's id revokes
    /// the run; a block's id revokes every token derived through that block.
    pub revocation_id: String,
    /// Why (kept with the revocation).
    #[serde(default)]
    pub reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/capabilities/revoke", request_body = RevokeCapability,
    responses((status = 200), (status = 400),
        (status = 404, description = "`not_found`: the id is the run token of another tenant's run")),
    security(("bearer" = [])))]
pub(super) async fn revoke_capability(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<RevokeCapability>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let Json(body) = body.map_err(bad_json)?;
    require(&p, &[Role::Admin])?;
    let id = body.revocation_id.trim().to_ascii_lowercase();
    if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "revocation_id {:?} is not a hex revocation id (see token_id in POST /v1/runs, or a receipt's capability)",
            body.revocation_id
        )));
    }
    // Another tenant's run token is not this tenant's to revoke (nor to learn about): answered as
    // an unknown run would be. Ids control did not issue (a per-call capability) are accepted.
    if app.store.token_tenant(&id).await?.is_some_and(|owner| !p.can_read(&owner)) {
        return Err(ApiError::not_found(&format!("capability {id} in this tenant")));
    }
    let new = app.store.revoke(&id, None, p.write_tenant(), body.reason.as_deref().unwrap_or("")).await?;
    Ok(Json(json!({ "revoked": [id], "new": new })))
}

/// Revocation list page parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RevocationQuery {
    /// Return revocations with a sequence number above this (default 0).
    after: Option<i64>,
}

#[utoipa::path(get, path = "/v1/revocations", params(RevocationQuery), responses((status = 200, body = RevocationPage)), security(("bearer" = [])))]
pub(super) async fn list_revocations(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<RevocationQuery>, QueryRejection>,
) -> ApiResult<Json<RevocationPage>> {
    principal(&app, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    let after = q.after.unwrap_or(0);
    let rows = app.store.revocations(after, 10_000).await?;
    let next = rows.last().map_or(after, |r| r.0);
    let revocations = rows.into_iter().map(|r| r.1).collect();
    Ok(Json(RevocationPage { revocations, next_after: next }))
}
