//! Phase 2, authorize: may this call leave the machine?
//!
//! One entry point, [`authorize`], asked about one of three subjects:
//! - [`Subject::Connect`] — a `CONNECT` to an intercepted host, before it is answered: only its
//!   destination is decided here; each request inside the tunnel is then authorized on its own.
//! - [`Subject::Tunnel`] — a `CONNECT` that will be relayed byte for byte: its destination, then
//!   the policy packs, which see it as one `CONNECT` call.
//! - [`Subject::Request`] — an HTTP request, in this order:
//!   1. the destination: the egress allow-lists of hosts and ports and the loop guard — *before*
//!      the body is read, so a refused host costs no buffering;
//!   2. the body is read (bounded), and its LLM/MCP fields ([`crate::facts`]) once, when any
//!      check below needs them;
//!   3. the model allow-list, then the policy packs ([`crate::policy`], deny-overrides), whose
//!      obligations are applied to the request here;
//!   4. the run's capability token, against this exact call (after policy, so the per-call token
//!      handed to a tool restates a call policy has also allowed; see [`crate::capability`]).
//!
//! Resolution-time checks — a name that resolves to a loopback, private or link-local address —
//! run when the upstream connection is made (see [`crate::upstream`]), so a DNS answer cannot be
//! swapped between check and use. An allowed call is noted in the run's ledger, where later calls'
//! packs see it.
//!
//! Result: `Ok(Next::Continue)` — continue to meter; or a 403 `policy_denied` error with
//! reasons, a 403 `capability_denied`, a 407 for a missing or invalid token, or the 400/413 of a
//! body that cannot be read.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::capability::Capabilities;
use crate::context::{Call, Target};
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::facts;
use crate::outbound::Outbound;
use crate::phase::Next;
use crate::policy::Policy;
use crate::policy::extract::{self, CallFacts};
use crate::policy::input::{Document, Obligations, StateInput, Verdict};
use crate::state::Proxy;

/// What [`authorize`] is asked about.
#[derive(Debug)]
pub enum Subject<'a> {
    /// A `CONNECT` to an intercepted host: its destination only.
    Connect,
    /// A `CONNECT` relayed without interception: its destination and the packs.
    Tunnel,
    /// An HTTP request: everything (see the module docs); its body is read here.
    Request(&'a mut Outbound),
}

/// Decides `subject` for `call`; see the module docs for the order and what the result means.
pub async fn authorize(proxy: &Proxy, call: &mut Call, subject: Subject<'_>) -> Result<Next, ProxyError> {
    let Some(target) = call.target.clone() else {
        return Err(ProxyError::new(
            ErrorKind::Internal,
            Phase::Authorize,
            Side::Internal,
            "call reached authorize without a target",
        ));
    };
    destination(proxy, call, &target)?;
    match subject {
        Subject::Connect => {}
        Subject::Tunnel => {
            if let Some(policy) = &proxy.policy {
                let doc = document(proxy, call, &HeaderMap::new());
                call.decided.reasons = decide(policy, call, &doc, "tunnel")?.reasons;
            }
            note(call, &target);
        }
        Subject::Request(out) => {
            out.read_body(proxy.config.max_body, proxy.config.body_timeout).await?;
            call.request_bytes = out.bytes().len() as u64;
            if reads_facts(proxy, call, &target) {
                call.facts =
                    Some(facts::read(&target.host, &call.path, facts::is_json(&out.parts.headers), out.bytes()));
            }
            builtin_model(proxy, call)?;
            if let Some(policy) = &proxy.policy {
                let doc = document(proxy, call, &out.parts.headers);
                let verdict = decide(policy, call, &doc, "call")?;
                call.decided.tool = call.facts.as_ref().and_then(|f| f.tool_call()).map(str::to_owned);
                call.decided.reasons = verdict.reasons;
                let llm = call.facts.as_ref().is_some_and(|f| f.llm.is_some());
                obligations(call, out, &verdict.obligations, llm)?;
            }
            if let Some(caps) = &proxy.capabilities {
                capability(proxy, caps, call).await?;
            }
            note(call, &target);
        }
    }
    Ok(Next::Continue)
}

