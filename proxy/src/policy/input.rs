//! The input document (version 1) every pack is asked about, and the verdict it answers with.
//!
//! Specified in `docs/reference/policy-input.md`; the pack side lives in `policies/sdk`. The
//! proxy builds one [`Input`] per call and serializes it at most once per form, JSON or binary
//! ([`Document`]); every pack of every kind reads that same document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Input document version this proxy writes.
pub const INPUT_VERSION: u32 = 1;

/// Request headers never put into the document (they carry credentials).
pub const SECRET_HEADERS: [&str; 5] = ["authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"];

/// One call, as the proxy describes it to every policy pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// Input document version, [`INPUT_VERSION`].
    pub version: u32,
    /// When the proxy received the call, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The run the call belongs to.
    pub run: RunInput,
    /// The HTTP request (auth headers removed).
    pub request: RequestInput,
    /// The LLM API call in the body, when recognised.
    #[serde(default)]
    pub llm: Option<LlmInput>,
    /// The MCP JSON-RPC message in the body, when recognised.
    #[serde(default)]
    pub mcp: Option<McpInput>,
    /// The run's state before this call.
    pub state: StateInput,
}

/// The run a call belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInput {
    /// Run id.
    pub id: String,
    /// Agent name, when known.
    #[serde(default)]
    pub agent: Option<String>,
    /// Tenant, when known.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Step number, from 1.
    pub step: u64,
}

/// The HTTP request of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInput {
    /// Method, upper case.
    pub method: String,
    /// `https` or `http`.
    pub scheme: String,
    /// Host, lower case, no port.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path without the query.
    pub path: String,
    /// Query without the `?`.
    pub query: String,
    /// Headers, names lower case, [`SECRET_HEADERS`] removed.
    pub headers: BTreeMap<String, String>,
}

/// An LLM API call recognised in the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmInput {
    /// `openai`, `anthropic`, `gemini`, ….
    pub provider: String,
    /// Model as named in the request.
    pub model: String,
    /// Requested output-token limit.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Whether a stream was requested.
    pub stream: bool,
    /// Number of messages.
    pub messages: u64,
    /// Names of the tools offered to the model.
    pub tools: Vec<String>,
}

/// An MCP JSON-RPC message recognised in the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpInput {
    /// JSON-RPC method.
    pub method: String,
    /// Tool name of a `tools/call`.
    #[serde(default)]
    pub tool: Option<String>,
    /// Top-level argument names of a `tools/call`.
    pub argument_keys: Vec<String>,
}

/// The run's state before a call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInput {
    /// Calls made so far.
    pub calls: u64,
    /// LLM tokens used so far.
    pub tokens: u64,
    /// Cost so far, millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// Hosts contacted so far.
    pub hosts: Vec<String>,
    /// MCP tools called so far.
    pub tools: Vec<String>,
}

/// The input document of one call with its JSON serialization, made once and read by every pack.
#[derive(Debug)]
pub struct Document {
    /// The typed document (Cedar and the built-in pack read fields directly).
    pub input: Input,
    /// `input` as JSON, made on first use: Rego packs and Wasm packs without `evaluate_binary` read it.
    json: std::sync::OnceLock<String>,
    /// `input` in the binary layout ([`encode_binary`]), made on first use and shared by every
    /// Wasm pack that exports `evaluate_binary`.
    binary: std::sync::OnceLock<Vec<u8>>,
}

impl Document {
    /// Wraps `input`; each serialization is made when a pack first needs it, once per call.
    pub fn new(input: Input) -> Self {
        Self { input, json: std::sync::OnceLock::new(), binary: std::sync::OnceLock::new() }
    }

    /// `input` as JSON, serialized on the first call.
    pub fn json(&self) -> &str {
        // Serializing plain strings, integers and maps cannot fail.
        self.json.get_or_init(|| serde_json::to_string(&self.input).unwrap_or_default())
    }

