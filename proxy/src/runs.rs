//! The per-run ledger: what this proxy knows about each run it serves.
//!
//! One [`RunLedger`] per run holds its step counter, the state policy packs see (calls allowed so
//! far, hosts contacted, MCP tools called) and its budget figures (tokens and cost used, tokens
//! reserved by calls in flight, calls admitted under its budget). Phases reach it through the
//! call ([`crate::context::Call::ledger`]), looked up once, when the call is identified.
//!
//! Invariants:
//! - steps are monotonic per run: two concurrent calls of one run never get the same number (one
//!   atomic add; the map's write lock is taken once per new run);
//! - a run is evicted only when it has no call in flight and has been idle for the idle timeout
//!   (1 h, `Runs::default()`; checked at most once a minute, when a new run
//!   arrives); a run that comes back later starts a fresh ledger whose steps and budget spend
//!   continue after the receipts the spool holds for it ([`Resume`]), so step numbers stay
//!   increasing, and budgets are not forgotten, across evictions and restarts when receipts are
//!   recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fleetforge_trust::RunId;

use crate::policy::input::StateInput;

/// How often idle runs are looked for, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What one run has done through this proxy.
#[derive(Debug)]
pub struct RunLedger {
    steps: AtomicU64,
    in_flight: AtomicU64,
    /// Milliseconds since the ledger map's epoch at the last call's start.
    last_seen_ms: AtomicU64,
    /// Milliseconds since the ledger map's epoch when the ledger was made.
    pub started_ms: u64,
    state: Mutex<RunState>,
    /// The run's rate SLO queue.
    pub rate: crate::rate::RateGate,
    /// Taken by a call of the run while it leases budget from control ([`crate::lease`]), so
    /// the run's calls lease one at a time.
    pub lease: tokio::sync::Mutex<()>,
    /// Calls of the run waiting for, or holding, the lease lock.
    pub lease_waiting: AtomicU64,
    /// A receipt of the run has been written on this proxy (the first names the datasets).
    receipted: std::sync::atomic::AtomicBool,
}

/// The part of a ledger that changes together.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunState {
    /// Calls policy allowed out.
    pub calls: u64,
    /// Hosts contacted, in first-contact order.
    pub hosts: Vec<String>,
    /// MCP tools called, in first-call order.
    pub tools: Vec<String>,
    /// LLM tokens used (input + output) by settled calls.
    pub tokens_used: u64,
    /// Cost of settled calls, millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// Tokens reserved by calls in flight.
    pub tokens_reserved: u64,
    /// Cost reserved by calls in flight, millionths of a US dollar.
    pub cost_reserved_micro_usd: u64,
    /// Calls admitted under the run's budget (the calls budget counts them).
    pub calls_admitted: u64,
    /// The run's token limit, as of its last admitted call.
    pub tokens_limit: Option<u64>,
    /// The run's cost limit, as of its last admitted call.
    pub cost_limit_micro_usd: Option<u64>,
    /// What this proxy holds of the run's budget, leased from control (`None`: nothing leased).
    pub held: Option<fleetforge_trust::wire::Held>,
    /// Whether the WARN that control is unreachable and calls are admitted unleased was logged.
    pub lease_warned: bool,
    /// The last lease request's failure, and until when (ledger clock, ms) calls do not ask again.
    pub lease_failure: Option<(u64, String)>,
    /// Until when (ledger clock, ms) the run's calls do not ask control for more: its last
    /// answer had too little.
    pub lease_dry_until_ms: u64,
}

