//! `fleetforge-ctl up`: control (SQLite unless `DATABASE_URL`) and the proxy in one process, and
//! the lines to paste into an agent's shell.
//!
//! The control token is `FLEETFORGE_CONTROL_TOKEN` when set; otherwise one is generated on first
//! use and kept in `$FLEETFORGE_HOME/control.token` (mode 0600), where `fleetforge-ctl` finds it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use fleetforge_proxy::Running;
use fleetforge_trust::Secret;

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

/// The shell lines an agent needs to use the proxy at `running`, for a run named `run`.
pub fn exports(running: &Running, run: &str) -> String {
    let bundle = absolute(running.proxy.ca.bundle_path());
    let ca = absolute(running.proxy.ca.ca_path());
    let forward = running.forward;
    let mut out = String::new();
    // A user name without a password makes requests and undici send no Proxy-Authorization at
    // all, so the URL always carries both. Run tokens are not verified yet: "local" is a
    // placeholder.
    out.push_str(&format!("export HTTPS_PROXY=http://{run}:local@{forward}\n"));
    out.push_str(&format!("export HTTP_PROXY=http://{run}:local@{forward}\n"));
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
    writeln!(out)?;
    writeln!(out, "Paste into the agent's shell (run id {run:?}):")?;
    write!(out, "{}", exports(running, run))?;
    writeln!(out)?;
    writeln!(out, "Then: fleetforge-ctl receipts {run}   fleetforge-ctl verify {run}")?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()
}
