//! The sidecar listener (Envoy-style): agents point their SDK's base URL at it; no proxy
//! variables, no CA to trust. Same pipeline as the forward proxy.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleetforge_e2e::upstream::{CHUNKS_HEADER, DELAY_HEADER, completion_text};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_and_httpx_through_a_sidecar_with_header_identity_and_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let up = Upstream::builder().tls(&ca, &["api.openai.com"]).start().await.unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("api.openai.com", up.addr())
        .upstream_ca(ca.pem_path())
        .sidecar("https://api.openai.com")
        .start()
        .unwrap();
    let clients = Clients::locate();
    let sidecar = proxy.sidecars[0];
    let base = format!("http://{sidecar}/v1");
    let env = [("OPENAI_BASE_URL", base.as_str()), ("OPENAI_API_KEY", "sk-sidecar-key")];

    let out = clients
        .python("py_openai.py", &["--header", "x-fleetforge-run=run-side", "--header", "x-fleetforge-step=plan"], &env)
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.json().unwrap()["content"], completion_text(5));
    let seen = up.last_request().unwrap();
    assert_eq!(seen.uri.path(), "/v1/chat/completions");
    assert_eq!(seen.headers["host"], "api.openai.com", "Host is the upstream's, not the sidecar's");
    assert_eq!(seen.sni.as_deref(), Some("api.openai.com"));
    assert!(!seen.headers.contains_key("x-fleetforge-run") && !seen.headers.contains_key("x-fleetforge-step"));
    assert_eq!(seen.headers["authorization"], "Bearer sk-sidecar-key");

    let out = clients
        .python(
            "py_openai.py",
            &["--stream", "--header", &format!("{DELAY_HEADER}=150"), "--header", &format!("{CHUNKS_HEADER}=4")],
            &env,
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let lines = out.json_lines().unwrap();
    let times: Vec<f64> = lines
        .iter()
        .filter(|l| l.get("t_ms").is_some() && l["content"].as_str().is_some_and(|c| c.starts_with("word")))
        .map(|l| l["t_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(times.len(), 4, "{lines:?}");
    assert!(times[3] - times[0] >= 350.0, "chunks arrived together: {times:?}");

    // A plain client sees FleetForge's headers; without identity the listener default applies.
    let out =
        clients.python("py_httpx.py", &["GET", &format!("http://{sidecar}/echo")], &[]).await.unwrap().ok().unwrap();
    let v = out.json().unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["headers"]["x-fleetforge-run"], "anonymous");
    assert_eq!(v["headers"]["x-fleetforge-receipt"].as_str().map(str::len), Some(36));
    let echo: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(v["body_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(echo["sni"], "api.openai.com");
    assert!(proxy.metric("fleetforge_requests_total{listener=\"sidecar\",status=\"2xx\"}").unwrap() >= 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_path_prefix_and_default_run_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let up = Upstream::builder().tls(&ca, &["gateway.internal.test"]).start().await.unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        "[[proxy.sidecar]]\nlisten = \"127.0.0.1:0\"\nupstream = \"https://gateway.internal.test/echo/\"\ndefault_run = \"run-from-config\"\n",
    )
    .unwrap();
    let proxy = ProxyProcess::builder()
        .resolve("gateway.internal.test", up.addr())
        .upstream_ca(ca.pem_path())
        .arg("--config")
        .arg(config.display().to_string())
        .start()
        .unwrap();
    let clients = Clients::locate();
    let out = clients
        .python("py_requests.py", &["GET", &format!("http://{}/v1/models?x=1", proxy.sidecars[0])], &[])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let v = out.json().unwrap();
    assert_eq!(v["headers"]["x-fleetforge-run"], "run-from-config");
    let seen = up.last_request().unwrap();
    assert_eq!(
        seen.uri.path_and_query().unwrap().as_str(),
        "/echo/v1/models?x=1",
        "the upstream's path prefix is prepended"
    );
}
