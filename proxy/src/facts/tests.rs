#![allow(clippy::unwrap_used)]

use bytes::Bytes;

use super::{RequestFacts, read};

fn facts(host: &str, path: &str, body: &str) -> RequestFacts {
    read(host, path, true, &Bytes::copy_from_slice(body.as_bytes()))
}

#[test]
fn openai_chat_with_tools() {
    let f = facts(
        "api.openai.com",
        "/v1/chat/completions?x=1",
        r#"{"model":"gpt-4o","max_tokens":900,"stream":true,"messages":[{"role":"user","content":"hi"},{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"get_weather"}}]}"#,
    );
    assert_eq!(f.model.as_deref(), Some("gpt-4o"));
    let llm = f.llm.unwrap();
    assert_eq!((llm.provider, llm.operation, llm.model.as_str()), ("openai", "chat", "gpt-4o"));
    assert_eq!((llm.max_tokens, llm.stream, llm.messages), (Some(900), true, 2));
    assert_eq!(llm.tools, vec!["get_weather"]);
    assert!(f.mcp.is_none());
}

#[test]
fn output_limits_come_from_whichever_field_the_request_uses() {
    let limit = |body: &str| facts("api.openai.com", "/v1/responses", body).llm.unwrap().max_tokens;
    assert_eq!(limit(r#"{"model":"m","input":"x","max_output_tokens":7}"#), Some(7));
    assert_eq!(limit(r#"{"model":"m","input":"x","max_completion_tokens":8,"max_tokens":9}"#), Some(8));
    assert_eq!(limit(r#"{"model":"m","input":"x"}"#), None);
}

#[test]
fn operations_follow_the_api_path() {
    let op = |host: &str, path: &str, body: &str| facts(host, path, body).llm.map(|l| (l.provider, l.operation));
    assert_eq!(op("api.openai.com", "/v1/embeddings", r#"{"model":"e","input":"x"}"#), Some(("openai", "embeddings")));
    assert_eq!(
        op("llm.internal", "/v1/completions", r#"{"model":"m","input":"x"}"#),
        Some(("openai", "text_completion"))
    );
    assert_eq!(
        op("llm.internal", "/v1/messages", r#"{"model":"claude","messages":[],"max_tokens":5}"#),
        Some(("anthropic", "chat"))
    );
    assert_eq!(op("example.com", "/api", r#"{"model":"m","messages":[]}"#), None, "unknown host and path");
}

#[test]
fn gemini_names_its_model_and_stream_in_the_path() {
    let body = r#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":64}}"#;
    let f = facts(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        body,
    );
    let llm = f.llm.unwrap();
    assert_eq!((llm.provider, llm.operation, llm.model.as_str()), ("gemini", "generate_content", "gemini-2.0-flash"));
    assert_eq!((llm.max_tokens, llm.stream, llm.messages), (Some(64), true, 1));
    assert!(f.model.is_none(), "no model member in the body");
    let f = facts("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent", body);
    assert!(!f.llm.unwrap().stream);
    assert!(facts("generativelanguage.googleapis.com", "/v1beta/models/:generateContent", body).llm.is_none());
}

#[test]
fn mcp_tools_call_names_the_tool_and_argument_keys_only() {
    let f = facts(
        "tools.internal",
        "/mcp",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_secret","arguments":{"path":"/etc/x","mode":"r"}}}"#,
    );
    let mcp = f.mcp.clone().unwrap();
    assert_eq!(mcp.method, "tools/call");
    assert_eq!(f.tool_call(), Some("read_secret"));
    assert_eq!(mcp.argument_keys, vec!["mode", "path"]);
    assert!(f.llm.is_none());
    let list = facts("tools.internal", "/mcp", r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
    assert_eq!(list.mcp.unwrap().tool, None);
}

#[test]
fn other_bodies_are_neither_and_a_bare_model_is_still_read() {
    for body in ["not json", "[1,2]", ""] {
        assert_eq!(facts("example.com", "/", body), RequestFacts::default(), "{body:?}");
    }
    let f = facts("example.com", "/", r#"{"model":"x"}"#);
    assert_eq!(f.model.as_deref(), Some("x"));
    assert!(f.llm.is_none() && f.mcp.is_none());
    let not_json = read("api.openai.com", "/v1/chat/completions", false, &Bytes::from_static(br#"{"model":"x"}"#));
    assert_eq!(not_json, RequestFacts::default(), "a body not declared JSON is not parsed");
}
