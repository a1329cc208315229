//! Bad input and failing upstreams: each gets a clear, contract-shaped answer, and the proxy keeps
//! serving afterwards.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream, install_crypto_provider};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `request` raw to `addr` and returns the response: its head and, when it declares a
/// length, its body; otherwise everything until the peer closes (or 10 s).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                return text.into_owned();
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
}

/// Parses the JSON error envelope at the end of a raw response.
fn error_body(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON error body ({e}): {response}"))
}

fn status(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn still_serves(proxy: &ProxyProcess, upstream: &Upstream) {
    let clients = Clients::locate();
    let url = proxy.proxy_url("run-after", "tok");
    let out = clients
        .curl(
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://plain.internal.test/status/204"],
            &[("http_proxy", &url)],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "204", "the proxy stopped serving: {}", out.stderr);
    assert!(!upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_or_missing_credentials_get_407_with_a_challenge() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder().resolve("plain.internal.test", plain.addr()).start().unwrap();
    use base64::Engine as _;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    // Every malformed shape, each on absolute-form and on CONNECT: not base64, another scheme, a
    // scheme alone, a run id that is not one, no colon, an empty run id, not UTF-8.
    let shapes = [
        ("not base64", "Basic !!!not-base64".to_owned(), "malformed_proxy_authorization"),
        ("another scheme", "Bearer abc".to_owned(), "unsupported_auth_scheme"),
        ("scheme alone", "Basic".to_owned(), "malformed_proxy_authorization"),
        ("bad run id", format!("Basic {}", b64(b"bad run:x")), "bad_run_id"),
        ("no colon", format!("Basic {}", b64(b"no-colon-here")), "malformed_proxy_authorization"),
        ("empty run id", format!("Basic {}", b64(b":tok")), "bad_run_id"),
        ("not UTF-8", format!("Basic {}", b64(&[0xff, b':', b'x'])), "malformed_proxy_authorization"),
    ];
    for (shape, auth, reason) in &shapes {
        let req = format!(
            "GET http://plain.internal.test/echo HTTP/1.1\r\nHost: plain.internal.test\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw(proxy.forward, req.as_bytes()).await;
        assert_eq!(status(&resp), 407, "absolute-form, {shape}: {resp}");
        assert!(resp.to_ascii_lowercase().contains("proxy-authenticate: basic realm=\"fleetforge\""), "{resp}");
        let e = error_body(&resp);
        assert_eq!(e["error"]["type"], "proxy_auth_required");
        assert_eq!(e["error"]["reasons"][0], *reason, "absolute-form, {shape}: {resp}");
        assert!(e["error"]["receipt_id"].as_str().is_some_and(|r| r.len() == 36));

        let req = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: {auth}\r\n\r\n"
        );
        let resp = raw(proxy.forward, req.as_bytes()).await;
        assert_eq!(status(&resp), 407, "CONNECT, {shape}: {resp}");
        assert!(resp.to_ascii_lowercase().contains("proxy-authenticate: basic realm=\"fleetforge\""), "{resp}");
        assert_eq!(error_body(&resp)["error"]["reasons"][0], *reason, "CONNECT, {shape}: {resp}");
    }
    assert!(plain.requests().is_empty(), "nothing was forwarded");
    still_serves(&proxy, &plain).await;

    // With credentials required, a call without them is refused, on CONNECT and absolute-form alike.
    let strict = ProxyProcess::builder()
        .resolve("plain.internal.test", plain.addr())
        .env("FLEETFORGE_REQUIRE_CREDENTIALS", "true")
        .start()
        .unwrap();
    let resp = raw(strict.forward, b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n").await;
    assert_eq!(status(&resp), 407, "{resp}");
    assert_eq!(error_body(&resp)["error"]["reasons"][0], "missing_credentials");
    let resp = raw(
        strict.forward,
        b"GET http://plain.internal.test/echo HTTP/1.1\r\nHost: plain.internal.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), 407, "{resp}");
    still_serves(&strict, &plain).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_hosts_ports_and_private_destinations_get_403_and_nothing_is_forwarded() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("plain.internal.test", plain.addr())
        .env("FLEETFORGE_ALLOWED_HOSTS", "plain.internal.test,api.openai.com,*.example.com,127.0.0.1,10.1.2.3")
        .start()
        .unwrap();
    let cases: [(&[u8], &str); 5] = [
        (b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n", "host_not_allowed"),
        (b"GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n", "host_not_allowed"),
        (b"CONNECT mail.example.com:25 HTTP/1.1\r\nHost: mail.example.com:25\r\n\r\n", "port_not_allowed"),
        // Literal private addresses: refused when the connection is made.
        (b"CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: 10.1.2.3:443\r\n\r\n", "private_destination"),
        (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", "private_destination"),
    ];
    for (req, reason) in cases {
        let resp = raw(proxy.forward, req).await;
        assert_eq!(status(&resp), 403, "{}: {resp}", String::from_utf8_lossy(req));
        let e = error_body(&resp);
        assert_eq!(e["error"]["type"], "policy_denied");
        assert_eq!(e["error"]["reasons"][0], reason, "{resp}");
        assert!(e["error"]["message"].as_str().unwrap().len() > 20, "the message explains: {resp}");
    }
    assert!(plain.requests().is_empty());
    assert!(proxy.metric("fleetforge_connect_total{mode=\"rejected\"}").unwrap() >= 3.0);
    assert!(proxy.metric("fleetforge_errors_total{type=\"policy_denied\"}").unwrap() >= 5.0);
    still_serves(&proxy, &plain).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_to_the_proxy_itself_is_refused() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("plain.internal.test", plain.addr())
        .env("FLEETFORGE_ALLOW_PRIVATE", "true")
        .env("FLEETFORGE_ALLOWED_PORTS", "*")
        .start()
        .unwrap();
    let me = proxy.forward;
    let req = format!("GET http://{me}/ HTTP/1.1\r\nHost: {me}\r\nConnection: close\r\n\r\n");
    let resp = raw(me, req.as_bytes()).await;
    assert_eq!(status(&resp), 403, "{resp}");
    assert_eq!(error_body(&resp)["error"]["reasons"][0], "proxy_loop");
    // An origin-form request is not a proxy request.
    let resp = raw(me, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&resp), 400, "{resp}");
    assert_eq!(error_body(&resp)["error"]["type"], "invalid_request");
    still_serves(&proxy, &plain).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_after_connect_and_sni_mismatch_close_the_tunnel_only() {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let up = Upstream::builder().tls(&ca, &["api.openai.com"]).start().await.unwrap();
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("api.openai.com", up.addr())
        .resolve("plain.internal.test", plain.addr())
        .upstream_ca(ca.pem_path())
        .start()
        .unwrap();

    // Bytes that are neither TLS nor HTTP after the 200.
    let resp = raw(
        proxy.forward,
        b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n\x00\x01\x02garbage\xff\xfe",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(!resp.contains("garbage"), "closed without echoing anything: {resp}");

    // TLS whose SNI names another host than the CONNECT: refused (domain fronting).
    let mut s = TcpStream::connect(proxy.forward).await.unwrap();
    s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n").await.unwrap();
    let mut head = [0u8; 39];
    s.read_exact(&mut head).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_pki_types::CertificateDer::pem_file_iter(&proxy.ca_pem).unwrap().flatten());
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = connector.connect(ServerName::try_from("evil.test").unwrap(), s).await;
    assert!(handshake.is_err(), "the proxy must not complete TLS for a fronted name");
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    still_serves(&proxy, &plain).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_with_or_without_content_length() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("plain.internal.test", plain.addr())
        .env("FLEETFORGE_MAX_BODY", "1KiB")
        .start()
        .unwrap();
    let clients = Clients::locate();
    let url = proxy.proxy_url("run-big", "tok");
    let big = "x".repeat(2048);
    for extra in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let mut args = vec!["-s", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", big.as_str()];
        args.extend_from_slice(extra);
        args.push("http://plain.internal.test/echo");
        let out = clients.curl(&args, &[("http_proxy", &url)]).await.unwrap();
        let (body, code) = out.stdout.rsplit_once('\n').unwrap();
        assert_eq!(code, "413", "{}", out.stdout);
        let e: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(e["error"]["type"], "body_too_large");
        assert!(e["error"]["message"].as_str().unwrap().contains("1024"), "names the limit: {e}");
    }
    // Exactly at the limit passes.
    let ok = "y".repeat(1024);
    let out = clients
        .curl(
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", &ok, "http://plain.internal.test/echo"],
            &[("http_proxy", &url)],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "200");
    assert_eq!(plain.requests().len(), 1, "only the allowed body reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_or_with_the_wrong_certificate_is_a_502_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    // A certificate for another name than the one the proxy dials.
    let wrong = Upstream::builder().tls(&ca, &["someone-else.test"]).start().await.unwrap();
    // A port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("api.openai.com", wrong.addr())
        .resolve("api.anthropic.com", closed)
        .resolve("plain.internal.test", plain.addr())
        .upstream_ca(ca.pem_path())
        .start()
        .unwrap();
    let clients = Clients::locate();
    let env =
        [("HTTPS_PROXY", proxy.proxy_url("run-502", "tok")), ("CURL_CA_BUNDLE", proxy.bundle.display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (url, needle) in
        [("https://api.openai.com/echo", "TLS"), ("https://api.anthropic.com/v1/messages", "cannot connect")]
    {
        let out = clients.curl(&["-s", "-w", "\n%{http_code}", url], &env).await.unwrap();
        let (body, code) = out.stdout.rsplit_once('\n').unwrap();
        assert_eq!(code, "502", "{url}: {}", out.stdout);
        let e: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(e["error"]["type"], "upstream_error");
        assert!(e["error"]["message"].as_str().unwrap().contains(needle), "{url}: {e}");
    }
    assert!(wrong.requests().is_empty(), "no request went over the unverified TLS");
    assert_eq!(proxy.metric("fleetforge_errors_total{type=\"upstream_error\"}").unwrap(), 2.0);
    still_serves(&proxy, &plain).await;
}

/// A proxy in front of `plain` (as `plain.internal.test`) with `[proxy.limits]` set to `limits`;
/// the folder holding its config file lives as long as the returned guard.
fn limited(plain: &Upstream, limits: &str) -> (ProxyProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, format!("[proxy.limits]\n{limits}\n")).unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("plain.internal.test", plain.addr())
        .arg("--config")
        .arg(config.display().to_string())
        .start()
        .unwrap();
    (proxy, dir)
}

/// Request smuggling shapes, header floods and a client that never finishes its headers: each is
/// refused at the HTTP layer (a 4xx, or the connection closed), nothing of it reaches the
/// upstream, and the proxy serves the next client; a Content-Length beside a Transfer-Encoding is
/// framed by the latter alone, and the upstream gets what the proxy parsed.
#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_header_floods_and_slow_headers_are_refused_cleanly() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let (proxy, _dir) = limited(&plain, "header_timeout = \"1s\"");
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("run-smuggle:tok")
    };
    let head = |extra: &str| {
        format!(
            "POST http://plain.internal.test/echo/first HTTP/1.1\r\nHost: plain.internal.test\r\nProxy-Authorization: Basic {auth}\r\n{extra}"
        )
    };
    let smuggled = "GET http://plain.internal.test/echo/smuggled HTTP/1.1\r\nHost: plain.internal.test\r\n\r\n";
    let many: String = (0..200).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "h".repeat(1 << 20));
    let cases: Vec<(&str, String)> = vec![
        (
            "two different Content-Lengths",
            head(&format!("Content-Length: 2\r\nContent-Length: 40\r\n\r\nab{smuggled}")),
        ),
        ("an invalid Content-Length", head(&format!("Content-Length: 2x\r\n\r\nab{smuggled}"))),
        (
            "a Transfer-Encoding that is not chunked last",
            head(&format!("Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}")),
        ),
        ("an obs-folded header", head(&format!("X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{smuggled}"))),
        ("200 headers", head(&format!("{many}Content-Length: 0\r\n\r\n"))),
        ("a 1 MiB header", head(&format!("{huge}Content-Length: 0\r\n\r\n"))),
    ];
    // Content-Length beside Transfer-Encoding: framed by Transfer-Encoding alone (RFC 9112 §6.3),
    // the Content-Length dropped, so the upstream gets exactly the message the proxy parsed — an
    // empty body, not the 5 bytes the Content-Length claimed.
    let response = raw(
        proxy.forward,
        head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status(&response), 200, "{response}");
    let first = plain.requests().into_iter().find(|r| r.uri.path() == "/echo/first").unwrap();
    assert!(first.body.is_empty(), "the upstream got {} body bytes", first.body.len());
    assert!(first.headers.get("content-length").is_none_or(|v| v == "0"), "{:?}", first.headers);
    for (what, request) in &cases {
        let response = raw(proxy.forward, request.as_bytes()).await;
        let code = status(&response);
        assert!(
            code == 0 || (400..500).contains(&code),
            "{what}: refused with a 4xx or a closed connection, got: {}",
            response.lines().next().unwrap_or_default()
        );
        assert!(!response.contains(" 200 OK"), "{what}: {response}");
        still_serves(&proxy, &plain).await;
    }
    assert!(
        plain.requests().iter().all(|r| !r.uri.path().contains("smuggled")),
        "a smuggled request reached the upstream: {:?}",
        plain.requests().iter().map(|r| r.uri.to_string()).collect::<Vec<_>>()
    );

    // Headers that never end: the connection is closed after the header timeout (1 s here).
    let started = tokio::time::Instant::now();
    let mut slow = TcpStream::connect(proxy.forward).await.unwrap();
    slow.write_all(b"GET http://plain.internal.test/echo HTTP/1.1\r\nHost: plain.internal.test\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a client stalled in its headers is still connected after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed at once, not by the timeout");
    still_serves(&proxy, &plain).await;
}

/// An upstream that misbehaves on the wire, served by raw sockets: `/reset` sends the response
/// head and one chunk, then resets the connection; `/stall` reads the request and never answers;
/// `/stall-body` sends the head and one chunk, then goes quiet.
async fn faulty_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let target = String::from_utf8_lossy(&req).split_whitespace().nth(1).unwrap_or("").to_owned();
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if target.ends_with("/stall") {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let _ = s.write_all(format!("{head}d\r\ndata: first\n\n\r\n").as_bytes()).await;
                let _ = s.flush().await;
                if target.ends_with("/stall-body") {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let std = s.into_std().unwrap();
                socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO)).unwrap();
                drop(std);
            });
        }
    });
    addr
}

