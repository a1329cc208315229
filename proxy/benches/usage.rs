//! Usage extraction as the response tap pays it, per SSE event and per JSON body.
//!
//! - `usage_openai_sse_event`: one OpenAI chat-completion chunk (`"usage": null`, as with
//!   `include_usage`) fed to the reader — the per-event cost of every token of a stream;
//! - `usage_openai_stream_20`: a whole 20-chunk stream ending in its usage chunk, read and parsed;
//! - `usage_anthropic_json`: a non-streamed Anthropic message with cache figures;
//! - `guard_openai_sse_event`: the stream guard ([`fleetforge_proxy::guard`]) on one OpenAI chunk:
//!   the event split out, parsed, and its text counted with the model's tokenizer — the per-event
//!   cost of a metered stream.
//!
//! Run: `cargo bench -p fleetforge-proxy --bench usage`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleetforge_proxy::guard::{Format, Guard};
use fleetforge_proxy::usage::UsageReader;

const EVENT: &str = "data: {\"id\":\"chatcmpl-AZ3lq9x\",\"object\":\"chat.completion.chunk\",\"created\":1764000000,\
\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,\
\"delta\":{\"content\":\" fleet\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";

const USAGE: &str = "data: {\"id\":\"chatcmpl-AZ3lq9x\",\"object\":\"chat.completion.chunk\",\"created\":1764000000,\
\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":20,\
\"total_tokens\":1220,\"prompt_tokens_details\":{\"cached_tokens\":1024},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\ndata: [DONE]\n\n";

const ANTHROPIC: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello, fleet. Every call you make is written down."}],"stop_reason":"end_turn","usage":{"input_tokens":20,"cache_creation_input_tokens":100,"cache_read_input_tokens":3000,"output_tokens":50}}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("usage_openai_sse_event", |b| {
        let mut reader = UsageReader::new(true);
        b.iter(|| reader.feed(black_box(EVENT.as_bytes())))
    });
    let stream: String = EVENT.repeat(20) + USAGE;
    g.bench_function("usage_openai_stream_20", |b| {
        b.iter(|| {
            let mut reader = UsageReader::new(true);
            reader.feed(black_box(stream.as_bytes()));
            assert_eq!(reader.counts().output_tokens, Some(20));
        })
    });
    g.bench_function("usage_anthropic_json", |b| {
        b.iter(|| {
            let mut reader = UsageReader::new(false);
            reader.feed(black_box(ANTHROPIC.as_bytes()));
            assert_eq!(reader.counts().input_tokens, Some(3120));
        })
    });
    fleetforge_proxy::estimate::warm();
    g.bench_function("guard_openai_sse_event", |b| {
        let mut guard = Guard::new(Format::OpenAiChat, "gpt-4o-mini", u64::MAX);
        let event = bytes::Bytes::from_static(EVENT.as_bytes());
        b.iter(|| assert_eq!(guard.pass(black_box(event.clone())).len(), EVENT.len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
