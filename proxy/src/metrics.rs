//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! Plain atomics with fixed label sets: updating a metric on the call path is a handful of
//! relaxed atomic adds, with no locks, maps or allocation. Rendering builds the text format on
//! demand.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Which listener a call or connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// The forward proxy (absolute-form requests, CONNECT, intercepted TLS).
    Forward,
    /// A sidecar listener.
    Sidecar,
}

impl ListenerKind {
    const ALL: [ListenerKind; 2] = [ListenerKind::Forward, ListenerKind::Sidecar];

    fn label(self) -> &'static str {
        match self {
            ListenerKind::Forward => "forward",
            ListenerKind::Sidecar => "sidecar",
        }
    }
}

/// What happened to a `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectMode {
    /// TLS terminated and served through the pipeline.
    Intercepted,
    /// Relayed byte for byte.
    Tunnelled,
    /// Plain HTTP inside the tunnel, served through the pipeline.
    Plain,
    /// Refused (denied host, bad target, garbage after CONNECT, SNI mismatch).
    Rejected,
}

impl ConnectMode {
    const ALL: [ConnectMode; 4] =
        [ConnectMode::Intercepted, ConnectMode::Tunnelled, ConnectMode::Plain, ConnectMode::Rejected];

    fn label(self) -> &'static str {
        match self {
            ConnectMode::Intercepted => "intercepted",
            ConnectMode::Tunnelled => "tunnelled",
            ConnectMode::Plain => "plain",
            ConnectMode::Rejected => "rejected",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0];
/// Error `type` strings counted separately.
pub const ERROR_TYPES: [&str; 10] = [
    "policy_denied",
    "capability_denied",
    "proxy_auth_required",
    "budget_exceeded",
    "invalid_request",
    "body_too_large",
    "upstream_error",
    "upstream_timeout",
    "internal_error",
    "spool_full",
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// All proxy metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; 5]; 2],
    errors: [AtomicU64; ERROR_TYPES.len()],
    durations: [Histogram; 2],
    active_connections: [AtomicI64; 2],
    connects: [AtomicU64; 4],
    tunnel_bytes_up: AtomicU64,
    tunnel_bytes_down: AtomicU64,
    leaf_certs_minted: AtomicU64,
    tls_handshake_failures: AtomicU64,
    connections_refused: AtomicU64,
    receipts_recorded: AtomicU64,
    receipts_dropped: AtomicU64,
    receipts_shipped: [AtomicU64; 3],
    ship_failures: AtomicU64,
    spool_bytes: AtomicU64,
    ship_backlog: AtomicU64,
    budget_refused: AtomicU64,
    budget_settled_calls: AtomicU64,
    budget_charged_tokens: AtomicU64,
}

/// What control said about a shipped receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipResult {
    /// Stored.
    Accepted,
    /// Already stored (a resend).
    Duplicate,
    /// Refused (kept in `spool/rejected.jsonl`).
    Rejected,
}

/// Decrements the active-connection gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard<'a> {
    gauge: &'a AtomicI64,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Relaxed);
    }
}

fn idx(kind: ListenerKind) -> usize {
    kind as usize
}

