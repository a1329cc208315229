//! The per-connection and per-call context the phases share.
//!
//! [`ConnCtx`] is fixed when a client connection (or an intercepted `CONNECT` tunnel) is set up:
//! which listener, which peer, and — for tunnels and sidecars — the one destination every request
//! on it goes to. [`Call`] is created when a request arrives and filled in phase by phase; the
//! receipt is built from it, in one place, when the call ends. The facts phases hand each other
//! live here too, so that no phase imports another: the request's LLM/MCP fields
//! ([`RequestFacts`], read once), the capability check's [`Grant`], the meter's [`Reservation`],
//! and the tap's [`Summary`] of the response body.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use std::sync::Arc;

use bytes::Bytes;
use fleetforge_trust::receipt::Usage;
use fleetforge_trust::{ReceiptId, RunId};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, StatusCode, Version};

use crate::error::ProxyError;
use crate::facts::RequestFacts;
use crate::metrics::ListenerKind;
use crate::runs::RunLedger;

/// What a successful capability check hands to the rest of the call.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Revocation id of the run token (hex).
    pub token_id: String,
    /// Revocation id of this call's block (hex), when a per-call token was minted (tool
    /// upstreams).
    pub call_token_id: Option<String>,
    /// When the per-call token expires (unix seconds).
    pub expires: u64,
    /// The per-call token for `x-fleetforge-capability`, when the upstream is a tool.
    pub header: Option<HeaderValue>,
    /// The run's budget as its token carries it.
    pub limits: crate::budget::Limits,
    /// The agent the run token names.
    pub agent: Option<String>,
    /// The tenant the run token names.
    pub tenant: String,
}

pub use crate::budget::Reservation;

/// What the forward phase sealed of a request, carried by the call until it is written down.
#[derive(Debug, Clone)]
pub struct SealedRequest {
    /// The replay key.
    pub key: [u8; 32],
    /// The request body as sealed (redactions applied), and its address; `None` without a body.
    pub blob: Option<([u8; 32], Bytes)>,
    /// JSON pointers that were redacted.
    pub redacted: Vec<String>,
    /// `content-type` and `content-encoding` of the upstream's response, set when it arrives.
    pub response_headers: Vec<(String, String)>,
    /// Keep the response too (false: only the key goes into the receipt).
    pub keep: bool,
    /// On a replayed call: the address of the envelope it was served from (nothing new to keep).
    pub replayed_meta: Option<String>,
    /// Credential values the request carried, which no sealed body may hold.
    pub secrets: SecretValues,
}

/// Credential values a request carried; `Debug` shows only how many.
#[derive(Clone, Default)]
pub struct SecretValues(pub Vec<Bytes>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} credential values redacted]", self.0.len())
    }
}

/// What the seal store was given of a finished call ([`crate::seal::keep`]), for the receipt.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Address (hex) of the request body, when there was one.
    pub request_blob: Option<String>,
    /// Address (hex) of the response envelope.
    pub response_meta: String,
}

/// What the tap saw of a response body by the time it ended.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Body bytes received from the upstream (or the replay).
    pub upstream_bytes: u64,
    /// Body bytes passed on to the client (differs when the tap rewrote the stream).
    pub client_bytes: u64,
    /// SHA-256 of the body as received from the upstream; `None` when nothing records the call
    /// ([`crate::body::ProxyBody::undigested`]).
    pub digest: Option<[u8; 32]>,
    /// Token counts read from the body, when it stated any.
    pub usage: Option<crate::usage::Counts>,
    /// The response's id, model and finish reasons, when the call is traced.
    pub reply: Option<crate::usage::Reply>,
    /// The stream guard ended the body because it would have run past the call's reservation.
    pub truncated: bool,
    /// The body's chunks as received with their offsets (ms), when the call is sealed and the
    /// body was within the seal limit.
    pub recorded: Option<Vec<(bytes::Bytes, u64)>>,
}

/// Where a call goes: scheme, host and port of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Normalized host (lowercase, no trailing dot, no IPv6 brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Authority as it goes into the upstream URI (port omitted when it is the default).
    pub authority: Authority,
}

impl Target {
    /// Builds a target; the authority omits the port when it is the scheme's default.
    pub fn new(scheme: Scheme, host: String, port: u16) -> Result<Self, http::Error> {
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let bracketed = if host.contains(':') { format!("[{host}]") } else { host.clone() };
        let authority = if port == default_port {
            Authority::try_from(bracketed.as_str())?
        } else {
            Authority::try_from(format!("{bracketed}:{port}").as_str())?
        };
        Ok(Self { scheme, host, port, authority })
    }
}

/// How the connection a call arrived on is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// Forward proxy: absolute-form requests (and `CONNECT`, handled before the pipeline).
    Proxy,
    /// Requests inside an intercepted TLS tunnel.
    Intercepted,
    /// Plain HTTP inside a `CONNECT` tunnel.
    PlainTunnel,
    /// A sidecar listener bound to one upstream.
    Sidecar,
}

