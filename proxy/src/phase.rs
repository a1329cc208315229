//! What a phase decided about a call it did not refuse.
//!
//! Phases before forward return `Result<Next, ProxyError>`: [`Next::Continue`] goes on to the
//! next phase; [`Next::Respond`] answers the client now with a response the phase made (replay
//! serves a recorded one) — it still streams through the tap, and settle and record still run;
//! an error refuses the call with its contract error response.

use http::Response;

use crate::body::UpstreamBody;

/// What a phase decided about a call that it did not refuse.
#[derive(Debug)]
pub enum Next {
    /// Go on to the next phase.
    Continue,
    /// Answer the client with this response now; the phases up to forward are skipped.
    Respond(Response<UpstreamBody>),
}
