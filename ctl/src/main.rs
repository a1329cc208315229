//! `fleetforge-ctl`: the FleetForge operator CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Parser, Subcommand};
use fleetforge_control::config::{ControlConfig, Flags as ControlFlags};
use fleetforge_proxy::config::Flags;
use fleetforge_proxy::{Config, Proxy};
use serde_json::{Value, json};

mod bundle;
mod client;
mod demo;
mod log;
mod policy;
mod replay;
mod show;
mod up;

use crate::client::ControlClient;
use crate::show::{millis_between, not_found};

const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "fleetforge-ctl",
    version,
    about = "FleetForge operator CLI",
    long_about = "FleetForge operator CLI.\n\n\
Commands other than `up` talk to the control service at FLEETFORGE_CONTROL_URL (default http://127.0.0.1:7070)\n\
with FLEETFORGE_CONTROL_TOKEN, or the token `up` keeps in $FLEETFORGE_HOME/control.token."
)]
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
    /// Run FleetForge locally in this process — the control service (SQLite unless DATABASE_URL)
    /// and the proxy shipping receipts to it — and print the lines to paste into an agent's shell.
    Up {
        /// Forward-proxy listen address [env FLEETFORGE_PROXY_LISTEN; default 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Admin listen address [env FLEETFORGE_ADMIN_LISTEN; default 127.0.0.1:9901].
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<String>,
        /// Control API listen address [env FLEETFORGE_CONTROL_LISTEN; default 127.0.0.1:7070].
        #[arg(long, value_name = "ADDR")]
        control_listen: Option<String>,
        /// Run id the printed proxy URL carries, with a run token control issues for it (the run is
        /// created, or given a new token when it exists).
        #[arg(long, default_value = "hello-fleet")]
        run: String,
    },
    /// Hello Fleet: start control (SQLite in FLEETFORGE_HOME), a proxy and a fake LLM + tool +
    /// MCP upstream on free ports, run an agent's calls through the proxy (LLM, stream, tool with
    /// a capability, MCP, a policy denial, a rate-SLO wait, a budget refusal), print the receipts,
    /// verify the run, replay it strictly and export it. Exit 0 only if every check passed.
    Demo {
        /// Keep control running afterwards and print a one-time login URL for its web view
        /// (Ctrl-C stops it).
        #[arg(long)]
        serve: bool,
    },
    /// Print a one-time login URL for the web view of control at FLEETFORGE_CONTROL_URL (good for
    /// 10 minutes, once; the session it opens reads as a reader of this token's tenant).
    Login {
        /// Page to open after signing in, e.g. /demo or /runs/RUN.
        #[arg(long, default_value = "/")]
        next: String,
    },
    /// Runs: create, list, show.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// A run's receipts, in chain order: a table, or JSON lines with --json.
    Receipts {
        /// The run id.
        run: String,
        /// Print each receipt as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Verify a run's receipts (signatures, proofs, chain, seq) and their inclusion in the
    /// tenant's transparency log, and that the log is consistent with the head seen last (kept in
    /// $FLEETFORGE_HOME/log-heads/); or, with --bundle DIR, check an exported bundle offline.
    /// Exit 0 only if all check out.
    Verify {
        /// The run id (not with --bundle).
        #[arg(required_unless_present = "bundle", conflicts_with = "bundle")]
        run: Option<String>,
        /// Check the bundle `export --format bundle` wrote into DIR, with no network access.
        #[arg(long, value_name = "DIR")]
        bundle: Option<std::path::PathBuf>,
    },
    /// Check a health endpoint, for container and systemd health checks where there is no curl:
    /// GET URL; prints `ok` and exits 0 on a 2xx answer within --timeout, else says why and
    /// exits 1.
    Health {
        /// The URL: a proxy's admin /healthz or /readyz, or control's.
        #[arg(default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Export a run: `aibom` (its AI bill of materials, CycloneDX 1.6 JSON), `vc` (its capability
    /// as a signed W3C verifiable credential), written to -o FILE or printed; `c2pa`: a C2PA
    /// manifest store (-o FILE.c2pa) bound to the run's receipts, written beside it as
    /// FILE.jsonl; `scitt`: its SCITT
    /// signed statement (COSE_Sign1) to -o FILE and its COSE receipt to FILE.receipt, or both
    /// base64 in JSON on stdout; or `bundle`: a
    /// folder (-o DIR) with its receipts, keys, log head and inclusion proofs, AIBOM, credential
    /// and SCITT statement, which `verify --bundle DIR` checks offline.
    Export {
        /// The run id.
        run: String,
        /// What to export.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<std::path::PathBuf>,
    },
    /// A run's budget: each limit its token carries with what its receipts used and what
    /// remains, calls throttled by its rate SLOs and their total wait, calls refused, burn rate
    /// and projected exhaustion. Figures come from the receipts control holds.
    Budget {
        /// The run id.
        run: String,
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Replay a recorded run: start a proxy (on free ports of 127.0.0.1) that serves the run's
    /// sealed responses, run CMD with the proxy and CA variables of a new replay run, then print
    /// the replay report (matched, missed, unused seals, token drift, verdict). Exit: CMD's status
    /// when it failed, 1 on any miss (and, with --strict, any unused seal), else 0.
    Replay {
        /// The recorded run.
        run: String,
        /// Strict: a request with no sealed response gets 599 `replay_miss` (naming the closest
        /// sealed request and the differing JSON paths); nothing ever goes upstream.
        #[arg(long)]
        strict: bool,
        /// `fast` (as fast as the agent reads) or `recorded` (stream chunks at their recorded
        /// offsets).
        #[arg(long, default_value = "fast", value_name = "fast|recorded")]
        timing: String,
        /// Run id of the replay [default: RUN-replay-<unix ms>].
        #[arg(long = "as", value_name = "RUN")]
        as_run: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The agent command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Capability tokens: verify one offline for a call, narrow one offline, revoke one.
    Capability {
        #[command(subcommand)]
        command: CapabilityCommand,
    },
    /// Policy packs, offline: inspect one, test one against input documents, lint packs.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CapabilityCommand {
    /// Check TOKEN offline: exit 0 only if its signatures verify against control's root keys and
    /// it allows exactly this call now (what a tool does with `x-fleetforge-capability`).
    Verify {
        /// The token (base64url), or `-` to read it from stdin.
        token: String,
        /// The host the call went to.
        #[arg(long)]
        host: String,
        /// The HTTP method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// The request path.
        #[arg(long)]
        path: String,
        /// The model, for LLM calls.
        #[arg(long)]
        model: Option<String>,
        /// A root public key, ID=BASE64URL (repeatable); without it, fetched from control's
        /// GET /v1/keys.
        #[arg(long = "root-key", value_name = "ID=KEY")]
        root_keys: Vec<String>,
    },
    /// Narrow TOKEN offline (no key needed) for a sub-agent; prints the new token.
    Attenuate {
        /// The token (base64url), or `-` to read it from stdin.
        token: String,
        /// Allowed host (`*.example.com` for subdomains; repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Allowed method (repeatable).
        #[arg(long = "method")]
        methods: Vec<String>,
        /// Allowed path prefix (repeatable).
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Allowed model (`gpt-4o*` for a prefix; repeatable).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Lifetime from now, e.g. 90s, 10m, 2h.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a run's token (`--run`) or any capability by revocation id; proxies refuse it
    /// within seconds.
    Revoke {
        /// The run whose token to revoke.
        #[arg(long, conflicts_with = "id")]
        run: Option<String>,
        /// A revocation id (hex), e.g. a receipt's capability.call_token_id.
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum RunsCommand {
    /// Create a run; prints its id and token.
    Create {
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Token budget.
        #[arg(long)]
        budget_tokens: Option<u64>,
        /// Cost budget in USD.
        #[arg(long)]
        budget_cost_usd: Option<f64>,
        /// Call budget.
        #[arg(long)]
        budget_calls: Option<u64>,
        /// Rate SLO in tokens per minute.
        #[arg(long)]
        budget_tokens_per_minute: Option<u64>,
        /// The agent this run is for.
        #[arg(long)]
        agent: Option<String>,
        /// Allowed host (`*.example.com` for subdomains; repeatable; none = any).
        #[arg(long = "allow-host")]
        hosts: Vec<String>,
        /// Allowed method (repeatable; none = any).
        #[arg(long = "allow-method")]
        methods: Vec<String>,
        /// Allowed path prefix (repeatable; none = any).
        #[arg(long = "allow-path")]
        paths: Vec<String>,
        /// Allowed model (`gpt-4o*` for a prefix; repeatable; none = any).
        #[arg(long = "allow-model")]
        models: Vec<String>,
        /// Token lifetime in seconds (default 86400).
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
    /// List runs, newest first.
    List,
    /// Show one run.
    Show {
        /// The run id.
        run: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own progress; its default log level keeps the proxy's per-call lines out.
    let default_level = if matches!(cli.command, Some(Command::Demo { .. })) { "warn" } else { "info" };
    let filter = std::env::var("FLEETFORGE_LOG").unwrap_or_else(|_| default_level.into());
    let targets: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_default();
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(targets)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetforge-ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = match (cli.check_config, cli.command) {
        (true, command) => {
            let (listen, admin_listen, control_listen) = match &command {
                Some(Command::Up { listen, admin_listen, control_listen, .. }) => {
                    (listen.clone(), admin_listen.clone(), control_listen.clone())
                }
                _ => (None, None, None),
            };
            return match load(cli.config.as_deref(), listen, admin_listen, control_listen) {
                Ok(_) => {
                    println!("config ok");
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            };
        }
        (false, Some(command)) => command,
        (false, None) => {
            eprintln!("fleetforge-ctl: no command given; try `fleetforge-ctl up` or `fleetforge-ctl --help`");
            return ExitCode::from(2);
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        match command {
            Command::Up { listen, admin_listen, control_listen, run } => {
                fleetforge_trust::RunId::new(&run).map_err(|e| anyhow::anyhow!("--run {run:?}: {e}"))?;
                let (proxy, control) = match load(cli.config.as_deref(), listen, admin_listen, control_listen) {
                    Ok(c) => c,
                    Err(code) => return Ok(code),
                };
                run_up(proxy, control, &run).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Demo { serve } => demo::demo(cli.config.as_deref(), serve).await,
            Command::Login { next } => {
                println!("{}", client()?.login_url(&next).await?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Runs { command } => runs(command).await,
            Command::Receipts { run, json } => show::receipts(&client()?, &run, json).await,
            Command::Verify { run: Some(run), .. } => show::verify(&client()?, &run).await,
            Command::Verify { run: None, bundle } => verify_bundle(bundle.as_deref()),
            Command::Budget { run, json } => budget(&run, json).await,
            Command::Health { url, timeout } => Ok(health(&url, timeout).await),
            Command::Export { run, format, output } => export(&run, format, output.as_deref()).await,
            Command::Replay { run, strict, timing, as_run, json, command } => {
                let args = replay::Args { run, strict, timing, as_run, json, command };
                replay::replay(args, cli.config.as_deref(), &client()?).await
            }
            Command::Capability { command } => capability(command).await,
            Command::Policy { command } => policy::run(command, || {
                let env = |k: &str| std::env::var(k).ok();
                let config =
                    Config::load(cli.config.as_deref(), &env, &Flags::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(config.policy.packs)
            }),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleetforge-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(
    file: Option<&std::path::Path>,
    listen: Option<String>,
    admin_listen: Option<String>,
    control_listen: Option<String>,
) -> Result<(Config, ControlConfig), ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let proxy = Config::load(file, &env, &Flags { listen, admin_listen, ..Flags::default() }).map_err(|e| {
        eprintln!("fleetforge-ctl: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })?;
    let control = ControlConfig::load(file, &env, &ControlFlags { listen: control_listen, no_migrate: false })
        .map_err(|e| {
            eprintln!("fleetforge-ctl: {e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        })?;
    Ok((proxy, control))
}

async fn run_up(mut proxy: Config, mut control: ControlConfig, run: &str) -> anyhow::Result<()> {
    // One home for both, as the contract allows.
    control.home = proxy.home.clone();
    let token = up::control_token(&control.home, control.bootstrap_token.as_ref().or(proxy.control_token.as_ref()))
        .context("keeping the control token in FLEETFORGE_HOME")?;
    control.bootstrap_token = Some(token.clone());
    let control_running = fleetforge_control::start(&control).await.context("cannot start the control service")?;
    proxy.control_url = format!("http://{}", control_running.addr).parse().context("control address")?;
    proxy.control_token = Some(token.clone());
    // The proxy knows control now, so it verifies run tokens unless told not to.
    if !proxy.capabilities.explicit {
        proxy.capabilities.required = true;
    }
    let verify = proxy.capabilities.required;
    let running = Proxy::start(proxy).context("cannot start the proxy")?;
    let run_token = if verify {
        up::run_token(control_running.addr, &token, run).await?
    } else {
        // Checks are off (FLEETFORGE_CAPABILITIES=false): any password is taken.
        "unverified".to_owned()
    };
    let admin = ControlClient::new(&format!("http://{}", control_running.addr), Some(token.expose().to_owned()))?;
    let login = admin.login_url("/").await?;
    up::print_banner(&mut std::io::stdout().lock(), &running, &control_running, &control.home, run, &run_token, &login)
        .context("cannot write to stdout")?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
        _ = term.recv() => {}
    }
    running.shutdown().await;
    control_running.shutdown().await;
    Ok(())
}

fn read_token(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.trim().to_owned());
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading the token from stdin")?;
    Ok(s.trim().to_owned())
}

/// `90s`, `10m`, `2h`, `1d` or plain seconds.
fn parse_ttl(s: &str) -> anyhow::Result<std::time::Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().with_context(|| format!("--ttl {s:?}: expected a number with s, m, h or d, e.g. 10m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--ttl {s:?}: unknown unit {unit:?}; use s, m, h or d"),
    };
    Ok(std::time::Duration::from_secs(secs))
}

async fn capability(command: CapabilityCommand) -> anyhow::Result<ExitCode> {
    use fleetforge_trust::capability::{self as cap, CallFacts, Grants, RootKeys};
    match command {
        CapabilityCommand::Verify { token, host, method, path, model, root_keys } => {
            let token = read_token(&token)?;
            let mut roots = RootKeys::default();
            if root_keys.is_empty() {
                roots = client()?.capability_roots().await?;
            } else {
                for entry in &root_keys {
                    let (id, pk) = entry
                        .split_once('=')
                        .with_context(|| format!("--root-key {entry:?}: expected ID=BASE64URL"))?;
                    let id: u32 = id.parse().with_context(|| format!("--root-key {entry:?}: the id is a number"))?;
                    let raw = URL_SAFE_NO_PAD
                        .decode(pk.trim_end_matches('='))
                        .with_context(|| format!("--root-key {entry:?}: not base64url"))?;
                    roots.insert(id, &raw)?;
                }
            }
            let facts = CallFacts {
                host: &host,
                method: &method,
                path: &path,
                model: model.as_deref(),
                step: 0,
                now: std::time::SystemTime::now(),
            };
            match cap::verify_for_call(&token, &roots, &facts) {
                Ok(run) => {
                    println!(
                        "valid: run {run} may {} https://{host}{path}{}",
                        method.to_ascii_uppercase(),
                        model.map(|m| format!(" (model {m})")).unwrap_or_default()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("refused: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        CapabilityCommand::Attenuate { token, hosts, methods, paths, models, ttl } => {
            let token = read_token(&token)?;
            let ttl = ttl.as_deref().map(parse_ttl).transpose()?;
            let narrow = Grants { hosts, methods, paths, models, ..Grants::default() };
            println!("{}", cap::attenuate(&token, &narrow, ttl, std::time::SystemTime::now())?);
            Ok(ExitCode::SUCCESS)
        }
        CapabilityCommand::Revoke { run, id } => {
            let c = client()?;
            let answer = match (run, id) {
                (Some(run), None) => {
                    c.post(&format!("/v1/runs/{run}/revoke"), &json!({})).await.map_err(not_found(&run))?
                }
                (None, Some(id)) => c.post("/v1/capabilities/revoke", &json!({ "revocation_id": id })).await?,
                _ => anyhow::bail!("give --run RUN or --id REVOCATION_ID"),
            };
            println!("revoked {}", answer["revoked"]);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `fleetforge-ctl export` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// CycloneDX 1.6 AI bill of materials.
    Aibom,
    /// W3C verifiable credential of the run's capability.
    Vc,
    /// C2PA manifest store (-o FILE.c2pa) bound to the run's receipt bundle, written beside it
    /// (FILE.jsonl).
    C2pa,
    /// SCITT signed statement (COSE_Sign1) and its COSE receipt.
    Scitt,
    /// A folder of evidence checkable offline (`verify --bundle`).
    Bundle,
}

/// `fleetforge-ctl verify --bundle DIR`.
fn verify_bundle(dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let dir = dir.context("name a run or --bundle DIR")?;
    let report = bundle::check(dir)?;
    for line in &report.passed {
        println!("ok      {line}");
    }
    for (what, problem) in &report.failed {
        println!("FAILED  {what}: {problem}");
    }
    if report.failed.is_empty() {
        println!("bundle {}: verified offline", dir.display());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("bundle {}: verification FAILED ({} problems)", dir.display(), report.failed.len());
        Ok(ExitCode::from(1))
    }
}

/// `fleetforge-ctl export RUN --format F [-o FILE]`.
async fn export(run: &str, format: ExportFormat, output: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let path = match format {
        ExportFormat::Aibom => format!("/v1/runs/{run}/export/aibom"),
        ExportFormat::Vc => format!("/v1/runs/{run}/export/vc"),
        ExportFormat::C2pa => {
            let sidecar = output.context(
                "--format c2pa writes a manifest store and the receipts it binds: give it with -o FILE.c2pa",
            )?;
            let c = client()?;
            let keys = c.get("/v1/keys").await.context("fetching control's keys")?;
            let asset = bundle::receipt_bundle(&show::all_receipts(&c, run).await?);
            let manifest = bundle::c2pa(&c, run, &asset, &keys).await?;
            let asset_path = sidecar.with_extension("jsonl");
            anyhow::ensure!(asset_path != sidecar, "-o {}: name the manifest FILE.c2pa", sidecar.display());
            std::fs::write(&asset_path, &asset).with_context(|| format!("writing {}", asset_path.display()))?;
            std::fs::write(sidecar, &manifest).with_context(|| format!("writing {}", sidecar.display()))?;
            eprintln!(
                "wrote the C2PA manifest of run {run} to {} and the receipts it binds to {}",
                sidecar.display(),
                asset_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        ExportFormat::Scitt => {
            let (statement, receipt) = bundle::scitt(&client()?, run).await?;
            let id = fleetforge_trust::canonical::hex(&fleetforge_trust::canonical::sha256(&statement));
            let Some(file) = output else {
                let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
                let doc = serde_json::json!({ "id": id, "statement": b64(&statement), "receipt": b64(&receipt) });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            };
            let receipt_file = std::path::PathBuf::from(format!("{}.receipt", file.display()));
            std::fs::write(file, &statement).with_context(|| format!("writing {}", file.display()))?;
            std::fs::write(&receipt_file, &receipt).with_context(|| format!("writing {}", receipt_file.display()))?;
            eprintln!(
                "wrote the SCITT statement of run {run} (sha256 {id}) to {} and its COSE receipt to {}",
                file.display(),
                receipt_file.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        ExportFormat::Bundle => {
            let dir = output.context("--format bundle writes a folder: give it with -o DIR")?;
            bundle::export(&client()?, run, dir).await?;
            eprintln!(
                "wrote the bundle of run {run} to {}; check it with `fleetforge-ctl verify --bundle {}`",
                dir.display(),
                dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let doc = client()?.get(&path).await.map_err(show::not_found(run))?;
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    match output {
        Some(file) => {
            std::fs::write(file, &text).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("wrote {}", file.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn client() -> anyhow::Result<ControlClient> {
    Ok(ControlClient::from_env()?)
}

async fn runs(command: RunsCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match command {
        RunsCommand::Create {
            labels,
            budget_tokens,
            budget_cost_usd,
            budget_calls,
            budget_tokens_per_minute,
            agent,
            hosts,
            methods,
            paths,
            models,
            ttl_seconds,
        } => {
            let mut map = serde_json::Map::new();
            for l in labels {
                let (k, v) = l.split_once('=').with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
                map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let body = json!({
                "labels": map,
                "budget": {"tokens": budget_tokens, "cost_usd": budget_cost_usd, "calls": budget_calls, "tokens_per_minute": budget_tokens_per_minute},
                "agent": agent,
                "grants": {"hosts": hosts, "methods": methods, "paths": paths, "models": models},
                "ttl_seconds": ttl_seconds,
            });
            let created = c.post("/v1/runs", &body).await?;
            println!("run    {}", created["id"].as_str().unwrap_or_default());
            println!("token  {}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "the token is shown only now; agents use it as the proxy password: HTTPS_PROXY=http://RUN:TOKEN@HOST:PORT"
            );
        }
        RunsCommand::List => {
            let list = c.get("/v1/runs?limit=500").await?;
            println!(
                "{:<20} {:<12} {:<26} {:>7} {:<26} VERIFIED",
                "RUN", "TENANT", "CREATED", "CALLS", "LAST ACTIVITY"
            );
            for r in list["runs"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<12} {:<26} {:>7} {:<26} {}",
                    r["id"].as_str().unwrap_or_default(),
                    r["tenant"].as_str().unwrap_or_default(),
                    r["created_at"].as_str().unwrap_or_default(),
                    r["calls"].to_string(),
                    r["last_activity"].as_str().unwrap_or("-"),
                    r["verification"].as_str().unwrap_or_default()
                );
            }
        }
        RunsCommand::Show { run } => {
            let r = c.get(&format!("/v1/runs/{run}")).await.map_err(not_found(&run))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetforge-ctl budget RUN`.
/// `fleetforge-ctl health`: 0 when `url` answers 2xx within `timeout` seconds.
async fn health(url: &str, timeout: u64) -> ExitCode {
    let failed = |why: String| {
        eprintln!("fleetforge-ctl health: {url}: {why}");
        ExitCode::FAILURE
    };
    let http = url.parse::<http::Uri>().ok().is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
    if !http {
        return failed("not an http(s) URL; e.g. http://127.0.0.1:9901/healthz".into());
    }
    let client = match ControlClient::new(url, None) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    match tokio::time::timeout(std::time::Duration::from_secs(timeout), client.get_bytes("")).await {
        Ok(Ok(_)) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(Err(client::ClientError::Unreachable { reason, .. })) => failed(reason),
        Ok(Err(
            client::ClientError::Status { status, message } | client::ClientError::Unauthorized { status, message },
        )) => failed(format!("answered {status}: {message}")),
        Ok(Err(client::ClientError::NotFound(message))) => failed(format!("answered 404 Not Found: {message}")),
        Ok(Err(e)) => failed(e.to_string()),
        Err(_) => failed(format!("no answer within {timeout} s")),
    }
}

async fn budget(run: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let c = client()?;
    let shown = c.get(&format!("/v1/runs/{run}")).await.map_err(not_found(run))?;
    let state = &shown["budget_state"];
    let (mut calls, mut throttled, mut waited_ms, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let (mut first, mut last): (Option<String>, Option<String>) = (None, None);
    let mut after = 0i64;
    loop {
        let page = c.get(&format!("/v1/runs/{run}/receipts?after={after}&limit=1000")).await.map_err(not_found(run))?;
        let items = page["receipts"].as_array().cloned().unwrap_or_default();
        for r in &items {
            if r["decision"]["allow"] == true {
                calls += 1;
            }
            if r["decision"]["error"]["type"] == "budget_exceeded" {
                refused += 1;
            }
            let wait = r["budget"]["throttled_ms"].as_u64().unwrap_or(0);
            if wait > 0 {
                throttled += 1;
                waited_ms += wait;
            }
            if first.is_none() {
                first = r["started_at"].as_str().map(str::to_owned);
            }
            last = r["ended_at"].as_str().map(str::to_owned).or(last);
        }
        match page["next_after"].as_i64() {
            Some(next) if !items.is_empty() => after = next,
            _ => break,
        }
    }
    let used_tokens = shown["input_tokens"].as_u64().unwrap_or(0) + shown["output_tokens"].as_u64().unwrap_or(0);
    // Burn rate over the span of the run's receipts, and when the token budget runs out at it.
    let minutes = match (&first, &last) {
        (Some(a), Some(b)) => millis_between(a, b).map(|ms| ms / 60_000.0).filter(|m| *m > 0.0),
        _ => None,
    };
    let burn = minutes.map(|m| used_tokens as f64 / m);
    let remaining = state["tokens"]["remaining"].as_u64();
    let exhausted_in = match (burn, remaining) {
        (Some(b), Some(r)) if b > 0.0 => Some(r as f64 / b),
        _ => None,
    };
    let calls_limit = state["calls"].as_u64();
    let report = serde_json::json!({
        "run": run,
        "tokens": state["tokens"],
        "cost_usd": state["cost_usd"],
        "calls": {"limit": calls_limit, "used": calls, "remaining": calls_limit.map(|l| l.saturating_sub(calls))},
        "reserved": null,
        "leased": state["leases"]["leased"],
        "holders": state["leases"]["holders"],
        "deadline": state["deadline"],
        "tokens_per_minute": state["tokens_per_minute"],
        "calls_per_minute": state["calls_per_minute"],
        "throttled_calls": throttled,
        "throttled_seconds": waited_ms as f64 / 1e3,
        "refused_calls": refused,
        "burn_tokens_per_minute": burn,
        "exhausted_in_minutes": exhausted_in,
    });
    if as_json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    };
    println!("run {run}");
    println!("{:<10} {:>14} {:>14} {:>14}", "", "LIMIT", "USED", "REMAINING");
    for (name, v) in [("tokens", &report["tokens"]), ("cost_usd", &report["cost_usd"]), ("calls", &report["calls"])] {
        println!("{name:<10} {:>14} {:>14} {:>14}", cell(&v["limit"]), cell(&v["used"]), cell(&v["remaining"]));
    }
    println!("reserved:  held by the proxies serving the run until their calls settle (not known to control)");
    if let Some(holders) = state["leases"]["holders"].as_array() {
        let leased = &state["leases"]["leased"];
        let parts: Vec<String> =
            [("tokens", &leased["tokens"]), ("cost_usd", &leased["cost_usd"]), ("calls", &leased["calls"])]
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(name, v)| format!("{} {name}", cell(v)))
                .collect();
        println!(
            "leased:    {} held by {} proxies (slices of the budget, used or spendable)",
            parts.join(", "),
            holders.len()
        );
    }
    if let Some(d) = state["deadline"].as_str() {
        println!("wall time: no calls after {d}");
    }
    let rate = |v: &serde_json::Value, what: &str| v.as_u64().map(|n| format!("{n} {what}/min"));
    let rates: Vec<String> = [rate(&state["tokens_per_minute"], "tokens"), rate(&state["calls_per_minute"], "calls")]
        .into_iter()
        .flatten()
        .collect();
    if !rates.is_empty() {
        println!("rate SLOs: {}", rates.join(", "));
    }
    println!("throttled: {throttled} calls, {:.1} s waited in total; refused: {refused} calls", waited_ms as f64 / 1e3);
    match (burn, exhausted_in) {
        (Some(b), Some(m)) => {
            println!("burn rate: {b:.1} tokens/min; the token budget runs out in about {m:.1} min at this rate")
        }
        (Some(b), None) => println!("burn rate: {b:.1} tokens/min"),
        _ => println!("burn rate: - (not enough receipts)"),
    }
    Ok(ExitCode::SUCCESS)
}
