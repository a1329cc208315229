//! W3C Verifiable Credentials secured with a Data Integrity proof of cryptosuite `eddsa-jcs-2022`.
//!
//! FleetForge's own evidence is signed in receipt batches ([`crate::sign`]); this module lets it
//! also speak the W3C format, so any Data Integrity verifier can check a credential we issue
//! without knowing our receipt schema. It implements "Data Integrity EdDSA Cryptosuites v1.0"
//! (<https://www.w3.org/TR/vc-di-eddsa/>, §3.3) for issuers named by `did:key` ed25519 keys:
//!
//! - the proof configuration is the proof options (`type`, `cryptosuite`, `created`,
//!   `verificationMethod`, `proofPurpose`) plus the document's `@context`;
//! - hash data = SHA-256(JCS(proof configuration)) ‖ SHA-256(JCS(document without `proof`));
//! - `proofValue` = `z` + base58btc(ed25519 signature over the hash data).
//!
//! Invariants: a proof is only ever made or accepted for `DataIntegrityProof` /
//! `eddsa-jcs-2022` / `assertionMethod`, and the key is always resolved from the proof's own
//! `verificationMethod` — never taken from the caller — so a credential verifies against exactly
//! the key it names. A `did:key` carries its key in the identifier, so resolving needs no
//! network. JCS is [`crate::canonical`]'s, which refuses non-integer numbers: a credential holding
//! a float cannot be signed or verified here. Proof sets and chains (an array `proof`) are not
//! supported and are refused, not ignored.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::canonical::{CanonicalError, hex, sha256, to_canonical};

/// The proof `type` this module makes and accepts.
pub const PROOF_TYPE: &str = "DataIntegrityProof";

/// The Data Integrity cryptosuite this module makes and accepts.
pub const CRYPTOSUITE: &str = "eddsa-jcs-2022";

/// The proof purpose this module makes and accepts: the issuer asserts the credential's claims.
pub const PROOF_PURPOSE: &str = "assertionMethod";

/// The multicodec of an ed25519 public key (`ed25519-pub`), as an unsigned varint: `0xed 0x01`.
const ED25519_PUB: [u8; 2] = [0xed, 0x01];

/// The longest base58btc text decoded from a proof (a `proofValue` or a `did:key`). A 64-byte
/// signature takes at most 88 characters and an ed25519 did:key key 47; the cap keeps a verifier's
/// quadratic base58 decoding cheap whatever a forged credential holds.
const MAX_BASE58_LEN: usize = 128;

