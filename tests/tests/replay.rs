//! Sealed IO and replay end to end: a run recorded through the proxy with the real `openai` and
//! `anthropic` SDKs is replayed by `fleetforge-ctl replay --strict` running the same agent script,
//! with the upstream never contacted; a changed prompt is refused with 599 naming the closest
//! sealed call; concurrent calls replay; seals hold no credentials; a tampered seal is refused by
//! control and caught by `fleetforge-ctl verify`; bad replays are refused with clear errors.
//!
//! Real control (SQLite), real proxy, real clients through intercepted TLS; the upstream is the
//! in-process fake.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use fleetforge_e2e::harness::{ClientOutput, ControlProcess, Database, binary, run_program};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::{Value, json};

const OPENAI: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";
const API_KEY: &str = "sk-test-NEVER-IN-A-SEAL-4242";

/// The JSON lines an agent printed.
fn lines(out: &ClientOutput) -> Vec<Value> {
    out.stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn create_run(control: &ControlProcess, id: &str) -> String {
    let (status, created) =
        control.api("POST", "/v1/runs", &control.token, Some(&json!({"id": id}).to_string())).unwrap();
    assert_eq!(status, 201, "{created}");
    created["token"].as_str().unwrap().to_owned()
}

/// `fleetforge-ctl replay` (and other ctl commands) against `control`, with its home in `home`.
async fn ctl(control: &ControlProcess, home: &Path, args: &[&str]) -> ClientOutput {
    let clients = Clients::locate();
    let python = clients.python_bin().display().to_string();
    let scripts = fleetforge_e2e::harness::workspace().join("tests/clients");
    let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    if let Some(i) = full.iter().position(|a| a == "--") {
        full.insert(i + 1, python);
        full[i + 2] = scripts.join(&full[i + 2]).display().to_string();
    }
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let home = home.display().to_string();
    let url = control.url();
    run_program(
        &binary("fleetforge-ctl"),
        &full,
        &[
            ("FLEETFORGE_HOME", &home),
            ("FLEETFORGE_CONTROL_URL", &url),
            ("FLEETFORGE_CONTROL_TOKEN", &control.token),
            ("FLEETFORGE_INTERCEPT", &format!("{OPENAI},{ANTHROPIC}")),
            ("FLEETFORGE_LOG", "info"),
            ("OPENAI_API_KEY", API_KEY),
            ("ANTHROPIC_API_KEY", API_KEY),
        ],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replays_strictly_without_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[OPENAI, ANTHROPIC]).start().await.unwrap();
    let db = Database::fresh(false).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let mut proxy = ProxyProcess::builder()
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        .env("FLEETFORGE_INTERCEPT", format!("{OPENAI},{ANTHROPIC}"))
        .resolve(OPENAI, upstream.addr())
        .resolve(ANTHROPIC, upstream.addr())
        .start()
        .unwrap();
    let clients = Clients::locate();
    let bundle = proxy.bundle.display().to_string();

    // Record: five OpenAI calls (two identical prompts answered differently, one stream) and an
    // Anthropic stream; then eight concurrent calls in a second run.
    let token = create_run(&control, "rec");
    let url = proxy.proxy_url("rec", &token);
    let env = [
        ("HTTPS_PROXY", url.as_str()),
        ("SSL_CERT_FILE", bundle.as_str()),
        ("OPENAI_API_KEY", API_KEY),
        ("ANTHROPIC_API_KEY", API_KEY),
    ];
    let recorded = clients.python("py_agent.py", &[], &env).await.unwrap().ok().unwrap();
    let recorded = lines(&recorded);
    assert_eq!(recorded.len(), 6, "{recorded:?}");
    assert_ne!(
        recorded[1]["answer"], recorded[2]["answer"],
        "the sampling model answers identical prompts differently"
    );
    assert!(recorded[3]["pieces"].as_u64().unwrap() > 1, "the stream came in pieces: {:?}", recorded[3]);
    let conc_token = create_run(&control, "conc");
    let conc_url = proxy.proxy_url("conc", &conc_token);
    let conc_env =
        [("HTTPS_PROXY", conc_url.as_str()), ("SSL_CERT_FILE", bundle.as_str()), ("OPENAI_API_KEY", API_KEY)];
    let conc = lines(&clients.python("py_agent.py", &["--concurrent", "8"], &conc_env).await.unwrap().ok().unwrap());
    assert_eq!(conc.len(), 8);

    let receipts = control.receipts("rec", 6).unwrap();
    control.receipts("conc", 8).unwrap();
    for r in &receipts {
        let seal = &r["seal"];
        assert_eq!(seal["key_version"], "fleetforge.key/v1", "{r}");
        for member in ["key", "request_blob", "response_meta", "response_digest"] {
            assert!(seal[member].as_str().is_some_and(|v| v.len() == 64), "{member} in {seal}");
        }
    }
    assert_eq!(receipts[1]["seal"]["key"], receipts[2]["seal"]["key"], "identical requests share a key");
    assert_ne!(receipts[1]["seal"]["response_digest"], receipts[2]["seal"]["response_digest"]);
    // Seals hold no credential: not the sealed request bodies, not the receipts.
    for r in &receipts {
        let address = r["seal"]["request_blob"].as_str().unwrap();
        let blob = raw_get(&control, &format!("/v1/seals/{address}"));
        assert!(!blob.is_empty());
        assert!(!String::from_utf8_lossy(&blob).contains(API_KEY), "sealed request {address} holds the API key");
        assert!(!r.to_string().contains(API_KEY));
    }
    let manifest = control.api("GET", "/v1/runs/rec/replay-manifest", &control.token, None).unwrap().1;
    assert_eq!(manifest["calls"].as_array().unwrap().len(), 6, "{manifest}");
    assert!(manifest["signature"]["value"].is_string());

    // Strict replay with the upstream out of the picture: the same outputs, in the same order,
    // and not one connection to the upstream.
    proxy.terminate(std::time::Duration::from_secs(10)).unwrap();
    let connections = upstream.connections();
    let home = dir.path().join("replay-home");
    let out = ctl(&control, &home, &["replay", "rec", "--strict", "--as", "rec-r1", "--", "py_agent.py"]).await;
    assert_eq!(out.code, 0, "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(lines(&out), recorded, "the replayed agent printed what the recorded one did");
    assert!(out.stdout.contains("matched  6 of 6"), "{}", out.stdout);
    assert!(out.stdout.contains("missed   0"), "{}", out.stdout);
    assert!(out.stdout.contains("drift 0"), "{}", out.stdout);
    assert!(out.stdout.contains("verdict  identical"), "{}", out.stdout);
    assert_eq!(upstream.connections(), connections, "a strict replay never contacts the upstream");
    let report = control.api("GET", "/v1/runs/rec-r1/replay-report", &control.token, None).unwrap().1;
    assert_eq!(report["matched"], 6, "{report}");
    assert_eq!(report["token_drift"], 0, "{report}");
    let replayed = control.receipts("rec-r1", 6).unwrap();
    for (r, original) in replayed.iter().zip(&receipts) {
        assert_eq!(r["replay"]["of_run"], "rec", "{r}");
        assert_eq!(r["replay"]["strict"], true);
        assert!(r["replay"]["original_started_at"].is_string(), "virtual time: {r}");
        assert_eq!(r["seal"]["key"], original["seal"]["key"], "replayed in order");
        assert_eq!(r["replay"]["of"], original["id"], "receipts point to the receipts they re-served");
    }

    // Concurrent calls replay, in any order.
    let out = ctl(&control, &home, &["replay", "conc", "--strict", "--", "py_agent.py", "--concurrent", "8"]).await;
    assert_eq!(out.code, 0, "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(lines(&out), conc);

    // One prompt changed: that call is refused with 599 naming the closest sealed call and the
    // differing message; every other call still replays.
    let out =
        ctl(&control, &home, &["replay", "rec", "--strict", "--", "py_agent.py", "--change", "What is new?"]).await;
    assert_eq!(out.code, 1, "a miss fails the replay: {}\n{}", out.stdout, out.stderr);
    let got = lines(&out);
    assert_eq!(got.len(), 6, "{got:?}");
    for i in [0, 1, 2, 3, 5] {
        assert_eq!(got[i], recorded[i], "call {}", i + 1);
    }
    assert_eq!(got[4]["status"], 599, "{:?}", got[4]);
    let error = if got[4]["error"]["error"].is_object() { &got[4]["error"]["error"] } else { &got[4]["error"] };
    assert_eq!(error["type"], "replay_miss", "{error}");
    assert_eq!(error["closest"], receipts[4]["id"], "{error}");
    let paths: Vec<&str> = error["diff"].as_array().unwrap().iter().filter_map(|d| d["path"].as_str()).collect();
    assert_eq!(paths, ["/messages/0/content"], "{error}");
    assert!(out.stdout.contains("missed   1"), "{}", out.stdout);

    // Seals are checked: control refuses a blob that is not what its address says, and verify
    // catches one altered after it was stored.
    let verified = ctl(&control, &home, &["verify", "rec"]).await;
    assert_eq!(verified.code, 0, "{}\n{}", verified.stdout, verified.stderr);
    let address = receipts[0]["seal"]["response_digest"].as_str().unwrap();
    let (status, body) =
        control.api("PUT", &format!("/v1/seals/{address}"), &control.token, Some("not the body")).unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["type"], "seal_mismatch", "{body}");
    db.execute(&control.home, &format!("UPDATE seals SET bytes = X'00' WHERE address = '{address}'")).unwrap();
    let verified = ctl(&control, &home, &["verify", "rec"]).await;
    assert_eq!(verified.code, 1, "{}\n{}", verified.stdout, verified.stderr);
    assert!(verified.stdout.contains(address), "{}", verified.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replays_are_refused_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::fresh(false).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let home = dir.path().join("home");
    let out = ctl(&control, &home, &["replay", "nope", "--strict", "--", "py_agent.py"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("cannot replay run nope") && out.stderr.contains("not found"), "{}", out.stderr);
    create_run(&control, "empty");
    let out = ctl(&control, &home, &["replay", "empty", "--", "py_agent.py"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no sealed calls"), "{}", out.stderr);

    // A manifest that does not verify: the proxy refuses to start, naming it.
    let fake = fake_control(
        &json!({"schema": "fleetforge.replay-manifest/v1", "run": "r", "tenant": "t", "generated_at": "2026-12-06T00:00:00Z",
                "calls": [], "signature": {"alg": "ed25519", "key_id": "capability-root-9", "value": "AA"}})
        .to_string(),
    );
    let out = run_program(
        &binary("fleetforge-proxy"),
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[
            ("FLEETFORGE_HOME", &home.display().to_string()),
            ("FLEETFORGE_CONTROL_URL", &format!("http://{fake}")),
            ("FLEETFORGE_CONTROL_TOKEN", "t"),
            ("FLEETFORGE_REPLAY", "r:strict"),
        ],
    )
    .await
    .unwrap();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("replay manifest is corrupt") && out.stderr.contains("capability-root-9"),
        "{}",
        out.stderr
    );
}

/// GET with control's admin token; the raw body.
fn raw_get(control: &ControlProcess, path: &str) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(control.addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        control.addr, control.token
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw[..at]));
    raw[at + 4..].to_vec()
}

/// A stand-in control that answers every request with `body` (JSON, 200).
fn fake_control(body: &str) -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = body.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// One chat completion through `proxy` as `run` with curl: (status, response headers, body).
async fn curl_chat(proxy: &ProxyProcess, run: &str, token: &str, prompt: &str) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 32, "messages": [{"role": "user", "content": prompt}]})
        .to_string();
    let url = proxy.proxy_url(run, token);
    let bundle = proxy.bundle.display().to_string();
    let out = Clients::locate()
        .curl(
            &[
                "-D",
                &head.display().to_string(),
                "-H",
                "content-type: application/json",
                "-H",
                &format!("authorization: Bearer {API_KEY}"),
                "--data",
                &body,
                &format!("https://{OPENAI}/v1/chat/completions"),
            ],
            &[("https_proxy", url.as_str()), ("CURL_CA_BUNDLE", bundle.as_str())],
        )
        .await
        .unwrap();
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loose_replay_forwards_misses_and_runs_carry_dataset_digests() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[OPENAI]).start().await.unwrap();
    let db = Database::fresh(false).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let data = dir.path().join("questions.jsonl");
    std::fs::write(&data, "{\"q\": \"capital of France\"}\n").unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, format!("[[dataset]]\nname = \"questions\"\npath = \"{}\"\n", data.display())).unwrap();
    let start = |replay: Option<&str>| {
        let mut b = ProxyProcess::builder()
            .upstream_ca(ca.pem_path())
            .env("FLEETFORGE_CONTROL_URL", control.url())
            .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
            .env("FLEETFORGE_INTERCEPT", OPENAI)
            .resolve(OPENAI, upstream.addr())
            .arg("--config")
            .arg(config.display().to_string());
        if let Some(run) = replay {
            b = b.env("FLEETFORGE_REPLAY", run);
        }
        b.start().unwrap()
    };
    let mut proxy = start(None);
    let token = create_run(&control, "loose");
    let (status, _, recorded) = curl_chat(&proxy, "loose", &token, "What is the capital of France?").await;
    assert_eq!(status, 200, "{recorded}");
    let receipt = control.receipts("loose", 1).unwrap().remove(0);
    let run = control.api("GET", "/v1/runs/loose", &control.token, None).unwrap().1;
    let digest = fleetforge_trust::text::hex(&fleetforge_trust::canonical::sha256(&std::fs::read(&data).unwrap()));
    assert_eq!(run["datasets"], json!([{"name": "questions", "sha256": digest, "size": 27}]), "{run}");
    proxy.terminate(std::time::Duration::from_secs(10)).unwrap();

    // Not strict: the sealed call is served from its seal, with its original time; a new one goes
    // upstream and is recorded in the replay run.
    let replaying = start(Some("loose"));
    let token = create_run(&control, "loose-r");
    let before = upstream.connections();
    let (status, head, body) = curl_chat(&replaying, "loose-r", &token, "What is the capital of France?").await;
    assert_eq!((status, body.as_str()), (200, recorded.as_str()));
    let started = receipt["started_at"].as_str().unwrap();
    assert!(head.contains(&format!("x-fleetforge-virtual-time: {}", started.to_ascii_lowercase())), "{head}");
    assert_eq!(upstream.connections(), before, "served from the seal");
    let (status, _, _) = curl_chat(&replaying, "loose-r", &token, "Something new").await;
    assert_eq!(status, 200);
    assert!(upstream.connections() > before, "a miss outside strict mode goes upstream");
    let receipts = control.receipts("loose-r", 2).unwrap();
    assert_eq!(receipts[0]["replay"]["of"], receipt["id"]);
    assert_eq!(receipts[1]["replay"]["of"], Value::Null);
    assert_eq!(receipts[1]["replay"]["strict"], false);
    let report = control.api("GET", "/v1/runs/loose-r/replay-report", &control.token, None).unwrap().1;
    assert_eq!((report["matched"].as_u64(), report["missed"].as_u64()), (Some(1), Some(1)), "{report}");
}
