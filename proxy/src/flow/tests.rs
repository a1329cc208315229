//! The pipeline in memory: a client on one end of a `tokio::io::duplex` pipe, the pipeline's hyper
//! service on the other, and an in-process upstream on 127.0.0.1. Each test drives a call through
//! `flow` (identify, authorize, meter, forward, the tap, settle, record) and checks what the
//! client, the upstream and the spool saw; `authorize` is also asked directly.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::authorize::{Subject, authorize};
use crate::config::{Config, Flags};
use crate::context::{Call, ConnCtx, ConnMode, Target};
use crate::error::ErrorKind;
use crate::metrics::ListenerKind;
use crate::start::Running;
use crate::state::Proxy;

/// What the upstream received: method, path, headers, body.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An in-process HTTP/1.1 upstream that answers every request with a small JSON body and keeps
/// what it received.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
                            record.lock().unwrap().push(Seen { path, headers: parts.headers, body });
                            let reply = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(reply.as_bytes())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A proxy whose state the tests drive directly: listeners on ephemeral ports (unused by the
/// in-memory tests), a fresh home, receipts on, `up.test` pinned to the in-process upstream.
struct Harness {
    running: Option<Running>,
    proxy: Arc<Proxy>,
    upstream: Upstream,
    _home: tempfile::TempDir,
}

impl Harness {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let upstream = Upstream::start().await;
        let home = tempfile::tempdir().unwrap();
        let resolve = format!("up.test={}", upstream.addr);
        let mut env: Vec<(String, String)> = vec![
            ("FLEETFORGE_HOME".into(), home.path().display().to_string()),
            ("FLEETFORGE_PROXY_LISTEN".into(), "127.0.0.1:0".into()),
            ("FLEETFORGE_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("FLEETFORGE_WORKERS".into(), "1".into()),
            ("FLEETFORGE_RESOLVE".into(), resolve),
        ];
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        // The last setting of a name wins, so `extra` overrides the defaults above.
        let lookup = move |k: &str| env.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let config = Config::load(None, &lookup, &Flags::default()).unwrap();
        let running = tokio::task::spawn_blocking(move || Proxy::start(config)).await.unwrap().unwrap();
        let proxy = running.proxy.clone();
        Self { running: Some(running), proxy, upstream, _home: home }
    }

    /// A connection context as a listener of `mode` builds it.
    fn conn(&self, mode: ConnMode) -> Arc<ConnCtx> {
        let (listener, target) = match mode {
            ConnMode::Sidecar => {
                (ListenerKind::Sidecar, Some(Target::new(Scheme::HTTP, "up.test".into(), 80).unwrap()))
            }
            _ => (ListenerKind::Forward, None),
        };
        Arc::new(ConnCtx {
            listener,
            worker: 0,
            mode,
            peer: SocketAddr::from(([127, 0, 0, 1], 40_000)),
            target,
            base_path: String::new(),
            credentials: None,
            default_run: None,
            seal: true,
        })
    }

    /// Serves one connection of `conn` over an in-memory pipe and returns the client's end.
    async fn client(
        &self,
        conn: Arc<ConnCtx>,
    ) -> hyper::client::conn::http1::SendRequest<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let service = crate::listener::pipeline(self.proxy.clone(), conn);
        let server = self.proxy.h1.serve_connection(TokioIo::new(server_io), service);
        tokio::spawn(async move {
            let _ = server.await;
        });
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        send
    }

    /// The run's last spooled seq, waiting up to 5 s for the receipt to be recorded (it is written
    /// when the response body ends, after the client has it).
    async fn spooled(&self, run: &str, seq: u64) -> Option<u64> {
        let spool = self.proxy.spool.as_ref().expect("receipts are on");
        for _ in 0..250 {
            if spool.last_seq(run) >= Some(seq) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        spool.last_seq(run)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // Shutdown joins the worker threads: off the test's runtime.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(running.shutdown());
            });
        }
    }
}

fn full(body: &'static str) -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    Full::new(Bytes::from_static(body.as_bytes())).boxed()
}

