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

use bytes::{Bytes, BytesMut};
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

/// What a response says about itself besides usage, for its span: read only when the call is
/// traced ([`UsageReader::with_reply`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The response id (`id` or Gemini's `responseId`, the first one at depth 1 or 2).
    pub id: Option<String>,
    /// The model that answered (`model` or Gemini's `modelVersion`, the first one).
    pub model: Option<String>,
    /// Every distinct finish reason (`finish_reason`, `stop_reason`, `finishReason`), in order.
    pub finish_reasons: Vec<String>,
}

/// The longest reply value kept; a longer one is not kept.
const MAX_VALUE: usize = 256;

/// Which [`Reply`] field a string value fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Model,
    Finish,
}

impl Reply {
    fn take(&mut self, field: Field, value: &[u8]) {
        let Ok(v) = std::str::from_utf8(value) else { return };
        match field {
            Field::Id if self.id.is_none() => self.id = Some(v.to_owned()),
            Field::Model if self.model.is_none() => self.model = Some(v.to_owned()),
            Field::Finish if !v.is_empty() && !self.finish_reasons.iter().any(|r| r == v) => {
                self.finish_reasons.push(v.to_owned());
            }
            _ => {}
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
    /// Reply fields are read (traced calls only).
    reply_on: bool,
    /// The key just read names a reply field; its string value is kept.
    pending: Option<Field>,
    /// The reply value being read, and whether it outgrew [`MAX_VALUE`].
    value: Option<(Field, Vec<u8>, bool)>,
    reply: Reply,
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
            reply_on: false,
            pending: None,
            value: None,
            reply: Reply::default(),
        }
    }

    /// Also reads the response's id, model and finish reasons ([`Reply`]).
    pub fn with_reply(mut self) -> Self {
        self.reply_on = true;
        self
    }

    /// The reply fields read; `None` unless [`Self::with_reply`] asked for them.
    pub fn reply(&self) -> Option<Reply> {
        self.reply_on.then(|| self.reply.clone())
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

    /// Whether this reader reads an SSE stream.
    pub fn is_sse(&self) -> bool {
        self.sse
    }

    /// Takes in the next bytes of the body.
    pub fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        // Where the next try to pass over a whole SSE event may start (one try per event).
        let mut retry_at = 0;
        while i < data.len() {
            if self.sse && i >= retry_at && self.previous == b'\n' && self.at_rest() {
                match self.event_to_pass(&data[i..]) {
                    Ok(len) => {
                        // What reading it byte by byte leaves after its blank line.
                        self.depth = 0;
                        i += len;
                        continue;
                    }
                    Err(checked) => retry_at = i + checked,
                }
            }
            // Most bytes of an LLM response are inside strings (ids, content): skip to the next
            // byte that can end one, keeping the first few for the key comparison.
            if self.in_string && !self.escaped && self.capture.is_none() {
                let rest = &data[i..];
                let n = memchr::memchr3(b'"', b'\\', b'\n', rest).unwrap_or(rest.len());
                if n > 0 {
                    let take = n.min(MAX_KEY - self.key_len);
                    self.key[self.key_len..self.key_len + take].copy_from_slice(&rest[..take]);
                    self.key_len += take;
                    self.key_long |= n > take;
                    if let Some((_, v, long)) = &mut self.value {
                        let room = MAX_VALUE.saturating_sub(v.len());
                        v.extend_from_slice(&rest[..n.min(room)]);
                        *long |= n > room;
                    }
                    self.previous = rest[n - 1];
                    i += n;
                    continue;
                }
            }
            self.byte(data[i]);
            i += 1;
        }
    }

    /// What was read; empty when the body stated no usage.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Between values: nothing open that a byte to come could complete.
    fn at_rest(&self) -> bool {
        !self.in_string
            && !self.escaped
            && self.after == After::Nothing
            && self.capture.is_none()
            && self.value.is_none()
            && self.pending.is_none()
    }

