//! The proxy process: shared state, start-up and shutdown.
//!
//! [`Proxy::start`] does everything that can fail before serving — CA, upstream trust, binding
//! every listener — and only then spawns the accept loops, so a bad port or a broken CA is an
//! error at start, never a half-started proxy. [`Running::shutdown`] stops accepting and lets
//! calls in flight finish, bounded by the drain timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use fleetforge_trust::RunId;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::listener;
use crate::metrics::Metrics;
use crate::runs::Runs;
use crate::shutdown::Drain;
use crate::tls::{self, Ca, TlsError};
use crate::upstream::{self, Egress, HttpClient};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// CA or upstream TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] TlsError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({key}): {source}; is another process using the port?")]
    Bind {
        /// The config key of the listener.
        key: String,
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
}

/// State shared by every connection and call.
#[derive(Debug)]
pub struct Proxy {
    /// The validated configuration.
    pub config: Config,
    /// Interception CA and leaf cache.
    pub ca: Ca,
    /// Pooled upstream client.
    pub client: HttpClient,
    /// Egress rules (resolution, SSRF defence, loop guard), shared with the client's connector.
    pub egress: Arc<Egress>,
    /// Metrics served at `/metrics`.
    pub metrics: Metrics,
    /// Per-run state (steps).
    pub runs: Runs,
    /// The run of calls that name none when no default run is configured.
    pub anonymous_run: RunId,
    /// Shutdown signal for every task.
    pub drain: Drain,
    /// HTTP/1.1 server settings for client connections.
    pub h1: hyper::server::conn::http1::Builder,
    /// HTTP/2 server settings for intercepted connections that negotiated `h2`.
    pub h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// HTTP/1.1 + HTTP/2 (prior knowledge) server settings for sidecar listeners.
    pub auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
}

/// A started proxy: its bound addresses, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Forward-proxy listener address.
    pub forward: SocketAddr,
    /// Admin listener address.
    pub admin: SocketAddr,
    /// Sidecar listener addresses, in config order.
    pub sidecars: Vec<SocketAddr>,
    /// The shared state (metrics, CA paths).
    pub proxy: Arc<Proxy>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { key: key.to_owned(), addr, source })
}

impl Proxy {
    /// Sets up TLS, binds every listener, and starts serving.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        let provider = tls::provider();
        let ca = Ca::load_or_create(&config.home, provider.clone())?;
        let client_tls = tls::upstream_client_config(provider, config.upstream_ca.as_deref())?;
        let egress = Arc::new(Egress::new(&config));
        let client = upstream::client(egress.clone(), client_tls);

        let forward = bind("listen", config.listen).await?;
        let admin = bind("admin_listen", config.admin_listen).await?;
        let mut sidecars = Vec::new();
        for (i, s) in config.sidecars.iter().enumerate() {
            sidecars.push(bind(&format!("sidecar[{i}].listen"), s.listen).await?);
        }
        let local = |l: &TcpListener| l.local_addr().map_err(|source| StartError::Bind { key: "listen".into(), addr: config.listen, source });
        let forward_addr = local(&forward)?;
        let admin_addr = local(&admin)?;
        let sidecar_addrs = sidecars.iter().map(local).collect::<Result<Vec<_>, _>>()?;
        let mut own = vec![forward_addr, admin_addr];
        own.extend(&sidecar_addrs);
        egress.set_own_listeners(own);

        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new()).header_read_timeout(config.header_timeout).keep_alive(true);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new()).adaptive_window(true);
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1().timer(TokioTimer::new()).header_read_timeout(config.header_timeout).keep_alive(true);
        auto.http2().timer(TokioTimer::new()).adaptive_window(true);

        let sidecar_configs = config.sidecars.clone();
        let proxy = Arc::new(Proxy {
            config,
            ca,
            client,
            egress,
            metrics: Metrics::default(),
            runs: Runs::default(),
            anonymous_run: RunId::new("anonymous").map_err(|e| StartError::Tls(TlsError::BadCa(e.to_string())))?,
            drain: Drain::new(),
            h1,
            h2,
            auto,
        });
        let mut tasks = vec![
            tokio::spawn(listener::forward::serve(proxy.clone(), forward)),
            tokio::spawn(listener::admin::serve(proxy.clone(), admin)),
        ];
        for (listener, sidecar) in sidecars.into_iter().zip(sidecar_configs) {
            tasks.push(tokio::spawn(listener::sidecar::serve(proxy.clone(), listener, sidecar)));
        }
        Ok(Running { forward: forward_addr, admin: admin_addr, sidecars: sidecar_addrs, proxy, tasks })
    }

    /// Whether `host:port` names one of this proxy's own listeners (checked before connecting;
    /// names that *resolve* to a listener are caught by the egress connector).
    pub fn is_own_listener(&self, host: &str, port: u16) -> bool {
        let ip = if host == "localhost" { Some(IpAddr::V4(Ipv4Addr::LOCALHOST)) } else { host.parse::<IpAddr>().ok() };
        ip.is_some_and(|ip| self.egress.is_own_listener(SocketAddr::new(ip, port)))
    }
}

impl Running {
    /// Stops accepting, waits for calls in flight (at most the drain timeout), then returns.
    pub async fn shutdown(self) {
        let drain_timeout = self.proxy.config.drain_timeout;
        let drain = self.proxy.drain.clone();
        let waited = tokio::time::timeout(drain_timeout, drain.drain()).await;
        if waited.is_err() {
            tracing::warn!(
                remaining = drain.active(),
                timeout = ?drain_timeout,
                "calls still in flight after the drain timeout; closing them"
            );
        }
        for task in self.tasks {
            task.abort();
        }
    }
}
