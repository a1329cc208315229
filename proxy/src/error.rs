//! Every way a call can fail, and the one place that turns a failure into a response.
//!
//! Phases return [`ProxyError`]: what went wrong ([`ErrorKind`]), in which phase, and which side
//! is to blame ([`Side`]) — the agent, the upstream, or the proxy itself. [`ProxyError::to_response`]
//! is the only function that picks a status code and writes an error body; the body is the
//! OpenAI-compatible envelope of the contract, so SDKs surface our message as they would a
//! provider's. Internal details (IO errors, paths) are logged, never sent to the client. The
//! response carries its own body type, [`ErrorBody`], which the response body module wraps.

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, PROXY_AUTHENTICATE, RETRY_AFTER};
use http::{Response, StatusCode};
use serde::Serialize;

/// The body of an error response: the complete JSON envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody(pub Bytes);

/// The phase of a call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading the request off the client connection.
    Accept,
    /// Tying the call to a run.
    Identify,
    /// Capability and policy decisions.
    Authorize,
    /// Budget reservation.
    Meter,
    /// Sending the call upstream and receiving its response.
    Forward,
    /// Writing the receipt.
    Record,
}

/// Who caused the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The agent sent something we refuse or cannot parse.
    Agent,
    /// The upstream failed or misbehaved.
    Upstream,
    /// The proxy failed.
    Internal,
}

/// What went wrong; each kind maps to one status and one `type` string of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A policy or allow-list denied the call (403 `policy_denied`).
    PolicyDenied,
    /// The capability token does not authorize this call (403 `capability_denied`).
    CapabilityDenied,
    /// Credentials missing or invalid (407 `proxy_auth_required`).
    ProxyAuthRequired,
    /// The run's budget cannot cover the call (429 `budget_exceeded`).
    BudgetExceeded {
        /// Seconds after which a retry could succeed, when waiting can help.
        retry_after: Option<u64>,
    },
    /// The request is malformed (400 `invalid_request`).
    BadRequest,
    /// The request body is over the limit (413 `body_too_large`).
    BodyTooLarge,
    /// Upstream unreachable, TLS failure, or a bad response (502 `upstream_error`).
    UpstreamError,
    /// Upstream did not answer in time (504 `upstream_timeout`).
    UpstreamTimeout,
    /// The proxy failed (500 `internal_error`).
    Internal,
    /// The run has `proxy.limits.max_calls_per_run` calls in flight on this proxy (429
    /// `run_concurrency_exceeded`, `Retry-After: 1`).
    RunBusy,
    /// The receipt spool is full and the proxy fails closed (503 `spool_full`).
    SpoolFull,
    /// Strict replay found no sealed response for the request (599 `replay_miss`).
    ReplayMiss(Box<ReplayMissed>),
}

/// What a strict replay miss tells the agent: the closest sealed request, and how it differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayMissed {
    /// Receipt id of the most similar sealed request of the recorded run.
    pub closest: Option<String>,
    /// JSON paths where the request differs from that one, both values shortened.
    pub diff: Vec<fleetforge_trust::key::Difference>,
}

impl ErrorKind {
    /// The status code and contract `type` string of this kind.
    pub fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            ErrorKind::PolicyDenied => (StatusCode::FORBIDDEN, "policy_denied"),
            ErrorKind::CapabilityDenied => (StatusCode::FORBIDDEN, "capability_denied"),
            ErrorKind::ProxyAuthRequired => (StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy_auth_required"),
            ErrorKind::BudgetExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"),
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            ErrorKind::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ErrorKind::UpstreamError => (StatusCode::BAD_GATEWAY, "upstream_error"),
            ErrorKind::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            ErrorKind::RunBusy => (StatusCode::TOO_MANY_REQUESTS, "run_concurrency_exceeded"),
            ErrorKind::SpoolFull => (StatusCode::SERVICE_UNAVAILABLE, "spool_full"),
            ErrorKind::ReplayMiss(_) => (replay_miss_status(), "replay_miss"),
        }
    }

    /// The contract `type` string.
    pub fn type_str(&self) -> &'static str {
        self.status_and_type().1
    }
}