/// An upstream that resets mid-stream, one that never answers and one that stalls mid-body: the
/// client gets a clean end (its stream cut in error after what had arrived, or a 504 contract
/// error) within the configured timeouts, each call's receipt says how it ended, and no connection
/// is left open.
#[tokio::test(flavor = "multi_thread")]
async fn resets_and_stalls_upstream_end_cleanly_within_the_timeouts() {
    let faulty = faulty_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, "[proxy.limits]\nresponse_timeout = \"1s\"\nstream_idle_timeout = \"1s\"\n").unwrap();
    let db = fleetforge_e2e::harness::Database::fresh(false).unwrap();
    let control = fleetforge_e2e::harness::ControlProcess::start(&db, &dir.path().join("control"), None).unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("faulty.internal.test", faulty)
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .arg("--config")
        .arg(config.display().to_string())
        .start()
        .unwrap();
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", proxy.pid())).unwrap().count();
    let before = fds();
    let clients = Clients::locate();
    let url = proxy.proxy_url("run-faulty", "tok");
    let get = |path: &'static str| {
        let (clients, url) = (&clients, url.clone());
        async move {
            let started = std::time::Instant::now();
            let out = clients
                .curl(
                    &["-sS", "-N", "-m", "15", "-w", "\n%{http_code}", &format!("http://faulty.internal.test{path}")],
                    &[("http_proxy", &url)],
                )
                .await
                .unwrap();
            (out, started.elapsed())
        }
    };
    let (reset, _) = get("/reset").await;
    assert_ne!(reset.code, 0, "the client sees the stream end in error: {}", reset.stdout);
    assert!(reset.stdout.contains("data: first"), "what arrived before the reset reached the client: {}", reset.stdout);
    let (stall, took) = get("/stall").await;
    assert!(stall.stdout.ends_with("504"), "{} {}", stall.stdout, stall.stderr);
    assert!(stall.stdout.contains("upstream"), "a contract error naming the upstream: {}", stall.stdout);
    assert!(took < Duration::from_secs(5), "bounded by response_timeout (1 s): {took:?}");
    let (stall_body, took) = get("/stall-body").await;
    assert_ne!(stall_body.code, 0, "the client sees the stream cut in error: {}", stall_body.stdout);
    assert!(stall_body.stdout.contains("data: first"), "{}", stall_body.stdout);
    assert!(took < Duration::from_secs(5), "bounded by stream_idle_timeout (1 s): {took:?}");
    let receipts = control.receipts("run-faulty", 3).unwrap();
    let outcome = |path: &str| {
        receipts.iter().find(|r| r["upstream"]["path"] == path).map(|r| r["outcome"].as_str().unwrap().to_owned())
    };
    assert_eq!(outcome("/reset").as_deref(), Some("upstream_aborted"), "{receipts:?}");
    assert_eq!(outcome("/stall").as_deref(), Some("failed"), "{receipts:?}");
    assert_eq!(outcome("/stall-body").as_deref(), Some("upstream_aborted"), "{receipts:?}");
    // No connection left behind: the proxy's descriptors return to where they were (the shipper's
    // connection to control may come and go, hence the slack of two).
    let mut now = fds();
    for _ in 0..50 {
        if now <= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = fds();
    }
    assert!(now <= before + 2, "the proxy holds {now} descriptors, {before} before the faulty calls");
}

