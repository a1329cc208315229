//! Fleet budgets: the slices of a run's budget this proxy leases from control
//! (`POST /v1/runs/{id}/budget/lease`).
//!
//! Several proxies can serve one run. Each holds a slice of the run's token, cost and call budget
//! and admits calls only against what it holds ([`crate::budget::reserve`] on the run's figures
//! with its limits lowered to the holding). A call that does not fit asks control for more: what
//! the call needs beyond what is free, plus one slice (`1 / proxy.budget.lease_slices` of the
//! limit), so a busy run asks about once per slice, not once per call. Control grants from what
//! no proxy holds, under the run's row lock, so the fleet together never holds more than the
//! budget: its overspend bound is zero. When a run has had no call in flight on this proxy for
//! `proxy.budget.lease_idle`, what it holds beyond its commitment (used + reserved) goes back.
//!
//! Calls of one run lease one at a time (the ledger's lease lock), and a call that leases asks
//! for the calls queued behind it too (as many times its own need), so a burst of calls waits for
//! one answer and then shares it. Once control has had too little to give, the run's
//! calls do not ask again for a second: a refusal is answered at once, while calls in flight
//! still hold their reservations (so its `Retry-After` can say when they will have settled). The holder is this proxy's receipt signing key id, so a
//! restarted proxy finds its holding again, and its spend from its spool ([`crate::runs::Resume`]).
//!
//! Control unreachable (network, timeout of [`TIMEOUT`], 5xx, or any refusal): the proxy spends
//! what it holds, then refuses with 429 `budget_exceeded` (`Retry-After: 1`) — or, with
//! `proxy.budget.on_control_unreachable = "fail_open"`, admits the call against the run's whole
//! budget on this proxy alone, logs a WARN once per run, and marks the receipt `unleased`.
//! Only limits the run's token carries are leased (control knows them); `[proxy.budget]`
//! defaults and the rate SLOs are enforced by each proxy on its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fleetforge_trust::RunId;
use fleetforge_trust::Secret;
use fleetforge_trust::wire::{Held, Lease, LeaseRequest, Slice};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{mpsc, oneshot};

use crate::budget::{self, Ask, Granted, Limits, Refusal};
use crate::runs::{RunLedger, RunState};

/// How long a lease request may take before control counts as unreachable.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Output tokens a call with no output limit (and a model of unknown `max_output`) leases for.
const DEFAULT_OUTPUT: u64 = 4096;
/// How long after a failed lease request a run's calls use what is held without asking again.
const RETRY_AFTER_FAILURE_MS: u64 = 1000;
/// How long after control had too little to lease a run's calls use what is held without asking
/// again (other proxies may give slices back meanwhile).
const DRY_FOR_MS: u64 = 1000;
/// How often idle runs are looked for to give back what they hold.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

type ControlClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How this proxy leases.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This proxy's holder id (its receipt signing key id).
    pub holder: String,
    /// A run's budget is leased in slices of `1 / slices` of it.
    pub slices: u64,
    /// Give back what an idle run holds after this long.
    pub idle: Duration,
    /// Admit against the whole budget when control is unreachable (else refuse).
    pub fail_open: bool,
}

/// The lease client: a thread of its own that talks to control.
#[derive(Debug)]
pub struct Leases {
    settings: Settings,
    jobs: mpsc::UnboundedSender<Job>,
}

enum Job {
    Lease { run: RunId, request: LeaseRequest, reply: oneshot::Sender<Result<Lease, String>> },
    Sweep(Box<dyn Fn() -> Option<Snapshot> + Send>),
}

/// What the idle sweep looks at: the clock ([`crate::runs::Runs::now_ms`]) and the runs that
/// hold a lease; `None` once the proxy has stopped.
pub type Snapshot = (u64, Vec<(RunId, Arc<RunLedger>)>);

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Lease { .. } => "Lease",
            Job::Sweep(_) => "Sweep",
        })
    }
}

/// A call admitted under a leased budget.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// What the call holds.
    pub granted: Granted,
    /// Admitted against the run's whole budget because control was unreachable (fail open).
    pub unleased: bool,
}

