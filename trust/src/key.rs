//! The canonical request key: what makes two requests "the same call" for replay.
//!
//! A replay serves a sealed response to the request that matches it, so the key must ignore what
//! changes between two runs of the same agent and keep everything that changes the answer. Version
//! [`KEY_VERSION`] is the SHA-256 of the JCS form of this object:
//!
//! ```json
//! {"v": "fleetforge.key/v1", "method": "POST", "scheme": "https", "host": "api.openai.com",
//!  "port": 443, "path": "/v1/chat/completions", "query": [["alt", "sse"]],
//!  "headers": {"content-type": "application/json"}, "body": {…}}
//! ```
//!
//! - `host` lowercased, `path` as sent, `query` split into pairs and sorted; query parameters that
//!   look like credentials ([`crate::text::is_secret_param`]: `key`, `api_key`, …) are left out.
//! - `headers`: only those in [`KeyRules::headers`] (by default `content-type` and the API-version
//!   headers `anthropic-version`, `anthropic-beta`, `openai-beta`), names lowercased. Never auth,
//!   cookies, `x-stainless-*`, idempotency keys, user agent or date: they are not on the list.
//! - `body`: a JSON body (decoded by the caller from its content-encoding) in JCS form with the
//!   members at [`KeyRules::exclude`] (JSON pointers, RFC 6901) removed; any other body as
//!   `{"sha256": hex}`; no body as `null`.
//!
//! Two requests with the same key are served in recorded order (FIFO per key). [`diff`] names
//! the JSON paths where two request bodies differ, for a miss's `diff`.

use serde_json::{Map, Value};

use crate::canonical::{CanonicalError, hex, json_to_canonical, sha256, to_canonical_any, write_str};
use crate::text::is_secret_param;

/// The key scheme this module implements; recorded beside every key.
pub const KEY_VERSION: &str = "fleetforge.key/v1";

/// The request headers a key includes by default.
pub const DEFAULT_HEADERS: &[&str] = &["content-type", "anthropic-version", "anthropic-beta", "openai-beta"];

/// What a key includes beyond method, target, path, query and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRules {
    /// Header names (lowercase) whose values are part of the key.
    pub headers: Vec<String>,
    /// JSON pointers (RFC 6901) of body members left out of the key (volatile fields such as a
    /// request id or a timestamp the agent puts in its body).
    pub exclude: Vec<String>,
}

impl Default for KeyRules {
    fn default() -> Self {
        Self { headers: DEFAULT_HEADERS.iter().map(|h| (*h).to_owned()).collect(), exclude: Vec::new() }
    }
}

/// Why a JSON pointer is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// It does not start with `/`.
    #[error("JSON pointer {0:?} must start with '/' (RFC 6901), e.g. \"/metadata/request_id\"")]
    NoSlash(String),
    /// It has an escape other than `~0` or `~1`.
    #[error("JSON pointer {0:?} has a '~' that is not ~0 or ~1 (RFC 6901)")]
    BadEscape(String),
}

/// Checks a JSON pointer (RFC 6901) and splits it into its reference tokens.
pub fn parse_pointer(pointer: &str) -> Result<Vec<String>, PointerError> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(PointerError::NoSlash(pointer.to_owned()));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => return Err(PointerError::BadEscape(pointer.to_owned())),
                }
            }
            Ok(out)
        })
        .collect()
}

/// The member at `tokens` (a parsed pointer), if present.
fn pointee<'a>(value: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(value, |v, t| match v {
        Value::Object(map) => map.get_mut(t),
        Value::Array(items) => t.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

/// Removes the member at `pointer` from `value`; whether there was one. A pointer that does not
/// parse removes nothing (config checks pointers when it loads).
pub fn remove_pointer(value: &mut Value, pointer: &str) -> bool {
    let Ok(tokens) = parse_pointer(pointer) else { return false };
    let Some((last, parent)) = tokens.split_last() else { return false };
    match pointee(value, parent) {
        Some(Value::Object(map)) => map.remove(last).is_some(),
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Replaces the value at `pointer` with `"[redacted]"`; whether there was one.
pub fn redact_pointer(value: &mut Value, pointer: &str) -> bool {
    let Ok(tokens) = parse_pointer(pointer) else { return false };
    match pointee(value, &tokens) {
        Some(v) => {
            *v = Value::String("[redacted]".into());
            true
        }
        None => false,
    }
}

/// The parts of a request its key is made of. `body` is decoded from its content-encoding.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    /// Method, e.g. `POST`.
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Host as the proxy sends it upstream.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Path and query as sent upstream.
    pub path_and_query: &'a str,
    /// Request headers, in any order (only those in [`KeyRules::headers`] count).
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The request body, decoded.
    pub body: &'a [u8],
}

/// A request key: its digest and the canonical bytes it is the digest of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// SHA-256 of `canonical`.
    pub digest: [u8; 32],
    /// The JCS form of the key object.
    pub canonical: Vec<u8>,
}

