//! Policy packs end to end: Wasm, Rego and Cedar packs decide calls through the real proxy, with
//! denial receipts, obligations, run-scoped information flow, fuel, digests and hot reload; and
//! the `fleetforge-ctl policy` commands.
//!
//! Real control (SQLite), real proxy, real curl; the upstream is the in-process fake.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetforge_e2e::harness::{ControlProcess, Database, binary, workspace};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use fleetforge_trust::canonical::{hex, sha256};
use serde_json::{Value, json};

const HOSTS: [&str; 4] = ["api.openai.com", "tools.example", "paste.example", "other.example"];
const CHAT: &str = "https://api.openai.com/v1/chat/completions";

struct Stack {
    dir: tempfile::TempDir,
    /// The upstream's CA, for clients that talk TLS to the upstream through a tunnel.
    upstream_ca: PathBuf,
    upstream: Upstream,
    control: ControlProcess,
    proxy: ProxyProcess,
    clients: Clients,
    calls: std::sync::atomic::AtomicUsize,
}

/// One call's outcome as the client saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

/// Writes a pack (`pack.toml` + module) into `dir/name` and returns its directory.
fn write_pack(dir: &Path, name: &str, kind: &str, module: (&str, &[u8]), config: &str) -> PathBuf {
    let pack = dir.join(name);
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(pack.join(module.0), module.1).unwrap();
    let manifest = format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nkind = \"{kind}\"\nmodule = \"{}\"\nsha256 = \"{}\"\nsource = \"tests/policy.rs\"\nsigner = \"e2e\"\n{config}",
        module.0,
        hex(&sha256(module.1)),
    );
    std::fs::write(pack.join("pack.toml"), manifest).unwrap();
    pack
}

/// The example information-flow pack: `read_secret` taints the run, `paste.example` is outbound.
fn info_flow_pack(dir: &Path) -> PathBuf {
    write_pack(
        dir,
        "info-flow",
        "wasm",
        ("info-flow.wasm", &example_module("info-flow")),
        "[config]\nsecret_reading_tools = [\"read_secret\"]\noutbound_hosts = [\"paste.example\"]\n",
    )
}

fn example_module(name: &str) -> Vec<u8> {
    std::fs::read(workspace().join(format!("policies/packs/{name}/{name}.wasm"))).unwrap()
}

/// The pack's id as receipts record it, up to the config digest.
fn pack_id_prefix(pack: &Path) -> String {
    let manifest: toml_lite::Manifest = toml_lite::read(&pack.join("pack.toml"));
    format!("{}@{}/sha256:{}", manifest.name, manifest.version, manifest.sha256)
}

/// Just enough TOML reading for the manifests this test writes.
mod toml_lite {
    pub struct Manifest {
        pub name: String,
        pub version: String,
        pub sha256: String,
    }
    pub fn read(path: &std::path::Path) -> Manifest {
        let text = std::fs::read_to_string(path).unwrap();
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = \"")).map(|v| v.trim_end_matches('"').to_owned()))
                .unwrap()
        };
        Manifest { name: get("name"), version: get("version"), sha256: get("sha256") }
    }
}

async fn stack(packs: &[&Path], config: Option<&str>) -> Stack {
    stack_intercepting(packs, config, &HOSTS).await
}

async fn stack_intercepting(packs: &[&Path], config: Option<&str>, intercept: &[&str]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &HOSTS).record(true).start().await.unwrap();
    let db = Database::fresh(false).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let mut b = ProxyProcess::builder()
        .home(&dir.path().join("proxy-home"))
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        // These tests name runs freely; run tokens are checked in capabilities.rs.
        .env("FLEETFORGE_CAPABILITIES", "false")
        .env("FLEETFORGE_INTERCEPT", intercept.join(","))
        .env("FLEETFORGE_POLICY", packs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","));
    if let Some(config) = config {
        let path = dir.path().join("fleetforge.toml");
        std::fs::write(&path, config).unwrap();
        b = b.arg("--config").arg(path.display().to_string());
    }
    for h in HOSTS {
        b = b.resolve(h, upstream.addr());
    }
    let proxy = b.start().unwrap();
    let upstream_ca = ca.pem_path().to_owned();
    Stack { dir, upstream_ca, upstream, control, proxy, clients: Clients::locate(), calls: Default::default() }
}

impl Stack {
    /// POSTs `body` to `url` through the proxy as `run`.
    async fn call(&self, run: &str, url: &str, body: &Value) -> Answer {
        self.call_trusting(run, url, body, &self.proxy.bundle.clone()).await
    }

