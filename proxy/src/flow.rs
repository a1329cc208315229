//! The call pipeline: every call the proxy serves runs these phases, in this order. Listeners
//! only accept, parse and hand off; this file orders every kind of call.
//!
//! An HTTP request — absolute-form, inside an intercepted or plain tunnel, or on a sidecar —
//! goes through [`handle`]:
//!
//! ```text
//!  request ─▶ target ─▶ 1 identify ─▶ 2 authorize ──────────────────────────────────────────────▶
//!                │           │          destination ─▶ read body ─▶ facts ─▶ packs ─▶ capability
//!               400       407/429          403            413/400             403      403/407
//!          ─▶ 3 meter ─▶ 4 forward (seal) ─▶ response streams to the client through the tap
//!                │             │                                  │
//!               429         502/504                      end of body (or error, or client gone)
//!                                                                 ▼
//!                                                 5 settle ─▶ 6 record
//! ```
//!
//! A `CONNECT` goes through [`connect`], which decides it before anything is relayed:
//!
//! ```text
//!  CONNECT ─▶ target, credentials ─▶ 2 authorize (destination) ─┬─▶ intercepted: 200, then each
//!                  │                          │                 │   request inside → handle
//!                400/407                     403                └─▶ 1 identify ─▶ 2 authorize
//!                                                                   (packs) ─▶ connect upstream
//!                                                                   ─▶ 200 ─▶ relay ─▶ 5 settle
//!                                                                   ─▶ 6 record
//! ```
//!
//! Identify's 429 is `run_concurrency_exceeded`: the run already has
//! `proxy.limits.max_calls_per_run` calls in flight on this proxy.
//!
//! Every arrow down is an error response built by [`ProxyError::to_response`]; whichever way a
//! call ends, [`finish`] runs settle and record exactly once, so every call — allowed, refused or
//! failed — is accounted for. A phase returns [`Next`]: continue, or respond now (a recorded
//! response, in replay); or an error. Each phase lives in its own module and documents what its
//! result means; this file only decides the order.

use std::sync::Arc;

use http::header::HeaderValue;
use http::uri::Scheme;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::authorize::{self, Subject};
use crate::body::{ProxyBody, UpstreamBody};
use crate::context::{Call, CallKind, ConnCtx, ConnMode, Outcome, Target};
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::headers::{X_RECEIPT, X_RUN};
use crate::io::ClientIo;
use crate::metrics::ConnectMode;
use crate::outbound::Outbound;
use crate::pattern::normalize_host;
use crate::phase::Next;
use crate::state::Proxy;
use crate::{forward, identify, meter, record, settle, telemetry, upstream};

#[cfg(test)]
mod tests;

/// Serves one HTTP request through the pipeline. Never fails: errors become contract error
/// responses.
pub async fn handle(proxy: Arc<Proxy>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let mut call = Call::new(&conn, req.method().clone());
    call.version = req.version();
    call.trace = telemetry::begin(&proxy, req.headers());
    match exchange(&proxy, &conn, &mut call, req).await {
        Ok(response) => respond(proxy, call, response),
        Err(err) => fail(&proxy, call, err),
    }
}

/// Whether a call may start: with a full spool and `fail_closed`, no call is served, because none
/// could be recorded.
fn recordable(proxy: &Proxy) -> Result<(), ProxyError> {
    match &proxy.spool {
        Some(spool) if spool.is_full() && !proxy.config.receipts.fail_open => Err(ProxyError::new(
            ErrorKind::SpoolFull,
            Phase::Record,
            Side::Internal,
            format!(
                "the proxy cannot record receipts and refuses calls: {}; retry later",
                spool.refusal().unwrap_or_else(|| "its spool is full".into())
            ),
        )),
        _ => Ok(()),
    }
}

async fn exchange(
    proxy: &Proxy,
    conn: &ConnCtx,
    call: &mut Call,
    req: Request<Incoming>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    recordable(proxy)?;
    call.target = Some(target(conn, call, &req)?);
    // 1. identify first, so every later phase — and every error response — can name the run.
    identify::identify(proxy, conn, call, req.headers())?;
    within_run_limit(proxy, call)?;
    let (parts, body) = req.into_parts();
    let mut request = Outbound::new(parts, body);
    // 2. authorize refuses a destination before it reads the body, so a denied host costs no
    // buffering; then the packs, whose obligations change the request, and the capability.
    if let Next::Respond(response) = authorize::authorize(proxy, call, Subject::Request(&mut request)).await? {
        return Ok(response);
    }
    // 3. Reserve budget only for calls policy allowed, so a denied call never holds budget.
    if let Next::Respond(response) = meter::meter(proxy, call, &mut request).await? {
        return Ok(response);
    }
    // 4. Forward (or replay); the response body streams back through the tap, which calls
    // `finish` at its end.
    forward::forward(proxy, call, request).await
}

