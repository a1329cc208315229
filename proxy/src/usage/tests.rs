// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{Counts, Reply, UsageReader};

/// Reads `body` whole, then again one byte per chunk: a chunk boundary anywhere gives the same.
fn read(body: &str, sse: bool) -> Counts {
    let mut whole = UsageReader::new(sse);
    whole.feed(body.as_bytes());
    let mut bytewise = UsageReader::new(sse);
    for b in body.as_bytes() {
        bytewise.feed(std::slice::from_ref(b));
    }
    assert_eq!(whole.counts(), bytewise.counts(), "chunking changed the result");
    // Reading the reply fields too never changes the counts.
    let (counts, _) = read_reply(body, sse);
    assert_eq!(counts, whole.counts(), "reading the reply changed the counts");
    whole.counts()
}

/// Counts and reply fields, read whole and one byte per chunk (which must agree).
fn read_reply(body: &str, sse: bool) -> (Counts, Reply) {
    let mut whole = UsageReader::new(sse).with_reply();
    whole.feed(body.as_bytes());
    let mut bytewise = UsageReader::new(sse).with_reply();
    for b in body.as_bytes() {
        bytewise.feed(std::slice::from_ref(b));
    }
    assert_eq!(whole.reply(), bytewise.reply(), "chunking changed the reply");
    (whole.counts(), whole.reply().unwrap())
}

fn reply(id: &str, model: &str, finish: &[&str]) -> Reply {
    Reply {
        id: Some(id.into()),
        model: Some(model.into()),
        finish_reasons: finish.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn reply_fields_of_every_provider_shape() {
    // OpenAI JSON: a tool call's own id, deeper down, is not the response's.
    let body = r#"{"id":"chatcmpl-1","model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"tool_calls":[{"id":"call_9","function":{"name":"f"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
    assert_eq!(read_reply(body, false).1, reply("chatcmpl-1", "gpt-4o-2024-08-06", &["tool_calls"]));
    // OpenAI stream: the first id and model, the finish reason of the last chunk.
    let body = "data: {\"id\":\"c-1\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
                data: {\"id\":\"c-1\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
                data: [DONE]\n\n";
    assert_eq!(read_reply(body, true).1, reply("c-1", "gpt-4o", &["stop"]));
    // Anthropic stream: id and model nested in message_start, stop_reason in message_delta.
    let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
                event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\"}}\n\n\
                event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n";
    assert_eq!(read_reply(body, true).1, reply("msg_1", "claude-sonnet-4-5", &["end_turn"]));
    // Gemini JSON array stream: finishReason one level deeper, responseId and modelVersion.
    let body = r#"[{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"modelVersion":"gemini-2.0-flash","responseId":"r-1"},
{"candidates":[{"content":{"parts":[{"text":"b"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":3}}]"#;
    assert_eq!(read_reply(body, false).1, reply("r-1", "gemini-2.0-flash", &["STOP"]));
    // Escapes are decoded; several choices give every distinct reason.
    let body = r#"{"id":"a\u0062c","model":"m","choices":[{"finish_reason":"stop"},{"finish_reason":"length"},{"finish_reason":"stop"}]}"#;
    assert_eq!(read_reply(body, false).1, reply("abc", "m", &["stop", "length"]));
    // An oversized value is not kept; content that looks like a key is not read.
    let long = "x".repeat(400);
    let body =
        format!(r#"{{"id":"{long}","choices":[{{"message":{{"content":"\"model\":\"fake\""}}}}],"model":"real"}}"#);
    let (_, r) = read_reply(&body, false);
    assert_eq!((r.id, r.model.as_deref()), (None, Some("real")));
    // Not asked for, not read.
    let mut plain = UsageReader::new(false);
    plain.feed(br#"{"id":"x","model":"m"}"#);
    assert_eq!(plain.reply(), None);
}

fn counts(input: u64, output: u64, cached: Option<u64>, reasoning: Option<u64>) -> Counts {
    Counts {
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: cached,
        reasoning_tokens: reasoning,
    }
}

#[test]
fn openai_chat_completion_json() {
    let body = r#"{
  "id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-4o-mini",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "The \"usage\": {\"prompt_tokens\": 1} of it"}}],
  "usage": {"prompt_tokens": 1200, "completion_tokens": 35, "total_tokens": 1235,
            "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 0}}
}"#;
    assert_eq!(read(body, false), counts(1200, 35, Some(1024), Some(0)));
}

#[test]
fn openai_stream_with_include_usage() {
    let body = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
                data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
                data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}\n\n\
                data: [DONE]\n\n";
    assert_eq!(read(body, true), counts(12, 2, None, None));
}

#[test]
fn openai_responses_api_stream() {
    let body = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n\n\
                event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello\"}\n\n\
                event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"output\":[{\"content\":[{\"text\":\"Hello\"}]}],\
                \"usage\":{\"input_tokens\":40,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":120,\
                \"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":160}}}\n\n";
    assert_eq!(read(body, true), counts(40, 120, Some(0), Some(64)));
}

#[test]
fn embeddings_have_input_only() {
    let body = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let c = read(body, false);
    assert_eq!((c.input_tokens, c.output_tokens), (Some(8), None));
}

#[test]
fn anthropic_message_json_adds_cache_reads_and_writes_to_input() {
    let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
      "content":[{"type":"tool_use","id":"t","name":"meter","input":{"usage":{"input_tokens":999999}}}],
      "usage":{"input_tokens":20,"cache_creation_input_tokens":100,"cache_read_input_tokens":3000,"output_tokens":50}}"#;
    assert_eq!(read(body, false), counts(3120, 50, Some(3000), None), "a tool's own `usage` is not the call's");
}

#[test]
fn anthropic_stream_takes_the_last_cumulative_delta() {
    let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\
                \"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
                event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
                event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
                event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":17}}\n\n\
                event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    assert_eq!(read(body, true), counts(25, 17, None, None));
}

#[test]
fn gemini_json_sse_and_json_array_stream() {
    let json = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],
      "usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":4,"thoughtsTokenCount":30,"cachedContentTokenCount":2,"totalTokenCount":43},
      "modelVersion":"gemini-2.5-flash"}"#;
    assert_eq!(read(json, false), counts(9, 34, Some(2), Some(30)));
    let sse = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"H\"}]}}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":1}}\r\n\r\n\
               data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"i\"}]}}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":2}}\r\n\r\n";
    assert_eq!(read(sse, true), counts(9, 2, None, None));
    let array = r#"[{"candidates":[],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":1}}
