//! `fleetforge-ctl up`: control (SQLite unless `DATABASE_URL`) and the proxy in one process, and
//! the lines to paste into an agent's shell.
//!
//! The control token is `FLEETFORGE_CONTROL_TOKEN` when set; otherwise one is generated on first
//! use and kept in `$FLEETFORGE_HOME/control.token` (mode 0600), where `fleetforge-ctl` finds it.
//!
//! The proxy verifies run tokens (as every proxy that knows control does), so `up` gives the run
//! it prints a real one: it creates the run with that id, or, when the run exists from an earlier
//! `up`, issues it a new token (the previous one is revoked). Only with
//! `FLEETFORGE_CAPABILITIES=false` does the URL carry a placeholder password.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use fleetforge_proxy::Running;
use fleetforge_trust::Secret;

use crate::client::{ClientError, ControlClient};

/// The control token for `up`: from the environment, or from (or into) `home/control.token`.
pub fn control_token(home: &Path, from_env: Option<&Secret>) -> std::io::Result<Secret> {
    if let Some(t) = from_env {
        return Ok(t.clone());
    }
    let path = home.join("control.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(Secret::new(t.trim().to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(home)?;
    let token = fleetforge_control::auth::new_token("fft_");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    Ok(Secret::new(token))
}

/// A run token for `run` from control at `control` (see the module docs).
pub async fn run_token(control: std::net::SocketAddr, admin: &Secret, run: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let client = ControlClient::new(&format!("http://{control}"), Some(admin.expose().to_owned()))?;
    let created = client
        .post("/v1/runs", &serde_json::json!({ "id": run, "labels": { "created_by": "fleetforge-ctl up" } }))
        .await;
    let minted = match created {
        Err(ClientError::Status { status: http::StatusCode::CONFLICT, .. }) => client
            .post(&format!("/v1/runs/{run}/token"), &serde_json::json!({}))
            .await
            .with_context(|| format!("issuing a new token for run {run}"))?,
        other => other.with_context(|| format!("creating run {run}"))?,
    };
    minted["token"].as_str().map(str::to_owned).context("control answered without a run token")
}

/// The shell lines an agent needs to use the proxy at `running`, for run `run` with `token`.
/// The variables an agent needs to call through `running` as `run`: proxy URLs (both spellings
/// curl and the SDKs read) and the CA files.
pub fn variables(running: &Running, run: &str, token: &str) -> Vec<(String, String)> {
    let bundle = absolute(running.proxy.ca.bundle_path());
    let ca = absolute(running.proxy.ca.ca_path());
    let url = format!("http://{run}:{token}@{}", running.forward);
    [
        ("HTTPS_PROXY", url.clone()),
        ("HTTP_PROXY", url.clone()),
        ("https_proxy", url.clone()),
        ("http_proxy", url),
        ("SSL_CERT_FILE", bundle.clone()),
        ("REQUESTS_CA_BUNDLE", bundle.clone()),
        ("CURL_CA_BUNDLE", bundle),
        ("NODE_EXTRA_CA_CERTS", ca),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The `export` lines for an agent's shell.
pub fn exports(running: &Running, run: &str, token: &str) -> String {
    let bundle = absolute(running.proxy.ca.bundle_path());
    let ca = absolute(running.proxy.ca.ca_path());
    let forward = running.forward;
    let mut out = String::new();
    // A user name without a password makes requests and undici send no Proxy-Authorization at
    // all, so the URL always carries both.
    out.push_str(&format!("export HTTPS_PROXY=http://{run}:{token}@{forward}\n"));
    out.push_str(&format!("export HTTP_PROXY=http://{run}:{token}@{forward}\n"));
    out.push_str("export https_proxy=$HTTPS_PROXY http_proxy=$HTTP_PROXY\n");
    out.push_str(&format!("export SSL_CERT_FILE={bundle}\n"));
    out.push_str(&format!("export REQUESTS_CA_BUNDLE={bundle}\n"));
    out.push_str(&format!("export CURL_CA_BUNDLE={bundle}\n"));
    out.push_str(&format!("export NODE_EXTRA_CA_CERTS={ca}\n"));
    for (i, addr) in running.sidecars.iter().enumerate() {
        out.push_str(&format!("# sidecar {i}: base URL http://{addr}\n"));
    }
    out
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned()).display().to_string()
}

/// Prints the banner and the export lines.
pub fn print_banner(
    out: &mut impl Write,
    running: &Running,
    control: &fleetforge_control::Running,
    home: &Path,
    run: &str,
    token: &str,
    login: &str,
) -> std::io::Result<()> {
    writeln!(out, "FleetForge is up.")?;
    writeln!(out, "  forward proxy  {}", running.forward)?;
    writeln!(out, "  admin          http://{}  (/healthz /readyz /metrics /ca.pem)", running.admin)?;
    writeln!(
        out,
        "  control        http://{}  ({} database; token in {})",
        control.addr,
        control.backend.name(),
        absolute(&home.join("control.token"))
    )?;
    writeln!(out, "  web view       {login}  (one-time login URL; fleetforge-ctl login prints another)")?;
    writeln!(out)?;
    writeln!(out, "Paste into the agent's shell (run id {run:?}):")?;
    write!(out, "{}", exports(running, run, token))?;
    writeln!(out)?;
    writeln!(out, "Then: fleetforge-ctl receipts {run}   fleetforge-ctl verify {run}")?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()
}
