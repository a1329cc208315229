//! Canonical JSON (RFC 8785, JCS) for the values receipts contain, and SHA-256 over it.
//!
//! A receipt's hash must come out the same wherever it is recomputed — in the proxy that wrote
//! it, in control on ingest, in an auditor's script years later — whatever whitespace or key
//! order the JSON was stored with. JCS fixes both: object members sorted by the UTF-16 code units
//! of their names, no insignificant whitespace, strings escaped as ECMAScript's `JSON.stringify`
//! does (which is what `serde_json` writes), and numbers in ECMAScript form. Receipts carry
//! only integers, so [`to_canonical`] refuses non-integer numbers rather than formatting them: a
//! float in evidence is a bug. Request bodies (the replay key, [`crate::key`]) do carry floats
//! (`"temperature": 0.7`): [`to_canonical_any`] writes them in ECMAScript's shortest form, as
//! RFC 8785 §3.2.2.3 asks.

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
    write(value, &mut out, Numbers::Integers)?;
    Ok(out)
}

/// Writes the JCS form of `value`, non-integer numbers included (ECMAScript form); fails only on
/// a number JSON cannot carry (never produced by a parser).
pub fn to_canonical_any(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    write(value, out, Numbers::Any)
}

/// Which numbers a canonical form accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbers {
    /// Integers in the IEEE-754 safe range only (receipts).
    Integers,
    /// Any finite number, in ECMAScript form (request bodies).
    Any,
}

/// The ECMAScript `Number.prototype.toString` form of a finite `x` (RFC 8785 §3.2.2.3), from
/// Rust's shortest round-trip digits.
fn es_number(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        return Some("0".into());
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = i32::try_from(digits.len()).ok()?;
    let n = exp + 1;
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat(usize::try_from(n - k).ok()?))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(usize::try_from(n).ok()?);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat(usize::try_from(-n).ok()?))
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let e = n - 1;
        format!("{first}{dot}e{}{}", if e < 0 { "-" } else { "+" }, e.abs())
    };
    Some(format!("{sign}{body}"))
}

/// SHA-256 of the JCS form of `value`.
pub fn digest(value: &Value) -> Result<[u8; 32], CanonicalError> {
    Ok(sha256(&to_canonical(value)?))
}

/// SHA-256 of the JCS form of `object` with its top-level member `skip` left out (a receipt's
/// hash is that of the receipt without its `signature`), without copying the object.
pub fn digest_without(object: &serde_json::Map<String, Value>, skip: &str) -> Result<[u8; 32], CanonicalError> {
    let mut out = Vec::with_capacity(1024);
    write_object(object.iter().filter(|(k, _)| k.as_str() != skip), &mut out, Numbers::Integers)?;
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

fn write(value: &Value, out: &mut Vec<u8>, numbers: Numbers) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out, numbers)?,
        // serde_json escapes exactly as JSON.stringify does: \b \f \n \r \t \" \\ and \u00XX
        // (lowercase) for other control characters, everything else literal.
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out, numbers)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map.iter(), out, numbers)?,
    }
    Ok(())
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>, numbers: Numbers) -> Result<(), CanonicalError> {
    let ok = n
        .as_u64()
        .filter(|v| *v <= MAX_SAFE)
        .map(|v| v.to_string())
        .or_else(|| n.as_i64().filter(|v| v.unsigned_abs() <= MAX_SAFE).map(|v| v.to_string()))
        .or_else(|| match numbers {
            Numbers::Any => n.as_f64().and_then(es_number),
            Numbers::Integers => None,
        });
    out.extend_from_slice(ok.ok_or_else(|| CanonicalError::Number(n.to_string()))?.as_bytes());
    Ok(())
}

/// Writes the JCS form of the JSON text `json` (any numbers, as [`to_canonical_any`] does) without
/// building a [`Value`]: strings without escapes are borrowed from the input and objects are
/// lists sorted once, so a request body costs no allocation per member. `None` when `json` is
/// not JSON. Output is byte for byte that of [`to_canonical_any`] on the parsed value (a name
/// repeated in one object keeps its last value, as `serde_json` does).
pub fn json_to_canonical(json: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let node: Node<'_> = serde_json::from_slice(json).ok()?;
    write_node(&node, out).ok()
}

/// A parsed JSON value borrowing its strings from the input where it can.
enum Node<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(std::borrow::Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(std::borrow::Cow<'a, str>, Node<'a>)>),
}

