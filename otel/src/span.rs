//! A finished span as plain data: what a caller builds on its hot path and queues. Keys are
//! `&'static str`, and so are the values known at compile time ([`Value::Static`]), so building one
//! allocates only for the values read from the call; the protobuf is made on the export thread.

use crate::context::{SpanId, TraceId};
#[cfg(test)]
use crate::proto;

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// A string known at compile time (a provider, an operation, a decision): no allocation.
    Static(&'static str),
    /// A signed integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A float.
    Double(f64),
    /// A list of strings.
    StrArray(Vec<String>),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// Span kinds (the OTLP enum values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The proxy calling an upstream.
    Client = 3,
    /// Control serving a request.
    Server = 2,
}

/// How the operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    /// Not set: the usual for a success.
    #[default]
    Unset,
    /// Failed, with a description.
    Error(String),
}

/// An event on a span (GenAI content capture).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name.
    pub name: &'static str,
    /// Unix nanoseconds.
    pub time_unix_nano: u64,
    /// Attributes.
    pub attributes: Vec<(&'static str, Value)>,
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// The caller's span, when the call continued a trace.
    pub parent: Option<SpanId>,
    /// The caller's `tracestate`.
    pub trace_state: Option<String>,
    /// Span name.
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Unix nanoseconds.
    pub start_unix_nano: u64,
    /// Unix nanoseconds.
    pub end_unix_nano: u64,
    /// Attributes, in the order added.
    pub attributes: Vec<(&'static str, Value)>,
    /// Events.
    pub events: Vec<Event>,
    /// Status.
    pub status: Status,
}

impl Span {
    /// Adds an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push((key, value.into()));
    }

    /// Adds an attribute whose value is known at compile time, without allocating.
    pub fn set_static(&mut self, key: &'static str, value: &'static str) {
        self.attributes.push((key, Value::Static(value)));
    }

    /// The attribute `key`, if set (the first one).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The span as the prost message (what [`crate::wire`] encodes directly).
    #[cfg(test)]
    pub(crate) fn into_proto(self) -> proto::Span {
        // Flags: sampled (every exported span is), and whether the parent is remote (bit 8 says
        // the bit 9 is known).
        let mut flags = 0x01 | 0x100;
        if self.parent.is_some() {
            flags |= 0x200;
        }
        proto::Span {
            trace_id: self.trace_id.0.to_vec(),
            span_id: self.span_id.0.to_vec(),
            trace_state: self.trace_state.unwrap_or_default(),
            parent_span_id: self.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            name: self.name,
            kind: self.kind as i32,
            start_time_unix_nano: self.start_unix_nano,
            end_time_unix_nano: self.end_unix_nano.max(self.start_unix_nano),
            attributes: attributes(self.attributes),
            events: self
                .events
                .into_iter()
                .map(|e| proto::Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name.to_owned(),
                    attributes: attributes(e.attributes),
                })
                .collect(),
            status: match self.status {
                Status::Unset => None,
                Status::Error(message) => Some(proto::Status { message, code: 2 }),
            },
            flags,
        }
    }
}

#[cfg(test)]
pub(crate) fn attributes<K: Into<String>>(list: Vec<(K, Value)>) -> Vec<proto::KeyValue> {
    list.into_iter().map(|(k, v)| proto::KeyValue { key: k.into(), value: Some(any(v)) }).collect()
}

#[cfg(test)]
fn any(v: Value) -> proto::AnyValue {
    use proto::any_value::Value as V;
    proto::AnyValue {
        value: Some(match v {
            Value::Str(s) => V::StringValue(s),
            Value::Static(s) => V::StringValue(s.to_owned()),
            Value::Int(i) => V::IntValue(i),
            Value::Bool(b) => V::BoolValue(b),
            Value::Double(d) => V::DoubleValue(d),
            Value::StrArray(a) => V::ArrayValue(proto::ArrayValue {
                values: a.into_iter().map(|s| proto::AnyValue { value: Some(V::StringValue(s)) }).collect(),
            }),
        }),
    }
}
