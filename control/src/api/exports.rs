//! Exports: `GET /v1/runs/{id}/export/vc` (the run's capability as a signed W3C credential).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, App, principal, run_of};
use crate::store;

#[utoipa::path(get, path = "/v1/runs/{id}/export/vc", params(("id" = String, Path)),
    responses((status = 200), (status = 404)), security(("bearer" = [])))]
pub(super) async fn export_vc(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let root = app.roots.newest().ok_or_else(|| ApiError::internal("no capability root key is loaded"))?;
    let key = root.ring().ok_or_else(|| ApiError::internal("the capability root key is not usable"))?;
    let issuer = fleetforge_trust::vc::did_key(&root.public_array());
    let method = fleetforge_trust::vc::did_key_verification_method(&root.public_array());
    let now = rfc3339(store::now_micros());
    let now = now.split('.').next().unwrap_or_default().trim_end_matches('Z').to_owned() + "Z";
    let credential = json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "type": ["VerifiableCredential", "FleetForgeRunCapability"],
        "id": format!("urn:fleetforge:run:{id}"),
        "issuer": issuer,
        "validFrom": now,
        "validUntil": run.expires_at.map(|s| rfc3339(s.saturating_mul(1_000_000))),
        "credentialSubject": {
            "id": format!("urn:fleetforge:run:{id}"),
            "tenant": run.tenant,
            "agent": run.agent,
            "grants": serde_json::from_str::<Value>(&run.grants).unwrap_or(Value::Null),
            "revocationIds": run.token_id.into_iter().collect::<Vec<_>>(),
            "revoked": run.revoked_at.is_some(),
        },
    });
    let credential = strip_nulls(credential);
    let signed = fleetforge_trust::vc::sign_credential(&credential, &key, &method, &now)
        .map_err(|e| ApiError::internal(format!("signing the credential failed: {e}")))?;
    Ok(Json(signed))
}

/// Drops null members (JCS has no trouble with them, but a credential should not carry them).
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        other => other,
    }
}
