//! The receipt: one signed, hash-chained record per call (schema `fleetforge.receipt/v1`).
//!
//! A receipt says who called (run, step), what was called (upstream scheme, host, port, method,
//! path), what was decided and why, what went over the wire (byte counts and SHA-256 digests of
//! the request and response bodies — never the bodies), how it ended, and where it sits in its
//! run's chain. It never carries credentials: no API keys, auth headers, cookies, run tokens, or
//! bodies.
//!
//! Hashing: the receipt hash is SHA-256 over the JCS form of the receipt *without* its
//! `signature` member (see [`crate::canonical`]). Chaining: each receipt names the hash of the
//! previous receipt of the same run written by the same proxy key (its *lane*) and a gapless
//! `seq`; the first receipt of a lane links to [`genesis`]. Signing: see [`crate::sign`].
//!
//! Struct fields are declared in the order JCS sorts them, so serializing a [`ReceiptBody`]
//! directly yields its canonical form; [`ReceiptBody::canonical`] relies on that and a test
//! checks it against the generic canonicalizer.

use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalError, hex, sha256};
use crate::merkle::Hash;
use crate::{ReceiptId, RunId};

/// The schema id every v1 receipt carries.
pub const SCHEMA: &str = "fleetforge.receipt/v1";

/// Where the call went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// Host name (normalized: lowercase, no trailing dot).
    pub host: String,
    /// HTTP method (`CONNECT` for a tunnel).
    pub method: String,
    /// Path and query as sent upstream (`host:port` for a tunnel).
    pub path: String,
    /// Port.
    pub port: u16,
    /// `http` or `https`.
    pub scheme: String,
}

/// The failure a call ended with, as the client was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The message sent to the client.
    pub message: String,
    /// The contract error `type`, e.g. `policy_denied`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// What was decided about the call, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the call was allowed to leave.
    pub allow: bool,
    /// The error the call ended with, if any (denials and failures alike).
    pub error: Option<ErrorInfo>,
    /// Digests of the policy packs that decided it.
    pub policy_packs: Vec<String>,
    /// Machine-readable reasons.
    pub reasons: Vec<String>,
}

/// What went over the wire, by size and digest, and where the sealed bodies are. Members are
/// declared in JCS order (see [`ReceiptBody::canonical`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Replay key of the request (SHA-256 hex, [`crate::key`]); `None` when the call was not
    /// sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Scheme of `key` ([`crate::key::KEY_VERSION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<String>,
    /// JSON pointers of the request members replaced by `"[redacted]"` before sealing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
    /// Address (SHA-256 hex) of the sealed request body: the body as the agent sent it, with the
    /// `redacted` members replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_blob: Option<String>,
    /// Request body bytes sent upstream (tunnel: bytes from the client).
    pub request_bytes: u64,
    /// SHA-256 (hex) of the request body as sent upstream; `None` when nothing was sent.
    pub request_digest: Option<String>,
    /// Response body bytes delivered (tunnel: bytes to the client).
    pub response_bytes: u64,
    /// SHA-256 (hex) of the response body as received from the upstream (its blob's address
    /// when sealed).
    pub response_digest: Option<String>,
    /// Address of the sealed response envelope ([`crate::replay::ResponseMeta`]: status,
    /// content type, body address, chunk boundaries and offsets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_meta: Option<String>,
    /// Response status sent to the client.
    pub status: Option<u16>,
}

/// A call served by a replaying proxy: which sealed call it re-served, and when that call
/// originally happened. Members in JCS order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// On a miss: the receipt of the most similar sealed request of the replayed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest: Option<ReceiptId>,
    /// The receipt of the sealed call served; `None` when nothing matched (a miss).
    pub of: Option<ReceiptId>,
    /// The run being replayed.
    pub of_run: RunId,
    /// When the sealed call originally ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_ended_at: Option<String>,
    /// When the sealed call originally started (virtual time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_started_at: Option<String>,
    /// Whether the replay is strict (a miss is refused, never forwarded).
    pub strict: bool,
}

/// A dataset a run depends on, by digest. Members in JCS order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetDigest {
    /// Its configured name.
    pub name: String,
    /// SHA-256 (hex) of the file's bytes.
    pub sha256: String,
    /// File size in bytes.
    pub size: u64,
}

/// Token usage of an LLM call, when the proxy could read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens served from the provider's prompt cache (part of `input_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    /// Cost in millionths of a US dollar.
    pub cost_micro_usd: Option<u64>,
    /// Input (prompt) tokens, cached ones included.
    pub input_tokens: Option<u64>,
    /// Model.
    pub model: Option<String>,
    /// Output (completion) tokens, reasoning ones included.
    pub output_tokens: Option<u64>,
    /// Provider, e.g. `openai`.
    pub provider: Option<String>,
    /// Output tokens spent on reasoning (part of `output_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

