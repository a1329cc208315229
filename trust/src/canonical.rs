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
/// not JSON (exactly the texts `serde_json::from_slice` refuses). Output is byte for byte that of [`to_canonical_any`] on the parsed value (a name
/// repeated in one object keeps its last value, as `serde_json` does).
pub fn json_to_canonical(json: &[u8], out: &mut Vec<u8>) -> Option<()> {
    // UTF-8 is checked once for the whole text, so strings are sliced from it without a check each.
    let text = std::str::from_utf8(json).ok()?;
    let mut parser = Parser { text, at: 0 };
    parser.skip_ws();
    let node = parser.value(MAX_DEPTH)?;
    parser.skip_ws();
    if parser.at != text.len() {
        return None;
    }
    write_node(&node, out).ok()
}

/// Nesting `json_to_canonical` accepts, as `serde_json` does (its recursion limit).
const MAX_DEPTH: usize = 128;

/// A parsed JSON value borrowing its strings from the input where it can.
enum Node<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(std::borrow::Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(std::borrow::Cow<'a, str>, Node<'a>)>),
}

/// The index of the first `"`, `\\` or control character at or after `at` (`bytes.len()` when
/// none): eight bytes at a time while none of them can be one.
fn string_end(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = bytes.get(at..at + 8) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_le_bytes(eight);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // A zero byte in `quote` or `backslash`, or a byte under 0x20 in `x`, sets its high bit
        // here (never missed; a false alarm only hands over to the exact loop below).
        let hit = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x);
        if hit & HIGH != 0 {
            break;
        }
        at += 8;
    }
    while let Some(b) = bytes.get(at) {
        if matches!(b, b'"' | b'\\' | 0..=0x1f) {
            break;
        }
        at += 1;
    }
    at
}

