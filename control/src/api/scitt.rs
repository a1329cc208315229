//! SCITT over HTTP: ending a run (`POST /v1/runs/{id}/close`), its statements
//! (`GET /v1/runs/{id}/scitt`), registering statements (`POST /v1/scitt/statements`: an external
//! COSE_Sign1, or `{"run"}` / `{"receipt"}` for control to issue one now), and reading them
//! back (`GET /v1/scitt/statements/{id}`) with their COSE receipts
//! (`GET /v1/scitt/receipts/{id}`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetforge_trust::canonical::hex;
use fleetforge_trust::scitt::{self, Claims, ReceiptProof};
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;
use fleetforge_trust::tlog;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, App, ErrorKind, json_error, media_type, principal, require, run_of};
use crate::auth::Role;
use crate::scitt::IssueError;
use crate::store::StatementRow;

/// The media type of COSE objects (RFC 9052).
const COSE: &str = "application/cose";

impl crate::scitt::Service for App {
    fn store(&self) -> &crate::store::Store {
        &self.store
    }

    fn roots(&self) -> &crate::capability::KeyRing {
        &self.roots
    }

    fn wake(&self) -> &crate::scitt::Wake {
        &self.scitt
    }

    fn emitted(&self, n: u64) {
        self.metrics.statements(n);
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Store(e) => e.into(),
            IssueError::NoKey => ApiError::internal("no capability root key can sign statements"),
            IssueError::Refused(why) => ApiError::new(ErrorKind::Conflict, why),
        }
    }
}

fn view(s: &StatementRow) -> Value {
    json!({
        "id": s.id,
        "tenant": s.tenant,
        "kind": s.kind,
        "subject": s.subject,
        "run": s.run_id,
        "issuer": s.issuer,
        "content_type": s.content_type,
        "receipts": s.receipts,
        "log_index": s.log_index,
        "created_at": rfc3339(s.created_at),
        "statement": format!("/v1/scitt/statements/{}", s.id),
        "receipt": format!("/v1/scitt/receipts/{}", s.id),
    })
}

fn cose(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, COSE)], bytes).into_response()
}

/// Ends a run: its SCITT statement is emitted through the outbox.
#[utoipa::path(post, path = "/v1/runs/{id}/close", params(("id" = String, Path)),
    responses((status = 200, description = "`{run, closed: true, closed_at, reason, ended_now}`: `ended_now` is false when it had ended already (closing is idempotent)"),
        (status = 403, description = "`forbidden`: a reader token"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn close(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Admin, Role::Proxy])?;
    run_of(&app, &p, &id).await?;
    let ended_now = app.store.end_run(&id, "closed").await?;
    if ended_now {
        app.scitt.now();
        tracing::info!(run = %id, "run closed; its SCITT statement is on the outbox");
    }
    let (at, reason) = app.store.run_end(&id).await?.unwrap_or_default();
    Ok(Json(json!({ "run": id, "closed": true, "closed_at": rfc3339(at), "reason": reason, "ended_now": ended_now })))
}

