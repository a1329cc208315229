//! Receipts end to end: real proxy → real spool → real control on SQLite and on Postgres.
//!
//! Every scenario runs on both databases. The upstream is the in-process fake; clients are curl.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fleetforge_e2e::harness::{ControlProcess, Database, binary};
use fleetforge_e2e::upstream::{CHUNKS_HEADER, DELAY_HEADER};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::Value;

const API_KEY: &str = "sk-e2e-RECEIPT-SECRET-6b1f0c";
const QUERY_KEY: &str = "AIzaE2EQUERYSECRET77";
const RUN_TOKEN: &str = "tok-e2e-RECEIPT-SECRET-93d2";

fn sha256_hex(bytes: &[u8]) -> String {
    fleetforge_trust::canonical::hex(&fleetforge_trust::canonical::sha256(bytes))
}

struct Stack {
    dir: tempfile::TempDir,
    ca: TestCa,
    upstream: Upstream,
    db: Database,
    control: ControlProcess,
    clients: Clients,
}

async fn stack(postgres: bool) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &["api.openai.com"]).start().await.unwrap();
    let db = Database::fresh(postgres).unwrap();
    let control_home = dir.path().join("control-home");
    let control = ControlProcess::start(&db, &control_home, None).unwrap();
    Stack { dir, ca, upstream, db, control, clients: Clients::locate() }
}

impl Stack {
    fn proxy(&self, home: &Path, control_url: &str, extra: &[(&str, &str)]) -> ProxyProcess {
        let mut b = ProxyProcess::builder()
            .home(home)
            .resolve("api.openai.com", self.upstream.addr())
            .upstream_ca(self.ca.pem_path())
            .env("FLEETFORGE_CONTROL_URL", control_url)
            .env("FLEETFORGE_CONTROL_TOKEN", self.control.token.clone())
            // These tests name runs freely; run tokens are checked in capabilities.rs.
            .env("FLEETFORGE_CAPABILITIES", "false")
            .env("FLEETFORGE_ALLOWED_HOSTS", "api.openai.com");
        for (k, v) in extra {
            b = b.env(k, *v);
        }
        b.start().unwrap()
    }

