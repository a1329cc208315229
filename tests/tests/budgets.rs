//! Budgets end to end: control signs a run's budget into its token, the proxy reserves every call
//! against it before forwarding, refuses what does not fit with 429, caps output limits, settles
//! to the upstream's usage, throttles to rate SLOs, and records it all in the receipts.
//!
//! Real control (SQLite), real proxy, real curl through intercepted TLS; the upstream is the
//! in-process fake, which like a real provider never outputs more than the request's limit.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fleetforge_e2e::harness::{ControlProcess, Database, binary};
use fleetforge_e2e::upstream::{CHUNKS_HEADER, IGNORE_LIMIT_HEADER, TOKENS_PER_PIECE, completion_text, prompt_tokens};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::{Value, json};

const CHAT: &str = "https://api.openai.com/v1/chat/completions";
const OPENAI: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";
const GEMINI: &str = "generativelanguage.googleapis.com";

struct Stack {
    dir: tempfile::TempDir,
    upstream: Upstream,
    control: ControlProcess,
    proxy: ProxyProcess,
    db: Database,
    clients: Clients,
    calls: std::sync::atomic::AtomicUsize,
    ca_pem: std::path::PathBuf,
    env: Vec<(String, String)>,
}

fn start_proxy(
    home: &std::path::Path,
    ca_pem: &std::path::Path,
    control: &ControlProcess,
    upstream: &Upstream,
    env: &[(String, String)],
) -> ProxyProcess {
    let mut b = ProxyProcess::builder()
        .home(home)
        .upstream_ca(ca_pem)
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        .env("FLEETFORGE_INTERCEPT", format!("{OPENAI},{ANTHROPIC},{GEMINI}"))
        .resolve(OPENAI, upstream.addr())
        .resolve(ANTHROPIC, upstream.addr())
        .resolve(GEMINI, upstream.addr());
    for (k, v) in env {
        b = b.env(k, v.clone());
    }
    b.start().unwrap()
}

async fn stack(env: &[(&str, &str)]) -> Stack {
    stack_on(Database::fresh(false).unwrap(), env).await
}

async fn stack_on(db: Database, env: &[(&str, &str)]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[OPENAI, ANTHROPIC, GEMINI]).record(true).start().await.unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let ca_pem = ca.pem_path().to_owned();
    let proxy = start_proxy(&dir.path().join("proxy-home"), &ca_pem, &control, &upstream, &env);
    Stack { dir, upstream, control, proxy, db, clients: Clients::locate(), calls: Default::default(), ca_pem, env }
}

/// One call's outcome as curl saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
    took: Duration,
}

impl Stack {
    /// Kills the proxy (no shutdown) and starts it again on the same home.
    fn kill_and_restart(&mut self) {
        self.proxy.kill();
        self.proxy =
            start_proxy(&self.dir.path().join("proxy-home"), &self.ca_pem, &self.control, &self.upstream, &self.env);
    }

    fn create_run(&self, budget: Value) -> (String, String) {
        let body = json!({ "budget": budget }).to_string();
        let (status, created) = self.control.api("POST", "/v1/runs", &self.control.token, Some(&body)).unwrap();
        assert_eq!(status, 201, "{created}");
        (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned())
    }

