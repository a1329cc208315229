//! Phase 5, settle: reconcile a call's reservation with what it actually used.
//!
//! Runs when the response body has ended (or failed, or the client went away), because a stream's
//! usage is only known at its end. Releases the unused part of the reservation made by
//! [`crate::meter`] and updates the run's ledger. With no budgets yet, reservations are empty and
//! there is nothing to release; the phase keeps its place in the pipeline.

use crate::context::Call;
use crate::meter::Reservation;
use crate::proxy::Proxy;

/// Reconciles `reservation` with the call's outcome. Today: reservations are always empty.
pub fn settle(_proxy: &Proxy, _call: &Call, reservation: Reservation) {
    debug_assert_eq!(reservation, Reservation::default(), "no budgets exist yet, so nothing can be reserved");
}
