//! `fleetforge-ctl demo` (Hello Fleet): the whole product in one command.
//!
//! It starts the control service (SQLite at `$FLEETFORGE_HOME/control.db` unless `DATABASE_URL`),
//! a forward proxy shipping receipts to it, and a fake LLM + tool + MCP upstream
//! ([`upstream`]) on free ports of 127.0.0.1 — `FLEETFORGE_CONTROL_LISTEN`,
//! `FLEETFORGE_PROXY_LISTEN` and `FLEETFORGE_ADMIN_LISTEN` are honoured when set. An agent
//! ([`agent`]) then calls through the proxy exactly as an SDK behind `HTTPS_PROXY` does, as a run
//! with a budget of 5 forwarded calls and a rate SLO: an LLM call, a streamed LLM call, a tool call
//! whose capability the tool verifies offline, an MCP `tools/call`, an MCP call the `mcp-tools`
//! Wasm policy pack denies, a call the rate SLO makes wait, and a call refused for the budget.
//! Then it prints the receipts, verifies the run, replays it strictly with a second proxy (which
//! must serve every call from the seals, open no upstream connection and report 0 drift), and
//! exports the run as a verifiable credential. Exit status 0 only if every check passed; the
//! failed ones are named. `control.db` stays in the home, so `fleetforge-control` (or
//! `fleetforge-ctl up`) started there serves the run afterwards.

mod agent;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleetforge_control::config::{ControlConfig, Flags as ControlFlags};
use fleetforge_proxy::config::{Config, Flags, ReplayConfig};
use fleetforge_proxy::pattern::PatternSet;
use fleetforge_proxy::{Proxy, Running};
use http::Method;
use serde_json::{Value, json};

use crate::client::ControlClient;
use agent::{API_KEY, Agent, Answer};
use upstream::{LLM_HOST, MCP_HOST, TOOL_HOST};

/// The demo run's budget: the calls it may forward, and its rate SLO.
const BUDGET_CALLS: u64 = 5;
const TOKENS_PER_MINUTE: u64 = 2400;

/// The policy packs the demo's proxy evaluates (the repository's built packs).
const PACKS: &[(&str, &str, &[u8])] = &[
    (
        "mcp-tools",
        include_str!("../../policies/packs/mcp-tools/pack.toml"),
        include_bytes!("../../policies/packs/mcp-tools/mcp-tools.wasm"),
    ),
    (
        "model-limits",
        include_str!("../../policies/packs/model-limits/pack.toml"),
        include_bytes!("../../policies/packs/model-limits/model-limits.wasm"),
    ),
];

/// One named check and what it found.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        println!("  [{}] {name}: {detail}", if ok { "ok" } else { "FAILED" });
        self.0.push(Check { name, ok, detail });
    }
}

/// One step of the agent's flow and what it got.
struct Outcome {
    step: &'static str,
    answer: Answer,
    took: Duration,
}

