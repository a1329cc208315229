//! The OTLP export request encoded straight from [`Span`]s: lengths computed first, then every
//! field written once into one buffer, with no intermediate message structs and no copy of an
//! attribute key. Field numbers are those of [`crate::proto`], which decodes the result in tests.

use crate::span::{Event, Span, Status, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, u64::from(field << 3 | u32::from(wire)));
}

fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// A length-delimited field holding `inner` bytes.
fn ld(field: u32, inner: usize) -> usize {
    key_len(field) + varint_len(inner as u64) + inner
}

fn put_ld(buf: &mut Vec<u8>, field: u32, inner: usize) {
    put_key(buf, field, LEN);
    put_varint(buf, inner as u64);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_ld(buf, field, bytes.len());
    buf.extend_from_slice(bytes);
}

/// `AnyValue` body length.
fn any_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => ld(1, s.len()),
        Value::Static(s) => ld(1, s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(*i as u64),
        Value::Double(_) => 9,
        Value::StrArray(a) => ld(5, array_len(a)),
    }
}

/// `ArrayValue` body length: one `AnyValue{string_value}` per item.
fn array_len(a: &[String]) -> usize {
    a.iter().map(|s| ld(1, ld(1, s.len()))).sum()
}

fn put_any(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        Value::Static(s) => put_bytes(buf, 1, s.as_bytes()),
        Value::Bool(b) => {
            put_key(buf, 2, VARINT);
            buf.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_key(buf, 3, VARINT);
            put_varint(buf, *i as u64);
        }
        Value::Double(d) => {
            put_key(buf, 4, FIXED64);
            buf.extend_from_slice(&d.to_le_bytes());
        }
        Value::StrArray(a) => {
            put_ld(buf, 5, array_len(a));
            for s in a {
                put_ld(buf, 1, ld(1, s.len()));
                put_bytes(buf, 1, s.as_bytes());
            }
        }
    }
}

/// `KeyValue` body length.
fn kv_len(k: &str, v: &Value) -> usize {
    ld(1, k.len()) + ld(2, any_len(v))
}

fn put_kv(buf: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    put_ld(buf, field, kv_len(k, v));
    put_bytes(buf, 1, k.as_bytes());
    put_ld(buf, 2, any_len(v));
    put_any(buf, v);
}

fn kvs_len<K: AsRef<str>>(field: u32, list: &[(K, Value)]) -> usize {
    list.iter().map(|(k, v)| ld(field, kv_len(k.as_ref(), v))).sum()
}

fn event_len(e: &Event) -> usize {
    9 + ld(2, e.name.len()) + kvs_len(3, &e.attributes)
}

fn status_len(s: &Status) -> usize {
    match s {
        Status::Unset => 0,
        Status::Error(m) => ld(2, m.len()) + 2,
    }
}

fn span_len(s: &Span) -> usize {
    let mut n = ld(1, 16) + ld(2, 8) + ld(5, s.name.len()) + 2 + 9 + 9 + 2 + 4;
    if let Some(state) = &s.trace_state {
        n += ld(3, state.len());
    }
    if s.parent.is_some() {
        n += ld(4, 8);
    }
    n += kvs_len(9, &s.attributes);
    n += s.events.iter().map(|e| ld(11, event_len(e))).sum::<usize>();
    if s.status != Status::Unset {
        n += ld(15, status_len(&s.status));
    }
    n
}

