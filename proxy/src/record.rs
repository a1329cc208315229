//! Phase 6, record: the one place a finished call is written down.
//!
//! Runs exactly once per call, when the call has ended — while the last response bytes are still
//! held (so a client never sees a complete response whose receipt is not yet on disk), after an
//! error response, or when the client went away. It builds the receipt from the [`Call`] in
//! [`receipt_body`] — the one function to audit for what a receipt contains, and that it contains
//! no secret: no headers at all, no bodies (only their sizes and SHA-256 digests), no tokens —
//! appends it to the spool (which chains and later signs it), updates the metrics and writes one
//! log line (fields first, then a short sentence).

use std::time::SystemTime;

use fleetforge_trust::key::KEY_VERSION;
use fleetforge_trust::receipt::{Capability, Chain, Decision, ErrorInfo, ReceiptBody, SCHEMA, Seal, Upstream};
use fleetforge_trust::text::{hex, redact_path, rfc3339_micros as rfc3339};

use crate::context::{Call, CallKind, Outcome};
use crate::error::{ErrorKind, Side};
use crate::state::Proxy;

fn outcome_str(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::UpstreamAborted(_) => "upstream_aborted",
        Outcome::ClientGone => "client_gone",
        Outcome::Failed(_) => "failed",
    }
}

/// Builds the receipt body of a finished call at its place in the chain.
pub fn receipt_body(call: &Call, outcome: &Outcome, chain: Chain, run: fleetforge_trust::RunId) -> ReceiptBody {
    let (allow, error, reasons) = match outcome {
        Outcome::Failed(err) => {
            // An upstream failure happened after the call was allowed out; anything else stopped it.
            let left = err.side == Side::Upstream;
            (
                left,
                Some(ErrorInfo { message: err.message.clone(), kind: err.kind.type_str().to_owned() }),
                err.reasons.clone(),
            )
        }
        _ => (true, None, call.decided.reasons.clone()),
    };
    let (scheme, host, port) = match &call.target {
        Some(t) => (t.scheme.as_str().to_owned(), t.host.clone(), t.port),
        None => (String::new(), String::new(), 0),
    };
    ReceiptBody {
        agent: None,
        budget: call.budget.clone(),
        capability: call.capability.as_ref().map(|g| Capability {
            call_token_id: g.call_token_id.clone(),
            expires: g.expires,
            token_id: g.token_id.clone(),
        }),
        chain,
        datasets: Vec::new(),
        decision: Decision { allow, error, policy_packs: call.decided.packs.clone(), reasons },
        ended_at: rfc3339(SystemTime::now()),
        id: call.receipt_id,
        kind: match call.kind {
            CallKind::Exchange => "call".into(),
            CallKind::Tunnel => "tunnel".into(),
        },
        outcome: outcome_str(outcome).into(),
        replay: call.replay.clone(),
        run,
        schema: SCHEMA.into(),
        seal: Seal {
            request_bytes: call.request_bytes,
            request_digest: call.request_digest.map(|d| hex(&d)),
            response_bytes: call.response_bytes,
            response_digest: call.response_digest.map(|d| hex(&d)),
            status: call.status.map(|s| s.as_u16()),
            key: call.seal.as_ref().map(|s| hex(&s.key)),
            key_version: call.seal.as_ref().map(|_| KEY_VERSION.to_owned()),
            redacted: match (&call.seal, &call.kept) {
                (Some(s), Some(_)) => s.redacted.clone(),
                _ => Vec::new(),
            },
            request_blob: call.kept.as_ref().and_then(|k| k.request_blob.clone()),
            response_meta: call.kept.as_ref().map(|k| k.response_meta.clone()),
        },
        started_at: rfc3339(call.started_at),
        step: call.identity.as_ref().map_or(0, |i| i.step),
        step_label: call.identity.as_ref().and_then(|i| i.step_label.clone()),
        tenant: None,
        trace: crate::telemetry::receipt_trace(call),
        upstream: Upstream {
            host,
            method: call.method.as_str().to_owned(),
            path: redact_path(&call.path).into_owned(),
            port,
            scheme,
        },
        usage: call.usage.clone(),
    }
}

