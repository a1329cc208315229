//! A call's span as the record phase pays for it: the OpenTelemetry attributes built from a
//! finished OpenAI chat call (GenAI names in both conventions, HTTP, trust) and the span queued
//! for the exporter thread, which sends it to a local collector off the measured path.
//!
//! - `span_build_queue`: `telemetry::span` + `Tracer::submit` (the bar: ≤ 5 µs of CPU);
//! - `span_build`: building alone;
//! - `trace_begin`: reading a caller's `traceparent` and choosing the span's ids.
//!
//! Run: `cargo bench -p fleetforge-proxy --bench telemetry`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleetforge_otel::{ExportConfig, Parent, Semconv, Tracer};
use fleetforge_proxy::context::{Call, ConnCtx, ConnMode, Outcome, Target};
use fleetforge_proxy::facts::{LlmCall, RequestFacts};
use fleetforge_proxy::metrics::ListenerKind;
use fleetforge_proxy::usage::Reply;
use fleetforge_trust::receipt::Usage;
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// The proxy's allocator (feature `mimalloc`, on by default), as in the other benches.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An OTLP/HTTP collector on 127.0.0.1 that answers every export with 200 (and reads the body).
fn collector() -> String {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    format!("http://{addr}")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("telemetry");
    g.throughput(Throughput::Elements(1));
    let endpoint = collector();
    let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let config =
        ExportConfig::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()), "bench", "0")
            .unwrap()
            .unwrap();
    let tracer = Tracer::start(config).unwrap();
    assert_eq!(tracer.semconv, Semconv::Dual);

    let conn = ConnCtx {
        listener: ListenerKind::Forward,
        worker: 0,
        mode: ConnMode::Intercepted,
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        target: None,
        base_path: String::new(),
        credentials: None,
        default_run: None,
        seal: true,
    };
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    let parent = Parent::from_headers(&headers);
    let mut call = Call::new(&conn, Method::POST);
    call.target = Some(Target::new(Scheme::HTTPS, "api.openai.com".into(), 443).unwrap());
    call.path = "/v1/chat/completions".into();
    call.status = Some(StatusCode::OK);
    call.facts = Some(RequestFacts {
        model: Some("gpt-4o-mini".into()),
        llm: Some(LlmCall {
            provider: "openai",
            operation: "chat",
            model: "gpt-4o-mini".into(),
            max_tokens: Some(512),
            stream: false,
            stream_usage: None,
            messages: 12,
            tools: Vec::new(),
        }),
        mcp: None,
    });
    call.usage = Some(Usage {
        cached_input_tokens: None,
        cost_micro_usd: Some(243),
        input_tokens: Some(900),
        model: Some("gpt-4o-mini".into()),
        output_tokens: Some(180),
        provider: Some("openai".into()),
        reasoning_tokens: None,
    });
    call.reply = Some(Reply {
        id: Some("chatcmpl-9x8y7z".into()),
        model: Some("gpt-4o-mini-2024-07-18".into()),
        finish_reasons: vec!["stop".into()],
    });
    call.decided.packs = vec!["allowlist@sha256:1f2e".into(), "mcp-tools@sha256:9a8b".into()];
    let started = tracer.start_span(parent.as_ref());
    let outcome = Outcome::Completed;

    g.bench_function("trace_begin", |b| {
        b.iter(|| {
            let p = Parent::from_headers(black_box(&headers));
            black_box(tracer.start_span(p.as_ref()))
        })
    });
    g.bench_function("span_build", |b| {
        b.iter(|| black_box(fleetforge_proxy::telemetry::span(&call, &outcome, &started, Semconv::Dual)))
    });
    g.bench_function("span_build_queue", |b| {
        b.iter(|| tracer.submit(fleetforge_proxy::telemetry::span(&call, &outcome, &started, Semconv::Dual)))
    });
    g.finish();
    // What the exporter made of it: nothing may have been dropped while the collector kept up.
    tracer.flush(Duration::from_secs(10));
    let stats = tracer.stats();
    eprintln!(
        "spans: queued {}, exported {}, dropped {} (queue full), failed {}",
        stats.queued.load(std::sync::atomic::Ordering::Relaxed),
        stats.exported.load(std::sync::atomic::Ordering::Relaxed),
        stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        stats.failed.load(std::sync::atomic::Ordering::Relaxed)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
