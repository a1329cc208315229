//! Phase 3, meter: reserve the call's cost against its run's budget before it is forwarded.
//!
//! Contract of this phase: `Ok(Next::Continue)` with `call.reservation` set — continue to seal +
//! forward, holding the reservation that [`crate::settle`] reconciles when the call ends; or a
//! 429 `budget_exceeded` error (with `Retry-After` when waiting could help) when the call cannot
//! fit the run's budget or rate, in which case nothing is forwarded. The phase is async because a
//! call over its run's rate SLO waits in the run's FIFO queue ([`crate::rate`]) first.
//!
//! The run's limits are its token's budget, completed from `[proxy.budget]` defaults; a run with
//! none is not metered at all (no estimate, no lock). The arithmetic is in [`crate::budget`], the
//! input estimate in [`crate::estimate`]; when the proxy leases run budgets from control, the
//! token's limits are spent only out of the slices [`crate::lease`] holds. When the reservation needs it the request's output limit
//! is set to what remains (the cap obligation), in the field its API uses.
//!
//! Metering starts here too: an OpenAI stream that did not ask for its usage is asked for it
//! (`proxy.usage.inject_stream_usage`), and [`response_tap`] gives the response's tap the reader
//! that counts its usage and the rewrite that strips what was asked for.

use bytes::Bytes;
use fleetforge_trust::receipt::Budget as BudgetPart;
use http::HeaderMap;
use serde_json::{Map, Value};

use crate::body::Rewrite;
use crate::budget::{self, Ask, Limits};
use crate::context::Call;
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::estimate;
use crate::guard::{Format, Guard};
use crate::lease::Admitted;
use crate::outbound::Outbound;
use crate::phase::Next;
use crate::state::Proxy;
use crate::usage::{self, StripUsage, UsageReader};

/// Makes the call measurable and reserves what it could cost (see the module docs).
pub async fn meter(proxy: &Proxy, call: &mut Call, request: &mut Outbound) -> Result<Next, ProxyError> {
    if proxy.config.inject_stream_usage {
        ask_for_stream_usage(call, request);
    }
    let Some(ledger) = call.ledger.clone() else { return Ok(Next::Continue) };
    let limits = limits(proxy, call);
    if limits.is_unlimited() {
        return Ok(Next::Continue);
    }
    let ask = ask(proxy, call, request, &limits);
    let rates = limits.rates();
    let mut throttled_ms = 0;
    if rates.is_set() {
        let tokens = if ask.llm { ask.input_tokens.saturating_add(ask.output_tokens.unwrap_or(0)) } else { 0 };
        let clock = || proxy.runs.now_ms();
        throttled_ms = ledger.rate.admit(&rates, tokens, proxy.config.budget.max_wait, clock).await.map_err(|r| {
            proxy.metrics.budget_refused();
            exceeded(r.message, Some(r.retry_after), "budget_rate")
        })?;
        call.rate_tokens = tokens;
    }
    let now = fleetforge_trust::capability::unix_now();
    let leased = leased(proxy, call);
    let run = call.identity.as_ref().map(|i| &i.run);
    let admitted = match (&proxy.leases, run, leased.is_unlimited()) {
        (Some(leases), Some(run), false) => {
            leases.reserve(&ledger, run, &leased, &limits, &ask, (now, proxy.runs.now_ms())).await
        }
        _ => ledger
            .with_state(|s| budget::reserve(s, &limits, &ask, now))
            .map(|granted| Admitted { granted, unleased: false }),
    };
    let Admitted { granted, unleased } = admitted.map_err(|r| {
        if call.rate_tokens > 0 {
            // Refused after the rate took its tokens: give them back.
            ledger.rate.adjust(call.rate_tokens, 0);
            call.rate_tokens = 0;
        }
        proxy.metrics.budget_refused();
        exceeded(r.message, r.retry_after, "budget_exceeded")
    })?;
    if let Some(cap) = granted.output_cap
        && let Some(body) = cap_output(call, request.bytes(), cap)
    {
        call.request_bytes = body.len() as u64;
        request.set_body(body);
    }
    call.reservation = granted.reservation;
    call.budget = Some(BudgetPart {
        tokens_limit: limits.tokens,
        tokens_before: limits.tokens.map(|_| granted.tokens_before),
        reserved_tokens: granted.reservation.tokens,
        cost_limit_micro_usd: limits.cost_micro_usd,
        cost_before_micro_usd: limits.cost_micro_usd.map(|_| granted.cost_before_micro_usd),
        cost_reserved_micro_usd: limits.cost_micro_usd.map(|_| granted.reservation.cost_micro_usd),
        output_cap: granted.output_cap,
        throttled_ms,
        unleased,
        ..BudgetPart::default()
    });
    Ok(Next::Continue)
}

/// The 429 for a call the budget or rate cannot admit.
fn exceeded(message: String, retry_after: Option<u64>, reason: &str) -> ProxyError {
    ProxyError::new(ErrorKind::BudgetExceeded { retry_after }, Phase::Meter, Side::Agent, message).with_reason(reason)
}

