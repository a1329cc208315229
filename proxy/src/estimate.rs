//! Input-token estimates for budget reservations, read from the request body before it leaves.
//!
//! - **OpenAI models** (any model `tiktoken` knows, on any OpenAI-shaped API): the real
//!   tokenizer (`o200k_base` or `cl100k_base`, by model) with the chat framing of OpenAI's
//!   cookbook: 3 tokens per message, 1 per `name`, 3 to prime the reply; content strings and text
//!   parts counted exactly; an image part counted as 2,125 tokens (the most a high-detail image
//!   costs: 2048×768 after scaling, 12 tiles × 170 + 85); tool definitions and `response_format`
//!   counted as their JSON text (more than the format the model sees). Responses API `input`
//!   (a string or items) and `instructions`, and embeddings `input` the same way.
//! - **Every other provider or model**: the request body's length in bytes, plus 1,024 when it
//!   offers tools. Byte-level BPE tokens (Anthropic, Gemini's SentencePiece with byte fallback,
//!   Llama-family servers) each cover at least one byte, and the JSON around the text takes more
//!   bytes than the framing tokens the provider adds, so this bound is never below the real count;
//!   the 1,024 covers the system prompt providers add for tool use (Anthropic documents up to
//!   about 350 tokens). It over-reserves about 3–4× for English text; settlement releases the
//!   difference.
//!
//! The tokenizers load on first use (about 0.4 s; [`warm`] loads them at start when budgets are
//! possible) into a compact form that only counts ([`bpe`]: tables of about 6 MiB for both,
//! against about 58 MiB for `tiktoken`'s own). Counts of texts of 32 bytes or more are
//! remembered (65,536 at most, by a 64-bit hash of the text): an agent resends its conversation
//! on every call, so only new messages are tokenized.

use std::sync::LazyLock;

use serde_json::Value;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use self::bpe::{Bpe, Vocabulary};

mod bpe;

/// Framing tokens per chat message.
const PER_MESSAGE: u64 = 3;
/// Extra tokens for a message's `name`.
const PER_NAME: u64 = 1;
/// Tokens that prime the reply.
const REPLY_PRIMING: u64 = 3;
/// The most one image input costs (high detail, 2048×768 after scaling: 12 tiles).
const IMAGE_MAX: u64 = 12 * 170 + 85;
/// Added to the byte bound of a request that offers tools.
const TOOLS_MARGIN: u64 = 1024;

static O200K: LazyLock<Option<Bpe>> = LazyLock::new(|| load(Vocabulary::O200kBase));
static CL100K: LazyLock<Option<Bpe>> = LazyLock::new(|| load(Vocabulary::Cl100kBase));

fn load(vocabulary: Vocabulary) -> Option<Bpe> {
    let bpe = Bpe::load(vocabulary);
    if bpe.is_none() {
        tracing::error!(
            ?vocabulary,
            "cannot load the OpenAI tokenizer; budgets reserve the byte bound for its models instead"
        );
    }
    bpe
}

/// Run once the tokenizers are loaded: the binary's allocator hands back the memory `tiktoken`'s
/// tables took while they were read (the library cannot: it has no unsafe code).
static AFTER_WARM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what [`warm`] runs after loading (the first call wins).
pub fn after_warm(hook: fn()) {
    let _ = AFTER_WARM.set(hook);
}

/// Loads the OpenAI tokenizers now (off the call path), so no call pays for it.
pub fn warm() {
    let _ = O200K.as_ref();
    let _ = CL100K.as_ref();
    if let Some(hook) = AFTER_WARM.get() {
        hook();
    }
}

/// The tokenizer of an OpenAI `model`, if tiktoken knows it.
fn bpe(provider: &str, model: &str) -> Option<&'static Bpe> {
    if provider != "openai" {
        return None;
    }
    match get_tokenizer(model)? {
        Tokenizer::O200kBase | Tokenizer::O200kHarmony => O200K.as_ref(),
        Tokenizer::Cl100kBase => CL100K.as_ref(),
        _ => None,
    }
}

/// Tokens of output `text` from `model`: its tokenizer when tiktoken knows the model, else
/// `o200k_base` (an approximation for other providers' tokenizers); its bytes if neither loads.
pub fn text_tokens(model: &str, text: &str) -> u64 {
    match bpe("openai", model).or(O200K.as_ref()) {
        Some(bpe) => count(bpe, text),
        None => text.len() as u64,
    }
}

/// How an estimate was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// OpenAI's tokenizer.
    Tokenizer,
    /// The conservative byte bound.
    Bound,
}

/// Input tokens of an LLM request `body` to `provider`'s `model`, and how they were counted.
pub fn input_tokens(provider: &str, model: &str, body: &[u8]) -> (u64, Method) {
    if let Some(bpe) = bpe(provider, model)
        && let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body)
    {
        return (openai(bpe, &request), Method::Tokenizer);
    }
    (bound(body), Method::Bound)
}