/// Records a finished call.
pub fn record(proxy: &Proxy, call: &Call, outcome: &Outcome) {
    let status = call.status.map_or(0, |s| s.as_u16());
    let elapsed = call.started.elapsed();
    proxy.metrics.call_finished(call.listener, status, elapsed);
    if let Outcome::Failed(err) = outcome {
        proxy.metrics.error(err.kind.type_str());
    }
    let refused_unrecordable = matches!(outcome, Outcome::Failed(e) if e.kind == ErrorKind::SpoolFull);
    if let Some(spool) = proxy.spool.as_ref().filter(|_| !refused_unrecordable) {
        let run = call.run().cloned().unwrap_or_else(|| proxy.anonymous_run.clone());
        // A run's first receipt on this proxy names the datasets it was served with.
        let datasets = match &call.ledger {
            Some(ledger) if !proxy.datasets.is_empty() && ledger.first_receipt() => proxy.datasets.clone(),
            _ => Vec::new(),
        };
        // With `fail_open`, calls go on while the spool is full, and their receipts are dropped;
        // otherwise no call started then, and the receipt of one that started before is written.
        let refusal = spool.refusal().filter(|_| proxy.config.receipts.fail_open);
        let written = match refusal {
            Some(why) => Err(why),
            None => spool
                .append(run.as_str(), |chain| {
                    let mut body = receipt_body(call, outcome, chain, run.clone());
                    body.datasets = datasets;
                    body
                })
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => proxy.metrics.receipt_recorded(),
            Err(e) => {
                // Rate-limited: a full spool in fail-open mode drops every receipt.
                if proxy.metrics.receipt_dropped() % 1000 == 1 {
                    tracing::error!(receipt = %call.receipt_id, error = %e, "receipt not recorded; check the spool's disk and the control service");
                }
            }
        }
    }
    crate::telemetry::emit(proxy, call, outcome);
    log(call, outcome, status, elapsed);
}

fn log(call: &Call, outcome: &Outcome, status: u16, elapsed: std::time::Duration) {
    let run = call.run().map(|r| r.as_str()).unwrap_or("-");
    let step = call.identity.as_ref().map_or(0, |i| i.step);
    let host = call.target.as_ref().map(|t| t.host.as_str()).unwrap_or("-");
    let ms = elapsed.as_secs_f64() * 1e3;
    match outcome {
        Outcome::Completed => tracing::debug!(
            receipt = %call.receipt_id, run, step, method = %call.method, host, path = %redact_path(&call.path), status,
            request_bytes = call.request_bytes, response_bytes = call.response_bytes, ms, "call completed"
        ),
        Outcome::ClientGone => tracing::info!(
            receipt = %call.receipt_id, run, step, host, path = %redact_path(&call.path), status, response_bytes = call.response_bytes, ms,
            "client went away before the response ended"
        ),
        Outcome::UpstreamAborted(reason) => tracing::warn!(
            receipt = %call.receipt_id, run, step, host, path = %redact_path(&call.path), status, response_bytes = call.response_bytes, ms,
            reason = %reason, "upstream failed in the middle of the response"
        ),
        Outcome::Failed(err) => {
            let kind = err.kind.type_str();
            match err.side {
                Side::Agent => tracing::info!(
                    receipt = %call.receipt_id, run, step, host, path = %redact_path(&call.path), status, kind, phase = ?err.phase,
                    message = %err.message, "call refused"
                ),
                Side::Upstream => tracing::warn!(
                    receipt = %call.receipt_id, run, step, host, path = %redact_path(&call.path), status, kind, message = %err.message,
                    "upstream call failed"
                ),
                Side::Internal => tracing::error!(
                    receipt = %call.receipt_id, run, step, host, path = %redact_path(&call.path), status, kind, message = %err.message,
                    "proxy failed a call; this is a bug or a resource problem on this host"
                ),
            }
        }
    }
}
