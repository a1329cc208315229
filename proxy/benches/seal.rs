//! Sealing as a call pays it, for a 4 KB JSON chat request and its 1 KB JSON answer.
//!
//! - `seal_request_4k`: the replay key (JSON parse, JCS, SHA-256) and the sealed request body
//!   (its address is the body digest every receipt already carries) — what the forward phase adds
//!   before the request leaves;
//! - `seal_call_4k`: the whole per-call cost on the request path: the request above, the
//!   response body's digest (the tap's, which every receipt already carries), the response
//!   envelope (JCS + SHA-256) and handing the three blobs to the store's writer thread (one job);
//! - `seal_compress_4k`: what the writer thread then spends per call, off the request path:
//!   zstd level 1 of the request and the response.
//!
//! Run: `cargo bench -p fleetforge-proxy --bench seal`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleetforge_proxy::config::SealConfig;
use fleetforge_proxy::context::{Call, ConnCtx, ConnMode, Target};
use fleetforge_proxy::metrics::ListenerKind;
use fleetforge_proxy::seal::{SealStore, response_blobs, seal_request};
use fleetforge_trust::canonical::sha256;
use http::uri::Scheme;
use http::{HeaderMap, HeaderValue, Method};

/// The proxy's allocator (feature `mimalloc`, on by default), as in the other benches.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A chat request of about 4 KB: a system prompt and a conversation of realistic turns.
fn request_4k() -> Bytes {
    let mut messages = vec![
        serde_json::json!({"role": "system", "content": "You are a careful research assistant. Cite sources, keep answers short, and say when you are unsure."}),
    ];
    let mut i = 0;
    while serde_json::to_vec(&messages).unwrap().len() < 3900 {
        messages.push(serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": format!("Turn {i}: what changed in the quarterly figures for region {i}, and which line items explain most of the difference against the plan?")}));
        i += 1;
    }
    Bytes::from(
        serde_json::to_vec(
            &serde_json::json!({"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 512, "messages": messages}),
        )
        .unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    let body = request_4k();
    assert!((3900..4400).contains(&body.len()), "{}", body.len());
    let response = Bytes::from(format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":900,"completion_tokens":180,"total_tokens":1080}}}}"#,
        "The difference comes mostly from deferred revenue and a one-off hardware purchase. ".repeat(10)
    ));
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
    let mut call = Call::new(&conn, Method::POST);
    call.target = Some(Target::new(Scheme::HTTPS, "api.openai.com".into(), 443).unwrap());
    call.path = "/v1/chat/completions".into();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("authorization", HeaderValue::from_static("Bearer sk-bench"));
    headers.insert("x-stainless-retry-count", HeaderValue::from_static("0"));
    let rules = SealConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(dir.path()).unwrap();
    // The request body's digest the forward phase computes for every receipt, sealed or not.
    let body_digest = sha256(&body);
    let response_headers = vec![("content-type".to_owned(), "application/json".to_owned())];

    g.bench_function("seal_request_4k", |b| {
        b.iter(|| seal_request(black_box(&rules), &call, &headers, black_box(&body), Some(body_digest), true).unwrap())
    });
    g.bench_function("seal_call_4k", |b| {
        b.iter(|| {
            let sealed =
                seal_request(black_box(&rules), &call, &headers, black_box(&body), Some(body_digest), true).unwrap();
            let mut blobs = vec![sealed.blob.clone().map(|(a, b)| (a, vec![b])).unwrap()];
            let digest = sha256(black_box(&response));
            let meta = response_blobs(&response_headers, 200, digest, vec![(response.clone(), 0)], &mut blobs).unwrap();
            store.put(blobs);
            meta
        })
    });
    let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
    g.bench_function("seal_compress_4k", |b| {
        b.iter(|| {
            let a = compressor.compress(black_box(&body)).unwrap();
            let r = compressor.compress(black_box(&response)).unwrap();
            a.len() + r.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
