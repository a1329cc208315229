//! Validation of attestations for the vault (`PUT /v1/attestations/{id}`): an in-toto
//! Statement (v1 or v0.1), SLSA provenance (an in-toto Statement whose predicate type is
//! `https://slsa.dev/provenance/…`), or a DSSE envelope (whose in-toto payload is validated too).
//! Each refusal names the member that is wrong.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde_json::Value;

/// What an attestation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    /// `in-toto`, `slsa-provenance` or `dsse`.
    pub kind: &'static str,
    /// The in-toto `predicateType`, when there is one.
    pub predicate_type: Option<String>,
}

/// The in-toto payload type of a DSSE envelope.
const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";

fn base64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

/// Checks an in-toto Statement; its predicate type.
fn statement(v: &Value, at: &str) -> Result<String, String> {
    match v["_type"].as_str() {
        Some("https://in-toto.io/Statement/v1" | "https://in-toto.io/Statement/v0.1") => {}
        Some(other) => return Err(format!("{at}_type is {other:?}, not an in-toto Statement type")),
        None => return Err(format!("{at}_type is missing: not an in-toto Statement")),
    }
    let subjects =
        v["subject"].as_array().filter(|s| !s.is_empty()).ok_or(format!("{at}subject must be a non-empty array"))?;
    for (i, s) in subjects.iter().enumerate() {
        let digest = s["digest"].as_object().filter(|d| !d.is_empty());
        let digest = digest.ok_or(format!("{at}subject[{i}].digest must be a non-empty object"))?;
        for (alg, value) in digest {
            let ok = value.as_str().is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(format!("{at}subject[{i}].digest.{alg} must be a hex string"));
            }
        }
    }
    let predicate_type = v["predicateType"].as_str().filter(|p| !p.is_empty());
    let predicate_type = predicate_type.ok_or(format!("{at}predicateType must be a non-empty string (a URI)"))?;
    if !v["predicate"].is_null() && !v["predicate"].is_object() {
        return Err(format!("{at}predicate must be an object"));
    }
    Ok(predicate_type.to_owned())
}

/// The kind of `v`, or why it is not an attestation the vault accepts.
pub fn classify(v: &Value) -> Result<Kind, String> {
    if !v.is_object() {
        return Err("an attestation must be a JSON object".into());
    }
    if v.get("payloadType").is_some() || v.get("signatures").is_some() {
        let payload_type = v["payloadType"].as_str().ok_or("payloadType must be a string")?;
        let payload = v["payload"].as_str().and_then(base64).ok_or("payload must be base64")?;
        let signatures =
            v["signatures"].as_array().filter(|s| !s.is_empty()).ok_or("signatures must be a non-empty array")?;
        for (i, s) in signatures.iter().enumerate() {
            if s["sig"].as_str().and_then(base64).is_none_or(|b| b.is_empty()) {
                return Err(format!("signatures[{i}].sig must be non-empty base64"));
            }
        }
        let predicate_type = if payload_type == IN_TOTO_PAYLOAD {
            let inner: Value =
                serde_json::from_slice(&payload).map_err(|e| format!("the in-toto payload is not JSON: {e}"))?;
            Some(statement(&inner, "payload.")?)
        } else {
            None
        };
        return Ok(Kind { kind: "dsse", predicate_type });
    }
    let predicate_type = statement(v, "")?;
    let kind = if predicate_type.starts_with("https://slsa.dev/provenance/") { "slsa-provenance" } else { "in-toto" };
    Ok(Kind { kind, predicate_type: Some(predicate_type) })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn provenance() -> Value {
        json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "agent.tar", "digest": {"sha256": "ab".repeat(32)}}],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {"buildDefinition": {"buildType": "https://example.com/build"}},
        })
    }

    #[test]
    fn statements_provenance_and_envelopes_are_told_apart() {
        assert_eq!(classify(&provenance()).unwrap().kind, "slsa-provenance");
        let mut other = provenance();
        other["predicateType"] = json!("https://in-toto.io/attestation/test-result/v0.1");
        assert_eq!(classify(&other).unwrap().kind, "in-toto");
        let envelope = json!({
            "payloadType": IN_TOTO_PAYLOAD,
            "payload": STANDARD.encode(provenance().to_string()),
            "signatures": [{"keyid": "k1", "sig": STANDARD.encode([7u8; 64])}],
        });
        let k = classify(&envelope).unwrap();
        assert_eq!((k.kind, k.predicate_type.as_deref()), ("dsse", Some("https://slsa.dev/provenance/v1")));
    }

    #[test]
    fn each_refusal_names_the_member() {
        let cases = [
            (json!([1]), "must be a JSON object"),
            (json!({"subject": []}), "_type is missing"),
            (
                json!({"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": "x"}),
                "subject must be",
            ),
            (
                json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"digest": {"sha256": "zz"}}], "predicateType": "x"}),
                "subject[0].digest.sha256 must be a hex string",
            ),
            (
                json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"digest": {"sha256": "ab"}}]}),
                "predicateType",
            ),
            (json!({"payloadType": "x", "payload": "%%%", "signatures": [{"sig": "AA=="}]}), "payload must be base64"),
            (json!({"payloadType": "x", "payload": "AA==", "signatures": []}), "signatures must be"),
            (
                json!({"payloadType": IN_TOTO_PAYLOAD, "payload": STANDARD.encode("{}"), "signatures": [{"sig": "AA=="}]}),
                "payload._type is missing",
            ),
        ];
        for (v, needle) in cases {
            let e = classify(&v).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }
}
