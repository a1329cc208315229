//! Replay: `GET /v1/runs/{id}/replay-manifest` (a run's sealed calls, signed by control) and
//! `GET /v1/runs/{id}/replay-report` (how a replay run compared with the run it replayed). Both
//! are computed from the stored receipts by [`crate::replay`]; run access is tenant-scoped as on
//! every run route.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use fleetforge_trust::receipt::ReceiptBody;
use fleetforge_trust::replay::{Manifest, Report};
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;

use super::{ApiError, ApiResult, App, ErrorKind, principal, run_of};
use crate::replay;
use crate::store::now_micros;

/// A run's receipt bodies in start order. A stored receipt that does not parse (it verified on
/// ingest, so it should) is left out and logged.
async fn bodies(app: &App, run: &str) -> ApiResult<Vec<ReceiptBody>> {
    let rows = app.store.chain(run).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        match serde_json::from_str::<ReceiptBody>(&r.body) {
            Ok(b) => out.push(b),
            Err(e) => {
                tracing::warn!(run, receipt = %r.id, error = %e, "stored receipt does not parse; left out of replay")
            }
        }
    }
    replay::sort_by_start(&mut out);
    Ok(out)
}

/// The run's sealed calls, in the order they started, signed by control's capability root key
/// (`signature.key_id` as `GET /v1/keys` lists it).
#[utoipa::path(get, path = "/v1/runs/{id}/replay-manifest", params(("id" = String, Path)),
    responses((status = 200, body = Object,
            description = "A `fleetforge.replay-manifest/v1`: `{schema, run, tenant, generated_at, calls: [{receipt, step, started_at, ended_at, method, host, path, key, key_version, request_blob, response_meta, response_digest, status, tokens}], signature: {alg: \"ed25519\", key_id, value}}`; the signature is over the SHA-256 of the JCS form without `signature`"),
        (status = 404, description = "`not_found`: no such run in the token's tenant; `no_seals`: the run has no sealed calls")),
    security(("bearer" = [])))]
pub(super) async fn replay_manifest(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Manifest>> {
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let calls = replay::sealed_calls(&bodies(&app, &id).await?);
    if calls.is_empty() {
        return Err(ApiError::new(
            ErrorKind::NoSeals,
            format!(
                "run {id} has no sealed calls: it was recorded with sealing off ([proxy.seal] enabled = false or FLEETFORGE_SEAL=false), or before the proxy sealed calls"
            ),
        ));
    }
    let mut manifest = replay::manifest(&id, &run.tenant, rfc3339(now_micros()), calls);
    let root = app.roots.newest().ok_or_else(|| ApiError::internal("no capability root key is loaded"))?;
    replay::sign(&mut manifest, root).map_err(|e| {
        tracing::error!(run = %id, error = %e, "signing a replay manifest failed");
        ApiError::internal("the control service could not sign the manifest; see its log")
    })?;
    Ok(Json(manifest))
}

/// How a replay run compared with the run it replayed: calls served from a seal, misses, seals
/// no call used, and token drift.
#[utoipa::path(get, path = "/v1/runs/{id}/replay-report", params(("id" = String, Path)),
    responses((status = 200, body = Object,
            description = "A `fleetforge.replay-report/v1`: `{schema, run, of, strict, matched, missed, misses: [{receipt, call, closest}], unused: [receipt ids], tokens_original, tokens_replay, token_drift, verdict: \"identical\" | \"drifted\"}`"),
        (status = 404, description = "`not_found`: no such run in the token's tenant (or the run it replayed is not); `not_a_replay`: the run has no replayed calls")),
    security(("bearer" = [])))]
pub(super) async fn replay_report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Report>> {
    let p = principal(&app, &headers).await?;
    run_of(&app, &p, &id).await?;
    let replayed = bodies(&app, &id).await?;
    let Some(of) = replay::replayed_run(&replayed) else {
        return Err(ApiError::new(
            ErrorKind::NotAReplay,
            format!(
                "run {id} has no replayed calls: it is not a replay run (replay runs are made by fleetforge-ctl replay)"
            ),
        ));
    };
    run_of(&app, &p, &of).await.map_err(|e| match e.kind {
        ErrorKind::NotFound => ApiError::not_found(&format!("run {of} (the run {id} replayed)")),
        _ => e,
    })?;
    let original = replay::sealed_calls(&bodies(&app, &of).await?);
    Ok(Json(replay::report(&id, &replayed, &of, &original)))
}
