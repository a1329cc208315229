//! Builds the input document of a call: the request as the agent sent it (credentials removed),
//! the LLM or MCP call recognised in its body, and the run's state.
//!
//! The body is parsed once, into borrowed fields only; a body that is not JSON, or JSON that is
//! neither a known LLM API request nor JSON-RPC, simply has `llm` and `mcp` null.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::input::{Document, INPUT_VERSION, Input, LlmInput, McpInput, RequestInput, RunInput, StateInput};

/// Whether a header may carry a credential: never put into the document.
fn secret_header(name: &str) -> bool {
    super::input::SECRET_HEADERS.contains(&name)
        || ["key", "token", "secret", "auth", "cookie", "session", "password"].iter().any(|w| name.contains(w))
}

/// What the proxy knows about a call, in the shape the document needs.
#[derive(Debug)]
pub struct CallFacts<'a> {
    /// Run id.
    pub run: &'a str,
    /// Agent, when known.
    pub agent: Option<&'a str>,
    /// Tenant, when known.
    pub tenant: Option<&'a str>,
    /// Step number.
    pub step: u64,
    /// When the call arrived, RFC 3339.
    pub time: String,
    /// Method.
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// Host.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Path and query (credential-like query values already redacted).
    pub path_and_query: &'a str,
}

/// The document of a call with `headers` and `body` (`json`: whether the body is declared JSON).
pub fn document(facts: &CallFacts<'_>, headers: &HeaderMap, body: &Bytes, json: bool, state: StateInput) -> Document {
    let (path, query) = facts.path_and_query.split_once('?').unwrap_or((facts.path_and_query, ""));
    let headers: BTreeMap<String, String> = headers
        .iter()
        .filter(|(name, _)| !secret_header(name.as_str()) && !name.as_str().starts_with("x-fleetforge-"))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let (llm, mcp) = if json && !body.is_empty() { recognise(facts.host, path, body) } else { (None, None) };
    Document::new(Input {
        version: INPUT_VERSION,
        time: facts.time.clone(),
        run: RunInput {
            id: facts.run.to_owned(),
            agent: facts.agent.map(str::to_owned),
            tenant: facts.tenant.map(str::to_owned),
            step: facts.step,
        },
        request: RequestInput {
            method: facts.method.to_owned(),
            scheme: facts.scheme.to_owned(),
            host: facts.host.to_owned(),
            port: facts.port,
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
        },
        llm,
        mcp,
        state,
    })
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    stream: Option<bool>,
    messages: Option<Vec<IgnoredAny>>,
    input: Option<IgnoredAny>,
    tools: Option<Vec<Tool<'a>>>,
    jsonrpc: Option<&'a str>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
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
    if path.ends_with("/chat/completions") || path.ends_with("/completions") || path.ends_with("/responses") {
        Some("openai")
    } else if path.ends_with("/messages") {
        Some("anthropic")
    } else {
        None
    }
}

fn recognise(host: &str, path: &str, body: &Bytes) -> (Option<LlmInput>, Option<McpInput>) {
    let Ok(b) = serde_json::from_slice::<Body<'_>>(body) else { return (None, None) };
    if b.jsonrpc == Some("2.0")
        && let Some(method) = &b.method
    {
        let call = method == "tools/call";
        let params = b.params.filter(|_| call);
        let tool = params.as_ref().and_then(|p| p.name.as_deref()).map(str::to_owned);
        let argument_keys = params.and_then(|p| p.arguments).map(|a| a.into_keys().collect()).unwrap_or_default();
        return (None, Some(McpInput { method: method.clone().into_owned(), tool, argument_keys }));
    }
    let llm = match (&b.model, provider(host, path)) {
        (Some(model), Some(provider)) if b.messages.is_some() || b.input.is_some() => Some(LlmInput {
            provider: provider.to_owned(),
            model: model.clone().into_owned(),
            max_tokens: b.max_completion_tokens.or(b.max_tokens).or(b.max_output_tokens),
            stream: b.stream.unwrap_or(false),
            messages: b.messages.map_or(0, |m| m.len() as u64),
            tools: b
                .tools
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.function.and_then(|f| f.name).or(t.name).map(std::borrow::Cow::into_owned))
                .collect(),
        }),
        _ => None,
    };
    (llm, None)
}