/// The SCITT statements about a run, oldest first.
#[utoipa::path(get, path = "/v1/runs/{id}/scitt", params(("id" = String, Path)),
    responses((status = 200, description = "`{run, closed_at, close_reason, statements: [{id, kind, subject, issuer, content_type, receipts, log_index, created_at, statement, receipt}]}`"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn run_statements(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let list: Vec<Value> = app.store.statements_of_run(&id).await?.iter().map(view).collect();
    Ok(Json(json!({
        "run": id,
        "closed_at": run.closed_at.map(rfc3339),
        "close_reason": run.close_reason,
        "statements": list,
    })))
}

/// `POST /v1/scitt/statements` with a JSON body: what control should state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    run: Option<String>,
    receipt: Option<String>,
}

/// Registers a signed statement in the caller's tenant log, or has control issue one.
#[utoipa::path(post, path = "/v1/scitt/statements",
    request_body(description = "`application/cose`: a COSE_Sign1 signed statement (CWT claims iss and sub in the protected header; a `did:key` issuer's EdDSA signature is checked). `application/json`: `{\"run\": ID}` or `{\"receipt\": ID}` for control to state that run (its receipts so far) or receipt."),
    responses((status = 201, description = "`{id, tenant, kind, subject, run, issuer, content_type, receipts, log_index, created_at, statement, receipt, issuer_verified}`"),
        (status = 200, description = "The same statement was registered already (or the run's newest statement covers the same receipts)"),
        (status = 400, description = "`invalid_request`: not a COSE_Sign1, no algorithm, no CWT claims with iss and sub, a `did:key` signature that does not verify; a JSON body naming neither or both"),
        (status = 403, description = "`forbidden`: a reader token registering an external statement"),
        (status = 404, description = "`not_found`: the run or receipt is not in the token's tenant"),
        (status = 409, description = "`conflict`: the receipt was pruned by retention"),
        (status = 413, description = "`invalid_request`: a statement over 1 MiB"),
        (status = 415, description = "`invalid_request`: neither application/cose nor application/json")),
    security(("bearer" = [])))]
pub(super) async fn register(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = principal(&app, &headers).await?;
    let media = media_type(&headers);
    let status = |created: bool| if created { StatusCode::CREATED } else { StatusCode::OK };
    if media == COSE {
        require(&p, &[Role::Admin, Role::Proxy])?;
        if body.len() > scitt::MAX_STATEMENT_BYTES {
            return Err(ApiError::new(
                ErrorKind::BodyTooLarge,
                format!("a statement is at most {} bytes; this one is {}", scitt::MAX_STATEMENT_BYTES, body.len()),
            ));
        }
        let statement = scitt::parse_statement(&body)
            .map_err(|e| ApiError::bad_request(format!("not a signed statement this log registers: {e}")))?;
        let verified = match statement.claims.iss.strip_prefix("did:key:") {
            Some(_) => {
                let key = fleetforge_trust::vc::resolve_did_key(&statement.claims.iss).map_err(|e| {
                    ApiError::bad_request(format!(
                        "the issuer {:?} is not an ed25519 did:key: {e}",
                        statement.claims.iss
                    ))
                })?;
                statement.verify_ed25519(&key).map_err(|e| {
                    ApiError::bad_request(format!(
                        "the statement's signature by {} does not verify: {e}",
                        statement.claims.iss
                    ))
                })?;
                true
            }
            None => false,
        };
        let mut tx = app.store.begin_ingest().await?;
        let (row, created) = crate::scitt::register_external(&mut tx, p.write_tenant(), &statement, &body).await?;
        tx.commit().await?;
        let mut v = view(&row);
        v["issuer_verified"] = json!(verified);
        return Ok((status(created), Json(v)));
    }
    if media != "application/json" {
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "a statement is sent as application/cose (a COSE_Sign1), or application/json ({{\"run\"}} or {{\"receipt\"}}); not {media:?}"
            ),
        ));
    }
    let req: IssueRequest = serde_json::from_slice(&body).map_err(json_error)?;
    let (row, created) = match (req.run, req.receipt) {
        (Some(run), None) => {
            let run = run_of(&app, &p, &run).await?;
            let mut tx = app.store.begin_ingest().await?;
            let out = crate::scitt::issue_run(&*app, &mut tx, &run.tenant, &run.id, "requested").await?;
            tx.commit().await?;
            out
        }
        (None, Some(receipt)) => {
            let stored = match app.store.receipt(&receipt).await? {
                Some(r) if p.can_read(&r.tenant) => r,
                _ => return Err(ApiError::not_found(&format!("receipt {receipt}"))),
            };
            if stored.pruned_at.is_some() {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("receipt {receipt} was pruned by retention; its body can no longer be stated"),
                ));
            }
            let mut tx = app.store.begin_ingest().await?;
            let out =
                crate::scitt::issue_receipt(&*app, &mut tx, &stored.tenant, &stored.run_id, &receipt, &stored.body)
                    .await?;
            tx.commit().await?;
            out
        }
        _ => {
            return Err(ApiError::bad_request(
                "name exactly one of run or receipt: {\"run\": ID} or {\"receipt\": ID}",
            ));
        }
    };
    let mut v = view(&row);
    v["issuer_verified"] = json!(true);
    Ok((status(created), Json(v)))
}

