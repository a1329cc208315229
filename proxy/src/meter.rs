//! Phase 3, meter: reserve the call's cost against its run's budget before it is forwarded.
//!
//! Contract of this phase: `Ok(Next::Continue)` with `call.reservation` set — continue to seal +
//! forward, holding the reservation that [`crate::settle`] reconciles when the call ends; or a
//! 429 `budget_exceeded` error when the reservation cannot fit the remaining budget. The phase is
//! async because a call over its run's rate may wait in the run's queue, or for a budget lease
//! from control, before it continues.
//!
//! Runs have no budgets yet, so today every call continues with an empty reservation; the run's
//! budget figures wait in its ledger ([`crate::runs::RunState`]). The phase holds its place so
//! that budgets plug in here without moving anything else.

use crate::context::{Call, Reservation};
use crate::error::ProxyError;
use crate::outbound::Outbound;
use crate::phase::Next;
use crate::state::Proxy;

/// Reserves the call's estimated cost. Today: nothing to reserve (no budgets), always continues.
pub async fn meter(_proxy: &Proxy, call: &mut Call, _request: &Outbound) -> Result<Next, ProxyError> {
    call.reservation = Reservation::default();
    Ok(Next::Continue)
}
