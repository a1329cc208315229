//! End to end through the forward proxy (`HTTPS_PROXY` / `HTTP_PROXY`), with real unmodified
//! clients: curl, the Python `openai` and `anthropic` SDKs, `httpx`, `requests`, and Node's undici.
//! The upstream is an in-process fake on 127.0.0.1 that the proxy reaches through a
//! `FLEETFORGE_RESOLVE` pin, under the real API host names (so the default intercept set applies).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleetforge_e2e::upstream::{CHUNKS_HEADER, DELAY_HEADER, completion_text};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream, pattern_bytes};

const API_KEY: &str = "sk-e2e-UNIQUE-8c1f0d2b-never-logged";
const RUN_TOKEN: &str = "tok-e2e-UNIQUE-5a9e-never-logged";

struct World {
    _dir: tempfile::TempDir,
    ca: TestCa,
    upstream: Upstream,
    proxy: ProxyProcess,
    clients: Clients,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &["api.openai.com", "api.anthropic.com"]).start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("api.openai.com", upstream.addr())
        .resolve("api.anthropic.com", upstream.addr())
        .upstream_ca(ca.pem_path())
        .start()
        .unwrap();
    World { _dir: dir, ca, upstream, proxy, clients: Clients::locate() }
}

impl World {
    fn proxy_env(&self, run: &str) -> Vec<(String, String)> {
        let url = self.proxy.proxy_url(run, RUN_TOKEN);
        let bundle = self.proxy.bundle.display().to_string();
        vec![
            ("HTTPS_PROXY".into(), url.clone()),
            ("HTTP_PROXY".into(), url),
            ("SSL_CERT_FILE".into(), bundle.clone()),
            ("REQUESTS_CA_BUNDLE".into(), bundle.clone()),
            ("CURL_CA_BUNDLE".into(), bundle),
            ("NODE_EXTRA_CA_CERTS".into(), self.proxy.ca_pem.display().to_string()),
            ("OPENAI_BASE_URL".into(), "https://api.openai.com/v1".into()),
            ("OPENAI_API_KEY".into(), API_KEY.into()),
            ("ANTHROPIC_BASE_URL".into(), "https://api.anthropic.com".into()),
            ("ANTHROPIC_API_KEY".into(), API_KEY.into()),
        ]
    }

    /// Asserts that no request the upstream saw carried proxy credentials or FleetForge headers.
    fn assert_upstream_saw_no_credentials(&self) {
        let requests = self.upstream.requests();
        assert!(!requests.is_empty());
        for r in requests {
            for name in [
                "proxy-authorization",
                "x-fleetforge-run",
                "x-fleetforge-token",
                "x-fleetforge-step",
                "proxy-connection",
            ] {
                assert!(!r.headers.contains_key(name), "upstream saw {name} on {}", r.uri);
            }
            let all = format!("{:?}", r.headers);
            assert!(!all.contains(RUN_TOKEN), "upstream saw the run token on {}", r.uri);
        }
    }

