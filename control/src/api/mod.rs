//! The HTTP API: routes, authentication, and the one place errors become responses.
//!
//! One module per resource: [`runs`] (create, list, show, a new token, revoke), [`leases`]
//! (budget slices of fleets), [`receipts`] (ingest, read, verify), [`seals`] (sealed blobs),
//! [`replay`] (replay manifests and reports), [`keys`], [`capabilities`] (revocations) and
//! [`exports`]. This module
//! holds what they share: the state, the principal, and [`ErrorKind`], the one table from an
//! error's kind to its status and contract `type`.
//!
//! Every `/v1` route needs `Authorization: Bearer` or, for reading, a web-view session cookie
//! ([`ui`]); `/healthz`, `/readyz`, `/metrics` and `/openapi.json` do not. Errors are `{"error":{"type","message"}}`; database and internal error
//! text is logged, never sent. Another tenant's run or receipt is `404 not_found`, exactly as a
//! missing one.

mod attestations;
mod capabilities;
mod exports;
mod keys;
mod leases;
pub mod log;
mod receipts;
mod replay;
mod retention;
mod runs;
mod scitt;
mod seals;
#[cfg(test)]
mod tests;
mod ui;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fleetforge_trust::wire::{Held, Lease, LeaseRequest, ReceiptBatch, RevocationPage, Slice};
use serde_json::json;
use utoipa::OpenApi;

use crate::auth::{self, Principal, Role};
use crate::ingest::{self, IngestResponse, IngestSlots, KeyCache, SignatureCache};
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
    /// Bounds the ingest batches in flight.
    pub ingest_slots: IngestSlots,
    /// Metrics.
    pub metrics: Metrics,
    /// Most receipts per ingest batch.
    pub max_batch: usize,
    /// Capability root keys (the newest signs run tokens).
    pub roots: crate::capability::KeyRing,
    /// The OpenTelemetry tracer (`None`: no OTLP endpoint configured).
    pub tracer: Option<Arc<fleetforge_otel::Tracer>>,
    /// Wakes the SCITT statement worker when a run is closed.
    pub scitt: crate::scitt::Wake,
    /// The C2PA signing CA and its leaf.
    pub c2pa: crate::c2pa::SigningCa,
}

/// What went wrong: the one table from an error's kind to its HTTP status and contract `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names bad values.
    InvalidRequest,
    /// The body is not declared as JSON.
    UnsupportedMediaType,
    /// The body is JSON of the wrong shape.
    Unprocessable,
    /// The body is over the size limit.
    BodyTooLarge,
    /// An ingest batch holds more receipts than `control.max_batch`.
    BatchTooLarge,
    /// No bearer token, or an unknown one.
    Unauthorized,
    /// The token's role may not do this.
    Forbidden,
    /// No such thing (or another tenant's).
    NotFound,
    /// It exists already, or its state forbids the change.
    Conflict,
    /// A sealed blob whose bytes do not hash to the address it was sent to.
    SealMismatch,
    /// A run with no sealed calls has no replay manifest.
    NoSeals,
    /// A run with no replayed calls has no replay report.
    NotAReplay,
    /// The control service failed; the detail is logged, not sent.
    Internal,
}