    /// The environment of an unmodified SDK that calls through the proxy as `run`.
    fn sdk_env(&self, run: &str, token: &str) -> Vec<(String, String)> {
        let url = self.proxy.proxy_url(run, token);
        let bundle = self.proxy.bundle.display().to_string();
        [
            ("HTTPS_PROXY", url),
            ("SSL_CERT_FILE", bundle),
            ("OPENAI_BASE_URL", "https://api.openai.com/v1".into()),
            ("OPENAI_API_KEY", "sk-test".into()),
            ("ANTHROPIC_BASE_URL", "https://api.anthropic.com".into()),
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Runs a client script under `tests/clients` with `args` as `run`; its JSON lines.
    async fn sdk(&self, script: &str, args: &[&str], run: &str, token: &str) -> Vec<Value> {
        let env = self.sdk_env(run, token);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.clients.python(script, args, &env).await.unwrap().ok().unwrap().json_lines().unwrap()
    }

    /// POSTs `body` to the chat API through the proxy as `run`, with extra request `headers`.
    async fn call(&self, run: &str, token: &str, body: &Value, headers: &[&str]) -> Answer {
        self.call_via(&self.proxy, run, token, body, headers).await
    }

    /// [`Stack::call`] through `proxy`.
    async fn call_via(&self, proxy: &ProxyProcess, run: &str, token: &str, body: &Value, headers: &[&str]) -> Answer {
        self.post_via(proxy, CHAT, run, token, body, headers).await
    }

    /// POSTs `body` to `url` through `proxy` as `run`.
    async fn post_via(
        &self,
        proxy: &ProxyProcess,
        url: &str,
        run: &str,
        token: &str,
        body: &Value,
        headers: &[&str],
    ) -> Answer {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.dir.path().join(format!("out-{n}"));
        let head = self.dir.path().join(format!("head-{n}"));
        let env =
            [("HTTPS_PROXY", proxy.proxy_url(run, token)), ("CURL_CA_BUNDLE", proxy.bundle.display().to_string())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = body.to_string();
        let mut args = vec![
            "-o",
            out.to_str().unwrap(),
            "-D",
            head.to_str().unwrap(),
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(url);
        let started = Instant::now();
        let output = self.clients.curl(&args, &env).await.unwrap();
        let took = started.elapsed();
        let status = output.stdout.trim().parse().unwrap_or(0);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let head = std::fs::read_to_string(&head).unwrap_or_default();
        let retry_after = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().parse().unwrap()));
        Answer { status, retry_after, body: serde_json::from_str(&text).unwrap_or(Value::String(text)), took }
    }
}

fn chat(content: &str, max_tokens: Option<u64>) -> Value {
    let mut body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]});
    if let Some(n) = max_tokens {
        body["max_tokens"] = n.into();
    }
    body
}

/// Input tokens the proxy estimates for `chat(content, _)`: OpenAI's framing around the content.
fn estimate(content_tokens: u64) -> u64 {
    // 3 per message + "user" (1 token) + content + 3 to prime the reply.
    3 + 1 + content_tokens + 3
}

