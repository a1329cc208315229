//! Capability tokens end to end: control mints Biscuit run tokens, the proxy verifies and
//! attenuates them per call, tools verify offline, revocation reaches the proxy, VC export.
//!
//! Real control (SQLite), real proxy, real curl; the upstream is the in-process fake.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fleetforge_e2e::harness::{ControlProcess, Database, binary};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::{Value, json};

struct Stack {
    dir: tempfile::TempDir,
    upstream: Upstream,
    control: ControlProcess,
    proxy: ProxyProcess,
    clients: Clients,
    calls: std::sync::atomic::AtomicUsize,
    /// The test CA the upstream's certificate is signed by.
    ca_pem: std::path::PathBuf,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let hosts = ["api.openai.com", "tools.example", "other.example"];
    let upstream = Upstream::builder().tls(&ca, &hosts).record(true).start().await.unwrap();
    let db = Database::fresh(false).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let mut b = ProxyProcess::builder()
        .home(&dir.path().join("proxy-home"))
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        // No FLEETFORGE_CAPABILITIES: a proxy that knows control verifies run tokens by default.
        .env("FLEETFORGE_TOOL_HOSTS", "tools.example")
        .env("FLEETFORGE_INTERCEPT", hosts.join(","));
    for h in hosts {
        b = b.resolve(h, upstream.addr());
    }
    let proxy = b.start().unwrap();
    let ca_pem = ca.pem_path().to_owned();
    Stack { dir, upstream, control, proxy, clients: Clients::locate(), calls: Default::default(), ca_pem }
}

/// One call's outcome as the client saw it.
struct Answer {
    status: u16,
    body: Value,
}

impl Stack {
    fn create_run(&self, body: Value) -> (String, String, String) {
        let (status, created) =
            self.control.api("POST", "/v1/runs", &self.control.token, Some(&body.to_string())).unwrap();
        assert_eq!(status, 201, "{created}");
        let s = |k: &str| created[k].as_str().unwrap().to_owned();
        (s("id"), s("token"), s("token_id"))
    }

