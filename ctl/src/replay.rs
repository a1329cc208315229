//! `fleetforge-ctl replay RUN [--strict] [--timing fast|recorded] -- CMD…`: runs an agent command
//! against a proxy that serves a recorded run's sealed responses, then prints the replay report.
//!
//! The replay is a run of its own (`RUN-replay-<unix ms>` unless `--as` names it, labelled
//! `replay_of`): control issues it a run token, and the command gets the proxy and CA variables
//! for it, exactly as `fleetforge-ctl up` prints them. The proxy listens on free ports of
//! 127.0.0.1, runs in this process, and drains its receipts to control before the report is
//! fetched. The replaying proxy keeps its state under `$FLEETFORGE_HOME/replays/<replay run>/`
//! and reads sealed bodies from `$FLEETFORGE_HOME/seals/` first, then from control. Exit status: the command's own when it failed, 1 when any call missed (or, with
//! `--strict`, when a sealed call went unused), 0 when the replay was identical.

use std::process::ExitCode;

use anyhow::Context as _;
use fleetforge_proxy::Proxy;
use fleetforge_proxy::config::{Config, Flags, ReplayConfig};
use fleetforge_trust::{RunId, Secret};
use serde_json::{Value, json};

use crate::client::{ClientError, ControlClient};

/// What `replay` was asked to do.
#[derive(Debug)]
pub struct Args {
    /// The recorded run.
    pub run: String,
    /// Refuse misses; never contact an upstream.
    pub strict: bool,
    /// `fast` or `recorded`.
    pub timing: String,
    /// Run id of the replay.
    pub as_run: Option<String>,
    /// Print the report as JSON.
    pub json: bool,
    /// The agent command.
    pub command: Vec<String>,
}

/// Runs a replay; see the module docs.
pub async fn replay(args: Args, file: Option<&std::path::Path>, c: &ControlClient) -> anyhow::Result<ExitCode> {
    let recorded_timing = match args.timing.as_str() {
        "fast" => false,
        "recorded" => true,
        other => anyhow::bail!("--timing {other:?}: expected fast or recorded"),
    };
    let run = RunId::new(&args.run).map_err(|e| anyhow::anyhow!("run {:?}: {e}", args.run))?;
    let (program, rest) =
        args.command.split_first().context("give the agent command after --, e.g. -- python agent.py")?;
    // Fail before starting anything when there is nothing to replay.
    let manifest = c.get(&format!("/v1/runs/{run}/replay-manifest")).await.map_err(|e| match e {
        ClientError::NotFound(message) => anyhow::anyhow!("cannot replay run {run}: {message}"),
        e => e.into(),
    })?;
    let sealed = manifest["calls"].as_array().map_or(0, Vec::len);
    let replay_id = args.as_run.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("{run}-replay-{ms}")
    });
    let created = c
        .post(
            "/v1/runs",
            &json!({"id": replay_id, "labels": {"replay_of": run.as_str(), "replay_strict": args.strict.to_string()}}),
        )
        .await
        .with_context(|| format!("cannot create the replay run {replay_id}"))?;
    let token = created["token"].as_str().context("control issued no run token for the replay run")?.to_owned();

    let env = |k: &str| std::env::var(k).ok();
    let flags =
        Flags { listen: Some("127.0.0.1:0".into()), admin_listen: Some("127.0.0.1:0".into()), ..Flags::default() };
    let mut config = Config::load(file, &env, &flags).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.sidecars.clear();
    // A home of its own (CA, signing key, spool, seals), so a replay never shares a spool with a
    // proxy already running on FLEETFORGE_HOME (`fleetforge-ctl up`); blobs it does not hold
    // come from control.
    let recorded_seals = config.home.join("seals");
    config.home = config.home.join("replays").join(&replay_id);
    config.control_url = c.base().parse().context("FLEETFORGE_CONTROL_URL")?;
    if config.control_token.is_none() {
        config.control_token = c.token().map(|t| Secret::new(t.to_owned()));
    }
    config.replay = Some(ReplayConfig {
        run: run.clone(),
        strict: args.strict,
        recorded_timing,
        local_seals: Some(recorded_seals),
    });
    let running = Proxy::start(config).context("cannot start the replaying proxy")?;
    eprintln!(
        "fleetforge-ctl: replaying run {run} ({sealed} sealed calls{}) as run {replay_id}; proxy on {}",
        if args.strict { ", strict" } else { "" },
        running.forward
    );
    let vars = crate::up::variables(&running, &replay_id, &token);
    let status = tokio::process::Command::new(program)
        .args(rest)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .status()
        .await;
    // Every call has ended once the command has: drain the receipts to control.
    running.shutdown().await;
    let status = status.with_context(|| format!("cannot run {program:?}"))?;

    let report = match c.get(&format!("/v1/runs/{replay_id}/replay-report")).await {
        Ok(report) => report,
        Err(ClientError::NotFound(_)) => {
            println!("replay of run {run} as run {replay_id}: the command made no calls through the proxy");
            println!("  unused   {sealed} of {sealed} sealed calls");
            return Ok(exit(&status, true));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, sealed);
    }
    let missed = report["missed"].as_u64().unwrap_or(0);
    let unused = report["unused"].as_array().map_or(0, Vec::len);
    Ok(exit(&status, missed > 0 || (args.strict && unused > 0)))
}

/// The command's status when it failed, else 1 when the replay differed, else 0.
fn exit(status: &std::process::ExitStatus, differed: bool) -> ExitCode {
    if !status.success() {
        let code = status.code().and_then(|c| u8::try_from(c).ok()).filter(|c| *c != 0).unwrap_or(1);
        eprintln!("fleetforge-ctl: the command failed ({status})");
        return ExitCode::from(code);
    }
    if differed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn print_report(r: &Value, sealed: usize) {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    println!("replay of run {} as run {}{}", s("of"), s("run"), if r["strict"] == true { " (strict)" } else { "" });
    println!("  matched  {} of {sealed} sealed calls", n("matched"));
    println!("  missed   {}", n("missed"));
    for m in r["misses"].as_array().into_iter().flatten() {
        println!(
            "    receipt {}: {} (closest sealed call: {})",
            m["receipt"].as_str().unwrap_or("?"),
            m["call"].as_str().unwrap_or("?"),
            m["closest"].as_str().unwrap_or("none")
        );
    }
    let unused = r["unused"].as_array().cloned().unwrap_or_default();
    println!("  unused   {}", unused.len());
    for u in &unused {
        println!("    receipt {}", u.as_str().unwrap_or("?"));
    }
    println!(
        "  tokens   original {}, replay {}, drift {}",
        n("tokens_original"),
        n("tokens_replay"),
        r["token_drift"].as_i64().unwrap_or(0)
    );
    println!("  verdict  {}", s("verdict"));
}
