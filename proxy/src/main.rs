//! `fleetforge-proxy`: the FleetForge data plane.
//!
//! Start-up wiring only: parse flags, load and validate the config (exit 64 on a bad one), set up
//! logging, start the proxy, print one JSON "ready" line on stdout (bound addresses and CA paths,
//! for scripts and tests that bind port 0), and drain on SIGTERM / Ctrl-C.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;

use anyhow::Context as _;
use clap::Parser;
use fleetforge_proxy::config::Flags;
use fleetforge_proxy::{Config, Proxy};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The allocator (feature `mimalloc`, on by default): it returns what a burst allocated, where
/// glibc's malloc kept it (README, Benchmarks).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the 16th option of its v2 `mi_option_t`).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Pages that freed blocks leave empty go back to the system at once, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. With mimalloc's default (a 10 ms delay, carried out on
/// a later allocation), a proxy that went idle after a load kept about 15 MiB it no longer used,
/// and it spent more CPU per call under load, not less (README, Benchmarks).
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: mi_option_set stores an integer in mimalloc's option table; the symbol is in the
    // libmimalloc linked for the global allocator above, and purge_delay is read on every purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// Gives back to the system the pages that freed blocks left empty, now rather than when the
/// calling thread next allocates: run after the tokenizers load, which frees `tiktoken`'s tables
/// (about 58 MiB) at once.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn return_freed_memory() {
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mi_collect takes a flag and only walks mimalloc's own heap structures; the symbol
    // is in the libmimalloc linked for the global allocator above.
    unsafe { mi_collect(true) }
}

