//! The fake upstream's routes: just enough of OpenAI and Anthropic to exercise metering, plus
//! `/echo`, `/bytes/{n}` and `/status/{code}` for transport tests.
//!
//! Everything is deterministic: the completion text is [`completion_text`] of the requested number
//! of pieces, prompt tokens are [`prompt_tokens`] of the message text, and each piece costs
//! [`TOKENS_PER_PIECE`] completion tokens. Two request headers shape any streamed response:
//! `x-test-chunks` (content pieces, default [`DEFAULT_CHUNKS`]) and `x-test-chunk-delay-ms`
//! (pause between body frames, default 0). A bad value for either is a 400, so a typo in a test
//! fails loudly instead of silently using the default. Like a real provider, a completion never
//! has more tokens than the request's output limit (`max_tokens` / `max_completion_tokens`):
//! the pieces stop at the limit — unless `x-test-ignore-limit: 1` makes it a provider that
//! ignores it. `x-test-no-usage: 1` leaves usage out of a JSON response (an upstream that reports
//! none). `x-test-sample: 1` makes a JSON chat completion end with ` sample{N}`, N counting up
//! per process: identical prompts answered differently, as a sampling model does. Gemini's `models/{model}:generateContent` and `:streamGenerateContent` (SSE with
//! `alt=sse`, `usageMetadata` cumulative in every chunk) answer the same way.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Value, json};

use super::ConnInfo;
use super::body::FrameBody;

/// Request bodies larger than this get a 413.
pub const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Content pieces per completion unless `x-test-chunks` says otherwise.
pub const DEFAULT_CHUNKS: usize = 5;
/// Completion tokens charged per content piece.
pub const TOKENS_PER_PIECE: u64 = 3;
/// Header overriding the number of content pieces.
pub const CHUNKS_HEADER: &str = "x-test-chunks";
/// Header that leaves usage out of JSON responses.
pub const NO_USAGE_HEADER: &str = "x-test-no-usage";
/// Header that makes the upstream ignore the request's output limit.
pub const IGNORE_LIMIT_HEADER: &str = "x-test-ignore-limit";
/// Header that makes identical chat prompts get different JSON answers.
pub const SAMPLE_HEADER: &str = "x-test-sample";
/// Answers given under [`SAMPLE_HEADER`].
static SAMPLES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Header setting the pause between streamed body frames, in milliseconds.
pub const DELAY_HEADER: &str = "x-test-chunk-delay-ms";

const MAX_CHUNKS: usize = 100_000;
/// Fixed so identical requests get identical responses.
const CREATED: u64 = 1_700_000_000;
const OPENAI_ID: &str = "chatcmpl-fleetforge-fake";
const ANTHROPIC_ID: &str = "msg_fleetforge_fake";

/// Content piece `i` of a completion (`"word{i} "`).
pub fn content_piece(i: usize) -> String {
    format!("word{i} ")
}

/// The full completion text of `pieces` pieces, as both APIs return it.
pub fn completion_text(pieces: usize) -> String {
    (0..pieces).map(content_piece).collect()
}

/// Prompt tokens charged for `chars` characters of message text: `ceil(chars / 4)`.
pub fn prompt_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Routes one fully read request.
pub(crate) fn route(parts: &Parts, body: &Bytes, conn: &ConnInfo) -> Response<FrameBody> {
    let path = parts.uri.path();
    let result = match parts.method {
        Method::POST if path == "/v1/chat/completions" => openai(&parts.headers, body),
        Method::POST if path == "/v1/messages" => anthropic(&parts.headers, body),
        Method::POST if path.starts_with("/v1beta/models/") => gemini(&parts.headers, path, body),
        _ if path == "/echo" || path.starts_with("/echo/") => Ok(echo(parts, body, conn)),
        Method::GET if path.starts_with("/bytes/") => bytes(&parts.headers, &path["/bytes/".len()..]),
        Method::GET if path.starts_with("/status/") => status(&path["/status/".len()..]),
        _ => Err(Reject {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            message: format!("no route for {} {path}", parts.method),
        }),
    };
    result.unwrap_or_else(Reject::into_response)
}