/// The conservative bound: body bytes, plus a margin when tools are offered.
pub fn bound(body: &[u8]) -> u64 {
    let tools = memchr::memmem::find(body, b"\"tools\"").is_some()
        || memchr::memmem::find(body, b"\"functionDeclarations\"").is_some();
    body.len() as u64 + if tools { TOOLS_MARGIN } else { 0 }
}

/// Texts shorter than this are tokenized every time (cheaper than a lookup).
const CACHE_MIN_BYTES: usize = 32;
/// Counts kept at most; the cache is cleared when it is full.
const CACHE_MAX: usize = 1 << 16;

/// Roles both tokenizers (`o200k_base`, `cl100k_base`) encode as one token. Every message names
/// one, and tokenizing a short text costs more than looking up a long remembered one.
const ONE_TOKEN_ROLES: [&str; 6] = ["system", "user", "assistant", "tool", "developer", "function"];

/// Token counts of texts seen before, by tokenizer and the text's 64-bit hash: an agent sends its
/// whole conversation on every call, so all but the newest messages were counted already.
static COUNTS: LazyLock<std::sync::Mutex<std::collections::HashMap<(usize, u64), u64>>> =
    LazyLock::new(Default::default);

fn count(bpe: &Bpe, text: &str) -> u64 {
    if text.len() < CACHE_MIN_BYTES {
        return bpe.count(text) as u64;
    }
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let key = (std::ptr::from_ref(bpe) as usize, hasher.finish());
    let cache = || COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = cache().get(&key) {
        return *n;
    }
    let n = bpe.count(text) as u64;
    let mut cache = cache();
    if cache.len() >= CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, n);
    n
}

/// Tokens of a JSON value given as structure (tool definitions, schemas): its compact text.
fn json_text(bpe: &Bpe, value: &Value) -> u64 {
    count(bpe, &value.to_string())
}

fn openai(bpe: &Bpe, request: &serde_json::Map<String, Value>) -> u64 {
    let mut total = 0;
    if let Some(Value::Array(messages)) = request.get("messages") {
        total += messages.iter().map(|m| message(bpe, m)).sum::<u64>() + REPLY_PRIMING;
    }
    match request.get("input") {
        Some(Value::String(text)) => total += count(bpe, text) + PER_MESSAGE + REPLY_PRIMING,
        Some(Value::Array(items)) => {
            // Responses API items, or an embeddings batch of strings (or token arrays).
            for item in items {
                total += match item {
                    Value::String(text) => count(bpe, text),
                    Value::Array(tokens) => tokens.len() as u64,
                    other => message(bpe, other),
                };
            }
            if items.iter().any(Value::is_object) {
                total += REPLY_PRIMING;
            }
        }
        _ => {}
    }
    if let Some(Value::String(text)) = request.get("prompt") {
        total += count(bpe, text);
    }
    if let Some(Value::String(text)) = request.get("instructions") {
        total += count(bpe, text) + PER_MESSAGE;
    }
    for structured in ["tools", "functions", "response_format", "text"] {
        if let Some(value) = request.get(structured).filter(|v| !v.is_null()) {
            total += json_text(bpe, value);
        }
    }
    total
}

/// One chat message (or Responses API item): framing, role, content, name and tool calls.
fn message(bpe: &Bpe, m: &Value) -> u64 {
    let Value::Object(m) = m else { return 0 };
    let mut n = PER_MESSAGE;
    if let Some(Value::String(role)) = m.get("role") {
        n += if ONE_TOKEN_ROLES.contains(&role.as_str()) { 1 } else { count(bpe, role) };
    }
    if let Some(content) = m.get("content") {
        n += content_tokens(bpe, content);
    }
    if let Some(Value::String(name)) = m.get("name") {
        n += count(bpe, name) + PER_NAME;
    }
    for key in ["refusal", "output", "arguments"] {
        if let Some(Value::String(text)) = m.get(key) {
            n += count(bpe, text);
        }
    }
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for call in calls {
            if let Some(Value::Object(f)) = call.get("function") {
                for key in ["name", "arguments"] {
                    if let Some(Value::String(text)) = f.get(key) {
                        n += count(bpe, text);
                    }
                }
                n += 1;
            }
        }
    }
    if let Some(Value::Object(f)) = m.get("function_call") {
        for key in ["name", "arguments"] {
            if let Some(Value::String(text)) = f.get(key) {
                n += count(bpe, text);
            }
        }
        n += 1;
    }
    n
}

/// A message's content: a string, or parts (text counted, images at their maximum, anything
/// else as its JSON text).
fn content_tokens(bpe: &Bpe, content: &Value) -> u64 {
    match content {
        Value::String(text) => count(bpe, text),
        Value::Array(parts) => parts
            .iter()
            .map(|part| {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
                match (kind, part.get("text")) {
                    (_, Some(Value::String(text))) => count(bpe, text),
                    ("image_url" | "input_image" | "image", _) => IMAGE_MAX,
                    _ => json_text(bpe, part),
                }
            })
            .sum(),
        Value::Null => 0,
        other => json_text(bpe, other),
    }
}

#[cfg(test)]
mod tests;
