//! `fleetforge-control`: the FleetForge control service.
//!
//! The service (receipts, runs, verification, the API and web page on Postgres or the embedded
//! SQLite) is not part of this build yet. The binary exists so the contract's names are stable:
//! it validates the shared config file and says plainly that there is nothing to serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// EX_UNAVAILABLE: the service is not available in this build.
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "fleetforge-control",
    version,
    about = "FleetForge control service (not available in this build: run the proxy with `fleetforge-ctl up` or `fleetforge-proxy`)"
)]
struct Cli {
    /// TOML config file shared by the FleetForge binaries (examples in configs/).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration file and exit: 0 if valid, 64 if not.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = &cli.config {
        let checked = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| text.parse::<toml::Table>().map_err(|e| e.to_string()));
        if let Err(e) = checked {
            eprintln!("fleetforge-control: invalid config file {}: {e}", path.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    }
    if cli.check_config {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "fleetforge-control: the control service is not available in this build; \
         `fleetforge-ctl up` runs the proxy locally"
    );
    ExitCode::from(EXIT_UNAVAILABLE)
}