/// A connection cap: with `limits.max_connections = 3`, three idle clients fill the proxy; the
/// fourth gets `503 overloaded` naming the limit and is closed; the admin listener still answers;
/// once one of the three goes, the next client is served.
#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_get_503_and_the_cap_frees_as_they_close() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let (proxy, _dir) = limited(&plain, "max_connections = 3");
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(proxy.forward).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response =
        raw(proxy.forward, b"GET http://plain.internal.test/status/204 HTTP/1.1\r\nHost: plain.internal.test\r\n\r\n")
            .await;
    assert_eq!(status(&response), 503, "{response}");
    let e = error_body(&response);
    assert_eq!(e["error"]["type"], "overloaded", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("maximum of 3"), "names the limit: {e}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    assert_eq!(proxy.metric("fleetforge_connections_refused_total").unwrap(), 1.0, "the admin listener is not capped");
    assert!(plain.requests().is_empty(), "nothing was forwarded");
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    still_serves(&proxy, &plain).await;
}

/// A plain upstream and a proxy with a sidecar in front of it (cleartext HTTP/2 with prior
/// knowledge, or HTTP/1.1).
async fn h2c_sidecar() -> (Upstream, ProxyProcess) {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("plain.internal.test", plain.addr())
        .sidecar("http://plain.internal.test")
        .start()
        .unwrap();
    (plain, proxy)
}