    /// POSTs `body` to /echo through the proxy as `run`; returns the response body the client got.
    async fn call(&self, proxy: &ProxyProcess, run: &str, body: &str) -> Vec<u8> {
        let out_file = self.dir.path().join(format!("resp-{}", sha256_hex(body.as_bytes())));
        let env =
            [("HTTPS_PROXY", proxy.proxy_url(run, RUN_TOKEN)), ("CURL_CA_BUNDLE", proxy.bundle.display().to_string())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = format!("https://api.openai.com/echo?key={QUERY_KEY}&alt=json");
        self.clients
            .curl(
                &[
                    "-o",
                    out_file.to_str().unwrap(),
                    "-H",
                    &format!("Authorization: Bearer {API_KEY}"),
                    "--data-binary",
                    body,
                    &url,
                ],
                &env,
            )
            .await
            .unwrap()
            .ok()
            .unwrap();
        std::fs::read(out_file).unwrap()
    }

    /// Polls control until `run` has at least `n` receipts (15 s), returns them in order.
    fn receipts(&self, run: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self
                .control
                .api("GET", &format!("/v1/runs/{run}/receipts?limit=1000"), &self.control.token, None)
                .unwrap();
            let got = body["receipts"].as_array().cloned().unwrap_or_default();
            if status == 200 && got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} receipts for {run} reached control (status {status})",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = std::process::Command::new(binary("fleetforge-ctl"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FLEETFORGE_CONTROL_URL", self.control.url())
            .env("FLEETFORGE_CONTROL_TOKEN", &self.control.token)
            .env("FLEETFORGE_HOME", self.dir.path().join("ctl-home"))
            .args(args);
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

async fn receipts_arrive_in_order_and_tampering_is_caught(postgres: bool) {
    let s = stack(postgres).await;
    let proxy_home = s.dir.path().join("proxy-home");
    let proxy = s.proxy(&proxy_home, &s.control.url(), &[]);
    let bodies = [r#"{"n":1}"#, r#"{"n":2,"x":"héllo"}"#, r#"{"n":3}"#];
    let mut responses = Vec::new();
    for b in bodies {
        responses.push(s.call(&proxy, "run-r1", b).await);
    }
    // A denied call is a receipt too.
    let denied = s
        .clients
        .curl(
            &["-s", "-o", "/dev/null", "-w", "%{http_connect}", "https://evil.example/"],
            &[
                ("HTTPS_PROXY", &proxy.proxy_url("run-r1", RUN_TOKEN)),
                ("CURL_CA_BUNDLE", proxy.bundle.to_str().unwrap()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(denied.stdout, "403", "the CONNECT was refused: {denied:?}");
    // A stream, paced, to check the response digest covers every chunk.
    let stream_out = s.dir.path().join("stream");
    s.clients
        .curl(
            &[
                "-o",
                stream_out.to_str().unwrap(),
                "-H",
                "content-type: application/json",
                "-H",
                &format!("{DELAY_HEADER}=20"),
                "-H",
                &format!("{CHUNKS_HEADER}=4"),
                "--data-binary",
                // Asks for its usage itself, so the client gets exactly what the upstream sent (an
                // injected option's usage chunk would be cut: see receipts_carry_the_usage_…).
                r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
                "https://api.openai.com/v1/chat/completions",
            ],
            &[
                ("HTTPS_PROXY", &proxy.proxy_url("run-r1", RUN_TOKEN)),
                ("CURL_CA_BUNDLE", proxy.bundle.to_str().unwrap()),
            ],
        )
        .await
        .unwrap()
        .ok()
        .unwrap();

    let receipts = s.receipts("run-r1", 5);
    assert_eq!(receipts.len(), 5);
    let seqs: Vec<u64> = receipts.iter().map(|r| r["chain"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "in chain order, no gaps");
    let seen = s.upstream.requests();
    for (i, body) in bodies.iter().enumerate() {
        let r = &receipts[i];
        assert_eq!(r["run"], "run-r1");
        assert_eq!(r["upstream"]["host"], "api.openai.com");
        assert_eq!(r["seal"]["status"], 200);
        assert_eq!(r["seal"]["request_digest"], sha256_hex(&seen[i].body), "digest of what the upstream received");
        assert_eq!(seen[i].body.as_ref(), body.as_bytes());
        assert_eq!(r["seal"]["response_digest"], sha256_hex(&responses[i]), "digest of what the client received");
        assert_eq!(r["seal"]["response_bytes"], responses[i].len());
        assert!(r["upstream"]["path"].as_str().unwrap().contains("key=[redacted]"), "{}", r["upstream"]["path"]);
    }
    let deny = &receipts[3];
    assert_eq!(deny["decision"]["allow"], false);
    assert_eq!(deny["decision"]["error"]["type"], "policy_denied");
    assert_eq!(deny["upstream"]["host"], "evil.example");
    let stream = &receipts[4];
    assert_eq!(stream["seal"]["response_digest"], sha256_hex(&std::fs::read(&stream_out).unwrap()));

    let (status, verify) = s.control.api("GET", "/v1/runs/run-r1/verify", &s.control.token, None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["checked"], 5);
    let (code, out, err) = s.ctl(&["verify", "run-r1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.ctl(&["receipts", "run-r1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("api.openai.com") && out.contains("evil.example"), "{out}");
    let header = out.lines().next().unwrap_or_default();
    for column in ["STEP", "TIME", "HOST", "METHOD PATH", "DECISION", "STATUS", "TOKENS", "MS", "TRACE"] {
        assert!(header.contains(column), "table header has {column}: {header}");
    }
    let row = |host: &str| out.lines().find(|l| l.contains(host)).unwrap_or_default().to_owned();
    assert!(row("api.openai.com").contains(" allow "), "{out}");
    assert!(row("evil.example").contains("policy_denied"), "{out}");

    // Tamper with one stored receipt under the API: verification names it.
    let victim = receipts[1]["id"].as_str().unwrap().to_owned();
    s.db.execute(
        &s.control.home,
        &format!("UPDATE receipts SET body = replace(body, '\"status\":200', '\"status\":201') WHERE id = '{victim}'"),
    )
    .unwrap();
    let (_, verify) = s.control.api("GET", "/v1/runs/run-r1/verify", &s.control.token, None).unwrap();
    assert_eq!(verify["ok"], false, "{verify}");
    assert!(verify["problems"].as_array().unwrap().iter().any(|p| p["receipt_id"] == victim.as_str()), "{verify}");
    let (code, out, err) = s.ctl(&["verify", "run-r1"]);
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains(&victim), "ctl verify names the receipt: {out}{err}");

    // Replaying a batch changes nothing.
    let (status, before) = s.control.api("GET", "/v1/runs/run-r1", &s.control.token, None).unwrap();
    assert_eq!(status, 200);
    let batch = serde_json::json!({ "receipts": [receipts[0].clone(), receipts[2].clone()] }).to_string();
    let (status, answer) = s.control.api("POST", "/v1/receipts", &s.control.token, Some(&batch)).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicates"], 2, "{answer}");
    assert_eq!(answer["accepted"], 0);
    let (_, after) = s.control.api("GET", "/v1/runs/run-r1", &s.control.token, None).unwrap();
    assert_eq!(before["receipts"], after["receipts"]);
    assert_eq!(s.receipts("run-r1", 5).len(), 5);

    // Secrets appear nowhere: not in receipts, the database, the spool, or any log.
    let mut haystacks = vec![
        ("receipts API", serde_json::to_string(&receipts).unwrap()),
        ("proxy log", proxy.logs()),
        ("control log", s.control.logs()),
    ];
    for entry in std::fs::read_dir(proxy_home.join("spool")).unwrap().flatten() {
        haystacks.push(("spool", String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned()));
    }
    match &s.db {
        Database::Sqlite => {
            for entry in std::fs::read_dir(&s.control.home).unwrap().flatten() {
                if entry.path().is_file() {
                    haystacks.push((
                        "database file",
                        String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned(),
                    ));
                }
            }
        }
        Database::Postgres(pg) => {
            let dump = std::process::Command::new("pg_dump")
                .args(["-h", "127.0.0.1", "-U", "postgres", &pg.name])
                .output()
                .unwrap();
            assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
            haystacks.push(("database dump", String::from_utf8_lossy(&dump.stdout).into_owned()));
        }
    }
    for (what, text) in haystacks {
        for secret in [API_KEY, QUERY_KEY, RUN_TOKEN] {
            assert!(!text.contains(secret), "{secret} found in the {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_arrive_in_order_and_tampering_is_caught_sqlite() {
    receipts_arrive_in_order_and_tampering_is_caught(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_arrive_in_order_and_tampering_is_caught_postgres() {
    receipts_arrive_in_order_and_tampering_is_caught(true).await;
}

async fn kill_9_loses_nothing(postgres: bool) {
    let s = stack(postgres).await;
    let proxy_home = s.dir.path().join("proxy-home");
    // A long seal interval: at the kill, the receipts are written but not yet signed or shipped.
    let config = s.dir.path().join("slow-seal.toml");
    std::fs::write(&config, "[proxy.receipts]\nseal_interval = \"1h\"\n").unwrap();
    let mut b = ProxyProcess::builder()
        .home(&proxy_home)
        .resolve("api.openai.com", s.upstream.addr())
        .upstream_ca(s.ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", s.control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", s.control.token.clone())
        // These tests name runs freely; run tokens are checked in capabilities.rs.
        .env("FLEETFORGE_CAPABILITIES", "false")
        .arg("--config")
        .arg(config.display().to_string());
    b = b.env("FLEETFORGE_LOG", "info");
    let mut proxy = b.start().unwrap();
    const N: usize = 6;
    for i in 0..N {
        s.call(&proxy, "run-k9", &format!(r#"{{"i":{i}}}"#)).await;
    }
    proxy.kill();
    let (status, _) = s.control.api("GET", "/v1/runs/run-k9/receipts", &s.control.token, None).unwrap();
    assert!(status == 404 || status == 200);
    // Restart on the same home: recovery seals and ships what the killed process wrote.
    let proxy = s.proxy(&proxy_home, &s.control.url(), &[]);
    let receipts = s.receipts("run-k9", N);
    assert_eq!(receipts.len(), N);
    let (_, verify) = s.control.api("GET", "/v1/runs/run-k9/verify", &s.control.token, None).unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    // And the chain continues after the restart.
    s.call(&proxy, "run-k9", r#"{"after":"restart"}"#).await;
    let receipts = s.receipts("run-k9", N + 1);
    assert_eq!(receipts.last().unwrap()["chain"]["seq"], N as u64 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_nothing_sqlite() {
    kill_9_loses_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_nothing_postgres() {
    kill_9_loses_nothing(true).await;
}

async fn a_control_outage_loses_nothing(postgres: bool) {
    let mut s = stack(postgres).await;
    let addr: SocketAddr = s.control.addr;
    s.control.kill();
    let proxy_home = s.dir.path().join("proxy-home");
    let proxy = s.proxy(&proxy_home, &format!("http://{addr}"), &[]);
    const M: usize = 5;
    for i in 0..M {
        s.call(&proxy, "run-down", &format!(r#"{{"m":{i}}}"#)).await;
    }
    // Give the shipper time to fail a few times, then bring control back on the same address.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(proxy.metric("fleetforge_ship_failures_total").unwrap() >= 1.0);
    s.control = ControlProcess::start(&s.db, &s.dir.path().join("control-home"), Some(addr)).unwrap();
    let receipts = s.receipts("run-down", M);
    assert_eq!(receipts.len(), M);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric("fleetforge_ship_backlog").unwrap() > 0.0 {
        assert!(Instant::now() < deadline, "backlog never drained");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_outage_loses_nothing_sqlite() {
    a_control_outage_loses_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_outage_loses_nothing_postgres() {
    a_control_outage_loses_nothing(true).await;
}

async fn other_tenants_see_nothing(postgres: bool) {
    let s = stack(postgres).await;
    let proxy = s.proxy(&s.dir.path().join("proxy-home"), &s.control.url(), &[]);
    s.call(&proxy, "run-tenant-a", "{}").await;
    s.receipts("run-tenant-a", 1);
    // A reader of another tenant, made with the control binary on the same database.
    let mut cmd = std::process::Command::new(binary("fleetforge-control"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEETFORGE_HOME", &s.control.home)
        .args(["token", "create", "--role", "reader", "--tenant", "tenant-b"]);
    if let Database::Postgres(pg) = &s.db {
        cmd.env("DATABASE_URL", pg.url());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.split_whitespace().find(|w| w.starts_with("fft_")).expect("the token is printed").to_owned();
    for path in ["/v1/runs/run-tenant-a", "/v1/runs/run-tenant-a/receipts", "/v1/runs/run-tenant-a/verify"] {
        let (status, body) = s.control.api("GET", path, &token, None).unwrap();
        assert_eq!(status, 404, "{path}: {body}");
    }
    let receipt_id = s.receipts("run-tenant-a", 1)[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = s.control.api("GET", &format!("/v1/receipts/{receipt_id}"), &token, None).unwrap();
    assert_eq!(status, 404);
    let (status, list) = s.control.api("GET", "/v1/runs", &token, None).unwrap();
    assert_eq!(status, 200);
    assert!(!list.to_string().contains("run-tenant-a"), "{list}");
    let (status, _) = s.control.api("GET", "/v1/runs", "fft_not-a-token", None).unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_tenants_see_nothing_sqlite() {
    other_tenants_see_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_tenants_see_nothing_postgres() {
    other_tenants_see_nothing(true).await;
}

/// Token usage is read from the response as it streams to the client: a JSON completion and an
/// SSE stream with `include_usage`, through curl, each receipt stating exactly what the upstream
/// reported.
#[tokio::test(flavor = "multi_thread")]
async fn receipts_carry_the_usage_the_upstream_reported() {
    let s = stack(false).await;
    let proxy = s.proxy(&s.dir.path().join("proxy-home"), &s.control.url(), &[]);
    let env = [
        ("HTTPS_PROXY", proxy.proxy_url("run-usage", RUN_TOKEN)),
        ("CURL_CA_BUNDLE", proxy.bundle.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let chat = |body: &str| {
        [
            "-s",
            "-H",
            "content-type: application/json",
            "-H",
            &format!("{CHUNKS_HEADER}: 5"),
            "--data-binary",
            body,
            "https://api.openai.com/v1/chat/completions",
        ]
        .map(str::to_owned)
    };
    let json_body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the whole fleet"}]}"#;
    let args = chat(json_body);
    let out = s.clients.curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env).await.unwrap().ok().unwrap();
    let answered: Value = serde_json::from_str(&out.stdout).unwrap();
    let stream_body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Count to five"}]}"#;
    let args = chat(stream_body);
    let out = s.clients.curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env).await.unwrap().ok().unwrap();
    let with_usage = out.stdout.clone();
    let streamed: Value = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|chunk| chunk["usage"].is_object())
        .expect("the stream's usage chunk");

    // A stream that did not ask for usage: the proxy asks for it, and the client gets exactly the
    // bytes a direct call without it gets.
    let bare_body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Count to five"}]}"#;
    let args = chat(bare_body);
    let through =
        s.clients.curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env).await.unwrap().ok().unwrap();
    let port = s.upstream.addr().port();
    let direct_url = format!("https://api.openai.com:{port}/v1/chat/completions");
    let direct_args = [
        "-s",
        "--resolve",
        &format!("api.openai.com:{port}:127.0.0.1"),
        "--cacert",
        s.ca.pem_path().to_str().unwrap(),
        "-H",
        "content-type: application/json",
        "-H",
        &format!("{CHUNKS_HEADER}: 5"),
        "--data-binary",
        bare_body,
        &direct_url,
    ];
    let direct = s.clients.curl(&direct_args, &[]).await.unwrap().ok().unwrap();
    assert!(direct.stdout.contains("data: [DONE]") && !direct.stdout.contains("usage"), "{}", direct.stdout);
    assert_eq!(through.stdout, direct.stdout, "the client sees the stream it asked for, byte for byte");

    let receipts = s.receipts("run-usage", 3);
    let bare = &receipts[2]["usage"];
    assert_eq!(bare["input_tokens"], streamed["usage"]["prompt_tokens"], "counted although not asked for: {bare}");
    assert_eq!(bare["output_tokens"], streamed["usage"]["completion_tokens"], "{bare}");
    assert!(receipts[2]["seal"]["response_bytes"].as_u64().unwrap() == through.stdout.len() as u64, "{}", receipts[2]);
    // The seal is of what the upstream sent: the stream with its usage, as a client asking for it gets.
    assert_eq!(receipts[2]["seal"]["response_digest"], sha256_hex(with_usage.as_bytes()), "{}", receipts[2]);
    // Control adds each receipt's usage to its run.
    let sum = |member: &str| receipts.iter().map(|r| r["usage"][member].as_u64().unwrap()).sum::<u64>();
    let (_, run) = s.control.api("GET", "/v1/runs/run-usage", &s.control.token, None).unwrap();
    assert_eq!(run["input_tokens"].as_u64(), Some(sum("input_tokens")), "{run}");
    assert_eq!(run["output_tokens"].as_u64(), Some(sum("output_tokens")), "{run}");
    assert!((run["cost_usd"].as_f64().unwrap() - sum("cost_micro_usd") as f64 / 1e6).abs() < 1e-9, "{run}");
    for (receipt, reported) in receipts.iter().zip([&answered["usage"], &streamed["usage"]]) {
        let usage = &receipt["usage"];
        assert_eq!(usage["input_tokens"], reported["prompt_tokens"], "{receipt}");
        assert_eq!(usage["output_tokens"], reported["completion_tokens"], "{receipt}");
        assert!(usage["output_tokens"].as_u64().unwrap() > 0, "{receipt}");
        assert_eq!(usage["provider"], "openai");
        assert_eq!(usage["model"], "gpt-4o-mini", "the model the request named");
        // The built-in list: gpt-4o-mini at $0.15 in and $0.60 out per million tokens.
        let (input, output) =
            (reported["prompt_tokens"].as_f64().unwrap(), reported["completion_tokens"].as_f64().unwrap());
        assert_eq!(usage["cost_micro_usd"].as_u64(), Some((input * 0.15 + output * 0.60).round() as u64), "{receipt}");
    }
}