fn usage_tokens(receipt: &Value) -> u64 {
    let u = &receipt["usage"];
    u["input_tokens"].as_u64().unwrap_or(0) + u["output_tokens"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_never_spend_past_the_budget_and_the_rest_are_refused_unforwarded() {
    let s = stack(&[]).await;
    // "hello there" is 2 tokens: each call reserves its input estimate + 15 output tokens, and the
    // budget fits exactly 10 such reservations.
    let per_call = estimate(2) + 15;
    let budget = 10 * per_call;
    let (run, token) = s.create_run(json!({ "tokens": budget }));
    let body = chat("hello there", Some(15));
    // Each call streams slowly, so the calls overlap and hold their reservations together.
    let calls = (0..64).map(|_| s.call(&run, &token, &body, &["x-test-chunk-delay-ms: 150"]));
    let answers = futures_join_all(calls).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(ok + refused.len(), 64, "every call is either served or refused: {answers:?}");
    assert!(ok >= 10, "10 reservations fit the budget, so at least 10 calls are served; {ok} were");
    for a in &refused {
        assert_eq!(a.body["error"]["type"], "budget_exceeded", "{:?}", a.body);
        assert!(a.body["error"]["receipt_id"].is_string());
    }
    // Refused calls never reached the upstream.
    assert_eq!(s.upstream.requests().len(), ok, "only admitted calls are forwarded");
    let receipts = s.control.receipts(&run, 64).unwrap();
    let used: u64 = receipts.iter().map(usage_tokens).sum();
    assert!(used <= budget, "recorded usage {used} is over the budget {budget}");
    let served: Vec<&Value> = receipts.iter().filter(|r| r["usage"].is_object()).collect();
    assert_eq!(served.len(), ok);
    for r in &served {
        let b = &r["budget"];
        assert_eq!(b["tokens_limit"], budget, "{b}");
        // A call that came when less than a whole reservation remained was let through with its
        // output capped to what remained.
        let reserved = b["reserved_tokens"].as_u64().unwrap();
        assert!(reserved == per_call || (reserved < per_call && b["output_cap"].is_u64()), "{b}");
        assert!(b["tokens_left"].as_u64().unwrap() <= budget - usage_tokens(r), "{b}");
    }
    // The run's gauges on the proxy agree with the receipts.
    let (_, metrics) = s.proxy.admin_get("/metrics").unwrap();
    let remaining = format!("fleetforge_budget_tokens_remaining{{run=\"{run}\"}} {}", budget - used);
    assert!(metrics.contains(&remaining), "{remaining}: {metrics}");
    assert!(metrics.contains(&format!("fleetforge_budget_tokens_reserved{{run=\"{run}\"}} 0")), "{metrics}");
    // A call refused while others were in flight is told when to retry.
    assert!(refused.iter().any(|a| a.retry_after == Some(1)), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_limit_is_capped_to_what_remains_and_usage_settles_exactly() {
    let s = stack(&[]).await;
    let budget = 60;
    let (run, token) = s.create_run(json!({ "tokens": budget }));
    // No max_tokens: the proxy sets max_completion_tokens to what remains after the input.
    let first = s.call(&run, &token, &chat("hello there", None), &["x-test-chunks: 4"]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let sent: Value = serde_json::from_slice(&s.upstream.last_request().unwrap().body).unwrap();
    let cap = budget - estimate(2);
    assert_eq!(sent["max_completion_tokens"], cap, "{sent}");
    let receipt = &s.control.receipts(&run, 1).unwrap()[0];
    let b = &receipt["budget"];
    assert_eq!((b["output_cap"].as_u64(), b["reserved_tokens"].as_u64()), (Some(cap), Some(budget)), "{b}");
    // Settled to what the upstream reported, not to the reservation.
    let used = usage_tokens(receipt);
    assert_eq!(b["tokens_left"].as_u64(), Some(budget - used), "{b}");
    assert_eq!(b["tokens_before"], 0);
    // A request that asks for more than remains is capped too, and never gets more than remains.
    let second = s.call(&run, &token, &chat("hello there", Some(1000)), &["x-test-chunks: 50"]).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    let receipts = s.control.receipts(&run, 2).unwrap();
    let total: u64 = receipts.iter().map(usage_tokens).sum();
    assert!(total <= budget, "{total} > {budget}");
    assert_eq!(receipts[1]["budget"]["tokens_before"], used);

    // Control shows the run's budget against what its receipts used, and so does the CLI.
    let (status, shown) = s.control.api("GET", &format!("/v1/runs/{run}"), &s.control.token, None).unwrap();
    assert_eq!(status, 200);
    let expected = json!({"limit": budget, "used": total, "remaining": budget - total});
    assert_eq!(shown["budget_state"]["tokens"], expected, "{shown}");
    let out = std::process::Command::new(binary("fleetforge-ctl"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEETFORGE_CONTROL_URL", s.control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", &s.control.token)
        .args(["budget", &run, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tokens"], expected, "{report}");
    assert_eq!((report["calls"]["used"].as_u64(), report["refused_calls"].as_u64()), (Some(2), Some(0)), "{report}");
    assert!(report["burn_tokens_per_minute"].as_f64().is_some_and(|b| b > 0.0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_usage_is_charged_its_whole_reservation_and_marked_estimated() {
    let s = stack(&[]).await;
    let budget = 1000;
    let (run, token) = s.create_run(json!({ "tokens": budget }));
    let a = s.call(&run, &token, &chat("hello there", Some(30)), &["x-test-no-usage: 1"]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let receipt = &s.control.receipts(&run, 1).unwrap()[0];
    let b = &receipt["budget"];
    let reserved = estimate(2) + 30;
    assert_eq!(b["estimated"], true, "{b}");
    assert_eq!(b["reserved_tokens"], reserved);
    assert_eq!(b["tokens_left"], budget - reserved, "charged in full: {b}");
    assert!(receipt["usage"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_budgets_refuse_for_good_and_rate_slos_make_calls_wait_then_refuse() {
    let s = stack(&[("FLEETFORGE_BUDGET_MAX_WAIT", "15s")]).await;
    // A calls budget: the third call is refused, with no Retry-After (waiting cannot help).
    let (run, token) = s.create_run(json!({ "calls": 2 }));
    for _ in 0..2 {
        assert_eq!(s.call(&run, &token, &chat("hi", Some(3)), &[]).await.status, 200);
    }
    let third = s.call(&run, &token, &chat("hi", Some(3)), &[]).await;
    assert_eq!((third.status, third.retry_after), (429, None), "{:?}", third.body);
    assert!(third.body["error"]["message"].as_str().unwrap().contains("2 calls"), "{:?}", third.body);

    // 10 calls per minute: the bucket starts full, so the 11th call waits for the bucket to refill
    // (6 s a call, less the little the first 10 took).
    let (slow, token) = s.create_run(json!({ "calls_per_minute": 10 }));
    let run = slow.clone();
    for _ in 0..10 {
        let a = s.call(&run, &token, &chat("hi", Some(3)), &[]).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let waited = s.call(&run, &token, &chat("hi", Some(3)), &[]).await;
    assert_eq!(waited.status, 200, "{:?}", waited.body);
    assert!(waited.took >= Duration::from_secs(3), "the 11th call waited {:?}", waited.took);
    let receipts = s.control.receipts(&run, 11).unwrap();
    let throttled: Vec<u64> = receipts.iter().map(|r| r["budget"]["throttled_ms"].as_u64().unwrap()).collect();
    assert!(throttled[10] >= 3000, "{throttled:?}");
    assert!(throttled[..10].iter().all(|t| *t < 1000), "{throttled:?}");

    // One call per minute: the second would wait ~60 s, longer than max_wait (15 s), so it is refused at
    // once with the time it would have had to wait.
    let (run, token) = s.create_run(json!({ "calls_per_minute": 1 }));
    assert_eq!(s.call(&run, &token, &chat("hi", Some(3)), &[]).await.status, 200);
    let over = s.call(&run, &token, &chat("hi", Some(3)), &[]).await;
    assert_eq!(over.status, 429, "{:?}", over.body);
    assert!(over.retry_after.is_some_and(|r| (50..=60).contains(&r)), "{:?}", over.retry_after);
    assert!(over.took < Duration::from_secs(4), "refused without waiting: {:?}", over.took);
    let (_, metrics) = s.proxy.admin_get("/metrics").unwrap();
    assert!(metrics.contains("fleetforge_budget_refused_total 2"), "{metrics}");
    // The throttled run's gauges: one call waited, for seconds; nothing waits now.
    let gauge = |name: &str| -> f64 {
        let prefix = format!("{name}{{run=\"{slow}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix}: {metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(gauge("fleetforge_budget_throttled_calls_total"), 1.0);
    assert!(gauge("fleetforge_budget_wait_seconds_total") >= 3.0);
    assert_eq!(gauge("fleetforge_budget_queue_depth"), 0.0);
    assert_eq!(gauge("fleetforge_budget_calls_admitted_total"), 11.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_proxy_remembers_what_the_run_spent() {
    let mut s = stack(&[]).await;
    let per_call = estimate(2) + 15;
    // Room for three calls' reservations, and for two calls' actual use (18 tokens each) plus one.
    let (run, token) = s.create_run(json!({ "tokens": 2 * 18 + per_call, "calls": 3 }));
    for _ in 0..2 {
        let a = s.call(&run, &token, &chat("hello there", Some(15)), &[]).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    s.kill_and_restart();
    // The restarted proxy starts from the spend its spool recorded: one more call fits, then the
    // calls budget is spent.
    let third = s.call(&run, &token, &chat("hello there", Some(15)), &[]).await;
    assert_eq!(third.status, 200, "{:?}", third.body);
    let receipts = s.control.receipts(&run, 3).unwrap();
    assert_eq!(receipts[2]["budget"]["tokens_before"], 36, "{}", receipts[2]["budget"]);
    let fourth = s.call(&run, &token, &chat("hello there", Some(15)), &[]).await;
    assert_eq!(fourth.status, 429, "{:?}", fourth.body);
    assert!(fourth.body["error"]["message"].as_str().unwrap().contains("3 calls"), "{:?}", fourth.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_control_stopped_the_proxy_still_never_spends_past_the_budget() {
    let mut s = stack(&[]).await;
    let budget = 100;
    let (run, token) = s.create_run(json!({ "tokens": budget }));
    // The first call verifies the token (root keys are fetched from control and kept).
    let first = s.call(&run, &token, &chat("hello there", Some(15)), &[]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    s.control.kill();
    let mut spent = first.body["usage"]["total_tokens"].as_u64().unwrap();
    let mut refused = 0;
    for _ in 0..10 {
        let a = s.call(&run, &token, &chat("hello there", Some(15)), &[]).await;
        match a.status {
            200 => spent += a.body["usage"]["total_tokens"].as_u64().unwrap(),
            429 => refused += 1,
            other => panic!("status {other}: {:?}", a.body),
        }
    }
    // The budget rides in the token and the proxy spends only the slice it holds, so enforcing it
    // needs no control: what the upstream says it spent stays within the budget, and the rest is
    // refused.
    assert!(spent <= budget, "the upstream reported {spent} tokens against a budget of {budget}");
    assert!(refused > 0, "the budget ran out within 11 calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_sharing_a_run_on_postgres_never_spend_past_its_budget_together() {
    let s = stack_on(Database::fresh(true).unwrap(), &[("FLEETFORGE_BUDGET_LEASE_IDLE", "1s")]).await;
    let second = start_proxy(&s.dir.path().join("proxy-home-2"), &s.ca_pem, &s.control, &s.upstream, &s.env);
    let per_call = estimate(2) + 15;
    let budget = 10 * per_call;
    let (run, token) = s.create_run(json!({ "tokens": budget }));
    let body = chat("hello there", Some(15));
    // Half the calls through each proxy, all at once; alone, each proxy would admit 10.
    let proxies = [&s.proxy, &second];
    let calls = (0..64).map(|i| s.call_via(proxies[i % 2], &run, &token, &body, &["x-test-chunk-delay-ms: 150"]));
    let answers = futures_join_all(calls).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(ok + refused, 64, "{answers:?}");
    for i in 0..2 {
        let served = answers.iter().skip(i).step_by(2).filter(|a| a.status == 200).count();
        assert!(served > 0, "proxy {i} served none of its calls");
    }
    // A proxy refuses only once control has nothing left to lease, so the two together hold the
    // whole budget and at most one reservation's worth each of it goes unspent by then.
    assert!(ok >= 10, "{ok} calls served");
    assert_eq!(s.upstream.requests().len(), ok, "only admitted calls are forwarded");
    let receipts = s.control.receipts(&run, 64).unwrap();
    let used: u64 = receipts.iter().map(usage_tokens).sum();
    assert!(used <= budget, "the fleet's recorded usage {used} is over the budget {budget}");
    assert_eq!(receipts.iter().filter(|r| r["usage"].is_object()).count(), ok);

    // Control shows both holders; once the run is idle they give back what they did not spend.
    let path = format!("/v1/runs/{run}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let leases = loop {
        let (status, shown) = s.control.api("GET", &path, &s.control.token, None).unwrap();
        assert_eq!(status, 200, "{shown}");
        let leases = shown["budget_state"]["leases"].clone();
        let holders = leases["holders"].as_array().cloned().unwrap_or_default();
        assert!(leases["leased"]["tokens"].as_u64().unwrap() <= budget, "{leases}");
        if holders.len() == 2 && holders.iter().all(|h| h["held"] == h["committed"]) {
            break leases;
        }
        assert!(Instant::now() < deadline, "unused slices were not given back: {leases}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(leases["leased"]["tokens"].as_u64(), Some(used), "what is held once idle is what was used: {leases}");
    let sql = format!("SELECT count(*) FROM budget_leases WHERE run_id = '{run}'");
    assert_eq!(s.db.execute(&s.control.home, &sql).unwrap().trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_past_what_is_held_when_control_is_unreachable_and_flags_the_receipts() {
    let mut s = stack(&[("FLEETFORGE_BUDGET_ON_CONTROL_UNREACHABLE", "fail_open")]).await;
    let (run, token) = s.create_run(json!({ "tokens": 1000 }));
    let first = s.call(&run, &token, &chat("hello there", Some(15)), &[]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    // The first lease holds 22 + 1000/16 tokens: about four calls. Control goes away.
    let addr = s.control.addr;
    s.control.kill();
    for _ in 0..6 {
        let a = s.call(&run, &token, &chat("hello there", Some(15)), &[]).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    assert!(s.proxy.logs().contains("fail_open"), "a WARN says the fleet limit is not enforced: {}", s.proxy.logs());
    // Control comes back: the spool ships the receipts, and those admitted past the lease say so.
    s.control = ControlProcess::start(&s.db, &s.control.home.clone(), Some(addr)).unwrap();
    let receipts = s.control.receipts(&run, 7).unwrap();
    let unleased = receipts.iter().filter(|r| r["budget"]["unleased"] == true).count();
    assert!((1..=6).contains(&unleased), "{unleased} receipts flagged: {receipts:?}");
    assert!(receipts[0]["budget"].get("unleased").is_none(), "the first call was leased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_reservation_is_cut_cleanly_and_the_sdks_see_a_finished_stream() {
    let s = stack(&[]).await;
    let budget = 1000;
    let (run, token) = s.create_run(json!({ "tokens": budget }));
    let ignore = format!("{IGNORE_LIMIT_HEADER}=1");
    let many = format!("{CHUNKS_HEADER}=40");

    // A provider that honours the output limit: the stream ends on its own, uncut.
    let lines = s.sdk("py_openai.py", &["--stream", "--max-tokens", "15", "--header", &many], &run, &token).await;
    let done = lines.last().unwrap();
    assert_eq!((done["finish_reason"].as_str(), done["content"].as_str()), (Some("stop"), Some(&*completion_text(5))));
    let receipt = &s.control.receipts(&run, 1).unwrap()[0];
    assert!(receipt["budget"].get("truncated").is_none(), "{}", receipt["budget"]);

    // One that ignores it: the proxy ends the stream in OpenAI's own format once it would pass
    // the 15 output tokens reserved; the SDK sees a finished stream cut for length.
    let args = ["--stream", "--max-tokens", "15", "--header", &many, "--header", &ignore];
    let lines = s.sdk("py_openai.py", &args, &run, &token).await;
    let done = lines.last().unwrap();
    assert_eq!(done["finish_reason"], "length", "{lines:?}");
    let content = done["content"].as_str().unwrap();
    assert!(completion_text(40).starts_with(content) && content.len() < completion_text(40).len(), "{content}");
    let receipts = s.control.receipts(&run, 2).unwrap();
    let b = &receipts[1]["budget"];
    assert_eq!((b["truncated"].as_bool(), b["estimated"].as_bool()), (Some(true), Some(true)), "{b}");
    let used_before = budget - receipts[0]["budget"]["tokens_left"].as_u64().unwrap();
    let reserved = b["reserved_tokens"].as_u64().unwrap();
    assert_eq!(b["tokens_left"].as_u64(), Some(budget - used_before - reserved), "charged its whole reservation: {b}");

    // Anthropic's SDK: the stream ends with stop_reason max_tokens and message_stop.
    let args = ["--stream", "--max-tokens", "12", "--header", &many, "--header", &ignore];
    let lines = s.sdk("py_anthropic.py", &args, &run, &token).await;
    let done = lines.last().unwrap();
    assert_eq!(done["stop_reason"], "max_tokens", "{lines:?}");
    let types: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    assert_eq!(types.last(), Some(&"message_stop"), "{types:?}");
    assert!(types.contains(&"content_block_stop"), "{types:?}");
    let receipts = s.control.receipts(&run, 3).unwrap();
    assert_eq!(receipts[2]["budget"]["truncated"], true, "{}", receipts[2]["budget"]);
    assert!(s.upstream.requests().len() == 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_gemini_streams_are_counted_against_the_budget() {
    let s = stack(&[]).await;
    let budget = 500;
    let (run, token) = s.create_run(json!({ "tokens": budget }));
    // Anthropic, through its SDK: message_start's input and message_delta's final output count.
    let lines = s.sdk("py_anthropic.py", &["--stream", "--max-tokens", "30"], &run, &token).await;
    let usage = &lines.last().unwrap()["usage"];
    let anthropic = usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap();
    let receipt = &s.control.receipts(&run, 1).unwrap()[0];
    assert_eq!(usage_tokens(receipt), anthropic, "{}", receipt["usage"]);
    assert_eq!(receipt["budget"]["tokens_left"].as_u64(), Some(budget - anthropic), "{}", receipt["budget"]);

    // Gemini, over SSE: the last chunk's cumulative usageMetadata is what is charged.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]});
    let url = format!("https://{GEMINI}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
    let a = s.post_via(&s.proxy, &url, &run, &token, &body, &[&format!("{CHUNKS_HEADER}: 4")]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let text = a.body.as_str().unwrap();
    let last: Value =
        serde_json::from_str(text.trim().lines().last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    let gemini = last["usageMetadata"]["totalTokenCount"].as_u64().unwrap();
    assert_eq!(gemini, prompt_tokens(11) + 4 * TOKENS_PER_PIECE);
    let receipt = &s.control.receipts(&run, 2).unwrap()[1];
    assert_eq!(receipt["usage"]["provider"], "gemini");
    assert_eq!(usage_tokens(receipt), gemini, "{}", receipt["usage"]);
    assert_eq!(receipt["budget"]["tokens_left"].as_u64(), Some(budget - anthropic - gemini), "{}", receipt["budget"]);
    // The proxy capped the request in Gemini's own field.
    let sent: Value = serde_json::from_slice(&s.upstream.last_request().unwrap().body).unwrap();
    assert!(sent["generationConfig"]["maxOutputTokens"].as_u64().is_some(), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_budgets_are_refused_naming_the_member() {
    let s = stack(&[]).await;
    for (budget, member) in [
        (json!({"tokens": -1}), "budget.tokens"),
        (json!({"calls_per_minute": "many"}), "budget.calls_per_minute"),
        (json!({"wall_seconds": 1.5}), "budget.wall_seconds"),
        (json!({"cost_usd": -0.01}), "budget.cost_usd"),
    ] {
        let body = json!({ "budget": budget }).to_string();
        let (status, answer) = s.control.api("POST", "/v1/runs", &s.control.token, Some(&body)).unwrap();
        assert_eq!(status, 422, "{answer}");
        assert!(answer.to_string().contains(member), "{member}: {answer}");
    }
}

/// Awaits every future, concurrently.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.into_iter().map(|f| Box::pin(f)).collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    // Poll all futures together on this task.
    std::future::poll_fn(|cx| {
        let mut done = true;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out.push(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    out
}
