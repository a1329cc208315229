//! The fake upstream driven by a real hyper client over real TLS on 127.0.0.1.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{DEFAULT_CHUNKS, TOKENS_PER_PIECE, TestCa, Upstream, completion_text, pattern_bytes};

/// One client connection, HTTP/1.1 or h2 as negotiated.
enum Client {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// Connects over TLS to `upstream` with SNI `host`, offering `alpn`; returns the negotiated
    /// protocol too.
    async fn tls(upstream: &Upstream, ca: &TestCa, host: &str, alpn: &[&[u8]]) -> (Self, Vec<u8>) {
        let tcp = TcpStream::connect(upstream.addr()).await.expect("connect");
        let connector = TlsConnector::from(ca.client_config(alpn).expect("client config"));
        let name = ServerName::try_from(host.to_owned()).expect("server name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let negotiated = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
        let io = TokioIo::new(tls);
        let client = if negotiated == b"h2" {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await.expect("h2");
            tokio::spawn(conn);
            Self::H2(send)
        } else {
            let (send, conn) = http1::handshake(io).await.expect("h1");
            tokio::spawn(conn);
            Self::H1(send)
        };
        (client, negotiated)
    }

    async fn plain(upstream: &Upstream) -> Self {
        let tcp = TcpStream::connect(upstream.addr()).await.expect("connect");
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.expect("h1");
        tokio::spawn(conn);
        Self::H1(send)
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Self::H1(send) => send.send_request(request).await.expect("h1 response"),
            Self::H2(send) => send.send_request(request).await.expect("h2 response"),
        }
    }
}

/// An h2 `GET https://api.openai.com{path}` (h2 needs the scheme and authority in the URI).
fn h2_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://api.openai.com{path}")).body(Full::default()).expect("request")
}

async fn body_bytes(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.expect("response body").to_bytes()
}

async fn body_json(response: Response<Incoming>) -> Value {
    serde_json::from_slice(&body_bytes(response).await).expect("JSON body")
}

async fn tls_upstream() -> (tempfile::TempDir, TestCa, Upstream) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path()).expect("test CA");
    let upstream = Upstream::builder()
        .tls(&ca, &["api.openai.com", "api.anthropic.com", "127.0.0.1"])
        .start()
        .await
        .expect("start upstream");
    (dir, ca, upstream)
}

#[tokio::test]
async fn ca_file_is_written_and_ip_names_become_ip_sans() {
    let (dir, ca, upstream) = tls_upstream().await;
    let pem = std::fs::read_to_string(dir.path().join("test-ca.pem")).expect("CA file");
    assert_eq!(pem, ca.cert_pem());
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    // Verifying against an IP server name only succeeds with an IP SAN.
    let tcp = TcpStream::connect(upstream.addr()).await.expect("connect");
    let connector = TlsConnector::from(ca.client_config(&[]).expect("client config"));
    let name = ServerName::try_from("127.0.0.1").expect("IP server name");
    let tls = connector.connect(name, tcp).await.expect("TLS to an IP literal");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
}

#[tokio::test]
async fn json_completion_is_metered_and_recorded_with_sni() {
    let (_dir, ca, upstream) = tls_upstream().await;
    let (mut client, alpn) = Client::tls(&upstream, &ca, "api.openai.com", &[b"http/1.1"]).await;
    assert_eq!(alpn, b"http/1.1");

    let payload = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello world!"}],
    })
    .to_string();
    let response = client
        .send(
            Request::post("/v1/chat/completions")
                .header("host", "api.openai.com")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(payload.clone())))
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = body_json(response).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["choices"][0]["message"]["content"], completion_text(DEFAULT_CHUNKS));
    let completion = DEFAULT_CHUNKS as u64 * TOKENS_PER_PIECE;
    // "hello world!" is 12 characters: 3 prompt tokens.
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": 3, "completion_tokens": completion, "total_tokens": 3 + completion,
        })
    );

    let recorded = upstream.last_request().expect("a recorded request");
    assert_eq!(recorded.method, http::Method::POST);
    assert_eq!(recorded.uri, "/v1/chat/completions");
    assert_eq!(recorded.version, Version::HTTP_11);
    assert_eq!(recorded.body, payload.as_bytes());
    assert_eq!(recorded.sni.as_deref(), Some("api.openai.com"));
    assert_eq!(recorded.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn openai_stream_arrives_incrementally() {
    let (_dir, ca, upstream) = tls_upstream().await;
    let (mut client, _) = Client::tls(&upstream, &ca, "api.openai.com", &[b"http/1.1"]).await;
    let payload = json!({
        "model": "gpt-4o",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "abcd"}],
    });
    let started = Instant::now();
    let response = client
        .send(
            Request::post("/v1/chat/completions")
                .header("host", "api.openai.com")
                .header("x-test-chunks", "3")
                .header("x-test-chunk-delay-ms", "50")
                .body(Full::new(Bytes::from(payload.to_string())))
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");

    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            arrivals.push(started.elapsed());
            text.extend_from_slice(&data);
        }
    }
    // Role, 3 pieces, finish, usage, [DONE]: 7 events, 6 gaps of 50 ms.
    let first = arrivals.first().copied().expect("a first frame");
    let last = arrivals.last().copied().expect("a last frame");
    assert!(arrivals.len() >= 2, "frames arrived in one piece: {arrivals:?}");
    assert!(last - first >= Duration::from_millis(250), "not paced: {arrivals:?}");
    assert!(first < Duration::from_millis(200), "first frame held back: {arrivals:?}");

    let text = String::from_utf8(text).expect("UTF-8 SSE");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 7, "{text}");
    assert_eq!(events[6], "data: [DONE]");
    let chunks: Vec<Value> = events[..6]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data line")).expect("JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String =
        chunks[1..4].iter().map(|c| c["choices"][0]["delta"]["content"].as_str().expect("content")).collect();
    assert_eq!(content, completion_text(3));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["usage"]["prompt_tokens"], 1);
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 3 * TOKENS_PER_PIECE);
    assert!(chunks.iter().all(|c| c["model"] == "gpt-4o"));
}