/// A JSON parser over validated UTF-8 text, into [`Node`]s: it accepts exactly what
/// `serde_json::from_slice` accepts (RFC 8259, nesting up to [`MAX_DEPTH`], no lone surrogate
/// escapes) and reads numbers as it does.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.bytes().get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &str, node: Node<'a>) -> Option<Node<'a>> {
        self.bytes()[self.at..].starts_with(word.as_bytes()).then(|| {
            self.at += word.len();
            node
        })
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        match *self.bytes().get(self.at)? {
            b'{' => {
                let depth = depth.checked_sub(1).filter(|d| *d > 0)?;
                self.at += 1;
                let mut members = Vec::new();
                self.skip_ws();
                if self.eat(b'}').is_some() {
                    return Some(Node::Object(members));
                }
                loop {
                    self.skip_ws();
                    let name = self.string()?;
                    self.skip_ws();
                    self.eat(b':')?;
                    self.skip_ws();
                    members.push((name, self.value(depth)?));
                    self.skip_ws();
                    if self.eat(b',').is_none() {
                        self.eat(b'}')?;
                        return Some(Node::Object(members));
                    }
                }
            }
            b'[' => {
                let depth = depth.checked_sub(1).filter(|d| *d > 0)?;
                self.at += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.eat(b']').is_some() {
                    return Some(Node::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(depth)?);
                    self.skip_ws();
                    if self.eat(b',').is_none() {
                        self.eat(b']')?;
                        return Some(Node::Array(items));
                    }
                }
            }
            b'"' => self.string().map(Node::String),
            b't' => self.literal("true", Node::Bool(true)),
            b'f' => self.literal("false", Node::Bool(false)),
            b'n' => self.literal("null", Node::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A string at `"`: borrowed when it has no escape sequence.
    fn string(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        let bytes = self.bytes();
        let end = string_end(bytes, start);
        match bytes.get(end) {
            Some(b'"' | b'\\') => {}
            _ => return None, // a control character, or no closing quote
        }
        if bytes[end] == b'"' {
            self.at = end + 1;
            return Some(std::borrow::Cow::Borrowed(&self.text[start..end]));
        }
        let mut owned = String::with_capacity(end - start + 16);
        owned.push_str(&self.text[start..end]);
        self.at = end;
        loop {
            let next = string_end(bytes, self.at);
            match bytes.get(next) {
                Some(b'"' | b'\\') => {}
                _ => return None,
            }
            owned.push_str(&self.text[self.at..next]);
            self.at = next;
            if bytes[self.at] == b'"' {
                self.at += 1;
                return Some(std::borrow::Cow::Owned(owned));
            }
            self.at += 1; // the backslash
            let escaped = *bytes.get(self.at)?;
            self.at += 1;
            match escaped {
                b'"' => owned.push('"'),
                b'\\' => owned.push('\\'),
                b'/' => owned.push('/'),
                b'b' => owned.push('\u{8}'),
                b'f' => owned.push('\u{c}'),
                b'n' => owned.push('\n'),
                b'r' => owned.push('\r'),
                b't' => owned.push('\t'),
                b'u' => {
                    let unit = self.hex4()?;
                    let c = match unit {
                        0xD800..=0xDBFF => {
                            // A high surrogate must be followed by an escaped low one.
                            self.eat(b'\\')?;
                            self.eat(b'u')?;
                            let low = self.hex4()?;
                            if !(0xDC00..=0xDFFF).contains(&low) {
                                return None;
                            }
                            char::from_u32(0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00))?
                        }
                        0xDC00..=0xDFFF => return None,
                        _ => char::from_u32(u32::from(unit))?,
                    };
                    owned.push(c);
                }
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.text.get(self.at..self.at + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u16::from_str_radix(digits, 16).ok()
    }

    /// A number: an integer that fits `u64` (or `i64` when negative) is kept exact, anything
    /// else is read by `serde_json` as an `f64`.
    fn number(&mut self) -> Option<Node<'a>> {
        let bytes = self.bytes();
        let start = self.at;
        let mut at = start;
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        if bytes[at] == b'-' {
            at += 1;
        }
        let int_start = at;
        if !digits(&mut at) || (bytes[int_start] == b'0' && at - int_start > 1) {
            return None;
        }
        let mut integer = true;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            integer = false;
            if !digits(&mut at) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            integer = false;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            if !digits(&mut at) {
                return None;
            }
        }
        self.at = at;
        let text = &self.text[start..at];
        if integer {
            if let Ok(v) = text.parse::<u64>() {
                return Some(Node::Number(v.into()));
            }
            if let Ok(v) = text.parse::<i64>() {
                return Some(Node::Number(v.into()));
            }
        }
        // Fractions and exponents are rare in requests: serde_json reads them, so they round as it
        // rounds them.
        serde_json::from_str::<serde_json::Number>(text).ok().map(Node::Number)
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

    /// The parser against `serde_json` on edge cases and on generated documents: the same texts
    /// accepted, and byte for byte the same canonical form.
    #[test]
    fn the_parser_accepts_and_canonicalizes_exactly_what_serde_json_does() {
        let same = |text: &[u8]| {
            let reference = serde_json::from_slice::<serde_json::Value>(text).ok().map(|v| {
                let mut out = Vec::new();
                to_canonical_any(&v, &mut out).unwrap();
                out
            });
            let mut fast = Vec::new();
            let fast = json_to_canonical(text, &mut fast).map(|()| fast);
            assert_eq!(
                fast.as_deref().map(String::from_utf8_lossy),
                reference.as_deref().map(String::from_utf8_lossy),
                "{}",
                String::from_utf8_lossy(text)
            );
        };
        let edge: &[&[u8]] = &[
            b"-0",
            b"-0.0",
            b"0",
            b"01",
            b"1.",
            b".5",
            b"1e",
            b"1E+2",
            b"1e-2",
            b"0.1e-2",
            b"-",
            b"+1",
            b"18446744073709551615",
            b"18446744073709551616",
            b"-9223372036854775808",
            b"-9223372036854775809",
            b"1e400",
            b"-1e-400",
            b"123456789012345678901234567890",
            b"0.30000000000000004",
            b"\"\\u00e9\\ud83d\\ude00\"",
            b"\"\\ud83d\"",
            b"\"\\ude00\"",
            b"\"\\ud83d\\u0041\"",
            b"\"\\x\"",
            b"\"\\u00G0\"",
            b"\"a\tb\"",
            b"\"\\/\\b\\f\\n\\r\\t\\\"\\\\\"",
            b"\"\xff\"",
            b"\"\xc3\xa9\"",
            b" [ 1 , 2 ] ",
            b"[1,]",
            b"[,1]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{1:2}",
            b"{}",
            b"[]",
            b"[[]]",
            b"tru",
            b"true ",
            b"nul",
            b"null x",
            b"",
            b" ",
            b"\"unterminated",
            b"{\"a\":{\"b\":[true,false,null]}}",
            b"\xef\xbb\xbf{}",
            b"{\"a\":1}\n",
            b"[1]\x00",
        ];
        for text in edge {
            same(text);
        }
        for depth in [126, 127, 128, 129] {
            same(format!("{}{}", "[".repeat(depth), "]".repeat(depth)).as_bytes());
            same(format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).as_bytes());
        }
        // Generated documents: a small linear congruential generator, so every run checks the same ones.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        fn generate(next: &mut dyn FnMut(u64) -> u64, depth: u32, out: &mut String) {
            const STRINGS: &[&str] = &[
                "",
                "a",
                "role",
                "content",
                "\\\"q\\\"",
                "\\u00e9t\\u00e9",
                "\\ud83d\\ude00",
                "é€😀",
                "\\n\\t",
                "דּ",
                "model",
                "Z",
                "a b",
            ];
            const NUMBERS: &[&str] =
                &["0", "-1", "7", "0.5", "1e3", "-2.5E-3", "3.0", "100000000000000000000", "1e21", "1e-7", "123.456"];
            let ws = |next: &mut dyn FnMut(u64) -> u64, out: &mut String| {
                if next(4) == 0 {
                    out.push_str(["", " ", "\n  ", "\t"][next(4) as usize]);
                }
            };
            match if depth == 0 { next(4) } else { next(6) } {
                0 => out.push_str(["null", "true", "false"][next(3) as usize]),
                1 => out.push_str(NUMBERS[next(NUMBERS.len() as u64) as usize]),
                2 | 3 => {
                    out.push('"');
                    out.push_str(STRINGS[next(STRINGS.len() as u64) as usize]);
                    out.push('"');
                }
                4 => {
                    out.push('[');
                    for i in 0..next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        ws(next, out);
                        generate(next, depth - 1, out);
                        ws(next, out);
                    }
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    for i in 0..next(5) {
                        if i > 0 {
                            out.push(',');
                        }
                        ws(next, out);
                        out.push('"');
                        out.push_str(STRINGS[next(STRINGS.len() as u64) as usize]);
                        out.push_str("\":");
                        ws(next, out);
                        generate(next, depth - 1, out);
                    }
                    out.push('}');
                }
            }
        }
        for _ in 0..3000 {
            let mut doc = String::new();
            generate(&mut next, 5, &mut doc);
            same(doc.as_bytes());
        }
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
    fn a_canonical_number_reads_back_as_itself() {
        // Found by fuzzing (fuzz/regressions/canonical_json): without exact float parsing this
        // read as a float one ULP off, whose shortest form read as another.
        let mut once = Vec::new();
        json_to_canonical(b"[9.7176931348623157e134, 1.7976931348623157e308]", &mut once).unwrap();
        assert_eq!(String::from_utf8_lossy(&once), "[9.717693134862316e+134,1.7976931348623157e+308]");
        let mut twice = Vec::new();
        json_to_canonical(&once, &mut twice).unwrap();
        assert_eq!(twice, once);
    }

    #[test]
    fn hex_round_trips() {
        let d = sha256(b"abc");
        assert_eq!(hex(&d), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(unhex32(&hex(&d)), Some(d));
        assert_eq!(unhex32("zz"), None);
    }
}
