//! What a replay is made of: the sealed response envelope, the run's signed replay manifest, and
//! the report of a replay.
//!
//! A sealed call is three content-addressed blobs (SHA-256 of their bytes): the request body as
//! the agent sent it (configured redactions applied), the response body exactly as the upstream
//! sent it, and a [`ResponseMeta`] — status, the allow-listed response headers, the body's address
//! and its chunk boundaries with their offsets from the response start — stored as its JCS bytes,
//! so its address is also its canonical digest. Receipts name the three addresses (`seal.key`,
//! `seal.request_blob`, `seal.response_meta`); the [`Manifest`] lists a run's sealed calls in
//! order, signed by control.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalError, digest_without, to_canonical, write_str};

/// [`ResponseMeta::v`].
pub const RESPONSE_META: &str = "fleetforge.response/v1";
/// [`Manifest::schema`].
pub const MANIFEST: &str = "fleetforge.replay-manifest/v1";
/// [`Report::schema`].
pub const REPORT: &str = "fleetforge.replay-report/v1";

/// Response headers a seal keeps (what a client needs to read the body again). No other header
/// is ever sealed.
pub const RESPONSE_HEADERS: &[&str] = &["content-type", "content-encoding"];

/// A sealed response without its body: what a replay needs to serve it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseMeta {
    /// [`RESPONSE_META`].
    pub v: String,
    /// Status the upstream answered.
    pub status: u16,
    /// The [`RESPONSE_HEADERS`] the upstream sent, names lowercase.
    pub headers: BTreeMap<String, String>,
    /// SHA-256 (hex) of the body: its blob's address.
    pub body: String,
    /// Body length in bytes.
    pub bytes: u64,
    /// `[length, offset_ms]` of each chunk as it arrived, offsets in milliseconds from the
    /// response headers.
    pub chunks: Vec<[u64; 2]>,
}

impl ResponseMeta {
    /// The bytes the blob holds (JCS), whose SHA-256 is its address. Written member by member
    /// in JCS order (one per call on the proxy's request path); the same bytes as
    /// [`to_canonical`] of its JSON value (unit test).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        use std::io::Write as _;
        const MAX_SAFE: u64 = (1 << 53) - 1;
        let mut out = Vec::with_capacity(160 + self.chunks.len() * 12);
        let numbers = std::iter::once(self.bytes).chain(self.chunks.iter().flatten().copied());
        if let Some(n) = numbers.into_iter().find(|n| *n > MAX_SAFE) {
            return Err(CanonicalError::Number(n.to_string()));
        }
        out.extend_from_slice(b"{\"body\":");
        write_str(&self.body, &mut out);
        let _ = write!(out, ",\"bytes\":{},\"chunks\":[", self.bytes);
        for (i, [len, ms]) in self.chunks.iter().enumerate() {
            let _ = write!(out, "{}[{len},{ms}]", if i > 0 { "," } else { "" });
        }
        out.extend_from_slice(b"],\"headers\":{");
        // Header names are lowercase ASCII (or at least sorted by the map), where UTF-8 order is
        // UTF-16 order.
        if self.headers.keys().any(|k| !k.is_ascii()) {
            let value = serde_json::to_value(self).map_err(|e| CanonicalError::Number(e.to_string()))?;
            return to_canonical(&value);
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(name, &mut out);
            out.push(b':');
            write_str(value, &mut out);
        }
        let _ = write!(out, "}},\"status\":{},\"v\":", self.status);
        write_str(&self.v, &mut out);
        out.push(b'}');
        Ok(out)
    }
}

/// One sealed call in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestCall {
    /// Receipt id of the call.
    pub receipt: String,
    /// Step number on its proxy.
    pub step: u64,
    /// When the call started and ended (RFC 3339).
    pub started_at: String,
    /// When the call ended.
    pub ended_at: String,
    /// Method.
    pub method: String,
    /// Host.
    pub host: String,
    /// Path and query (credentials redacted).
    pub path: String,
    /// Request key (hex) and its scheme ([`crate::key::KEY_VERSION`]).
    pub key: String,
    /// Key scheme.
    pub key_version: String,
    /// Address of the sealed request body.
    pub request_blob: Option<String>,
    /// Address of the [`ResponseMeta`].
    pub response_meta: String,
    /// Address of the response body.
    pub response_digest: Option<String>,
    /// Status the client received.
    pub status: Option<u16>,
    /// Input + output tokens the call used, when known.
    pub tokens: Option<u64>,
}