/// The Bitcoin base58 alphabet.
const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Why a credential could not be signed or verified, or a key not encoded or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VcError {
    /// A base58btc string holds a character outside the Bitcoin alphabet.
    #[error("invalid base58btc character {found:?} at position {index}")]
    Base58 {
        /// The offending character.
        found: char,
        /// Its position, in characters.
        index: usize,
    },
    /// A multibase value does not start with `z` (base58btc), the only base this module reads.
    #[error("multibase value {value:?} is not base58btc (it must start with 'z')")]
    NotBase58Btc {
        /// The rejected value.
        value: String,
    },
    /// A base58btc value in a proof is longer than any valid one.
    #[error("{what} is {len} characters long; at most {MAX_BASE58_LEN} are accepted")]
    TooLong {
        /// Which value.
        what: &'static str,
        /// Its length, in bytes.
        len: usize,
    },
    /// A verification method is not a `did:key` URL.
    #[error("verification method {value:?} is not a did:key (only did:key issuers are supported)")]
    NotDidKey {
        /// The rejected verification method.
        value: String,
    },
    /// A `did:key` URL's fragment names another key than the DID itself.
    #[error("verification method {value:?}: the fragment must repeat the did:key's key")]
    FragmentMismatch {
        /// The rejected verification method.
        value: String,
    },
    /// A `did:key` holds a key of another type than ed25519.
    #[error("did:key {value:?} holds multicodec {codec:#x}; only ed25519-pub (0xed) is supported")]
    UnsupportedMulticodec {
        /// The multicodec the key declares (`u64::MAX` when its varint is malformed).
        codec: u64,
        /// The rejected did:key.
        value: String,
    },
    /// A `did:key` ed25519 key is not 32 bytes long.
    #[error("did:key {value:?} holds a {len}-byte ed25519 key; it must be 32 bytes")]
    KeyLength {
        /// Length of the key found.
        len: usize,
        /// The rejected did:key.
        value: String,
    },
    /// The document, or its proof, is not a JSON object.
    #[error("{what} is not a JSON object")]
    NotAnObject {
        /// What was expected to be an object.
        what: &'static str,
    },
    /// The document to sign already carries a proof.
    #[error("the document already has a proof; proof sets and chains are not supported")]
    AlreadySigned,
    /// The document to verify has no proof.
    #[error("the document has no proof")]
    NoProof,
    /// The document's `proof` is an array (a proof set or chain).
    #[error("the document's proof is an array (a proof set or chain), which is not supported")]
    ProofSet,
    /// A required proof member is missing or not a string.
    #[error("proof member {field:?} is missing or not a string")]
    MissingField {
        /// The member's name.
        field: &'static str,
    },
    /// A proof member has another value than this module makes and accepts.
    #[error("proof member {field:?} is {found:?}; expected {expected:?}")]
    WrongValue {
        /// The member's name.
        field: &'static str,
        /// The only accepted value.
        expected: &'static str,
        /// The value found.
        found: String,
    },
    /// The proof's `created` is not an XML Schema `dateTime`.
    #[error("proof created {value:?} is not an XML Schema dateTime (like 2023-02-24T23:36:38Z)")]
    BadCreated {
        /// The rejected value.
        value: String,
    },
    /// The document's `@context` does not start with the proof's `@context`.
    #[error("document @context {document} does not start with the proof's @context {proof}")]
    ContextMismatch {
        /// The document's `@context`, as JSON.
        document: String,
        /// The proof's `@context`, as JSON.
        proof: String,
    },
    /// The document or proof cannot be canonicalized.
    #[error("cannot canonicalize: {0}")]
    Canonical(#[from] CanonicalError),
    /// The signing key is not the key the verification method names.
    #[error("the signing key (public key {key}) is not the key of verification method {verification_method:?}")]
    KeyMismatch {
        /// The verification method given.
        verification_method: String,
        /// The signing key's public key, in hex.
        key: String,
    },
    /// The decoded `proofValue` is not a 64-byte ed25519 signature.
    #[error("proofValue decodes to {len} bytes; an ed25519 signature is 64")]
    SignatureLength {
        /// Length of the decoded value.
        len: usize,
    },
    /// The signature does not verify: the credential or its proof was changed, or signed by
    /// another key.
    #[error("the signature does not verify with the key of {verification_method:?}")]
    BadSignature {
        /// The verification method whose key was used.
        verification_method: String,
    },
}

/// Encodes `bytes` in base58btc (Bitcoin alphabet); each leading zero byte becomes a `1`.
pub fn base58_encode(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    // Base-58 digits, least significant first; each input byte multiplies the number by 256.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for byte in &bytes[zeros..] {
        let mut carry = u32::from(*byte);
        for digit in &mut digits {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(digits.iter().rev().map(|d| char::from(ALPHABET[usize::from(*d)])));
    out
}

/// Decodes a base58btc (Bitcoin alphabet) string; each leading `1` becomes a zero byte.
pub fn base58_decode(s: &str) -> Result<Vec<u8>, VcError> {
    let zeros = s.bytes().take_while(|c| *c == b'1').count();
    // Bytes, least significant first; each input digit multiplies the number by 58.
    let mut bytes: Vec<u8> = Vec::with_capacity(s.len() * 733 / 1000 + 1);
    for (index, found) in s.chars().enumerate().skip(zeros) {
        let digit = ALPHABET.iter().position(|a| char::from(*a) == found).ok_or(VcError::Base58 { found, index })?;
        let mut carry = digit as u32;
        for byte in &mut bytes {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0u8; zeros];
    out.extend(bytes.iter().rev());
    Ok(out)
}

/// The Multikey `publicKeyMultibase` of an ed25519 public key: `z` + base58btc(`0xed 0x01` ‖
/// key), which always starts `z6Mk`.
pub fn public_key_multibase(public_key: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(ED25519_PUB.len() + public_key.len());
    bytes.extend_from_slice(&ED25519_PUB);
    bytes.extend_from_slice(public_key);
    format!("z{}", base58_encode(&bytes))
}

/// The `did:key` of an ed25519 public key: `did:key:z6Mk…`.
pub fn did_key(public_key: &[u8; 32]) -> String {
    format!("did:key:{}", public_key_multibase(public_key))
}

/// The verification method id of an ed25519 `did:key`: `did:key:z6Mk…#z6Mk…`, the value a
/// proof's `verificationMethod` carries.
pub fn did_key_verification_method(public_key: &[u8; 32]) -> String {
    let multibase = public_key_multibase(public_key);
    format!("did:key:{multibase}#{multibase}")
}

/// The ed25519 public key a `did:key` verification method names.
///
/// Accepts `did:key:z6Mk…#z6Mk…` (the fragment must repeat the key) and the bare DID
/// `did:key:z6Mk…`. Any other DID method, multibase or multicodec is refused.
pub fn resolve_did_key(verification_method: &str) -> Result<[u8; 32], VcError> {
    let value = || verification_method.to_owned();
    let id = verification_method.strip_prefix("did:key:").ok_or_else(|| VcError::NotDidKey { value: value() })?;
    let multibase = match id.split_once('#') {
        Some((key, fragment)) if key == fragment => key,
        Some(_) => return Err(VcError::FragmentMismatch { value: value() }),
        None => id,
    };
    let encoded = multibase.strip_prefix('z').ok_or_else(|| VcError::NotBase58Btc { value: multibase.to_owned() })?;
    if encoded.len() > MAX_BASE58_LEN {
        return Err(VcError::TooLong { what: "the did:key", len: encoded.len() });
    }
    let bytes = base58_decode(encoded)?;
    let Some(key) = bytes.strip_prefix(&ED25519_PUB[..]) else {
        return Err(VcError::UnsupportedMulticodec { codec: read_varint(&bytes), value: value() });
    };
    <[u8; 32]>::try_from(key).map_err(|_| VcError::KeyLength { len: key.len(), value: value() })
}

/// Reads the unsigned varint at the start of `bytes` (a multicodec), or `u64::MAX` if it is
/// malformed. Only used to name a refused codec in an error.
fn read_varint(bytes: &[u8]) -> u64 {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(9).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return value;
        }
    }
    u64::MAX
}

/// Signs `unsigned` (a credential without a proof) and returns it with an `eddsa-jcs-2022`
/// `DataIntegrityProof` attached.
///
/// `verification_method` must be the `did:key` verification method of `key` (see
/// [`did_key_verification_method`]), so that the credential verifies; `created` is the proof's
/// XML Schema `dateTime`, e.g. `2023-02-24T23:36:38Z`. Build `key` with
/// [`Ed25519KeyPair::from_pkcs8`] from a stored key or [`Ed25519KeyPair::from_seed_unchecked`]
/// from a 32-byte seed; ed25519 is deterministic, so the same inputs always give the same proof.
pub fn sign_credential(
    unsigned: &Value,
    key: &Ed25519KeyPair,
    verification_method: &str,
    created: &str,
) -> Result<Value, VcError> {
    let document = unsigned.as_object().ok_or(VcError::NotAnObject { what: "the credential" })?;
    if document.contains_key("proof") {
        return Err(VcError::AlreadySigned);
    }
    // Refuse a proof no one could verify before signing it.
    if resolve_did_key(verification_method)?.as_slice() != key.public_key().as_ref() {
        return Err(VcError::KeyMismatch {
            verification_method: verification_method.to_owned(),
            key: hex(key.public_key().as_ref()),
        });
    }
    if !is_xsd_datetime(created) {
        return Err(VcError::BadCreated { value: created.to_owned() });
    }

    // Create Proof (§3.3.1): the proof options, plus the document's @context when it has one.
    let mut proof = Map::new();
    proof.insert("type".into(), PROOF_TYPE.into());
    proof.insert("cryptosuite".into(), CRYPTOSUITE.into());
    proof.insert("created".into(), created.into());
    proof.insert("verificationMethod".into(), verification_method.into());
    proof.insert("proofPurpose".into(), PROOF_PURPOSE.into());
    if let Some(context) = document.get("@context") {
        proof.insert("@context".into(), context.clone());
    }
    let signature = key.sign(&hash_data(document, &proof)?);
    proof.insert("proofValue".into(), format!("z{}", base58_encode(signature.as_ref())).into());

    let mut signed = document.clone();
    signed.insert("proof".into(), Value::Object(proof));
    Ok(Value::Object(signed))
}

/// Verifies the `eddsa-jcs-2022` proof of `signed` against the `did:key` its
/// `verificationMethod` names.
///
/// Follows Verify Proof (§3.3.2): the proof must be a single `DataIntegrityProof` of this
/// cryptosuite with purpose `assertionMethod`; when the proof carries an `@context`, the
/// document's `@context` must start with it and it replaces the document's for hashing.
pub fn verify_credential(signed: &Value) -> Result<(), VcError> {
    let document = signed.as_object().ok_or(VcError::NotAnObject { what: "the credential" })?;
    let mut options = match document.get("proof") {
        None => return Err(VcError::NoProof),
        Some(Value::Array(_)) => return Err(VcError::ProofSet),
        Some(Value::Object(proof)) => proof.clone(),
        Some(_) => return Err(VcError::NotAnObject { what: "the credential's proof" }),
    };
    let proof_value = match options.remove("proofValue") {
        Some(Value::String(s)) => s,
        _ => return Err(VcError::MissingField { field: "proofValue" }),
    };
    check_member(&options, "type", PROOF_TYPE)?;
    check_member(&options, "cryptosuite", CRYPTOSUITE)?;
    check_member(&options, "proofPurpose", PROOF_PURPOSE)?;
    match options.get("created") {
        None => {}
        Some(Value::String(created)) if is_xsd_datetime(created) => {}
        Some(other) => return Err(VcError::BadCreated { value: other.to_string() }),
    }
    let verification_method = string_member(&options, "verificationMethod")?;
    let public_key = resolve_did_key(verification_method)?;

    let encoded = proof_value.strip_prefix('z').ok_or_else(|| VcError::NotBase58Btc { value: proof_value.clone() })?;
    if encoded.len() > MAX_BASE58_LEN {
        return Err(VcError::TooLong { what: "proofValue", len: encoded.len() });
    }
    let signature = base58_decode(encoded)?;
    if signature.len() != 64 {
        return Err(VcError::SignatureLength { len: signature.len() });
    }

    let mut unsecured = document.clone();
    unsecured.remove("proof");
    if let Some(proof_context) = options.get("@context") {
        let document_context = document.get("@context").unwrap_or(&Value::Null);
        if !starts_with(document_context, proof_context) {
            return Err(VcError::ContextMismatch {
                document: document_context.to_string(),
                proof: proof_context.to_string(),
            });
        }
        unsecured.insert("@context".into(), proof_context.clone());
    }

    let message = hash_data(&unsecured, &options)?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&message, &signature)
        .map_err(|_| VcError::BadSignature { verification_method: verification_method.to_owned() })
}

