//! The HTTP API: routes, authentication, and the one place errors become responses.
//!
//! Every `/v1` route needs `Authorization: Bearer`; `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json` do not. Errors are `{"error":{"type","message"}}`; database and internal error
//! text is logged, never sent. Another tenant's run or receipt is `404 not_found`, exactly as a
//! missing one.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::text::{hex, rfc3339_from_unix_micros as rfc3339};
use fleetforge_trust::verify::{ChainProblem, Link, check_chain, verify};
use fleetforge_trust::wire::{ReceiptBatch, RevocationPage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::auth::{self, Principal, Role};
use crate::ingest::{self, IngestResponse, KeyCache, SignatureCache};
use crate::metrics::Metrics;
use crate::store::{self, RunRow, Store, StoreError};

/// Shared state of the API.
#[derive(Debug)]
pub struct App {
    /// The database.
    pub store: Store,
    /// SHA-256 of the bootstrap token, if one is configured.
    pub bootstrap: Option<String>,
    /// Verified batch roots.
    pub signatures: SignatureCache,
    /// Registered keys.
    pub keys: KeyCache,
    /// Metrics.
    pub metrics: Metrics,
    /// Most receipts per ingest batch.
    pub max_batch: usize,
    /// Capability root keys (the newest signs run tokens).
    pub roots: crate::capability::KeyRing,
}

/// An API error: status, contract `type`, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into() }
    }

    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "database operation failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the control service could not complete the request; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"type": self.kind, "message": self.message}}))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A body that is not the JSON the route expects: the same envelope as every other error.
fn bad_json(rejection: JsonRejection) -> ApiError {
    ApiError::new(rejection.status(), "invalid_request", rejection.body_text())
}

/// Query parameters that do not parse.
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", rejection.body_text())
}

async fn principal(app: &App, headers: &HeaderMap) -> ApiResult<Principal> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token: send Authorization: Bearer TOKEN (FLEETFORGE_CONTROL_TOKEN or a token from `fleetforge-control token create`)",
        )
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    let hash = auth::token_hash(token);
    if let Some(bootstrap) = &app.bootstrap
        && auth::same_secret(&hash, bootstrap)
    {
        return Ok(Principal { role: Role::Admin, tenant: None });
    }
    let row = app.store.token(&hash).await?.ok_or_else(unauthorized)?;
    let role = Role::parse(&row.role).ok_or_else(unauthorized)?;
    Ok(Principal { role, tenant: Some(row.tenant) })
}

fn require(p: &Principal, roles: &[Role]) -> ApiResult<()> {
    if roles.contains(&p.role) {
        Ok(())
    } else {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this needs the {} role", names.join(" or "))))
    }
}

async fn run_of(app: &App, p: &Principal, id: &str) -> ApiResult<RunRow> {
    match app.store.run(id).await? {
        Some(run) if p.can_read(&run.tenant) => Ok(run),
        _ => Err(ApiError::not_found(&format!("run {id}"))),
    }
}

/// `POST /v1/runs` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// Free-form labels.
    #[serde(default)]
    pub labels: serde_json::Map<String, Value>,
    /// Budget SLOs: `tokens`, `cost_usd`, `calls`, `tokens_per_minute` (enforced by budgets).
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Tenant; only an all-tenant admin may name one.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The agent this run is for (a fact in the run token).
    #[serde(default)]
    pub agent: Option<String>,
    /// What the run may do: `hosts` (`*`, `*.example.com`, exact), `methods`, `paths`
    /// (prefixes), `models` (`*`, `gpt-4o*`, exact); empty = unrestricted.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub grants: Option<fleetforge_trust::capability::Grants>,
    /// Run token lifetime in seconds (default 86400, at most 30 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A run's budget.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Token ceiling.
    pub tokens: Option<u64>,
    /// Cost ceiling, USD.
    pub cost_usd: Option<f64>,
    /// Call ceiling.
    pub calls: Option<u64>,
    /// Rate SLO.
    pub tokens_per_minute: Option<u64>,
}

/// `POST /v1/runs` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedRun {
    /// Run id.
    pub id: String,
    /// The run token: a Biscuit, base64url (shown once; agents send it as the proxy password
    /// or `x-fleetforge-token`).
    pub token: String,
    /// The token's revocation id (hex), for `POST /v1/capabilities/revoke`.
    pub token_id: String,
    /// When the token expires (RFC 3339).
    pub expires_at: String,
}