impl RequestKey {
    /// The digest in lowercase hex, as receipts and manifests carry it.
    pub fn hex(&self) -> String {
        hex(&self.digest)
    }
}

/// Computes the key of a request under `rules`.
pub fn request_key(input: &KeyInput<'_>, rules: &KeyRules) -> Result<RequestKey, CanonicalError> {
    let (path, query) = input.path_and_query.split_once('?').unwrap_or((input.path_and_query, ""));
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .filter(|(k, _)| !is_secret_param(k))
        .collect();
    pairs.sort_unstable();
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .filter(|(name, _)| rules.headers.iter().any(|h| h.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(value).trim().to_owned()))
        .collect();
    headers.sort();
    let mut canonical = Vec::with_capacity(input.body.len() + 256);
    // `body` sorts first of the key's members: its canonical form is written straight from the
    // request (no `Value` built on the common path), then the rest of the key.
    canonical.extend_from_slice(b"{\"body\":");
    let fast =
        rules.exclude.is_empty() && !input.body.is_empty() && json_to_canonical(input.body, &mut canonical).is_some();
    if !fast {
        canonical.truncate(8);
        to_canonical_any(&body_value(input.body, &rules.exclude), &mut canonical)?;
    }
    canonical.push(b',');
    write_rest(input, path, &pairs, &headers, &mut canonical);
    Ok(RequestKey { digest: sha256(&canonical), canonical })
}

/// The key's members after `body`, in JCS order (their names are ASCII, so byte order is UTF-16
/// order): `headers` (a repeated header's values joined with `", "`), `host`, `method`, `path`,
/// `port`, `query` (`[name, value]` pairs), `scheme`, `v`; then the closing brace.
fn write_rest(
    input: &KeyInput<'_>,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(String, String)],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"\"headers\":{");
    let mut i = 0;
    while i < headers.len() {
        let name = &headers[i].0;
        let mut value = std::borrow::Cow::Borrowed(headers[i].1.as_str());
        i += 1;
        while i < headers.len() && headers[i].0 == *name {
            let joined = value.to_mut();
            joined.push_str(", ");
            joined.push_str(&headers[i].1);
            i += 1;
        }
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        write_str(name, out);
        out.push(b':');
        write_str(&value, out);
    }
    out.extend_from_slice(b"},\"host\":");
    write_str(&input.host.to_ascii_lowercase(), out);
    out.extend_from_slice(b",\"method\":");
    write_str(&input.method.to_ascii_uppercase(), out);
    out.extend_from_slice(b",\"path\":");
    write_str(path, out);
    out.extend_from_slice(b",\"port\":");
    out.extend_from_slice(input.port.to_string().as_bytes());
    out.extend_from_slice(b",\"query\":[");
    for (n, (k, v)) in query.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'[');
        write_str(k, out);
        out.push(b',');
        write_str(v, out);
        out.push(b']');
    }
    out.extend_from_slice(b"],\"scheme\":");
    write_str(&input.scheme.to_ascii_lowercase(), out);
    out.extend_from_slice(b",\"v\":");
    write_str(KEY_VERSION, out);
    out.push(b'}');
}

/// The body as the key holds it: JSON without the excluded members, else its digest.
fn body_value(body: &[u8], exclude: &[String]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(mut json) => {
            for pointer in exclude {
                remove_pointer(&mut json, pointer);
            }
            json
        }
        Err(_) => {
            let mut raw = Map::new();
            raw.insert("sha256".into(), hex(&sha256(body)).into());
            Value::Object(raw)
        }
    }
}

/// One place two request bodies differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    /// JSON pointer of the member (`""` for the whole body).
    pub path: String,
    /// The recorded value, shortened (`null` when the member is absent there).
    pub recorded: Option<String>,
    /// The value in the request being replayed, shortened.
    pub request: Option<String>,
}