/// A run token as presented by the agent. Never printed: `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token text, for verification only. Never log or record it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token([redacted; {} bytes])", self.0.len())
    }
}

/// Run credentials taken from `Proxy-Authorization: Basic RUN:TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The run.
    pub run: RunId,
    /// The run's token, if one was given.
    pub token: Option<Token>,
}

/// Per-connection context.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    /// Listener the connection arrived on.
    pub listener: ListenerKind,
    /// Worker thread serving the connection.
    pub worker: usize,
    /// How requests on it are served.
    pub mode: ConnMode,
    /// The client's address.
    pub peer: SocketAddr,
    /// The fixed destination of every request on this connection (tunnels and sidecars).
    pub target: Option<Target>,
    /// Path prefix of a sidecar upstream ("" when none).
    pub base_path: String,
    /// Credentials presented on `CONNECT`, inherited by every request in the tunnel.
    pub credentials: Option<Credentials>,
    /// The listener's default run.
    pub default_run: Option<RunId>,
    /// Seal the calls on this connection (`[proxy.seal] forward`, `[[sidecar]] seal`).
    pub seal: bool,
}

/// Where the run identity of a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// `Proxy-Authorization` (on the request or on its `CONNECT`).
    ProxyAuthorization,
    /// `x-fleetforge-run` / `x-fleetforge-token` request headers.
    Headers,
    /// The listener's or the proxy's default run.
    Default,
}

/// Who is calling: the result of the identify phase.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The run the call belongs to.
    pub run: RunId,
    /// The run token presented, if any (verified by the authorize phase once tokens exist).
    pub token: Option<Token>,
    /// Where the identity came from.
    pub source: IdentitySource,
    /// Step number: monotonic per run, starting at 1.
    pub step: u64,
    /// Optional step label from `x-fleetforge-step`.
    pub step_label: Option<String>,
}

/// Everything known about one call; filled in by the phases, read once by the record phase.
#[derive(Debug)]
pub struct Call {
    /// The receipt id, minted when the call arrives so every response (errors too) can carry it.
    pub receipt_id: ReceiptId,
    /// When the request arrived (monotonic, for durations).
    pub started: Instant,
    /// When the request arrived (wall clock, for the receipt).
    pub started_at: SystemTime,
    /// One HTTP exchange, or a relayed tunnel.
    pub kind: CallKind,
    /// Listener it arrived on.
    pub listener: ListenerKind,
    /// Worker thread serving it.
    pub worker: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// Request method.
    pub method: Method,
    /// HTTP version of the client's hop.
    pub version: Version,
    /// Request path and query as the upstream will see it.
    pub path: String,
    /// Destination, once known.
    pub target: Option<Target>,
    /// Run identity, once known.
    pub identity: Option<Identity>,
    /// The LLM/MCP fields of the request body, read once (see [`crate::facts`]); `None` when
    /// no phase needs them or the body is not JSON.
    pub facts: Option<RequestFacts>,
    /// The run's ledger on this proxy, once identified.
    pub ledger: Option<Arc<RunLedger>>,
    /// Budget set aside by the meter phase, reconciled by settle.
    pub reservation: Reservation,
    /// The receipt's `budget` part: filled by meter for a call admitted under a budget,
    /// completed by settle.
    pub budget: Option<fleetforge_trust::receipt::Budget>,
    /// Tokens the run's rate SLO took for this call at admission (settle trues them up).
    pub rate_tokens: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// SHA-256 of the request body as sent upstream.
    pub request_digest: Option<[u8; 32]>,
    /// SHA-256 of the response body as received from the upstream.
    pub response_digest: Option<[u8; 32]>,
    /// Response status sent to the client.
    pub status: Option<StatusCode>,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// The capability check's result: token ids for the receipt, the header for tools.
    pub capability: Option<Grant>,
    /// Token usage of the response, when the tap could read it.
    pub usage: Option<Usage>,
    /// The proxy asked the upstream for stream usage the client did not ask for, so the tap
    /// removes it from what the client receives ([`crate::usage::StripUsage`]).
    pub strip_usage: bool,
    /// The stream guard ended the response because it would have run past the reservation.
    pub truncated: bool,
    /// What policy decided, for the receipt.
    pub decided: Decided,
    /// The listener seals its calls.
    pub sealing: bool,
    /// The request's key and sealed body, when the call is sealed or replayed.
    pub seal: Option<SealedRequest>,
    /// What the seal store was given of the finished call.
    pub kept: Option<Kept>,
    /// The receipt's `replay` part, on a replaying proxy.
    pub replay: Option<fleetforge_trust::receipt::Replay>,
    /// The call's place in a distributed trace ([`crate::telemetry`]).
    pub trace: Option<CallTrace>,
    /// The response's id, model and finish reasons, read for the call's span.
    pub reply: Option<crate::usage::Reply>,
    /// GenAI content capture: the request body (redacted, credentials scrubbed) and the response
    /// body as received, for the span; only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`.
    pub content: Option<Content>,
}