/// A run as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    id: String,
    tenant: String,
    labels: Value,
    budget: Value,
    created_at: String,
    last_activity: Option<String>,
    calls: i64,
    receipts: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    rejected: i64,
    /// `ok`: the last full verification passed and no receipt was rejected at ingest;
    /// `problems`: it failed, or receipts were rejected; `unverified`: never verified in full
    /// (every stored receipt was still verified on ingest).
    verification: &'static str,
    /// When the run was last verified in full (`GET /v1/runs/{id}/verify`).
    verified_at: Option<String>,
    /// Receipts that verification checked.
    verified_receipts: Option<i64>,
    /// The agent named at creation.
    agent: Option<String>,
    /// What the run's token allows.
    grants: Value,
    /// Run token expiry.
    expires_at: Option<String>,
    /// The run token's revocation id.
    token_id: Option<String>,
    /// When the token was revoked.
    revoked_at: Option<String>,
}

fn view(r: RunRow) -> RunView {
    RunView {
        labels: serde_json::from_str(&r.labels).unwrap_or(Value::Null),
        budget: serde_json::from_str(&r.budget).unwrap_or(Value::Null),
        created_at: rfc3339(r.created_at),
        last_activity: r.last_activity.map(rfc3339),
        receipts: r.calls,
        calls: r.calls,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cost_usd: r.cost_micro_usd as f64 / 1e6,
        verification: match (r.rejected, r.verify_ok) {
            (0, Some(true)) => "ok",
            (0, None) => "unverified",
            _ => "problems",
        },
        verified_at: r.verified_at.map(rfc3339),
        verified_receipts: r.verify_checked,
        agent: r.agent,
        grants: serde_json::from_str(&r.grants).unwrap_or(Value::Null),
        expires_at: r.expires_at.map(|s| rfc3339(s.saturating_mul(1_000_000))),
        token_id: r.token_id,
        revoked_at: r.revoked_at.map(rfc3339),
        rejected: r.rejected,
        id: r.id,
        tenant: r.tenant,
    }
}

#[utoipa::path(post, path = "/v1/runs", request_body = CreateRun,
    responses((status = 201, body = CreatedRun), (status = 400), (status = 401), (status = 403)), security(("bearer" = [])))]
async fn create_run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<CreateRun>, JsonRejection>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers).await?;
    let Json(body) = body.map_err(bad_json)?;
    require(&p, &[Role::Admin])?;
    let tenant = match (&p.tenant, body.tenant) {
        (None, Some(t)) => t,
        (Some(own), Some(t)) if own != &t => {
            return Err(ApiError::bad_request("only an all-tenant admin may create runs in another tenant"));
        }
        _ => p.write_tenant().to_owned(),
    };
    if fleetforge_trust::RunId::new(&tenant).is_err() {
        return Err(ApiError::bad_request("tenant must be 1 to 128 characters of A-Z a-z 0-9 . _ -"));
    }
    let ttl = body.ttl_seconds.unwrap_or(86_400);
    if ttl == 0 || ttl > 30 * 86_400 {
        return Err(ApiError::bad_request(format!("ttl_seconds is {ttl}; expected 1 to 2592000 (30 days)")));
    }
    let id = format!("run-{}", auth::new_id(12));
    let mut grants = body.grants.unwrap_or_default();
    if grants.max_tokens.is_none() {
        grants.max_tokens = body.budget.as_ref().and_then(|b| b.tokens);
    }
    let expires = fleetforge_trust::capability::unix_now() + ttl;
    let claims = fleetforge_trust::capability::RunClaims {
        run: id.clone(),
        tenant: tenant.clone(),
        agent: body.agent.clone(),
        expires,
        grants: grants.clone(),
    };
    let root = app.roots.newest().ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "no capability root key is loaded")
    })?;
    let fleetforge_trust::capability::Minted { token, id: token_id } =
        fleetforge_trust::capability::mint(&root.pair, root.id, &claims)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let labels = Value::Object(body.labels).to_string();
    let budget = serde_json::to_string(&body.budget.unwrap_or_default()).unwrap_or_else(|_| "{}".into());
    app.store.create_run(&id, &tenant, &labels, &budget, &auth::token_hash(&token)).await?;
    let grants_json = serde_json::to_string(&grants).unwrap_or_else(|_| "{}".into());
    let expires_i64 = i64::try_from(expires).unwrap_or(i64::MAX);
    app.store.set_capability(&id, body.agent.as_deref(), &grants_json, expires_i64, &token_id).await?;
    let expires_at = rfc3339(expires_i64.saturating_mul(1_000_000));
    Ok((StatusCode::CREATED, Json(CreatedRun { id, token, token_id, expires_at })).into_response())
}