/// A string, borrowed when the input holds it without escapes.
struct Text<'a>(std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Node<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Node::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                serde_json::Number::from_f64(v).map(Node::Number).ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Node::String(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Node::String(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Node::String(std::borrow::Cow::Owned(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((Text(name), value)) = map.next_entry::<Text<'de>, Node<'de>>()? {
                    members.push((name, value));
                }
                Ok(Node::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

fn write_node(node: &Node<'_>, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match node {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(true) => out.extend_from_slice(b"true"),
        Node::Bool(false) => out.extend_from_slice(b"false"),
        Node::Number(n) => write_number(n, out, Numbers::Any)?,
        Node::String(s) => write_text(s, out),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(item, out)?;
            }
            out.push(b']');
        }
        Node::Object(members) => {
            let mut order: Vec<&(std::borrow::Cow<'_, str>, Node<'_>)> = members.iter().collect();
            // Stable: of a repeated name, the last one written below is the last one parsed.
            order.sort_by(|a, b| utf16_cmp(&a.0, &b.0));
            out.push(b'{');
            let mut first = true;
            for (i, (name, value)) in order.iter().map(|m| (&m.0, &m.1)).enumerate() {
                if order.get(i + 1).is_some_and(|next| next.0 == *name) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_text(name, out);
                out.push(b':');
                write_node(value, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A string parsed from JSON text: one borrowed from the input had no escape sequence there, so
/// it holds no quote, backslash or control character and is written as is.
// The `Cow` itself is the point: which variant it is says whether the input had escapes.
#[allow(clippy::ptr_arg)]
fn write_text(s: &std::borrow::Cow<'_, str>, out: &mut Vec<u8>) {
    match s {
        std::borrow::Cow::Borrowed(s) => {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        std::borrow::Cow::Owned(s) => write_str(s, out),
    }
}

/// A JSON string: as is when nothing in it needs escaping (the common case), else as serde_json
/// escapes it (as `JSON.stringify` does).
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_object<'a>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
    numbers: Numbers,
) -> Result<(), CanonicalError> {
    let mut entries: Vec<(&String, &Value)> = members.collect();
    entries.sort_by(|a, b| utf16_cmp(a.0, b.0));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(k, out);
        out.push(b':');
        write(v, out, numbers)?;
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{digest_without, es_number, hex, json_to_canonical, sha256, to_canonical, to_canonical_any, unhex32};

    #[test]
    fn json_text_is_canonicalized_exactly_as_its_parsed_value() {
        let bodies = [
            r#"{"model":"gpt-4o","temperature":0.7,"messages":[{"role":"user","content":"hi \"there\"\n\u00e9\ud83d\ude00"}]}"#,
            r#"{ "b" : [1, -2, 3.5e10, 1e-7, 0.1, 100, 12345678901234567890], "a" : {"\u20ac": 1, "\ud83d\ude00": 2, "\ufb33": 3}, "z": null, "y": true }"#,
            r#"{"dup": 1, "x": [], "dup": {"k": "last"}}"#,
            r#"[{"é": "\t\u0001"}, "plain", false]"#,
            r#""just a string""#,
            "42",
        ];
        for body in bodies {
            let value: serde_json::Value = serde_json::from_str(body).unwrap();
            let mut expected = Vec::new();
            to_canonical_any(&value, &mut expected).unwrap();
            let mut fast = Vec::new();
            json_to_canonical(body.as_bytes(), &mut fast).unwrap();
            assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(expected).unwrap(), "{body}");
        }
        assert!(json_to_canonical(b"{not json", &mut Vec::new()).is_none());
    }

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
    fn any_numbers_take_the_ecmascript_form() {
        // RFC 8785 Appendix B and ECMAScript's Number::toString.
        for (x, es) in [
            (0.7, "0.7"),
            (1.0, "1"),
            (-0.0, "0"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123.456, "123.456"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (-2.5e-9, "-2.5e-9"),
            (4.5e300, "4.5e+300"),
            (333333333.3333333, "333333333.3333333"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(es_number(x).as_deref(), Some(es), "{x}");
        }
        let mut out = Vec::new();
        to_canonical_any(&json!({"t": 0.7, "n": 3, "m": [1.5e-7]}), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"m":[1.5e-7],"n":3,"t":0.7}"#);
    }

    #[test]
    fn hex_round_trips() {
        let d = sha256(b"abc");
        assert_eq!(hex(&d), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(unhex32(&hex(&d)), Some(d));
        assert_eq!(unhex32("zz"), None);
    }
}
