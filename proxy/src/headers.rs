//! Header hygiene between the two hops.
//!
//! A proxy must not pass connection-scoped headers from one hop to the next (RFC 9110 §7.6.1):
//! `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`, and the `Proxy-*` family — `Proxy-Authorization` carries the run token, which must
//! never reach an upstream. FleetForge's own request headers (`x-fleetforge-run`, `-token`,
//! `-step`) are removed before forwarding for the same reason.

use http::HeaderMap;
use http::header::{
    CONNECTION, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};

/// `x-fleetforge-run`: run id (request, from agents; response, from the proxy).
pub const X_RUN: HeaderName = HeaderName::from_static("x-fleetforge-run");
/// `x-fleetforge-token`: run token (request only; never forwarded).
pub const X_TOKEN: HeaderName = HeaderName::from_static("x-fleetforge-token");
/// `x-fleetforge-step`: optional step label (request only).
pub const X_STEP: HeaderName = HeaderName::from_static("x-fleetforge-step");
/// `x-fleetforge-capability`: the per-call capability token, set by the proxy on requests to tool
/// upstreams only; a client's own value is always removed.
pub const X_CAPABILITY: HeaderName = HeaderName::from_static("x-fleetforge-capability");
/// `x-fleetforge-receipt`: receipt id (response only).
pub const X_RECEIPT: HeaderName = HeaderName::from_static("x-fleetforge-receipt");
/// `x-fleetforge-virtual-time`: on a replayed response, when the original call started (RFC 3339).
pub const X_VIRTUAL_TIME: HeaderName = HeaderName::from_static("x-fleetforge-virtual-time");

/// Whether a request header is one that never goes into a seal or a key: credentials, cookies,
/// SDK retry and runtime headers, idempotency keys, user agent, date, and FleetForge's own.
pub fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "set-cookie"
            | "x-api-key"
            | "api-key"
            | "x-goog-api-key"
            | "idempotency-key"
            | "user-agent"
            | "date"
    ) || name.starts_with("x-stainless-")
        || name.starts_with("x-fleetforge-")
        || name.contains("token")
        || name.contains("secret")
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too; collect them first (rare, usually empty).
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Prepares request headers for the upstream: hop-by-hop and FleetForge headers removed, `Host`
/// removed (the client sets it from the upstream URI, so a client cannot steer it elsewhere).
/// `TE: trailers` is the one `TE` value kept, because gRPC needs it.
pub fn for_upstream(headers: &mut HeaderMap) {
    let te_trailers = headers
        .get(TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    strip_hop_by_hop(headers);
    headers.remove(http::header::HOST);
    headers.remove(X_RUN);
    headers.remove(X_TOKEN);
    headers.remove(X_STEP);
    headers.remove(X_CAPABILITY);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::{for_upstream, strip_hop_by_hop};

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic cnVuOnRvaw=="));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn upstream_headers_lose_fleetforge_credentials_but_keep_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert("x-fleetforge-run", HeaderValue::from_static("run-1"));
        h.insert("x-fleetforge-token", HeaderValue::from_static("secret"));
        h.insert("x-fleetforge-step", HeaderValue::from_static("plan"));
        h.insert("host", HeaderValue::from_static("evil.test"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("authorization", HeaderValue::from_static("Bearer sk-agent-key"));
        for_upstream(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["authorization"], "Bearer sk-agent-key", "the agent's own upstream key passes through");
    }
}
