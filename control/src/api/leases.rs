//! `POST /v1/runs/{id}/budget/lease`: the proxies of a fleet share one run's budget by holding
//! slices of it ([`crate::store`]'s lease rows, under the run's row lock).
//!
//! A proxy asks when a call does not fit what it holds, and gives back what it holds beyond its
//! commitment when the run goes idle on it. Slices are reservations: every holder together never
//! holds more than the run's budget (its token's `max_tokens`, `budget_cost`, `budget_calls`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use fleetforge_trust::capability::Grants;
use fleetforge_trust::wire::{Held, Lease, LeaseRequest};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, App, bad_json, principal, require, run_of};
use crate::auth::Role;
use crate::store::{LeaseRow, RunRow};

/// The limits of a run that leases share: tokens, cost and calls from its token's grants.
pub(super) fn limits(run: &RunRow) -> Held {
    let grants: Grants = serde_json::from_str(&run.grants).unwrap_or_default();
    Held { tokens: grants.max_tokens, cost_micro_usd: grants.budget.cost_micro_usd, calls: grants.budget.calls }
}

/// Leases a slice of the run's budget to the proxy asking, or takes back what it gives back.
#[utoipa::path(post, path = "/v1/runs/{id}/budget/lease", params(("id" = String, Path)), request_body = LeaseRequest,
    responses((status = 200, body = Lease), (status = 400), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub(super) async fn lease(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<LeaseRequest>, JsonRejection>,
) -> ApiResult<Json<Lease>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Proxy, Role::Admin])?;
    let Json(request) = body.map_err(bad_json)?;
    if request.holder.is_empty() || request.holder.len() > 128 {
        return Err(ApiError::bad_request(format!(
            "holder is {:?}; expected the proxy's receipt signing key id (1 to 128 characters)",
            request.holder
        )));
    }
    let run = run_of(&app, &p, &id).await?;
    let limits = limits(&run);
    let granted =
        app.store.lease(&id, &limits, &request).await?.ok_or_else(|| ApiError::not_found(&format!("run {id}")))?;
    let held = Held {
        tokens: limits.tokens.map(|_| granted.held.tokens),
        cost_micro_usd: limits.cost_micro_usd.map(|_| granted.held.cost_micro_usd),
        calls: limits.calls.map(|_| granted.held.calls),
    };
    tracing::debug!(run = %id, holder = %request.holder, release = request.release, ?held, "budget lease");
    Ok(Json(Lease { run: id, holder: request.holder, held, limits, leased: granted.leased }))
}

/// The `leases` member of a run's `budget_state`: what each proxy holds and has committed.
pub(super) fn state(limits: &Held, rows: &[LeaseRow]) -> Value {
    let usd = |micro: u64| micro as f64 / 1e6;
    let member = |tokens: u64, cost: u64, calls: u64| {
        json!({
            "tokens": limits.tokens.map(|_| tokens),
            "cost_usd": limits.cost_micro_usd.map(|_| usd(cost)),
            "calls": limits.calls.map(|_| calls),
        })
    };
    let (mut tokens, mut cost, mut calls) = (0u64, 0u64, 0u64);
    let holders: Vec<Value> = rows
        .iter()
        .map(|r| {
            tokens = tokens.saturating_add(r.held.tokens);
            cost = cost.saturating_add(r.held.cost_micro_usd);
            calls = calls.saturating_add(r.held.calls);
            json!({
                "holder": r.holder,
                "held": member(r.held.tokens, r.held.cost_micro_usd, r.held.calls),
                "committed": member(r.committed.tokens, r.committed.cost_micro_usd, r.committed.calls),
                "updated_at": fleetforge_trust::text::rfc3339_from_unix_micros(r.updated_at),
            })
        })
        .collect();
    json!({ "leased": member(tokens, cost, calls), "holders": holders })
}