async fn json(resp: Response<Incoming>) -> (StatusCode, http::HeaderMap, Value) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_call_is_forwarded_without_credentials_and_recorded_once() {
    let h = Harness::start(&[]).await;
    let mut client = h.client(h.conn(ConnMode::Sidecar)).await;
    for step in 1..=2u64 {
        let req = Request::post("/v1/chat/completions")
            .header("host", "up.test")
            .header("content-type", "application/json")
            .header("x-fleetforge-run", "run-mem")
            .header("x-fleetforge-token", "secret-token")
            .body(full(CHAT))
            .unwrap();
        // The connection takes its next request once it has finished the previous response.
        client.ready().await.unwrap();
        let (status, headers, body) = json(client.send_request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], "chatcmpl-1");
        assert_eq!(headers["x-fleetforge-run"], "run-mem");
        assert!(headers.contains_key("x-fleetforge-receipt"), "{headers:?}");
        assert_eq!(h.spooled("run-mem", step).await, Some(step), "one receipt per call, in step order");
    }
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].body, CHAT.as_bytes(), "the body is forwarded as sent");
    for name in ["x-fleetforge-run", "x-fleetforge-token"] {
        assert!(!seen[0].headers.contains_key(name), "{name} is removed before forwarding");
    }
    let ledger = h.proxy.runs.get(&fleetforge_trust::RunId::new("run-mem").unwrap()).expect("the run's ledger");
    assert_eq!(ledger.in_flight(), 0, "both calls settled");
    let state = ledger.snapshot();
    assert_eq!((state.calls, state.hosts.as_slice()), (2, &["up.test".to_owned()][..]), "{state:?}");
    assert_eq!(state.tokens_used, 2 * (7 + 3), "the usage the tap read, settled into the run's figures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_host_is_refused_before_its_body_is_read_and_still_recorded() {
    let h = Harness::start(&[("FLEETFORGE_ALLOWED_HOSTS", "up.test")]).await;
    let mut client = h.client(h.conn(ConnMode::Proxy)).await;
    // A body that never ends: if the proxy waited for it, no answer would come.
    let endless = Endless.boxed();
    let req = Request::post("http://denied.test/v1/chat/completions")
        .header("host", "denied.test")
        .header("x-fleetforge-run", "run-deny")
        .header("content-length", "1000000")
        .body(endless)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), client.send_request(req)).await;
    let (status, headers, body) = json(answer.expect("answered without the body").unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["type"], "policy_denied");
    assert_eq!(body["error"]["reasons"][0], "host_not_allowed", "{body}");
    assert_eq!(body["error"]["receipt_id"], headers["x-fleetforge-receipt"].to_str().unwrap());
    assert_eq!(h.spooled("run-deny", 1).await, Some(1), "a refused call leaves a receipt too");
    assert!(h.upstream.seen().is_empty(), "nothing reached the upstream");
}

