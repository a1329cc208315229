//! `fleetforge-control`: the FleetForge control service.
//!
//! Start-up wiring only: flags and config (exit 64 on a bad one), logging, then one of `serve`
//! (default: the API, printing one JSON ready line on stdout), `migrate`, or `token create`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleetforge_control::auth::{self, Role};
use fleetforge_control::config::{ControlConfig, Flags};
use fleetforge_control::store::Store;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The allocator (feature `mimalloc`, on by default): it returns what a burst allocated, where
/// glibc's malloc kept it (README, Benchmarks).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "fleetforge-control",
    version,
    about = "FleetForge control service: stores and verifies receipts, serves runs, keys and the API",
    long_about = "FleetForge control service: stores and verifies receipts, serves runs, keys and the API.\n\n\
Database: DATABASE_URL=postgres://… selects Postgres; unset, SQLite at $FLEETFORGE_HOME/control.db.\n\
Environment: FLEETFORGE_HOME (default ./.fleetforge), FLEETFORGE_CONTROL_LISTEN (default 127.0.0.1:7070),\n\
DATABASE_URL, FLEETFORGE_CONTROL_TOKEN (bootstrap admin token, sees every tenant), FLEETFORGE_LOG.\n\n\
`serve` prints one JSON line on stdout when ready: {\"event\":\"ready\",\"listen\":ADDR,\"database\":\"postgres\"|\"sqlite\"}.\n\
Exit status: 0 after a clean shutdown, 64 on a bad configuration, 1 on any other failure."
)]
struct Cli {
    /// TOML config file shared by the FleetForge binaries (its [control] table).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit: 0 if valid, 64 if not.
    #[arg(long, global = true)]
    check_config: bool,
    /// API listen address [env FLEETFORGE_CONTROL_LISTEN; default 127.0.0.1:7070].
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Do not apply database migrations on start.
    #[arg(long, global = true)]
    no_migrate: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// admin (create runs, read), proxy (ship receipts, register keys), or reader (read).
        #[arg(long)]
        role: String,
        /// Tenant the token belongs to; it sees nothing of other tenants.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// A note to remember what the token is for.
        #[arg(long, default_value = "")]
        label: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("FLEETFORGE_LOG").unwrap_or_else(|_| "info".into());
    let targets: tracing_subscriber::filter::Targets = match filter.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fleetforge-control: invalid FLEETFORGE_LOG {filter:?}: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
        .with(targets)
        .init();

    let flags = Flags { listen: cli.listen.clone(), no_migrate: cli.no_migrate };
    let config = match ControlConfig::load(cli.config.as_deref(), &|k| std::env::var(k).ok(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetforge-control: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check_config {
        println!(
            "config ok: listen {}, database {}",
            config.listen,
            if config.database_url.is_some() { "postgres" } else { "sqlite" }
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetforge-control: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => {
                let store = connect(&config).await?;
                store.migrate().await.context("applying migrations")?;
                println!("migrations applied ({})", store.backend().name());
                Ok(())
            }
            Command::Token { command: TokenCommand::Create { role, tenant, label } } => {
                let role =
                    Role::parse(&role).with_context(|| format!("--role {role:?}: expected admin, proxy or reader"))?;
                anyhow::ensure!(!tenant.is_empty() && tenant.len() <= 128, "--tenant must be 1 to 128 characters");
                let store = connect(&config).await?;
                if config.migrate {
                    store.migrate().await.context("applying migrations")?;
                }
                let token = auth::new_token("fft_");
                let id = format!("tok-{}", auth::new_id(12));
                store.insert_token(&id, &auth::token_hash(&token), role.as_str(), &tenant, &label).await?;
                println!("{token}");
                eprintln!("created {} token {id} for tenant {tenant}; it is shown only now", role.as_str());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetforge-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(config: &ControlConfig) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.home)
        .with_context(|| format!("creating FLEETFORGE_HOME {}", config.home.display()))?;
    Store::connect(&config.database()).await.context("connecting to the database")
}

async fn serve(config: ControlConfig) -> anyhow::Result<()> {
    let running = fleetforge_control::start(&config).await.context("cannot start")?;
    let ready =
        serde_json::json!({"event": "ready", "listen": running.addr.to_string(), "database": running.backend.name()});
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{ready}").and_then(|()| stdout.flush()).context("writing the ready line")?;
    drop(stdout);
    if config.bootstrap_token.is_none() {
        tracing::warn!(
            "FLEETFORGE_CONTROL_TOKEN is not set: only tokens made with `fleetforge-control token create` are accepted"
        );
    }
    tracing::info!(listen = %running.addr, database = running.backend.name(), "control service ready");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("watching SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("watching Ctrl-C")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