#[tokio::test]
async fn anthropic_stream_and_message() {
    let (_dir, ca, upstream) = tls_upstream().await;
    let (mut client, _) = Client::tls(&upstream, &ca, "api.anthropic.com", &[b"http/1.1"]).await;
    let payload = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
    });
    let post = |body: &Value| {
        Request::post("/v1/messages")
            .header("host", "api.anthropic.com")
            .header("x-test-chunks", "2")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request")
    };

    let message = body_json(client.send(post(&payload)).await).await;
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert_eq!(message["content"][0]["text"], completion_text(2));
    // "be brief" + "hi there" = 16 characters: 4 input tokens.
    assert_eq!(message["usage"], json!({"input_tokens": 4, "output_tokens": 2 * TOKENS_PER_PIECE}));

    let mut streamed = payload.clone();
    streamed["stream"] = json!(true);
    let response = client.send(post(&streamed)).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(body_bytes(response).await.to_vec()).expect("UTF-8 SSE");
    let events: Vec<(&str, Value)> = text
        .split_terminator("\n\n")
        .map(|e| {
            let (event, data) = e.split_once('\n').expect("event and data lines");
            let event = event.strip_prefix("event: ").expect("event line");
            let data = data.strip_prefix("data: ").expect("data line");
            (event, serde_json::from_str(data).expect("JSON data"))
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 4);
    assert_eq!(events[3].1["delta"]["text"], "word1 ");
    assert_eq!(events[5].1["usage"]["output_tokens"], 2 * TOKENS_PER_PIECE);
    assert_eq!(upstream.last_request().and_then(|r| r.sni).as_deref(), Some("api.anthropic.com"));
}

#[tokio::test]
async fn echo_reports_and_records_headers() {
    let (_dir, ca, upstream) = tls_upstream().await;
    let (mut client, _) = Client::tls(&upstream, &ca, "api.openai.com", &[b"http/1.1"]).await;
    let response = client
        .send(
            Request::put("/echo/a/b?x=1&y=2")
                .header("host", "api.openai.com")
                .header("x-custom", "one")
                .header("x-custom", "two")
                .body(Full::new(Bytes::from_static(b"abc")))
                .expect("request"),
        )
        .await;
    let echo = body_json(response).await;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/a/b");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["headers"]["x-custom"], json!(["one", "two"]));
    assert_eq!(echo["headers"]["host"], json!(["api.openai.com"]));
    assert_eq!(echo["body_len"], 3);
    assert_eq!(echo["body_sha256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(echo["http_version"], "HTTP/1.1");
    assert_eq!(echo["sni"], "api.openai.com");

    let recorded = upstream.last_request().expect("a recorded request");
    let custom: Vec<_> = recorded.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["one", "two"]);
    assert_eq!(recorded.uri, "/echo/a/b?x=1&y=2");
}

#[tokio::test]
async fn h2_is_negotiated_via_alpn() {
    let (_dir, ca, upstream) = tls_upstream().await;
    let (mut client, alpn) = Client::tls(&upstream, &ca, "api.openai.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn, b"h2");
    for _ in 0..3 {
        let response = client.send(h2_get("/echo")).await;
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(body_json(response).await["http_version"], "HTTP/2.0");
    }
    let recorded = upstream.last_request().expect("a recorded request");
    assert_eq!(recorded.version, Version::HTTP_2);
    assert_eq!(recorded.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(recorded.uri, "https://api.openai.com/echo");
    assert_eq!(upstream.requests().len(), 3);
    assert_eq!(upstream.connections(), 1, "h2 requests share one connection");
}

#[tokio::test]
async fn bytes_route_streams_the_pattern() {
    let (_dir, ca, upstream) = tls_upstream().await;
    let (mut client, _) = Client::tls(&upstream, &ca, "api.openai.com", &[b"h2"]).await;
    let n = 100_003;
    let response = client.send(h2_get(&format!("/bytes/{n}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    assert_eq!(response.headers()["content-length"], n.to_string().as_str());
    assert_eq!(body_bytes(response).await, pattern_bytes(n));
    assert_eq!(pattern_bytes(4), [7, 38, 69, 100]);
}

#[tokio::test]
async fn plain_status_not_found_and_too_large() {
    let upstream = Upstream::builder().plain().start().await.expect("start upstream");
    assert!(!upstream.is_tls());
    let mut client = Client::plain(&upstream).await;

    let get = |path: &str| Request::get(path).header("host", "upstream.test").body(Full::default()).expect("request");
    let response = client.send(get("/status/503")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(body_bytes(response).await.is_empty());

    let response = client.send(get("/nope")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_json(response).await["error"]["type"], "not_found");

    let response = client.send(get("/echo")).await;
    let echo = body_json(response).await;
    assert_eq!(echo["sni"], Value::Null);
    assert_eq!(upstream.last_request().and_then(|r| r.alpn), None);

    // A declared oversize body is refused before it is read.
    let mut raw = TcpStream::connect(upstream.addr()).await.expect("connect");
    raw.write_all(b"POST /echo HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 40000000\r\n\r\n")
        .await
        .expect("write head");
    let mut head = [0_u8; 12];
    raw.read_exact(&mut head).await.expect("read status line");
    assert_eq!(&head, b"HTTP/1.1 413");
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn dropping_the_upstream_closes_the_port() {
    let upstream = Upstream::builder().start().await.expect("start upstream");
    let addr = upstream.addr();
    drop(upstream);
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
