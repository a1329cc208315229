//! The binaries' command-line contract: `--help`, `--version`, `--config`, `--check-config`, exit
//! 64 with the key path on a bad configuration, and `fleetforge-ctl up`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fleetforge_e2e::harness::{binary, workspace};
use fleetforge_e2e::{Clients, Upstream};

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary(bin));
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).args(args);
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
fn every_binary_has_help_and_version() {
    for bin in ["fleetforge-proxy", "fleetforge-control", "fleetforge-ctl"] {
        let (code, out, _) = run(bin, &["--help"], &[]);
        assert_eq!(code, 0, "{bin} --help");
        assert!(
            out.contains("--config") && out.contains("--check-config"),
            "{bin} --help lists the contract flags:\n{out}"
        );
        let (code, out, _) = run(bin, &["--version"], &[]);
        assert_eq!(code, 0);
        assert!(out.starts_with(bin) && out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    }
    let (_, help, _) = run("fleetforge-proxy", &["--help"], &[]);
    for needle in ["HTTPS_PROXY", "FLEETFORGE_HOME", "--sidecar", "--resolve", "Exit status"] {
        assert!(help.contains(needle), "fleetforge-proxy --help explains {needle}");
    }
}

#[test]
fn example_configs_check_and_bad_ones_exit_64_naming_the_key() {
    let configs = workspace().join("configs");
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        // prices.toml is the price list, not a config.
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("prices.toml") {
            for bin in ["fleetforge-proxy", "fleetforge-ctl", "fleetforge-control"] {
                let (code, out, err) = run(bin, &["--config", path.to_str().unwrap(), "--check-config"], &[]);
                assert_eq!(code, 0, "{bin} {}: {out}{err}", path.display());
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, "[openai.\"gpt-4o\"]\ninput = -2.5\noutput = 10.0\n").unwrap();
    let (code, _, err) =
        run("fleetforge-proxy", &["--check-config"], &[("FLEETFORGE_PRICES", prices.to_str().unwrap())]);
    assert_eq!(code, 64, "a bad price list is a bad config: {err}");
    assert!(err.contains("openai.\"gpt-4o\""), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[proxy.limits]\nmax_body = \"huge\"\n").unwrap();
    let (code, _, err) = run("fleetforge-proxy", &["--config", bad.to_str().unwrap(), "--check-config"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("proxy.limits.max_body") && err.contains("huge"), "{err}");

    std::fs::write(&bad, "[proxy]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let (code, _, err) = run("fleetforge-proxy", &["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("listen_addr"), "{err}");
    let (code, _, err) = run("fleetforge-ctl", &["--config", bad.to_str().unwrap(), "--check-config"], &[]);
    assert_eq!(code, 64, "{err}");

    let (code, _, err) = run("fleetforge-proxy", &["--check-config"], &[("FLEETFORGE_RESOLVE", "api.openai.com")]);
    assert_eq!(code, 64);
    assert!(err.contains("proxy.egress.resolve") && err.contains("FLEETFORGE_RESOLVE"), "{err}");
    let (code, _, err) = run("fleetforge-proxy", &["--config", "/nonexistent/fleetforge.toml"], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/fleetforge.toml"), "{err}");
}

#[test]
fn a_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let home = tempfile::tempdir().unwrap();
    let (code, _, err) = run(
        "fleetforge-proxy",
        &["--listen", &addr, "--admin-listen", "127.0.0.1:0", "--home", home.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr) && err.contains("proxy.listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_up_prints_working_exports_and_stops_cleanly() {
    let plain = Upstream::builder().plain().start().await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("fleetforge-ctl"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEETFORGE_HOME", home.path())
        .env("FLEETFORGE_RESOLVE", format!("plain.internal.test={}", plain.addr()))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--run",
            "hello-fleet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut exports = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(export) = line.strip_prefix("export ") {
            exports.push(export.to_owned());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let http_proxy = exports.iter().find_map(|e| e.strip_prefix("HTTP_PROXY=")).expect("HTTP_PROXY export").to_owned();
    let bundle =
        exports.iter().find_map(|e| e.strip_prefix("SSL_CERT_FILE=")).expect("SSL_CERT_FILE export").to_owned();
    assert!(std::path::Path::new(&bundle).is_absolute() && std::path::Path::new(&bundle).exists(), "{bundle}");
    assert!(
        http_proxy.starts_with("http://hello-fleet:"),
        "run id and a token for clients that need both: {http_proxy}"
    );

    // The printed proxy URL works for a real client.
    let clients = Clients::locate();
    let out = clients
        .python("py_requests.py", &["GET", "http://plain.internal.test/echo"], &[("HTTP_PROXY", &http_proxy)])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.json().unwrap()["headers"]["x-fleetforge-run"], "hello-fleet");
    // The token in it is real: the proxy verifies run tokens, and a made-up one is refused.
    let (scheme_user, host) = http_proxy.rsplit_once('@').unwrap();
    let (user, _token) = scheme_user.rsplit_once(':').unwrap();
    let forged = format!("{user}:made-up@{host}");
    let out = clients
        .curl(
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://plain.internal.test/echo"],
            &[("http_proxy", &forged)],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "407", "{forged}");

    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "fleetforge-ctl up did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// `fleetforge-ctl health` (the containers' health check): 0 and `ok` when a real proxy's admin
/// `/healthz` answers; 1 with the status when the URL answers an error, with the reason when
/// nothing listens, and on a URL that is not http(s).
#[test]
fn ctl_health_checks_an_endpoint_for_containers() {
    let proxy = fleetforge_e2e::ProxyProcess::builder().start().unwrap();
    let url = format!("http://{}/healthz", proxy.admin);
    let (code, out, err) = run("fleetforge-ctl", &["health", &url], &[]);
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");
    let (code, _, err) = run("fleetforge-ctl", &["health", &format!("http://{}/no-such-page", proxy.admin)], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("answered 404"), "names the status: {err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, _, err) = run("fleetforge-ctl", &["health", "--timeout", "2", &format!("http://{closed}/healthz")], &[]);
    assert_eq!(code, 1);
    assert!(err.contains(&closed.to_string()), "names the URL: {err}");
    let (code, _, err) = run("fleetforge-ctl", &["health", "ftp://example.test/"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not an http(s) URL"), "{err}");
}