    /// The length of the SSE event `rest` starts with, through its blank line, when reading it
    /// byte by byte would change nothing but what that blank line resets: most events of a
    /// stream carry no usage object and no reply field still wanted. Otherwise `Err` with how
    /// far there is no point trying again.
    ///
    /// Exact, not a guess: with no backslash in the event, a key is the bytes between its
    /// quotes, and a usage object (or a reply string) can only begin where the raw bytes are
    /// `"key"`, blanks, `:`, blanks and `{` (or `"`). An event with none of those is passed.
    fn event_to_pass(&self, rest: &[u8]) -> Result<usize, usize> {
        let Some(end) = memchr::memmem::find(rest, b"\n\n").map(|at| at + 2) else { return Err(rest.len()) };
        let event = &rest[..end];
        if memchr::memchr(b'\\', event).is_some() {
            return Err(end);
        }
        // Every occurrence, overlapping ones too: in `"a"id":` the key's opening quote closes the
        // string before it, and a search that resumed past a whole match would miss it.
        let occurrences = |key: &'static [u8]| {
            let mut from = 0;
            std::iter::from_fn(move || {
                let at = from + memchr::memmem::find(event.get(from..)?, key)?;
                from = at + 1;
                Some(at)
            })
        };
        let opens = |key: &'static [u8], opener: u8| {
            occurrences(key).any(|at| {
                let mut j = at + key.len();
                let blanks = |j: &mut usize| {
                    while matches!(event.get(*j), Some(b' ' | b'\t' | b'\r')) {
                        *j += 1;
                    }
                };
                blanks(&mut j);
                if event.get(j) != Some(&b':') {
                    return false;
                }
                j += 1;
                blanks(&mut j);
                event.get(j) == Some(&opener)
            })
        };
        let mut wanted = opens(b"\"usage\"", b'{') || opens(b"\"usageMetadata\"", b'{');
        if self.reply_on && !wanted {
            let id = self.reply.id.is_none() && (opens(b"\"id\"", b'"') || opens(b"\"responseId\"", b'"'));
            let model = self.reply.model.is_none() && (opens(b"\"model\"", b'"') || opens(b"\"modelVersion\"", b'"'));
            let finish = opens(b"\"finish_reason\"", b'"')
                || opens(b"\"stop_reason\"", b'"')
                || opens(b"\"finishReason\"", b'"');
            wanted = id || model || finish;
        }
        if wanted { Err(end) } else { Ok(end) }
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
            if b == b'"' && !self.escaped {
                self.in_string = false;
                self.string_ended();
                self.previous = b;
                return;
            }
            if let Some((_, v, long)) = &mut self.value {
                if v.len() < MAX_VALUE {
                    v.push(b);
                } else {
                    *long = true;
                }
            }
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if self.key_len < MAX_KEY {
                self.key[self.key_len] = b;
                self.key_len += 1;
            } else {
                self.key_long = true;
            }
            if b == b'\n' {
                // No JSON string holds a raw newline: the document was malformed.
                self.in_string = false;
                self.value = None;
            }
            self.previous = b;
            return;
        }
        match b {
            b'"' => {
                if self.after == After::Value
                    && let Some(field) = self.pending.take()
                {
                    self.value = Some((field, Vec::new(), false));
                }
                self.in_string = true;
                self.key_len = 0;
                self.key_long = false;
                self.string_depth = self.depth;
                self.after = After::Nothing;
            }
            b':' if self.after == After::Colon => self.after = After::Value,
            b'{' | b'[' => {
                if b == b'{' && self.after == After::Value && self.capture.is_none() && self.pending.is_none() {
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
                    self.value = None;
                }
                self.after = After::Nothing;
            }
            _ => self.after = After::Nothing,
        }
        if self.after == After::Nothing {
            self.pending = None;
        }
        if b != b'\r' {
            self.previous = b;
        }
    }

    fn string_ended(&mut self) {
        if let Some((field, value, long)) = self.value.take() {
            // A value, not a key.
            self.after = After::Nothing;
            if !long {
                if value.contains(&b'\\') {
                    let mut quoted = Vec::with_capacity(value.len() + 2);
                    quoted.push(b'"');
                    quoted.extend_from_slice(&value);
                    quoted.push(b'"');
                    if let Ok(decoded) = serde_json::from_slice::<String>(&quoted) {
                        self.reply.take(field, decoded.as_bytes());
                    }
                } else {
                    self.reply.take(field, &value);
                }
            }
            return;
        }
        let key = &self.key[..self.key_len];
        let usage = !self.key_long && (key == b"usage" || key == b"usageMetadata");
        self.after = if usage && (1..=2).contains(&self.string_depth) { After::Colon } else { After::Nothing };
        if self.reply_on && !usage && !self.key_long {
            let field = match key {
                // The first id and model are kept: later ones (every chunk of a stream repeats
                // them) are not even copied.
                b"id" | b"responseId" if self.reply.id.is_none() && (1..=2).contains(&self.string_depth) => {
                    Some(Field::Id)
                }
                b"model" | b"modelVersion" if self.reply.model.is_none() && (1..=2).contains(&self.string_depth) => {
                    Some(Field::Model)
                }
                b"finish_reason" | b"stop_reason" | b"finishReason" if (1..=4).contains(&self.string_depth) => {
                    Some(Field::Finish)
                }
                _ => None,
            };
            if field.is_some() {
                self.after = After::Colon;
                self.pending = field;
            }
        }
    }
}

