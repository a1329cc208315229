//! Phase 4, seal + forward: send the call upstream and return the upstream's response.
//!
//! The request goes out over the pooled client (HTTP/1.1 or HTTP/2 as the upstream's ALPN
//! allows) to the call's target — never to a `Host` header the client chose — with hop-by-hop,
//! `Proxy-*` and FleetForge headers removed. The response body is not read here: the flow wraps it
//! in a tap and streams it to the client.
//!
//! Result: `Ok(response)` — a live [`UpstreamBody`] to stream back (replay will answer with a
//! recorded one here); or `upstream_error` (502) / `upstream_timeout` (504), or `policy_denied`
//! when the destination resolves to a private address (checked at connect time, see
//! [`crate::upstream`]).
//!
//! Sealing runs here, before the request leaves: the digest of the body as sent, and — when the
//! listener seals or the proxy replays — the request's replay key and sealed body, from the
//! request as the agent sent it ([`crate::seal::seal_request`]). In replay mode
//! ([`crate::replay`]) a request whose key has a recorded response is answered with it and never
//! leaves; a miss is refused with 599 `replay_miss` in strict mode (nothing ever leaves a strict
//! replay) and forwarded otherwise.

use fleetforge_trust::receipt::Replay;
use http::{Request, Response, Uri, Version};
use http_body_util::Full;

use crate::body::UpstreamBody;
use crate::context::Call;
use crate::error::{ErrorKind, Phase, ProxyError, ReplayMissed, Side};
use crate::headers;
use crate::outbound::Outbound;
use crate::replay::Replayer;
use crate::state::Proxy;
use crate::upstream;

/// Sends the call upstream; see the module docs for what the result means.
pub async fn forward(proxy: &Proxy, call: &mut Call, request: Outbound) -> Result<Response<UpstreamBody>, ProxyError> {
    // Seal: the digest of exactly the bytes the upstream will receive.
    let sent_digest = fleetforge_trust::canonical::sha256(request.bytes());
    call.request_digest = Some(sent_digest);
    let keep = call.sealing && proxy.seals.is_some();
    if keep || proxy.replayer.is_some() {
        // The body as the agent sent it; its digest is the one above unless an obligation or usage
        // injection changed the body.
        let original = request.original();
        let unchanged = original.as_ptr() == request.bytes().as_ptr() && original.len() == request.bytes().len();
        let digest = unchanged.then_some(sent_digest);
        call.seal = crate::seal::seal_request(&proxy.config.seal, call, &request.parts.headers, original, digest, keep);
    }
    // GenAI content capture (opt-in): the prompt as the agent sent it, cleaned of credentials.
    if proxy.tracer.as_ref().is_some_and(|t| t.capture_content)
        && call.facts.as_ref().is_some_and(|f| f.llm.is_some())
        && call.traced()
    {
        call.content = Some(crate::context::Content {
            request: crate::seal::capturable(
                &proxy.config.seal,
                &request.parts.headers,
                &call.path,
                request.original(),
            ),
            response: Vec::new(),
        });
    }
    if let Some(replayer) = &proxy.replayer
        && let Some(response) = replay(replayer, call, request.original())?
    {
        return Ok(response);
    }
    let body = request.bytes().clone();
    let mut parts = request.parts;
    let Some(target) = call.target.as_ref() else {
        return Err(ProxyError::new(
            ErrorKind::Internal,
            Phase::Forward,
            Side::Internal,
            "call reached forward without a target",
        ));
    };
    parts.uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(call.path.as_str())
        .build()
        .map_err(|_| {
            ProxyError::new(
                ErrorKind::BadRequest,
                Phase::Forward,
                Side::Agent,
                format!("request path {:?} is not valid", call.path),
            )
        })?;
    // The pool picks HTTP/1.1 or HTTP/2 per upstream (ALPN); the client's own version is its hop's.
    parts.version = Version::HTTP_11;
    headers::for_upstream(&mut parts.headers);
    crate::telemetry::propagate(call, &mut parts.headers);
    if let Some(value) = call.capability.as_ref().and_then(|g| g.header.clone()) {
        parts.headers.insert(headers::X_CAPABILITY, value);
    }
    let request = Request::from_parts(parts, Full::new(body));
    match tokio::time::timeout(proxy.config.response_timeout, proxy.client(call.worker).request(request)).await {
        Ok(Ok(response)) => {
            let idle = proxy.config.stream_idle_timeout;
            Ok(response.map(|body| UpstreamBody::live(body, idle)))
        }
        Ok(Err(e)) => Err(upstream::classify(&e, target)),
        Err(_) => Err(ProxyError::new(
            ErrorKind::UpstreamTimeout,
            Phase::Forward,
            Side::Upstream,
            format!(
                "{}:{} sent no response headers within {:?} (limits.response_timeout)",
                target.host, target.port, proxy.config.response_timeout
            ),
        )),
    }
}

/// Serves the call from the recorded run when its key has a response left; refuses a miss in
/// strict mode; `None` sends it upstream.
fn replay(replayer: &Replayer, call: &mut Call, body: &[u8]) -> Result<Option<Response<UpstreamBody>>, ProxyError> {
    let mut part = Replay {
        closest: None,
        of: None,
        of_run: replayer.run.clone(),
        original_ended_at: None,
        original_started_at: None,
        strict: replayer.strict,
    };
    if let Some(sealed) = call.seal.as_ref().and_then(|s| replayer.take(&s.key)) {
        part.of = Some(sealed.receipt);
        part.original_started_at = Some(sealed.started_at.clone());
        part.original_ended_at = Some(sealed.ended_at.clone());
        call.replay = Some(part);
        if let Some(seal) = &mut call.seal {
            seal.replayed_meta = Some(sealed.meta_address.clone());
        }
        return Ok(Some(replayer.serve(&sealed)));
    }
    let host = call.target.as_ref().map_or("", |t| t.host.as_str());
    let (closest, diff) = replayer.closest(call.method.as_str(), host, &call.path, body);
    part.closest = closest;
    call.replay = Some(part);
    if !replayer.strict {
        return Ok(None);
    }
    let closest = closest.map(|c| c.to_string());
    let message = match &closest {
        Some(c) => format!(
            "strict replay of run {}: no sealed response left for this request; the closest sealed request is receipt {c} (see diff); nothing was sent upstream",
            replayer.run
        ),
        None => format!(
            "strict replay of run {}: no sealed response for this request; nothing was sent upstream",
            replayer.run
        ),
    };
    Err(ProxyError::new(
        ErrorKind::ReplayMiss(Box::new(ReplayMissed { closest, diff })),
        Phase::Forward,
        Side::Agent,
        message,
    ))
}
