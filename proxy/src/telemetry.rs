//! OpenTelemetry for calls: the trace a call joins or starts, the `traceparent` sent upstream,
//! and the CLIENT span emitted when the call is recorded (phase 6).
//!
//! With an OTLP endpoint configured, every call gets a span of its own: a child of the caller's
//! span when the request carried a valid `traceparent`, else the root of a new trace; the
//! upstream receives a `traceparent` naming the proxy's span (and the caller's `tracestate`), and
//! the receipt records the trace and span ids. The span is built from the finished [`Call`] —
//! GenAI, MCP, HTTP and `trust.*` attributes, listed in `docs/reference/telemetry.md` — and
//! queued for export without waiting. Without an endpoint nothing of this is spent: a caller's
//! `traceparent` is forwarded untouched and the receipt names the caller's span.

use fleetforge_otel::{Kind, Parent, Span, Status, Value, unix_nanos};
use fleetforge_trust::receipt::Trace;
use fleetforge_trust::text::redact_path;
use http::HeaderMap;
use http::header::HeaderValue;

use crate::context::{Call, CallKind, CallTrace, Outcome};
use crate::error::Side;
use crate::state::Proxy;

/// The trace of a call whose request carried `headers`: its own span when the proxy traces,
/// the caller's when only the caller does, nothing otherwise.
pub fn begin(proxy: &Proxy, headers: &HeaderMap) -> Option<CallTrace> {
    let parent = Parent::from_headers(headers);
    match &proxy.tracer {
        Some(tracer) => Some(CallTrace::Own(tracer.start_span(parent.as_ref()))),
        None => parent.map(CallTrace::Caller),
    }
}

/// Sets the upstream request's `traceparent` (and `tracestate`) to the proxy's span; a caller's
/// headers go on untouched when the proxy does not trace.
pub fn propagate(call: &Call, headers: &mut HeaderMap) {
    let Some(CallTrace::Own(started)) = &call.trace else { return };
    if let Ok(v) = HeaderValue::from_str(&started.traceparent()) {
        headers.insert("traceparent", v);
    }
    match started.state.as_deref().map(HeaderValue::from_str) {
        Some(Ok(v)) => {
            headers.insert("tracestate", v);
        }
        _ => {
            headers.remove("tracestate");
        }
    }
}

/// The receipt's `trace` part.
pub fn receipt_trace(call: &Call) -> Option<Trace> {
    match call.trace.as_ref()? {
        CallTrace::Own(s) => Some(Trace { trace_id: s.trace_id.to_hex(), span_id: s.span_id.to_hex() }),
        CallTrace::Caller(p) => Some(Trace { trace_id: p.trace_id.to_hex(), span_id: p.span_id.to_hex() }),
    }
}

/// The `gen_ai.provider.name` (1.37) and `gen_ai.system` (older) values of a provider.
fn provider_names(provider: &'static str) -> (&'static str, &'static str) {
    match provider {
        "gemini" => ("gcp.gemini", "gemini"),
        "mistral" => ("mistral_ai", "mistral_ai"),
        other => (other, other),
    }
}

/// The most bytes of a prompt or completion put on a span; longer content is cut there (at a
/// character boundary) and marked with `…[truncated]`.
const MAX_CONTENT: usize = 64 * 1024;