    /// POSTs `body` to `url` through the proxy with `RUN:TOKEN` credentials.
    async fn call(&self, run: &str, token: &str, url: &str, body: &Value) -> Answer {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.dir.path().join(format!("out-{n}"));
        let env = [
            ("HTTPS_PROXY", self.proxy.proxy_url(run, token)),
            ("CURL_CA_BUNDLE", self.proxy.bundle.display().to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let output = self
            .clients
            .curl(
                &[
                    "-s",
                    "-o",
                    out.to_str().unwrap(),
                    "-w",
                    "%{http_code}",
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    &body.to_string(),
                    url,
                ],
                &env,
            )
            .await
            .unwrap();
        let status = output.stdout.trim().parse().unwrap_or(0);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(binary("fleetforge-ctl"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FLEETFORGE_CONTROL_URL", self.control.url())
            .env("FLEETFORGE_CONTROL_TOKEN", &self.control.token)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Polls control until `run` has at least `n` receipts.
    fn receipts(&self, run: &str, n: usize) -> Vec<Value> {
        self.control.receipts(run, n).unwrap()
    }
}

const CHAT: &str = "https://api.openai.com/v1/chat/completions";

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn grants() -> Value {
    json!({
        "agent": "planner",
        "grants": {
            "hosts": ["api.openai.com", "tools.example"],
            "methods": ["POST"],
            "paths": ["/v1/chat/", "/echo"],
            "models": ["gpt-4o*"],
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_allow_exactly_their_grants_and_every_refusal_is_a_verifiable_receipt() {
    let s = stack().await;
    let (run, token, token_id) = s.create_run(grants());

    // In scope: allowed, and the receipt names the token.
    let ok = s.call(&run, &token, CHAT, &chat("gpt-4o-mini")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    // Out of scope: model, path, host — 403 capability_denied, nothing forwarded.
    s.upstream.clear_requests();
    for (url, body, what) in [
        (CHAT, chat("claude-3-opus"), "model"),
        ("https://api.openai.com/v1/embeddings", chat("gpt-4o"), "path"),
        ("https://other.example/echo", json!({}), "host"),
    ] {
        let a = s.call(&run, &token, url, &body).await;
        assert_eq!(a.status, 403, "{what}: {}", a.body);
        assert_eq!(a.body["error"]["type"], "capability_denied", "{what}: {}", a.body);
        assert!(a.body["error"]["receipt_id"].is_string(), "{}", a.body);
    }
    // Decisions are remembered per token and call facts: the same call is denied again, and an
    // allowed one still goes through.
    let again = s.call(&run, &token, CHAT, &chat("claude-3-opus")).await;
    assert_eq!(again.body["error"]["type"], "capability_denied", "{}", again.body);
    assert!(s.upstream.requests().is_empty(), "a denied call reaches no upstream");
    assert_eq!(s.call(&run, &token, CHAT, &chat("gpt-4o-mini")).await.status, 200);

    // Bad tokens: 407.
    let garbage = s.call(&run, "not-a-biscuit", CHAT, &chat("gpt-4o")).await;
    assert_eq!(garbage.status, 407, "{}", garbage.body);
    assert_eq!(garbage.body["error"]["type"], "proxy_auth_required");
    let (run_b, _, _) = s.create_run(json!({}));
    let foreign = s.call(&run_b, &token, CHAT, &chat("gpt-4o")).await;
    assert_eq!(foreign.status, 407, "run A's token presented as run B: {}", foreign.body);
    assert!(foreign.body["error"]["message"].as_str().unwrap().contains(&run), "{}", foreign.body);
    let (short, short_token, _) = s.create_run(json!({"ttl_seconds": 1}));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = s.call(&short, &short_token, CHAT, &chat("gpt-4o")).await;
    assert_eq!(expired.status, 407, "{}", expired.body);
    assert!(expired.body["error"]["message"].as_str().unwrap().contains("expired"), "{}", expired.body);

    // Every call — allowed and denied — left a receipt; the chain verifies.
    let receipts = s.receipts(&run, 7);
    assert_eq!(receipts[0]["capability"]["token_id"], token_id.as_str(), "{}", receipts[0]);
    assert!(receipts[0]["capability"]["call_token_id"].is_null(), "no per-call token minted for an LLM host");
    let refused = |kind: &str| receipts.iter().filter(|r| r["decision"]["error"]["type"] == kind).count();
    assert_eq!(refused("capability_denied"), 4, "{receipts:?}");
    assert_eq!(refused("proxy_auth_required"), 1, "the garbage token's call, under its run");
    let (_, verify) = s.control.api("GET", &format!("/v1/runs/{run}/verify"), &s.control.token, None).unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    // The run token itself is never recorded.
    let (_, all) = s.control.api("GET", &format!("/v1/runs/{run}/receipts"), &s.control.token, None).unwrap();
    assert!(!all.to_string().contains(&token), "the run token appears nowhere in receipts");
    assert!(!s.proxy.logs().contains(&token), "nor in the proxy's logs");
}

/// A sidecar bound to one run (`FLEETFORGE_DEFAULT_RUN` + `FLEETFORGE_DEFAULT_TOKEN`): an agent
/// that sends no credentials at all is checked against that run's token.
#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_bound_to_a_run_presents_its_default_token() {
    let s = stack().await;
    let (run, token, token_id) = s.create_run(grants());
    let (other, _, _) = s.create_run(json!({}));
    let sidecar = |default_run: &str| {
        ProxyProcess::builder()
            .upstream_ca(&s.ca_pem)
            .env("FLEETFORGE_CONTROL_URL", s.control.url())
            .env("FLEETFORGE_CONTROL_TOKEN", s.control.token.clone())
            .env("FLEETFORGE_CAPABILITIES", "true")
            .env("FLEETFORGE_DEFAULT_RUN", default_run)
            .env("FLEETFORGE_DEFAULT_TOKEN", token.clone())
            .resolve("api.openai.com", s.upstream.addr())
            .sidecar("https://api.openai.com")
            .start()
            .unwrap()
    };
    let post = |proxy: &ProxyProcess, model: &str| {
        let url = format!("http://{}/v1/chat/completions", proxy.sidecars[0]);
        let body = chat(model).to_string();
        let clients = &s.clients;
        async move {
            let out = clients
                .curl(
                    &[
                        "-s",
                        "-w",
                        "\n%{http_code}",
                        "-H",
                        "content-type: application/json",
                        "--data-binary",
                        &body,
                        &url,
                    ],
                    &[],
                )
                .await
                .unwrap();
            let (text, status) = out.stdout.trim().rsplit_once('\n').unwrap();
            (status.parse::<u16>().unwrap(), serde_json::from_str::<Value>(text).unwrap_or(Value::Null))
        }
    };

    let bound = sidecar(&run);
    let (status, body) = post(&bound, "gpt-4o-mini").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&bound, "claude-3-opus").await;
    assert_eq!(status, 403, "outside the default token's grants: {body}");
    assert_eq!(body["error"]["type"], "capability_denied", "{body}");
    let receipts = s.receipts(&run, 2);
    assert_eq!(receipts[0]["capability"]["token_id"], token_id.as_str(), "{}", receipts[0]);

    // The default token must belong to the default run: another run's calls are refused.
    let mismatched = sidecar(&other);
    let (status, body) = post(&mismatched, "gpt-4o-mini").await;
    assert_eq!(status, 407, "{body}");
    assert!(!mismatched.logs().contains(&token), "the default token is never logged");
}

/// Turning token checks off while control is known is explicit, and said at WARN: the same
/// garbage password the default proxy refuses is then forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn turning_token_checks_off_is_explicit_and_logged_at_warn() {
    let s = stack().await;
    let (run, _, _) = s.create_run(json!({}));
    let refused = s.call(&run, "garbage", CHAT, &chat("gpt-4o")).await;
    assert_eq!(refused.status, 407, "the default proxy verifies tokens: {}", refused.body);
    assert!(!s.proxy.logs().contains("NOT verified"), "no opt-out warning by default");

    let off = ProxyProcess::builder()
        .upstream_ca(&s.ca_pem)
        .env("FLEETFORGE_CONTROL_URL", s.control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", s.control.token.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .env("FLEETFORGE_LOG", "warn")
        .env("FLEETFORGE_INTERCEPT", "api.openai.com")
        .resolve("api.openai.com", s.upstream.addr())
        .start()
        .unwrap();
    let logs = off.logs();
    let warning = logs.lines().find(|l| l.contains("run tokens are NOT verified")).unwrap_or_default();
    assert!(warning.contains("WARN"), "the opt-out is logged at WARN: {logs}");
    let env = [("HTTPS_PROXY", off.proxy_url(&run, "garbage")), ("CURL_CA_BUNDLE", off.bundle.display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = s
        .clients
        .curl(
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/json", "-d", "{}", CHAT],
            &env,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "200", "checks off: any password is taken");
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_get_a_per_call_token_that_verifies_offline_for_that_call_only() {
    let s = stack().await;
    let (run, token, _) = s.create_run(grants());
    s.upstream.clear_requests();
    let a = s.call(&run, &token, "https://tools.example/echo", &json!({"q": 1})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = s.upstream.last_request().unwrap();
    let per_call = seen.headers.get("x-fleetforge-capability").expect("tool receives the capability").to_str().unwrap();
    assert_ne!(per_call, token, "the tool gets an attenuated token, not the run token");
    assert!(seen.headers.get("x-fleetforge-token").is_none() && seen.headers.get("proxy-authorization").is_none());

    let receipts = s.receipts(&run, 1);
    assert_eq!(receipts[0]["capability"]["call_token_id"].as_str().unwrap().len(), 128, "{}", receipts[0]);
    let verify = |path: &str| s.ctl(&["capability", "verify", per_call, "--host", "tools.example", "--path", path]);
    let (code, out, err) = verify("/echo");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&run), "{out}");
    let (code, out, _) = verify("/admin");
    assert_eq!(code, 1, "another path is refused: {out}");
    let (code, _, _) = s.ctl(&["capability", "verify", per_call, "--host", "api.openai.com", "--path", "/echo"]);
    assert_eq!(code, 1, "another host is refused");

    // An LLM host is not a tool: no capability header there.
    s.upstream.clear_requests();
    assert_eq!(s.call(&run, &token, CHAT, &chat("gpt-4o")).await.status, 200);
    assert!(s.upstream.last_request().unwrap().headers.get("x-fleetforge-capability").is_none());

    // A client cannot forge the header either: the proxy replaces it.
    s.upstream.clear_requests();
    let out = s
        .clients
        .curl(
            &["-s", "-o", "/dev/null", "-H", "x-fleetforge-capability: forged", "--data-binary", "{}", CHAT],
            &[("HTTPS_PROXY", &s.proxy.proxy_url(&run, &token)), ("CURL_CA_BUNDLE", s.proxy.bundle.to_str().unwrap())],
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0);
    assert!(s.upstream.last_request().unwrap().headers.get("x-fleetforge-capability").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_attenuation_narrows_a_token_for_a_sub_agent() {
    let s = stack().await;
    let (run, token, _) = s.create_run(grants());
    let (code, narrowed, err) =
        s.ctl(&["capability", "attenuate", &token, "--path", "/v1/chat/completions", "--ttl", "10m"]);
    assert_eq!(code, 0, "{err}");
    let narrowed = narrowed.trim();
    assert_eq!(s.call(&run, narrowed, CHAT, &chat("gpt-4o")).await.status, 200);
    let other = s.call(&run, narrowed, "https://tools.example/echo", &json!({})).await;
    assert_eq!(other.status, 403, "narrower than the run token: {}", other.body);
    assert_eq!(s.call(&run, &token, "https://tools.example/echo", &json!({})).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_within_five_seconds_and_stays_revoked() {
    let s = stack().await;
    let (run, token, token_id) = s.create_run(grants());
    assert_eq!(s.call(&run, &token, CHAT, &chat("gpt-4o")).await.status, 200);
    let (code, out, err) = s.ctl(&["capability", "revoke", "--run", &run]);
    assert_eq!(code, 0, "{out}{err}");
    let revoked_at = Instant::now();
    loop {
        let a = s.call(&run, &token, CHAT, &chat("gpt-4o")).await;
        if a.status == 407 {
            assert!(a.body["error"]["message"].as_str().unwrap().contains("revoked"), "{}", a.body);
            break;
        }
        assert_eq!(a.status, 200);
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "still allowed 5 s after revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, listed) = s.control.api("GET", "/v1/revocations", &s.control.token, None).unwrap();
    assert!(listed["revocations"].as_array().unwrap().iter().any(|r| r == token_id.as_str()), "{listed}");
    let (_, shown) = s.control.api("GET", &format!("/v1/runs/{run}"), &s.control.token, None).unwrap();
    assert!(shown["revoked_at"].is_string(), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_exports_as_a_verifiable_credential() {
    let s = stack().await;
    let (run, _, token_id) = s.create_run(grants());
    let (status, vc) = s.control.api("GET", &format!("/v1/runs/{run}/export/vc"), &s.control.token, None).unwrap();
    assert_eq!(status, 200, "{vc}");
    assert_eq!(vc["proof"]["cryptosuite"], "eddsa-jcs-2022");
    assert!(vc["issuer"].as_str().unwrap().starts_with("did:key:z6Mk"), "{vc}");
    assert_eq!(vc["credentialSubject"]["revocationIds"][0], token_id.as_str());
    assert_eq!(vc["credentialSubject"]["grants"]["models"][0], "gpt-4o*");
    fleetforge_trust::vc::verify_credential(&vc).unwrap();
    let mut tampered = vc.clone();
    tampered["credentialSubject"]["grants"]["models"][0] = json!("gpt-4p*");
    assert!(fleetforge_trust::vc::verify_credential(&tampered).is_err(), "one changed byte fails the proof");
    // The issuer key is control's capability root, as listed in GET /v1/keys.
    let (_, keys) = s.control.api("GET", "/v1/keys", &s.control.token, None).unwrap();
    assert!(keys["keys"].as_array().unwrap().iter().any(|k| k["did"] == vc["issuer"]), "{keys}");
}

/// Kills a child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_tool_example_accepts_proxied_calls_and_refuses_everything_else() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::fresh(false).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let clients = Clients::locate();
    // The tool: docs/examples/tool_server.py, trusting control's root key as listed in /v1/keys.
    let (_, keys) = control.api("GET", "/v1/keys", &control.token, None).unwrap();
    let root = keys["keys"].as_array().unwrap().iter().find(|k| k["kind"] == "capability-root").unwrap().clone();
    let script = fleetforge_e2e::harness::workspace().join("docs/examples/tool_server.py");
    let mut child = std::process::Command::new(clients.python_bin())
        .arg(&script)
        .arg("127.0.0.1:0")
        .env("ROOT_KEYS", format!("{}={}", root["root_key_id"], root["public_key"].as_str().unwrap()))
        .env("TOOL_HOST", "tool.test")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _tool = Child(child);
    let tool_addr: std::net::SocketAddr =
        serde_json::from_str::<Value>(&line).unwrap()["listen"].as_str().unwrap().parse().unwrap();
    let proxy = ProxyProcess::builder()
        .home(&dir.path().join("proxy-home"))
        .resolve("tool.test", tool_addr)
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        .env("FLEETFORGE_TOOL_HOSTS", "tool.test")
        .start()
        .unwrap();
    let body = json!({"grants": {"hosts": ["tool.test"], "paths": ["/search"]}}).to_string();
    let (_, created) = control.api("POST", "/v1/runs", &control.token, Some(&body)).unwrap();
    let (run, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let url = format!("http://tool.test:{}/search", tool_addr.port());
    let through_proxy = clients
        .curl(&["-d", "{}", &url], &[("http_proxy", &proxy.proxy_url(run, token))])
        .await
        .unwrap()
        .ok()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(through_proxy["run"], run, "the tool verified the per-call capability: {through_proxy}");
    // Straight to the tool: no capability, refused.
    let direct = format!("http://{tool_addr}/search");
    let out = clients.curl(&["-s", "-w", "%{http_code}", "-o", "/dev/null", "-d", "{}", &direct], &[]).await.unwrap();
    assert_eq!(out.stdout, "401");
    // A forged header is refused too.
    let out = clients
        .curl(
            &[
                "-s",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                "-H",
                "x-fleetforge-capability: forged",
                "-d",
                "{}",
                &direct,
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "401");
}
