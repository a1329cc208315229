//! The exporter against real sockets: a collector on 127.0.0.1 speaking HTTP/1.1 protobuf or
//! gRPC over HTTP/2, a collector that is down, and one that never answers.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;

use crate::config::{ExportConfig, Protocol, Sampler, Semconv};
use crate::proto;
use crate::span::{Kind, Span, Status, Value};
use crate::{Started, Tracer};

/// What the collector received: (path, content-type, decoded request).
type Seen = Arc<Mutex<Vec<(String, String, proto::ExportTraceServiceRequest)>>>;

async fn collector(grpc: bool) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ct = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let payload = if grpc { body.slice(5..) } else { body };
                        let decoded = proto::ExportTraceServiceRequest::decode(payload).unwrap();
                        s.lock().unwrap().push((path, ct, decoded));
                        let reply = proto::ExportTraceServiceResponse::default().encode_to_vec();
                        let response = if grpc {
                            let mut framed = vec![0u8];
                            framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                            framed.extend_from_slice(&reply);
                            // grpc-status in a trailers-only style header keeps the server simple.
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", "0")
                                .body(Full::new(Bytes::from(framed)))
                                .unwrap()
                        } else {
                            Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::from(reply)))
                                .unwrap()
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn config(endpoint: &str, protocol: Protocol) -> ExportConfig {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", if protocol == Protocol::Grpc { "grpc" } else { "http/protobuf" }.to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_owned()),
        ("OTEL_SERVICE_NAME", "export-test".to_owned()),
    ];
    ExportConfig::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()), "x", "1").unwrap().unwrap()
}

fn span(tracer: &Tracer, name: &str) -> Span {
    let started: Started = tracer.start_span(None);
    let mut span = started.span(name.to_owned(), Kind::Client, 1_000);
    span.end_unix_nano = 2_000;
    span.set("gen_ai.request.model", "gpt-4o");
    span.set("gen_ai.usage.input_tokens", 12u64);
    span.set("gen_ai.response.finish_reasons", Value::StrArray(vec!["stop".into()]));
    span.status = Status::Error("boom".into());
    span
}

async fn exported_to(protocol: Protocol) {
    let (endpoint, seen) = collector(protocol == Protocol::Grpc).await;
    let tracer = Tracer::start(config(&endpoint, protocol)).unwrap();
    assert_eq!(tracer.semconv, Semconv::Dual);
    for i in 0..3 {
        tracer.submit(span(&tracer, &format!("chat gpt-4o #{i}")));
    }
    assert!(
        tokio::task::spawn_blocking(move || {
            let ok = tracer.flush(Duration::from_secs(5));
            (ok, tracer)
        })
        .await
        .map(|(ok, tracer)| {
            assert_eq!(tracer.stats().exported.load(std::sync::atomic::Ordering::Relaxed), 3);
            ok
        })
        .unwrap()
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one batch");
    let (path, ct, req) = &seen[0];
    if protocol == Protocol::Grpc {
        assert_eq!(path, "/opentelemetry.proto.collector.trace.v1.TraceService/Export");
        assert_eq!(ct, "application/grpc");
    } else {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/x-protobuf");
    }
    let rs = &req.resource_spans[0];
    let service = &rs.resource.as_ref().unwrap().attributes[0];
    assert_eq!(service.key, "service.name");
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 3);
    assert_eq!(spans[0].name, "chat gpt-4o #0");
    assert_eq!(spans[0].kind, 3);
    assert_eq!((spans[0].start_time_unix_nano, spans[0].end_time_unix_nano), (1_000, 2_000));
    assert_eq!(spans[0].trace_id.len(), 16);
    assert_eq!(spans[0].status.as_ref().unwrap().code, 2);
    let model = spans[0].attributes.iter().find(|kv| kv.key == "gen_ai.request.model").unwrap();
    assert_eq!(model.value.as_ref().unwrap().value, Some(proto::any_value::Value::StringValue("gpt-4o".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_http_protobuf() {
    exported_to(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_grpc() {
    exported_to(Protocol::Grpc).await;
}

#[test]
fn a_dead_collector_costs_the_caller_nothing_and_is_counted() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = config(&format!("http://127.0.0.1:{port}"), Protocol::HttpProtobuf);
    c.max_queue = 8;
    c.max_batch = 8;
    c.schedule_delay = Duration::from_secs(60);
    c.sampler = Sampler::AlwaysOn;
    let tracer = Tracer::start(c).unwrap();
    let t0 = Instant::now();
    for _ in 0..1_000 {
        tracer.submit(span(&tracer, "chat"));
    }
    // A thousand submits against a full queue return at once.
    assert!(t0.elapsed() < Duration::from_millis(200), "{:?}", t0.elapsed());
    let stats = tracer.stats();
    let (queued, dropped) = (
        stats.queued.load(std::sync::atomic::Ordering::Relaxed),
        stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(queued + dropped, 1_000);
    // The thread drains a batch or two while the loop runs; the rest is dropped, not waited for.
    assert!(dropped >= 900, "{dropped}");
    tracer.flush(Duration::from_secs(5));
    assert!(stats.failed.load(std::sync::atomic::Ordering::Relaxed) >= 8);
    assert_eq!(stats.exported.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_stalled_collector_is_cut_off_by_the_timeout() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            held.push(s);
        }
    });
    let mut c = config(&format!("http://{addr}"), Protocol::HttpProtobuf);
    c.timeout = Duration::from_millis(200);
    let tracer = Tracer::start(c).unwrap();
    tracer.submit(span(&tracer, "chat"));
    let t0 = Instant::now();
    // Three attempts of 200 ms with 100 + 400 ms between them.
    assert!(tracer.flush(Duration::from_secs(10)));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(tracer.stats().failed.load(std::sync::atomic::Ordering::Relaxed), 1);
}
