//! Phase 5, settle: reconcile a call's reservation with what it actually used.
//!
//! Runs when the response body has ended (or failed, or the client went away), because a stream's
//! usage is only known at its end; the tap's [`crate::context::Summary`] is on the call by then.
//! The usage the tap read is priced here ([`crate::prices`]). A call admitted under a budget
//! releases its reservation and is charged what the upstream reported; a successful LLM response
//! that reported no usage is charged its whole reservation, and its receipt says the figure is
//! estimated ([`crate::budget::settle`]); so is a stream the guard ended ([`crate::guard`]), whose
//! receipt also says it was truncated. The rate SLO's buckets are trued up to the same figure.
//! Every call then ends its place in the ledger's in-flight count.

use crate::budget;
use crate::context::{Call, Outcome};
use crate::state::Proxy;

/// Reconciles the call's reservation with its outcome.
pub fn settle(proxy: &Proxy, call: &mut Call, outcome: &Outcome) {
    if let Some(usage) = call.usage.as_mut() {
        usage.cost_micro_usd = proxy.prices.cost_micro_usd(usage);
    }
    let Some(ledger) = call.ledger.clone() else { return };
    let reported = call.usage.as_ref().map(|u| {
        let tokens = u.input_tokens.unwrap_or(0).saturating_add(u.output_tokens.unwrap_or(0));
        (tokens, u.cost_micro_usd)
    });
    let reservation = call.reservation;
    if reservation.metered {
        let used = match reported {
            // What the upstream bills for a stream it was not let finish is not known.
            _ if call.truncated => None,
            Some((tokens, cost)) => Some((tokens, cost.unwrap_or(reservation.cost_micro_usd))),
            None if reservation.tokens > 0 && answered(call, outcome) => None,
            None => Some((0, 0)),
        };
        let (tokens_used, cost_used) = ledger.with_state(|s| {
            budget::settle(s, &reservation, used);
            (s.tokens_used, s.cost_micro_usd)
        });
        let charged = used.map_or(reservation.tokens, |(t, _)| t);
        if call.rate_tokens > 0 {
            ledger.rate.adjust(call.rate_tokens, charged);
        }
        if let Some(part) = call.budget.as_mut() {
            part.estimated = used.is_none();
            part.truncated = call.truncated;
            part.tokens_left = part.tokens_limit.map(|l| l.saturating_sub(tokens_used));
            part.cost_left_micro_usd = part.cost_limit_micro_usd.map(|l| l.saturating_sub(cost_used));
        }
        proxy.metrics.budget_settled(charged);
    } else if let Some((tokens, cost)) = reported {
        ledger.add_usage(tokens, cost.unwrap_or(0));
    }
    ledger.end_call();
}

/// Whether the upstream answered the call with success (so it may have spent tokens even when it
/// reported none).
fn answered(call: &Call, outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Failed(_)) && call.status.is_some_and(|s| s.is_success())
}
