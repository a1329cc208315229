//! A real OTLP trace receiver for the telemetry tests: HTTP/protobuf (`POST /v1/traces`) and
//! gRPC (`TraceService/Export` over HTTP/2 cleartext) on one port, decoding every export with the
//! OpenTelemetry project's own `opentelemetry-proto` messages — an implementation independent of
//! the proxy's encoder.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use fleetforge_trust::canonical::hex;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use otlp_prost::Message as _;

/// One export as received.
#[derive(Debug, Clone)]
pub struct Export {
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// Request headers.
    pub headers: HeaderMap,
    /// The decoded request.
    pub request: ExportTraceServiceRequest,
}

/// A span with its resource's attributes, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span.
    pub span: Span,
    /// Its resource's attributes.
    pub resource: HashMap<String, AnyValue>,
    /// How it arrived (`http` or `grpc`).
    pub protocol: &'static str,
}

impl ReceivedSpan {
    /// The attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&AnyValue> {
        self.span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref())
    }

    /// The string attribute `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attr(key)?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// The integer attribute `key`.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key)?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    /// The string-array attribute `key`.
    pub fn strs(&self, key: &str) -> Option<Vec<String>> {
        match self.attr(key)?.value.as_ref()? {
            any_value::Value::ArrayValue(a) => Some(
                a.values
                    .iter()
                    .filter_map(|v| match v.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Trace id, lowercase hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Span id, lowercase hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Parent span id, lowercase hex (empty for a root span).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    counted: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1 (an ephemeral port) for both protocols and keeps every export.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, true).await
    }

    /// Listens on `addr`; with `keep` false every export's spans are counted ([`Self::counted`])
    /// by walking the protobuf framing, neither decoded nor kept, so a long benchmark holds no
    /// memory and the receiver takes little CPU from the proxy it measures.
    pub async fn start_on(addr: SocketAddr, keep: bool) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let exports: Arc<Mutex<Vec<Export>>> = Arc::default();
        let counted: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let sink = Sink { exports: keep.then(|| exports.clone()), counted: counted.clone() };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, sink.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, exports, counted, task })
    }

    /// Spans received so far (kept or not).
    pub fn counted(&self) -> u64 {
        self.counted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export received so far.
    pub fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = Vec::new();
        for export in self.exports() {
            for rs in export.request.resource_spans {
                let resource: HashMap<String, AnyValue> = rs
                    .resource
                    .map(|r| r.attributes.into_iter().filter_map(|kv| Some((kv.key, kv.value?))).collect())
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push(ReceivedSpan { span, resource: resource.clone(), protocol: export.protocol });
                    }
                }
            }
        }
        out
    }

    /// Waits (up to 20 s) until at least `n` spans have arrived.
    pub async fn wait_for(&self, n: usize) -> anyhow::Result<Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the receiver has {} of {n} spans", spans.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

type ReplyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Where decoded exports go.
#[derive(Clone)]
struct Sink {
    exports: Option<Arc<Mutex<Vec<Export>>>>,
    counted: Arc<std::sync::atomic::AtomicU64>,
}

