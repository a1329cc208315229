//! Runs: `POST /v1/runs`, `GET /v1/runs`, `GET /v1/runs/{id}`, `POST /v1/runs/{id}/token` (a new
//! run token for a run that exists) and `POST /v1/runs/{id}/revoke`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetforge_trust::capability::Grants;
use fleetforge_trust::receipt::DatasetDigest;
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, App, ErrorKind, bad_json, bad_query, json_error, principal, require, run_of};
use crate::auth::{self, Role};
use crate::store::RunRow;

/// `POST /v1/runs` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// The run's id (1 to 128 of `A-Z a-z 0-9 . _ -`); default `run-` and 12 random characters.
    /// An id that exists already is `409 conflict`.
    #[serde(default)]
    pub id: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: serde_json::Map<String, Value>,
    /// Budget SLOs: `tokens`, `cost_usd`, `calls`, `wall_seconds`, `tokens_per_minute`,
    /// `calls_per_minute`; carried in the run token and enforced by every proxy the run calls
    /// through.
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

/// A run's budget. Every member is optional; a negative, fractional (for counts) or non-numeric
/// value is refused naming the member (`422`).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Budget {
    /// Token ceiling: input + output tokens of the run's LLM calls.
    pub tokens: Option<u64>,
    /// Cost ceiling, USD (priced by the proxy's price list).
    pub cost_usd: Option<f64>,
    /// Call ceiling: calls the proxy forwards, LLM or not.
    pub calls: Option<u64>,
    /// Wall-time budget: seconds from the run's creation after which it makes no more calls.
    pub wall_seconds: Option<u64>,
    /// Rate SLO: LLM tokens per minute (a call over it waits in the run's queue).
    pub tokens_per_minute: Option<u64>,
    /// Rate SLO: calls per minute.
    pub calls_per_minute: Option<u64>,
}

impl Budget {
    /// The budget as run-token grants, the wall time counted from `now` (unix seconds).
    pub fn to_grants(&self, now: u64) -> (Option<u64>, fleetforge_trust::capability::Budget) {
        // Rounded down: a ceiling in millionths of a dollar never exceeds the one asked for.
        let micro = |usd: f64| (usd * 1e6).floor() as u64;
        let budget = fleetforge_trust::capability::Budget {
            cost_micro_usd: self.cost_usd.map(micro),
            calls: self.calls,
            deadline: self.wall_seconds.map(|s| now.saturating_add(s)),
            tokens_per_minute: self.tokens_per_minute,
            calls_per_minute: self.calls_per_minute,
        };
        (self.tokens, budget)
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let members = serde_json::Map::<String, Value>::deserialize(d)?;
        let mut budget = Budget::default();
        for (name, value) in members {
            if value.is_null() {
                continue;
            }
            let count = || {
                value.as_u64().ok_or_else(|| {
                    D::Error::custom(format!("budget.{name} is {value}; expected a whole number, 0 or more"))
                })
            };
            match name.as_str() {
                "tokens" => budget.tokens = Some(count()?),
                "calls" => budget.calls = Some(count()?),
                "tokens_per_minute" => budget.tokens_per_minute = Some(count()?),
                "calls_per_minute" => budget.calls_per_minute = Some(count()?),
                "wall_seconds" => budget.wall_seconds = Some(count()?),
                "cost_usd" => {
                    let usd = value.as_f64().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
                        D::Error::custom(format!("budget.cost_usd is {value}; expected US dollars, 0 or more"))
                    })?;
                    budget.cost_usd = Some(usd);
                }
                other => {
                    return Err(D::Error::custom(format!(
                        "budget has no member {other:?}; expected tokens, cost_usd, calls, wall_seconds, tokens_per_minute or calls_per_minute"
                    )));
                }
            }
        }
        Ok(budget)
    }
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
    /// The same, unix seconds (kept in the store, not sent).
    #[serde(skip)]
    pub expires: u64,
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
    /// When the run ended: closed (`POST /v1/runs/{id}/close`) or idle past
    /// `control.scitt.idle_secs`; its SCITT statement is emitted then. A receipt arriving later
    /// opens it again.
    closed_at: Option<String>,
    /// Why it ended: `closed` or `idle`.
    close_reason: Option<String>,
    /// The budget the run's token carries against what its stored receipts used (calls in
    /// flight on proxies are not counted until their receipts arrive).
    #[schema(value_type = Object)]
    budget_state: Value,
    /// The datasets the run's receipts name (`[[dataset]]` of the proxies it called through):
    /// `[{name, sha256, size}]`, empty when none. Shown by `GET /v1/runs/{id}`, not in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    datasets: Option<Vec<DatasetDigest>>,
}