/// Listing parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListRuns {
    /// Page size (default 50, max 500).
    limit: Option<i64>,
    /// Cursor from the previous page's `next_after`.
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/runs", params(ListRuns), responses((status = 200)), security(("bearer" = [])))]
async fn list_runs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<ListRuns>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let cursor =
        q.after.as_deref().and_then(|a| a.split_once('/')).and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)));
    let rows = app.store.runs(p.tenant_filter(), limit, cursor).await?;
    let next =
        (rows.len() as i64 == limit).then(|| rows.last().map(|r| format!("{}/{}", r.created_at, r.id))).flatten();
    Ok(Json(json!({ "runs": rows.into_iter().map(view).collect::<Vec<_>>(), "next_after": next })))
}

#[utoipa::path(get, path = "/v1/runs/{id}", params(("id" = String, Path)), responses((status = 200, body = RunView), (status = 404)), security(("bearer" = [])))]
async fn show_run(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<RunView>> {
    let p = principal(&app, &headers).await?;
    Ok(Json(view(run_of(&app, &p, &id).await?)))
}

/// Receipt page parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReceiptPage {
    /// Return receipts with `chain.seq` greater than this (default 0).
    after: Option<i64>,
    /// Page size (default 100, max 1000).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/runs/{id}/receipts", params(("id" = String, Path), ReceiptPage), responses((status = 200), (status = 404)), security(("bearer" = [])))]
async fn run_receipts(
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
    let receipts: Vec<Value> = rows.iter().filter_map(|r| serde_json::from_str(&r.body).ok()).collect();
    Ok(Json(json!({ "receipts": receipts, "next_after": next })))
}

#[utoipa::path(get, path = "/v1/receipts/{id}", params(("id" = String, Path)), responses((status = 200), (status = 404)), security(("bearer" = [])))]
async fn one_receipt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    match app.store.receipt(&id).await? {
        Some(r) if p.can_read(&r.tenant) => Ok(Json(serde_json::from_str(&r.body).unwrap_or(Value::Null))),
        _ => Err(ApiError::not_found(&format!("receipt {id}"))),
    }
}

/// `GET /v1/runs/{id}/verify` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    /// Every signature, proof and chain link checked out.
    pub ok: bool,
    /// Receipts checked.
    pub checked: usize,
    /// What is wrong, naming the receipt.
    pub problems: Vec<Problem>,
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
async fn verify_run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<VerifyReport>> {
    let p = principal(&app, &headers).await?;
    run_of(&app, &p, &id).await?;
    let keys: std::collections::HashMap<String, Vec<u8>> = app
        .store
        .keys()
        .await?
        .into_iter()
        .filter_map(|k| Some((k.key_id, URL_SAFE_NO_PAD.decode(k.public_key).ok()?)))
        .collect();
    let rows = app.store.chain(&id).await?;
    let mut problems = Vec::new();
    let mut links = Vec::new();
    for r in &rows {
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
            }
            Err(e) => problems.push(Problem { receipt_id: r.id.clone(), problem: e.to_string() }),
        }
    }
    for ChainProblem { receipt_id, problem } in check_chain(&id, &links) {
        problems.push(Problem { receipt_id, problem });
    }
    let ok = problems.is_empty();
    app.store.set_verified(&id, ok, i64::try_from(rows.len()).unwrap_or(i64::MAX)).await?;
    Ok(Json(VerifyReport { ok, checked: rows.len(), problems }))
}

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
async fn put_key(
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
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("key {key_id} is registered by another tenant"),
        ));
    }
    Ok(Json(
        json!({ "key_id": key_id, "alg": "ed25519", "public_key": URL_SAFE_NO_PAD.encode(&raw), "kind": "receipt-signer" }),
    ))
}

#[utoipa::path(get, path = "/v1/keys", responses((status = 200)), security(("bearer" = [])))]
async fn list_keys(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let keys: Vec<Value> = app
        .store
        .keys()
        .await?
        .into_iter()
        .filter(|k| p.can_read(&k.tenant))
        .map(|k| json!({ "key_id": k.key_id, "alg": k.alg, "public_key": k.public_key, "kind": "receipt-signer" }))
        .chain(app.roots.all().iter().map(|r| {
            json!({
                "key_id": format!("capability-root-{}", r.id),
                "root_key_id": r.id,
                "alg": "ed25519",
                "public_key": URL_SAFE_NO_PAD.encode(r.public()),
                "kind": "capability-root",
                "did": fleetforge_trust::vc::did_key(&r.public_array()),
            })
        }))
        .collect();
    Ok(Json(json!({ "keys": keys })))
}