/// The longest value [`diff`] shows, in characters.
const SHORT: usize = 80;
/// The most differences [`diff`] lists.
const MAX_DIFFERENCES: usize = 20;

/// Where `request` differs from `recorded` (both JSON bodies), as JSON pointers with both values
/// shortened; at most 20, leaves first in document order.
pub fn diff(recorded: &Value, request: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    walk(recorded, request, &mut String::new(), &mut out);
    out
}

/// How many places two bodies differ (a distance for finding the closest recorded request).
pub fn distance(recorded: &Value, request: &Value) -> usize {
    let mut out = Vec::new();
    walk(recorded, request, &mut String::new(), &mut out);
    out.len()
}

fn walk(a: &Value, b: &Value, path: &mut String, out: &mut Vec<Difference>) {
    if out.len() >= MAX_DIFFERENCES {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut names: Vec<&String> = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))).collect();
            names.sort();
            for name in names {
                let len = path.len();
                path.push('/');
                path.push_str(&name.replace('~', "~0").replace('/', "~1"));
                match (x.get(name), y.get(name)) {
                    (Some(p), Some(q)) => walk(p, q, path, out),
                    (p, q) => push(path, p, q, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => walk(p, q, path, out),
                    (p, q) => push(path, p, q, out),
                }
                path.truncate(len);
            }
        }
        (p, q) if p == q => {}
        (p, q) => push(path, Some(p), Some(q), out),
    }
}

fn push(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Difference>) {
    if out.len() < MAX_DIFFERENCES {
        out.push(Difference { path: path.to_owned(), recorded: a.map(shorten), request: b.map(shorten) });
    }
}

