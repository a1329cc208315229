//! Phase 6, record: the one place a finished call is written down.
//!
//! Runs exactly once per call, when the call has ended — after the response body's last byte,
//! after an error response, or when the client went away. Today it updates the metrics and writes
//! a debug log line (fields first, then a short sentence); the signed, hash-chained receipt and
//! the durable spool are built here from the same [`Call`], so there is one place to audit for
//! what a receipt contains and that it contains no secret.

use crate::context::{Call, Outcome};
use crate::error::Side;
use crate::proxy::Proxy;

/// Records a finished call.
pub fn record(proxy: &Proxy, call: &Call, outcome: &Outcome) {
    let status = call.status.map_or(0, |s| s.as_u16());
    let elapsed = call.started.elapsed();
    proxy.metrics.call_finished(call.listener, status, elapsed);
    let run = call.run().map(|r| r.as_str()).unwrap_or("-");
    let step = call.identity.as_ref().map_or(0, |i| i.step);
    let host = call.target.as_ref().map(|t| t.host.as_str()).unwrap_or("-");
    let ms = elapsed.as_secs_f64() * 1e3;
    match outcome {
        Outcome::Completed => tracing::debug!(
            receipt = %call.receipt_id, run, step, method = %call.method, host, path = %call.path, status,
            request_bytes = call.request_bytes, response_bytes = call.response_bytes, ms, "call completed"
        ),
        Outcome::ClientGone => tracing::info!(
            receipt = %call.receipt_id, run, step, host, path = %call.path, status, response_bytes = call.response_bytes, ms,
            "client went away before the response ended"
        ),
        Outcome::UpstreamAborted(reason) => tracing::warn!(
            receipt = %call.receipt_id, run, step, host, path = %call.path, status, response_bytes = call.response_bytes, ms,
            reason = %reason, "upstream failed in the middle of the response"
        ),
        Outcome::Failed(err) => {
            proxy.metrics.error(err.kind.type_str());
            let kind = err.kind.type_str();
            match err.side {
                Side::Agent => tracing::info!(
                    receipt = %call.receipt_id, run, step, host, path = %call.path, status, kind, phase = ?err.phase,
                    message = %err.message, "call refused"
                ),
                Side::Upstream => tracing::warn!(
                    receipt = %call.receipt_id, run, step, host, path = %call.path, status, kind, message = %err.message,
                    "upstream call failed"
                ),
                Side::Internal => tracing::error!(
                    receipt = %call.receipt_id, run, step, host, path = %call.path, status, kind, message = %err.message,
                    "proxy failed a call; this is a bug or a resource problem on this host"
                ),
            }
        }
    }
}
