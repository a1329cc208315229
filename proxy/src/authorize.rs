//! Phase 2, authorize: may this call leave the machine?
//!
//! Two entry points, because the body must not be read for a destination we would refuse anyway:
//! - [`destination`] runs before the request body is read (and for every `CONNECT`): the egress
//!   allow-lists of hosts and ports, and the loop guard. Resolution-time checks — a name that
//!   resolves to a loopback, private or link-local address — run when the upstream connection is
//!   made (see [`crate::upstream`]), so a DNS answer cannot be swapped between check and use.
//! - [`call`] runs once the body is in hand: the model allow-list for LLM calls, then the policy
//!   packs (see [`crate::policy`]), whose obligations are applied to the request here.
//! - [`tunnel`] asks the packs about a `CONNECT` tunnel that is not intercepted.
//! - [`capability`] then checks the run's capability token against this exact call (see
//!   [`crate::capability`]).
//!
//! Result: `Ok(())` — continue to meter; or a 403 `policy_denied` error with reasons, a 403
//! `capability_denied`, or a 407 for a missing or invalid token.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use serde::Deserialize;

use crate::capability::Capabilities;
use crate::context::{Call, Target};
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::policy::Policy;
use crate::policy::extract::{self, CallFacts};
use crate::policy::input::{Document, Obligations};
use crate::proxy::Proxy;

fn denied(message: String, reason: &str) -> ProxyError {
    ProxyError::new(ErrorKind::PolicyDenied, Phase::Authorize, Side::Agent, message).with_reason(reason)
}

