//! Per-call hot path of the proxy, each next to a baseline measured in the same run.
//!
//! - `identify`: parsing `Proxy-Authorization` and assigning a step, vs base64-decoding alone;
//! - `headers`: cleaning an OpenAI-SDK-shaped request head for the upstream, vs cloning it;
//! - `authorize`: the egress allow-list decision, vs one `HashSet` lookup;
//! - `call`: creating a call context (receipt id, clock), vs reading the clock;
//! - `error`: building a contract error response;
//! - `tls`: serving a cached interception config, vs minting a leaf (a cache miss);
//! - `record`: building a call's receipt, chaining it and writing it to the spool, with a batch
//!   seal (Merkle tree, one ed25519 signature, fdatasync) every 128 receipts, amortized — vs
//!   building and serializing the receipt alone;
//! - `roundtrip_cpu`: JSON calls through the sidecar listener vs the same calls straight to the
//!   in-process upstream, over loopback, 16 in flight. Reported as *CPU time of the whole process*
//!   (every thread, user + kernel) per call, not wall time: with client, proxy and upstream
//!   sharing two cores, wall time measures the scheduler. The difference between the two rows is
//!   the proxy's CPU per call, client and upstream included in both.
//!
//! Run: `cargo bench -p fleetforge-proxy --bench hot_path`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future as _;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use fleetforge_proxy::authorize::Subject;
use fleetforge_proxy::config::{Config, Flags};
use fleetforge_proxy::context::{Call, ConnCtx, ConnMode, Target};
use fleetforge_proxy::error::{ErrorKind, Phase, ProxyError, Side};
use fleetforge_proxy::metrics::ListenerKind;
use fleetforge_proxy::{Proxy, authorize, headers, identify};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The allocator (feature `mimalloc`, on by default): it returns what a burst allocated, where
/// glibc's malloc kept it (README, Benchmarks).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn sdk_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.openai.com"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("authorization", "Bearer sk-proj-0123456789abcdef0123456789abcdef"),
        ("content-type", "application/json"),
        ("content-length", "182"),
        ("user-agent", "OpenAI/Python 3.57.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "3.57.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-retry-count", "0"),
        ("x-fleetforge-step", "plan"),
        ("proxy-authorization", "Basic cnVuLTE6dG9rZW4tYWJj"),
        ("connection", "keep-alive"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn config(env: &[(&str, &str)]) -> Config {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    Config::load(None, &|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()), &Flags::default()).unwrap()
}

fn conn_ctx() -> ConnCtx {
    ConnCtx {
        listener: ListenerKind::Forward,
        worker: 0,
        mode: ConnMode::Intercepted,
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        target: None,
        base_path: String::new(),
        credentials: None,
        default_run: None,
        seal: true,
    }
}

fn bench_pipeline_pieces(c: &mut Criterion) {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().display().to_string();
    let running = Proxy::start(config(&[
        ("FLEETFORGE_HOME", &home_s),
        ("FLEETFORGE_PROXY_LISTEN", "127.0.0.1:0"),
        ("FLEETFORGE_ADMIN_LISTEN", "127.0.0.1:0"),
        ("FLEETFORGE_WORKERS", "1"),
        (
            "FLEETFORGE_ALLOWED_HOSTS",
            "api.openai.com,api.anthropic.com,*.googleapis.com,api.mistral.ai,api.groq.com,*.together.ai,openrouter.ai,api.cohere.com,*.internal.example.com,tools.example.com",
        ),
    ]))
    .unwrap();
    let proxy = running.proxy.clone();
    let headers_in = sdk_headers();
    let conn = conn_ctx();

    let mut g = c.benchmark_group("identify");
    g.bench_function("proxy_authorization_and_step", |b| {
        b.iter(|| {
            let mut call = Call::new(&conn, Method::POST);
            identify::identify(&proxy, &conn, &mut call, black_box(&headers_in)).unwrap();
            black_box(call.identity.map(|i| i.step))
        })
    });
    g.bench_function("baseline_base64_decode", |b| {
        b.iter(|| STANDARD.decode(black_box("cnVuLTE6dG9rZW4tYWJj")).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("headers");
    g.bench_function("for_upstream", |b| {
        b.iter_batched(
            || headers_in.clone(),
            |mut h| {
                headers::for_upstream(&mut h);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("baseline_clone", |b| b.iter(|| black_box(&headers_in).clone()));
    g.finish();

    let target = Target::new(http::uri::Scheme::HTTPS, "api.openai.com".into(), 443).unwrap();
    let set: HashSet<String> = ["api.openai.com".to_owned()].into_iter().collect();
    let mut g = c.benchmark_group("authorize");
    g.bench_function("destination_allow_list", |b| {
        b.iter_batched(
            || {
                let mut call = Call::new(&conn, Method::CONNECT);
                call.target = Some(black_box(&target).clone());
                call
            },
            |mut call| {
                // A CONNECT's destination decision never waits: one poll completes it.
                let decided = std::pin::pin!(authorize::authorize(&proxy, &mut call, Subject::Connect))
                    .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                assert!(matches!(decided, std::task::Poll::Ready(Ok(_))));
                call
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("baseline_hashset_lookup", |b| b.iter(|| set.contains(black_box("api.openai.com"))));
    g.finish();

    let mut g = c.benchmark_group("call");
    g.bench_function("new", |b| b.iter(|| Call::new(black_box(&conn), Method::POST)));
    g.bench_function("baseline_instant_now", |b| b.iter(Instant::now));
    g.finish();

    let err = ProxyError::new(ErrorKind::PolicyDenied, Phase::Authorize, Side::Agent, "host evil.test is not allowed")
        .with_reason("host_not_allowed");
    c.bench_function("error/to_response", |b| {
        b.iter(|| black_box(&err).to_response(Some("01a218e0-e98b-769d-8bc4-f4f255077a05")))
    });

    let mut g = c.benchmark_group("tls");
    proxy.ca.server_config("api.openai.com").unwrap();
    g.bench_function("cached_config", |b| b.iter(|| proxy.ca.server_config(black_box("api.openai.com")).unwrap()));
    let mut n = 0u64;
    g.bench_function("mint_leaf_cache_miss", |b| {
        b.iter(|| {
            n += 1;
            proxy.ca.server_config(&format!("h{n}.example.com")).unwrap()
        })
    });
    g.finish();
    drop(running);
}

/// A minimal upstream: answers every request with a fixed chat-completion-sized JSON body.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(format!(
        r#"{{"id":"x","object":"chat.completion","choices":[{{"message":{{"content":"{}"}}}}]}}"#,
        "y".repeat(600)
    ));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// CPU time consumed so far by the whole process (every thread, user + kernel).
#[allow(unsafe_code)]
fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec we pass, which lives on this stack frame.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Calls in flight at once, as in the load benchmarks (oha -c 16): keeps every thread busy, so
/// the figure is the work per call rather than the cost of waking idle threads.
const IN_FLIGHT: u64 = 16;

fn bench_roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let up = rt.block_on(upstream());
    let home = tempfile::tempdir().unwrap();
    let mut config = config(&[
        ("FLEETFORGE_HOME", &home.path().display().to_string()),
        ("FLEETFORGE_PROXY_LISTEN", "127.0.0.1:0"),
        ("FLEETFORGE_ADMIN_LISTEN", "127.0.0.1:0"),
        ("FLEETFORGE_WORKERS", "1"),
        ("FLEETFORGE_RESOLVE", &format!("llm.bench.test={up}")),
    ]);
    let flags = Flags { sidecar: vec!["127.0.0.1:0=http://llm.bench.test".into()], ..Flags::default() };
    config.sidecars = Config::load(None, &|_| None, &flags).unwrap().sidecars;
    let running = Proxy::start(config).unwrap();
    let sidecar = running.sidecars[0];
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = Bytes::from_static(br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#);
    let call = |addr: SocketAddr| {
        let req = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            assert!(resp.status().is_success());
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    };
    let mut g = c.benchmark_group("roundtrip_cpu");
    for (name, addr) in [("baseline_direct", up), ("through_sidecar", sidecar)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = process_cpu();
                    let lanes = (0..IN_FLIGHT).map(|lane| {
                        let n = iters / IN_FLIGHT + u64::from(lane < iters % IN_FLIGHT);
                        let call = &call;
                        async move {
                            for _ in 0..n {
                                black_box(call(addr).await);
                            }
                        }
                    });
                    futures_join_all(lanes).await;
                    process_cpu() - start
                })
            })
        });
    }
    g.finish();
    drop(running);
}

/// Runs futures concurrently on the current task (a tiny `join_all`, to avoid a dependency).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
}

fn bench_record(c: &mut Criterion) {
    use fleetforge_proxy::context::{Identity, IdentitySource};
    use fleetforge_proxy::record::receipt_body;
    use fleetforge_proxy::spool::{Spool, SpoolLimits};
    use fleetforge_trust::receipt::Chain;

    let dir = tempfile::tempdir().unwrap();
    let key = fleetforge_trust::sign::SigningKey::load_or_create(&dir.path().join("key.pem")).unwrap();
    let limits = SpoolLimits {
        max_bytes: 1 << 40,
        segment_bytes: 16 << 20,
        seal_interval: std::time::Duration::from_millis(5),
        fsync: true,
        min_free_disk: 0,
    };
    let spool = Spool::open(&dir.path().join("spool"), key, limits).unwrap();
    let run = fleetforge_trust::RunId::new("run-bench").unwrap();
    let mut call = Call::new(&conn_ctx(), Method::POST);
    call.target = Some(Target::new(http::uri::Scheme::HTTPS, "api.openai.com".into(), 443).unwrap());
    call.path = "/v1/chat/completions".into();
    call.identity = Some(Identity {
        run: run.clone(),
        token: None,
        source: IdentitySource::ProxyAuthorization,
        step: 7,
        step_label: Some("plan".into()),
    });
    call.status = Some(http::StatusCode::OK);
    call.request_bytes = 412;
    call.response_bytes = 1830;
    call.request_digest = Some([7; 32]);
    call.response_digest = Some([9; 32]);
    let outcome = fleetforge_proxy::context::Outcome::Completed;

    let mut g = c.benchmark_group("record");
    g.bench_function("build_chain_spool_and_sign_amortized", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                spool.append(run.as_str(), |chain| receipt_body(&call, &outcome, chain, run.clone())).unwrap();
                if i % 128 == 127 {
                    spool.seal().unwrap();
                }
            }
            spool.seal().unwrap();
            start.elapsed()
        })
    });
    let chain = Chain { lane: spool.key_id().to_owned(), prev_hash: "0".repeat(64), seq: 1 };
    g.bench_function("baseline_build_and_serialize", |b| {
        b.iter(|| receipt_body(&call, &outcome, chain.clone(), run.clone()).canonical().unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_pipeline_pieces, bench_record, bench_roundtrip);
criterion_main!(benches);