/// A request body that never yields a byte nor ends.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_with_a_receipt() {
    // A port nobody listens on: bind one, then close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let h = Harness::start(&[("FLEETFORGE_RESOLVE", &format!("up.test={closed}"))]).await;
    let mut client = h.client(h.conn(ConnMode::Sidecar)).await;
    let req = Request::post("/v1/chat/completions")
        .header("host", "up.test")
        .header("x-fleetforge-run", "run-down")
        .body(full(CHAT))
        .unwrap();
    let (status, headers, body) = json(client.send_request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["type"], "upstream_error");
    assert!(headers.contains_key("x-fleetforge-receipt"));
    assert_eq!(h.spooled("run-down", 1).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_decides_a_destination_alone_for_connect() {
    let h = Harness::start(&[("FLEETFORGE_ALLOWED_HOSTS", "up.test,other.test")]).await;
    let conn = h.conn(ConnMode::Proxy);
    let ask = |host: &str, port: u16| {
        let mut call = Call::new(&conn, Method::CONNECT);
        call.target = Some(Target::new(Scheme::HTTPS, host.into(), port).unwrap());
        call
    };
    let mut ok = ask("other.test", 443);
    assert!(authorize(&h.proxy, &mut ok, Subject::Connect).await.is_ok());
    let mut host = ask("elsewhere.test", 443);
    let err = authorize(&h.proxy, &mut host, Subject::Connect).await.unwrap_err();
    assert_eq!((err.kind, err.reasons.as_slice()), (ErrorKind::PolicyDenied, &["host_not_allowed".to_owned()][..]));
    let mut port = ask("other.test", 22);
    let err = authorize(&h.proxy, &mut port, Subject::Connect).await.unwrap_err();
    assert_eq!(err.reasons, ["port_not_allowed"]);
    // The proxy's own forward listener is refused by address (with every host and port allowed).
    let open = Harness::start(&[("FLEETFORGE_ALLOWED_PORTS", "*")]).await;
    let forward = open.running.as_ref().unwrap().forward;
    let mut own = Call::new(&open.conn(ConnMode::Proxy), Method::CONNECT);
    own.target = Some(Target::new(Scheme::HTTPS, "127.0.0.1".into(), forward.port()).unwrap());
    let err = authorize(&open.proxy, &mut own, Subject::Connect).await.unwrap_err();
    assert_eq!(err.reasons, ["proxy_loop"], "{forward}");
}

/// The forward listener only parses and hands off: a `CONNECT` to a host that is not intercepted
/// is decided by `flow::connect`, answered 200, relayed byte for byte, and recorded as one tunnel
/// receipt when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_listener_relays_a_connect_tunnel_and_records_it_on_close() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let h = Harness::start(&[]).await;
    let forward = h.running.as_ref().unwrap().forward;
    let mut tcp = tokio::net::TcpStream::connect(forward).await.unwrap();
    // Basic run-tunnel:token
    tcp.write_all(b"CONNECT up.test:80 HTTP/1.1\r\nHost: up.test:80\r\nProxy-Authorization: Basic cnVuLXR1bm5lbDp0b2tlbg==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "the proxy closed before answering CONNECT");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Plain HTTP inside the tunnel reaches the upstream.
    tcp.write_all(b"GET /inside HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("chatcmpl-1"), "{answer}");
    assert_eq!(h.upstream.seen()[0].path, "/inside");
    drop(tcp);
    assert!(h.spooled("run-tunnel", 1).await >= Some(1), "the tunnel is recorded when it closes");
}

/// The size of the future `service` returns, without calling it.
fn future_size<S>(_: &S) -> usize
where
    S: hyper::service::Service<Request<Incoming>>,
{
    std::mem::size_of::<Option<S::Future>>()
}

/// hyper keeps a box the size of the service's future for every open connection, idle or not: the
/// pipeline's future is a pointer to the call's state, which is allocated only while a call runs.
#[tokio::test]
async fn an_idle_connection_holds_no_call_state() {
    let h = Harness::start(&[]).await;
    let service = crate::listener::pipeline(h.proxy.clone(), h.conn(ConnMode::Sidecar));
    let size = future_size(&service);
    eprintln!("the pipeline's future: {size} bytes");
    assert!(size <= 64, "the pipeline's future is {size} bytes; every open connection would hold that much");
}

/// An intercepted connection's task holds the TLS and HTTP state of the open connection, not the
/// handshake's nor a call's.
#[tokio::test]
async fn an_intercepted_connection_task_is_small() {
    let h = Harness::start(&[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut ctx = (*h.conn(ConnMode::Intercepted)).clone();
    ctx.target = Some(Target::new(Scheme::HTTPS, "up.test".into(), 443).unwrap());
    let io = crate::io::ClientIo::new(Bytes::new(), stream);
    let task = crate::listener::intercept::serve(h.proxy.clone(), ctx, io, h.proxy.drain.watch());
    let size = std::mem::size_of_val(&task);
    eprintln!("an intercepted connection's task: {size} bytes");
    assert!(size <= 2048, "an intercepted connection's task is {size} bytes");
}
