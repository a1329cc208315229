//! Phase 5, settle: reconcile a call's reservation with what it actually used.
//!
//! Runs when the response body has ended (or failed, or the client went away), because a stream's
//! usage is only known at its end; the tap's [`crate::context::Summary`] is on the call by then.
//! Releases the unused part of the reservation made by [`crate::meter`], adds the call's usage to
//! its run's ledger, and ends the call's place in the ledger's in-flight count. The usage the tap
//! read is priced here ([`crate::prices`]) before it is recorded. With no budgets yet,
//! reservations are empty.

use crate::context::{Call, Outcome, Reservation};
use crate::state::Proxy;

/// Reconciles the call's reservation with its outcome. Today: reservations are always empty.
pub fn settle(proxy: &Proxy, call: &mut Call, _outcome: &Outcome) {
    if let Some(usage) = call.usage.as_mut() {
        usage.cost_micro_usd = proxy.prices.cost_micro_usd(usage);
    }
    debug_assert_eq!(call.reservation, Reservation::default(), "no budgets exist yet, so nothing can be reserved");
    if let Some(ledger) = &call.ledger {
        if let Some(usage) = &call.usage {
            let tokens = usage.input_tokens.unwrap_or(0).saturating_add(usage.output_tokens.unwrap_or(0));
            ledger.add_usage(tokens, usage.cost_micro_usd.unwrap_or(0));
        }
        ledger.end_call();
    }
}