impl Metrics {
    /// Counts a finished call: its listener, status and total duration.
    pub fn call_finished(&self, listener: ListenerKind, status: u16, duration: Duration) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.requests[idx(listener)][class].fetch_add(1, Relaxed);
        self.durations[idx(listener)].observe(duration);
    }

    /// Counts an error response by its contract `type`.
    pub fn error(&self, type_str: &str) {
        if let Some(i) = ERROR_TYPES.iter().position(|t| *t == type_str) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Marks a client connection open until the guard drops.
    pub fn connection_opened(&self, listener: ListenerKind) -> ConnectionGuard<'_> {
        let gauge = &self.active_connections[idx(listener)];
        gauge.fetch_add(1, Relaxed);
        ConnectionGuard { gauge }
    }

    /// Counts what a `CONNECT` turned into.
    pub fn connect(&self, mode: ConnectMode) {
        self.connects[mode as usize].fetch_add(1, Relaxed);
    }

    /// Adds the bytes a finished tunnel carried.
    pub fn tunnel_bytes(&self, up: u64, down: u64) {
        self.tunnel_bytes_up.fetch_add(up, Relaxed);
        self.tunnel_bytes_down.fetch_add(down, Relaxed);
    }

    /// Counts a leaf certificate minted for interception.
    pub fn leaf_minted(&self) {
        self.leaf_certs_minted.fetch_add(1, Relaxed);
    }

    /// Counts a receipt written to the spool.
    pub fn receipt_recorded(&self) {
        self.receipts_recorded.fetch_add(1, Relaxed);
    }

    /// Counts a call whose receipt could not be written; returns the new total.
    pub fn receipt_dropped(&self) -> u64 {
        self.receipts_dropped.fetch_add(1, Relaxed) + 1
    }

    /// Counts receipts control answered for.
    pub fn receipts_shipped(&self, result: ShipResult, n: u64) {
        self.receipts_shipped[result as usize].fetch_add(n, Relaxed);
    }

    /// Counts a failed attempt to reach control.
    pub fn ship_failed(&self) {
        self.ship_failures.fetch_add(1, Relaxed);
    }

    /// Sets the spool size and the number of receipts waiting to ship.
    pub fn spool_state(&self, bytes: u64, backlog: u64) {
        self.spool_bytes.store(bytes, Relaxed);
        self.ship_backlog.store(backlog, Relaxed);
    }

    /// Counts a call refused by its run's budget or rate SLO.
    pub fn budget_refused(&self) {
        self.budget_refused.fetch_add(1, Relaxed);
    }

    /// Counts a call settled under a budget and the tokens charged to it.
    pub fn budget_settled(&self, tokens: u64) {
        self.budget_settled_calls.fetch_add(1, Relaxed);
        self.budget_charged_tokens.fetch_add(tokens, Relaxed);
    }

    /// Counts a failed client-side TLS handshake.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// Counts a client connection refused at `limits.max_connections`.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "# HELP fleetforge_requests_total Calls handled, by listener and response status class.")?;
        writeln!(out, "# TYPE fleetforge_requests_total counter")?;
        for l in ListenerKind::ALL {
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                let v = self.requests[idx(l)][c].load(Relaxed);
                writeln!(out, "fleetforge_requests_total{{listener=\"{}\",status=\"{class}\"}} {v}", l.label())?;
            }
        }
        writeln!(out, "# HELP fleetforge_errors_total Error responses the proxy generated, by contract error type.")?;
        writeln!(out, "# TYPE fleetforge_errors_total counter")?;
        for (i, t) in ERROR_TYPES.iter().enumerate() {
            writeln!(out, "fleetforge_errors_total{{type=\"{t}\"}} {}", self.errors[i].load(Relaxed))?;
        }
        writeln!(out, "# HELP fleetforge_request_duration_seconds Time from request received to response body end.")?;
        writeln!(out, "# TYPE fleetforge_request_duration_seconds histogram")?;
        for l in ListenerKind::ALL {
            let h = &self.durations[idx(l)];
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Relaxed);
                writeln!(
                    out,
                    "fleetforge_request_duration_seconds_bucket{{listener=\"{}\",le=\"{b}\"}} {cumulative}",
                    l.label()
                )?;
            }
            let count = h.count.load(Relaxed);
            writeln!(
                out,
                "fleetforge_request_duration_seconds_bucket{{listener=\"{}\",le=\"+Inf\"}} {count}",
                l.label()
            )?;
            let sum = h.sum_micros.load(Relaxed) as f64 / 1e6;
            writeln!(out, "fleetforge_request_duration_seconds_sum{{listener=\"{}\"}} {sum}", l.label())?;
            writeln!(out, "fleetforge_request_duration_seconds_count{{listener=\"{}\"}} {count}", l.label())?;
        }
        writeln!(out, "# HELP fleetforge_active_connections Open client connections, by listener.")?;
        writeln!(out, "# TYPE fleetforge_active_connections gauge")?;
        for l in ListenerKind::ALL {
            writeln!(
                out,
                "fleetforge_active_connections{{listener=\"{}\"}} {}",
                l.label(),
                self.active_connections[idx(l)].load(Relaxed)
            )?;
        }
        writeln!(out, "# HELP fleetforge_connect_total CONNECT requests, by what they became.")?;
        writeln!(out, "# TYPE fleetforge_connect_total counter")?;
        for m in ConnectMode::ALL {
            writeln!(
                out,
                "fleetforge_connect_total{{mode=\"{}\"}} {}",
                m.label(),
                self.connects[m as usize].load(Relaxed)
            )?;
        }
        writeln!(out, "# HELP fleetforge_tunnel_bytes_total Bytes relayed through tunnels that were not intercepted.")?;
        writeln!(out, "# TYPE fleetforge_tunnel_bytes_total counter")?;
        writeln!(out, "fleetforge_tunnel_bytes_total{{direction=\"up\"}} {}", self.tunnel_bytes_up.load(Relaxed))?;
        writeln!(out, "fleetforge_tunnel_bytes_total{{direction=\"down\"}} {}", self.tunnel_bytes_down.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_leaf_certs_minted_total Interception certificates minted (cache misses).")?;
        writeln!(out, "# TYPE fleetforge_leaf_certs_minted_total counter")?;
        writeln!(out, "fleetforge_leaf_certs_minted_total {}", self.leaf_certs_minted.load(Relaxed))?;
        writeln!(
            out,
            "# HELP fleetforge_tls_handshake_failures_total Client TLS handshakes that failed on intercepted connections."
        )?;
        writeln!(out, "# TYPE fleetforge_tls_handshake_failures_total counter")?;
        writeln!(out, "fleetforge_tls_handshake_failures_total {}", self.tls_handshake_failures.load(Relaxed))?;
        writeln!(
            out,
            "# HELP fleetforge_connections_refused_total Client connections refused (503 overloaded) at limits.max_connections."
        )?;
        writeln!(out, "# TYPE fleetforge_connections_refused_total counter")?;
        writeln!(out, "fleetforge_connections_refused_total {}", self.connections_refused.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_receipts_recorded_total Receipts written to the spool.")?;
        writeln!(out, "# TYPE fleetforge_receipts_recorded_total counter")?;
        writeln!(out, "fleetforge_receipts_recorded_total {}", self.receipts_recorded.load(Relaxed))?;
        writeln!(
            out,
            "# HELP fleetforge_receipts_dropped_total Calls whose receipt could not be written (spool full or failing)."
        )?;
        writeln!(out, "# TYPE fleetforge_receipts_dropped_total counter")?;
        writeln!(out, "fleetforge_receipts_dropped_total {}", self.receipts_dropped.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_receipts_shipped_total Receipts control answered for, by result.")?;
        writeln!(out, "# TYPE fleetforge_receipts_shipped_total counter")?;
        for (i, r) in ["accepted", "duplicate", "rejected"].iter().enumerate() {
            writeln!(
                out,
                "fleetforge_receipts_shipped_total{{result=\"{r}\"}} {}",
                self.receipts_shipped[i].load(Relaxed)
            )?;
        }
        writeln!(out, "# HELP fleetforge_ship_failures_total Failed attempts to reach the control service.")?;
        writeln!(out, "# TYPE fleetforge_ship_failures_total counter")?;
        writeln!(out, "fleetforge_ship_failures_total {}", self.ship_failures.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_spool_bytes Bytes in the receipt spool.")?;
        writeln!(out, "# TYPE fleetforge_spool_bytes gauge")?;
        writeln!(out, "fleetforge_spool_bytes {}", self.spool_bytes.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_ship_backlog Sealed receipts waiting for control's acknowledgement.")?;
        writeln!(out, "# TYPE fleetforge_ship_backlog gauge")?;
        writeln!(out, "fleetforge_ship_backlog {}", self.ship_backlog.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_budget_refused_total Calls refused (429) by their run's budget or rate SLO.")?;
        writeln!(out, "# TYPE fleetforge_budget_refused_total counter")?;
        writeln!(out, "fleetforge_budget_refused_total {}", self.budget_refused.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_budget_settled_total Calls settled under a budget.")?;
        writeln!(out, "# TYPE fleetforge_budget_settled_total counter")?;
        writeln!(out, "fleetforge_budget_settled_total {}", self.budget_settled_calls.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_budget_charged_tokens_total Tokens charged to budgets at settlement.")?;
        writeln!(out, "# TYPE fleetforge_budget_charged_tokens_total counter")?;
        writeln!(out, "fleetforge_budget_charged_tokens_total {}", self.budget_charged_tokens.load(Relaxed))?;
        Ok(())
    }
}

/// Runs the budget gauges show at most (the label set stays bounded).
const BUDGET_RUNS_MAX: usize = 1000;

/// Appends the OTLP exporter's span counts (only when an endpoint is configured).
pub fn render_spans(stats: &fleetforge_otel::Stats, out: &mut String) {
    let _ = render_spans_into(stats, out);
}

fn render_spans_into(stats: &fleetforge_otel::Stats, out: &mut String) -> std::fmt::Result {
    writeln!(
        out,
        "# HELP fleetforge_otel_spans_total Call spans by what became of them: queued for export, exported, dropped (queue full), failed (the collector did not take them)."
    )?;
    writeln!(out, "# TYPE fleetforge_otel_spans_total counter")?;
    for (result, v) in [
        ("queued", &stats.queued),
        ("exported", &stats.exported),
        ("dropped", &stats.dropped),
        ("failed", &stats.failed),
    ] {
        writeln!(out, "fleetforge_otel_spans_total{{result=\"{result}\"}} {}", v.load(Relaxed))?;
    }
    Ok(())
}

/// Appends the per-run budget gauges of the runs `runs` holds that have a budget: queue depth,
/// throttled calls and their wait, tokens and cost remaining and reserved, burn rate since the
/// run's first call on this proxy, and when the token budget runs out at that rate.
pub fn render_budgets(runs: &crate::runs::Runs, out: &mut String) {
    let _ = render_budgets_into(runs, out);
}

fn render_budgets_into(runs: &crate::runs::Runs, out: &mut String) -> std::fmt::Result {
    let held = runs.budgeted(BUDGET_RUNS_MAX);
    let now = runs.now_ms();
    let gauges: [(&str, &str, &str); 9] = [
        ("fleetforge_budget_queue_depth", "gauge", "Calls of the run waiting in its rate SLO queue."),
        ("fleetforge_budget_throttled_calls_total", "counter", "Calls of the run that waited for its rate SLO."),
        ("fleetforge_budget_wait_seconds_total", "counter", "Time calls of the run waited for its rate SLO."),
        ("fleetforge_budget_tokens_remaining", "gauge", "Tokens left in the run's budget (settled calls)."),
        ("fleetforge_budget_tokens_reserved", "gauge", "Tokens held by the run's calls in flight."),
        ("fleetforge_budget_cost_remaining_usd", "gauge", "US dollars left in the run's cost budget."),
        ("fleetforge_budget_calls_admitted_total", "counter", "Calls admitted under the run's budget."),
        (
            "fleetforge_budget_burn_tokens_per_second",
            "gauge",
            "Tokens the run used per second since its first call here.",
        ),
        (
            "fleetforge_budget_exhaustion_seconds",
            "gauge",
            "Seconds until the run's token budget runs out at its burn rate.",
        ),
    ];
    let mut rows: Vec<[Option<f64>; 9]> = Vec::with_capacity(held.len());
    for (_, ledger) in &held {
        let s = ledger.snapshot();
        let seconds = now.saturating_sub(ledger.started_ms) as f64 / 1e3;
        let burn = (seconds > 0.0).then(|| s.tokens_used as f64 / seconds);
        let remaining = s.tokens_limit.map(|l| l.saturating_sub(s.tokens_used) as f64);
        let exhaustion = match (remaining, burn) {
            (Some(r), Some(b)) if b > 0.0 => Some(r / b),
            _ => None,
        };
        rows.push([
            Some(ledger.rate.waiting.load(Relaxed) as f64),
            Some(ledger.rate.throttled.load(Relaxed) as f64),
            Some(ledger.rate.waited_ms.load(Relaxed) as f64 / 1e3),
            remaining,
            Some(s.tokens_reserved as f64),
            s.cost_limit_micro_usd.map(|l| l.saturating_sub(s.cost_micro_usd) as f64 / 1e6),
            Some(s.calls_admitted as f64),
            burn,
            exhaustion,
        ]);
    }
    for (i, (name, kind, help)) in gauges.iter().enumerate() {
        writeln!(out, "# HELP {name} {help}")?;
        writeln!(out, "# TYPE {name} {kind}")?;
        for ((run, _), row) in held.iter().zip(&rows) {
            if let Some(v) = row[i] {
                writeln!(out, "{name}{{run=\"{}\"}} {v}", run.as_str())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ConnectMode, ListenerKind, Metrics};

    #[test]
    fn renders_counts_histograms_and_gauges() {
        let m = Metrics::default();
        m.call_finished(ListenerKind::Sidecar, 200, Duration::from_millis(3));
        m.call_finished(ListenerKind::Sidecar, 502, Duration::from_millis(40));
        m.error("upstream_error");
        m.connect(ConnectMode::Intercepted);
        let guard = m.connection_opened(ListenerKind::Forward);
        let text = m.render();
        assert!(text.contains("fleetforge_requests_total{listener=\"sidecar\",status=\"2xx\"} 1"));
        assert!(text.contains("fleetforge_requests_total{listener=\"sidecar\",status=\"5xx\"} 1"));
        assert!(text.contains("fleetforge_errors_total{type=\"upstream_error\"} 1"));
        assert!(text.contains("fleetforge_request_duration_seconds_bucket{listener=\"sidecar\",le=\"0.005\"} 1"));
        assert!(text.contains("fleetforge_request_duration_seconds_bucket{listener=\"sidecar\",le=\"0.05\"} 2"));
        assert!(text.contains("fleetforge_request_duration_seconds_count{listener=\"sidecar\"} 2"));
        assert!(text.contains("fleetforge_active_connections{listener=\"forward\"} 1"));
        assert!(text.contains("fleetforge_connect_total{mode=\"intercepted\"} 1"));
        drop(guard);
        assert!(m.render().contains("fleetforge_active_connections{listener=\"forward\"} 0"));
    }
}
