//! `fleetforge-ctl up`: run FleetForge locally in one process and print how to point agents at it.

use std::io::Write;
use std::path::Path;

use fleetforge_proxy::Running;

/// The shell lines an agent needs to use the proxy at `running`, for a run named `run`.
pub fn exports(running: &Running, run: &str) -> String {
    let bundle = absolute(running.proxy.ca.bundle_path());
    let ca = absolute(running.proxy.ca.ca_path());
    let forward = running.forward;
    let mut out = String::new();
    // A user name without a password makes requests and undici send no Proxy-Authorization at
    // all, so the URL always carries both. No run tokens are issued yet: "local" is a placeholder.
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
pub fn print_banner(out: &mut impl Write, running: &Running, run: &str) -> std::io::Result<()> {
    writeln!(out, "FleetForge is up.")?;
    writeln!(out, "  forward proxy  {}", running.forward)?;
    writeln!(out, "  admin          http://{}  (/healthz /readyz /metrics /ca.pem)", running.admin)?;
    writeln!(out)?;
    writeln!(out, "Paste into the agent's shell (run id {run:?}):")?;
    write!(out, "{}", exports(running, run))?;
    writeln!(out)?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()
}
