//! The call pipeline: every request the proxy serves runs these phases, in this order.
//!
//! ```text
//!  request ─▶ target ─▶ 1 identify ─▶ 2a authorize::destination ─▶ read body ─▶ 2b authorize::call
//!                            │                 │                        │        (policy packs,
//!                           407               403                      413       obligations) 403
//!          ─▶ 2c authorize::capability ─▶ (run state notes the call)
//!                        │
//!                     403/407
//!          ─▶ 3 meter ─▶ 4 forward (seal) ─▶ response streams to the client through the tap
//!                │             │                                  │
//!               429         502/504                      end of body (or error, or client gone)
//!                                                                 ▼
//!                                                 5 settle ─▶ 6 record
//! ```
//!
//! Every arrow down is an error response built by [`ProxyError::to_response`]; whichever way a
//! call ends, [`finish`] runs settle and record exactly once, so every call — allowed, refused or
//! failed — is accounted for. Each phase lives in its own module and documents what its result
//! means; this file only decides the order.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::uri::Scheme;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::context::{Call, ConnCtx, ConnMode, Outcome, Target};
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::headers::{X_RECEIPT, X_RUN};
use crate::pattern::normalize_host;
use crate::proxy::Proxy;
use crate::{authorize, forward, identify, meter, record, settle};

/// Serves one request through the pipeline. Never fails: errors become contract error responses.
pub async fn handle(proxy: Arc<Proxy>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let mut call = Call::new(&conn, req.method().clone());
    call.version = req.version();
    match pipeline(&proxy, &conn, &mut call, req).await {
        Ok(upstream) => respond(proxy, call, upstream),
        Err(err) => fail(&proxy, call, err),
    }
}

/// Whether a call may start: with a full spool and `fail_closed`, no call is served, because none
/// could be recorded.
pub fn recordable(proxy: &Proxy) -> Result<(), ProxyError> {
    match &proxy.spool {
        Some(spool) if spool.is_full() && !proxy.config.receipts.fail_open => Err(ProxyError::new(
            ErrorKind::SpoolFull,
            Phase::Record,
            Side::Internal,
            "the proxy cannot record receipts (its spool is full) and refuses calls until control catches up; retry later",
        )),
        _ => Ok(()),
    }
}

async fn pipeline(
    proxy: &Proxy,
    conn: &ConnCtx,
    call: &mut Call,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, ProxyError> {
    recordable(proxy)?;
    let target = target(conn, call, &req)?;
    call.target = Some(target.clone());
    // 1. identify first, so every later phase — and every error response — can name the run.
    identify::identify(proxy, conn, call, req.headers())?;
    // 2a. Refuse a destination before reading the body, so a denied host costs no buffering.
    authorize::destination(proxy, call, &target)?;
    let (mut parts, body) = req.into_parts();
    let mut body = read_body(proxy, call, &parts, body).await?;
    // 2b. The decisions that need the body: model allow-list and policy packs, whose obligations
    // (headers, token cap) change the request here.
    authorize::call(proxy, call, &mut parts, &mut body)?;
    // 2c. The run's capability token must allow exactly this call.
    if let Some(caps) = &proxy.capabilities {
        authorize::capability(proxy, caps, call, &parts, &body).await?;
    }
    // Allowed: later calls' packs see this one in the run's state.
    authorize::left(proxy, call);
    // 3. Reserve budget only for calls policy allowed, so a denied call never holds budget.
    call.reservation = meter::meter(proxy, call)?;
    // 4. Forward; the response body streams back through the tap, which calls `finish` at its end.
    forward::forward(proxy, call, parts, body).await
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

async fn read_body(proxy: &Proxy, call: &mut Call, parts: &Parts, body: Incoming) -> Result<Bytes, ProxyError> {
    let max = proxy.config.max_body;
    let too_large = |size: String| {
        ProxyError::new(
            ErrorKind::BodyTooLarge,
            Phase::Accept,
            Side::Agent,
            format!("request body is {size}; the limit is {max} bytes (FLEETFORGE_MAX_BODY)"),
        )
    };
    if let Some(len) = content_length(&parts.headers)
        && len > max
    {
        return Err(too_large(format!("{len} bytes")));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let collected =
        tokio::time::timeout(proxy.config.body_timeout, Limited::new(body, limit).collect()).await.map_err(|_| {
            ProxyError::new(
                ErrorKind::BadRequest,
                Phase::Accept,
                Side::Agent,
                format!("the request body did not arrive within {:?}", proxy.config.body_timeout),
            )
        })?;
    match collected {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            call.request_bytes = bytes.len() as u64;
            Ok(bytes)
        }
        Err(e) if e.is::<LengthLimitError>() => Err(too_large(format!("more than {max} bytes"))),
        Err(e) => Err(ProxyError::new(
            ErrorKind::BadRequest,
            Phase::Accept,
            Side::Agent,
            format!("could not read the request body: {e}"),
        )),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Passes the upstream response on: hop-by-hop headers removed, FleetForge headers added, the
/// body under a tap that finishes the call when it ends.
fn respond(proxy: Arc<Proxy>, mut call: Call, upstream: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = upstream.into_parts();
    // The upstream's HTTP version is its hop's; the client gets its own connection's version.
    parts.version = call.version;
    crate::headers::strip_hop_by_hop(&mut parts.headers);
    call.status = Some(parts.status);
    stamp(&call, &mut parts.headers);
    let body = ProxyBody::tapped(body, Finish { proxy, call: Box::new(call) });
    Response::from_parts(parts, body)
}

/// Ends a call with an error response; used by the pipeline and by refused `CONNECT`s.
pub fn fail(proxy: &Proxy, mut call: Call, err: ProxyError) -> Response<ProxyBody> {
    let mut buf = [0u8; 36];
    // A call refused because nothing can be recorded has no receipt to name.
    let has_receipt = err.kind != ErrorKind::SpoolFull;
    let mut response = err.to_response(has_receipt.then(|| call.receipt_id.encode(&mut buf)));
    call.status = Some(response.status());
    if has_receipt {
        stamp(&call, response.headers_mut());
    }
    finish(proxy, call, Outcome::Failed(err));
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

/// Finishes a call when its response body ends; held by the body tap.
#[derive(Debug)]
pub struct Finish {
    proxy: Arc<Proxy>,
    call: Box<Call>,
}

impl Finish {
    /// Completes the call: `bytes` of response body with SHA-256 `digest` were passed on, and it
    /// ended as `outcome`.
    pub fn done(self, bytes: u64, digest: [u8; 32], outcome: Outcome) {
        let mut call = *self.call;
        call.response_bytes = bytes;
        call.response_digest = Some(digest);
        finish(&self.proxy, call, outcome);
    }
}

/// Phases 5 and 6, run exactly once per call whichever way it ended.
pub fn finish(proxy: &Proxy, call: Call, outcome: Outcome) {
    settle::settle(proxy, &call, call.reservation);
    record::record(proxy, &call, &outcome);
}