/// Host-level decision: the built-in allow-list pack's host check, allowed port, and not the
/// proxy itself.
pub fn destination(proxy: &Proxy, call: &mut Call, target: &Target) -> Result<(), ProxyError> {
    let config = &proxy.config;
    if let Some(id) = proxy.builtin.id() {
        call.decided.packs.push(id.to_owned());
    }
    if let Err(reason) = proxy.builtin.check_host(&target.host) {
        return Err(denied(
            format!(
                "host {} is not in the egress allow-list (FLEETFORGE_ALLOWED_HOSTS); ask an operator to add it",
                target.host
            ),
            reason,
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

/// Call-level decision, with the body in hand: the built-in pack's model check, then every
/// policy pack (deny-overrides), then the obligations of an allowed call are applied to the
/// request (headers removed or set, output tokens capped).
///
/// The model is parsed from JSON bodies only when the model allow-list is restricted or packs
/// are configured, so an unrestricted proxy does not pay for parsing.
pub fn call(proxy: &Proxy, call: &mut Call, parts: &mut Parts, body: &mut Bytes) -> Result<(), ProxyError> {
    builtin_model(proxy, call, parts, body)?;
    let Some(policy) = &proxy.policy else { return Ok(()) };
    let doc = document(proxy, policy, call, &parts.headers, body);
    if let Some(llm) = &doc.input.llm {
        call.model.get_or_insert_with(|| llm.model.clone());
    }
    let verdict = decide(policy, call, &doc, "call")?;
    call.decided.tool = doc.input.mcp.and_then(|m| m.tool.filter(|_| m.method == "tools/call"));
    call.decided.reasons = verdict.reasons;
    obligations(call, parts, body, &verdict.obligations, doc.input.llm.is_some())
}

/// A tunnel that is not intercepted is one call the packs can see only as a `CONNECT`: they
/// decide it on its destination and the run's state.
pub fn tunnel(proxy: &Proxy, call: &mut Call) -> Result<(), ProxyError> {
    let Some(policy) = &proxy.policy else { return Ok(()) };
    let doc = document(proxy, policy, call, &http::HeaderMap::new(), &Bytes::new());
    let verdict = decide(policy, call, &doc, "tunnel")?;
    call.decided.reasons = verdict.reasons;
    left(proxy, call);
    Ok(())
}

/// Asks the packs in force about `doc`, naming them in the call's receipt; a deny is the
/// `policy_denied` error (`what`: "call" or "tunnel").
fn decide(
    policy: &Policy,
    call: &mut Call,
    doc: &Document,
    what: &str,
) -> Result<crate::policy::input::Verdict, ProxyError> {
    let set = policy.current();
    let verdict = set.evaluate(doc, &policy.limits);
    call.decided.packs.extend(set.ids().map(str::to_owned));
    if verdict.allow {
        return Ok(verdict);
    }
    let mut err = ProxyError::new(
        ErrorKind::PolicyDenied,
        Phase::Authorize,
        Side::Agent,
        format!("policy denied the {what}: {}", verdict.reasons.join("; ")),
    );
    err.reasons = verdict.reasons;
    Err(err)
}

/// Notes in the run's state that a call policy allowed is leaving (hosts and tools seen by later
/// calls' packs).
pub fn left(proxy: &Proxy, call: &Call) {
    if let (Some(policy), Some(run), Some(target)) = (&proxy.policy, call.run(), &call.target) {
        policy.note_call(run.as_str(), &target.host, call.decided.tool.as_deref());
    }
}

fn document(proxy: &Proxy, policy: &Policy, call: &Call, headers: &http::HeaderMap, body: &Bytes) -> Document {
    let run = call.run().unwrap_or(&proxy.anonymous_run).as_str();
    let target = call.target.as_ref();
    let path = crate::record::redact_path(&call.path);
    let time = crate::record::rfc3339(call.started_at);
    let facts = CallFacts {
        run,
        agent: None,
        tenant: None,
        step: call.identity.as_ref().map_or(0, |i| i.step),
        // Microseconds to milliseconds: "….123456Z" → "….123Z".
        time: format!("{}Z", time.get(..time.len().saturating_sub(4)).unwrap_or(&time)),
        method: call.method.as_str(),
        scheme: target.map_or("https", |t| t.scheme.as_str()),
        host: target.map_or("", |t| t.host.as_str()),
        port: target.map_or(0, |t| t.port),
        path_and_query: if call.method == http::Method::CONNECT { "" } else { &path },
    };
    let json = is_json_headers(headers);
    extract::document(&facts, headers, body, json, policy.state(run))
}

/// Headers a pack may neither set nor remove: they frame the request or name its destination.
const FRAMING_HEADERS: [&str; 6] = ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te"];

fn obligations(
    call: &mut Call,
    parts: &mut Parts,
    body: &mut Bytes,
    o: &Obligations,
    llm: bool,
) -> Result<(), ProxyError> {
    let invalid = |what: String| {
        ProxyError::new(
            ErrorKind::PolicyDenied,
            Phase::Authorize,
            Side::Internal,
            format!(
                "a policy pack set an obligation the proxy cannot apply ({what}); the call is denied (fail closed)"
            ),
        )
        .with_reason("invalid_obligation")
    };
    for name in &o.strip_headers {
        if FRAMING_HEADERS.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            return Err(invalid(format!("strip_headers names {name}")));
        }
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            parts.headers.remove(name);
        }
    }
    for (name, value) in &o.add_headers {
        if FRAMING_HEADERS.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            return Err(invalid(format!("add_headers sets {name}")));
        }
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(format!("{name:?} is not a header name")))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| invalid(format!("the value of {name} is not a header value")))?;
        parts.headers.insert(name, value);
    }
    if let Some(cap) = o.max_tokens_cap.filter(|_| llm)
        && let Some(capped) = extract::cap_max_tokens(body, cap)
    {
        parts.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(capped.len()));
        call.request_bytes = capped.len() as u64;
        *body = capped;
    }
    Ok(())
}

fn builtin_model(proxy: &Proxy, call: &mut Call, parts: &Parts, body: &Bytes) -> Result<(), ProxyError> {
    if !proxy.builtin.restricts_models() || body.is_empty() || !is_json(parts) {
        return Ok(());
    }
    let Ok(ModelField { model: Some(model) }) = serde_json::from_slice::<ModelField>(body) else {
        return Ok(());
    };
    let allowed = proxy.builtin.check_model(&model);
    call.model = Some(model);
    if let Err(reason) = allowed {
        let model = call.model.as_deref().unwrap_or_default();
        return Err(denied(
            format!("model {model:?} is not in the model allow-list (FLEETFORGE_ALLOWED_MODELS)"),
            reason,
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
    is_json_headers(&parts.headers)
}

fn is_json_headers(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}