/// HTTP/2 frame: 3-byte length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HTTP/2 rapid reset (CVE-2023-44487) on the sidecar's cleartext HTTP/2: a client opens streams
/// and resets each at once. The proxy ends that connection with GOAWAY after a bounded number of
/// them, next to nothing reaches the upstream, and a client on another connection is served
/// throughout.
#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_is_cut_off_while_other_clients_are_served() {
    let (plain, proxy) = h2c_sidecar().await;
    let sidecar = proxy.sidecars[0];
    let tcp = TcpStream::connect(sidecar).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut reset = 0u32;
    let ended = loop {
        if reset == 10_000 {
            break None;
        }
        client = match client.ready().await {
            Ok(c) => c,
            Err(e) => break Some(e),
        };
        let request = http::Request::post(format!("http://{sidecar}/v1/chat/completions"))
            .header("x-fleetforge-run", "run-rapid-reset")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        match client.send_request(request, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                reset += 1;
            }
            Err(e) => break Some(e),
        }
        // Another client, on its own connection, is served while the flood runs.
        if reset == 2_000 {
            still_serves_sidecar(sidecar).await;
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), connection).await.unwrap().unwrap();
    let errors: Vec<h2::Error> = [outcome.err(), ended].into_iter().flatten().collect();
    assert!(!errors.is_empty(), "the proxy let 10,000 reset streams through on one connection");
    match errors.iter().find(|e| e.is_go_away()) {
        Some(e) => {
            assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "ended with GOAWAY ENHANCE_YOUR_CALM: {e}");
            assert!(e.is_remote(), "the proxy sent the GOAWAY: {e}");
        }
        // The client was still writing when the proxy sent its GOAWAY and closed: the write
        // failed before the GOAWAY was read.
        None => assert!(errors.iter().all(h2::Error::is_io), "the connection ended otherwise: {errors:?}"),
    }
    assert!(reset < 5_000, "{reset} streams were reset before the proxy ended the connection");
    let forwarded = plain.requests().len();
    assert!(forwarded <= 300, "{forwarded} of {reset} reset streams were forwarded");
    println!("rapid reset: connection ended after {reset} reset streams, {forwarded} forwarded");
    still_serves_sidecar(sidecar).await;
    still_serves(&proxy, &plain).await;
}