/// The run's budget around a call: its limits, what was set aside before the call left, and
/// what was used before and after it settled. Token figures count input + output tokens of the
/// run's LLM calls on the proxy that served the call; cost figures are millionths of a US dollar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Cost the run had used before this call (`None`: the run has no cost budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_before_micro_usd: Option<u64>,
    /// Cost budget left after the call settled (`None`: the run has no cost budget).
    #[serde(default)]
    pub cost_left_micro_usd: Option<u64>,
    /// The run's cost limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_limit_micro_usd: Option<u64>,
    /// Cost set aside for the call before it was forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_reserved_micro_usd: Option<u64>,
    /// The upstream reported no usage, so the call was charged its whole reservation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// The output-token limit the proxy set on the request so that the call fits what remained
    /// (the cap obligation), when it set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cap: Option<u64>,
    /// Tokens reserved for the call before it was forwarded.
    #[serde(default)]
    pub reserved_tokens: u64,
    /// How long the call waited for its run's rate SLO, in milliseconds.
    #[serde(default)]
    pub throttled_ms: u64,
    /// Tokens the run had used before this call (`None`: the run has no token budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_before: Option<u64>,
    /// Token budget left after the call settled (`None`: the run has no token budget).
    #[serde(default)]
    pub tokens_left: Option<u64>,
    /// The run's token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_limit: Option<u64>,
    /// The stream was ended by the proxy because it would have run past the budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Control could not be reached to lease the run's budget, and the call was admitted
    /// against the run's whole budget on this proxy alone (`proxy.budget.on_control_unreachable =
    /// "fail_open"`): the fleet-wide limit was not enforced for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unleased: bool,
}

/// The capability a call was allowed under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Revocation id (hex) of the per-call block, when one was minted (tool and MCP upstreams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_token_id: Option<String>,
    /// When the per-call capability expires (Unix seconds).
    pub expires: u64,
    /// Revocation id (hex) of the run token.
    pub token_id: String,
}

/// The trace a call's span belongs to (W3C trace context ids, lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
}

/// The receipt's place in its run's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The lane: the id of the proxy key that writes this run's chain on one proxy.
    pub lane: String,
    /// Hash (hex) of the previous receipt in this lane, or the lane's [`genesis`].
    pub prev_hash: String,
    /// Position in the lane: 1, 2, 3, … without gaps.
    pub seq: u64,
}

/// Everything a receipt says; what its hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// Agent label, when known.
    pub agent: Option<String>,
    /// Budget state around the call, when the run has a budget.
    pub budget: Option<Budget>,
    /// Capability token ids and expiry, when the call presented a capability.
    pub capability: Option<Capability>,
    /// Place in the chain.
    pub chain: Chain,
    /// SHA-256 digests of the datasets the proxy was configured with (`[[dataset]]`), on the
    /// first receipt of each run a proxy writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<DatasetDigest>,
    /// The decision.
    pub decision: Decision,
    /// When the call ended (RFC 3339, UTC, microseconds).
    pub ended_at: String,
    /// Receipt id (also sent to the client as `x-fleetforge-receipt`).
    pub id: ReceiptId,
    /// `call` (one HTTP exchange) or `tunnel` (a relayed CONNECT).
    pub kind: String,
    /// `completed`, `client_gone`, `upstream_aborted` or `failed`.
    pub outcome: String,
    /// Set on calls served by a replaying proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
    /// The run.
    pub run: RunId,
    /// [`SCHEMA`].
    pub schema: String,
    /// Sizes and digests.
    pub seal: Seal,
    /// When the call started (RFC 3339, UTC, microseconds).
    pub started_at: String,
    /// Step number: monotonic per run on one proxy, in the order calls started.
    pub step: u64,
    /// Step label from `x-fleetforge-step`.
    pub step_label: Option<String>,
    /// Tenant, when the proxy knows it.
    pub tenant: Option<String>,
    /// Trace and span ids, when the call was traced.
    pub trace: Option<Trace>,
    /// Where the call went.
    pub upstream: Upstream,
    /// Token usage.
    pub usage: Option<Usage>,
}

/// A batch inclusion proof: the receipt's leaf index in a signed batch, the batch size, the
/// batch root and the audit path from the leaf to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProof {
    /// Leaf index.
    pub index: u64,
    /// Audit path (hex hashes), leaf side first.
    pub path: Vec<String>,
    /// Batch root (hex).
    pub root: String,
    /// Number of receipts in the batch.
    pub size: u64,
}

