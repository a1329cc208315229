//! W3C Trace Context (`traceparent`, `tracestate`): parsing what a caller sent, and the ids of a
//! new span.

use std::fmt;

use fleetforge_trust::canonical::hex;

/// A trace id: 16 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span id: 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> Self {
        loop {
            let v: u128 = rand::random();
            if v != 0 {
                return Self(v.to_be_bytes());
            }
        }
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    /// A fresh random span id.
    pub fn random() -> Self {
        loop {
            let v: u64 = rand::random();
            if v != 0 {
                return Self(v.to_be_bytes());
            }
        }
    }

    /// Lowercase hex, 16 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The caller's span, as its `traceparent` (and `tracestate`) named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span: the parent of ours.
    pub span_id: SpanId,
    /// The caller sampled its span (flag `01`).
    pub sampled: bool,
    /// `tracestate`, passed on unchanged.
    pub state: Option<String>,
}

/// The longest `tracestate` passed on (the W3C limit is 32 members; 512 characters is what
/// vendors must be able to propagate).
const MAX_STATE: usize = 512;

impl Parent {
    /// Reads `traceparent` and `tracestate`. A missing, malformed or all-zero `traceparent` is no
    /// parent (the call starts a trace), as W3C Trace Context asks; a `tracestate` without a valid
    /// `traceparent`, or longer than 512 characters, or not visible ASCII, is dropped; several
    /// `tracestate` lines are joined into one list.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let parent = headers.get("traceparent")?.to_str().ok()?;
        let (trace_id, span_id, flags) = parse_traceparent(parent)?;
        // Several `tracestate` lines are one list (RFC 9110 field combination).
        let joined = headers
            .get_all("tracestate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        let state =
            (!joined.is_empty() && joined.len() <= MAX_STATE && joined.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .then_some(joined);
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1, state })
    }
}

/// `version-traceid-parentid-flags`. Version `00` is exactly 55 characters; a later version may
/// append fields after a `-`, which are ignored; version `ff` is invalid.
fn parse_traceparent(s: &str) -> Option<(TraceId, SpanId, u8)> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 55 || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = unhex_byte(&b[0..2])?;
    if version == 0xff || (version == 0 && b.len() != 55) {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, out) in trace.iter_mut().enumerate() {
        *out = unhex_byte(&b[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, out) in span.iter_mut().enumerate() {
        *out = unhex_byte(&b[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = unhex_byte(&b[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((TraceId(trace), SpanId(span), flags))
}

/// Two lowercase hex digits (W3C allows lowercase only).
fn unhex_byte(pair: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(pair[0])? << 4 | d(pair[1])?)
}

/// The `traceparent` naming `span` of `trace` as the parent of whatever receives it.
pub fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> String {
    format!("00-{}-{}-{}", trace.to_hex(), span.to_hex(), if sampled { "01" } else { "00" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_read_with_its_state() {
        let p = Parent::from_headers(&headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]))
        .unwrap();
        assert_eq!(p.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_hex(), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert_eq!(p.state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(
            traceparent(p.trace_id, p.span_id, false),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn malformed_or_zero_traceparents_start_a_new_trace() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(Parent::from_headers(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
        // A later version may carry more fields.
        let p = Parent::from_headers(&headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future",
        )]))
        .unwrap();
        assert!(!p.sampled);
    }

    #[test]
    fn tracestate_lines_are_joined_and_an_oversized_one_is_dropped() {
        let tp = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let p = Parent::from_headers(&headers(&[tp, ("tracestate", "a=1"), ("tracestate", "b=2")])).unwrap();
        assert_eq!(p.state.as_deref(), Some("a=1,b=2"));
        let long = format!("a={}", "x".repeat(600));
        let p = Parent::from_headers(&headers(&[tp, ("tracestate", &long)])).unwrap();
        assert_eq!(p.state, None);
    }

    #[test]
    fn fresh_ids_are_nonzero_and_distinct() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(SpanId::random(), SpanId::random());
    }
}
