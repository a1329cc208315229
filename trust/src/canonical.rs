//! Canonical JSON (RFC 8785, JCS) for the values receipts contain, and SHA-256 over it.
//!
//! A receipt's hash must come out the same wherever it is recomputed — in the proxy that wrote
//! it, in control on ingest, in an auditor's script years later — whatever whitespace or key
//! order the JSON was stored with. JCS fixes both: object members sorted by the UTF-16 code units
//! of their names, no insignificant whitespace, strings escaped as ECMAScript's `JSON.stringify`
//! does (which is what `serde_json` writes), and numbers in ECMAScript form. Receipts carry
//! only integers, so non-integer numbers are refused rather than formatted: a float in evidence
//! is a bug.

use std::cmp::Ordering;

use serde_json::Value;

/// Why a value has no canonical form here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// The value holds a number that is not an integer in the IEEE-754 safe range.
    #[error("non-integer or out-of-range number {0} (receipts carry integers only)")]
    Number(String),
}

/// Largest integer JCS can represent exactly (2^53 - 1).
const MAX_SAFE: u64 = (1 << 53) - 1;

/// Writes the JCS form of `value`.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(1024);
    write(value, &mut out)?;
    Ok(out)
}

/// SHA-256 of the JCS form of `value`.
pub fn digest(value: &Value) -> Result<[u8; 32], CanonicalError> {
    Ok(sha256(&to_canonical(value)?))
}

/// SHA-256 of the JCS form of `object` with its top-level member `skip` left out (a receipt's
/// hash is that of the receipt without its `signature`), without copying the object.
pub fn digest_without(object: &serde_json::Map<String, Value>, skip: &str) -> Result<[u8; 32], CanonicalError> {
    let mut out = Vec::with_capacity(1024);
    write_object(object.iter().filter(|(k, _)| k.as_str() != skip), &mut out)?;
    Ok(sha256(&out))
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parses 64 hex characters into 32 bytes.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

fn utf16_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let ok = n
                .as_u64()
                .filter(|v| *v <= MAX_SAFE)
                .map(|v| v.to_string())
                .or_else(|| n.as_i64().filter(|v| v.unsigned_abs() <= MAX_SAFE).map(|v| v.to_string()));
            out.extend_from_slice(ok.ok_or_else(|| CanonicalError::Number(n.to_string()))?.as_bytes());
        }
        // serde_json escapes exactly as JSON.stringify does: \b \f \n \r \t \" \\ and \u00XX
        // (lowercase) for other control characters, everything else literal.
        Value::String(s) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map.iter(), out)?,
    }
    Ok(())
}

fn write_object<'a>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    let mut entries: Vec<(&String, &Value)> = members.collect();
    entries.sort_by(|a, b| utf16_cmp(a.0, b.0));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        write(v, out)?;
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{digest_without, hex, sha256, to_canonical, unhex32};

    #[test]
    fn digest_without_equals_digest_of_the_object_minus_the_member() {
        let full = json!({"b": [1, {"z": null, "a": "é"}], "signature": {"sig": "x"}, "a": true});
        let mut expected = full.clone();
        expected.as_object_mut().unwrap().remove("signature");
        assert_eq!(
            digest_without(full.as_object().unwrap(), "signature").unwrap(),
            sha256(&to_canonical(&expected).unwrap())
        );
        assert_ne!(digest_without(full.as_object().unwrap(), "a").unwrap(), sha256(&to_canonical(&expected).unwrap()));
    }

    fn canon(v: serde_json::Value) -> String {
        String::from_utf8(to_canonical(&v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_by_utf16_and_drops_whitespace() {
        assert_eq!(
            canon(json!({"b": 1, "a": [true, null, "x"], "A": {"z": 0, "y": -3}})),
            r#"{"A":{"y":-3,"z":0},"a":[true,null,"x"],"b":1}"#
        );
        // RFC 8785 §3.2.3: U+FB33 sorts after U+1F600 (a surrogate pair, D83D DE00) in UTF-16
        // order although it sorts before it in UTF-8 byte order (EF.. < F0..).
        let v = json!({"\u{fb33}": "dalet", "\u{1f600}": "emoji", "\r": "cr", "1": "one"});
        assert_eq!(canon(v), "{\"\\r\":\"cr\",\"1\":\"one\",\"\u{1f600}\":\"emoji\",\"\u{fb33}\":\"dalet\"}");
    }

    #[test]
    fn escapes_strings_like_json_stringify() {
        assert_eq!(canon(json!("a\"b\\c\n\u{1}/é\u{2028}")), "\"a\\\"b\\\\c\\n\\u0001/é\u{2028}\"");
    }

    #[test]
    fn refuses_floats_and_unsafe_integers() {
        assert!(to_canonical(&json!(1.5)).is_err());
        assert!(to_canonical(&json!(9007199254740992u64)).is_err());
        assert_eq!(canon(json!(9007199254740991u64)), "9007199254740991");
    }

    #[test]
    fn hex_round_trips() {
        let d = sha256(b"abc");
        assert_eq!(hex(&d), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(unhex32(&hex(&d)), Some(d));
        assert_eq!(unhex32("zz"), None);
    }
}