async fn handle(req: Request<Incoming>, sink: Sink) -> Result<Response<ReplyBody>, Infallible> {
    let headers = req.headers().clone();
    let grpc = headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(plain(400, "unreadable body")),
    };
    let message = if grpc {
        if path != "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
            return Ok(plain(404, "unknown gRPC method"));
        }
        grpc_message(&body)
    } else {
        if path != "/v1/traces" {
            return Ok(plain(404, "not /v1/traces"));
        }
        Ok(body.as_ref())
    };
    let message = match message {
        Ok(m) => m,
        Err(e) => return Ok(plain(400, &format!("{e:#}"))),
    };
    match &sink.exports {
        Some(store) => {
            let request = match ExportTraceServiceRequest::decode(message) {
                Ok(r) => r,
                Err(e) => return Ok(plain(400, &format!("protobuf: {e}"))),
            };
            let spans: usize =
                request.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
            sink.counted.fetch_add(spans as u64, std::sync::atomic::Ordering::Relaxed);
            store.lock().unwrap_or_else(|e| e.into_inner()).push(Export {
                protocol: if grpc { "grpc" } else { "http" },
                headers,
                request,
            });
        }
        None => match count_spans(message) {
            Some(spans) => {
                sink.counted.fetch_add(spans, std::sync::atomic::Ordering::Relaxed);
            }
            None => return Ok(plain(400, "protobuf: malformed ExportTraceServiceRequest")),
        },
    }
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    if grpc {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(reply.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&reply);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = Frames([Frame::data(Bytes::from(framed)), Frame::trailers(trailers)].into());
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(body))
            .unwrap_or_else(|_| plain(500, "response")));
    }
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(BodyExt::boxed(Full::new(Bytes::from(reply))))
        .unwrap_or_else(|_| plain(500, "response")))
}

/// A body that yields its frames in order: the gRPC message, then the trailers.
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn grpc_message(body: &[u8]) -> anyhow::Result<&[u8]> {
    if body.len() < 5 {
        bail!("gRPC message shorter than its 5-byte prefix");
    }
    if body[0] != 0 {
        bail!("compressed gRPC message without grpc-encoding support in the receiver");
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + len).context("gRPC message shorter than its length prefix")
}

/// The spans in an `ExportTraceServiceRequest`, counted by walking its protobuf framing
/// (`resource_spans` = 1 → `scope_spans` = 2 → `spans` = 2) without decoding the spans, so a
/// benchmark's receiver spends little of the CPU it shares with the proxy. `None` when the
/// framing is malformed.
fn count_spans(message: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for resource in fields(message, 1) {
        for scope in fields(resource?, 2) {
            for span in fields(scope?, 2) {
                span?;
                spans += 1;
            }
        }
    }
    Some(spans)
}

/// The length-delimited values of field `wanted` in a protobuf message; an item is `None` (and
/// the walk ends) where the message is malformed.
fn fields(mut buf: &[u8], wanted: u64) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        while !buf.is_empty() {
            let Some(key) = varint(&mut buf) else {
                buf = &[];
                return Some(None);
            };
            let skipped = match key & 7 {
                0 => varint(&mut buf).map(|_| 0),
                1 => Some(8),
                5 => Some(4),
                2 => varint(&mut buf).and_then(|n| usize::try_from(n).ok()),
                _ => None,
            };
            let Some(n) = skipped.filter(|n| *n <= buf.len()) else {
                buf = &[];
                return Some(None);
            };
            let (value, rest) = buf.split_at(n);
            buf = rest;
            if key >> 3 == wanted && key & 7 == 2 {
                return Some(Some(value));
            }
        }
        None
    })
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn plain(status: u16, text: &str) -> Response<ReplyBody> {
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(text.to_owned()))));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn request(shape: &[&[usize]]) -> Vec<u8> {
        let span = |i: usize| Span { name: format!("span {i}"), trace_id: vec![7; 16], ..Default::default() };
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    scope_spans: scopes
                        .iter()
                        .map(|n| ScopeSpans { spans: (0..*n).map(span).collect(), ..Default::default() })
                        .collect(),
                    schema_url: "https://opentelemetry.io/schemas/1.37.0".into(),
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn walking_the_framing_counts_what_decoding_counts() {
        for shape in [&[][..], &[&[3][..]], &[&[2, 0, 5][..], &[1]], &[&[200][..]]] {
            let bytes = request(shape);
            let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
            let spans: usize = decoded.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            assert_eq!(count_spans(&bytes), Some(spans as u64), "shape {shape:?}");
        }
    }

    #[test]
    fn a_cut_message_is_malformed() {
        let bytes = request(&[&[4]]);
        assert_eq!(count_spans(&bytes[..bytes.len() - 3]), None);
        assert_eq!(count_spans(&[0x0a, 0x80]), None);
    }
}
