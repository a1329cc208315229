//! The attestation vault: `PUT /v1/attestations/{id}` stores an external attestation (an in-toto
//! Statement, SLSA provenance, or a DSSE envelope) validated on arrival ([`crate::attest`]),
//! optionally linked to a run (`?run=ID`); `GET /v1/attestations/{id}` returns it;
//! `GET /v1/runs/{id}/attestations` lists a run's. An id names one attestation for good: the same
//! bytes again change nothing, other bytes are `409 conflict`. Tenant-scoped like runs.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use fleetforge_trust::canonical::{hex, sha256};
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, App, ErrorKind, bad_query, principal, require, require_json, run_of};
use crate::auth::Role;
use crate::store::AttestationRow;

/// Most bytes of one attestation.
const MAX_BYTES: usize = 1 << 20;

/// `?run=ID`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkTo {
    run: Option<String>,
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn view(a: &AttestationRow, with_body: bool) -> Value {
    let mut v = json!({
        "id": a.id,
        "kind": a.kind,
        "predicate_type": a.predicate_type,
        "run": a.run_id,
        "sha256": a.sha256,
        "created_at": rfc3339(a.created_at),
    });
    if with_body {
        v["attestation"] = serde_json::from_str(&a.body).unwrap_or(Value::Null);
    }
    v
}

/// Stores an attestation.
#[utoipa::path(put, path = "/v1/attestations/{id}",
    params(("id" = String, Path, description = "1 to 128 of A-Z a-z 0-9 . _ : -"),
        ("run" = Option<String>, Query, description = "The run it is about (in the token's tenant)")),
    request_body(content = Object, description = "An in-toto Statement (`_type` https://in-toto.io/Statement/v1 or v0.1, non-empty `subject` with hex digests, `predicateType`), SLSA provenance (a Statement with predicateType https://slsa.dev/provenance/…), or a DSSE envelope (`payloadType`, base64 `payload`, non-empty `signatures` with base64 `sig`; an in-toto payload is validated too); at most 1 MiB"),
    responses((status = 201, description = "`{id, kind, predicate_type, run, sha256, created_at, created: true}`"),
        (status = 200, description = "The same bytes were stored under this id already (`created: false`)"),
        (status = 400, description = "`invalid_request`: a bad id, a body over 1 MiB"),
        (status = 403, description = "`forbidden`: a reader token"),
        (status = 404, description = "`not_found`: `?run` names no run of the tenant"),
        (status = 409, description = "`conflict`: other bytes are stored under this id"),
        (status = 422, description = "`invalid_request`: not JSON, or not an attestation the vault accepts (the message names the member)")),
    security(("bearer" = [])))]
pub(super) async fn put_attestation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<LinkTo>, QueryRejection>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Proxy, Role::Admin])?;
    let Query(q) = q.map_err(bad_query)?;
    require_json(&headers)?;
    if !valid_id(&id) {
        return Err(ApiError::bad_request(format!(
            "attestation id {id:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    if body.len() > MAX_BYTES {
        return Err(ApiError::new(
            ErrorKind::BodyTooLarge,
            format!("an attestation is at most {MAX_BYTES} bytes; this one is {}", body.len()),
        ));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorKind::Unprocessable, format!("the attestation is not JSON: {e}")))?;
    let kind = crate::attest::classify(&value).map_err(|why| {
        ApiError::new(ErrorKind::Unprocessable, format!("not an attestation the vault accepts: {why}"))
    })?;
    let run = match &q.run {
        Some(run) => Some(run_of(&app, &p, run).await?.id),
        None => None,
    };
    let row = AttestationRow {
        id: id.clone(),
        tenant: p.write_tenant().to_owned(),
        run_id: run,
        kind: kind.kind.to_owned(),
        predicate_type: kind.predicate_type,
        sha256: hex(&sha256(&body)),
        body: String::from_utf8_lossy(&body).into_owned(),
        created_at: crate::store::now_micros(),
    };
    if app.store.put_attestation(&row).await? {
        let mut v = view(&row, false);
        v["created"] = json!(true);
        return Ok((StatusCode::CREATED, Json(v)));
    }
    match app.store.attestation(&id).await? {
        Some(stored) if stored.sha256 == row.sha256 && p.can_read(&stored.tenant) => {
            let mut v = view(&stored, false);
            v["created"] = json!(false);
            Ok((StatusCode::OK, Json(v)))
        }
        _ => Err(ApiError::new(
            ErrorKind::Conflict,
            format!("attestation id {id} is taken by other bytes; an id names one attestation for good"),
        )),
    }
}

/// One attestation, as stored.
#[utoipa::path(get, path = "/v1/attestations/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "`{id, kind, predicate_type, run, sha256, created_at, attestation}`"),
        (status = 404, description = "`not_found`: no such attestation in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn get_attestation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    match app.store.attestation(&id).await? {
        Some(a) if p.can_read(&a.tenant) => Ok(Json(view(&a, true))),
        _ => Err(ApiError::not_found(&format!("attestation {id}"))),
    }
}

/// The attestations linked to a run.
#[utoipa::path(get, path = "/v1/runs/{id}/attestations", params(("id" = String, Path)),
    responses((status = 200, description = "`{attestations: [{id, kind, predicate_type, run, sha256, created_at}]}`"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn run_attestations(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    run_of(&app, &p, &id).await?;
    let list: Vec<Value> = app.store.run_attestations(&id).await?.iter().map(|a| view(a, false)).collect();
    Ok(Json(json!({ "attestations": list })))
}
