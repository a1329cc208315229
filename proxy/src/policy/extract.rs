//! Builds the input document of a call: the request as the agent sent it (credentials removed),
//! the LLM or MCP call recognised in its body (read once, by [`crate::facts`]), and the run's
//! state.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::HeaderMap;

use super::input::{Document, INPUT_VERSION, Input, LlmInput, McpInput, RequestInput, RunInput, StateInput};
use crate::facts::RequestFacts;

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

/// The document of a call with `headers`, whose body's facts are `body` (`None`: no body, or not
/// read).
pub fn document(
    facts: &CallFacts<'_>,
    headers: &HeaderMap,
    body: Option<&RequestFacts>,
    state: StateInput,
) -> Document {
    let (path, query) = facts.path_and_query.split_once('?').unwrap_or((facts.path_and_query, ""));
    let headers: BTreeMap<String, String> = headers
        .iter()
        .filter(|(name, _)| !secret_header(name.as_str()) && !name.as_str().starts_with("x-fleetforge-"))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let llm = body.and_then(|b| b.llm.as_ref()).map(|l| LlmInput {
        provider: l.provider.to_owned(),
        model: l.model.clone(),
        max_tokens: l.max_tokens,
        stream: l.stream,
        messages: l.messages,
        tools: l.tools.clone(),
    });
    let mcp = body.and_then(|b| b.mcp.as_ref()).map(|m| McpInput {
        method: m.method.clone(),
        tool: m.tool.clone(),
        argument_keys: m.argument_keys.clone(),
    });
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
        let read = crate::facts::read("api.openai.com", "/v1/chat/completions", true, &body);
        let doc = document(
            &facts("api.openai.com", "/v1/chat/completions?x=1"),
            &headers,
            Some(&read),
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
        let read = crate::facts::read("tools.internal", "/mcp", true, &body);
        let doc = document(&facts("tools.internal", "/mcp"), &HeaderMap::new(), Some(&read), StateInput::default());
        let mcp = doc.input.mcp.clone().unwrap();
        assert_eq!(mcp.tool.as_deref(), Some("read_secret"));
        assert_eq!(mcp.argument_keys, vec!["mode", "path"]);
        assert!(!doc.json().contains("/etc/x"));
        assert!(doc.input.llm.is_none());
    }

    #[test]
    fn other_bodies_are_neither() {
        for body in [&b"not json"[..], br#"{"model":"x"}"#, br#"[1,2]"#] {
            let read = crate::facts::read("example.com", "/", true, &Bytes::copy_from_slice(body));
            let doc = document(&facts("example.com", "/"), &HeaderMap::new(), Some(&read), StateInput::default());
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