    /// Parses a document written by hand (`fleetforge-ctl policy test --input`), checking its version.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let input: Input = serde_json::from_str(text)?;
        if input.version != INPUT_VERSION {
            return Err(serde::de::Error::custom(format!(
                "input document version {} is not supported; this proxy writes version {INPUT_VERSION}",
                input.version
            )));
        }
        Ok(Self::new(input))
    }

    /// `input` in the binary layout, encoded on the first call.
    pub fn binary(&self) -> &[u8] {
        self.binary.get_or_init(|| encode_binary(&self.input))
    }
}

/// Encodes `input` in the binary layout of `docs/reference/policy-input.md` ("Binary input"): the
/// fields in document order, little-endian, fixed-width integers (`u16` port, `u32` version and
/// lengths, `u64` otherwise), strings as a `u32` length and UTF-8 bytes, optional values behind a
/// `u8` tag (0 null, 1 present), lists as a `u32` count and the items, headers as name/value pairs
/// in name order, bools as one byte. Fields added later go at the end, where older packs stop
/// reading. The SDK's decoder is `fleetforge_policy_sdk::binary`; both sides are checked against
/// `policies/sdk/example-input.bin`.
pub fn encode_binary(input: &Input) -> Vec<u8> {
    struct Out(Vec<u8>);
    impl Out {
        fn len(&mut self, n: usize) {
            // Documents are bounded by proxy.max_body and header limits, far below 4 GiB.
            self.0.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        }
        fn str(&mut self, s: &str) {
            self.len(s.len());
            self.0.extend_from_slice(s.as_bytes());
        }
        fn u64(&mut self, n: u64) {
            self.0.extend_from_slice(&n.to_le_bytes());
        }
        fn tag(&mut self, present: bool) {
            self.0.push(u8::from(present));
        }
        fn opt_str(&mut self, s: Option<&str>) {
            self.tag(s.is_some());
            if let Some(s) = s {
                self.str(s);
            }
        }
        fn strs(&mut self, items: &[String]) {
            self.len(items.len());
            for s in items {
                self.str(s);
            }
        }
    }
    let mut out = Out(Vec::with_capacity(512));
    out.0.extend_from_slice(&input.version.to_le_bytes());
    out.str(&input.time);
    let run = &input.run;
    out.str(&run.id);
    out.opt_str(run.agent.as_deref());
    out.opt_str(run.tenant.as_deref());
    out.u64(run.step);
    let q = &input.request;
    out.str(&q.method);
    out.str(&q.scheme);
    out.str(&q.host);
    out.0.extend_from_slice(&q.port.to_le_bytes());
    out.str(&q.path);
    out.str(&q.query);
    out.len(q.headers.len());
    for (name, value) in &q.headers {
        out.str(name);
        out.str(value);
    }
    out.tag(input.llm.is_some());
    if let Some(llm) = &input.llm {
        out.str(&llm.provider);
        out.str(&llm.model);
        out.tag(llm.max_tokens.is_some());
        if let Some(n) = llm.max_tokens {
            out.u64(n);
        }
        out.tag(llm.stream);
        out.u64(llm.messages);
        out.strs(&llm.tools);
    }
    out.tag(input.mcp.is_some());
    if let Some(mcp) = &input.mcp {
        out.str(&mcp.method);
        out.opt_str(mcp.tool.as_deref());
        out.strs(&mcp.argument_keys);
    }
    let state = &input.state;
    out.u64(state.calls);
    out.u64(state.tokens);
    out.u64(state.cost_micro_usd);
    out.strs(&state.hosts);
    out.strs(&state.tools);
    out.0
}

/// A pack's decision on one call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Whether the call may proceed.
    pub allow: bool,
    /// Why; recorded in the receipt and returned to the agent on deny.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// What the proxy must do to an allowed call.
    #[serde(default)]
    pub obligations: Obligations,
}

/// Changes the proxy must apply to an allowed call. Unknown fields make the verdict invalid (a
/// misspelt obligation must not be silently dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligations {
    /// Cap the LLM request's output tokens at this value (several packs: the lowest wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_cap: Option<u64>,
    /// Request headers to remove before forwarding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strip_headers: Vec<String>,
    /// Request headers to set before forwarding.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers: BTreeMap<String, String>,
}

