//! The input document (version 1): what the proxy tells every pack about one call.
//!
//! Mirrors `docs/reference/policy-input.md`. Unknown fields are ignored so the proxy can add
//! fields without a version bump; fields that may be `null` are `Option`s; everything else is
//! required, so a document missing a field a pack might decide on is rejected rather than
//! defaulted (for example a missing `state.tools` must not read as "no tools called yet").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One call, as the proxy describes it to every policy pack.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Input {
    /// Input document version; this SDK reads version [`INPUT_VERSION`](crate::INPUT_VERSION).
    pub version: u32,
    /// When the proxy received the call, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// The run the call belongs to.
    pub run: Run,
    /// The HTTP request, as the agent sent it (auth headers removed).
    pub request: Request,
    /// The LLM API call in the body, if the proxy recognised one.
    pub llm: Option<Llm>,
    /// The MCP JSON-RPC message in the body, if the proxy recognised one.
    pub mcp: Option<Mcp>,
    /// The run's state before this call.
    pub state: State,
}

/// The run a call belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Agent name, when the run has one.
    pub agent: Option<String>,
    /// Tenant, when the run has one.
    pub tenant: Option<String>,
    /// This call's step number in the run, monotonic from 1.
    pub step: u64,
}

/// The HTTP request of a call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Request {
    /// HTTP method, upper case (`GET`, `POST`, `CONNECT`, …).
    pub method: String,
    /// `https` or `http`.
    pub scheme: String,
    /// Target host name or IP address, lower case, without port, trailing dot or IPv6 brackets.
    pub host: String,
    /// Target port.
    pub port: u16,
    /// Path, without the query.
    pub path: String,
    /// Query string without the `?`; empty when there is none.
    pub query: String,
    /// Request headers, names lower case; the auth headers (`authorization`,
    /// `proxy-authorization`, `cookie`, `x-api-key`, `api-key`) are never present.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// An LLM API call recognised in the request body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Llm {
    /// Provider (`openai`, `anthropic`, …).
    pub provider: String,
    /// Model as named in the request.
    pub model: String,
    /// Requested output token limit, `None` when the request sets none.
    pub max_tokens: Option<u64>,
    /// Whether a streamed response was requested.
    pub stream: bool,
    /// Number of messages in the request.
    pub messages: u64,
    /// Names of the tools offered to the model.
    pub tools: Vec<String>,
}

/// An MCP JSON-RPC message recognised in the request body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Mcp {
    /// JSON-RPC method (`tools/call`, `tools/list`, `resources/read`, …).
    pub method: String,
    /// Tool name for `tools/call`; `None` otherwise.
    pub tool: Option<String>,
    /// Top-level argument names of a `tools/call` (never the values).
    pub argument_keys: Vec<String>,
}

/// The run's state before this call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct State {
    /// Calls made in the run so far.
    pub calls: u64,
    /// LLM tokens used so far (input plus output).
    pub tokens: u64,
    /// Cost so far, in millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// Hosts contacted so far in the run.
    pub hosts: Vec<String>,
    /// MCP tool names called so far in the run.
    pub tools: Vec<String>,
}

impl Input {
    /// The MCP tool this call invokes: `Some` only for a `tools/call` that names a tool.
    pub fn mcp_tool_call(&self) -> Option<&str> {
        self.mcp.as_ref().filter(|mcp| mcp.method == "tools/call").and_then(|mcp| mcp.tool.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::Input;

    /// The example from `docs/reference/policy-input.md`, with an extra unknown field.
    const EXAMPLE: &str = r#"{
      "version": 1,
      "time": "2026-11-26T18:00:00.123Z",
      "run": {"id": "run-1", "agent": "planner", "tenant": "default", "step": 3},
      "request": {"method": "POST", "scheme": "https", "host": "api.openai.com", "port": 443,
                  "path": "/v1/chat/completions", "query": "", "headers": {"content-type": "application/json"}},
      "llm": {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": 512, "stream": false, "messages": 2,
              "tools": ["get_weather"]},
      "mcp": {"method": "tools/call", "tool": "read_file", "argument_keys": ["path"]},
      "state": {"calls": 2, "tokens": 1200, "cost_micro_usd": 3400, "hosts": ["api.openai.com"], "tools": ["read_file"]},
      "added_later": {"ignored": true}
    }"#;

    #[test]
    fn parses_the_documented_example() {
        let input: Input = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(input.run.agent.as_deref(), Some("planner"));
        assert_eq!(input.request.headers["content-type"], "application/json");
        assert_eq!(input.llm.as_ref().unwrap().max_tokens, Some(512));
        assert_eq!(input.mcp_tool_call(), Some("read_file"));
        assert_eq!(input.state.tools, ["read_file"]);
    }

    #[test]
    fn nullable_fields_accept_null() {
        let nulls = EXAMPLE
            .replace(r#""agent": "planner""#, r#""agent": null"#)
            .replace(r#""tenant": "default""#, r#""tenant": null"#)
            .replace(r#""max_tokens": 512"#, r#""max_tokens": null"#)
            .replace(r#""tool": "read_file""#, r#""tool": null"#);
        let input: Input = serde_json::from_str(&nulls).unwrap();
        assert_eq!((input.run.agent, input.run.tenant), (None, None));
        assert_eq!(input.llm.unwrap().max_tokens, None);
        assert_eq!(input.mcp.unwrap().tool, None);
    }

    #[test]
    fn security_relevant_fields_are_required() {
        let no_tools = EXAMPLE.replace(r#", "tools": ["read_file"]}"#, "}");
        assert!(serde_json::from_str::<Input>(&no_tools).is_err());
    }

    #[test]
    fn only_tools_call_names_a_tool_call() {
        let list = EXAMPLE.replace(r#""method": "tools/call""#, r#""method": "tools/list""#);
        let input: Input = serde_json::from_str(&list).unwrap();
        assert_eq!(input.mcp_tool_call(), None);
    }
}