/// Runs Hello Fleet; see the module docs.
pub async fn demo(file: Option<&Path>, serve: bool) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let free = |var: &str| env(var).is_none().then(|| "127.0.0.1:0".to_owned());
    let mut control =
        ControlConfig::load(file, &env, &ControlFlags { listen: free("FLEETFORGE_CONTROL_LISTEN"), no_migrate: false })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let probe = Config::load(file, &env, &Flags::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let home = probe.home.clone();
    let demo_dir = home.join("demo");
    std::fs::create_dir_all(&demo_dir).with_context(|| format!("creating {}", demo_dir.display()))?;

    // Control, with the token `up` uses (so `fleetforge-ctl` finds it afterwards).
    control.home = home.clone();
    let token = crate::up::control_token(&home, control.bootstrap_token.as_ref().or(probe.control_token.as_ref()))
        .context("keeping the control token in FLEETFORGE_HOME")?;
    control.bootstrap_token = Some(token.clone());
    let control_running = fleetforge_control::start(&control).await.context("cannot start the control service")?;
    let c = ControlClient::new(&format!("http://{}", control_running.addr), Some(token.expose().to_owned()))?;
    let roots = c.capability_roots().await.context("reading control's capability root keys")?;

    let upstream_ca = demo_dir.join("upstream-ca.pem");
    let upstream = upstream::start(&upstream_ca, roots).await?;
    let packs = write_packs(&demo_dir.join("packs"))?;
    let flags = Flags {
        listen: free("FLEETFORGE_PROXY_LISTEN"),
        admin_listen: free("FLEETFORGE_ADMIN_LISTEN"),
        intercept: Some(format!("{LLM_HOST},{TOOL_HOST},{MCP_HOST}")),
        upstream_ca: Some(upstream_ca.clone()),
        resolve: [LLM_HOST, TOOL_HOST, MCP_HOST].iter().map(|h| format!("{h}={}", upstream.addr)).collect(),
        policy: packs,
        ..Flags::default()
    };
    let mut config = Config::load(file, &env, &flags).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.sidecars.clear();
    config.control_url = format!("http://{}", control_running.addr).parse().context("control address")?;
    config.control_token = Some(token.clone());
    config.capabilities.required = true;
    config.capabilities.tool_hosts = PatternSet::new([TOOL_HOST]);
    let replay_template = config.clone();

    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let run = format!("hello-fleet-{ms}");
    let budget = json!({"calls": BUDGET_CALLS, "tokens_per_minute": TOKENS_PER_MINUTE});
    let created = c
        .post("/v1/runs", &json!({"id": run, "labels": {"demo": "hello-fleet"}, "budget": budget}))
        .await
        .with_context(|| format!("creating run {run}"))?;
    let run_token = created["token"].as_str().context("control issued no run token")?.to_owned();

    let proxy = tokio::task::spawn_blocking(move || Proxy::start(config))
        .await
        .context("starting the proxy")?
        .context("cannot start the proxy")?;
    println!("Hello Fleet");
    println!(
        "  control   http://{}  ({} database in {})",
        control_running.addr,
        control_running.backend.name(),
        absolute(&home).display()
    );
    println!("  proxy     {}  (CA {})", proxy.forward, absolute(proxy.proxy.ca.ca_path()).display());
    println!("  upstream  {}  (fake {LLM_HOST}, {TOOL_HOST}, {MCP_HOST})", upstream.addr);
    println!("  run       {run}  (budget: {BUDGET_CALLS} calls, {TOKENS_PER_MINUTE} tokens/min)");
    println!();
    println!("The agent calls through the proxy (HTTPS_PROXY, TLS intercepted):");

    let mut checks = Checks::default();
    let recorded = flow(&proxy, &run, &run_token).await?;
    proxy.shutdown().await; // drains every receipt to control
    check_flow(&recorded, &run, &mut checks);

    println!();
    println!("Receipts at control (fleetforge-ctl receipts {run}):");
    crate::show::receipts(&c, &run, false).await?;
    let receipts = all_receipts(&c, &run).await?;
    check_receipts(&recorded, &receipts, &mut checks);

    println!();
    println!("Verification (fleetforge-ctl verify {run}):");
    let verified = c.get(&format!("/v1/runs/{run}/verify")).await?;
    checks.add(
        "run verifies",
        verified["ok"] == true && verified["checked"].as_u64() == Some(recorded.len() as u64),
        format!("{} receipts: signatures, chain, seq; problems {}", verified["checked"], verified["problems"]),
    );
    let tenant = c.get(&format!("/v1/runs/{run}")).await?["tenant"].as_str().unwrap_or("default").to_owned();
    let logged = crate::log::check(&c, &tenant, &receipts).await?;
    let detail = logged.lines.first().cloned().unwrap_or_default();
    checks.add(
        "every receipt is in the tenant's transparency log",
        !logged.failed && detail.contains(&format!(" {n} of {n} receipts included", n = receipts.len())),
        detail.trim_start_matches("log: ").to_owned(),
    );

    println!();
    println!(
        "Strict replay (fleetforge-ctl replay {run} --strict --timing recorded): a second proxy serves the sealed responses"
    );
    let replayed = replay(&c, replay_template, &home, &run, &budget, &upstream, &recorded, &mut checks).await?;

    println!();
    println!("Exports:");
    let vc_path = demo_dir.join(format!("{run}.vc.json"));
    match c.get(&format!("/v1/runs/{run}/export/vc")).await {
        Ok(vc) => {
            std::fs::write(&vc_path, serde_json::to_vec_pretty(&vc)?)
                .with_context(|| format!("writing {}", vc_path.display()))?;
            checks.add(
                "run exported as a verifiable credential",
                vc["proof"].is_object() || vc["proof"].is_array(),
                format!("{}", absolute(&vc_path).display()),
            );
        }
        Err(e) => checks.add("run exported as a verifiable credential", false, e.to_string()),
    }
    let bundle_dir = demo_dir.join(format!("{run}.bundle"));
    let bundled = match crate::bundle::export(&c, &run, &bundle_dir).await {
        Ok(()) => crate::bundle::check(&bundle_dir),
        Err(e) => Err(e),
    };
    match bundled {
        Ok(report) => checks.add(
            "run exported as an evidence bundle that verifies offline",
            report.failed.is_empty(),
            match report.failed.first() {
                Some((what, why)) => format!("{what}: {why}"),
                None => format!(
                    "{} (receipts, log proofs, C2PA manifest, SCITT statement, AIBOM, credential): {} checks passed",
                    absolute(&bundle_dir).display(),
                    report.passed.len()
                ),
            },
        ),
        Err(e) => checks.add("run exported as an evidence bundle that verifies offline", false, format!("{e:#}")),
    }
    let secret_free = receipts.iter().chain(replayed.iter()).all(|r| !r.to_string().contains(API_KEY));
    checks.add(
        "no receipt holds the agent's API key",
        secret_free,
        format!("{} receipts searched for the key the agent sent", receipts.len() + replayed.len()),
    );

    drop(upstream);
    println!();
    let failed: Vec<&Check> = checks.0.iter().filter(|c| !c.ok).collect();
    let code = if failed.is_empty() {
        println!("Hello Fleet: all {} checks passed.", checks.0.len());
        ExitCode::SUCCESS
    } else {
        println!("Hello Fleet: {} of {} checks FAILED:", failed.len(), checks.0.len());
        for f in failed {
            println!("  - {}: {}", f.name, f.detail);
        }
        ExitCode::FAILURE
    };
    if serve {
        let login = c.login_url("/demo").await?;
        println!();
        println!("Web view: {login}");
        println!("  (one-time login URL, good for 10 minutes; `fleetforge-ctl login --next /demo` prints another)");
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await.context("cannot watch Ctrl-C")?;
    } else {
        println!(
            "The run stays in {}: `fleetforge-ctl up` there serves it, and prints a login URL for the web view (then open /demo).",
            absolute(&home).display()
        );
    }
    control_running.shutdown().await;
    Ok(code)
}

