//! Rate SLOs: a run's `tokens_per_minute` and `calls_per_minute` as two token buckets, refilled
//! continuously (a new run starts with full buckets). A call over the rate waits in the run's
//! FIFO queue until its tokens and one call are available, at most `proxy.budget.max_wait`; a
//! call that would wait longer is refused at once with 429 and a `Retry-After` of when it would
//! fit. Tokens are taken at admission (the call's reservation) and the difference to what the
//! call used is given back or taken at settlement.

/// A run's rate SLOs; unset = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// LLM tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Calls per minute.
    pub calls_per_minute: Option<u64>,
}

impl Rates {
    /// Whether either rate is set.
    pub fn is_set(&self) -> bool {
        self.tokens_per_minute.is_some() || self.calls_per_minute.is_some()
    }
}

/// A run's rate SLOs as two token buckets (tokens and calls per minute), refilled continuously.
/// Calls wait for them in FIFO order: the run's [`RateGate`] lets one waiter at a time at the
/// buckets, and tokio's mutex queues the others fairly.
#[derive(Debug, Default)]
pub struct Buckets {
    /// Tokens available now (may go negative after a call used more than it reserved).
    tokens: f64,
    /// Calls available now.
    calls: f64,
    /// When the buckets were last refilled, ms since the gate's epoch.
    at_ms: u64,
    /// Whether the buckets have been filled once (a new run starts with full buckets).
    primed: bool,
}

impl Buckets {
    fn refill(&mut self, rates: &Rates, now_ms: u64) {
        let tpm = rates.tokens_per_minute.map_or(f64::INFINITY, |v| v as f64);
        let cpm = rates.calls_per_minute.map_or(f64::INFINITY, |v| v as f64);
        if !self.primed {
            (self.tokens, self.calls, self.primed) = (tpm, cpm, true);
        } else {
            let minutes = now_ms.saturating_sub(self.at_ms) as f64 / 60_000.0;
            self.tokens = (self.tokens + tpm * minutes).min(tpm);
            self.calls = (self.calls + cpm * minutes).min(cpm);
        }
        self.at_ms = now_ms;
    }

    /// How long until `tokens` and one call are available, in ms (0: now).
    fn wait_ms(&self, rates: &Rates, tokens: u64) -> u64 {
        let need = |have: f64, want: f64, per_minute: Option<u64>| match per_minute {
            Some(rate) if have < want && rate > 0 => ((want - have) / rate as f64 * 60_000.0).ceil() as u64,
            Some(0) => u64::MAX,
            _ => 0,
        };
        // A call larger than the whole bucket can never fit: waiting for a full bucket is enough.
        let want = rates.tokens_per_minute.map_or(tokens as f64, |tpm| (tokens as f64).min(tpm as f64));
        need(self.tokens, want, rates.tokens_per_minute).max(need(self.calls, 1.0, rates.calls_per_minute))
    }
}

/// The run's rate queue: FIFO admission against its [`Buckets`].
#[derive(Debug, Default)]
pub struct RateGate {
    buckets: std::sync::Mutex<Buckets>,
    queue: tokio::sync::Mutex<()>,
    /// Calls waiting now.
    pub waiting: std::sync::atomic::AtomicU64,
    /// Calls that waited, and their total wait in ms.
    pub throttled: std::sync::atomic::AtomicU64,
    /// Total ms calls waited.
    pub waited_ms: std::sync::atomic::AtomicU64,
}

/// A call the rate SLO would make wait longer than allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRefusal {
    /// What rate, with figures.
    pub message: String,
    /// Seconds until the call would fit.
    pub retry_after: u64,
}

impl RateGate {
    fn buckets(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits in FIFO order until `tokens` and one call fit the run's rates, at most `max_wait`;
    /// takes them and returns how long the call waited (0 when it found the queue empty and the
    /// buckets full enough). `clock` gives ms since a fixed epoch.
    pub async fn admit(
        &self,
        rates: &Rates,
        tokens: u64,
        max_wait: std::time::Duration,
        clock: impl Fn() -> u64,
    ) -> Result<u64, RateRefusal> {
        use std::sync::atomic::Ordering::Relaxed;
        let start = clock();
        let deadline = start.saturating_add(u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX));
        self.waiting.fetch_add(1, Relaxed);
        let result = async {
            // A call that finds the queue empty and the buckets full enough did not wait, however
            // long taking the locks took.
            let (_turn, mut waited) = match self.queue.try_lock() {
                Ok(turn) => (turn, false),
                Err(_) => {
                    let remaining = std::time::Duration::from_millis(deadline.saturating_sub(clock()));
                    let Ok(turn) = tokio::time::timeout(remaining, self.queue.lock()).await else {
                        return Err(self.refusal(rates, tokens, clock()));
                    };
                    (turn, true)
                }
            };
            loop {
                let now = clock();
                let wait = {
                    let mut b = self.buckets();
                    b.refill(rates, now);
                    let wait = b.wait_ms(rates, tokens);
                    if wait == 0 {
                        b.tokens -= tokens as f64;
                        b.calls -= 1.0;
                        return Ok(if waited { now.saturating_sub(start).max(1) } else { 0 });
                    }
                    wait
                };
                if now.saturating_add(wait) > deadline {
                    return Err(self.refusal(rates, tokens, now));
                }
                waited = true;
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
        }
        .await;
        self.waiting.fetch_sub(1, Relaxed);
        if let Ok(waited) = result
            && waited > 0
        {
            self.throttled.fetch_add(1, Relaxed);
            self.waited_ms.fetch_add(waited, Relaxed);
        }
        result
    }

    fn refusal(&self, rates: &Rates, tokens: u64, now: u64) -> RateRefusal {
        let mut b = self.buckets();
        b.refill(rates, now);
        let wait = b.wait_ms(rates, tokens).max(1);
        let rates = [("tokens", rates.tokens_per_minute), ("calls", rates.calls_per_minute)]
            .iter()
            .filter_map(|(what, r)| r.map(|r| format!("{r} {what} per minute")))
            .collect::<Vec<_>>()
            .join(" and ");
        RateRefusal {
            message: format!(
                "the run is over its rate SLO ({rates}) and this call (about {tokens} tokens) would wait longer than proxy.budget.max_wait; retry after the Retry-After seconds"
            ),
            retry_after: wait.div_ceil(1000).max(1),
        }
    }

    /// Gives back tokens a call reserved for the rate but did not use (or takes more).
    pub fn adjust(&self, reserved: u64, used: u64) {
        let mut b = self.buckets();
        b.tokens += reserved as f64 - used as f64;
    }
}
