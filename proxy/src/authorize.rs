//! Phase 2, authorize: may this call leave the machine?
//!
//! Two entry points, because the body must not be read for a destination we would refuse anyway:
//! - [`destination`] runs before the request body is read (and for every `CONNECT`): the egress
//!   allow-lists of hosts and ports, and the loop guard. Resolution-time checks — a name that
//!   resolves to a loopback, private or link-local address — run when the upstream connection is
//!   made (see [`crate::upstream`]), so a DNS answer cannot be swapped between check and use.
//! - [`call`] runs once the body is in hand: the model allow-list for LLM calls.
//! - [`capability`] then checks the run's capability token against this exact call (see
//!   [`crate::capability`]).
//!
//! Result: `Ok(())` — continue to meter; or a 403 `policy_denied` error with reasons, a 403
//! `capability_denied`, or a 407 for a missing or invalid token. Wasm/Rego/Cedar policy packs
//! plug in here.

use bytes::Bytes;
use http::request::Parts;
use serde::Deserialize;

use crate::capability::Capabilities;
use crate::context::{Call, Target};
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::proxy::Proxy;

fn denied(message: String, reason: &str) -> ProxyError {
    ProxyError::new(ErrorKind::PolicyDenied, Phase::Authorize, Side::Agent, message).with_reason(reason)
}

/// Host-level decision: allowed host, allowed port, and not the proxy itself.
pub fn destination(proxy: &Proxy, target: &Target) -> Result<(), ProxyError> {
    let config = &proxy.config;
    if !config.allowed_hosts.matches(&target.host) {
        return Err(denied(
            format!(
                "host {} is not in the egress allow-list (FLEETFORGE_ALLOWED_HOSTS); ask an operator to add it",
                target.host
            ),
            "host_not_allowed",
        ));
    }
    // A host pinned with FLEETFORGE_RESOLVE names its own address and port: the operator chose it.
    let pinned = config.resolve.contains_key(&target.host);
    if !pinned && !config.allowed_ports.allows(target.port) {
        return Err(denied(
            format!("port {} of {} is not in the allowed ports (FLEETFORGE_ALLOWED_PORTS)", target.port, target.host),
            "port_not_allowed",
        ));
    }
    if proxy.is_own_listener(&target.host, target.port) {
        return Err(denied(
            format!("{}:{} is this proxy's own listener; refusing to proxy to myself", target.host, target.port),
            "proxy_loop",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ModelField {
    model: Option<String>,
}

/// Call-level decision, with the body in hand.
///
/// The model is parsed from JSON bodies only when the model allow-list is restricted, so an
/// unrestricted proxy does not pay for parsing.
pub fn call(proxy: &Proxy, call: &mut Call, parts: &Parts, body: &Bytes) -> Result<(), ProxyError> {
    let models = &proxy.config.allowed_models;
    if models.is_any() || body.is_empty() || !is_json(parts) {
        return Ok(());
    }
    let Ok(ModelField { model: Some(model) }) = serde_json::from_slice::<ModelField>(body) else {
        return Ok(());
    };
    let allowed = models.matches(&model);
    call.model = Some(model);
    if !allowed {
        let model = call.model.as_deref().unwrap_or_default();
        return Err(denied(
            format!("model {model:?} is not in the model allow-list (FLEETFORGE_ALLOWED_MODELS)"),
            "model_not_allowed",
        ));
    }
    Ok(())
}

/// Capability check: the model is parsed if the allow-list did not already, a token signed by
/// a root key not yet known waits (at most 2 s) for the sync thread to fetch it, then the token
/// is attenuated to this call and authorized.
pub async fn capability(
    proxy: &Proxy,
    caps: &Capabilities,
    call: &mut Call,
    parts: &Parts,
    body: &Bytes,
) -> Result<(), ProxyError> {
    if call.model.is_none()
        && !body.is_empty()
        && is_json(parts)
        && let Ok(ModelField { model: Some(model) }) = serde_json::from_slice::<ModelField>(body)
    {
        call.model = Some(model);
    }
    // Only a token not yet verified needs its root key looked up (parsing it costs more than the
    // whole per-call check of a cached one).
    let unverified = call
        .identity
        .as_ref()
        .and_then(|i| i.token.as_ref())
        .filter(|t| !caps.is_verified(t.expose()))
        .map(|t| t.expose().to_owned());
    if let Some(id) = unverified.as_deref().and_then(fleetforge_trust::capability::root_key_id)
        && !caps.knows_root(id)
    {
        caps.refresh.notify_one();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while !caps.knows_root(id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let tool = call.target.as_ref().is_some_and(|t| proxy.config.capabilities.tool_hosts.matches(&t.host));
    call.capability = Some(caps.check(call, tool)?);
    Ok(())
}

fn is_json(parts: &Parts) -> bool {
    parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}