/// Hashing (§3.3.4) over the Transformation (§3.3.3) of `document` and the Proof Configuration
/// (§3.3.5) `proof_config`: SHA-256(JCS(proof config)) ‖ SHA-256(JCS(document)), 64 bytes.
fn hash_data(document: &Map<String, Value>, proof_config: &Map<String, Value>) -> Result<[u8; 64], VcError> {
    let config_hash = sha256(&to_canonical(&Value::Object(proof_config.clone()))?);
    let document_hash = sha256(&to_canonical(&Value::Object(document.clone()))?);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&config_hash);
    out[32..].copy_from_slice(&document_hash);
    Ok(out)
}

fn string_member<'a>(proof: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, VcError> {
    proof.get(field).and_then(Value::as_str).ok_or(VcError::MissingField { field })
}

fn check_member(proof: &Map<String, Value>, field: &'static str, expected: &'static str) -> Result<(), VcError> {
    let found = string_member(proof, field)?;
    if found == expected { Ok(()) } else { Err(VcError::WrongValue { field, expected, found: found.to_owned() }) }
}

/// Whether `document`'s `@context` starts with all of `proof`'s values, in the same order (a
/// single string counts as a one-item list).
fn starts_with(document: &Value, proof: &Value) -> bool {
    fn items(context: &Value) -> &[Value] {
        match context {
            Value::Array(items) => items,
            Value::Null => &[],
            single => std::slice::from_ref(single),
        }
    }
    items(document).starts_with(items(proof))
}

