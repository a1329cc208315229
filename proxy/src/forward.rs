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
//! Sealing (request digest, content-addressed body) runs here, before the request leaves.

use http::{Request, Response, Uri, Version};
use http_body_util::Full;

use crate::body::UpstreamBody;
use crate::context::Call;
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::headers;
use crate::outbound::Outbound;
use crate::state::Proxy;
use crate::upstream;

/// Sends the call upstream; see the module docs for what the result means.
pub async fn forward(proxy: &Proxy, call: &mut Call, request: Outbound) -> Result<Response<UpstreamBody>, ProxyError> {
    let body = request.bytes().clone();
    let mut parts = request.parts;
    // Seal: the digest of exactly the bytes the upstream will receive.
    call.request_digest = Some(fleetforge_trust::canonical::sha256(&body));
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
    if let Some(value) = call.capability.as_ref().and_then(|g| g.header.clone()) {
        parts.headers.insert(headers::X_CAPABILITY, value);
    }
    let request = Request::from_parts(parts, Full::new(body));
    match tokio::time::timeout(proxy.config.response_timeout, proxy.client(call.worker).request(request)).await {
        Ok(Ok(response)) => Ok(response.map(UpstreamBody::live)),
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
