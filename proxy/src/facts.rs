//! Request facts: the LLM and MCP fields of a request body, read once per call.
//!
//! One step of the pipeline ([`read`]) parses a JSON request body into borrowed fields and keeps
//! what the phases need — the model for the allow-list and the capability check, the LLM call
//! (provider, operation, model, output-token limit, stream) for policy and budgets, the MCP
//! method and tool for policy and tools. Every phase reads them from [`crate::context::Call`];
//! none parses the body again. A body that is not JSON, or JSON that is neither a known LLM API
//! request nor JSON-RPC, has `llm` and `mcp` unset.
//!
//! Recognition: an LLM call is a body with a `model` and `messages` or `input` sent to a known
//! provider host or to an OpenAI- or Anthropic-shaped API path elsewhere, or a Gemini
//! `models/{model}:generateContent` / `:streamGenerateContent` path (whose model and stream are in
//! the path). An MCP message is JSON-RPC 2.0 with a `method`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// What the request body says, as far as the phases care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// The top-level `model` of any JSON body (LLM call or not): what the model allow-list and
    /// the capability check compare.
    pub model: Option<String>,
    /// The LLM API call, when recognised.
    pub llm: Option<LlmCall>,
    /// The MCP JSON-RPC message, when recognised.
    pub mcp: Option<McpCall>,
}

/// An LLM API call recognised in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmCall {
    /// `openai`, `anthropic`, `gemini`, ….
    pub provider: &'static str,
    /// The GenAI operation: `chat`, `text_completion`, `embeddings` or `generate_content`.
    pub operation: &'static str,
    /// Model as named in the request.
    pub model: String,
    /// Requested output-token limit (`max_completion_tokens`, `max_tokens`, `max_output_tokens`
    /// or Gemini's `generationConfig.maxOutputTokens`, in that order).
    pub max_tokens: Option<u64>,
    /// Whether a stream was requested.
    pub stream: bool,
    /// OpenAI's `stream_options`: `None` when the request has none, else its `include_usage`
    /// (false when unset).
    pub stream_usage: Option<bool>,
    /// Number of messages (Gemini: `contents`).
    pub messages: u64,
    /// Names of the tools offered to the model.
    pub tools: Vec<String>,
}

/// An MCP JSON-RPC message recognised in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCall {
    /// JSON-RPC method, e.g. `tools/call`.
    pub method: String,
    /// Tool name of a `tools/call`.
    pub tool: Option<String>,
    /// Top-level argument names of a `tools/call` (never their values).
    pub argument_keys: Vec<String>,
}

impl RequestFacts {
    /// The tool a `tools/call` names.
    pub fn tool_call(&self) -> Option<&str> {
        self.mcp.as_ref().filter(|m| m.method == "tools/call").and_then(|m| m.tool.as_deref())
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    #[serde(rename = "generationConfig")]
    generation_config: Option<GenerationConfig>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    messages: Option<Vec<IgnoredAny>>,
    contents: Option<Vec<IgnoredAny>>,
    input: Option<IgnoredAny>,
    tools: Option<Vec<Tool<'a>>>,
    jsonrpc: Option<&'a str>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct GenerationConfig {
    #[serde(rename = "maxOutputTokens")]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    arguments: Option<BTreeMap<String, IgnoredAny>>,
}

/// The provider a host or API path belongs to.
pub fn provider(host: &str, path: &str) -> Option<&'static str> {
    let by_host = [
        ("api.openai.com", "openai"),
        ("api.anthropic.com", "anthropic"),
        ("generativelanguage.googleapis.com", "gemini"),
        ("api.mistral.ai", "mistral"),
        ("api.groq.com", "groq"),
        ("api.together.xyz", "together"),
        ("openrouter.ai", "openrouter"),
        ("api.cohere.com", "cohere"),
        ("api.cohere.ai", "cohere"),
    ];
    if let Some((_, p)) = by_host.iter().find(|(h, _)| *h == host) {
        return Some(p);
    }
    // OpenAI- and Anthropic-compatible servers elsewhere are recognised by their API paths.
    if path.ends_with("/chat/completions")
        || path.ends_with("/completions")
        || path.ends_with("/responses")
        || path.ends_with("/embeddings")
    {
        Some("openai")
    } else if path.ends_with("/messages") {
        Some("anthropic")
    } else {
        None
    }
}