/// The call's run's limits: its token's budget, each unset member from the defaults for its
/// agent and tenant.
fn limits(proxy: &Proxy, call: &Call) -> Limits {
    let budget = &proxy.config.budget;
    match &call.capability {
        Some(grant) => grant.limits.or(&budget.defaults_for(grant.agent.as_deref(), Some(&grant.tenant))),
        None if budget.has_defaults() => budget.defaults_for(None, None),
        None => Limits::default(),
    }
}

/// The limits of the call's run that its token carries and a fleet shares through leases from
/// control (tokens, cost, calls); unlimited when the proxy does not lease.
fn leased(proxy: &Proxy, call: &Call) -> Limits {
    match (&proxy.leases, &call.capability) {
        (Some(_), Some(grant)) => Limits {
            tokens: grant.limits.tokens,
            cost_micro_usd: grant.limits.cost_micro_usd,
            calls: grant.limits.calls,
            ..Limits::default()
        },
        _ => Limits::default(),
    }
}

/// What the call asks of its run's budget.
fn ask(proxy: &Proxy, call: &Call, request: &Outbound, limits: &Limits) -> Ask {
    let Some(llm) = call.facts.as_ref().and_then(|f| f.llm.as_ref()) else { return Ask::default() };
    let price = proxy.prices.price(llm.provider, &llm.model);
    let input_tokens =
        if limits.meters_tokens() { estimate::input_tokens(llm.provider, &llm.model, request.bytes()).0 } else { 0 };
    let output_tokens = if llm.operation == "embeddings" { Some(0) } else { llm.max_tokens };
    Ask { llm: true, input_tokens, output_tokens, price, cap: proxy.config.budget.cap_output }
}

/// The request body with its output limit set to `cap`, in the field its API uses: the one the
/// request already sets, else `max_completion_tokens` (OpenAI chat), `max_output_tokens` (OpenAI
/// Responses), `max_tokens` (Anthropic, completions) or `generationConfig.maxOutputTokens`
/// (Gemini). `None` when the body is not a JSON object.
fn cap_output(call: &Call, body: &Bytes, cap: u64) -> Option<Bytes> {
    let llm = call.facts.as_ref()?.llm.as_ref()?;
    let mut value: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if llm.provider == "gemini" || value.contains_key("generationConfig") {
        let config = value.entry("generationConfig").or_insert_with(|| Value::Object(Map::new()));
        config.as_object_mut()?.insert("maxOutputTokens".into(), cap.into());
    } else {
        let field = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .into_iter()
            .find(|f| value.contains_key(*f))
            .unwrap_or(match (llm.provider, llm.operation) {
                ("openai", "chat") if call.path.contains("/responses") => "max_output_tokens",
                ("openai", "chat") => "max_completion_tokens",
                _ => "max_tokens",
            });
        value.insert(field.to_owned(), cap.into());
    }
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// Adds `stream_options.include_usage` to an OpenAI chat or completion stream request that has no
/// `stream_options`, so its usage can be counted; the response tap removes what it adds.
fn ask_for_stream_usage(call: &mut Call, request: &mut Outbound) {
    let wanted = call.facts.as_ref().and_then(|f| f.llm.as_ref()).is_some_and(|llm| {
        llm.provider == "openai"
            && llm.stream
            && llm.stream_usage.is_none()
            && matches!(llm.operation, "chat" | "text_completion")
    });
    if !wanted {
        return;
    }
    if let Some(body) = usage::inject(request.bytes()) {
        call.request_bytes = body.len() as u64;
        request.set_body(body);
        call.strip_usage = true;
    }
}

/// For a response to `call` with `headers`: the reader that counts an LLM response's usage, the
/// rewrite that removes the usage [`meter`] asked for from an SSE stream, and the guard that ends
/// a stream that would run past the output the call reserved.
pub fn response_tap(call: &Call, headers: &HeaderMap) -> (Option<UsageReader>, Option<Rewrite>, Option<Guard>) {
    let Some(_) = call.provider() else { return (None, None, None) };
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    // A traced call's span also names the response's id, model and finish reasons.
    let reader = UsageReader::for_content_type(content_type).map(|r| if call.traced() { r.with_reply() } else { r });
    let sse = reader.as_ref().is_some_and(UsageReader::is_sse);
    let rewrite = (call.strip_usage && sse).then(|| {
        let mut strip = StripUsage::default();
        Box::new(move |chunk| strip.rewrite(chunk)) as Rewrite
    });
    let llm = call.facts.as_ref().and_then(|f| f.llm.as_ref());
    let guard = match llm {
        Some(llm) if sse && call.reservation.metered && call.reservation.tokens > 0 => {
            Format::of(llm.provider, llm.operation, &call.path)
                .map(|f| Guard::new(f, &llm.model, call.reservation.output))
        }
        _ => None,
    };
    (reader, rewrite, guard)
}