,{"candidates":[],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":6}}]"#;
    assert_eq!(read(array, false), counts(9, 6, None, None));
}

#[test]
fn no_usage_and_junk_read_as_nothing() {
    assert!(read(r#"{"id":"x","choices":[]}"#, false).is_empty());
    assert!(read(r#"{"usage": "lots"}"#, false).is_empty());
    assert!(read("data: {\"usage\": {\"prompt_tokens\": \n\ndata: {\"x\":1}\n\n", true).is_empty());
    // A malformed event does not hide the next one's usage.
    let c = read("data: {\"a\": {{{\n\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n", true);
    assert_eq!(c, counts(3, 4, None, None));
    // Usage deeper than one level down is someone else's.
    assert!(read(r#"{"a":{"b":{"usage":{"prompt_tokens":5}}}}"#, false).is_empty());
    // An object too large to be usage is dropped.
    let big = format!(r#"{{"usage":{{"prompt_tokens":1,"pad":"{}"}}}}"#, "x".repeat(10_000));
    assert!(read(&big, false).is_empty());
}

#[test]
fn content_types_pick_the_reader() {
    assert!(UsageReader::for_content_type(Some("text/event-stream; charset=utf-8")).is_some_and(|r| r.sse));
    assert!(UsageReader::for_content_type(Some("application/json")).is_some_and(|r| !r.sse));
    assert!(UsageReader::for_content_type(Some("application/problem+json")).is_some());
    assert!(UsageReader::for_content_type(Some("text/html")).is_none());
    assert!(UsageReader::for_content_type(None).is_none());
}

use bytes::Bytes;

use super::{StripUsage, inject};

#[test]
fn inject_adds_the_option_as_the_last_member_and_keeps_every_other_byte() {
    let body = "{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"}\"}]}\n";
    let injected = inject(body.as_bytes()).unwrap();
    assert_eq!(
        std::str::from_utf8(&injected).unwrap(),
        "{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"}\"}],\"stream_options\":{\"include_usage\":true}}\n"
    );
    let v: serde_json::Value = serde_json::from_slice(&injected).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert!(inject(b"[1,2]").is_none());
    assert!(inject(b"{ }").is_none());
    assert!(inject(b"").is_none());
}

/// The stream as OpenAI sends it with and without `include_usage`.
fn streams() -> (String, String) {
    let chunk = |content: &str, usage: bool| {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]{}}}\n\n",
            if usage { ",\"usage\":null" } else { "" }
        )
    };
    let words = ["Hel", "lo \\\"usage\\\":null", ", fleet"];
    let plain: String = words.iter().map(|w| chunk(w, false)).collect::<String>() + "data: [DONE]\n\n";
    let with: String = words.iter().map(|w| chunk(w, true)).collect::<String>()
        + "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n"
        + "data: [DONE]\n\n";
    (plain, with)
}

fn strip_in_chunks(stream: &str, size: usize) -> String {
    let mut strip = StripUsage::default();
    let mut out = Vec::new();
    for piece in stream.as_bytes().chunks(size) {
        out.extend_from_slice(&strip.rewrite(Bytes::copy_from_slice(piece)));
    }
    out.extend_from_slice(&strip.rewrite(Bytes::new()));
    String::from_utf8(out).unwrap()
}

#[test]
fn strip_gives_the_client_exactly_the_stream_without_the_option_however_it_is_chunked() {
    let (plain, with) = streams();
    for size in [1, 2, 7, 64, 100_000] {
        assert_eq!(strip_in_chunks(&with, size), plain, "chunks of {size} bytes");
    }
    // The usage was in what the upstream sent, for the reader.
    let mut reader = super::UsageReader::new(true);
    reader.feed(with.as_bytes());
    assert_eq!((reader.counts().input_tokens, reader.counts().output_tokens), (Some(9), Some(3)));
}

#[test]
fn strip_passes_other_lines_and_an_unterminated_tail_through() {
    let stream = ": keep-alive\n\nevent: x\ndata: {\"usage\":null,\"a\":1}\n\ndata: {\"a\":2,\"usage\": null }\n\ndata: {\"a\":3";
    let out = strip_in_chunks(stream, 5);
    assert_eq!(out, ": keep-alive\n\nevent: x\ndata: {\"a\":1}\n\ndata: {\"a\":2 }\n\ndata: {\"a\":3");
}

#[test]
fn passing_over_events_reads_what_reading_every_byte_reads() {
    // Events the reader may pass over whole, mixed with ones it must read: usage after blanks,
    // keys written with escapes, keys as values, usage or reply keys split across lines, a
    // raw newline inside a string, CRLF events, reply fields that arrive late.
    let streams = [
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":null}],\"usage\":null}\n\n\
         data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"usage\"},\"finish_reason\":null}],\"usage\" :\t null}\n\n\
         data: {\"id\":\"c\",\"choices\":[],\"usage\" \r: \t{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n\
         data: [DONE]\n\n",
        "data: {\"id\":\"c\",\"choices\":[]}\n\n\
         data: {\"us\\u0061ge\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
         data: {\"usa\\\"ge\":{\"prompt_tokens\":2,\"completion_tokens\":2}}\n\n\
         data: {\"x\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":5}\"}\n\n",
        "event: a\ndata: {\"model\":\"m1\"}\n\nevent: b\ndata: {\"usage\"\n:{\"prompt_tokens\":4,\"completion_tokens\":4}}\n\n\
         data: {\"x\":\"unterminated\ndata: {\"usage\":{\"prompt_tokens\":6,\"completion_tokens\":1}}\n\n\
         data: {\"choices\":[{\"finish_reason\" : \"stop\"}],\"id\":\"late\"}\n\n",
        "data: {\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2}}\r\n\r\n\
         data: {\"responseId\":\"r\",\"modelVersion\":\"g\"}\r\n\r\ndata: {\"finishReason\":\"STOP\"}\n\n\n\n",
        "data: {\"a\":[{\"b\":{\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9}}}]}\n\ndata: {\"id\":{\"x\":1},\"id\":\"second\"}\n\n",
        // A key whose opening quote is the closing quote of a raw match just before it
        // (found by fuzzing: fuzz/regressions/sse_usage/).
        "data: {\"z\":\"a\"id\"id\":\"cid\"}\n\ndata: {\"m\":\"b\"model\"model\":\"m2\"}\n\n",
    ];
    for stream in streams {
        // `read` and `read_reply` compare the whole stream (events passed over) with one byte
        // per chunk (every byte read); every split point in two gives the same too.
        let counts = read(stream, true);
        let (_, reply) = read_reply(stream, true);
        for at in 1..stream.len() {
            let mut split = UsageReader::new(true).with_reply();
            split.feed(&stream.as_bytes()[..at]);
            split.feed(&stream.as_bytes()[at..]);
            assert_eq!((split.counts(), split.reply()), (counts, Some(reply.clone())), "split at {at}: {stream:?}");
        }
    }
    // The usage object after blanks is read: the events around it were passed over.
    assert_eq!(read(streams[0], true), counts(7, 3, None, None));
}