impl Leases {
    /// Starts the lease thread; it ends when every [`Leases`] handle is dropped.
    pub fn start(
        settings: Settings,
        base: Uri,
        token: Secret,
        tls: rustls::ClientConfig,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client: ControlClient =
            Client::builder(TokioExecutor::new()).timer(TokioTimer::new()).pool_timer(TokioTimer::new()).build(
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build(),
            );
        let (jobs, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Control { base, token, client });
        let thread = std::thread::Builder::new().name("fleetforge-lease".into()).spawn({
            let (holder, idle) = (settings.holder.clone(), settings.idle);
            move || runtime.block_on(serve(conn, rx, holder, idle))
        })?;
        Ok((Self { settings: settings.clone(), jobs }, thread))
    }

    /// Starts giving back what idle runs hold; `runs` lists them (`None` ends the sweep).
    pub fn sweep(&self, runs: impl Fn() -> Option<Snapshot> + Send + 'static) {
        let _ = self.jobs.send(Job::Sweep(Box::new(runs)));
    }

    /// Gives back what every run holds beyond its commitment (at shutdown, after the drain).
    pub async fn release_all(&self, runs: &crate::runs::Runs) {
        for (run, ledger) in runs.leased() {
            let committed = ledger.with_state(|s| committed(s));
            let request =
                LeaseRequest { holder: self.settings.holder.clone(), committed, want: Slice::default(), release: true };
            match self.ask(&run, request).await {
                Ok(lease) => ledger.with_state(|s| s.held = Some(lease.held)),
                Err(e) => {
                    tracing::warn!(run = %run, error = %e, "cannot give the run's unused budget slice back to control; it stays held until this proxy (same signing key) serves the run again")
                }
            }
        }
    }

    async fn ask(&self, run: &RunId, request: LeaseRequest) -> Result<Lease, String> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Lease { run: run.clone(), request, reply })
            .map_err(|_| "the lease thread has stopped".to_owned())?;
        answer.await.map_err(|_| "the lease thread has stopped".to_owned())?
    }

    /// Reserves what `ask` could cost against what this proxy holds of run `run`'s budget
    /// (`leased`: the limits its token carries; `limits`: those and the local ones), leasing
    /// more first when it does not fit. `now`: unix seconds, and the ledger clock's milliseconds.
    pub async fn reserve(
        &self,
        ledger: &RunLedger,
        run: &RunId,
        leased: &Limits,
        limits: &Limits,
        ask: &Ask,
        (now, now_ms): (u64, u64),
    ) -> Result<Admitted, Refusal> {
        let waiting = Waiting::enter(&ledger.lease_waiting);
        let _turn = ledger.lease.lock().await;
        // The calls queued behind this one: a burst asks for all of them at once.
        let behind = ledger.lease_waiting.load(Ordering::Relaxed).saturating_sub(1);
        drop(waiting);
        let need = need(leased, ask);
        let slices = self.settings.slices.max(1);
        let short = ledger.with_state(|s| shortfall(s, leased, &need, slices)).map(|want| {
            let more = |per_call: u64| per_call.saturating_mul(behind);
            Slice {
                tokens: want.tokens.saturating_add(more(need.tokens)),
                cost_micro_usd: want.cost_micro_usd.saturating_add(more(need.cost_micro_usd)),
                calls: want.calls.saturating_add(more(need.calls)),
            }
        });
        let mut failure = None;
        if let Some(want) = short {
            // After a failure, calls for the next second do not ask again (each would wait).
            let (recent, dry) = ledger.with_state(|s| {
                (s.lease_failure.clone().filter(|(until, _)| now_ms < *until), now_ms < s.lease_dry_until_ms)
            });
            if let Some((_, e)) = recent {
                failure = Some(e);
            } else if dry {
                // Control had nothing more a moment ago: what is held decides, without asking.
            } else {
                let request = LeaseRequest {
                    holder: self.settings.holder.clone(),
                    committed: ledger.with_state(|s| committed(s)),
                    want,
                    release: false,
                };
                match self.ask(run, request).await {
                    Ok(lease) => ledger.with_state(|s| {
                        s.held = Some(lease.held);
                        s.lease_failure = None;
                        if shortfall(s, leased, &need, slices).is_some() {
                            s.lease_dry_until_ms = now_ms + DRY_FOR_MS;
                        }
                    }),
                    Err(e) => {
                        ledger.with_state(|s| s.lease_failure = Some((now_ms + RETRY_AFTER_FAILURE_MS, e.clone())));
                        failure = Some(e);
                    }
                }
            }
        }
        let unleased = failure.is_some() && self.settings.fail_open;
        if unleased && ledger.with_state(|s| !std::mem::replace(&mut s.lease_warned, true)) {
            tracing::warn!(
                run = %run,
                error = failure.as_deref().unwrap_or_default(),
                "control is unreachable for a budget lease: admitting the run's calls against its whole budget on this proxy alone \
                 (proxy.budget.on_control_unreachable = \"fail_open\"); the fleet-wide limit is not enforced until control answers"
            );
        }
        let effective = if unleased { *limits } else { ledger.with_state(|s| within(limits, leased, s.held.as_ref())) };
        let granted = ledger.with_state(|s| budget::reserve(s, &effective, ask, now)).map_err(|mut r| {
            let held = ledger.with_state(|s| s.held);
            match &failure {
                Some(e) => {
                    r.message = format!(
                        "{}; this proxy could not lease more of the run's budget from control ({e}), so it spends only what it holds",
                        r.message
                    );
                    r.retry_after = Some(1);
                }
                None => r.message = format!("{}{}", r.message, fleet_note(leased, held.as_ref())),
            }
            r
        })?;
        ledger.with_state(|s| {
            // The gauges show the run's own limits, not this proxy's holding.
            (s.tokens_limit, s.cost_limit_micro_usd) = (limits.tokens, limits.cost_micro_usd);
            if !unleased {
                s.lease_warned = false;
            }
        });
        Ok(Admitted { granted, unleased })
    }
}