/// How a receipt is signed: ed25519 over its batch's root (see [`crate::sign`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Always `ed25519`.
    pub alg: String,
    /// The receipt's inclusion in the signed batch.
    pub batch: BatchProof,
    /// Id of the signing key (`GET /v1/keys`).
    pub key_id: String,
    /// The signature, base64url without padding.
    pub sig: String,
}

/// A complete receipt: the body and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// What the receipt says.
    #[serde(flatten)]
    pub body: ReceiptBody,
    /// The signature.
    pub signature: Signature,
}

impl ReceiptBody {
    /// The canonical (JCS) bytes the hash covers.
    pub fn canonical(&self) -> Result<Vec<u8>, CanonicalError> {
        // Every member, nested ones too, is declared in JCS order, with only integers and ASCII
        // member names: serializing it directly is already canonical.
        serde_json::to_vec(self).map_err(|e| CanonicalError::Number(e.to_string()))
    }

    /// The receipt hash.
    pub fn hash(&self) -> Result<Hash, CanonicalError> {
        Ok(sha256(&self.canonical()?))
    }
}

impl ReceiptBody {
    /// A plain receipt: an allowed, completed `POST https://api.openai.com/v1/chat/completions`
    /// of `run` at `chain`, step = seq, no digests. For tests, benchmarks and examples.
    pub fn example(run: RunId, chain: Chain) -> Self {
        ReceiptBody {
            agent: None,
            budget: None,
            capability: None,
            step: chain.seq,
            chain,
            datasets: vec![],
            decision: Decision { allow: true, error: None, policy_packs: vec![], reasons: vec![] },
            ended_at: "2026-11-26T18:00:00.000002Z".into(),
            id: ReceiptId::generate(),
            kind: "call".into(),
            outcome: "completed".into(),
            run,
            schema: SCHEMA.into(),
            seal: Seal {
                request_bytes: 1,
                request_digest: None,
                response_bytes: 2,
                response_digest: None,
                status: Some(200),
                ..Seal::default()
            },
            started_at: "2026-11-26T18:00:00.000001Z".into(),
            step_label: None,
            tenant: None,
            trace: None,
            upstream: Upstream {
                host: "api.openai.com".into(),
                method: "POST".into(),
                path: "/v1/chat/completions".into(),
                port: 443,
                scheme: "https".into(),
            },
            replay: None,
            usage: None,
        }
    }
}

/// The `prev_hash` of the first receipt of `run` in `lane`.
pub fn genesis(run: &str, lane: &str) -> Hash {
    sha256(format!("fleetforge.genesis/v1\n{run}\n{lane}").as_bytes())
}