#[utoipa::path(post, path = "/v1/receipts", request_body = ReceiptBatch,
    responses((status = 200, body = IngestResponse), (status = 401), (status = 403), (status = 413)), security(("bearer" = [])))]
async fn post_receipts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<IngestResponse>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Proxy, Role::Admin])?;
    require_json(&headers)?;
    let max_batch = app.max_batch;
    // Parsing, canonicalizing and hashing a batch is CPU work: one blocking task for all of it.
    let prepared = tokio::task::spawn_blocking(move || {
        let batch: ReceiptBatch = serde_json::from_slice(&body).map_err(json_error)?;
        if batch.receipts.len() > max_batch {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!("{} receipts in one batch; the limit is {max_batch} (control.max_batch)", batch.receipts.len()),
            ));
        }
        Ok(ingest::prepare(batch.receipts))
    })
    .await
    .map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", format!("ingest worker failed: {e}"))
    })??;
    let start = Instant::now();
    let answer = ingest::ingest_prepared(&app.store, &app.signatures, &app.keys, &p, prepared).await?;
    app.metrics.ingested(answer.accepted, answer.duplicates, answer.rejected, start.elapsed());
    Ok(Json(answer))
}

/// 415 unless the body is declared JSON (`application/json` or `…+json`), as axum's `Json` answers.
fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let json =
        essence.is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
    if json {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
        "Expected request with `Content-Type: application/json`",
    ))
}

/// A body that is not the JSON expected: 400 for bad syntax, 422 for the wrong shape, as axum's
/// `Json` answers.
fn json_error(e: serde_json::Error) -> ApiError {
    let status = match e.classify() {
        serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    };
    let what = if status == StatusCode::BAD_REQUEST {
        "parse the request body as JSON"
    } else {
        "deserialize the JSON body into the target type"
    };
    ApiError::new(status, "invalid_request", format!("Failed to {what}: {e}"))
}

#[utoipa::path(post, path = "/v1/runs/{id}/revoke", params(("id" = String, Path)),
    responses((status = 200), (status = 404)), security(("bearer" = [])))]
async fn revoke_run(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Admin])?;
    let run = run_of(&app, &p, &id).await?;
    let token_id =
        run.token_id.ok_or_else(|| ApiError::bad_request(format!("run {id} has no capability token to revoke")))?;
    app.store.revoke(&token_id, Some(&id), &run.tenant, "run revoked").await?;
    tracing::info!(run = %id, token_id = %token_id, "run token revoked");
    Ok(Json(json!({ "run": id, "revoked": [token_id] })))
}

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
    responses((status = 200), (status = 400)), security(("bearer" = [])))]
async fn revoke_capability(
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
async fn list_revocations(
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

#[utoipa::path(get, path = "/v1/runs/{id}/export/vc", params(("id" = String, Path)),
    responses((status = 200), (status = 404)), security(("bearer" = [])))]
async fn export_vc(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", m);
    let root = app.roots.newest().ok_or_else(|| internal("no capability root key is loaded".into()))?;
    let key = root.ring().ok_or_else(|| internal("the capability root key is not usable".into()))?;
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
        .map_err(|e| internal(format!("signing the credential failed: {e}")))?;
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.store.ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

/// The OpenAPI document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "FleetForge control API", description = "Runs, receipts, verification and keys. Bearer auth on every /v1 route."),
    paths(create_run, list_runs, show_run, run_receipts, one_receipt, verify_run, put_key, list_keys, post_receipts,
        revoke_run, revoke_capability, list_revocations, export_vc),
    components(schemas(CreateRun, Budget, CreatedRun, RunView, VerifyReport, Problem, PutKey, ReceiptBatch, IngestResponse, ingest::ItemResult, ingest::ItemStatus, RevocationPage)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            utoipa::openapi::security::SecurityScheme::Http(utoipa::openapi::security::Http::new(
                utoipa::openapi::security::HttpAuthScheme::Bearer,
            )),
        );
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let response = next.run(req).await;
    app.metrics.request(&format!("{method} {route}"), response.status().as_u16());
    response
}

async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; see /openapi.json")
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/receipts", get(run_receipts))
        .route("/v1/runs/{id}/verify", get(verify_run))
        .route("/v1/receipts", post(post_receipts))
        .route("/v1/receipts/{id}", get(one_receipt))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/{key_id}", put(put_key))
        .route("/v1/runs/{id}/revoke", post(revoke_run))
        .route("/v1/capabilities/revoke", post(revoke_capability))
        .route("/v1/revocations", get(list_revocations))
        .route("/v1/runs/{id}/export/vc", get(export_vc))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(64 << 20))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}