/// A call counted among those waiting for its run's lease lock until dropped (also when the
/// call is dropped while it waits: its client went away).
struct Waiting<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Waiting<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a call needs of each leased member: its input plus its output limit (or the model's
/// `max_output`, or [`DEFAULT_OUTPUT`]), at list price; one call.
fn need(leased: &Limits, ask: &Ask) -> Slice {
    let mut need = Slice { calls: u64::from(leased.calls.is_some()), ..Slice::default() };
    if ask.llm {
        let output = ask.output_tokens.or(ask.price.and_then(|p| p.max_output)).unwrap_or(DEFAULT_OUTPUT);
        if leased.tokens.is_some() {
            need.tokens = ask.input_tokens.saturating_add(output);
        }
        if leased.cost_micro_usd.is_some()
            && let Some(p) = ask.price
        {
            need.cost_micro_usd =
                ((ask.input_tokens as f64 * p.input).ceil() + (output as f64 * p.output).ceil()) as u64;
        }
    }
    need
}

/// What this proxy has committed of a run's budget: used by settled calls plus reserved by calls
/// in flight.
fn committed(s: &RunState) -> Slice {
    Slice {
        tokens: s.tokens_used.saturating_add(s.tokens_reserved),
        cost_micro_usd: s.cost_micro_usd.saturating_add(s.cost_reserved_micro_usd),
        calls: s.calls_admitted,
    }
}

/// What to ask control for so that `need` fits, or `None` when it fits what is held. Each short
/// member asks for what is missing plus one slice of its limit.
fn shortfall(s: &RunState, leased: &Limits, need: &Slice, slices: u64) -> Option<Slice> {
    let c = committed(s);
    let held = s.held.unwrap_or_default();
    let mut short = false;
    let mut member = |limit: Option<u64>, held: Option<u64>, committed: u64, need: u64| -> u64 {
        let Some(limit) = limit else { return 0 };
        if s.held.is_some() && held.is_none() {
            // Control does not limit this member (the token does: each proxy enforces it alone).
            return 0;
        }
        let free = held.unwrap_or(0).saturating_sub(committed);
        if (need <= free && s.held.is_some()) || held.is_some_and(|h| h >= limit) {
            // It fits, or this proxy holds the whole budget: control has nothing to add.
            return 0;
        }
        short = true;
        need.saturating_sub(free).saturating_add(limit.div_ceil(slices))
    };
    let want = Slice {
        tokens: member(leased.tokens, held.tokens, c.tokens, need.tokens),
        cost_micro_usd: member(leased.cost_micro_usd, held.cost_micro_usd, c.cost_micro_usd, need.cost_micro_usd),
        calls: member(leased.calls, held.calls, c.calls, need.calls),
    };
    short.then_some(want)
}

/// `limits` with each leased member lowered to what this proxy holds of it: nothing before the
/// first lease; a member control does not limit keeps the token's limit.
fn within(limits: &Limits, leased: &Limits, held: Option<&Held>) -> Limits {
    let lower = |limit: Option<u64>, is_leased: bool, held_member: Option<u64>| match (limit, is_leased, held) {
        (Some(_), true, None) => Some(0),
        (Some(l), true, Some(_)) => Some(held_member.map_or(l, |h| l.min(h))),
        (l, _, _) => l,
    };
    let h = held.copied().unwrap_or_default();
    Limits {
        tokens: lower(limits.tokens, leased.tokens.is_some(), h.tokens),
        cost_micro_usd: lower(limits.cost_micro_usd, leased.cost_micro_usd.is_some(), h.cost_micro_usd),
        calls: lower(limits.calls, leased.calls.is_some(), h.calls),
        ..*limits
    }
}

/// The note a refusal under a leased budget ends with.
fn fleet_note(leased: &Limits, held: Option<&Held>) -> String {
    let h = held.copied().unwrap_or_default();
    let mut parts = Vec::new();
    if let (Some(limit), Some(h)) = (leased.tokens, h.tokens) {
        parts.push(format!("{h} of its {limit} tokens"));
    }
    if let (Some(limit), Some(h)) = (leased.cost_micro_usd, h.cost_micro_usd) {
        parts.push(format!("{h} of its {limit} µUSD"));
    }
    if let (Some(limit), Some(h)) = (leased.calls, h.calls) {
        parts.push(format!("{h} of its {limit} calls"));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        " (the run's budget is shared by a fleet of proxies: this one holds {}, and control has no more to lease)",
        parts.join(", ")
    )
}

struct Control {
    base: Uri,
    token: Secret,
    client: ControlClient,
}

impl Control {
    async fn lease(&self, run: &RunId, request: &LeaseRequest) -> Result<Lease, String> {
        let path = format!("/v1/runs/{run}/budget/lease");
        let uri: Uri = format!("{}{path}", self.base.to_string().trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("bad control URL: {e}"))?;
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(AUTHORIZATION, format!("Bearer {}", self.token.expose()))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("cannot reach control at {}: {e}", self.base))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if !status.is_success() {
                return Err(format!("control answered {status} to POST {path}: {}", String::from_utf8_lossy(&body)));
            }
            serde_json::from_slice::<Lease>(&body).map_err(|e| format!("POST {path}: unexpected answer: {e}"))
        };
        tokio::time::timeout(TIMEOUT, answer)
            .await
            .map_err(|_| format!("control at {} did not answer within {} s", self.base, TIMEOUT.as_secs()))?
    }
}