    fn assert_logs_hold_no_secrets(&self) {
        let logs = self.proxy.logs();
        assert!(!logs.is_empty(), "debug logging is on, so the proxy logged something");
        assert!(!logs.contains(API_KEY), "the API key reached the proxy log");
        assert!(!logs.contains(RUN_TOKEN), "the run token reached the proxy log");
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().rev().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_gets_byte_identical_bodies_with_fleetforge_headers_and_no_credentials_upstream() {
    let w = world().await;
    let env = w.proxy_env("run-curl");
    let out_dir = tempfile::tempdir().unwrap();
    let body_path = out_dir.path().join("body");
    for http in ["--http1.1", "--http2"] {
        let out = w
            .clients
            .curl(
                &[
                    http,
                    "-D",
                    "-",
                    "-o",
                    body_path.to_str().unwrap(),
                    "-H",
                    "x-fleetforge-step: fetch",
                    "https://api.openai.com/bytes/300000",
                ],
                &env_refs(&env),
            )
            .await
            .unwrap()
            .ok()
            .unwrap();
        let head = out.stdout;
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/2 200"), "{head}");
        let body = std::fs::read(&body_path).unwrap();
        assert_eq!(body.len(), 300_000);
        assert!(body == pattern_bytes(300_000), "body differs from what the upstream sent");
        let receipt = header(&head, "x-fleetforge-receipt").expect("receipt header");
        assert_eq!(receipt.len(), 36, "a UUID: {receipt}");
        assert_eq!(header(&head, "x-fleetforge-run"), Some("run-curl"));
    }
    let last = w.upstream.last_request().unwrap();
    assert_eq!(last.sni.as_deref(), Some("api.openai.com"), "the proxy verified and named the real host upstream");
    assert_ne!(last.alpn.as_deref(), Some(&b"h2"[..]), "HTTP/1.1 upstream pool by default");
    w.assert_upstream_saw_no_credentials();
    assert!(w.proxy.metric("fleetforge_connect_total{mode=\"intercepted\"}").unwrap() >= 2.0);
    assert!(w.proxy.metric("fleetforge_leaf_certs_minted_total").unwrap() >= 1.0);
    w.assert_logs_hold_no_secrets();
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_sync_and_streaming_through_https_proxy() {
    let w = world().await;
    let env = w.proxy_env("run-openai");
    let out =
        w.clients.python("py_openai.py", &["--model", "gpt-4o-mini"], &env_refs(&env)).await.unwrap().ok().unwrap();
    let v = out.json().unwrap();
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["content"], completion_text(5));
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.headers["authorization"], format!("Bearer {API_KEY}"), "the agent's own API key passes through");

    // Streaming, with the upstream pacing 4 content chunks 150 ms apart: the client must see the
    // first chunk long before the last (no buffering in the proxy).
    let out = w
        .clients
        .python(
            "py_openai.py",
            &["--stream", "--header", &format!("{DELAY_HEADER}=150"), "--header", &format!("{CHUNKS_HEADER}=4")],
            &env_refs(&env),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let lines = out.json_lines().unwrap();
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["content"], completion_text(4));
    let times: Vec<f64> = lines
        .iter()
        .filter(|l| l.get("t_ms").is_some() && l["content"].as_str().is_some_and(|c| c.starts_with("word")))
        .map(|l| l["t_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 4, "{lines:?}");
    assert!(times[3] - times[0] >= 350.0, "chunks arrived together: {times:?}");
    w.assert_upstream_saw_no_credentials();
    w.assert_logs_hold_no_secrets();
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_streams_through_https_proxy() {
    let w = world().await;
    let env = w.proxy_env("run-anthropic");
    let out = w
        .clients
        .python(
            "py_anthropic.py",
            &["--stream", "--header", &format!("{DELAY_HEADER}=100"), "--header", &format!("{CHUNKS_HEADER}=3")],
            &env_refs(&env),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let lines = out.json_lines().unwrap();
    let done = lines.last().unwrap();
    assert_eq!(done["content"], completion_text(3));
    let deltas: Vec<f64> =
        lines.iter().filter(|l| l["type"] == "content_block_delta").map(|l| l["t_ms"].as_f64().unwrap()).collect();
    assert_eq!(deltas.len(), 3);
    assert!(deltas[2] - deltas[0] >= 150.0, "deltas arrived together: {deltas:?}");
    assert_eq!(w.upstream.last_request().unwrap().uri.path(), "/v1/messages");
    w.assert_upstream_saw_no_credentials();
}

#[tokio::test(flavor = "multi_thread")]
async fn httpx_requests_and_node_get_identical_bytes_and_echo_bodies() {
    let w = world().await;
    let env = w.proxy_env("run-plain-clients");
    let expected = pattern_bytes(200_000);
    let url = "https://api.openai.com/bytes/200000";
    let outputs = [
        w.clients.python("py_httpx.py", &["GET", url], &env_refs(&env)).await.unwrap(),
        w.clients.python("py_requests.py", &["GET", url], &env_refs(&env)).await.unwrap(),
        w.clients.node("node_fetch.cjs", &["GET", url], &env_refs(&env)).await.unwrap(),
    ];
    for out in outputs {
        let v = out.ok().unwrap().json().unwrap();
        assert_eq!(v["status"], 200);
        let body = STANDARD.decode(v["body_b64"].as_str().unwrap()).unwrap();
        assert!(body == expected, "body differs ({} bytes)", body.len());
        assert_eq!(v["headers"]["x-fleetforge-run"], "run-plain-clients");
    }

    // A POST body reaches the upstream intact.
    let data = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"héllo"}]}"#;
    for out in [
        w.clients
            .python(
                "py_httpx.py",
                &["POST", "https://api.openai.com/echo", "--data", data, "--header", "content-type=application/json"],
                &env_refs(&env),
            )
            .await
            .unwrap(),
        w.clients
            .node(
                "node_fetch.cjs",
                &["POST", "https://api.openai.com/echo", "--data", data, "--header", "content-type=application/json"],
                &env_refs(&env),
            )
            .await
            .unwrap(),
    ] {
        let v = out.ok().unwrap().json().unwrap();
        let echo: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(v["body_b64"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(echo["body_len"], data.len());
        assert_eq!(echo["method"], "POST");
    }
    w.assert_upstream_saw_no_credentials();
    w.assert_logs_hold_no_secrets();
}

#[tokio::test(flavor = "multi_thread")]
async fn node_undici_streams_incrementally() {
    let w = world().await;
    let env = w.proxy_env("run-node");
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let out = w
        .clients
        .node(
            "node_fetch.cjs",
            &[
                "POST",
                "https://api.openai.com/v1/chat/completions",
                "--stream",
                "--data",
                body,
                "--header",
                "content-type=application/json",
                "--header",
                &format!("{DELAY_HEADER}=150"),
                "--header",
                &format!("{CHUNKS_HEADER}=4"),
            ],
            &env_refs(&env),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let lines = out.json_lines().unwrap();
    let chunks: Vec<f64> =
        lines.iter().filter(|l| l.get("t_ms").is_some()).map(|l| l["t_ms"].as_f64().unwrap()).collect();
    assert!(chunks.len() >= 4, "expected the paced events in separate reads: {lines:?}");
    assert!(chunks[chunks.len() - 1] - chunks[0] >= 450.0, "{chunks:?}");
    let done = lines.last().unwrap();
    let text = String::from_utf8(STANDARD.decode(done["body_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tunnelled_hosts_keep_the_clients_own_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    // A tool host that is not in the intercept set: the proxy relays bytes.
    let tool = Upstream::builder().tls(&ca, &["tools.internal.test"]).start().await.unwrap();
    let proxy = ProxyProcess::builder().resolve("tools.internal.test", tool.addr()).start().unwrap();
    let clients = Clients::locate();
    let url = proxy.proxy_url("run-tunnel", RUN_TOKEN);
    // The client trusts only the test CA, not FleetForge's: success proves the TLS is its own.
    let out = clients
        .curl(
            &["-D", "-", "https://tools.internal.test/echo"],
            &[("HTTPS_PROXY", &url), ("CURL_CA_BUNDLE", ca.pem_path().to_str().unwrap())],
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("\"sni\":\"tools.internal.test\""), "{}", out.stdout);
    // curl prints the CONNECT response head, then the tunnelled response: the tunnel (one call)
    // has a receipt; the responses inside it are the upstream's own, untouched.
    let (connect_head, inner) = out.stdout.split_once("\r\n\r\n").unwrap();
    assert!(connect_head.starts_with("HTTP/1.1 200"), "{connect_head}");
    assert_eq!(header(connect_head, "x-fleetforge-receipt").map(str::len), Some(36));
    assert!(header(inner.split("\r\n\r\n").next().unwrap(), "x-fleetforge-receipt").is_none());
    let seen = tool.last_request().unwrap();
    assert_eq!(seen.sni.as_deref(), Some("tools.internal.test"));
    assert!(!seen.headers.contains_key("proxy-authorization"));
    // The tunnel is counted when it opens, and its bytes and receipt are recorded when it closes
    // (after curl has exited, so wait for that).
    assert_eq!(proxy.metric("fleetforge_connect_total{mode=\"tunnelled\"}").unwrap(), 1.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while proxy.metric("fleetforge_tunnel_bytes_total{direction=\"down\"}").unwrap() == 0.0 {
        assert!(std::time::Instant::now() < deadline, "tunnel close not recorded within 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    while !(proxy.logs().contains("tools.internal.test") && proxy.logs().contains("run-tunnel")) {
        assert!(std::time::Instant::now() < deadline, "tunnel call recorded: {}", proxy.logs());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_proxy_requests_are_forwarded_without_credentials() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let proxy = ProxyProcess::builder().resolve("plain.internal.test", plain.addr()).start().unwrap();
    let clients = Clients::locate();
    let url = proxy.proxy_url("run-http", RUN_TOKEN);
    let out = clients
        .python(
            "py_requests.py",
            &["POST", "http://plain.internal.test/echo?q=1", "--data", "abc"],
            &[("HTTP_PROXY", &url)],
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let v = out.json().unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["headers"]["x-fleetforge-run"], "run-http");
    let seen = plain.last_request().unwrap();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/echo?q=1", "origin-form upstream");
    assert_eq!(seen.headers["host"], "plain.internal.test");
    assert!(!seen.headers.contains_key("proxy-authorization"));
    assert_eq!(seen.body.as_ref(), b"abc");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_identity_can_come_from_headers_inside_the_tunnel() {
    let w = world().await;
    let env = [
        ("HTTPS_PROXY", format!("http://{}", w.proxy.forward)),
        ("CURL_CA_BUNDLE", w.proxy.bundle.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = w
        .clients
        .curl(
            &[
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-H",
                "x-fleetforge-run: run-hdr",
                "-H",
                &format!("x-fleetforge-token: {RUN_TOKEN}"),
                "https://api.openai.com/echo",
            ],
            &env,
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(header(&out.stdout, "x-fleetforge-run"), Some("run-hdr"));
    // Without any identity the call belongs to the anonymous run.
    let out = w
        .clients
        .curl(&["-D", "-", "-o", "/dev/null", "https://api.openai.com/echo"], &env)
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(header(&out.stdout, "x-fleetforge-run"), Some("anonymous"));
    w.assert_upstream_saw_no_credentials();
    let _ = &w.ca;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmodified_langgraph_graph_through_https_proxy() {
    let w = world().await;
    let env = w.proxy_env("run-langgraph");
    let out = w.clients.python("py_langgraph.py", &[], &env_refs(&env)).await.unwrap().ok().unwrap();
    let state = out.json().unwrap();
    assert_eq!(state["plan"], completion_text(5), "{state}");
    assert_eq!(state["review"], completion_text(5), "{state}");
    let receipts: Vec<&str> = state["receipts"].as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    assert_eq!(receipts.len(), 2, "{state}");
    assert!(receipts.iter().all(|r| r.len() == 36) && receipts[0] != receipts[1], "one receipt per node: {receipts:?}");
    let seen = w.upstream.requests();
    assert_eq!(seen.len(), 2, "both nodes' calls reached the upstream through the proxy");
    assert_eq!(seen[0].sni.as_deref(), Some("api.openai.com"));
    w.assert_upstream_saw_no_credentials();
}