/// Writes the built-in packs under `dir`, one directory each.
fn write_packs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (name, manifest, module) in PACKS {
        let pack = dir.join(name);
        std::fs::create_dir_all(&pack).with_context(|| format!("creating {}", pack.display()))?;
        std::fs::write(pack.join("pack.toml"), manifest)?;
        std::fs::write(pack.join(format!("{name}.wasm")), module)?;
        out.push(pack);
    }
    Ok(out)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn chat(prompt: &str, model: &str, max_tokens: u64, stream: bool) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "stream": stream,
           "messages": [{"role": "system", "content": "You are a travel assistant."}, {"role": "user", "content": prompt}]})
}

fn mcp_call(id: u64, tool: &str, query: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"query": query}}})
}

/// The agent's calls, in order, through the proxy at `proxy` as `run`.
async fn flow(proxy: &Running, run: &str, token: &str) -> anyhow::Result<Vec<Outcome>> {
    let agent = Agent::new(proxy.forward, run, token, proxy.proxy.ca.ca_path())?;
    let completions = "/v1/chat/completions";
    let steps: Vec<(&'static str, Method, &str, String, Option<Value>)> = vec![
        (
            "plan",
            Method::POST,
            LLM_HOST,
            completions.into(),
            Some(chat("Plan a day in Oslo", "gpt-4o-mini", 128, false)),
        ),
        (
            "stream",
            Method::POST,
            LLM_HOST,
            completions.into(),
            Some(chat("Plan an evening in Oslo", "gpt-4o-mini", 128, true)),
        ),
        ("weather", Method::GET, TOOL_HOST, "/weather?city=Oslo".into(), None),
        ("search", Method::POST, MCP_HOST, "/mcp".into(), Some(mcp_call(1, "search_docs", "Oslo packing list"))),
        ("delete", Method::POST, MCP_HOST, "/mcp".into(), Some(mcp_call(2, "delete_repo", "travel-notes"))),
        // Reserves a whole minute of the rate SLO, so it waits for what the calls above used.
        (
            "summary",
            Method::POST,
            LLM_HOST,
            completions.into(),
            Some(chat("Summarize the day", "gpt-4o", TOKENS_PER_MINUTE, false)),
        ),
        ("extra", Method::POST, LLM_HOST, completions.into(), Some(chat("One more idea", "gpt-4o-mini", 64, false))),
    ];
    let mut out = Vec::new();
    for (i, (step, method, host, path, body)) in steps.into_iter().enumerate() {
        let what = match body.as_ref().and_then(|b| b["params"]["name"].as_str()) {
            Some(tool) => format!("MCP tools/call {tool} https://{host}{path}"),
            None => format!("{method} https://{host}{path}"),
        };
        let started = Instant::now();
        let answer = agent
            .call(step, method, host, &path, body.as_ref())
            .await
            .with_context(|| format!("step {step}: {what}"))?;
        let took = started.elapsed();
        println!("  {:>2} {step:<8} {what:<62} {}  {}", i + 1, answer.status, summary(&answer, took));
        out.push(Outcome { step, answer, took });
    }
    Ok(out)
}

