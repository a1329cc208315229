//! Token usage, read from an LLM response as it streams through the tap — never buffered.
//!
//! One reader serves every provider shape, JSON and SSE alike, because each puts its figures in a
//! small object under a known key: `usage` (OpenAI chat completions, embeddings and the Responses
//! API, whose `response.completed` event nests it in `response`; Anthropic messages, whose
//! `message_start` nests it in `message` and whose `message_delta` events repeat it cumulatively;
//! any OpenAI-compatible server) or `usageMetadata` (Gemini `generateContent` and
//! `streamGenerateContent`, JSON array or SSE, cumulative per chunk). The reader tracks JSON
//! nesting (string- and escape-aware) byte by byte, and when one of those keys opens an object at
//! depth 1 or 2 — a top-level member, or one level down (`message`, `response`, or a chunk of a
//! JSON array) — it keeps that object (at most 8 KiB) and parses it when it closes. Deeper
//! matches are ignored, so a tool's arguments or a message's content that happen to hold a
//! `usage` key are never read as the call's usage. In SSE a blank line ends an event and resets
//! the nesting, so one malformed event cannot shift the next.
//!
//! Figures, the same for every provider: `input_tokens` counts every input token, cached or not
//! (Anthropic reports cache reads and writes apart from `input_tokens`; they are added in);
//! `cached_input_tokens` is the part served from the provider's prompt cache; `output_tokens`
//! counts every billed output token, reasoning included (Gemini reports `thoughtsTokenCount`
//! apart; it is added in); `reasoning_tokens` is that part. A later object replaces each figure it
//! states, which is how cumulative streams end with their final counts.

use serde_json::{Map, Value};

/// The most bytes one usage object may take; a larger one is not usage and is dropped.
const MAX_CAPTURE: usize = 8 * 1024;

/// The longest key the reader compares (`usageMetadata`).
const MAX_KEY: usize = 13;

/// Token counts read from a response; `None` where the provider stated nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every input token, cached included.
    pub input_tokens: Option<u64>,
    /// Input tokens served from the prompt cache.
    pub cached_input_tokens: Option<u64>,
    /// Every billed output token, reasoning included.
    pub output_tokens: Option<u64>,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: Option<u64>,
}

impl Counts {
    /// Whether any figure was read.
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    /// Input plus output tokens.
    pub fn total(&self) -> u64 {
        self.input_tokens.unwrap_or(0).saturating_add(self.output_tokens.unwrap_or(0))
    }

    fn update(&mut self, object: &Map<String, Value>) {
        let n = |key: &str| object.get(key).and_then(Value::as_u64);
        let nested = |outer: &str, key: &str| object.get(outer).and_then(|o| o.get(key)).and_then(Value::as_u64);
        // OpenAI chat completions, embeddings and compatibles.
        if let Some(v) = n("prompt_tokens") {
            self.input_tokens = Some(v);
        }
        if let Some(v) = n("completion_tokens") {
            self.output_tokens = Some(v);
        }
        if let Some(v) = nested("prompt_tokens_details", "cached_tokens") {
            self.cached_input_tokens = Some(v);
        }
        if let Some(v) = nested("completion_tokens_details", "reasoning_tokens") {
            self.reasoning_tokens = Some(v);
        }
        // OpenAI Responses API and Anthropic messages.
        if let Some(v) = n("input_tokens") {
            let read = n("cache_read_input_tokens");
            let written = n("cache_creation_input_tokens");
            self.input_tokens = Some(v.saturating_add(read.unwrap_or(0)).saturating_add(written.unwrap_or(0)));
            if let Some(read) = read {
                self.cached_input_tokens = Some(read);
            }
        }
        if let Some(v) = n("output_tokens") {
            self.output_tokens = Some(v);
        }
        if let Some(v) = nested("input_tokens_details", "cached_tokens") {
            self.cached_input_tokens = Some(v);
        }
        if let Some(v) = nested("output_tokens_details", "reasoning_tokens") {
            self.reasoning_tokens = Some(v);
        }
        // Gemini.
        if let Some(v) = n("promptTokenCount") {
            self.input_tokens = Some(v);
        }
        if n("candidatesTokenCount").is_some() || n("thoughtsTokenCount").is_some() {
            let thoughts = n("thoughtsTokenCount");
            self.output_tokens = Some(n("candidatesTokenCount").unwrap_or(0).saturating_add(thoughts.unwrap_or(0)));
            if let Some(t) = thoughts {
                self.reasoning_tokens = Some(t);
            }
        }
        if let Some(v) = n("cachedContentTokenCount") {
            self.cached_input_tokens = Some(v);
        }
    }
}