/// Control's signature over a manifest: ed25519 by its capability root key, over the JCS form of
/// the manifest without `signature`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// `ed25519`.
    pub alg: String,
    /// Key id of the root key (as `GET /v1/keys` names it, `capability-root-N`).
    pub key_id: String,
    /// Signature, base64url without padding.
    pub value: String,
}

/// `GET /v1/runs/{id}/replay-manifest`: a run's sealed calls in the order they started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST`].
    pub schema: String,
    /// The run.
    pub run: String,
    /// Its tenant.
    pub tenant: String,
    /// When control wrote the manifest.
    pub generated_at: String,
    /// Sealed calls, by start time (then step).
    pub calls: Vec<ManifestCall>,
    /// Control's signature.
    pub signature: Option<ManifestSignature>,
}

impl Manifest {
    /// Checks control's signature with `public_key` (the raw ed25519 key `GET /v1/keys` lists
    /// under the signature's key id); says what is wrong otherwise.
    pub fn verify(&self, public_key: &[u8]) -> Result<(), String> {
        use base64::Engine as _;
        let signature = self.signature.as_ref().ok_or("it is not signed")?;
        if signature.alg != "ed25519" {
            return Err(format!("its signature algorithm {:?} is not ed25519", signature.alg));
        }
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature.value.trim_end_matches('='))
            .map_err(|_| "its signature is not base64url".to_owned())?;
        let digest = self.signing_digest().map_err(|e| e.to_string())?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
            .verify(&digest, &value)
            .map_err(|_| format!("its signature does not verify with key {}", signature.key_id))
    }

    /// SHA-256 of the JCS form of the manifest without its `signature`: what control signs.
    pub fn signing_digest(&self) -> Result<[u8; 32], CanonicalError> {
        let value = serde_json::to_value(self).map_err(|e| CanonicalError::Number(e.to_string()))?;
        match value {
            serde_json::Value::Object(map) => digest_without(&map, "signature"),
            _ => Err(CanonicalError::Number("manifest is not an object".into())),
        }
    }
}

/// A strict miss in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// Receipt of the refused call (in the replay run).
    pub receipt: String,
    /// Method and path of the refused call.
    pub call: String,
    /// Receipt of the most similar sealed request of the original run.
    pub closest: Option<String>,
}

/// `GET /v1/runs/{id}/replay-report`: how a replay run compared with the run it replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT`].
    pub schema: String,
    /// The replay run.
    pub run: String,
    /// The run it replayed.
    pub of: String,
    /// Whether the replay was strict.
    pub strict: bool,
    /// Calls served from a seal.
    pub matched: u64,
    /// Calls with no seal to serve (strict: refused with 599; otherwise forwarded and recorded).
    pub missed: u64,
    /// The misses.
    pub misses: Vec<Miss>,
    /// Sealed calls of the original run that no replayed call used (receipt ids).
    pub unused: Vec<String>,
    /// Input + output tokens of the original run's sealed calls.
    pub tokens_original: u64,
    /// Input + output tokens of the replay run's calls.
    pub tokens_replay: u64,
    /// `tokens_replay - tokens_original`.
    pub token_drift: i64,
    /// `identical` (nothing missed, nothing unused, no drift), else `drifted`.
    pub verdict: String,
}

#[cfg(test)]
mod tests {
    use super::{RESPONSE_META, ResponseMeta};

    #[test]
    fn a_response_envelope_is_written_in_its_canonical_form() {
        let meta = ResponseMeta {
            v: RESPONSE_META.into(),
            status: 200,
            headers: [
                ("content-type".to_owned(), "text/event-stream; charset=\"utf-8\"".to_owned()),
                ("content-encoding".to_owned(), "gzip".to_owned()),
            ]
            .into_iter()
            .collect(),
            body: "ab".repeat(32),
            bytes: 1234,
            chunks: vec![[10, 0], [200, 15], [1024, 31]],
        };
        let generic = crate::canonical::to_canonical(&serde_json::to_value(&meta).unwrap()).unwrap();
        assert_eq!(String::from_utf8(meta.to_bytes().unwrap()).unwrap(), String::from_utf8(generic).unwrap());
        let empty = ResponseMeta { headers: Default::default(), chunks: vec![], ..meta };
        let generic = crate::canonical::to_canonical(&serde_json::to_value(&empty).unwrap()).unwrap();
        assert_eq!(empty.to_bytes().unwrap(), generic);
    }
}