fn put_span(buf: &mut Vec<u8>, s: &Span) {
    put_ld(buf, 2, span_len(s));
    put_bytes(buf, 1, &s.trace_id.0);
    put_bytes(buf, 2, &s.span_id.0);
    if let Some(state) = &s.trace_state {
        put_bytes(buf, 3, state.as_bytes());
    }
    if let Some(parent) = &s.parent {
        put_bytes(buf, 4, &parent.0);
    }
    put_bytes(buf, 5, s.name.as_bytes());
    put_key(buf, 6, VARINT);
    put_varint(buf, s.kind as u64);
    put_key(buf, 7, FIXED64);
    buf.extend_from_slice(&s.start_unix_nano.to_le_bytes());
    put_key(buf, 8, FIXED64);
    buf.extend_from_slice(&s.end_unix_nano.max(s.start_unix_nano).to_le_bytes());
    for (k, v) in &s.attributes {
        put_kv(buf, 9, k, v);
    }
    for e in &s.events {
        put_ld(buf, 11, event_len(e));
        put_key(buf, 1, FIXED64);
        buf.extend_from_slice(&e.time_unix_nano.to_le_bytes());
        put_bytes(buf, 2, e.name.as_bytes());
        for (k, v) in &e.attributes {
            put_kv(buf, 3, k, v);
        }
    }
    if let Status::Error(message) = &s.status {
        put_ld(buf, 15, status_len(&s.status));
        put_bytes(buf, 2, message.as_bytes());
        put_key(buf, 3, VARINT);
        buf.push(2);
    }
    // flags (field 16, fixed32): sampled, and whether the parent is remote (bit 8 says bit 9
    // is known).
    put_key(buf, 16, FIXED32);
    let flags: u32 = 0x01 | 0x100 | if s.parent.is_some() { 0x200 } else { 0 };
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// The `ExportTraceServiceRequest` carrying `spans` under one resource and the `fleetforge` scope.
pub fn export_request(resource: &[(String, Value)], spans: &[Span]) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let scope_len = ld(1, "fleetforge".len()) + ld(2, version.len());
    let spans_len: usize = spans.iter().map(|s| ld(2, span_len(s))).sum();
    let scope_spans_len = ld(1, scope_len) + spans_len;
    let resource_len = kvs_len(1, resource);
    let resource_spans_len = ld(1, resource_len) + ld(2, scope_spans_len);
    let mut buf = Vec::with_capacity(ld(1, resource_spans_len));
    put_ld(&mut buf, 1, resource_spans_len);
    put_ld(&mut buf, 1, resource_len);
    for (k, v) in resource {
        put_kv(&mut buf, 1, k, v);
    }
    put_ld(&mut buf, 2, scope_spans_len);
    put_ld(&mut buf, 1, scope_len);
    put_bytes(&mut buf, 1, b"fleetforge");
    put_bytes(&mut buf, 2, version.as_bytes());
    for s in spans {
        put_span(&mut buf, s);
    }
    debug_assert_eq!(buf.len(), buf.capacity());
    buf
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::export_request;
    use crate::context::{SpanId, TraceId};
    use crate::proto;
    use crate::span::{Event, Kind, Span, Status, Value};

    fn span(parent: bool, error: bool) -> Span {
        Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent: parent.then(SpanId::random),
            trace_state: parent.then(|| "vendor=abc".to_owned()),
            name: "chat gpt-4o".into(),
            kind: Kind::Client,
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_250_000_000,
            attributes: vec![
                ("gen_ai.request.model", Value::Str("gpt-4o".into())),
                ("gen_ai.usage.input_tokens", Value::Int(1200)),
                ("neg", Value::Int(-5)),
                ("flag", Value::Bool(true)),
                ("ratio", Value::Double(0.25)),
                ("gen_ai.response.finish_reasons", Value::StrArray(vec!["stop".into(), "length".into()])),
                ("long", Value::Str("x".repeat(300))),
                ("empty", Value::Str(String::new())),
                ("static", Value::Static("chat")),
            ],
            events: vec![Event {
                name: "gen_ai.content.prompt",
                time_unix_nano: 5,
                attributes: vec![("gen_ai.prompt", Value::Str("{\"messages\":[]}".into()))],
            }],
            status: if error { Status::Error("denied".into()) } else { Status::Unset },
        }
    }

    #[test]
    fn the_direct_encoding_decodes_to_the_messages_it_stands_for() {
        let spans = vec![span(true, true), span(false, false)];
        let resource = vec![("service.name".to_owned(), Value::Str("svc".into()))];
        let bytes = export_request(&resource, &spans);
        let decoded = proto::ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let expected = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(proto::Resource { attributes: crate::span::attributes(resource) }),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: "fleetforge".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: spans.into_iter().map(Span::into_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(decoded, expected);
        // prost writes the same message in the same bytes.
        assert_eq!(expected.encode_to_vec(), bytes);
    }
}
