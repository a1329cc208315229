//! Keys: `PUT /v1/keys/{key_id}` (a proxy registers its receipt signer) and `GET /v1/keys` (receipt
//! signers, capability root keys, the log signer and the C2PA signing CA).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, App, ErrorKind, bad_json, principal, require};
use crate::auth::Role;

/// `PUT /v1/keys/{key_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutKey {
    /// `ed25519`.
    pub alg: String,
    /// The raw 32-byte public key, base64url without padding.
    pub public_key: String,
}

#[utoipa::path(put, path = "/v1/keys/{key_id}", params(("key_id" = String, Path)), request_body = PutKey,
    responses((status = 200), (status = 400), (status = 409)), security(("bearer" = [])))]
pub(super) async fn put_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
    body: Result<Json<PutKey>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let Json(body) = body.map_err(bad_json)?;
    require(&p, &[Role::Proxy, Role::Admin])?;
    if body.alg != "ed25519" {
        return Err(ApiError::bad_request(format!("alg {:?} is not supported; use ed25519", body.alg)));
    }
    let raw = URL_SAFE_NO_PAD
        .decode(body.public_key.trim_end_matches('='))
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| ApiError::bad_request("public_key must be 32 bytes, base64url"))?;
    let derived = fleetforge_trust::sign::key_id(&raw);
    if derived != key_id {
        return Err(ApiError::bad_request(format!("key id {key_id} does not match the public key (it is {derived})")));
    }
    let owner = app.store.put_key(&key_id, "ed25519", &URL_SAFE_NO_PAD.encode(&raw), p.write_tenant()).await?;
    if !p.can_read(&owner) {
        return Err(ApiError::new(ErrorKind::Conflict, format!("key {key_id} is registered by another tenant")));
    }
    Ok(Json(
        json!({ "key_id": key_id, "alg": "ed25519", "public_key": URL_SAFE_NO_PAD.encode(&raw), "kind": "receipt-signer" }),
    ))
}

#[utoipa::path(get, path = "/v1/keys", responses((status = 200)), security(("bearer" = [])))]
pub(super) async fn list_keys(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let keys: Vec<Value> = app
        .store
        .keys()
        .await?
        .into_iter()
        .filter(|k| p.can_read(&k.tenant))
        .map(|k| json!({ "key_id": k.key_id, "alg": k.alg, "public_key": k.public_key, "kind": "receipt-signer" }))
        .chain(app.roots.all().iter().map(crate::capability::RootKey::listing))
        .chain(app.roots.newest().map(|root| {
            // The newest root key also signs transparency-log heads (C2SP checkpoints).
            json!({
                "key_id": root.key_id(),
                "alg": "ed25519",
                "public_key": URL_SAFE_NO_PAD.encode(root.public()),
                "kind": "log-signer",
                "log_origin": super::log::origin("{tenant}"),
            })
        }))
        // The trust anchor of C2PA manifests (`GET /v1/runs/{id}/export/c2pa`).
        .chain(std::iter::once(app.c2pa.listing()))
        .collect();
    Ok(Json(json!({ "keys": keys })))
}