/// What the reader expects after a usage key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    Colon,
    Value,
}

/// Reads usage from a response body fed to it chunk by chunk (see the module docs).
#[derive(Debug)]
pub struct UsageReader {
    sse: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The current string's first bytes (enough to compare with the keys), and whether it is
    /// longer than that.
    key: [u8; MAX_KEY],
    key_len: usize,
    key_long: bool,
    /// The depth the current string started at.
    string_depth: u32,
    after: After,
    /// The usage object being read, and the depth it opened at.
    capture: Option<(Vec<u8>, u32)>,
    previous: u8,
    counts: Counts,
}

impl UsageReader {
    /// A reader for a JSON body (`sse = false`) or an SSE stream (`sse = true`).
    pub fn new(sse: bool) -> Self {
        Self {
            sse,
            depth: 0,
            in_string: false,
            escaped: false,
            key: [0; MAX_KEY],
            key_len: 0,
            key_long: false,
            string_depth: 0,
            after: After::Nothing,
            capture: None,
            previous: 0,
            counts: Counts::default(),
        }
    }

    /// The reader for a response with this `Content-Type`, when it is JSON or SSE.
    pub fn for_content_type(content_type: Option<&str>) -> Option<Self> {
        let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        if essence == "text/event-stream" {
            Some(Self::new(true))
        } else if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
            Some(Self::new(false))
        } else {
            None
        }
    }

    /// Takes in the next bytes of the body.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            self.byte(b);
        }
    }

    /// What was read; empty when the body stated no usage.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn byte(&mut self, b: u8) {
        if let Some((buf, _)) = &mut self.capture {
            if buf.len() < MAX_CAPTURE {
                buf.push(b);
            } else {
                self.capture = None;
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.string_ended();
            } else if self.key_len < MAX_KEY {
                self.key[self.key_len] = b;
                self.key_len += 1;
            } else {
                self.key_long = true;
            }
            if b == b'\n' {
                // No JSON string holds a raw newline: the document was malformed.
                self.in_string = false;
            }
            self.previous = b;
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.key_len = 0;
                self.key_long = false;
                self.string_depth = self.depth;
                self.after = After::Nothing;
            }
            b':' if self.after == After::Colon => self.after = After::Value,
            b'{' | b'[' => {
                if b == b'{' && self.after == After::Value && self.capture.is_none() {
                    self.capture = Some((vec![b'{'], self.depth));
                }
                self.after = After::Nothing;
                self.depth = self.depth.saturating_add(1);
            }
            b'}' | b']' => {
                self.after = After::Nothing;
                self.depth = self.depth.saturating_sub(1);
                if let Some((_, opened)) = &self.capture
                    && *opened == self.depth
                    && let Some((buf, _)) = self.capture.take()
                    && let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&buf)
                {
                    self.counts.update(&object);
                }
            }
            b' ' | b'\t' | b'\r' => {}
            b'\n' => {
                if self.sse && self.previous == b'\n' {
                    self.depth = 0;
                    self.capture = None;
                }
                self.after = After::Nothing;
            }
            _ => self.after = After::Nothing,
        }
        if b != b'\r' {
            self.previous = b;
        }
    }

    fn string_ended(&mut self) {
        let key = &self.key[..self.key_len];
        let usage = !self.key_long && (key == b"usage" || key == b"usageMetadata");
        self.after = if usage && (1..=2).contains(&self.string_depth) { After::Colon } else { After::Nothing };
    }
}

#[cfg(test)]
mod tests;
