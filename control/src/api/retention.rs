//! Legal holds: `POST /v1/runs/{id}/hold` puts a run on hold — retention never prunes its
//! receipts nor the blobs they name — and `DELETE /v1/runs/{id}/hold` releases it. Admin only.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, App, principal, require, run_of};
use crate::auth::Role;

/// `POST /v1/runs/{id}/hold` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    reason: Option<String>,
}

fn view(id: &str, hold: Option<(i64, String)>) -> Value {
    match hold {
        Some((at, reason)) => json!({ "run": id, "held": true, "held_at": rfc3339(at), "reason": reason }),
        None => json!({ "run": id, "held": false }),
    }
}

/// Puts a run on legal hold.
#[utoipa::path(post, path = "/v1/runs/{id}/hold", params(("id" = String, Path)),
    request_body(content = Object, description = "Optional `{\"reason\": \"…\"}` (at most 1,000 characters)"),
    responses((status = 200, description = "`{run, held: true, held_at, reason}`"),
        (status = 400, description = "`invalid_request`: a body that is not `{reason}`"),
        (status = 403, description = "`forbidden`: not an admin token"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn hold(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Admin])?;
    run_of(&app, &p, &id).await?;
    let hold: Hold = if body.iter().all(u8::is_ascii_whitespace) {
        Hold::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body must be {{\"reason\": \"…\"}}: {e}")))?
    };
    let reason = hold.reason.unwrap_or_default();
    if reason.chars().count() > 1000 {
        return Err(ApiError::bad_request("reason is at most 1,000 characters"));
    }
    app.store.set_hold(&id, Some(&reason)).await?;
    tracing::info!(run = %id, reason = %reason, "run put on legal hold");
    Ok(Json(view(&id, app.store.hold(&id).await?)))
}

/// Releases a run's legal hold.
#[utoipa::path(delete, path = "/v1/runs/{id}/hold", params(("id" = String, Path)),
    responses((status = 200, description = "`{run, held: false}`"),
        (status = 403, description = "`forbidden`: not an admin token"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn release(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Admin])?;
    run_of(&app, &p, &id).await?;
    app.store.set_hold(&id, None).await?;
    tracing::info!(run = %id, "legal hold released");
    Ok(Json(view(&id, None)))
}