/// `budget_state` of a run: each limit its token carries, with what the stored receipts used and
/// what remains.
fn budget_state(r: &RunRow, grants: &Grants) -> Value {
    let used_tokens = u64::try_from(r.input_tokens.saturating_add(r.output_tokens)).unwrap_or(0);
    let used_micro = u64::try_from(r.cost_micro_usd).unwrap_or(0);
    let b = &grants.budget;
    let usd = |micro: u64| micro as f64 / 1e6;
    json!({
        "tokens": grants.max_tokens.map(|limit| json!({
            "limit": limit, "used": used_tokens, "remaining": limit.saturating_sub(used_tokens),
        })),
        "cost_usd": b.cost_micro_usd.map(|limit| json!({
            "limit": usd(limit), "used": usd(used_micro), "remaining": usd(limit.saturating_sub(used_micro)),
        })),
        "calls": b.calls,
        "deadline": b.deadline.map(|d| rfc3339(i64::try_from(d).unwrap_or(i64::MAX).saturating_mul(1_000_000))),
        "tokens_per_minute": b.tokens_per_minute,
        "calls_per_minute": b.calls_per_minute,
    })
}

pub(super) fn view(r: RunRow) -> RunView {
    let grants: Grants = serde_json::from_str(&r.grants).unwrap_or_default();
    RunView {
        budget_state: budget_state(&r, &grants),
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
        closed_at: r.closed_at.map(rfc3339),
        close_reason: r.close_reason,
        rejected: r.rejected,
        id: r.id,
        tenant: r.tenant,
        datasets: None,
    }
}

#[utoipa::path(post, path = "/v1/runs", request_body = CreateRun,
    responses((status = 201, body = CreatedRun), (status = 400), (status = 401), (status = 403)), security(("bearer" = [])))]
pub(super) async fn create_run(
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
    let ttl = ttl_seconds(body.ttl_seconds)?;
    let id = match body.id {
        Some(id) => {
            fleetforge_trust::RunId::new(&id)
                .map_err(|e| ApiError::bad_request(format!("id {id:?} is not a run id: {e}")))?;
            id
        }
        None => format!("run-{}", auth::new_id(12)),
    };
    let mut grants = body.grants.unwrap_or_default();
    if let Some(budget) = &body.budget {
        // The budget rides in the run token, so every proxy enforces it without asking control.
        let (tokens, rest) = budget.to_grants(fleetforge_trust::capability::unix_now());
        grants.max_tokens = grants.max_tokens.or(tokens);
        grants.budget = rest;
    }
    let minted = mint(&app, &id, &tenant, body.agent.as_deref(), &grants, ttl)?;
    let labels = Value::Object(body.labels).to_string();
    let budget = serde_json::to_string(&body.budget.unwrap_or_default()).unwrap_or_else(|_| "{}".into());
    if !app.store.create_run(&id, &tenant, &labels, &budget, &auth::token_hash(&minted.token)).await? {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("run {id} exists already; pick another id, or give it a new token with POST /v1/runs/{id}/token"),
        ));
    }
    record(&app, &minted, body.agent.as_deref(), &grants).await?;
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}

/// `POST /v1/runs/{id}/token` body; every member is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    /// The agent (default: the one the run's current token names).
    #[serde(default)]
    pub agent: Option<String>,
    /// What the new token allows (default: what the run's current token allows).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub grants: Option<Grants>,
    /// Token lifetime in seconds (default 86400, at most 30 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A new run token for a run that exists (one made by `POST /v1/runs`, or by the first receipt a
/// proxy shipped for it). The run's previous token is revoked: one run, one live token. A revoked
/// run gets none (`409`): create a new run.
#[utoipa::path(post, path = "/v1/runs/{id}/token", params(("id" = String, Path)), request_body = IssueToken,
    responses((status = 201, body = CreatedRun), (status = 400), (status = 404), (status = 409)), security(("bearer" = [])))]