/// One JSON call on the sidecar, over HTTP/2 with prior knowledge, must succeed.
async fn still_serves_sidecar(sidecar: std::net::SocketAddr) {
    let out = Clients::locate()
        .curl(
            &[
                "-s",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "x-fleetforge-run: run-bystander",
                &format!("http://{sidecar}/status/204"),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "204", "the sidecar stopped serving: {out:?}");
}

/// HTTP/2 CONTINUATION flood (CVE-2024-27316 and kin): a HEADERS frame without END_HEADERS,
/// then CONTINUATION frames of new header fields without end. The proxy ends the connection once
/// the header list passes its limit (64 KiB), long before the flood ends; nothing is forwarded;
/// other clients are served.
#[tokio::test(flavor = "multi_thread")]
async fn http2_continuation_flood_is_cut_off_at_the_header_limit() {
    let (plain, proxy) = h2c_sidecar().await;
    let sidecar = proxy.sidecars[0];
    let mut s = TcpStream::connect(sidecar).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&h2_frame(4, 0, 0, &[])).await.unwrap();
    // :method GET, :scheme http, :path / (static table), :authority literal.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 9];
    block.extend_from_slice(b"localhost");
    s.write_all(&h2_frame(1, 0x1, 1, &block)).await.unwrap();
    let (mut read, mut write) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(20), read.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let mut sent = 0usize;
    for i in 0..200_000u32 {
        // A literal header field without indexing, new name: 0x00, name, 100-byte value.
        let name = format!("x-flood-{i:08}");
        let mut field = vec![0x00, u8::try_from(name.len()).unwrap()];
        field.extend_from_slice(name.as_bytes());
        field.push(100);
        field.extend_from_slice(&[b'a'; 100]);
        if write.write_all(&h2_frame(9, 0, 1, &field)).await.is_err() {
            break;
        }
        sent += field.len();
    }
    let got = reader.await.unwrap();
    assert!(sent < 4 << 20, "the proxy took {sent} bytes of one header list without ending the connection");
    // The last frame the proxy sent: GOAWAY (type 7), or at least the connection closed.
    let goaway = got.windows(4).any(|w| w[3] == 7 && w[0] == 0 && w[1] == 0 && w[2] >= 8);
    assert!(goaway || got.len() < 100, "no GOAWAY in the proxy's {} bytes", got.len());
    assert!(plain.requests().is_empty(), "a request was forwarded");
    still_serves_sidecar(sidecar).await;
    still_serves(&proxy, &plain).await;
}