/// [`genesis`] in hex.
pub fn genesis_hex(run: &str, lane: &str) -> String {
    hex(&genesis(run, lane))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{
        Budget, Capability, Chain, Decision, ErrorInfo, ReceiptBody, Replay, SCHEMA, Seal, Trace, Upstream, Usage,
        genesis_hex,
    };
    use crate::canonical;
    use crate::{ReceiptId, RunId};

    pub(crate) fn sample(seq: u64, prev: &str) -> ReceiptBody {
        ReceiptBody {
            agent: None,
            budget: None,
            capability: None,
            chain: Chain { lane: "ed25519:0011223344556677".into(), prev_hash: prev.into(), seq },
            datasets: vec![],
            decision: Decision {
                allow: false,
                error: Some(ErrorInfo {
                    message: "host évil.test is not allowed \"quoted\"\n".into(),
                    kind: "policy_denied".into(),
                }),
                policy_packs: vec![],
                reasons: vec!["host_not_allowed".into()],
            },
            ended_at: "2026-11-26T18:00:00.000002Z".into(),
            id: ReceiptId::generate(),
            kind: "call".into(),
            outcome: "failed".into(),
            run: RunId::new("run-1").unwrap(),
            schema: SCHEMA.into(),
            seal: Seal {
                request_bytes: 0,
                request_digest: None,
                response_bytes: 0,
                response_digest: None,
                status: Some(403),
                ..Seal::default()
            },
            started_at: "2026-11-26T18:00:00.000001Z".into(),
            step: seq,
            step_label: Some("plan ✓".into()),
            tenant: None,
            trace: None,
            upstream: Upstream {
                host: "évil.test".into(),
                method: "GET".into(),
                path: "/x?q=1".into(),
                port: 443,
                scheme: "https".into(),
            },
            replay: None,
            usage: None,
        }
    }

    #[test]
    fn direct_serialization_is_the_canonical_form() {
        let body = sample(1, &genesis_hex("run-1", "lane"));
        let generic = canonical::to_canonical(&serde_json::to_value(&body).unwrap()).unwrap();
        assert_eq!(body.canonical().unwrap(), generic);
        let mut full = body.clone();
        full.trace =
            Some(Trace { span_id: "00f067aa0ba902b7".into(), trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into() });
        full.capability =
            Some(Capability { call_token_id: Some("ab".into()), expires: 1_764_180_000, token_id: "cd".into() });
        full.budget =
            Some(Budget { cost_left_micro_usd: Some(5), reserved_tokens: 900, throttled_ms: 12, ..Budget::default() });
        full.usage = Some(Usage {
            cached_input_tokens: Some(1),
            cost_micro_usd: Some(1),
            input_tokens: Some(2),
            model: Some("gpt-4o".into()),
            output_tokens: Some(3),
            provider: Some("openai".into()),
            reasoning_tokens: Some(2),
        });
        let generic = canonical::to_canonical(&serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(full.canonical().unwrap(), generic, "typed parts are declared in JCS order");
        let mut no_call_token = full.clone();
        if let Some(c) = no_call_token.capability.as_mut() {
            c.call_token_id = None;
        }
        let generic = canonical::to_canonical(&serde_json::to_value(&no_call_token).unwrap()).unwrap();
        assert_eq!(no_call_token.canonical().unwrap(), generic);
        assert!(!String::from_utf8(generic).unwrap().contains("call_token_id"), "an absent per-call token is omitted");
    }

    /// The published JSON Schema lists exactly the members the code writes.
    #[test]
    fn the_published_schema_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference/receipt.schema.json");
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut required: Vec<String> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        required.sort();
        let body = serde_json::to_value(sample(1, "x")).unwrap();
        let mut written: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
        written.push("signature".into());
        written.sort();
        assert_eq!(required, written);
        let mut body = body;
        let mut full = sample(1, "x");
        full.trace = Some(Trace { span_id: "s".into(), trace_id: "t".into() });
        full.capability = Some(Capability { call_token_id: Some("c".into()), expires: 1, token_id: "t".into() });
        full.budget = Some(Budget {
            cost_before_micro_usd: Some(0),
            cost_limit_micro_usd: Some(0),
            cost_reserved_micro_usd: Some(0),
            estimated: true,
            output_cap: Some(0),
            tokens_before: Some(0),
            tokens_limit: Some(0),
            truncated: true,
            unleased: true,
            ..Budget::default()
        });
        full.usage = Some(Usage {
            cached_input_tokens: Some(0),
            cost_micro_usd: None,
            input_tokens: None,
            model: None,
            output_tokens: None,
            provider: None,
            reasoning_tokens: Some(0),
        });
        full.datasets = vec![super::DatasetDigest { name: "d".into(), sha256: "00".into(), size: 1 }];
        full.replay = Some(Replay {
            closest: Some(ReceiptId::generate()),
            of: Some(ReceiptId::generate()),
            of_run: RunId::new("r").unwrap(),
            original_ended_at: Some("e".into()),
            original_started_at: Some("s".into()),
            strict: true,
        });
        full.seal.key = Some("k".into());
        full.seal.key_version = Some("v".into());
        full.seal.redacted = vec!["/user".into()];
        full.seal.request_blob = Some("b".into());
        full.seal.response_meta = Some("m".into());
        let generic = canonical::to_canonical(&serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(full.canonical().unwrap(), generic, "seal and replay members are declared in JCS order");
        let full = serde_json::to_value(full).unwrap();
        for member in ["budget", "capability", "trace", "usage", "replay", "seal"] {
            if member != "seal" {
                // The required members of seal are checked below on the plain receipt.
                body[member] = full[member].clone();
            }
            let mut declared: Vec<String> =
                schema["properties"][member]["properties"].as_object().unwrap().keys().cloned().collect();
            declared.sort();
            let mut keys: Vec<String> = full[member].as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(declared, keys, "{member}: the schema declares every member the code writes");
        }
        for member in ["upstream", "decision", "seal", "chain"] {
            let mut req: Vec<String> = schema["properties"][member]["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            req.sort();
            let mut keys: Vec<String> = body[member].as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(req, keys, "{member}");
        }
    }

    #[test]
    fn genesis_differs_per_run_and_lane() {
        assert_ne!(genesis_hex("a", "l"), genesis_hex("b", "l"));
        assert_ne!(genesis_hex("a", "l"), genesis_hex("a", "m"));
        assert_eq!(genesis_hex("a", "l").len(), 64);
    }
}
