//! The state shared by every worker, connection and call: configuration, TLS, upstream clients,
//! metrics, the spool, capability and policy state, and the run ledgers.
//!
//! Read-mostly and lock-light. Phases take `&Proxy`; nothing here calls a phase or a listener, so
//! every module can name this one without an import circle. Start-up (which builds it) is
//! [`crate::start`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use fleetforge_trust::RunId;
use hyper_util::rt::TokioExecutor;

use crate::capability::Capabilities;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::policy::builtin::Builtin;
use crate::runs::Runs;
use crate::shutdown::Drain;
use crate::spool::Spool;
use crate::tls::Ca;
use crate::upstream::{Egress, HttpClient};

/// State shared by every worker, connection and call.
#[derive(Debug)]
pub struct Proxy {
    /// The validated configuration.
    pub config: Config,
    /// Interception CA and leaf cache.
    pub ca: Ca,
    /// Pooled upstream clients, one per worker (index = worker id).
    pub clients: Vec<HttpClient>,
    /// Egress rules (resolution, SSRF defence, loop guard), shared with the clients' connectors.
    pub egress: Arc<Egress>,
    /// Metrics served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The receipt spool (`None` when receipts are off).
    pub spool: Option<Arc<Spool>>,
    /// Capability state (`None` when capability tokens are not required).
    pub capabilities: Option<Arc<Capabilities>>,
    /// Policy packs (`None` when none are configured).
    pub policy: Option<Arc<Policy>>,
    /// The built-in allow-list pack.
    pub builtin: Builtin,
    /// What tokens cost, per provider and model.
    pub prices: crate::prices::Prices,
    /// Per-run ledgers (steps, policy state, budget figures).
    pub runs: Runs,
    /// Client connections open on the forward and sidecar listeners (`limits.max_connections`).
    pub connections: std::sync::atomic::AtomicUsize,
    /// The budget lease client (`None` when run budgets are not leased from control).
    pub leases: Option<crate::lease::Leases>,
    /// The seal store (`None` when sealing is off).
    pub seals: Option<Arc<crate::seal::SealStore>>,
    /// The recorded run being served (replay mode only).
    pub replayer: Option<Arc<crate::replay::Replayer>>,
    /// Digests of the configured datasets, recorded on each run's first receipt.
    pub datasets: Vec<fleetforge_trust::receipt::DatasetDigest>,
    /// The run of calls that name none when no default run is configured.
    pub anonymous_run: RunId,
    /// The OpenTelemetry tracer (`None`: no OTLP endpoint configured).
    pub tracer: Option<Arc<fleetforge_otel::Tracer>>,
    /// Shutdown signal for every task.
    pub drain: Drain,
    /// HTTP/1.1 server settings for client connections.
    pub h1: hyper::server::conn::http1::Builder,
    /// HTTP/2 server settings for intercepted connections that negotiated `h2`.
    pub h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// HTTP/1.1 + HTTP/2 (prior knowledge) server settings for sidecar listeners.
    pub auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
}

impl Proxy {
    /// The upstream client of `worker`.
    pub fn client(&self, worker: usize) -> &HttpClient {
        &self.clients[worker % self.clients.len()]
    }

    /// Whether `host:port` names one of this proxy's own listeners (checked before connecting;
    /// names that *resolve* to a listener are caught by the egress connector).
    pub fn is_own_listener(&self, host: &str, port: u16) -> bool {
        let ip = if host == "localhost" { Some(IpAddr::V4(Ipv4Addr::LOCALHOST)) } else { host.parse::<IpAddr>().ok() };
        ip.is_some_and(|ip| self.egress.is_own_listener(SocketAddr::new(ip, port)))
    }
}