/// The prompt and completion of a call whose content is captured on its span.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// The request body, cleaned ([`crate::seal::capturable`]).
    pub request: bytes::Bytes,
    /// The response body's chunks as received.
    pub response: Vec<bytes::Bytes>,
}

/// Where a call sits in a W3C trace.
#[derive(Debug, Clone)]
pub enum CallTrace {
    /// The proxy traces the call: its own span, a child of the caller's when there is one.
    Own(fleetforge_otel::Started),
    /// Tracing is off, but the caller sent a `traceparent`: the receipt names the caller's span.
    Caller(fleetforge_otel::Parent),
}

/// What the policy packs decided about a call.
#[derive(Debug, Default)]
pub struct Decided {
    /// How receipts name the packs that decided the call.
    pub packs: Vec<String>,
    /// Reasons the packs gave for allowing it (denials carry theirs in the error).
    pub reasons: Vec<String>,
    /// The MCP tool a `tools/call` names, noted in the run's state once the call leaves.
    pub tool: Option<String>,
}

impl Call {
    /// A new call for a request that just arrived.
    pub fn new(conn: &ConnCtx, method: Method) -> Self {
        Self {
            receipt_id: ReceiptId::generate(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            kind: CallKind::Exchange,
            listener: conn.listener,
            worker: conn.worker,
            peer: conn.peer,
            method,
            version: Version::HTTP_11,
            path: String::new(),
            target: None,
            identity: None,
            facts: None,
            ledger: None,
            reservation: Reservation::default(),
            budget: None,
            rate_tokens: 0,
            request_bytes: 0,
            request_digest: None,
            response_digest: None,
            status: None,
            response_bytes: 0,
            capability: None,
            usage: None,
            strip_usage: false,
            truncated: false,
            decided: Decided::default(),
            sealing: conn.seal,
            seal: None,
            kept: None,
            replay: None,
            trace: None,
            reply: None,
            content: None,
        }
    }

    /// The run id, once identified.
    pub fn run(&self) -> Option<&RunId> {
        self.identity.as_ref().map(|i| &i.run)
    }

    /// The model the request body names (any JSON body's top-level `model`), when read.
    pub fn model(&self) -> Option<&str> {
        self.facts.as_ref().and_then(|f| f.model.as_deref())
    }

    /// The LLM provider the call went to: from its body's facts, or from its host and path.
    pub fn provider(&self) -> Option<&'static str> {
        if let Some(llm) = self.facts.as_ref().and_then(|f| f.llm.as_ref()) {
            return Some(llm.provider);
        }
        self.target.as_ref().and_then(|t| crate::facts::provider(&t.host, &self.path))
    }

    /// Whether the proxy traces this call with a sampled span of its own (its span is exported,
    /// so the phases read what the span names).
    pub fn traced(&self) -> bool {
        matches!(&self.trace, Some(CallTrace::Own(s)) if s.sampled)
    }

    /// Takes in what the tap saw of the response body; returns the recorded chunks, if any.
    pub fn absorb(&mut self, summary: Summary) -> Option<Vec<(bytes::Bytes, u64)>> {
        self.response_bytes = summary.client_bytes;
        self.response_digest = summary.digest;
        self.truncated = summary.truncated;
        self.reply = summary.reply;
        self.usage = summary.usage.map(|c| Usage {
            cached_input_tokens: c.cached_input_tokens,
            cost_micro_usd: None,
            input_tokens: c.input_tokens,
            model: self.model().map(str::to_owned),
            output_tokens: c.output_tokens,
            provider: self.provider().map(str::to_owned),
            reasoning_tokens: c.reasoning_tokens,
        });
        summary.recorded
    }
}

/// What kind of call a receipt records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One HTTP request and its response.
    Exchange,
    /// A `CONNECT` tunnel relayed byte for byte.
    Tunnel,
}

/// How a call ended.
#[derive(Debug)]
pub enum Outcome {
    /// The response body was delivered to its end.
    Completed,
    /// The upstream failed in the middle of the response body.
    UpstreamAborted(String),
    /// The client went away before the response body ended.
    ClientGone,
    /// The call failed before any upstream response; the client got this error.
    Failed(ProxyError),
}

#[cfg(test)]
mod tests {
    use http::uri::Scheme;

    use super::{Target, Token};

    #[test]
    fn target_authority_omits_default_ports_and_brackets_ipv6() {
        assert_eq!(Target::new(Scheme::HTTPS, "api.openai.com".into(), 443).unwrap().authority, "api.openai.com");
        assert_eq!(Target::new(Scheme::HTTP, "h".into(), 8080).unwrap().authority, "h:8080");
        assert_eq!(Target::new(Scheme::HTTPS, "::1".into(), 8443).unwrap().authority, "[::1]:8443");
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::new("sk-very-secret".into());
        assert!(!format!("{t:?}").contains("secret"));
    }
}