/// The GenAI operation an API path names.
fn operation(path: &str) -> &'static str {
    if path.ends_with("/embeddings") || path.ends_with(":embedContent") || path.ends_with(":batchEmbedContents") {
        "embeddings"
    } else if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
        "generate_content"
    } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
        "text_completion"
    } else {
        "chat"
    }
}

/// Gemini's `…/models/{model}:{generateContent|streamGenerateContent}`: the model and whether it
/// streams.
fn gemini_path(path: &str) -> Option<(&str, bool)> {
    let (head, method) = path.rsplit_once(':')?;
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    let (_, model) = head.rsplit_once("/models/")?;
    (!model.is_empty() && !model.contains('/')).then_some((model, stream))
}

/// Reads the facts of a request to `host` at `path_and_query` whose body is `body`; `json` says
/// whether the request declares a JSON body. Never fails: what cannot be read stays unset.
pub fn read(host: &str, path_and_query: &str, json: bool, body: &Bytes) -> RequestFacts {
    if !json || body.is_empty() {
        return RequestFacts::default();
    }
    let Ok(b) = serde_json::from_slice::<Body<'_>>(body) else { return RequestFacts::default() };
    let path = path_and_query.split_once('?').map_or(path_and_query, |(p, _)| p);
    let model = b.model.as_deref().map(str::to_owned);
    if b.jsonrpc == Some("2.0")
        && let Some(method) = &b.method
    {
        let call = method == "tools/call";
        let params = b.params.filter(|_| call);
        let tool = params.as_ref().and_then(|p| p.name.as_deref()).map(str::to_owned);
        let argument_keys = params.and_then(|p| p.arguments).map(|a| a.into_keys().collect()).unwrap_or_default();
        return RequestFacts {
            model,
            llm: None,
            mcp: Some(McpCall { method: method.clone().into_owned(), tool, argument_keys }),
        };
    }
    let max_tokens = b
        .max_completion_tokens
        .or(b.max_tokens)
        .or(b.max_output_tokens)
        .or(b.generation_config.as_ref().and_then(|g| g.max_output_tokens));
    let tools = || {
        b.tools
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| {
                t.function.as_ref().and_then(|f| f.name.as_deref()).or(t.name.as_deref()).map(str::to_owned)
            })
            .collect()
    };
    let llm = if let Some((path_model, stream)) = gemini_path(path).filter(|_| b.contents.is_some()) {
        Some(LlmCall {
            provider: "gemini",
            operation: "generate_content",
            model: path_model.to_owned(),
            max_tokens,
            stream,
            stream_usage: None,
            messages: b.contents.as_ref().map_or(0, |c| c.len() as u64),
            tools: tools(),
        })
    } else {
        match (&b.model, provider(host, path)) {
            (Some(model), Some(provider)) if b.messages.is_some() || b.input.is_some() => Some(LlmCall {
                provider,
                operation: operation(path),
                model: model.clone().into_owned(),
                max_tokens,
                stream: b.stream.unwrap_or(false),
                stream_usage: b.stream_options.as_ref().map(|o| o.include_usage.unwrap_or(false)),
                messages: b.messages.as_ref().map_or(0, |m| m.len() as u64),
                tools: tools(),
            }),
            _ => None,
        }
    };
    RequestFacts { model, llm, mcp: None }
}

/// Whether `headers` declare a JSON body.
pub fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

#[cfg(test)]
mod tests;