pub(super) async fn issue_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let p = principal(&app, &headers).await?;
    // No body at all is the same as `{}`.
    let body: IssueToken = if body.iter().all(u8::is_ascii_whitespace) {
        IssueToken::default()
    } else {
        serde_json::from_slice(&body).map_err(json_error)?
    };
    require(&p, &[Role::Admin])?;
    let run = run_of(&app, &p, &id).await?;
    if run.revoked_at.is_some() {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("run {id} was revoked and gets no new token; create a new run (POST /v1/runs)"),
        ));
    }
    let ttl = ttl_seconds(body.ttl_seconds)?;
    let grants = match body.grants {
        Some(g) => g,
        None => serde_json::from_str::<Grants>(&run.grants).unwrap_or_default(),
    };
    let agent = body.agent.or(run.agent);
    let minted = mint(&app, &id, &run.tenant, agent.as_deref(), &grants, ttl)?;
    record(&app, &minted, agent.as_deref(), &grants).await?;
    if let Some(previous) = run.token_id.filter(|t| *t != minted.token_id) {
        app.store.revoke(&previous, None, &run.tenant, "superseded by a new run token").await?;
        tracing::info!(run = %id, revoked = %previous, token_id = %minted.token_id, "run token replaced");
    }
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}

fn ttl_seconds(given: Option<u64>) -> ApiResult<u64> {
    let ttl = given.unwrap_or(86_400);
    if ttl == 0 || ttl > 30 * 86_400 {
        return Err(ApiError::bad_request(format!("ttl_seconds is {ttl}; expected 1 to 2592000 (30 days)")));
    }
    Ok(ttl)
}

/// A run token for `run`, signed by the newest capability root key.
fn mint(app: &App, run: &str, tenant: &str, agent: Option<&str>, grants: &Grants, ttl: u64) -> ApiResult<CreatedRun> {
    let expires = fleetforge_trust::capability::unix_now() + ttl;
    let claims = fleetforge_trust::capability::RunClaims {
        run: run.to_owned(),
        tenant: tenant.to_owned(),
        agent: agent.map(str::to_owned),
        expires,
        grants: grants.clone(),
    };
    let root = app.roots.newest().ok_or_else(|| ApiError::internal("no capability root key is loaded"))?;
    let fleetforge_trust::capability::Minted { token, id: token_id } =
        fleetforge_trust::capability::mint(&root.pair, root.id, &claims)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let expires_at = rfc3339(i64::try_from(expires).unwrap_or(i64::MAX).saturating_mul(1_000_000));
    Ok(CreatedRun { id: run.to_owned(), token, token_id, expires_at, expires })
}

/// Stores what the run's (new) token carries.
async fn record(app: &App, minted: &CreatedRun, agent: Option<&str>, grants: &Grants) -> ApiResult<()> {
    let grants_json = serde_json::to_string(grants).unwrap_or_else(|_| "{}".into());
    let expires = i64::try_from(minted.expires).unwrap_or(i64::MAX);
    app.store.set_capability(&minted.id, agent, &grants_json, expires, &minted.token_id).await?;
    Ok(())
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
pub(super) async fn list_runs(
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
pub(super) async fn show_run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let p = principal(&app, &headers).await?;
    let run = run_of(&app, &p, &id).await?;
    let limits = super::leases::limits(&run);
    let leases = app.store.leases(&id).await?;
    let datasets = app.store.datasets(&id).await?;
    let mut view = view(run);
    if !leases.is_empty() {
        view.budget_state["leases"] = super::leases::state(&limits, &leases);
    }
    view.datasets = Some(datasets);
    Ok(Json(view))
}

#[utoipa::path(post, path = "/v1/runs/{id}/revoke", params(("id" = String, Path)),
    responses((status = 200), (status = 404)), security(("bearer" = [])))]
pub(super) async fn revoke_run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Admin])?;
    let run = run_of(&app, &p, &id).await?;
    let token_id =
        run.token_id.ok_or_else(|| ApiError::bad_request(format!("run {id} has no capability token to revoke")))?;
    app.store.revoke(&token_id, Some(&id), &run.tenant, "run revoked").await?;
    tracing::info!(run = %id, token_id = %token_id, "run token revoked");
    Ok(Json(json!({ "run": id, "revoked": [token_id] })))
}