/// A value's JSON text, cut to [`SHORT`] characters with `…` when longer.
fn shorten(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= SHORT {
        return text;
    }
    let mut cut: String = text.chars().take(SHORT).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{KeyInput, KeyRules, diff, parse_pointer, redact_pointer, remove_pointer, request_key};

    fn key(path: &str, headers: &[(&str, &[u8])], body: &[u8], rules: &KeyRules) -> String {
        let input = KeyInput {
            method: "POST",
            scheme: "https",
            host: "API.openai.com",
            port: 443,
            path_and_query: path,
            headers,
            body,
        };
        request_key(&input, rules).unwrap().hex()
    }

    #[test]
    fn volatile_parts_do_not_change_the_key_and_the_request_does() {
        let rules = KeyRules::default();
        let ct: (&str, &[u8]) = ("Content-Type", b"application/json");
        let a = key(
            "/v1/chat?b=2&a=1",
            &[ct, ("authorization", b"Bearer sk-one"), ("x-stainless-retry-count", b"0"), ("user-agent", b"x/1")],
            br#"{"model":"gpt-4o","temperature":0.7,"messages":[{"role":"user","content":"hi"}]}"#,
            &rules,
        );
        // Other credentials, SDK headers, key order, whitespace and query order: the same key.
        let b = key(
            "/v1/chat?a=1&b=2",
            &[("authorization", b"Bearer sk-two"), ("Idempotency-Key", b"stainless-python-retry-9"), ct],
            br#"{ "messages": [ {"content": "hi", "role": "user"} ], "temperature": 0.70, "model": "gpt-4o" }"#,
            &rules,
        );
        assert_eq!(a, b);
        // A credential in the query does not count either.
        assert_eq!(
            key("/v1/x?key=AIza1&alt=sse", &[ct], b"{}", &rules),
            key("/v1/x?alt=sse&key=AIza2", &[ct], b"{}", &rules)
        );
        // What changes the answer changes the key.
        assert_ne!(
            a,
            key(
                "/v1/chat?a=1&b=2",
                &[ct],
                br#"{"model":"gpt-4o","temperature":0.7,"messages":[{"role":"user","content":"hey"}]}"#,
                &rules
            )
        );
        assert_ne!(
            a,
            key(
                "/v1/chat?a=1&b=3",
                &[ct],
                br#"{"model":"gpt-4o","temperature":0.7,"messages":[{"role":"user","content":"hi"}]}"#,
                &rules
            )
        );
        assert_ne!(
            key("/m", &[ct, ("anthropic-version", b"2023-06-01")], b"{}", &rules),
            key("/m", &[ct, ("anthropic-version", b"2024-01-01")], b"{}", &rules)
        );
        assert_ne!(key("/m", &[ct], b"not json", &rules), key("/m", &[ct], b"not json!", &rules));
    }

    #[test]
    fn the_key_is_jcs_of_its_members() {
        let rules = KeyRules::default();
        let headers: &[(&str, &[u8])] = &[
            ("content-type", b"application/json"),
            ("anthropic-version", b"2023-06-01"),
            ("Anthropic-Version", b"beta \"x\""),
            ("authorization", b"Bearer sk-never"),
        ];
        let input = KeyInput {
            method: "post",
            scheme: "HTTPS",
            host: "API.Example.COM",
            port: 8443,
            path_and_query: "/v1/m\"sg?z=1&a=%20&b=\u{e9}&api_key=sk-never&a=0",
            headers,
            body: br#"{"b": [1, 2.50, "\u00e9\n"], "a": {"y": null, "x": true}}"#,
        };
        let key = request_key(&input, &rules).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&key.canonical).unwrap();
        // Written member by member, the key is byte for byte what JCS makes of its value.
        let mut jcs = Vec::new();
        crate::canonical::to_canonical_any(&value, &mut jcs).unwrap();
        assert_eq!(String::from_utf8(jcs).unwrap(), String::from_utf8(key.canonical.clone()).unwrap());
        assert_eq!(
            value,
            json!({"body": {"a": {"x": true, "y": null}, "b": [1, 2.5, "\u{e9}\n"]},
                   "headers": {"anthropic-version": "2023-06-01, beta \"x\"", "content-type": "application/json"},
                   "host": "api.example.com", "method": "POST", "path": "/v1/m\"sg", "port": 8443,
                   "query": [["a", "%20"], ["a", "0"], ["b", "\u{e9}"], ["z", "1"]], "scheme": "https", "v": super::KEY_VERSION})
        );
        assert!(!String::from_utf8_lossy(&key.canonical).contains("sk-never"));
    }

    #[test]
    fn excluded_members_are_left_out() {
        let rules = KeyRules { exclude: vec!["/metadata/request_id".into(), "/user".into()], ..KeyRules::default() };
        assert_eq!(
            key("/x", &[], br#"{"model":"m","user":"u1","metadata":{"request_id":"a","k":1}}"#, &rules),
            key("/x", &[], br#"{"model":"m","user":"u2","metadata":{"request_id":"b","k":1}}"#, &rules)
        );
        assert_ne!(
            key("/x", &[], br#"{"model":"m","metadata":{"request_id":"a","k":1}}"#, &rules),
            key("/x", &[], br#"{"model":"m","metadata":{"request_id":"a","k":2}}"#, &rules)
        );
    }

    #[test]
    fn pointers_parse_remove_and_redact() {
        assert_eq!(parse_pointer("/a~1b/~0c/0").unwrap(), vec!["a/b", "~c", "0"]);
        assert!(parse_pointer("a").is_err());
        assert!(parse_pointer("/a~2").is_err());
        let mut v = json!({"a": {"b": [1, 2, 3]}, "s": "secret"});
        assert!(remove_pointer(&mut v, "/a/b/1"));
        assert!(!remove_pointer(&mut v, "/a/zz"));
        assert!(redact_pointer(&mut v, "/s"));
        assert!(!redact_pointer(&mut v, "/nope"));
        assert_eq!(v, json!({"a": {"b": [1, 3]}, "s": "[redacted]"}));
    }

    #[test]
    fn diff_names_the_paths_that_differ() {
        let recorded = json!({"model": "m", "messages": [{"role": "user", "content": "tell me a joke"}], "n": 1});
        let request =
            json!({"model": "m", "messages": [{"role": "user", "content": "tell me a story"}], "stream": true});
        let d = diff(&recorded, &request);
        let paths: Vec<&str> = d.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, vec!["/messages/0/content", "/n", "/stream"]);
        assert_eq!(d[0].recorded.as_deref(), Some("\"tell me a joke\""));
        assert_eq!(d[0].request.as_deref(), Some("\"tell me a story\""));
        assert_eq!(d[1].request, None);
        let long = json!({"x": "y".repeat(500)});
        assert!(diff(&json!({"x": 1}), &long)[0].request.as_ref().unwrap().chars().count() <= 81);
        assert!(diff(&recorded, &recorded).is_empty());
    }
}