/// The run's SCITT statement: the newest, issued now when it does not cover the run's receipts
/// (as `POST /v1/scitt/statements {"run"}` does).
#[utoipa::path(get, path = "/v1/runs/{id}/export/scitt", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/cose",
            description = "The run statement (COSE_Sign1); its id (SHA-256, hex) also in `FleetForge-Statement-Id`, its COSE receipt at `/v1/scitt/receipts/{id}`"),
        (status = 404, description = "`not_found`: no such run in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn export_scitt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let mut tx = app.store.begin_ingest().await?;
    let (row, _) = crate::scitt::issue_run(&*app, &mut tx, &run.tenant, &run.id, "requested").await?;
    tx.commit().await?;
    Ok((
        [(header::CONTENT_TYPE, COSE.to_owned()), (header::HeaderName::from_static("fleetforge-statement-id"), row.id)],
        row.cose,
    )
        .into_response())
}

async fn statement_of(app: &App, headers: &HeaderMap, id: &str) -> ApiResult<StatementRow> {
    let p = principal(app, headers).await?;
    match app.store.statement(&id.to_ascii_lowercase()).await? {
        Some(s) if p.can_read(&s.tenant) => Ok(s),
        _ => Err(ApiError::not_found(&format!("statement {id}"))),
    }
}

/// A registered statement: its COSE_Sign1 bytes.
#[utoipa::path(get, path = "/v1/scitt/statements/{id}", params(("id" = String, Path, description = "SHA-256 of the statement, hex")),
    responses((status = 200, content_type = "application/cose", description = "The COSE_Sign1 as registered"),
        (status = 404, description = "`not_found`: no such statement in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn get_statement(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(cose(statement_of(&app, &headers, &id).await?.cose))
}

/// A statement's COSE receipt: the log's signature over its current head with the statement's
/// inclusion proof (RFC9162_SHA256).
#[utoipa::path(get, path = "/v1/scitt/receipts/{id}", params(("id" = String, Path, description = "SHA-256 of the statement, hex")),
    responses((status = 200, content_type = "application/cose",
            description = "COSE_Sign1, detached payload (the tree head); protected {alg: EdDSA, kid, 395: 1, 15: {iss: log origin, sub: statement id, iat}}; unprotected {396: {-1: [bstr .cbor [size, index, [hashes]]]}}"),
        (status = 404, description = "`not_found`: no such statement in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn get_receipt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = statement_of(&app, &headers, &id).await?;
    let head = app.store.log_head(&s.tenant).await?;
    let (index, size) = (s.log_index, head.size);
    let (path, root) = app
        .store
        .with_log_nodes(&s.tenant, |nodes| Ok((tlog::inclusion(nodes, index, size)?, tlog::root(nodes, size)?)))
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, statement = %s.id, "computing a COSE receipt");
            ApiError::internal("the control service could not compute the proof; see its log")
        })?;
    let root_key = app.roots.newest().ok_or_else(|| ApiError::internal("no capability root key is loaded"))?;
    let pair = root_key.ring().ok_or_else(|| ApiError::internal("the capability root key cannot sign"))?;
    let claims = Claims {
        iss: super::log::origin(&s.tenant),
        sub: s.id.clone(),
        iat: Some(crate::store::now_micros() / 1_000_000),
    };
    let receipt = scitt::sign_receipt(&ReceiptProof { size, index, path }, &root, &claims, &root_key.key_id(), &pair);
    tracing::debug!(statement = %s.id, size, root = %hex(&root), "COSE receipt");
    Ok(cose(receipt))
}