/// Whether the call's run has room for one more call in flight on this proxy
/// (`proxy.limits.max_calls_per_run`); the call itself is already counted.
fn within_run_limit(proxy: &Proxy, call: &Call) -> Result<(), ProxyError> {
    let max = proxy.config.max_calls_per_run;
    let in_flight = call.ledger.as_ref().map_or(0, |l| l.in_flight());
    if in_flight <= max {
        return Ok(());
    }
    let run = call.run().map_or("", |r| r.as_str());
    Err(ProxyError::new(
        ErrorKind::RunBusy,
        Phase::Identify,
        Side::Agent,
        format!(
            "run {run} already has {} calls in flight on this proxy, the maximum of proxy.limits.max_calls_per_run = {max}; retry when one finishes, or raise the limit",
            in_flight - 1
        ),
    ))
}

/// Where the call goes: fixed by the connection (tunnels, sidecars) or named by an absolute-form
/// request URI (forward proxy).
fn target(conn: &ConnCtx, call: &mut Call, req: &Request<Incoming>) -> Result<Target, ProxyError> {
    let uri = req.uri();
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(fixed) = &conn.target {
        call.path = if conn.base_path.is_empty() {
            path_and_query.to_owned()
        } else {
            format!("{}{path_and_query}", conn.base_path)
        };
        return Ok(fixed.clone());
    }
    debug_assert_eq!(conn.mode, ConnMode::Proxy);
    let bad = |message: &str| ProxyError::new(ErrorKind::BadRequest, Phase::Accept, Side::Agent, message);
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(bad(
            "this is a forward proxy: send absolute-form requests (HTTP_PROXY) or CONNECT (HTTPS_PROXY); for base-URL use, configure a sidecar listener",
        ));
    };
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        other => return Err(bad(&format!("scheme {other:?} is not supported; use http or https"))),
    };
    call.path = path_and_query.to_owned();
    let scheme = if default_port == 443 { Scheme::HTTPS } else { Scheme::HTTP };
    let host = normalize_host(authority.host());
    Target::new(scheme, host, authority.port_u16().unwrap_or(default_port))
        .map_err(|_| bad(&format!("{authority} is not a valid host")))
}