impl ErrorKind {
    /// `(status, type)` for this kind.
    pub fn status_and_type(self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request"),
            Self::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Self::BatchTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict => (StatusCode::CONFLICT, "conflict"),
            Self::SealMismatch => (StatusCode::UNPROCESSABLE_ENTITY, "seal_mismatch"),
            Self::NoSeals => (StatusCode::NOT_FOUND, "no_seals"),
            Self::NotAReplay => (StatusCode::NOT_FOUND, "not_a_replay"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The kind for a status an extractor chose (axum's JSON and query rejections).
    fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable,
            StatusCode::PAYLOAD_TOO_LARGE => Self::BodyTooLarge,
            s if s.is_server_error() => Self::Internal,
            _ => Self::InvalidRequest,
        }
    }
}

/// An API error: its kind and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    fn not_found(what: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} not found"))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "database operation failed");
        Self::internal("the control service could not complete the request; see its log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.kind.status_and_type();
        (status, Json(json!({"error": {"type": kind, "message": self.message}}))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A body that is not the JSON the route expects: the same envelope as every other error.
fn bad_json(rejection: JsonRejection) -> ApiError {
    ApiError::new(ErrorKind::from_status(rejection.status()), rejection.body_text())
}

/// Query parameters that do not parse.
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

/// The body's media type without parameters, lowercase (`application/json`); empty when none is
/// declared.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// 415 unless the body is declared JSON (`application/json` or `…+json`), as axum's `Json` answers.
fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let m = media_type(headers);
    let json = m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"));
    if json {
        return Ok(());
    }
    Err(ApiError::new(ErrorKind::UnsupportedMediaType, "Expected request with `Content-Type: application/json`"))
}

/// A body that is not the JSON expected: 400 for bad syntax, 422 for the wrong shape, as axum's
/// `Json` answers.
fn json_error(e: serde_json::Error) -> ApiError {
    let (kind, what) = match e.classify() {
        serde_json::error::Category::Data => {
            (ErrorKind::Unprocessable, "deserialize the JSON body into the target type")
        }
        _ => (ErrorKind::InvalidRequest, "parse the request body as JSON"),
    };
    ApiError::new(kind, format!("Failed to {what}: {e}"))
}

async fn principal(app: &App, headers: &HeaderMap) -> ApiResult<Principal> {
    let unauthorized = || {
        ApiError::new(
            ErrorKind::Unauthorized,
            "missing or unknown bearer token: send Authorization: Bearer TOKEN (FLEETFORGE_CONTROL_TOKEN or a token from `fleetforge-control token create`)",
        )
    };
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer.map(str::trim) else {
        // A browser of the web view: its session cookie reads as a reader.
        let session = ui::session(headers).ok_or_else(unauthorized)?;
        let tenant = app.store.ui_session(&auth::token_hash(session)).await?.ok_or_else(unauthorized)?;
        return Ok(Principal { role: Role::Reader, tenant });
    };
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
        Err(ApiError::new(ErrorKind::Forbidden, format!("this needs the {} role", names.join(" or "))))
    }
}

async fn run_of(app: &App, p: &Principal, id: &str) -> ApiResult<RunRow> {
    match app.store.run(id).await? {
        Some(run) if p.can_read(&run.tenant) => Ok(run),
        _ => Err(ApiError::not_found(&format!("run {id}"))),
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

/// The OpenAPI document, generated from the handlers of each resource module.
#[derive(OpenApi)]
#[openapi(
    info(title = "FleetForge control API", description = "Runs, receipts, verification, the transparency log, attestations, sealed blobs, replay and keys. Bearer auth on every /v1 route."),
    paths(runs::create_run, runs::list_runs, runs::show_run, runs::issue_token, runs::revoke_run,
        leases::lease,
        receipts::run_receipts, receipts::one_receipt, receipts::verify_run, receipts::post_receipts,
        seals::put_seal, seals::get_seal, replay::replay_manifest, replay::replay_report,
        keys::put_key, keys::list_keys, capabilities::revoke_capability, capabilities::list_revocations,
        exports::export_vc, exports::export_aibom, exports::export_c2pa, ui::login_link, log::head, log::checkpoint, log::inclusion, log::consistency,
        attestations::put_attestation, attestations::get_attestation, attestations::run_attestations,
        retention::hold, retention::release, scitt::close, scitt::run_statements, scitt::register,
        scitt::get_statement, scitt::get_receipt, scitt::export_scitt),
    components(schemas(runs::CreateRun, runs::IssueToken, runs::Budget, runs::CreatedRun, runs::RunView,
        receipts::VerifyReport, receipts::Problem, keys::PutKey, ReceiptBatch, IngestResponse, ingest::ItemResult,
        ingest::ItemStatus, RevocationPage, Lease, LeaseRequest, Slice, Held, log::SignedHead, log::InclusionProof,
        log::ConsistencyProof)),
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
    // A SERVER span per request when tracing is on, continuing the caller's trace.
    let traced = app.tracer.as_ref().map(|tracer| {
        let parent = fleetforge_otel::Parent::from_headers(req.headers());
        let started = tracer.start_span(parent.as_ref());
        (tracer, started, std::time::SystemTime::now(), req.uri().path().to_owned())
    });
    let response = next.run(req).await;
    let status = response.status().as_u16();
    app.metrics.request(&format!("{method} {route}"), status);
    if let Some((tracer, started, at, path)) = traced.filter(|(_, s, _, _)| s.sampled) {
        let start = fleetforge_otel::unix_nanos(at);
        let mut span = started.span(format!("{method} {route}"), fleetforge_otel::Kind::Server, start);
        span.end_unix_nano = fleetforge_otel::unix_nanos(std::time::SystemTime::now());
        span.set("http.request.method", method.as_str());
        span.set("http.route", route);
        span.set("url.path", path);
        span.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.set("error.type", status.to_string());
            span.status = fleetforge_otel::Status::Error(format!("answered {status}"));
        }
        tracer.submit(span);
    }
    response
}

async fn fallback() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such route; see /openapi.json")
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/runs", post(runs::create_run).get(runs::list_runs))
        .route("/v1/runs/{id}", get(runs::show_run))
        .route("/v1/runs/{id}/token", post(runs::issue_token))
        .route("/v1/runs/{id}/revoke", post(runs::revoke_run))
        .route("/v1/runs/{id}/budget/lease", post(leases::lease))
        .route("/v1/runs/{id}/receipts", get(receipts::run_receipts))
        .route("/v1/runs/{id}/verify", get(receipts::verify_run))
        .route("/v1/receipts", post(receipts::post_receipts))
        .route("/v1/receipts/{id}", get(receipts::one_receipt))
        .route("/v1/runs/{id}/replay-manifest", get(replay::replay_manifest))
        .route("/v1/runs/{id}/replay-report", get(replay::replay_report))
        // The handler reads the body itself, after authentication, up to seals::MAX_SEAL_BYTES.
        .route("/v1/seals/{sha256}", put(seals::put_seal).get(seals::get_seal))
        .route("/v1/log/{tenant}/head", get(log::head))
        .route("/v1/log/{tenant}/checkpoint", get(log::checkpoint))
        .route("/v1/log/{tenant}/inclusion/{receipt_id}", get(log::inclusion))
        .route("/v1/log/{tenant}/consistency", get(log::consistency))
        .route("/v1/attestations/{id}", put(attestations::put_attestation).get(attestations::get_attestation))
        .route("/v1/runs/{id}/attestations", get(attestations::run_attestations))
        .route("/v1/runs/{id}/hold", post(retention::hold).delete(retention::release))
        .route("/v1/runs/{id}/close", post(scitt::close))
        .route("/v1/runs/{id}/scitt", get(scitt::run_statements))
        .route("/v1/scitt/statements", post(scitt::register))
        .route("/v1/scitt/statements/{id}", get(scitt::get_statement))
        .route("/v1/scitt/receipts/{id}", get(scitt::get_receipt))
        .route("/v1/keys", get(keys::list_keys))
        .route("/v1/keys/{key_id}", put(keys::put_key))
        .route("/v1/capabilities/revoke", post(capabilities::revoke_capability))
        .route("/v1/revocations", get(capabilities::list_revocations))
        .route("/v1/runs/{id}/export/vc", get(exports::export_vc))
        .route("/v1/runs/{id}/export/aibom", get(exports::export_aibom))
        .route("/v1/runs/{id}/export/scitt", get(scitt::export_scitt))
        .route("/v1/runs/{id}/export/c2pa", get(exports::export_c2pa))
        .route("/v1/ui/login-links", post(ui::login_link))
        .route("/", get(ui::runs_page))
        .route("/runs/{id}", get(ui::run_page))
        .route("/demo", get(ui::demo))
        .route("/login", get(ui::login))
        .route("/ui.js", get(ui::script))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(64 << 20))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}
