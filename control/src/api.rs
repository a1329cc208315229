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
use fleetforge_trust::canonical::hex;
use fleetforge_trust::verify::{ChainProblem, Link, check_chain, verify};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::auth::{self, Principal, Role};
use crate::ingest::{self, IngestResponse, KeyCache, SignatureCache};
use crate::metrics::Metrics;
use crate::store::{RunRow, Store, StoreError};

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
    /// The run token (shown once; agents send it as the proxy password).
    pub token: String,
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
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
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
    let id = format!("run-{}", auth::new_id(12));
    let token = auth::new_token("ffr_");
    let labels = Value::Object(body.labels).to_string();
    let budget = serde_json::to_string(&body.budget.unwrap_or_default()).unwrap_or_else(|_| "{}".into());
    app.store.create_run(&id, &tenant, &labels, &budget, &auth::token_hash(&token)).await?;
    Ok((StatusCode::CREATED, Json(CreatedRun { id, token })).into_response())
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
        .collect();
    Ok(Json(json!({ "keys": keys })))
}

/// `POST /v1/receipts` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBatch {
    /// Receipts (`fleetforge.receipt/v1` JSON), any order.
    pub receipts: Vec<Value>,
}

#[utoipa::path(post, path = "/v1/receipts", request_body = ReceiptBatch,
    responses((status = 200, body = IngestResponse), (status = 401), (status = 403), (status = 413)), security(("bearer" = [])))]
async fn post_receipts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<ReceiptBatch>, JsonRejection>,
) -> ApiResult<Json<IngestResponse>> {
    let p = principal(&app, &headers).await?;
    let Json(body) = body.map_err(bad_json)?;
    require(&p, &[Role::Proxy, Role::Admin])?;
    if body.receipts.len() > app.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} receipts in one batch; the limit is {} (control.max_batch)",
                body.receipts.len(),
                app.max_batch
            ),
        ));
    }
    let start = Instant::now();
    let answer = ingest::ingest(&app.store, &app.signatures, &app.keys, &p, body.receipts).await?;
    app.metrics.ingested(answer.accepted, answer.duplicates, answer.rejected, start.elapsed());
    Ok(Json(answer))
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
    paths(create_run, list_runs, show_run, run_receipts, one_receipt, verify_run, put_key, list_keys, post_receipts),
    components(schemas(CreateRun, Budget, CreatedRun, RunView, VerifyReport, Problem, PutKey, ReceiptBatch, IngestResponse, ingest::ItemResult)),
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
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(64 << 20))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}