/// Whether anything reads the body's LLM/MCP fields: a check (the model allow-list, a pack, the
/// capability check), or the receipt of a call to an LLM API, whose usage names the model. When
/// nothing does, the body is not parsed at all.
fn reads_facts(proxy: &Proxy, call: &Call, target: &Target) -> bool {
    proxy.builtin.restricts_models()
        || proxy.policy.is_some()
        || proxy.capabilities.is_some()
        || facts::provider(&target.host, &call.path).is_some()
        // A traced call's span names its model or MCP tool.
        || call.traced()
}

/// Notes in the run's ledger that a call policy allowed is leaving (hosts and tools seen by later
/// calls' packs).
fn note(call: &Call, target: &Target) {
    if let Some(ledger) = &call.ledger {
        ledger.note_call(&target.host, call.decided.tool.as_deref());
    }
}

fn denied(message: String, reason: &str) -> ProxyError {
    ProxyError::new(ErrorKind::PolicyDenied, Phase::Authorize, Side::Agent, message).with_reason(reason)
}

/// Host-level decision: the built-in allow-list pack's host check, allowed port, and not the
/// proxy itself.
fn destination(proxy: &Proxy, call: &mut Call, target: &Target) -> Result<(), ProxyError> {
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

/// Asks the packs in force about `doc`, naming them in the call's receipt; a deny is the
/// `policy_denied` error (`what`: "call" or "tunnel").
fn decide(policy: &Policy, call: &mut Call, doc: &Document, what: &str) -> Result<Verdict, ProxyError> {
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

fn document(proxy: &Proxy, call: &Call, headers: &HeaderMap) -> Document {
    let run = call.run().unwrap_or(&proxy.anonymous_run).as_str();
    let target = call.target.as_ref();
    let path = fleetforge_trust::text::redact_path(&call.path);
    let time = fleetforge_trust::text::rfc3339_micros(call.started_at);
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
    let state = call.ledger.as_ref().map_or_else(StateInput::default, |l| l.policy_state());
    extract::document(&facts, headers, call.facts.as_ref(), state)
}

/// Headers a pack may neither set nor remove: they frame the request or name its destination.
const FRAMING_HEADERS: [&str; 6] = ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te"];

fn obligations(call: &mut Call, out: &mut Outbound, o: &Obligations, llm: bool) -> Result<(), ProxyError> {
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
            out.parts.headers.remove(name);
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
        out.parts.headers.insert(name, value);
    }
    if let Some(cap) = o.max_tokens_cap.filter(|_| llm)
        && let Some(capped) = extract::cap_max_tokens(out.bytes(), cap)
    {
        call.request_bytes = capped.len() as u64;
        out.set_body(capped);
    }
    Ok(())
}

/// The built-in pack's model check, on the model the body names.
fn builtin_model(proxy: &Proxy, call: &Call) -> Result<(), ProxyError> {
    let Some(model) = call.model().filter(|_| proxy.builtin.restricts_models()) else { return Ok(()) };
    proxy.builtin.check_model(model).map_err(|reason| {
        denied(format!("model {model:?} is not in the model allow-list (FLEETFORGE_ALLOWED_MODELS)"), reason)
    })
}

/// Capability check: a token signed by a root key not yet known waits (at most 2 s) for the sync
/// thread to fetch it, then the token is attenuated to this call and authorized. Tool upstreams
/// and MCP calls get the per-call token.
async fn capability(proxy: &Proxy, caps: &Capabilities, call: &mut Call) -> Result<(), ProxyError> {
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
    // Tools verify the per-call token offline: configured tool hosts, and any MCP server (a
    // JSON-RPC body is an MCP call whichever host serves it).
    let tool = call.target.as_ref().is_some_and(|t| proxy.config.capabilities.tool_hosts.matches(&t.host))
        || call.facts.as_ref().is_some_and(|f| f.mcp.is_some());
    call.capability = Some(caps.check(call, tool)?);
    Ok(())
}