/// Exit status for a configuration error (EX_USAGE... EX_DATAERR family; 64 is what the contract names).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "fleetforge-proxy",
    version,
    about = "FleetForge egress proxy: enforce and record what AI agents do on the network",
    long_about = "FleetForge egress proxy: enforce and record what AI agents do on the network.\n\n\
Agents use it unmodified:\n  \
HTTPS_PROXY=http://RUN_ID:RUN_TOKEN@127.0.0.1:8080  SSL_CERT_FILE=$FLEETFORGE_HOME/ca/bundle.pem\n\
or, with a sidecar listener, a base URL such as OPENAI_BASE_URL=http://127.0.0.1:15001/v1.\n\n\
Settings come from flags, then FLEETFORGE_* environment variables, then the --config file, then defaults.\n\
Environment: FLEETFORGE_HOME, FLEETFORGE_PROXY_LISTEN, FLEETFORGE_ADMIN_LISTEN, FLEETFORGE_INTERCEPT,\n\
FLEETFORGE_ALLOWED_HOSTS, FLEETFORGE_ALLOWED_PORTS, FLEETFORGE_ALLOWED_MODELS, FLEETFORGE_ALLOW_PRIVATE,\n\
FLEETFORGE_RESOLVE, FLEETFORGE_UPSTREAM_CA, FLEETFORGE_MAX_BODY, FLEETFORGE_DEFAULT_RUN,\n\
FLEETFORGE_REQUIRE_CREDENTIALS, FLEETFORGE_LOG. See docs/reference/configuration.md.\n\n\
On start it prints one JSON line to stdout: {\"event\":\"ready\",\"forward\":ADDR,\"admin\":ADDR,\"sidecars\":[..],\"ca\":PATH,\"bundle\":PATH}.\n\
Exit status: 0 after a clean shutdown, 64 on a bad configuration, 1 on any other start-up failure."
)]
struct Cli {
    /// TOML config file (examples in configs/).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print a summary and exit: 0 if valid, 64 if not.
    #[arg(long)]
    check_config: bool,
    /// State directory (CA, keys, spool) [env FLEETFORGE_HOME; default ./.fleetforge].
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Forward-proxy listen address [env FLEETFORGE_PROXY_LISTEN; default 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listen address [env FLEETFORGE_ADMIN_LISTEN; default 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Add a sidecar listener bound to one upstream, e.g. 127.0.0.1:15001=https://api.openai.com
    /// (repeatable; replaces the config file's [[sidecar]] entries).
    #[arg(long, value_name = "LISTEN=URL")]
    sidecar: Vec<String>,
    /// Pin a host to an address, like curl --resolve: HOST=IP:PORT (repeatable) [env FLEETFORGE_RESOLVE].
    #[arg(long, value_name = "HOST=IP:PORT")]
    resolve: Vec<String>,
    /// Host globs whose TLS is intercepted, comma-separated; * = all [env FLEETFORGE_INTERCEPT].
    #[arg(long, value_name = "GLOBS")]
    intercept: Option<String>,
    /// Extra PEM bundle trusted for upstream TLS [env FLEETFORGE_UPSTREAM_CA].
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// Run for calls that name none [env FLEETFORGE_DEFAULT_RUN].
    #[arg(long, value_name = "RUN_ID")]
    default_run: Option<String>,
    /// Allow loopback/private/link-local destinations [env FLEETFORGE_ALLOW_PRIVATE].
    #[arg(long)]
    allow_private: bool,
    /// Policy pack to load (repeatable; replaces FLEETFORGE_POLICY and [proxy.policy] packs): a pack
    /// directory with pack.toml, a pack.toml, or a .wasm/.rego/.tar.gz/.cedar file.
    #[arg(long, value_name = "PATH")]
    policy: Vec<PathBuf>,
    /// Log filter, e.g. info or fleetforge_proxy=debug,info [env FLEETFORGE_LOG; default info].
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    #[cfg(feature = "mimalloc")]
    purge_at_once();
    #[cfg(feature = "mimalloc")]
    fleetforge_proxy::estimate::after_warm(return_freed_memory);
    let cli = Cli::parse();
    let filter = cli.log.clone().or_else(|| std::env::var("FLEETFORGE_LOG").ok()).unwrap_or_else(|| "info".into());
    let targets = match tracing_subscriber::filter::Targets::from_str(&filter) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fleetforge-proxy: invalid log filter {filter:?} (--log / FLEETFORGE_LOG): {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
        .with(targets)
        .init();

    let flags = Flags {
        home: cli.home,
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        intercept: cli.intercept,
        upstream_ca: cli.upstream_ca,
        resolve: cli.resolve,
        sidecar: cli.sidecar,
        default_run: cli.default_run,
        allow_private: cli.allow_private,
        policy: cli.policy,
    };
    let config = match Config::load(cli.config.as_deref(), &|k| std::env::var(k).ok(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetforge-proxy: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check_config {
        // The packs are part of the configuration: one that does not load is a bad config.
        let packs = match fleetforge_proxy::policy::Policy::load(&config.policy.packs, config.policy.limits) {
            Ok(p) => p.current().packs.len(),
            Err(e) => {
                eprintln!("fleetforge-proxy: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        };
        // So is the price list.
        if let Err(e) = fleetforge_proxy::prices::Prices::load(config.prices.as_deref()) {
            eprintln!("fleetforge-proxy: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        println!(
            "config ok: forward {}, admin {}, {} sidecar(s), {packs} policy pack(s), home {}",
            config.listen,
            config.admin_listen,
            config.sidecars.len(),
            config.home.display()
        );
        return ExitCode::SUCCESS;
    }
    raise_fd_limit();
    // The workers run their own runtimes; this one only waits for signals and drives shutdown.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetforge-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetforge-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let running = Proxy::start(config).context("cannot start")?;
    let ready = serde_json::json!({
        "event": "ready",
        "forward": running.forward.to_string(),
        "admin": running.admin.to_string(),
        "sidecars": running.sidecars.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ca": running.proxy.ca.ca_path(),
        "bundle": running.proxy.ca.bundle_path(),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{ready}").and_then(|()| stdout.flush()).context("cannot write the ready line to stdout")?;
    drop(stdout);
    tracing::info!(
        forward = %running.forward,
        admin = %running.admin,
        sidecars = ?running.sidecars,
        bundle = %running.proxy.ca.bundle_path().display(),
        "listening; agents: HTTPS_PROXY=http://RUN_ID:RUN_TOKEN@{} SSL_CERT_FILE={}",
        running.forward,
        running.proxy.ca.bundle_path().display()
    );
    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections; waiting for calls in flight");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Opts the process out of transparent huge pages, before anything sizeable is allocated.
///
/// mimalloc advises its arenas as huge-page candidates, so on Linux a 2 MiB page can back a region
/// a few connections touched: with 1,000 client connections open the proxy measured 77 MiB
/// resident with huge pages and 46 MiB without (`bench/rss.py`, 500 intercepted TLS + 500
/// sidecar). Memory per connection matters more to an egress proxy than the TLB misses huge pages
/// save. Elsewhere (and when the call fails) nothing changes.
#[allow(unsafe_code)]
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Raises the soft open-file limit to the hard limit: each proxied call holds two sockets, and
/// the common default soft limit (1024) caps a proxy at a few hundred agents.
#[allow(unsafe_code)]
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass, which lives on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = limit.rlim_cur, "could not raise the open-file limit");
            }
        }
    }
}
