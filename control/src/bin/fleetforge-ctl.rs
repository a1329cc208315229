//! `fleetforge-ctl`: the FleetForge operator CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleetforge_control::up;
use fleetforge_proxy::config::Flags;
use fleetforge_proxy::{Config, Proxy};

const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(name = "fleetforge-ctl", version, about = "FleetForge operator CLI")]
struct Cli {
    /// TOML config file shared by the FleetForge binaries (examples in configs/).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit: 0 if valid, 64 if not.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run FleetForge locally in this process (the proxy with the embedded defaults) and print the
    /// lines to paste into an agent's shell.
    Up {
        /// Forward-proxy listen address [env FLEETFORGE_PROXY_LISTEN; default 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Admin listen address [env FLEETFORGE_ADMIN_LISTEN; default 127.0.0.1:9901].
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<String>,
        /// Run id the printed proxy URL carries.
        #[arg(long, default_value = "hello-fleet")]
        run: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("FLEETFORGE_LOG").unwrap_or_else(|_| "info".into());
    let targets: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_default();
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(targets)
        .init();

    let (listen, admin_listen, run) = match &cli.command {
        Some(Command::Up { listen, admin_listen, run }) => (listen.clone(), admin_listen.clone(), run.clone()),
        None => (None, None, String::new()),
    };
    let flags = Flags { listen, admin_listen, ..Flags::default() };
    let config = match Config::load(cli.config.as_deref(), &|k| std::env::var(k).ok(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetforge-ctl: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check_config {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    let Some(Command::Up { .. }) = cli.command else {
        eprintln!("fleetforge-ctl: no command given; try `fleetforge-ctl up` or `fleetforge-ctl --help`");
        return ExitCode::from(2);
    };
    if let Err(e) = fleetforge_trust::RunId::new(&run) {
        eprintln!("fleetforge-ctl: --run {run:?}: {e}");
        return ExitCode::from(2);
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run_up(config, &run)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetforge-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_up(config: Config, run: &str) -> anyhow::Result<()> {
    let running = Proxy::start(config).context("cannot start the proxy")?;
    up::print_banner(&mut std::io::stdout().lock(), &running, run).context("cannot write to stdout")?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
        _ = term.recv() => {}
    }
    running.shutdown().await;
    Ok(())
}
