//! Exports: `GET /v1/runs/{id}/export/vc` (the run's capability as a signed W3C credential),
//! `GET /v1/runs/{id}/export/aibom` (its AI bill of materials, CycloneDX 1.6, [`crate::aibom`])
//! and `GET /v1/runs/{id}/export/c2pa` (a C2PA manifest store for its receipt bundle,
//! [`crate::c2pa`]).

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
    let now = now_seconds();
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

/// The run's AI bill of materials: CycloneDX 1.6 JSON built from its receipts (models, providers
/// and tools reached, policy packs, datasets, the FleetForge version).
#[utoipa::path(get, path = "/v1/runs/{id}/export/aibom", params(("id" = String, Path)),
    responses((status = 200, body = Object,
            description = "CycloneDX 1.6 JSON: `machine-learning-model` components (by provider and model, with calls and tokens), `services` (each endpoint reached, allowed and refused calls), policy packs (`library`, SHA-256), datasets (`data`, SHA-256), the proxy; the run is `metadata.component`"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn export_aibom(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let mut bodies = Vec::new();
    for r in app.store.chain(&id).await? {
        match serde_json::from_str::<fleetforge_trust::receipt::ReceiptBody>(&r.body) {
            Ok(b) => bodies.push(b),
            Err(e) => {
                tracing::warn!(run = %id, receipt = %r.id, error = %e, "stored receipt does not parse; left out of the AIBOM")
            }
        }
    }
    crate::replay::sort_by_start(&mut bodies);
    let datasets = app.store.datasets(&id).await?;
    let head = app.store.log_head(&run.tenant).await?;
    Ok(Json(crate::aibom::aibom(&crate::aibom::Inputs {
        run: &id,
        tenant: &run.tenant,
        bodies: &bodies,
        datasets: &datasets,
        version: env!("CARGO_PKG_VERSION"),
        timestamp: now_seconds(),
        log_head: Some((head.size, fleetforge_trust::canonical::hex(&head.root))),
    })))
}

/// The run's C2PA manifest store: a `.c2pa` sidecar bound by data hash to the run's receipt
/// bundle ([`crate::c2pa::receipt_bundle`]), with the FleetForge assertion.
#[utoipa::path(get, path = "/v1/runs/{id}/export/c2pa", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/c2pa",
            description = "JUMBF manifest store, ES256 by a leaf of the C2PA signing CA (`GET /v1/keys`, `kind: c2pa-ca`); a hard data hash (SHA-256, no exclusions) over the receipt bundle — the run's receipts as JSON lines by seq then lane, as `GET /v1/receipts/{id}` serves each — whose SHA-256 is also in `FleetForge-Asset-SHA256`; assertion `com.fleetforge.run`: `{run, tenant, receipts, log_head: {origin, size, root}, policy_packs: [{id, sha256}], capability, asset: {name, sha256}}`"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn export_c2pa(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let mut receipts = app.store.chain(&id).await?;
    let head = app.store.log_head(&run.tenant).await?;
    let mut packs = std::collections::BTreeSet::new();
    for r in &receipts {
        if let Ok(b) = serde_json::from_str::<fleetforge_trust::receipt::ReceiptBody>(&r.body) {
            packs.extend(b.decision.policy_packs);
        }
    }
    let asset = crate::c2pa::receipt_bundle(&mut receipts);
    let digest = fleetforge_trust::canonical::hex(&fleetforge_trust::canonical::sha256(&asset));
    let assertion = json!({
        "run": id,
        "tenant": run.tenant,
        "receipts": receipts.len(),
        "log_head": {
            "origin": super::log::origin(&run.tenant),
            "size": head.size,
            "root": fleetforge_trust::canonical::hex(&head.root),
        },
        "policy_packs": packs.iter().map(|id| json!({
            "id": id,
            "sha256": id.rsplit_once("sha256:").map(|(_, d)| d.to_owned()),
        })).collect::<Vec<_>>(),
        "capability": run.token_id,
        "asset": { "name": "receipts.jsonl", "sha256": digest },
    });
    let app2 = app.clone();
    let title = format!("FleetForge run {id}: receipts");
    let manifest = tokio::task::spawn_blocking(move || crate::c2pa::sign(&app2.c2pa, &asset, &title, &assertion))
        .await
        .map_err(|e| ApiError::internal(format!("signing the C2PA manifest failed: {e}")))?
        .map_err(|e| {
            tracing::error!(run = %id, error = %e, "signing the C2PA manifest");
            ApiError::internal("signing the C2PA manifest failed; see control's log")
        })?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/c2pa".to_owned()),
            (axum::http::HeaderName::from_static("fleetforge-asset-sha256"), digest),
        ],
        manifest,
    )
        .into_response())
}

/// Now, RFC 3339 to the second (`2026-12-07T03:40:11Z`).
fn now_seconds() -> String {
    let now = rfc3339(store::now_micros());
    now.split('.').next().unwrap_or_default().trim_end_matches('Z').to_owned() + "Z"
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
