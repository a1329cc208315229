//! The stream guard: ends an LLM stream that would run past the output its call reserved.
//!
//! The meter phase reserves a call's input estimate plus its output limit, and sets that limit on
//! the request (the cap obligation). A stream can still run past it: the cap is off
//! (`proxy.budget.cap_output = false` on a request without an output limit holds what remains,
//! and the provider may ignore the field), or the provider ignores its own limit. The guard counts
//! the output of the stream the client receives, event by event, and when the next event would
//! take it past the reserved output it sends, instead of that event, the end the provider itself
//! sends for a response cut at its output limit — so an SDK sees a well-formed, finished stream:
//!
//! - OpenAI chat completions: a chunk with `finish_reason: "length"`, then `data: [DONE]`;
//! - Anthropic messages: `content_block_stop`, `message_delta` with `stop_reason: "max_tokens"`,
//!   `message_stop`;
//! - Gemini `streamGenerateContent` (SSE): a chunk with `finishReason: "MAX_TOKENS"`.
//!
//! The rest of the upstream stream is dropped (the upstream connection is closed, which ends the
//! generation), and the receipt's budget says `truncated`. What the upstream bills for a stream it
//! was not allowed to finish is not reported, so the call is charged its whole reservation.
//!
//! Output is counted from the text an event carries (content, reasoning, tool-call arguments) with
//! OpenAI's tokenizer for the model (`o200k_base` for models tiktoken does not know), or from
//! Gemini's cumulative `usageMetadata.candidatesTokenCount` where a chunk states it. Events are
//! whole SSE events (up to a blank line); a partial event waits for the rest, at most 1 MiB.

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

/// An event larger than this is passed on uncounted (it is not a token delta).
const MAX_EVENT: usize = 1 << 20;

/// Which stream format the guard reads and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI chat completions (and OpenAI-compatible servers).
    OpenAiChat,
    /// Anthropic messages.
    Anthropic,
    /// Gemini `streamGenerateContent?alt=sse`.
    Gemini,
}

impl Format {
    /// The format of a stream from `provider`'s `operation`, when the guard knows how to end it.
    pub fn of(provider: &str, operation: &str, path: &str) -> Option<Self> {
        match (provider, operation) {
            ("anthropic", _) => Some(Format::Anthropic),
            ("gemini", _) => Some(Format::Gemini),
            (_, "chat") if !path.contains("/responses") => Some(Format::OpenAiChat),
            _ => None,
        }
    }
}

/// The guard over one stream.
#[derive(Debug)]
pub struct Guard {
    format: Format,
    model: String,
    allowed: u64,
    counted: u64,
    partial: BytesMut,
    /// The stream's `id` and `created` (OpenAI), for the final chunk.
    id: Option<String>,
    created: Option<u64>,
    /// The last content block index seen (Anthropic), for `content_block_stop`.
    block: Option<u64>,
    block_open: bool,
    cut: bool,
}

impl Guard {
    /// A guard that lets `allowed` output tokens of `model` through.
    pub fn new(format: Format, model: &str, allowed: u64) -> Self {
        Self {
            format,
            model: model.to_owned(),
            allowed,
            counted: 0,
            partial: BytesMut::new(),
            id: None,
            created: None,
            block: None,
            block_open: false,
            cut: false,
        }
    }

    /// Whether the guard ended the stream.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Output tokens counted so far.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// Passes on the whole events of `chunk` (an empty chunk: the body ended, pass what is
    /// held); after a cut, the final event, and nothing more.
    pub fn pass(&mut self, chunk: Bytes) -> Bytes {
        if self.cut {
            return Bytes::new();
        }
        if chunk.is_empty() {
            return self.partial.split().freeze();
        }
        self.partial.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.partial) {
            let event = self.partial.split_to(end);
            if let Some(last) = self.take(&event) {
                out.extend_from_slice(&last);
                self.cut = true;
                self.partial.clear();
                return out.freeze();
            }
            out.extend_from_slice(&event);
        }
        if self.partial.len() > MAX_EVENT {
            out.extend_from_slice(&self.partial.split());
        }
        out.freeze()
    }

    /// Counts one whole event; the stream's end to send instead of it when it does not fit.
    fn take(&mut self, event: &[u8]) -> Option<Bytes> {
        let data = data_of(event)?;
        let value: Value = serde_json::from_slice(data).ok()?;
        let before = self.counted;
        match self.format {
            Format::OpenAiChat => {
                if self.id.is_none() {
                    self.id = value.get("id").and_then(Value::as_str).map(str::to_owned);
                    self.created = value.get("created").and_then(Value::as_u64);
                }
                for choice in value.get("choices").and_then(Value::as_array).into_iter().flatten() {
                    let delta = &choice["delta"];
                    for key in ["content", "reasoning_content", "refusal"] {
                        self.count(delta.get(key));
                    }
                    for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                        self.count(call.pointer("/function/arguments"));
                    }
                }
            }
            Format::Anthropic => match value.get("type").and_then(Value::as_str) {
                Some("content_block_start") => {
                    self.block = value.get("index").and_then(Value::as_u64);
                    self.block_open = true;
                }
                Some("content_block_stop") => self.block_open = false,
                Some("content_block_delta") => {
                    let delta = &value["delta"];
                    for key in ["text", "thinking", "partial_json"] {
                        self.count(delta.get(key));
                    }
                }
                _ => {}
            },
            Format::Gemini => {
                match value.pointer("/usageMetadata/candidatesTokenCount").and_then(Value::as_u64) {
                    // Cumulative and exact.
                    Some(stated) => self.counted = before.max(stated),
                    None => {
                        let candidates = value.get("candidates").and_then(Value::as_array);
                        for candidate in candidates.into_iter().flatten() {
                            let parts = candidate.pointer("/content/parts").and_then(Value::as_array);
                            for part in parts.into_iter().flatten() {
                                self.count(part.get("text"));
                            }
                        }
                    }
                }
            }
        }
        (self.counted > self.allowed).then(|| self.last())
    }

    fn count(&mut self, text: Option<&Value>) {
        if let Some(text) = text.and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.counted = self.counted.saturating_add(crate::estimate::text_tokens(&self.model, text).max(1));
        }
    }

    /// The end the provider sends for a response cut at its output limit.
    fn last(&self) -> Bytes {
        let mut out = String::new();
        match self.format {
            Format::OpenAiChat => {
                let chunk = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                });
                out.push_str(&format!("data: {chunk}\n\ndata: [DONE]\n\n"));
            }
            Format::Anthropic => {
                if let (true, Some(index)) = (self.block_open, self.block) {
                    let stop = json!({"type": "content_block_stop", "index": index});
                    out.push_str(&format!("event: content_block_stop\ndata: {stop}\n\n"));
                }
                let delta = json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                    "usage": {"output_tokens": self.allowed},
                });
                out.push_str(&format!("event: message_delta\ndata: {delta}\n\n"));
                out.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
            }
            Format::Gemini => {
                let chunk = json!({
                    "candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
                    "modelVersion": self.model,
                });
                out.push_str(&format!("data: {chunk}\r\n\r\n"));
            }
        }
        Bytes::from(out)
    }
}

/// Where the first whole SSE event of `buf` ends (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data:` payload of an SSE event (its lines joined), when it has one that is JSON.
fn data_of(event: &[u8]) -> Option<&[u8]> {
    // Token deltas carry one data line; take the first.
    let line = event.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(b"data:"))?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let trimmed = line.strip_prefix(b" ").unwrap_or(line);
    trimmed.first().is_some_and(|&b| b == b'{').then_some(trimmed)
}

#[cfg(test)]
mod tests;