/// Why a request gets an error instead of an answer; [`Reject::into_response`] is the one place
/// that turns it into a status and a JSON body.
pub(crate) struct Reject {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl Reject {
    /// A request body over [`MAX_REQUEST_BODY`].
    pub(crate) fn too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "payload_too_large",
            message: "request body exceeds 32 MiB".to_owned(),
        }
    }

    /// A malformed request: bad JSON, a bad test header, an unreadable body.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: message.into() }
    }

    /// `{"error": {"type", "message"}}` with the status.
    pub(crate) fn into_response(self) -> Response<FrameBody> {
        json_response(self.status, &json!({"error": {"type": self.kind, "message": self.message}}))
    }
}

type Routed = Result<Response<FrameBody>, Reject>;

/// How a completion is shaped: content pieces and the pause between frames.
struct Shape {
    pieces: usize,
    delay: Duration,
    ignore_limit: bool,
}

fn shape(headers: &HeaderMap) -> Result<Shape, Reject> {
    let pieces = header_number(headers, CHUNKS_HEADER)?.unwrap_or(DEFAULT_CHUNKS as u64);
    let pieces = usize::try_from(pieces).unwrap_or(usize::MAX).min(MAX_CHUNKS);
    let delay = Duration::from_millis(header_number(headers, DELAY_HEADER)?.unwrap_or(0));
    let ignore_limit = header_number(headers, IGNORE_LIMIT_HEADER)?.is_some_and(|v| v > 0);
    Ok(Shape { pieces, delay, ignore_limit })
}

fn header_number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, Reject> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| Reject::bad_request(format!("{name} must be a non-negative integer")))
}

fn parse_json(body: &Bytes) -> Result<Value, Reject> {
    serde_json::from_slice(body).map_err(|e| Reject::bad_request(format!("invalid JSON body: {e}")))
}

/// Characters of text in a string or in an array of `{"type": "text", "text": ...}` blocks.
fn text_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(blocks) => {
            blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).map(|t| t.chars().count()).sum()
        }
        _ => 0,
    }
}

fn message_chars(request: &Value) -> usize {
    request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |ms| ms.iter().filter_map(|m| m.get("content")).map(text_chars).sum())
}

fn model(request: &Value) -> String {
    request.get("model").and_then(Value::as_str).unwrap_or("fake-model").to_owned()
}

/// `shape`'s pieces, cut so that their tokens stay within the request's output limit (unless the
/// shape ignores it).
fn limited(shape: &Shape, request: &Value) -> usize {
    let pieces = shape.pieces;
    if shape.ignore_limit {
        return pieces;
    }
    let limit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64))
        .or_else(|| request.pointer("/generationConfig/maxOutputTokens").and_then(Value::as_u64));
    limit.map_or(pieces, |l| pieces.min(usize::try_from(l / TOKENS_PER_PIECE).unwrap_or(usize::MAX)))
}

fn is_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// `POST /v1/chat/completions`.
fn openai(headers: &HeaderMap, body: &Bytes) -> Routed {
    let request = parse_json(body)?;
    let shape = shape(headers)?;
    let (pieces, delay) = (limited(&shape, &request), shape.delay);
    let model = model(&request);
    let prompt = prompt_tokens(message_chars(&request));
    let completion = pieces as u64 * TOKENS_PER_PIECE;
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });

    if !is_stream(&request) {
        let mut content = completion_text(pieces);
        if headers.contains_key(SAMPLE_HEADER) {
            let n = SAMPLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            content.push_str(&format!("sample{n}"));
        }
        let mut response = json!({
            "id": OPENAI_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        if headers.contains_key(NO_USAGE_HEADER) {
            response.as_object_mut().map(|o| o.remove("usage"));
        }
        return Ok(json_response(StatusCode::OK, &response));
    }

    let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    // Like OpenAI: with include_usage every chunk carries `"usage": null` except the last.
    let chunk = |delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": OPENAI_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        sse_data(&chunk)
    };
    let mut frames = Vec::with_capacity(pieces + 4);
    frames.push(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    frames.extend((0..pieces).map(|i| chunk(json!({"content": content_piece(i)}), Value::Null)));
    frames.push(chunk(json!({}), json!("stop")));
    if include_usage {
        frames.push(sse_data(&json!({
            "id": OPENAI_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": usage,
        })));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Ok(sse_response(frames, delay))
}

/// `POST /v1/messages`.
fn anthropic(headers: &HeaderMap, body: &Bytes) -> Routed {
    let request = parse_json(body)?;
    let shape = shape(headers)?;
    let (pieces, delay) = (limited(&shape, &request), shape.delay);
    let model = model(&request);
    let chars = message_chars(&request) + request.get("system").map_or(0, text_chars);
    let input = prompt_tokens(chars);
    let output = pieces as u64 * TOKENS_PER_PIECE;

    if !is_stream(&request) {
        let response = json!({
            "id": ANTHROPIC_ID,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": completion_text(pieces)}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output},
        });
        return Ok(json_response(StatusCode::OK, &response));
    }

    // Like Anthropic: message_start reports 1 output token; message_delta has the final count.
    let mut frames = Vec::with_capacity(pieces + 5);
    frames.push(sse_event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": ANTHROPIC_ID,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1},
            },
        }),
    ));
    frames.push(sse_event(
        "content_block_start",
        &json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }),
    ));
    frames.extend((0..pieces).map(|i| {
        sse_event(
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": content_piece(i)},
            }),
        )
    }));
    frames.push(sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    frames.push(sse_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": output},
        }),
    ));
    frames.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    Ok(sse_response(frames, delay))
}