/// One line on what a call got back.
fn summary(answer: &Answer, took: Duration) -> String {
    let json = answer.json();
    if let Some(error) = json["error"].as_object() {
        let reasons: Vec<&str> =
            error.get("reasons").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let mut line = format!(
            "{}: {}",
            error.get("type").and_then(Value::as_str).unwrap_or("error"),
            error.get("message").and_then(Value::as_str).unwrap_or_default()
        );
        if reasons.iter().any(|r| !line.contains(r)) {
            line = format!("{line} [{}]", reasons.join("; "));
        }
        return line;
    }
    if answer.chunks.len() > 1 && answer.body().starts_with(b"data:") {
        return format!("streamed {} chunks in {:.0} ms", answer.chunks.len(), took.as_secs_f64() * 1e3);
    }
    if let Some(text) = json["choices"][0]["message"]["content"].as_str() {
        return format!("{:.50}… ({:.0} ms)", text, took.as_secs_f64() * 1e3);
    }
    if json["capability"]["verified"] == true {
        return format!(
            "the tool verified the call's capability offline (run {})",
            json["capability"]["run"].as_str().unwrap_or("?")
        );
    }
    if let Some(text) = json["result"]["content"][0]["text"].as_str() {
        return format!("{text:.60}");
    }
    format!("{} bytes", answer.body().len())
}

fn outcome<'a>(flow: &'a [Outcome], step: &str) -> Option<&'a Outcome> {
    flow.iter().find(|o| o.step == step)
}