impl Verdict {
    /// Allow, no reasons, no obligations.
    pub fn allow() -> Self {
        Self { allow: true, ..Self::default() }
    }

    /// Deny for `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self { allow: false, reasons: vec![reason.into()], obligations: Obligations::default() }
    }

    /// Parses a verdict a pack returned; anything that is not exactly a verdict is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Deny-overrides composition: allowed only if both allow; reasons concatenate; obligations
    /// merge (lowest token cap, union of stripped headers, later packs' added headers win).
    pub fn and(mut self, other: Verdict) -> Self {
        self.allow &= other.allow;
        self.reasons.extend(other.reasons);
        let (mine, theirs) = (&mut self.obligations, other.obligations);
        mine.max_tokens_cap = match (mine.max_tokens_cap, theirs.max_tokens_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for h in theirs.strip_headers {
            if !mine.strip_headers.iter().any(|m| m.eq_ignore_ascii_case(&h)) {
                mine.strip_headers.push(h);
            }
        }
        mine.add_headers.extend(theirs.add_headers);
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn deny_overrides_and_obligations_merge() {
        let a: Verdict = Verdict::parse(
            br#"{"allow":true,"reasons":["a"],"obligations":{"max_tokens_cap":100,"strip_headers":["x-a"]}}"#,
        )
        .unwrap();
        let b = Verdict::parse(br#"{"allow":true,"obligations":{"max_tokens_cap":50,"strip_headers":["X-A","x-b"],"add_headers":{"x-t":"1"}}}"#).unwrap();
        let both = a.clone().and(b);
        assert!(both.allow);
        assert_eq!(both.obligations.max_tokens_cap, Some(50));
        assert_eq!(both.obligations.strip_headers, vec!["x-a", "x-b"]);
        assert_eq!(both.obligations.add_headers["x-t"], "1");
        let denied = a.and(Verdict::deny("no"));
        assert!(!denied.allow);
        assert_eq!(denied.reasons, vec!["a", "no"]);
    }

    #[test]
    fn verdicts_that_are_not_exactly_verdicts_are_rejected() {
        assert!(Verdict::parse(br#"{"reasons":[]}"#).is_err(), "allow is required");
        assert!(Verdict::parse(br#"{"allow":"yes"}"#).is_err());
        assert!(Verdict::parse(br#"{"allow":true,"obligations":{"strip_header":["x"]}}"#).is_err());
        assert!(Verdict::parse(b"\xff").is_err());
    }

    /// The example of `docs/reference/policy-input.md` encodes to exactly the bytes the SDK's
    /// decoder is tested on, so the proxy and SDK-built packs agree on the binary layout.
    #[test]
    fn binary_encoding_matches_the_sdk_fixture() {
        let example = include_str!("../../../policies/sdk/example-input.json");
        let doc = Document::parse(example).unwrap();
        assert_eq!(doc.binary(), include_bytes!("../../../policies/sdk/example-input.bin"));
        // Absent optional values are a 0 tag, and the encoding is made once.
        let mut bare = doc.input.clone();
        (bare.run.agent, bare.llm, bare.mcp) = (None, None, None);
        let bare = Document::new(bare);
        assert!(bare.binary().len() < doc.binary().len());
        assert!(std::ptr::eq(bare.binary(), bare.binary()));
    }

    #[test]
    fn documents_of_another_version_are_refused() {
        let doc = r#"{"version":2,"time":"t","run":{"id":"r","step":1},"request":{"method":"GET","scheme":"https","host":"h","port":443,"path":"/","query":"","headers":{}},"state":{"calls":0,"tokens":0,"cost_micro_usd":0,"hosts":[],"tools":[]}}"#;
        let err = Document::parse(doc).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        assert!(Document::parse(&doc.replace("\"version\":2", "\"version\":1")).is_ok());
    }
}