/// `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (answered as SSE).
fn gemini(headers: &HeaderMap, path: &str, body: &Bytes) -> Routed {
    let request = parse_json(body)?;
    let shape = shape(headers)?;
    let (pieces, delay) = (limited(&shape, &request), shape.delay);
    let (model, method) = path["/v1beta/models/".len()..].split_once(':').unwrap_or(("fake-model", ""));
    let chars: usize = request
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("parts"))
        .map(text_chars)
        .sum();
    let prompt = prompt_tokens(chars);
    let usage = |pieces: usize| {
        let out = pieces as u64 * TOKENS_PER_PIECE;
        json!({"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out})
    };
    let candidate = |text: String, finish: Option<&str>| {
        let mut c = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = f.into();
        }
        c
    };
    if method != "streamGenerateContent" {
        let response = json!({
            "candidates": [candidate(completion_text(pieces), Some("STOP"))],
            "usageMetadata": usage(pieces),
            "modelVersion": model,
        });
        return Ok(json_response(StatusCode::OK, &response));
    }
    // Like Gemini: every chunk carries the usage so far.
    let frames = (0..pieces)
        .map(|i| {
            let finish = (i + 1 == pieces).then_some("STOP");
            sse_data(&json!({
                "candidates": [candidate(content_piece(i), finish)],
                "usageMetadata": usage(i + 1),
                "modelVersion": model,
            }))
        })
        .collect();
    Ok(sse_response(frames, delay))
}

/// Any method on `/echo` or `/echo/...`: describes the request as the upstream saw it.
fn echo(parts: &Parts, body: &Bytes, conn: &ConnInfo) -> Response<FrameBody> {
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let response = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex(digest.as_ref()),
        "http_version": format!("{:?}", parts.version),
        "sni": conn.sni,
        "alpn": conn.alpn.as_deref().map(String::from_utf8_lossy),
    });
    json_response(StatusCode::OK, &response)
}

/// `GET /bytes/{n}`.
fn bytes(headers: &HeaderMap, n: &str) -> Routed {
    let total: u64 = n.parse().map_err(|_| Reject::bad_request("/bytes/{n} needs a byte count"))?;
    let Shape { delay, .. } = shape(headers)?;
    let mut response = Response::new(FrameBody::pattern(total, delay));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(response)
}

/// `GET /status/{code}`.
fn status(code: &str) -> Routed {
    let status = code
        .parse()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| !s.is_informational())
        .ok_or_else(|| Reject::bad_request("/status/{code} needs a final status code (200-999)"))?;
    let mut response = Response::new(FrameBody::empty());
    *response.status_mut() = status;
    Ok(response)
}

fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn sse_event(event: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {value}\n\n"))
}

fn sse_response(frames: Vec<Bytes>, delay: Duration) -> Response<FrameBody> {
    let mut response = Response::new(FrameBody::stream(frames, delay));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<FrameBody> {
    let mut response = Response::new(FrameBody::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