fn check_flow(flow: &[Outcome], run: &str, checks: &mut Checks) {
    println!();
    println!("Checks:");
    let status = |step: &str| outcome(flow, step).map_or(0, |o| o.answer.status);
    let plan = outcome(flow, "plan").map(|o| o.answer.json()).unwrap_or_default();
    checks.add(
        "LLM call answered",
        status("plan") == 200 && plan["choices"][0]["message"]["content"].is_string(),
        format!("status {}", status("plan")),
    );
    let stream = outcome(flow, "stream").map(|o| o.answer.body()).unwrap_or_default();
    let stream_text = String::from_utf8_lossy(&stream);
    checks.add(
        "streamed LLM call arrived chunk by chunk",
        status("stream") == 200
            && stream_text.ends_with("data: [DONE]\n\n")
            && outcome(flow, "stream").is_some_and(|o| o.answer.chunks.len() > 5),
        format!("status {}, {} chunks", status("stream"), outcome(flow, "stream").map_or(0, |o| o.answer.chunks.len())),
    );
    let weather = outcome(flow, "weather").map(|o| o.answer.json()).unwrap_or_default();
    checks.add(
        "tool verified its per-call capability offline",
        status("weather") == 200 && weather["capability"]["verified"] == true && weather["capability"]["run"] == run,
        format!("status {}, {}", status("weather"), weather["capability"]),
    );
    let search = outcome(flow, "search").map(|o| o.answer.json()).unwrap_or_default();
    checks.add(
        "MCP tools/call answered",
        status("search") == 200 && search["result"]["content"].is_array(),
        format!("status {}", status("search")),
    );
    let denied = outcome(flow, "delete").map(|o| o.answer.json()).unwrap_or_default();
    checks.add(
        "MCP call denied by the mcp-tools policy pack",
        status("delete") == 403
            && denied["error"]["type"] == "policy_denied"
            && denied["error"]["reasons"].to_string().contains("delete_repo"),
        format!("status {}, reasons {}", status("delete"), denied["error"]["reasons"]),
    );
    let summary_took = outcome(flow, "summary").map_or(Duration::ZERO, |o| o.took);
    checks.add(
        "call throttled by the rate SLO, then served",
        status("summary") == 200 && summary_took > Duration::from_millis(500),
        format!("status {}, answered after {:.1} s", status("summary"), summary_took.as_secs_f64()),
    );
    let refused = outcome(flow, "extra").map(|o| o.answer.json()).unwrap_or_default();
    checks.add(
        "call refused for the run's budget",
        status("extra") == 429 && refused["error"]["type"] == "budget_exceeded",
        format!("status {}, {}", status("extra"), refused["error"]["message"].as_str().unwrap_or_default()),
    );
}

/// Every receipt of `run` at control, in order.
async fn all_receipts(c: &ControlClient, run: &str) -> anyhow::Result<Vec<Value>> {
    let page = c.get(&format!("/v1/runs/{run}/receipts?limit=1000")).await?;
    Ok(page["receipts"].as_array().cloned().unwrap_or_default())
}

fn check_receipts(flow: &[Outcome], receipts: &[Value], checks: &mut Checks) {
    let ids: Vec<&str> = receipts.iter().filter_map(|r| r["id"].as_str()).collect();
    let every = flow.iter().all(|o| o.answer.receipt.as_deref().is_some_and(|id| ids.contains(&id)));
    checks.add(
        "every call has its receipt at control",
        every && receipts.len() == flow.len(),
        format!("{} calls, {} receipts", flow.len(), receipts.len()),
    );
    let throttled = outcome(flow, "summary")
        .and_then(|o| o.answer.receipt.as_deref())
        .and_then(|id| receipts.iter().find(|r| r["id"] == id))
        .and_then(|r| r["budget"]["throttled_ms"].as_u64())
        .unwrap_or(0);
    checks.add(
        "the throttled call's receipt records the wait",
        throttled > 0,
        format!("budget.throttled_ms {throttled}"),
    );
}