async fn serve(conn: Arc<Control>, mut jobs: mpsc::UnboundedReceiver<Job>, holder: String, idle: Duration) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Lease { run, request, reply } => {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let _ = reply.send(conn.lease(&run, &request).await);
                });
            }
            Job::Sweep(runs) => {
                tokio::spawn(sweep(conn.clone(), holder.clone(), runs, idle));
            }
        }
    }
}

/// Every [`SWEEP_EVERY`], gives back what runs idle for `idle` hold beyond their commitment.
async fn sweep(conn: Arc<Control>, holder: String, runs: Box<dyn Fn() -> Option<Snapshot> + Send>, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some((now, leased)) = runs() else { return };
        for (run, ledger) in leased {
            if ledger.in_flight() > 0 || now.saturating_sub(ledger.last_seen_ms()) < idle_ms {
                continue;
            }
            let Ok(_turn) = ledger.lease.try_lock() else { continue };
            let (committed, spare) = ledger.with_state(|s| {
                let c = committed(s);
                let h = s.held.unwrap_or_default();
                let spare = h.tokens.is_some_and(|t| t > c.tokens)
                    || h.cost_micro_usd.is_some_and(|t| t > c.cost_micro_usd)
                    || h.calls.is_some_and(|t| t > c.calls);
                (c, spare)
            });
            if !spare {
                continue;
            }
            let request = LeaseRequest { holder: holder.clone(), committed, want: Slice::default(), release: true };
            match conn.lease(&run, &request).await {
                Ok(lease) => {
                    tracing::debug!(run = %run, held = ?lease.held, "idle run's unused budget slice given back");
                    ledger.with_state(|s| s.held = Some(lease.held));
                }
                Err(e) => tracing::debug!(run = %run, error = %e, "cannot give back an idle run's budget slice yet"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