/// The request body with `"stream_options":{"include_usage":true}` added as its last member, for an
/// OpenAI stream request that has no `stream_options`; `None` when `body` is not a JSON object.
/// Added as text, so every byte the client sent is sent as it was.
pub fn inject(body: &[u8]) -> Option<Bytes> {
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' || body[end] != b'}' || body[start + 1..end].iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    const MEMBER: &[u8] = br#","stream_options":{"include_usage":true}"#;
    let mut out = BytesMut::with_capacity(body.len() + MEMBER.len());
    out.extend_from_slice(&body[..end]);
    out.extend_from_slice(MEMBER);
    out.extend_from_slice(&body[end..]);
    Some(out.freeze())
}

/// Undoes [`inject`] on the stream the client receives: the usage chunk the option added is
/// dropped (with its blank line), and the `"usage":null` member it added to every other chunk is
/// cut out, so the client gets exactly the bytes it would have without the option. Works on whole
/// lines (OpenAI sends one `data:` line per event); a partial line waits for the rest, and what is
/// held when the body ends is passed on as it is (called with an empty chunk, see
/// [`crate::body::Rewrite`]).
#[derive(Debug, Default)]
pub struct StripUsage {
    partial: BytesMut,
    /// A usage chunk was dropped; its terminating blank line goes too.
    drop_blank: bool,
}

impl StripUsage {
    /// Rewrites the next chunk; an empty chunk means the body ended.
    pub fn rewrite(&mut self, chunk: Bytes) -> Bytes {
        if chunk.is_empty() {
            return self.partial.split().freeze();
        }
        if self.partial.is_empty() && chunk.ends_with(b"\n") {
            return self.lines(&chunk);
        }
        self.partial.extend_from_slice(&chunk);
        let Some(last) = memchr::memrchr(b'\n', &self.partial) else { return Bytes::new() };
        let complete = self.partial.split_to(last + 1);
        self.lines(&complete)
    }

    fn lines(&mut self, lines: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(lines.len());
        for line in lines.split_inclusive(|&b| b == b'\n') {
            if std::mem::take(&mut self.drop_blank) && (line == b"\n" || line == b"\r\n") {
                continue;
            }
            let Some(payload) = line.strip_prefix(b"data:") else {
                out.extend_from_slice(line);
                continue;
            };
            let offset = line.len() - payload.len();
            match member(payload, b"usage") {
                Some(m) if payload[m.value.clone()] == *b"null" => {
                    let cut = m.cut;
                    out.extend_from_slice(&line[..offset + cut.start]);
                    out.extend_from_slice(&line[offset + cut.end..]);
                }
                Some(m)
                    if payload[m.value.start] == b'{'
                        && member(payload, b"choices").is_some_and(|c| payload[c.value] == *b"[]") =>
                {
                    self.drop_blank = true;
                }
                _ => out.extend_from_slice(line),
            }
        }
        out.freeze()
    }
}

/// Where a top-level member of a JSON object is: its value, and the bytes to cut to remove it
/// (with the comma that separates it from its neighbour).
struct Member {
    value: std::ops::Range<usize>,
    cut: std::ops::Range<usize>,
}

/// Finds the top-level member `key` of the JSON object in `text` (which may be surrounded by
/// whitespace). String- and escape-aware; `None` when absent or when `text` is not an object.
fn member(text: &[u8], key: &[u8]) -> Option<Member> {
    let mut depth = 0u32;
    let mut i = 0;
    // The end of the previous top-level value (after its comma's position is known).
    let mut previous_comma: Option<usize> = None;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let end = string_end(text, i)?;
                if depth == 1 && &text[i + 1..end] == key {
                    let mut j = end + 1;
                    while j < text.len() && text[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if text.get(j) != Some(&b':') {
                        i = end + 1;
                        continue;
                    }
                    j += 1;
                    while j < text.len() && text[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    let value_end = value_end(text, j)?;
                    let cut = match previous_comma {
                        Some(comma) => comma..value_end,
                        None => {
                            // The first member: cut it and the comma after it.
                            let mut k = value_end;
                            while k < text.len() && text[k].is_ascii_whitespace() {
                                k += 1;
                            }
                            if text.get(k) == Some(&b',') { i..k + 1 } else { i..value_end }
                        }
                    };
                    return Some(Member { value: j..value_end, cut });
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 1 => previous_comma = Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote that closes the string opening at `start`.
fn string_end(text: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The end (exclusive) of the JSON value starting at `start`.
fn value_end(text: &[u8], start: usize) -> Option<usize> {
    match *text.get(start)? {
        b'"' => string_end(text, start).map(|e| e + 1),
        b'{' | b'[' => {
            let mut depth = 0u32;
            let mut i = start;
            while i < text.len() {
                match text[i] {
                    b'"' => {
                        i = string_end(text, i)?;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = text[start..].iter().position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace());
            Some(start + len.unwrap_or(text.len() - start))
        }
    }
}

#[cfg(test)]
mod tests;
