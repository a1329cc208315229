//! Phase 3, meter: reserve the call's cost against its run's budget before it is forwarded.
//!
//! Contract of this phase: `Ok(Reservation)` — continue to seal + forward, holding the
//! reservation that [`crate::settle`] reconciles when the call ends; or a 429 `budget_exceeded`
//! error when the reservation cannot fit the remaining budget.
//!
//! Runs have no budgets yet (budgets arrive with the control service), so today every call
//! continues with an empty reservation. The phase exists now so that budgets plug in here without
//! moving anything else.

use crate::context::Call;
use crate::error::ProxyError;
use crate::proxy::Proxy;

/// What the meter phase set aside for a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Tokens reserved (input estimate + output cap).
    pub tokens: u64,
}

/// Reserves the call's estimated cost. Today: nothing to reserve (no budgets), always continues.
pub fn meter(_proxy: &Proxy, _call: &Call) -> Result<Reservation, ProxyError> {
    Ok(Reservation::default())
}
