//! Graceful shutdown: SIGTERM stops new connections, lets a stream in flight finish, then exits 0.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fleetforge_e2e::upstream::{CHUNKS_HEADER, DELAY_HEADER, completion_text};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_stream_in_flight_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let up = Upstream::builder().tls(&ca, &["api.openai.com"]).start().await.unwrap();
    let mut proxy = ProxyProcess::builder()
        .resolve("api.openai.com", up.addr())
        .upstream_ca(ca.pem_path())
        .sidecar("https://api.openai.com")
        .start()
        .unwrap();
    let clients = Clients::locate();
    let base = format!("http://{}/v1", proxy.sidecars[0]);
    let stream = {
        let clients = clients.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let env = [("OPENAI_BASE_URL", base.as_str()), ("OPENAI_API_KEY", "sk-x")];
            clients
                .python(
                    "py_openai.py",
                    &[
                        "--stream",
                        "--header",
                        &format!("{DELAY_HEADER}=300"),
                        "--header",
                        &format!("{CHUNKS_HEADER}=5"),
                    ],
                    &env,
                )
                .await
        })
    };
    // Wait until the upstream has the request, then ask the proxy to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while up.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "stream never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sidecar = proxy.sidecars[0];
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.terminate(Duration::from_secs(20));
        (status, proxy)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(std::net::TcpStream::connect(sidecar).is_err(), "new connections are refused while draining");
    let out = stream.await.unwrap().unwrap().ok().unwrap();
    let done = out.json_lines().unwrap().pop().unwrap();
    assert_eq!(done["content"], completion_text(5), "the stream in flight finished");
    let (status, proxy) = status.await.unwrap();
    let status = status.unwrap();
    assert!(status.success(), "exit status after drain: {status}; log:\n{}", proxy.logs());
}