/// A failed call: kind, phase, side, a message safe to show the client, and reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Where.
    pub phase: Phase,
    /// Whose fault.
    pub side: Side,
    /// A message for the client: what was wrong, with what value, and what to do.
    pub message: String,
    /// Machine-readable reasons (policy rule ids, checks that failed).
    pub reasons: Vec<String>,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {:?} ({:?}): {}", self.kind.type_str(), self.phase, self.side, self.message)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Fields<'a>,
}

#[derive(Serialize)]
struct Fields<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt_id: Option<&'a str>,
    reasons: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    miss: Option<&'a ReplayMissed>,
}

/// The contract's status for a strict replay miss.
fn replay_miss_status() -> StatusCode {
    StatusCode::from_u16(599).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl ProxyError {
    /// A new error with no reasons.
    pub fn new(kind: ErrorKind, phase: Phase, side: Side, message: impl Into<String>) -> Self {
        Self { kind, phase, side, message: message.into(), reasons: Vec::new() }
    }

    /// Adds a machine-readable reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reasons.push(reason.into());
        self
    }

    /// The only place a status code and an error body are chosen.
    ///
    /// `receipt_id` is the id of the receipt recording this failure, when the call has one (a
    /// rejected `CONNECT` has none of its own).
    pub fn to_response(&self, receipt_id: Option<&str>) -> Response<ErrorBody> {
        let (status, kind) = self.kind.status_and_type();
        let miss = match &self.kind {
            ErrorKind::ReplayMiss(m) => Some(&**m),
            _ => None,
        };
        let body = Envelope {
            error: Fields { kind, code: kind, message: &self.message, receipt_id, reasons: &self.reasons, miss },
        };
        // Serializing a struct of strings cannot fail; fall back to a fixed body rather than panic.
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":{"type":"internal_error"}}"#.to_vec());
        let mut response = Response::new(ErrorBody(Bytes::from(bytes)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self.kind {
            ErrorKind::ProxyAuthRequired => {
                headers.insert(PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"fleetforge\""));
            }
            ErrorKind::BudgetExceeded { retry_after: Some(secs) } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            ErrorKind::RunBusy => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::{ErrorKind, Phase, ProxyError, Side};

    #[test]
    fn error_body_is_the_contract_envelope() {
        let err = ProxyError::new(ErrorKind::ProxyAuthRequired, Phase::Identify, Side::Agent, "bad credentials")
            .with_reason("malformed_basic");
        let resp = err.to_response(Some("r-1"));
        assert_eq!(resp.status(), 407);
        assert_eq!(resp.headers()["proxy-authenticate"], "Basic realm=\"fleetforge\"");
        let body = resp.into_body().0;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "proxy_auth_required");
        assert_eq!(v["error"]["code"], "proxy_auth_required");
        assert_eq!(v["error"]["message"], "bad credentials");
        assert_eq!(v["error"]["receipt_id"], "r-1");
        assert_eq!(v["error"]["reasons"][0], "malformed_basic");
    }

    #[test]
    fn every_kind_has_its_contract_status() {
        let cases = [
            (ErrorKind::PolicyDenied, 403, "policy_denied"),
            (ErrorKind::CapabilityDenied, 403, "capability_denied"),
            (ErrorKind::ProxyAuthRequired, 407, "proxy_auth_required"),
            (ErrorKind::BudgetExceeded { retry_after: None }, 429, "budget_exceeded"),
            (ErrorKind::RunBusy, 429, "run_concurrency_exceeded"),
            (ErrorKind::BodyTooLarge, 413, "body_too_large"),
            (ErrorKind::UpstreamError, 502, "upstream_error"),
            (ErrorKind::UpstreamTimeout, 504, "upstream_timeout"),
            (ErrorKind::BadRequest, 400, "invalid_request"),
        ];
        for (kind, status, ty) in cases {
            assert_eq!(kind.status_and_type(), (http::StatusCode::from_u16(status).unwrap(), ty));
        }
    }
}
