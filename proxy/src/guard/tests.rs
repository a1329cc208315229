use bytes::Bytes;
use serde_json::Value;

use super::{Format, Guard};

fn openai_event(text: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

/// The data payloads of an SSE stream.
fn events(stream: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stream)
        .split("\n\n")
        .flat_map(|e| e.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_stream_within_its_reservation_passes_unchanged() {
    let mut g = Guard::new(Format::OpenAiChat, "gpt-4o", 5);
    let stream: String =
        ["Hello", " world", "!"].iter().map(|t| openai_event(t)).collect::<String>() + "data: [DONE]\n\n";
    // Split mid-event: what is passed on is whole events, and all of it.
    let (a, b) = stream.split_at(37);
    let mut out = g.pass(Bytes::copy_from_slice(a.as_bytes())).to_vec();
    out.extend_from_slice(&g.pass(Bytes::copy_from_slice(b.as_bytes())));
    out.extend_from_slice(&g.pass(Bytes::new()));
    assert_eq!(String::from_utf8(out).unwrap(), stream);
    assert!(!g.is_cut());
    assert_eq!(g.counted(), 3);
}

#[test]
fn an_openai_stream_past_its_reservation_ends_with_finish_reason_length() {
    let mut g = Guard::new(Format::OpenAiChat, "gpt-4o", 2);
    let stream: String = ["one", " two", " three", " four"].iter().map(|t| openai_event(t)).collect();
    let out = g.pass(Bytes::from(stream));
    assert!(g.is_cut());
    let events = events(&out);
    assert_eq!(events.len(), 4, "two deltas, the final chunk, [DONE]: {events:?}");
    let last: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!((last["id"].as_str(), last["created"].as_u64()), (Some("chatcmpl-1"), Some(7)));
    assert_eq!(events[3], "[DONE]");
    assert!(g.pass(Bytes::from(openai_event(" five"))).is_empty(), "nothing passes after the cut");
}

#[test]
fn an_anthropic_stream_ends_with_max_tokens_and_message_stop() {
    let mut g = Guard::new(Format::Anthropic, "claude-sonnet-4-5", 1);
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n",
    );
    let out = g.pass(Bytes::from_static(stream.as_bytes()));
    assert!(g.is_cut());
    let events: Vec<Value> = events(&out).iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[4]["delta"]["stop_reason"], "max_tokens");
}

#[test]
fn gemini_counts_by_its_stated_usage_and_ends_with_max_tokens() {
    let mut g = Guard::new(Format::Gemini, "gemini-2.5-flash", 10);
    let chunk = |text: &str, n: u64| {
        format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}],\"role\":\"model\"}}}}],\"usageMetadata\":{{\"promptTokenCount\":4,\"candidatesTokenCount\":{n}}}}}\r\n\r\n"
        )
    };
    let out = g.pass(Bytes::from(chunk("a long first part", 8)));
    assert_eq!(events(&out).len(), 1);
    assert_eq!(g.counted(), 8, "the stated count, not the tokenizer's");
    let out = g.pass(Bytes::from(chunk("and more", 12)));
    assert!(g.is_cut());
    let last: Value = serde_json::from_str(&events(&out)[0]).unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "MAX_TOKENS");
}

#[test]
fn streams_it_cannot_end_are_not_guarded() {
    assert_eq!(Format::of("openai", "chat", "/v1/responses"), None);
    assert_eq!(Format::of("openai", "chat", "/v1/chat/completions"), Some(Format::OpenAiChat));
    assert_eq!(Format::of("anthropic", "chat", "/v1/messages"), Some(Format::Anthropic));
}