    /// [`Stack::call`], trusting the CAs in `ca_bundle`.
    async fn call_trusting(&self, run: &str, url: &str, body: &Value, ca_bundle: &Path) -> Answer {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.dir.path().join(format!("out-{n}"));
        let env =
            [("HTTPS_PROXY", self.proxy.proxy_url(run, "t")), ("CURL_CA_BUNDLE", ca_bundle.display().to_string())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out_path = out.to_str().unwrap();
        let body = body.to_string();
        let args = [
            "-s",
            "-o",
            out_path,
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
            url,
        ];
        let output = self.clients.curl(&args, &env).await.unwrap();
        let status = output.stdout.trim().parse().unwrap_or(0);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
    }

    /// Polls control until `run` has at least `n` receipts.
    fn receipts(&self, run: &str, n: usize) -> Vec<Value> {
        self.control.receipts(run, n).unwrap()
    }

    fn verifies(&self, run: &str) {
        let (_, verify) =
            self.control.api("GET", &format!("/v1/runs/{run}/verify"), &self.control.token, None).unwrap();
        assert_eq!(verify["ok"], true, "{verify}");
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 10000, "messages": [{"role": "user", "content": "hi"}]})
}

fn mcp_call(tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {"path": "/x"}}})
}

/// Checks an allowed and a denied call of one pack: the denial is a 403 `policy_denied` with the
/// pack's reason, nothing reaches the upstream, and both receipts name the pack and verify.
async fn allows_and_denies(s: &Stack, pack: &Path, allowed: (&str, Value), denied: (&str, Value), reason: &str) {
    let run = "policy-run";
    let ok = s.call(run, allowed.0, &allowed.1).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    s.upstream.clear_requests();
    let no = s.call(run, denied.0, &denied.1).await;
    assert_eq!(no.status, 403, "{}", no.body);
    assert_eq!(no.body["error"]["type"], "policy_denied", "{}", no.body);
    let reasons = no.body["error"]["reasons"].to_string();
    assert!(reasons.contains(reason), "reasons {reasons} should mention {reason:?}");
    assert!(s.upstream.requests().is_empty(), "a denied call reaches no upstream");

    let receipts = s.receipts(run, 2);
    let id = pack_id_prefix(pack);
    for r in &receipts {
        let packs = r["decision"]["policy_packs"].to_string();
        assert!(packs.contains(&id), "receipt {r} should name pack {id}");
    }
    assert_eq!(receipts[0]["decision"]["allow"], true);
    assert_eq!(receipts[1]["decision"]["allow"], false);
    assert_eq!(receipts[1]["decision"]["error"]["type"], "policy_denied");
    assert!(receipts[1]["decision"]["reasons"].to_string().contains(reason), "{}", receipts[1]);
    s.verifies(run);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasm_pack_allows_denies_and_its_obligations_change_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let allowlist = write_pack(
        dir.path(),
        "allowlist",
        "wasm",
        ("allowlist.wasm", &example_module("allowlist")),
        "[config]\nhosts = [\"api.openai.com\", \"tools.example\"]\nmodels = [\"gpt-4o*\"]\n",
    );
    let limits = write_pack(
        dir.path(),
        "model-limits",
        "wasm",
        ("model-limits.wasm", &example_module("model-limits")),
        "[config]\ndefault_max_tokens = 2048\n[config.models.\"gpt-4o*\"]\nmax_tokens = 512\n",
    );
    let s = stack(&[&allowlist, &limits], None).await;
    allows_and_denies(
        &s,
        &allowlist,
        (CHAT, chat("gpt-4o-mini")),
        ("https://other.example/echo", json!({})),
        "other.example",
    )
    .await;
    // The model-limits pack capped max_tokens 10000 → 512 on the allowed call.
    s.upstream.clear_requests();
    assert_eq!(s.call("cap-run", CHAT, &chat("gpt-4o")).await.status, 200);
    let sent: Value = serde_json::from_slice(&s.upstream.last_request().unwrap().body).unwrap();
    assert_eq!(sent["max_tokens"], 512, "the upstream saw the capped request: {sent}");
    let receipt = &s.receipts("cap-run", 1)[0];
    assert!(receipt["decision"]["reasons"].to_string().contains("512"), "the cap is explained: {receipt}");
    // The request digest in the receipt is of the body as sent (capped), not as the agent wrote it.
    let sent_digest = hex(&sha256(&s.upstream.requests()[0].body));
    assert_eq!(receipt["seal"]["request_digest"], sent_digest.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rego_pack_allows_and_denies() {
    let dir = tempfile::tempdir().unwrap();
    let rego = br#"package fleetforge

import rego.v1

default allow := false

allow if input.request.host in data.config.hosts

reasons contains msg if {
	not input.request.host in data.config.hosts
	msg := sprintf("rego: host %s is not allowed", [input.request.host])
}
"#;
    let pack =
        write_pack(dir.path(), "rego-hosts", "rego", ("policy.rego", rego), "[config]\nhosts = [\"api.openai.com\"]\n");
    let s = stack(&[&pack], None).await;
    allows_and_denies(
        &s,
        &pack,
        (CHAT, chat("gpt-4o")),
        ("https://tools.example/echo", json!({})),
        "rego: host tools.example is not allowed",
    )
    .await;
}

const CEDAR: &str = r#"
@id("openai-chat")
permit(principal, action == FleetForge::Action::"llm:chat", resource == FleetForge::Host::"api.openai.com");

@id("no-preview")
@reason("preview models are not allowed")
forbid(principal, action == FleetForge::Action::"llm:chat", resource)
when { context has llm && context.llm.model like "*-preview" };
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_cedar_pack_allows_and_denies() {
    let dir = tempfile::tempdir().unwrap();
    let pack = write_pack(dir.path(), "cedar-llm", "cedar", ("policy.cedar", CEDAR.as_bytes()), "");
    let s = stack(&[&pack], None).await;
    allows_and_denies(
        &s,
        &pack,
        (CHAT, chat("gpt-4o")),
        (CHAT, chat("gpt-5-preview")),
        "preview models are not allowed",
    )
    .await;
    // Nothing permits a plain HTTP call to another host: denied too.
    let other = s.call("policy-run", "https://tools.example/echo", &json!({})).await;
    assert_eq!(other.status, 403, "{}", other.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_information_flow_pack_blocks_outbound_hosts_only_after_a_secret_read() {
    let dir = tempfile::tempdir().unwrap();
    let pack = info_flow_pack(dir.path());
    let s = stack(&[&pack], None).await;
    let paste = "https://paste.example/echo";
    let tools = "https://tools.example/echo";
    assert_eq!(s.call("flow", paste, &json!({"note": "before"})).await.status, 200, "outbound is fine before");
    assert_eq!(s.call("flow", tools, &mcp_call("list_files")).await.status, 200);
    assert_eq!(s.call("flow", paste, &json!({"note": "still"})).await.status, 200, "a harmless tool taints nothing");
    assert_eq!(s.call("flow", tools, &mcp_call("read_secret")).await.status, 200, "the secret read itself is allowed");
    s.upstream.clear_requests();
    let leak = s.call("flow", paste, &json!({"note": "exfiltrate"})).await;
    assert_eq!(leak.status, 403, "{}", leak.body);
    assert!(leak.body["error"]["reasons"].to_string().contains("read_secret"), "{}", leak.body);
    assert!(s.upstream.requests().is_empty());
    // Run-scoped: another run may still reach the outbound host; this one may still use tools.
    assert_eq!(s.call("other-run", paste, &json!({})).await.status, 200);
    assert_eq!(s.call("flow", tools, &mcp_call("list_files")).await.status, 200);
    let receipts = s.receipts("flow", 6);
    assert_eq!(receipts.iter().filter(|r| r["decision"]["allow"] == false).count(), 1);
    s.verifies("flow");
}

#[tokio::test(flavor = "multi_thread")]
async fn packs_decide_tunnels_they_cannot_see_into_by_their_destination() {
    let dir = tempfile::tempdir().unwrap();
    let pack = info_flow_pack(dir.path());
    // paste.example is not intercepted: its calls are CONNECT tunnels the client's TLS goes through.
    let s = stack_intercepting(&[&pack], None, &["api.openai.com", "tools.example"]).await;
    let paste = "https://paste.example/echo";
    let before = s.call_trusting("tunnel-run", paste, &json!({}), &s.upstream_ca).await;
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(s.call("tunnel-run", "https://tools.example/echo", &mcp_call("read_secret")).await.status, 200);
    let after = s.call_trusting("tunnel-run", paste, &json!({}), &s.upstream_ca).await;
    assert_ne!(after.status, 200, "the tunnel is refused after the secret read: {}", after.body);
    let receipts = s.receipts("tunnel-run", 3);
    let refused = receipts.iter().find(|r| r["decision"]["error"]["type"] == "policy_denied").unwrap();
    assert_eq!(refused["upstream"]["method"], "CONNECT", "{refused}");
    assert_eq!(refused["decision"]["error"]["type"], "policy_denied", "{refused}");
    assert!(refused["decision"]["reasons"].to_string().contains("read_secret"), "{refused}");
    assert!(refused["decision"]["policy_packs"].to_string().contains(&pack_id_prefix(&pack)), "{refused}");
}

/// A module that loops forever in `evaluate`.
const LOOP_WAT: &str = r#"(module
  (memory (export "memory") 2)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "evaluate") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_wasm_pack_is_stopped_by_fuel_and_the_call_denied() {
    let dir = tempfile::tempdir().unwrap();
    let module = wat::parse_str(LOOP_WAT).unwrap();
    let pack = write_pack(dir.path(), "looper", "wasm", ("looper.wasm", &module), "");
    let s = stack(&[&pack], Some("[proxy.policy]\nfuel = 2000000\ntimeout = \"2s\"\n")).await;
    let started = Instant::now();
    let a = s.call("loop-run", CHAT, &chat("gpt-4o")).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let reasons = a.body["error"]["reasons"].to_string();
    assert!(reasons.contains("ran out of fuel"), "{reasons}");
    assert!(started.elapsed() < Duration::from_secs(2), "fuel stopped it, not the deadline");
    assert!(s.upstream.requests().is_empty());
    assert!(s.proxy.logs().contains("ERROR"), "a failing pack logs an ERROR");
    // The proxy keeps serving (and keeps failing closed).
    assert_eq!(s.call("loop-run", CHAT, &chat("gpt-4o")).await.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_pack_refuses_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let pack = write_pack(dir.path(), "allowlist", "wasm", ("allowlist.wasm", &example_module("allowlist")), "");
    let mut module = std::fs::read(pack.join("allowlist.wasm")).unwrap();
    let last = module.len() - 1;
    module[last] ^= 1;
    std::fs::write(pack.join("allowlist.wasm"), &module).unwrap();
    let out = std::process::Command::new(binary("fleetforge-proxy"))
        .env("FLEETFORGE_HOME", dir.path().join("home"))
        .env("FLEETFORGE_POLICY", &pack)
        .env("FLEETFORGE_PROXY_LISTEN", "127.0.0.1:0")
        .env("FLEETFORGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("FLEETFORGE_RECEIPTS", "false")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the proxy must not start: {stderr}");
    assert!(stderr.contains("its manifest says"), "{stderr}");
    let lint =
        std::process::Command::new(binary("fleetforge-ctl")).args(["policy", "lint"]).arg(&pack).output().unwrap();
    assert_eq!(lint.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&lint.stdout).contains("ERROR"));
}

fn rego_hosts(hosts: &[&str]) -> Vec<u8> {
    let list = hosts.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "package fleetforge\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.request.host in {{{list}}}\n\nreasons contains \"not on the reloaded list\" if not allow\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_switches_decisions_without_a_restart_or_a_dropped_call() {
    let dir = tempfile::tempdir().unwrap();
    let pack = write_pack(dir.path(), "hosts", "rego", ("policy.rego", &rego_hosts(&["api.openai.com"])), "");
    let s = stack(&[&pack], Some("[proxy.policy]\nreload_interval = \"200ms\"\n")).await;
    let tools = "https://tools.example/echo";
    assert_eq!(s.call("reload", tools, &json!({})).await.status, 403);
    let pid = s.proxy.pid();

    // Calls keep flowing while the pack changes under them: none fails for any other reason.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = std::sync::Arc::new(s);
    let background = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(s.call("steady", CHAT, &chat("gpt-4o")).await.status);
            }
            statuses
        })
    };
    write_pack(dir.path(), "hosts", "rego", ("policy.rego", &rego_hosts(&["api.openai.com", "tools.example"])), "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.call("reload", tools, &json!({})).await.status != 200 {
        assert!(Instant::now() < deadline, "the new pack was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.proxy.pid(), pid, "no restart");

    // A broken version does not load: the previous one stays in force, with an ERROR.
    std::fs::write(pack.join("policy.rego"), b"package fleetforge\nallow if {").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(s.call("reload", tools, &json!({})).await.status, 200, "still the previous version");
    assert!(s.proxy.logs().contains("keeping the previous version"), "{}", s.proxy.logs());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = background.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|s| *s == 200), "calls during reloads: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_packs() {
    let dir = tempfile::tempdir().unwrap();
    let pack = write_pack(dir.path(), "hosts", "rego", ("policy.rego", &rego_hosts(&["api.openai.com"])), "");
    let s = stack(&[&pack], Some("[proxy.policy]\nreload_interval = \"0s\"\n")).await;
    let tools = "https://tools.example/echo";
    write_pack(dir.path(), "hosts", "rego", ("policy.rego", &rego_hosts(&["tools.example"])), "");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.call("hup", tools, &json!({})).await.status, 403, "no polling: the old pack is in force");
    let killed = std::process::Command::new("kill").args(["-HUP", &s.proxy.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.call("hup", tools, &json!({})).await.status != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(binary("fleetforge-ctl")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_policy_cli_inspects_tests_and_lints_packs() {
    let dir = tempfile::tempdir().unwrap();
    let pack = write_pack(dir.path(), "cedar-llm", "cedar", ("policy.cedar", CEDAR.as_bytes()), "");
    let p = pack.to_str().unwrap();

    let (code, out, err) = ctl(&["policy", "inspect", p]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cedar") && out.contains(&hex(&sha256(CEDAR.as_bytes()))), "{out}");
    assert!(out.contains("matches pack.toml"), "{out}");

    let input = |model: &str| {
        json!({"version": 1, "time": "2026-11-27T00:00:00.000Z",
               "run": {"id": "r", "agent": "a", "step": 1},
               "request": {"method": "POST", "scheme": "https", "host": "api.openai.com", "port": 443,
                           "path": "/v1/chat/completions", "query": "", "headers": {}},
               "llm": {"provider": "openai", "model": model, "max_tokens": null, "stream": false, "messages": 1, "tools": []},
               "state": {"calls": 0, "tokens": 0, "cost_micro_usd": 0, "hosts": [], "tools": []}})
    };
    let file = dir.path().join("in.json");
    std::fs::write(&file, input("gpt-5-preview").to_string()).unwrap();
    let (code, out, err) = ctl(&["policy", "test", p, "--input", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let verdict: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verdict["allow"], false, "{out}");
    assert_eq!(verdict["reasons"][0], "preview models are not allowed");

    let cases = dir.path().join("cases");
    std::fs::create_dir(&cases).unwrap();
    std::fs::write(cases.join("ok.input.json"), input("gpt-4o").to_string()).unwrap();
    std::fs::write(cases.join("ok.expected.json"), r#"{"allow": true}"#).unwrap();
    std::fs::write(cases.join("preview.input.json"), input("x-preview").to_string()).unwrap();
    std::fs::write(
        cases.join("preview.expected.json"),
        r#"{"allow": false, "reasons": ["preview models are not allowed"]}"#,
    )
    .unwrap();
    let (code, out, _) = ctl(&["policy", "test", p, "--cases", cases.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    std::fs::write(cases.join("ok.expected.json"), r#"{"allow": false}"#).unwrap();
    let (code, out, _) = ctl(&["policy", "test", p, "--cases", cases.to_str().unwrap()]);
    assert_eq!(code, 1, "a mismatch fails: {out}");
    assert!(out.contains("FAIL  ok"), "{out}");

    let (code, out, _) = ctl(&["policy", "lint", p]);
    assert_eq!(code, 0, "{out}");
    let bad = write_pack(
        dir.path(),
        "cedar-bad",
        "cedar",
        ("policy.cedar", b"permit(principal, action, resource) when { context.nonsense == 1 };"),
        "",
    );
    let (code, out, _) = ctl(&["policy", "lint", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("WARN"), "{out}");
}

#[test]
fn the_example_packs_lint_clean_and_the_cedar_cases_pass() {
    let root = workspace();
    let mut packs: Vec<String> = ["allowlist", "model-limits", "mcp-tools", "info-flow"]
        .iter()
        .map(|p| root.join("policies/packs").join(p).display().to_string())
        .collect();
    packs.push(root.join("policies/examples/rego").display().to_string());
    packs.push(root.join("policies/examples/cedar").display().to_string());
    let mut args = vec!["policy", "lint"];
    args.extend(packs.iter().map(String::as_str));
    let (code, out, err) = ctl(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 6, "{out}");
    let cedar = root.join("policies/examples/cedar");
    let cases = root.join("policies/examples/cases/cedar");
    let (code, out, err) = ctl(&["policy", "test", cedar.to_str().unwrap(), "--cases", cases.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 passed, 0 failed"), "{out}");
}

/// The committed `.wasm` files are what their sources build to (when the pinned toolchain has the
/// wasm32 target; `.ci/run` installs it, so CI never skips this).
#[test]
fn the_committed_example_modules_are_reproducible() {
    let policies = workspace().join("policies");
    let installed = std::process::Command::new("rustup")
        .current_dir(&policies)
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-unknown-unknown"))
        .unwrap_or(false);
    if !installed {
        eprintln!("skipped: the wasm32-unknown-unknown target is not installed for policies/rust-toolchain.toml");
        return;
    }
    let out = std::process::Command::new(policies.join("build.sh"))
        .arg("--check")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "policies/build.sh --check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
