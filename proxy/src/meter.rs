//! Phase 3, meter: reserve the call's cost against its run's budget before it is forwarded.
//!
//! Contract of this phase: `Ok(Next::Continue)` with `call.reservation` set — continue to seal +
//! forward, holding the reservation that [`crate::settle`] reconciles when the call ends; or a
//! 429 `budget_exceeded` error when the reservation cannot fit the remaining budget. The phase is
//! async because a call over its run's rate may wait in the run's queue, or for a budget lease
//! from control, before it continues.
//!
//! Metering starts here too: an OpenAI stream that did not ask for its usage is asked for it
//! (`proxy.usage.inject_stream_usage`), and [`response_tap`] gives the response's tap the reader
//! that counts its usage and the rewrite that strips what was asked for.
//!
//! Runs have no budgets yet, so today every call continues with an empty reservation; the run's
//! budget figures wait in its ledger ([`crate::runs::RunState`]). The phase holds its place so
//! that budgets plug in here without moving anything else.

use http::HeaderMap;

use crate::body::Rewrite;
use crate::context::{Call, Reservation};
use crate::error::ProxyError;
use crate::outbound::Outbound;
use crate::phase::Next;
use crate::state::Proxy;
use crate::usage::{self, StripUsage, UsageReader};

/// Makes the call measurable and reserves its estimated cost. Today: nothing to reserve (no
/// budgets), always continues.
pub async fn meter(proxy: &Proxy, call: &mut Call, request: &mut Outbound) -> Result<Next, ProxyError> {
    if proxy.config.inject_stream_usage {
        ask_for_stream_usage(call, request);
    }
    call.reservation = Reservation::default();
    Ok(Next::Continue)
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

/// For a response to `call` with `headers`: the reader that counts an LLM response's usage, and
/// the rewrite that removes the usage [`meter`] asked for from an SSE stream.
pub fn response_tap(call: &Call, headers: &HeaderMap) -> (Option<UsageReader>, Option<Rewrite>) {
    let Some(_) = call.provider() else { return (None, None) };
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let reader = UsageReader::for_content_type(content_type);
    let rewrite = (call.strip_usage && reader.as_ref().is_some_and(UsageReader::is_sse)).then(|| {
        let mut strip = StripUsage::default();
        Box::new(move |chunk| strip.rewrite(chunk)) as Rewrite
    });
    (reader, rewrite)
}