/// Passes the upstream (or replayed) response on: hop-by-hop headers removed, FleetForge headers
/// added, the body under a tap that finishes the call when it ends.
fn respond(proxy: Arc<Proxy>, mut call: Call, upstream: Response<UpstreamBody>) -> Response<ProxyBody> {
    let (mut parts, body) = upstream.into_parts();
    // A sealed call keeps the response as the upstream sent it (a replayed one was kept already).
    let recording = match call.seal.as_mut() {
        Some(seal) if seal.keep && seal.replayed_meta.is_none() && proxy.seals.is_some() => {
            seal.response_headers = crate::seal::response_headers(&parts.headers);
            Some(crate::body::Recording::new(proxy.config.seal.max_body))
        }
        // Content capture keeps the completion for the span.
        _ if call.content.is_some() => Some(crate::body::Recording::new(proxy.config.seal.max_body)),
        _ => None,
    };
    // The upstream's HTTP version is its hop's; the client gets its own connection's version.
    parts.version = call.version;
    crate::headers::strip_hop_by_hop(&mut parts.headers);
    call.status = Some(parts.status);
    stamp(&call, &mut parts.headers);
    // An LLM response is read for its usage on its way through (stripped of what meter asked for,
    // and ended if it would run past its reservation).
    let (usage, rewrite, guard) = meter::response_tap(&call, &parts.headers);
    if rewrite.is_some() || guard.is_some() {
        // The client's stream is shorter than the upstream's.
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    // One allocation holds the call and the proxy handle until the body ends.
    // Only a receipt or a seal names the response's digest.
    let digested = proxy.spool.is_some() || call.seal.is_some();
    let body = ProxyBody::tapped(
        body,
        rewrite,
        usage,
        recording,
        Box::new(move |summary, outcome| {
            let mut call = call;
            let recorded = call.absorb(summary);
            finish(&proxy, call, outcome, recorded);
        }),
    )
    .guarded(guard);
    let body = if digested { body } else { body.undigested() };
    Response::from_parts(parts, body)
}

/// Ends a call with an error response.
fn fail(proxy: &Proxy, mut call: Call, err: ProxyError) -> Response<ProxyBody> {
    let mut buf = [0u8; 36];
    // A call refused because nothing can be recorded has no receipt to name.
    let has_receipt = err.kind != ErrorKind::SpoolFull;
    let mut response = err.to_response(has_receipt.then(|| call.receipt_id.encode(&mut buf))).map(ProxyBody::from);
    call.status = Some(response.status());
    if has_receipt {
        stamp(&call, response.headers_mut());
    }
    finish(proxy, call, Outcome::Failed(err), None);
    response
}

/// Adds `x-fleetforge-receipt` and `x-fleetforge-run` to a response.
fn stamp(call: &Call, headers: &mut HeaderMap) {
    let mut buf = [0u8; 36];
    if let Ok(v) = HeaderValue::from_str(call.receipt_id.encode(&mut buf)) {
        headers.insert(X_RECEIPT, v);
    }
    // Run ids are validated to header-safe characters, so this conversion cannot fail.
    if let Some(v) = call.run().and_then(|r| HeaderValue::from_str(r.as_str()).ok()) {
        headers.insert(X_RUN, v);
    }
}

/// Phases 5 and 6, run exactly once per call whichever way it ended. A completed call's sealed
/// bodies go to the seal store before its receipt is written, so the receipt can name them.
fn finish(proxy: &Proxy, mut call: Call, outcome: Outcome, recorded: Option<Vec<(bytes::Bytes, u64)>>) {
    settle::settle(proxy, &mut call, &outcome);
    if let (Some(content), Some(chunks)) = (call.content.as_mut(), recorded.as_ref()) {
        content.response = chunks.iter().map(|(c, _)| c.clone()).collect();
    }
    if matches!(outcome, Outcome::Completed) {
        crate::seal::keep(proxy.seals.as_deref(), &mut call, recorded);
    }
    record::record(proxy, &call, &outcome);
}

/// What [`connect`] decided about a `CONNECT`.
#[derive(Debug)]
pub enum Connect {
    /// Refused: send this error response (the refusal is recorded).
    Refused(Response<ProxyBody>),
    /// Intercept: answer `200`, then terminate the client's TLS and serve each request inside
    /// through [`handle`] on this connection context.
    Intercept(ConnCtx),
    /// Relay: answer with this response, then relay bytes with [`relay`] (the tunnel is one call,
    /// recorded when it closes).
    Relay(Box<Tunnel>, Response<ProxyBody>),
}

/// A relayed tunnel between its `200` and its end: the call and the upstream connection.
#[derive(Debug)]
pub struct Tunnel {
    call: Call,
    upstream: TcpStream,
}

/// Decides a `CONNECT` on the forward listener (see the module docs for the order).
pub async fn connect(proxy: &Proxy, conn: &ConnCtx, req: &Request<Incoming>) -> Connect {
    let mut call = Call::new(conn, Method::CONNECT);
    call.trace = telemetry::begin(proxy, req.headers());
    match tunnel(proxy, conn, &mut call, req).await {
        Ok(Admitted::Intercept(ctx)) => Connect::Intercept(ctx),
        Ok(Admitted::Relay(upstream)) => {
            call.status = Some(StatusCode::OK);
            call.kind = CallKind::Tunnel;
            let mut response = Response::new(ProxyBody::empty());
            let mut buf = [0u8; 36];
            if let Ok(v) = HeaderValue::from_str(call.receipt_id.encode(&mut buf)) {
                response.headers_mut().insert(X_RECEIPT, v);
            }
            Connect::Relay(Box::new(Tunnel { call, upstream }), response)
        }
        Err(err) => {
            proxy.metrics.connect(ConnectMode::Rejected);
            Connect::Refused(fail(proxy, call, err))
        }
    }
}

/// How an allowed `CONNECT` is served.
enum Admitted {
    /// Terminate TLS and serve the requests inside with this context.
    Intercept(ConnCtx),
    /// Relay bytes to this upstream connection.
    Relay(TcpStream),
}

async fn tunnel(
    proxy: &Proxy,
    conn: &ConnCtx,
    call: &mut Call,
    req: &Request<Incoming>,
) -> Result<Admitted, ProxyError> {
    recordable(proxy)?;
    let target = connect_target(req)?;
    call.path = format!("{}:{}", target.host, target.port);
    // Credentials on the CONNECT apply to every request inside the tunnel: refuse malformed ones
    // now, before anything is relayed.
    let credentials = identify::credentials(req.headers())?;
    let ctx = ConnCtx {
        listener: conn.listener,
        worker: conn.worker,
        mode: ConnMode::Intercepted,
        peer: conn.peer,
        target: Some(target.clone()),
        base_path: String::new(),
        credentials,
        default_run: None,
        seal: conn.seal,
    };
    call.target = Some(target.clone());
    let admitted = if ctx.credentials.is_none() && proxy.config.require_credentials {
        Err(identify::missing_credentials())
    } else {
        authorize::authorize(proxy, call, Subject::Connect).await.map(|_| ())
    };
    if let Err(e) = admitted {
        // Best effort: name the run in the refusal when the credentials allow it.
        let _ = identify::identify(proxy, &ctx, call, req.headers());
        return Err(e);
    }
    if proxy.config.intercept.matches(&target.host) {
        // Each request inside is a call of its own; the CONNECT itself is none (no step, no
        // receipt).
        return Ok(Admitted::Intercept(ctx));
    }
    // Not intercepted: this tunnel is one call. Identify it and connect before answering, so
    // DNS failures and private destinations are answered on the CONNECT itself.
    identify::identify(proxy, &ctx, call, req.headers())?;
    // A strict replay opens no connection: a tunnel has no sealed responses to serve.
    if let Some(replayer) = proxy.replayer.as_ref().filter(|r| r.strict) {
        return Err(ProxyError::new(
            ErrorKind::ReplayMiss(Box::new(crate::error::ReplayMissed { closest: None, diff: Vec::new() })),
            Phase::Forward,
            Side::Agent,
            format!(
                "strict replay of run {}: {}:{} is not intercepted (FLEETFORGE_INTERCEPT), so it has no sealed calls; nothing was sent upstream",
                replayer.run, target.host, target.port
            ),
        ));
    }
    authorize::authorize(proxy, call, Subject::Tunnel).await?;
    let upstream =
        proxy.egress.connect(&target.host, target.port).await.map_err(|e| upstream::classify(&e, &target))?;
    Ok(Admitted::Relay(upstream))
}

fn connect_target(req: &Request<Incoming>) -> Result<Target, ProxyError> {
    let bad = || {
        ProxyError::new(
            ErrorKind::BadRequest,
            Phase::Accept,
            Side::Agent,
            format!("CONNECT target {:?} is not host:port", req.uri().to_string()),
        )
    };
    let authority = req.uri().authority().ok_or_else(bad)?;
    let port = authority.port_u16().ok_or_else(bad)?;
    let host = normalize_host(authority.host());
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    // The scheme is what the tunnel carries if we serve it ourselves; TLS is the usual case.
    Target::new(Scheme::HTTPS, host, port).map_err(|_| bad())
}

/// Relays a tunnel [`connect`] allowed between `client` and its upstream until one side closes,
/// then settles and records it: bytes each way and duration.
pub async fn relay(proxy: &Proxy, tunnel: Box<Tunnel>, mut client: ClientIo) {
    let Tunnel { mut call, mut upstream } = *tunnel;
    proxy.metrics.connect(ConnectMode::Tunnelled);
    let result = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    call.request_bytes = client.bytes_read();
    call.response_bytes = client.bytes_written();
    proxy.metrics.tunnel_bytes(call.request_bytes, call.response_bytes);
    let outcome = match result {
        Ok(_) => Outcome::Completed,
        Err(e) => Outcome::UpstreamAborted(e.to_string()),
    };
    finish(proxy, call, outcome, None);
}

/// Ends a tunnel [`connect`] allowed whose client left before it opened: recorded as gone.
pub fn abandon(proxy: &Proxy, tunnel: Box<Tunnel>) {
    finish(proxy, tunnel.call, Outcome::ClientGone, None);
}