impl RunLedger {
    fn new(resume: Resume, now_ms: u64) -> Self {
        let state = RunState {
            tokens_used: resume.tokens_used,
            cost_micro_usd: resume.cost_micro_usd,
            calls_admitted: resume.calls_admitted,
            ..RunState::default()
        };
        Self {
            steps: AtomicU64::new(resume.step),
            in_flight: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(now_ms),
            started_ms: now_ms,
            state: Mutex::new(state),
            rate: crate::rate::RateGate::default(),
            lease: tokio::sync::Mutex::new(()),
            lease_waiting: AtomicU64::new(0),
            receipted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        // A poisoned lock only means another thread panicked mid-update; the figures are still
        // whole numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state policy packs see before the run's next call.
    pub fn policy_state(&self) -> StateInput {
        let s = self.state();
        StateInput {
            calls: s.calls,
            tokens: s.tokens_used,
            cost_micro_usd: s.cost_micro_usd,
            hosts: s.hosts.clone(),
            tools: s.tools.clone(),
        }
    }

    /// A copy of the run's figures.
    pub fn snapshot(&self) -> RunState {
        self.state().clone()
    }

    /// Notes a call policy allowed, leaving for `host` (calling MCP `tool`, for a `tools/call`).
    pub fn note_call(&self, host: &str, tool: Option<&str>) {
        let mut s = self.state();
        s.calls += 1;
        if !s.hosts.iter().any(|h| h == host) {
            s.hosts.push(host.to_owned());
        }
        if let Some(tool) = tool
            && !s.tools.iter().any(|t| t == tool)
        {
            s.tools.push(tool.to_owned());
        }
    }

    /// Runs `f` on the run's figures under the ledger's lock: reservations and settlements of
    /// concurrent calls are serialised here ([`crate::budget`]).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut RunState) -> R) -> R {
        f(&mut self.state())
    }

    /// Adds a settled call's tokens and cost to the run's figures.
    pub fn add_usage(&self, tokens: u64, cost_micro_usd: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.tokens_used = s.tokens_used.saturating_add(tokens);
        s.cost_micro_usd = s.cost_micro_usd.saturating_add(cost_micro_usd);
    }

    /// Ends a call of this run (it started with [`Runs::begin`]).
    pub fn end_call(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether this is the first time it is asked: true once per run on this proxy.
    pub fn first_receipt(&self) -> bool {
        !self.receipted.swap(true, Ordering::Relaxed)
    }

    /// Calls of this run in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the run's last call started, milliseconds on [`Runs::now_ms`]'s clock.
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

/// Where a run new to the ledger map starts: after the receipts this proxy recorded for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    /// Its last step.
    pub step: u64,
    /// Tokens its receipts charged.
    pub tokens_used: u64,
    /// Cost its receipts charged, millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// Calls its receipts show admitted under a budget.
    pub calls_admitted: u64,
}

/// The ledgers of the runs this proxy serves.
#[derive(Debug)]
pub struct Runs {
    map: RwLock<HashMap<RunId, Arc<RunLedger>>>,
    epoch: Instant,
    idle: Duration,
    last_sweep_ms: AtomicU64,
}

impl Default for Runs {
    fn default() -> Self {
        Self::new(Duration::from_secs(3600))
    }
}

impl Runs {
    /// No runs yet; a run idle for `idle` with no call in flight is evicted.
    pub fn new(idle: Duration) -> Self {
        Self { map: RwLock::new(HashMap::new()), epoch: Instant::now(), idle, last_sweep_ms: AtomicU64::new(0) }
    }

    /// Milliseconds since this map was made (the clock rate queues run on).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts a call of `run`: its ledger and its step number (from 1, or from after
    /// `resume_step()` when the run is new to this ledger). Pair with [`RunLedger::end_call`].
    pub fn begin(&self, run: &RunId, resume_step: impl FnOnce() -> u64) -> (Arc<RunLedger>, u64) {
        self.begin_with(run, || Resume { step: resume_step(), ..Resume::default() })
    }

    /// [`Runs::begin`], a new ledger starting from `resume()`: the steps and budget spend of the
    /// run's receipts this proxy holds (its spool), so a restart neither repeats steps nor
    /// forgets what the run spent.
    pub fn begin_with(&self, run: &RunId, resume: impl FnOnce() -> Resume) -> (Arc<RunLedger>, u64) {
        let now = self.now_ms();
        let found = self.map.read().unwrap_or_else(|e| e.into_inner()).get(run).cloned();
        let ledger = match found {
            Some(ledger) => ledger,
            None => {
                let resume = resume();
                let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
                self.sweep(&mut map, now);
                map.entry(run.clone()).or_insert_with(|| Arc::new(RunLedger::new(resume, now))).clone()
            }
        };
        ledger.in_flight.fetch_add(1, Ordering::Relaxed);
        ledger.last_seen_ms.store(now, Ordering::Relaxed);
        let step = ledger.steps.fetch_add(1, Ordering::Relaxed) + 1;
        (ledger, step)
    }

    /// The ledger of `run`, if this proxy holds one.
    pub fn get(&self, run: &RunId) -> Option<Arc<RunLedger>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(run).cloned()
    }

    /// The runs held that have admitted a call under a budget (at most `max`), for the budget
    /// gauges.
    pub fn budgeted(&self, max: usize) -> Vec<(RunId, Arc<RunLedger>)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, l)| l.state().calls_admitted > 0)
            .take(max)
            .map(|(id, l)| (id.clone(), l.clone()))
            .collect()
    }

    /// The runs that hold a slice of their budget leased from control.
    pub fn leased(&self) -> Vec<(RunId, Arc<RunLedger>)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter().filter(|(_, l)| l.state().held.is_some()).map(|(id, l)| (id.clone(), l.clone())).collect()
    }

    /// How many runs are held.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no run is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops idle runs with nothing in flight, at most once per [`SWEEP_EVERY`].
    fn sweep(&self, map: &mut HashMap<RunId, Arc<RunLedger>>, now: u64) {
        let every = u64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.last_sweep_ms.load(Ordering::Relaxed)) < every.min(self.idle_ms()) {
            return;
        }
        self.last_sweep_ms.store(now, Ordering::Relaxed);
        let idle = self.idle_ms();
        map.retain(|_, l| l.in_flight() > 0 || now.saturating_sub(l.last_seen_ms.load(Ordering::Relaxed)) < idle);
    }

    fn idle_ms(&self) -> u64 {
        u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests;
