//! The verdict a pack returns: allow or deny, why, and what the proxy must do to the call.
//!
//! Serialized as `{"allow": bool, "reasons": [..], "obligations": {..}}`; obligation fields that
//! are unset are omitted, so an unconditional allow is `{"allow":true,"reasons":[],"obligations":{}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A pack's decision on one call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[must_use]
pub struct Verdict {
    /// Whether the call may proceed. Packs compose deny-overrides.
    pub allow: bool,
    /// Human-readable reasons, recorded in the receipt (and returned to the agent on deny).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// What the proxy must do to an allowed call.
    #[serde(default)]
    pub obligations: Obligations,
}

/// Changes the proxy must apply to an allowed call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Obligations {
    /// Cap the LLM request's output tokens at this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_cap: Option<u64>,
    /// Request headers to remove before forwarding (names, case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strip_headers: Vec<String>,
    /// Request headers to set before forwarding, name to value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers: BTreeMap<String, String>,
}

impl Verdict {
    /// Allow the call, with no reasons and no obligations.
    pub fn allow() -> Self {
        Self { allow: true, ..Self::default() }
    }

    /// Deny the call for `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self { allow: false, reasons: vec![reason.into()], obligations: Obligations::default() }
    }

    /// Adds a reason (allow verdicts may carry reasons too, e.g. why an obligation applies).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reasons.push(reason.into());
        self
    }

    /// Obliges the proxy to cap output tokens at `cap` (the lower cap wins if set twice).
    pub fn cap_max_tokens(mut self, cap: u64) -> Self {
        self.obligations.max_tokens_cap = Some(self.obligations.max_tokens_cap.map_or(cap, |old| old.min(cap)));
        self
    }

    /// Obliges the proxy to remove request header `name` before forwarding.
    pub fn strip_header(mut self, name: impl Into<String>) -> Self {
        self.obligations.strip_headers.push(name.into());
        self
    }

    /// Obliges the proxy to set request header `name` to `value` before forwarding.
    pub fn add_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.obligations.add_headers.insert(name.into(), value.into());
        self
    }

    /// Combines two verdicts deny-overrides: allowed only if both allow; reasons are concatenated
    /// and obligations merged (lower token cap, union of headers, `other` wins on the same added
    /// header).
    pub fn and(mut self, other: Verdict) -> Self {
        self.allow &= other.allow;
        self.reasons.extend(other.reasons);
        if let Some(cap) = other.obligations.max_tokens_cap {
            self = self.cap_max_tokens(cap);
        }
        self.obligations.strip_headers.extend(other.obligations.strip_headers);
        self.obligations.add_headers.extend(other.obligations.add_headers);
        self
    }

    /// The verdict as UTF-8 JSON, as the host reads it.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail; if it ever did, fail closed.
        serde_json::to_vec(self)
            .unwrap_or_else(|_| br#"{"allow":false,"reasons":["policy could not encode its verdict"]}"#.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict;

    fn json(verdict: &Verdict) -> String {
        String::from_utf8(verdict.to_json()).unwrap()
    }

    #[test]
    fn allow_and_deny_serialize_to_the_wire_shape() {
        assert_eq!(json(&Verdict::allow()), r#"{"allow":true,"reasons":[],"obligations":{}}"#);
        assert_eq!(json(&Verdict::deny("no")), r#"{"allow":false,"reasons":["no"],"obligations":{}}"#);
    }

    #[test]
    fn obligations_serialize_when_set() {
        let verdict = Verdict::allow()
            .with_reason("capped")
            .cap_max_tokens(100)
            .cap_max_tokens(200)
            .strip_header("x-debug")
            .add_header("x-run", "r1");
        assert_eq!(
            json(&verdict),
            r#"{"allow":true,"reasons":["capped"],"obligations":{"max_tokens_cap":100,"strip_headers":["x-debug"],"add_headers":{"x-run":"r1"}}}"#
        );
    }

    #[test]
    fn and_is_deny_overrides() {
        let both = Verdict::allow().cap_max_tokens(50).and(Verdict::deny("b").cap_max_tokens(10));
        assert!(!both.allow);
        assert_eq!(both.reasons, ["b"]);
        assert_eq!(both.obligations.max_tokens_cap, Some(10));
        assert!(Verdict::allow().and(Verdict::allow()).allow);
    }

    #[test]
    fn round_trips_and_reads_minimal_verdicts() {
        let verdict = Verdict::deny("x").strip_header("a");
        assert_eq!(serde_json::from_slice::<Verdict>(&verdict.to_json()).unwrap(), verdict);
        assert_eq!(serde_json::from_str::<Verdict>(r#"{"allow":true}"#).unwrap(), Verdict::allow());
    }
}