/// `proxy.limits.max_calls_per_run`: with two calls of a run streaming, a third of that run gets
/// `429 run_concurrency_exceeded` (`Retry-After: 1`, with a receipt, nothing forwarded) while
/// another run is served; once the two end, the run is served again.
#[tokio::test(flavor = "multi_thread")]
async fn calls_past_a_runs_concurrency_cap_get_429_while_other_runs_are_served() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let (proxy, _dir) = limited(&plain, "max_calls_per_run = 2");
    let url = proxy.proxy_url("run-busy", "tok");
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let slow = |url: String| {
        let clients = Clients::locate();
        async move {
            clients
                .curl(
                    &[
                        "-s",
                        "-N",
                        "-H",
                        "content-type: application/json",
                        "-H",
                        "x-test-chunk-delay-ms: 400",
                        "-d",
                        body,
                        "http://plain.internal.test/v1/chat/completions",
                    ],
                    &[("http_proxy", &url)],
                )
                .await
                .unwrap()
        }
    };
    let streams = [tokio::spawn(slow(url.clone())), tokio::spawn(slow(url.clone()))];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while plain.requests().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the two streams never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let json = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST http://plain.internal.test/v1/chat/completions HTTP/1.1\r\nHost: plain.internal.test\r\nx-fleetforge-run: run-busy\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    );
    let response = raw(proxy.forward, request.as_bytes()).await;
    assert_eq!(status(&response), 429, "{response}");
    let e = error_body(&response);
    assert_eq!(e["error"]["type"], "run_concurrency_exceeded", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("run-busy") && message.contains("max_calls_per_run = 2"), "names run and limit: {e}");
    assert!(e["error"]["receipt_id"].as_str().is_some_and(|r| !r.is_empty()), "the refusal has a receipt: {e}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    assert_eq!(plain.requests().len(), 2, "the refused call was not forwarded");
    // Another run is not held back by this one's streams.
    let other = raw(proxy.forward, request.replace("run-busy", "run-other").as_bytes()).await;
    assert_eq!(status(&other), 200, "{other}");
    for stream in streams {
        let out = stream.await.unwrap();
        assert!(out.stdout.contains("[DONE]"), "a capped run's stream was cut: {}", out.stderr);
    }
    let again = raw(proxy.forward, request.as_bytes()).await;
    assert_eq!(status(&again), 200, "the run's slots came back: {again}");
}