fn truncated(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_CONTENT {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut end = MAX_CONTENT;
    while end > 0 && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    format!("{}…[truncated]", String::from_utf8_lossy(&bytes[..end]))
}

/// GenAI content capture: the prompt (the request body, cleaned) and the completion (the response
/// body as received: JSON, or the SSE stream's text). The current conventions put them in
/// `gen_ai.input.messages` / `gen_ai.output.messages`; the older ones in the events
/// `gen_ai.content.prompt` (`gen_ai.prompt`) and `gen_ai.content.completion` (`gen_ai.completion`).
fn add_content(span: &mut Span, content: &crate::context::Content, semconv: fleetforge_otel::Semconv) {
    let prompt = truncated(&content.request);
    let completion = truncated(&content.response.concat());
    if semconv.dual() {
        let at = span.end_unix_nano;
        span.events.push(fleetforge_otel::Event {
            name: "gen_ai.content.prompt",
            time_unix_nano: span.start_unix_nano,
            attributes: vec![("gen_ai.prompt", Value::Str(prompt.clone()))],
        });
        span.events.push(fleetforge_otel::Event {
            name: "gen_ai.content.completion",
            time_unix_nano: at,
            attributes: vec![("gen_ai.completion", Value::Str(completion.clone()))],
        });
    }
    span.set("gen_ai.input.messages", prompt);
    span.set("gen_ai.output.messages", completion);
}

/// Builds the finished call's span and queues it, when the proxy traces and sampled the call.
pub fn emit(proxy: &Proxy, call: &Call, outcome: &Outcome) {
    let (Some(tracer), Some(CallTrace::Own(started))) = (&proxy.tracer, &call.trace) else { return };
    if !started.sampled {
        return;
    }
    tracer.submit(span(call, outcome, started, tracer.semconv));
}

/// The span of a finished call (see the module docs).
pub fn span(
    call: &Call,
    outcome: &Outcome,
    started: &fleetforge_otel::Started,
    semconv: fleetforge_otel::Semconv,
) -> Span {
    let facts = call.facts.as_ref();
    let llm = facts.and_then(|f| f.llm.as_ref());
    let mcp = facts.and_then(|f| f.mcp.as_ref());
    let name = match (llm, mcp, call.kind) {
        (_, _, CallKind::Tunnel) => "CONNECT".to_owned(),
        (Some(llm), _, _) => format!("{} {}", llm.operation, llm.model),
        (None, Some(mcp), _) => match &mcp.tool {
            Some(tool) => format!("{} {tool}", mcp.method),
            None => mcp.method.clone(),
        },
        _ => call.method.as_str().to_owned(),
    };
    let start = unix_nanos(call.started_at);
    let mut span = started.span(name, Kind::Client, start);
    span.end_unix_nano = start.saturating_add(u64::try_from(call.started.elapsed().as_nanos()).unwrap_or(u64::MAX));

    // HTTP client attributes.
    span.set("http.request.method", call.method.as_str());
    if let Some(t) = &call.target {
        span.set("server.address", t.host.as_str());
        span.set("server.port", i64::from(t.port));
        if call.kind == CallKind::Exchange {
            span.set("url.full", format!("{}://{}{}", t.scheme, t.authority, redact_path(&call.path)));
        }
    }
    if let Some(status) = call.status {
        span.set("http.response.status_code", i64::from(status.as_u16()));
    }

    // GenAI.
    if let Some(llm) = llm {
        let (provider, system) = provider_names(llm.provider);
        span.set_static("gen_ai.operation.name", llm.operation);
        span.set_static("gen_ai.provider.name", provider);
        if semconv.dual() {
            span.set_static("gen_ai.system", system);
        }
        span.set("gen_ai.request.model", llm.model.as_str());
        if let Some(max) = llm.max_tokens {
            span.set("gen_ai.request.max_tokens", max);
        }
    }
    if let Some(reply) = &call.reply {
        if let Some(model) = &reply.model {
            span.set("gen_ai.response.model", model.as_str());
        }
        if let Some(id) = &reply.id {
            span.set("gen_ai.response.id", id.as_str());
        }
        if !reply.finish_reasons.is_empty() {
            span.set("gen_ai.response.finish_reasons", Value::StrArray(reply.finish_reasons.clone()));
        }
    }
    if let Some(usage) = &call.usage {
        if let Some(n) = usage.input_tokens {
            span.set("gen_ai.usage.input_tokens", n);
            if semconv.dual() {
                span.set("gen_ai.usage.prompt_tokens", n);
            }
        }
        if let Some(n) = usage.output_tokens {
            span.set("gen_ai.usage.output_tokens", n);
            if semconv.dual() {
                span.set("gen_ai.usage.completion_tokens", n);
            }
        }
    }
    // MCP.
    if let Some(mcp) = mcp {
        span.set("mcp.method.name", mcp.method.as_str());
        if let Some(tool) = &mcp.tool {
            span.set_static("gen_ai.operation.name", "execute_tool");
            span.set("gen_ai.tool.name", tool.as_str());
        }
    }

    // Trust: the evidence behind the span.
    let mut id = [0u8; 36];
    span.set("trust.attestation_id", call.receipt_id.encode(&mut id));
    if let Some(run) = call.run() {
        span.set("trust.run.id", run.as_str());
    }
    if let Some(grant) = &call.capability {
        span.set("trust.capability_token_id", grant.call_token_id.as_deref().unwrap_or(&grant.token_id));
    }
    let allowed = match outcome {
        Outcome::Failed(err) => err.side == Side::Upstream,
        _ => true,
    };
    span.set_static("trust.policy.decision", if allowed { "allow" } else { "deny" });
    if !call.decided.packs.is_empty() {
        span.set("trust.policy.packs", Value::StrArray(call.decided.packs.clone()));
    }
    if let Some(budget) = &call.budget {
        if let Some(left) = budget.tokens_left {
            span.set("trust.budget.remaining", left);
        }
        if let Some(left) = budget.cost_left_micro_usd {
            span.set("trust.budget.remaining_micro_usd", left);
        }
    }
    span.set_static("trust.semconv.version", semconv.version());
    if let Some(content) = &call.content {
        add_content(&mut span, content, semconv);
    }

    // Errors.
    match outcome {
        Outcome::Failed(err) => {
            span.set_static("error.type", err.kind.type_str());
            span.status = Status::Error(err.message.clone());
        }
        Outcome::UpstreamAborted(reason) => {
            span.set_static("error.type", "upstream_aborted");
            span.status = Status::Error(reason.clone());
        }
        _ => {
            if let Some(status) = call.status.filter(|s| s.is_server_error()) {
                span.set("error.type", status.as_str().to_owned());
                span.status = Status::Error(format!("upstream answered {status}"));
            }
        }
    }
    span
}