/// Replays `run` strictly through a second proxy and checks it served everything from the seals.
#[allow(clippy::too_many_arguments)]
async fn replay(
    c: &ControlClient,
    mut config: Config,
    home: &Path,
    run: &str,
    budget: &Value,
    upstream: &upstream::Upstream,
    recorded: &[Outcome],
    checks: &mut Checks,
) -> anyhow::Result<Vec<Value>> {
    let replay_run = format!("{run}-replay");
    let created = c
        .post(
            "/v1/runs",
            &json!({"id": replay_run, "labels": {"replay_of": run, "replay_strict": "true"}, "budget": budget}),
        )
        .await
        .with_context(|| format!("creating the replay run {replay_run}"))?;
    let token = created["token"].as_str().context("control issued no run token for the replay")?.to_owned();
    config.home = home.join("replays").join(&replay_run);
    config.replay = Some(ReplayConfig {
        run: fleetforge_trust::RunId::new(run).map_err(|e| anyhow::anyhow!("{e}"))?,
        strict: true,
        // Chunks at their recorded offsets, so the stream arrives as a stream again.
        recorded_timing: true,
        local_seals: Some(home.join("seals")),
    });
    let connections = upstream.connections();
    // Starting a replaying proxy loads the manifest from control, which serves from this thread.
    let proxy = tokio::task::spawn_blocking(move || Proxy::start(config))
        .await
        .context("starting the replaying proxy")?
        .context("cannot start the replaying proxy")?;
    let replayed = flow(&proxy, &replay_run, &token).await?;
    proxy.shutdown().await;
    println!();
    let report = c.get(&format!("/v1/runs/{replay_run}/replay-report")).await?;
    println!("  replay of {run} as {replay_run} (strict)");
    println!(
        "  matched {}  missed {}  unused {}  token drift {}  verdict {}",
        report["matched"],
        report["missed"],
        report["unused"].as_array().map_or(0, Vec::len),
        report["token_drift"],
        report["verdict"].as_str().unwrap_or("?")
    );
    let sealed = recorded.iter().filter(|o| o.answer.status == 200).count() as u64;
    checks.add(
        "strict replay served every sealed call, 0 drift",
        report["matched"].as_u64() == Some(sealed)
            && report["missed"] == 0
            && report["unused"].as_array().is_some_and(Vec::is_empty)
            && report["token_drift"] == 0,
        format!(
            "matched {} of {sealed}, missed {}, drift {}",
            report["matched"], report["missed"], report["token_drift"]
        ),
    );
    let same = recorded.iter().zip(&replayed).all(|(a, b)| {
        a.answer.status == b.answer.status && (a.answer.status != 200 || a.answer.body() == b.answer.body())
    }) && recorded.len() == replayed.len();
    checks.add(
        "replayed answers are byte for byte the recorded ones",
        same,
        format!("{} calls compared", replayed.len()),
    );
    let stream_chunks = |f: &[Outcome]| outcome(f, "stream").map_or(0, |o| o.answer.chunks.len());
    checks.add(
        "the stream was replayed chunk by chunk",
        stream_chunks(&replayed) > 5,
        format!("{} chunks recorded, {} replayed", stream_chunks(recorded), stream_chunks(&replayed)),
    );
    let virtual_time = outcome(&replayed, "plan").and_then(|o| o.answer.virtual_time.clone());
    checks.add(
        "replayed responses carry the recorded time",
        virtual_time.is_some(),
        format!("x-fleetforge-virtual-time {}", virtual_time.as_deref().unwrap_or("missing")),
    );
    checks.add(
        "strict replay opened no upstream connection",
        upstream.connections() == connections,
        format!("{} connections before, {} after", connections, upstream.connections()),
    );
    all_receipts(c, &replay_run).await
}