/// Whether `s` is an XML Schema 1.1 `dateTime` (`YYYY-MM-DDThh:mm:ss[.s+][Z|±hh:mm]`), with a
/// four-digit year and a day that exists in its month.
fn is_xsd_datetime(s: &str) -> bool {
    let number = |from: usize, len: usize| -> Option<u32> {
        let digits = s.get(from..from + len)?;
        if digits.bytes().all(|c| c.is_ascii_digit()) { digits.parse().ok() } else { None }
    };
    let sep = |at: usize, c: u8| s.as_bytes().get(at) == Some(&c);
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (number(0, 4), number(5, 2), number(8, 2), number(11, 2), number(14, 2), number(17, 2))
    else {
        return false;
    };
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    let mut rest = &s[19..];
    let mut fraction_is_zero = true;
    if let Some(after_dot) = rest.strip_prefix('.') {
        let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return false;
        }
        fraction_is_zero = after_dot[..len].bytes().all(|c| c == b'0');
        rest = &after_dot[len..];
    }
    // 24:00:00 is allowed, as the first instant of the next day.
    let time_ok =
        (hour < 24 && minute < 60 && second < 60) || (hour == 24 && minute == 0 && second == 0 && fraction_is_zero);
    let zone_ok = match rest.as_bytes() {
        [] | [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) => {
            let hours = u32::from(h1 - b'0') * 10 + u32::from(h2 - b'0');
            let minutes = u32::from(m1 - b'0') * 10 + u32::from(m2 - b'0');
            minutes < 60 && (hours < 14 || (hours == 14 && minutes == 0))
        }
        _ => false,
    };
    (1..=month_days).contains(&day) && time_ok && zone_ok
}

#[cfg(test)]
mod tests;