/// The body with its output-token limit capped at `cap`, or `None` when it is already within the
/// cap. The field capped is the one the request uses (`max_completion_tokens`, `max_tokens` or
/// `max_output_tokens`); a request that sets none gets `max_tokens`.
pub fn cap_max_tokens(body: &Bytes, cap: u64) -> Option<Bytes> {
    let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let field = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .into_iter()
        .find(|f| value.contains_key(*f))
        .unwrap_or("max_tokens");
    if value.get(field).and_then(serde_json::Value::as_u64).is_some_and(|v| v <= cap) {
        return None;
    }
    value.insert(field.to_owned(), cap.into());
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn facts<'a>(host: &'a str, path: &'a str) -> CallFacts<'a> {
        CallFacts {
            run: "r1",
            agent: Some("planner"),
            tenant: None,
            step: 3,
            time: "2026-11-27T00:00:00.000Z".into(),
            method: "POST",
            scheme: "https",
            host,
            port: 443,
            path_and_query: path,
        }
    }

    #[test]
    fn openai_chat_with_tools_and_no_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer sk-secret".parse().unwrap());
        headers.insert("x-goog-api-key", "AIza-secret".parse().unwrap());
        headers.insert("x-fleetforge-token", "tok".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let body = Bytes::from_static(
            br#"{"model":"gpt-4o","max_tokens":900,"stream":true,"messages":[{"role":"user","content":"hi"},{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"get_weather"}}]}"#,
        );
        let doc = document(
            &facts("api.openai.com", "/v1/chat/completions?x=1"),
            &headers,
            &body,
            true,
            StateInput::default(),
        );
        let llm = doc.input.llm.as_ref().unwrap();
        assert_eq!((llm.provider.as_str(), llm.model.as_str()), ("openai", "gpt-4o"));
        assert_eq!((llm.max_tokens, llm.stream, llm.messages), (Some(900), true, 2));
        assert_eq!(llm.tools, vec!["get_weather"]);
        assert_eq!(doc.input.request.query, "x=1");
        assert_eq!(doc.input.request.path, "/v1/chat/completions");
        assert_eq!(doc.input.request.headers.keys().collect::<Vec<_>>(), vec!["content-type"]);
        for secret in ["sk-secret", "AIza", "tok\""] {
            assert!(!doc.json().contains(secret), "{secret} leaked into {}", doc.json());
        }
    }

    #[test]
    fn mcp_tools_call_names_the_tool_and_argument_keys_only() {
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_secret","arguments":{"path":"/etc/x","mode":"r"}}}"#,
        );
        let doc = document(&facts("tools.internal", "/mcp"), &HeaderMap::new(), &body, true, StateInput::default());
        let mcp = doc.input.mcp.clone().unwrap();
        assert_eq!(mcp.tool.as_deref(), Some("read_secret"));
        assert_eq!(mcp.argument_keys, vec!["mode", "path"]);
        assert!(!doc.json().contains("/etc/x"));
        assert!(doc.input.llm.is_none());
    }

    #[test]
    fn other_bodies_are_neither() {
        for body in [&b"not json"[..], br#"{"model":"x"}"#, br#"[1,2]"#] {
            let doc = document(
                &facts("example.com", "/"),
                &HeaderMap::new(),
                &Bytes::copy_from_slice(body),
                true,
                StateInput::default(),
            );
            assert!(doc.input.llm.is_none() && doc.input.mcp.is_none());
        }
    }

    #[test]
    fn caps_the_field_the_request_uses() {
        let capped =
            cap_max_tokens(&Bytes::from_static(br#"{"model":"m","max_completion_tokens":5000}"#), 100).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&capped).unwrap();
        assert_eq!(v["max_completion_tokens"], 100);
        assert!(v.get("max_tokens").is_none());
        let added = cap_max_tokens(&Bytes::from_static(br#"{"model":"m"}"#), 100).unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&added).unwrap()["max_tokens"], 100);
        assert!(cap_max_tokens(&Bytes::from_static(br#"{"model":"m","max_tokens":50}"#), 100).is_none());
    }
}
