//! `fleetforge-ctl demo` (Hello Fleet) end to end: every check passes on a fresh home, the run it
//! leaves is served by `fleetforge-control` started there afterwards, and a port in use is a clear
//! error.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use fleetforge_e2e::harness::{ControlProcess, Database, binary};

/// Runs `fleetforge-ctl demo` with only `PATH` and `env`, bounded by `timeout(1)`.
fn demo(env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new("timeout");
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).arg("180").arg(binary("fleetforge-ctl"));
    cmd.arg("demo");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_passes_every_check_and_leaves_the_run_for_control() {
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let (code, out, err) = demo(&[("FLEETFORGE_HOME", home_str)]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("FAILED"), "{out}");
    for check in [
        "LLM call answered",
        "streamed LLM call arrived chunk by chunk",
        "tool verified its per-call capability offline",
        "MCP tools/call answered",
        "MCP call denied by the mcp-tools policy pack",
        "call throttled by the rate SLO, then served",
        "call refused for the run's budget",
        "every call has its receipt at control",
        "run verifies",
        "strict replay served every sealed call, 0 drift",
        "replayed answers are byte for byte the recorded ones",
        "strict replay opened no upstream connection",
        "run exported as a verifiable credential",
        "run exported as an evidence bundle that verifies offline",
        "no receipt holds the agent's API key",
    ] {
        assert!(out.contains(&format!("[ok] {check}")), "check {check:?} missing:\n{out}");
    }
    assert!(out.contains("checks passed"), "{out}");
    let run = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the run line")
        .to_owned();
    assert!(run.starts_with("hello-fleet-"), "{run}");
    assert!(home.path().join("control.db").exists());

    // The run stays: control started on the same home serves it, with its seven receipts.
    let control = ControlProcess::start(&Database::Sqlite, home.path(), None).unwrap();
    let (status, shown) = control.api("GET", &format!("/v1/runs/{run}"), &control.token, None).unwrap();
    assert_eq!(status, 200, "{shown}");
    let receipts = control.receipts(&run, 7).unwrap();
    assert_eq!(receipts.len(), 7);
    let decisions: Vec<String> = receipts
        .iter()
        .map(|r| {
            if r["decision"]["allow"] == true {
                "allow".to_owned()
            } else {
                r["decision"]["error"]["type"].as_str().unwrap_or("?").to_owned()
            }
        })
        .collect();
    assert_eq!(decisions, ["allow", "allow", "allow", "allow", "policy_denied", "allow", "budget_exceeded"]);
    let (status, verified) = control.api("GET", &format!("/v1/runs/{run}/verify"), &control.token, None).unwrap();
    assert_eq!((status, verified["ok"].as_bool()), (200, Some(true)), "{verified}");
}

#[test]
fn demo_with_its_proxy_port_in_use_fails_naming_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let home = tempfile::tempdir().unwrap();
    let (code, out, err) =
        demo(&[("FLEETFORGE_HOME", home.path().to_str().unwrap()), ("FLEETFORGE_PROXY_LISTEN", &addr)]);
    assert_ne!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&addr), "the error names the address: {err}");
}

/// `GET path` with an optional cookie: (status, head, body).
fn get(addr: std::net::SocketAddr, path: &str, cookie: Option<&str>) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), head.to_owned(), body.to_owned())
}

fn token(home: &std::path::Path, role: &str, tenant: &str) -> String {
    let out = Command::new(binary("fleetforge-control"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEETFORGE_HOME", home)
        .args(["token", "create", "--role", role, "--tenant", tenant])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The demo's run in the web view: sign-in by one-time URL, tenancy, and the pages in headless
/// Chromium (runs list, timeline with every receipt, reasons, chart, raw receipt, screenshot).
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_run_in_the_web_view() {
    let home = tempfile::tempdir().unwrap();
    let (code, out, err) = demo(&[("FLEETFORGE_HOME", home.path().to_str().unwrap())]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let run = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let control = ControlProcess::start(&Database::Sqlite, home.path(), None).unwrap();
    let receipts = control.receipts(&run, 7).unwrap();
    let expected: Vec<serde_json::Value> = receipts
        .iter()
        .map(|r| {
            let decision =
                if r["decision"]["allow"] == true { "allow" } else { r["decision"]["error"]["type"].as_str().unwrap() };
            serde_json::json!({"id": r["id"], "decision": decision,
                               "throttled": r["budget"]["throttled_ms"].as_u64().unwrap_or(0) > 0})
        })
        .collect();
    assert_eq!(expected.iter().filter(|e| e["throttled"] == true).count(), 1, "{expected:?}");

    // Sign-in: a login code opens a reader session once; the session sees only its tenant.
    let (status, link) = control.api("POST", "/v1/ui/login-links", &control.token, Some("{}")).unwrap();
    assert_eq!(status, 200, "{link}");
    let login = format!("{}{}&next=/demo", control.url(), link["path"].as_str().unwrap());
    let other = token(home.path(), "reader", "other-tenant");
    let (status, other_link) = control.api("POST", "/v1/ui/login-links", &other, Some("{}")).unwrap();
    assert_eq!(status, 200, "{other_link}");
    let other_path = other_link["path"].as_str().unwrap();
    let (status, head, _) = get(control.addr, other_path, None);
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    assert!(head.to_ascii_lowercase().contains("httponly"), "{head}");
    let (status, _, body) = get(control.addr, "/", Some(&cookie));
    assert_eq!(status, 200);
    assert!(!body.contains(&run), "another tenant's reader sees no demo run");
    assert_eq!(get(control.addr, &format!("/runs/{run}"), Some(&cookie)).0, 404);
    assert_eq!(get(control.addr, &format!("/v1/runs/{run}/receipts"), Some(&cookie)).0, 404);
    assert_eq!(get(control.addr, other_path, None).0, 401, "a login code works once");
    let proxy = token(home.path(), "proxy", "default");
    assert_eq!(control.api("POST", "/v1/ui/login-links", &proxy, Some("{}")).unwrap().0, 403);
    assert_eq!(get(control.addr, "/", Some("fleetforge_session=ffs_made-up")).0, 401);

    // The pages in a real browser.
    let chromium = ["chromium", "chromium-browser"]
        .iter()
        .map(|b| Command::new("sh").args(["-c", &format!("command -v {b}")]).output().unwrap())
        .find(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("Chromium is missing: apt-get install -y chromium (scripts/test-deps installs it)");
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("webview-demo-run.png");
    let out = fleetforge_e2e::Clients::locate()
        .node(
            "browser_webview.cjs",
            &[
                &control.url(),
                &login,
                &run,
                &serde_json::Value::Array(expected).to_string(),
                screenshot.to_str().unwrap(),
            ],
            &[("CHROMIUM", &chromium), ("HOME", home.path().to_str().unwrap())],
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0, "stdout:\n{}\nstderr:\n{}\ncontrol log:\n{}", out.stdout, out.stderr, control.logs());
    let findings = out.json().unwrap();
    assert_eq!(findings["rows"], 7, "{findings}");
    assert!(findings["denied_reason"].as_str().unwrap().contains("delete_repo"), "{findings}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a real screenshot");
}
