//! Start-up and shutdown of the proxy process: workers, listeners, background threads.
//!
//! Thread per core, like nginx and Envoy: each worker is an OS thread running a single-threaded
//! tokio runtime with its own `SO_REUSEPORT` listeners and its own upstream connection pool. A
//! connection, the calls on it, and the upstream connections serving them stay on one thread, so
//! handing a streamed response from the upstream connection to the client connection is a local
//! queue push, not a cross-thread wake-up. Shared state (config, CA, metrics, runs) is read-mostly
//! and lock-light (see [`crate::state`]).
//!
//! [`Proxy::start`] does everything that can fail before serving — CA, upstream trust, binding
//! every listener, building every runtime — and only then starts the workers, so a bad port or a
//! broken CA is an error at start, never a half-started proxy. [`Running::shutdown`] stops
//! accepting and lets calls in flight finish, bounded by the drain timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use fleetforge_trust::RunId;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::capability::Capabilities;
use crate::config::{Config, SidecarConfig};
use crate::listener;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::policy::builtin::Builtin;
use crate::runs::Runs;
use crate::ship::{self, Background};
use crate::shutdown::Drain;
use crate::spool::{Spool, SpoolLimits};
use crate::state::Proxy;
use crate::tls::{self, Ca, TlsError};
use crate::upstream::{self, Egress};

/// Concurrent HTTP/2 streams per client connection.
const H2_MAX_STREAMS: u32 = 256;
/// Largest HTTP/2 header list (decoded), bytes: the order of HTTP/1.1's header limits.
const H2_MAX_HEADER_LIST: u32 = 64 << 10;
/// Streams a client may open and reset before the proxy accepts them, per connection.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy may reset for a client's protocol errors, per connection.
const H2_MAX_LOCAL_RESETS: usize = 1024;

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
    /// A worker thread or its runtime could not be created.
    #[error("cannot start worker threads: {0}")]
    Worker(std::io::Error),
    /// The receipt signing key could not be loaded or created.
    #[error("receipt signing key: {0}")]
    Key(#[from] fleetforge_trust::sign::KeyError),
    /// The receipt spool could not be opened.
    #[error("receipt spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// A policy pack did not load.
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The price list did not load.
    #[error("{0}")]
    Prices(#[from] crate::prices::PricesError),
    /// The seal store could not be opened.
    #[error("seal store {path}: {source}; check that $FLEETFORGE_HOME is writable")]
    Seals {
        /// Its directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A configured dataset could not be read.
    #[error("dataset {name} ({path}): {source}")]
    Dataset {
        /// Its name.
        name: String,
        /// Its path.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Replay mode could not load the recorded run.
    #[error("{0}")]
    Replay(#[from] crate::replay::ReplayError),
    /// Settings that cannot work together.
    #[error("{0}")]
    Unusable(String),
    /// The OTLP exporter could not start.
    #[error("{0}")]
    Telemetry(#[from] fleetforge_otel::StartError),
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
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    background: Option<Background>,
    capability_sync: Option<std::thread::JoinHandle<()>>,
}

/// One listening socket per worker on the same address (`SO_REUSEPORT`: the kernel spreads
/// connections across them).
fn bind_group(
    key: &str,
    addr: SocketAddr,
    workers: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let err = |source| StartError::Bind { key: key.to_owned(), addr, source };
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Socket::new(Domain::for_address(bound), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        socket.set_reuse_address(true).map_err(err)?;
        socket.set_reuse_port(true).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        socket.bind(&bound.into()).map_err(err)?;
        socket.listen(1024).map_err(err)?;
        let listener: std::net::TcpListener = socket.into();
        // Port 0 picks a free port once; the other workers join that port.
        bound = listener.local_addr().map_err(err)?;
        sockets.push(listener);
    }
    Ok((bound, sockets))
}

/// What one worker serves.
struct WorkerListeners {
    forward: std::net::TcpListener,
    admin: Option<std::net::TcpListener>,
    sidecars: Vec<(std::net::TcpListener, SidecarConfig)>,
}

impl Proxy {
    /// Sets up TLS, binds every listener, and starts the workers.
    pub fn start(config: Config) -> Result<Running, StartError> {
        let provider = tls::provider();
        let ca = Ca::load_or_create(&config.home, provider.clone())?;
        let client_tls = tls::upstream_client_config(provider, config.upstream_ca.as_deref())?;
        let egress = Arc::new(Egress::new(&config));
        let key = if config.receipts.enabled || config.budget.lease {
            Some(fleetforge_trust::sign::SigningKey::load_or_create(&config.home.join("keys/proxy-ed25519.pem"))?)
        } else {
            None
        };
        // The holder of budget leases: the receipt signing key's id, stable across restarts.
        let holder = key.as_ref().map(|k| k.id().to_owned());
        let spool = if let (true, Some(key)) = (config.receipts.enabled, key) {
            let r = &config.receipts;
            let limits = SpoolLimits {
                max_bytes: r.spool_max_bytes,
                segment_bytes: r.segment_bytes,
                seal_interval: r.seal_interval,
                fsync: r.fsync,
                min_free_disk: r.min_free_disk,
            };
            Some(Arc::new(Spool::open(&config.home.join("spool"), key, limits)?))
        } else {
            None
        };
        let workers = config.workers.get();
        let clients =
            (0..workers).map(|_| upstream::client(egress.clone(), client_tls.clone(), config.upstream_http2)).collect();
        let metrics = Arc::new(Metrics::default());
        // Sealed bodies are shipped by the receipt shipper, ahead of the receipts that name them.
        let seals = if config.seal.enabled {
            let dir = config.home.join("seals");
            Some(crate::seal::SealStore::open(&dir).map_err(|source| StartError::Seals { path: dir, source })?)
        } else {
            None
        };
        let seals_for_shipper = seals.clone();
        let background = match &spool {
            Some(spool) => Some(
                ship::start(
                    spool.clone(),
                    metrics.clone(),
                    config.control_url.clone(),
                    config.control_token.clone(),
                    client_tls.clone(),
                    seals_for_shipper,
                )
                .map_err(StartError::Worker)?,
            ),
            None => None,
        };

        let capabilities = if config.capabilities.required {
            if config.control_token.is_none() {
                return Err(StartError::Unusable(
                    "FLEETFORGE_CAPABILITIES needs FLEETFORGE_CONTROL_TOKEN: the proxy fetches control's capability root keys and revocations".into(),
                ));
            }
            Some(Arc::new(Capabilities::new(config.capabilities.call_ttl)))
        } else {
            if config.control_token.is_some() {
                tracing::warn!(
                    "run tokens are NOT verified (FLEETFORGE_CAPABILITIES or proxy.capabilities.required is false): any password is accepted as a run's \
                     token, so a receipt's run proves nothing; unset it to verify tokens against control's root keys"
                );
            } else {
                tracing::info!(
                    "run tokens are not verified: no FLEETFORGE_CONTROL_TOKEN, so no control to fetch root keys from"
                );
            }
            None
        };

        let policy = if config.policy.packs.is_empty() {
            None
        } else {
            let policy = Arc::new(Policy::load(&config.policy.packs, config.policy.limits)?);
            policy.watch(config.policy.reload_interval).map_err(StartError::Worker)?;
            for pack in &policy.current().packs {
                tracing::info!(pack = %pack.id, kind = %pack.kind(), "policy pack loaded");
            }
            Some(policy)
        };
        let replayer = match &config.replay {
            Some(replay) => {
                let loaded = crate::replay::Replayer::load(
                    replay,
                    &config.control_url,
                    config.control_token.as_ref(),
                    client_tls.clone(),
                    &replay.local_seals.clone().unwrap_or_else(|| config.home.join("seals")),
                )?;
                tracing::info!(run = %replay.run, calls = loaded.len(), strict = replay.strict, "replaying a recorded run");
                Some(Arc::new(loaded))
            }
            None => None,
        };
        let datasets = config
            .datasets
            .iter()
            .map(|d| {
                let bytes = std::fs::read(&d.path).map_err(|source| StartError::Dataset {
                    name: d.name.clone(),
                    path: d.path.clone(),
                    source,
                })?;
                Ok(fleetforge_trust::receipt::DatasetDigest {
                    name: d.name.clone(),
                    sha256: fleetforge_trust::text::hex(&fleetforge_trust::canonical::sha256(&bytes)),
                    size: bytes.len() as u64,
                })
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        let tracer = match &config.telemetry {
            Some(otel) => {
                let tracer = fleetforge_otel::Tracer::start(otel.clone())?;
                tracing::info!(
                    endpoint = tracer.endpoint(),
                    semconv = tracer.semconv.version(),
                    "exporting a span per call over OTLP"
                );
                Some(Arc::new(tracer))
            }
            None => None,
        };
        let builtin = Builtin::new(config.allowed_hosts.clone(), config.allowed_models.clone());
        let prices = crate::prices::Prices::load(config.prices.as_deref())?;
        let leases = match (&config.control_token, holder) {
            (Some(token), Some(holder)) if config.budget.lease => {
                let b = &config.budget;
                let settings = crate::lease::Settings {
                    holder,
                    slices: b.lease_slices,
                    idle: b.lease_idle,
                    fail_open: b.lease_fail_open,
                };
                let (leases, _thread) = crate::lease::Leases::start(
                    settings,
                    config.control_url.clone(),
                    token.clone(),
                    client_tls.clone(),
                )
                .map_err(StartError::Worker)?;
                Some(leases)
            }
            _ => None,
        };
        if config.capabilities.required || config.budget.has_defaults() {
            // Run tokens may carry budgets: load the tokenizers now rather than on a call.
            let _ = std::thread::Builder::new().name("fleetforge-tokenizers".into()).spawn(crate::estimate::warm);
        }

        let (forward_addr, forward) = bind_group("proxy.listen", config.listen, workers)?;
        let (admin_addr, mut admin) = bind_group("proxy.admin_listen", config.admin_listen, 1)?;
        let mut sidecar_addrs = Vec::new();
        let mut sidecar_sockets = Vec::new();
        for (i, s) in config.sidecars.iter().enumerate() {
            let (addr, sockets) = bind_group(&format!("proxy.sidecar[{i}].listen"), s.listen, workers)?;
            sidecar_addrs.push(addr);
            sidecar_sockets.push((sockets, s.clone()));
        }
        let mut own = vec![forward_addr, admin_addr];
        own.extend(&sidecar_addrs);
        egress.set_own_listeners(own);

        let mut per_worker: Vec<WorkerListeners> = forward
            .into_iter()
            .enumerate()
            .map(|(i, forward)| WorkerListeners {
                forward,
                admin: if i == 0 { admin.pop() } else { None },
                sidecars: Vec::new(),
            })
            .collect();
        for (sockets, sidecar) in sidecar_sockets {
            for (w, socket) in per_worker.iter_mut().zip(sockets) {
                w.sidecars.push((socket, sidecar.clone()));
            }
        }
        let runtimes = (0..workers)
            .map(|_| tokio::runtime::Builder::new_current_thread().enable_all().build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Worker)?;

        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new()).header_read_timeout(config.header_timeout).keep_alive(true);
        // HTTP/2 limits, explicit rather than left to hyper's and h2's defaults: streams per
        // connection; the header list a HEADERS + CONTINUATION sequence may carry (a longer one,
        // or a CONTINUATION flood, ends the connection); streams a client may reset before the
        // proxy accepts them (rapid reset, CVE-2023-44487) and streams the proxy may reset for a
        // client's protocol errors (CVE-2025-8671) before the connection ends with GOAWAY.
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .adaptive_window(true)
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1().timer(TokioTimer::new()).header_read_timeout(config.header_timeout).keep_alive(true);
        auto.http2()
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);

        let proxy = Arc::new(Proxy {
            config,
            ca,
            clients,
            egress,
            metrics,
            spool,
            capabilities: capabilities.clone(),
            policy,
            builtin,
            prices,
            runs: Runs::default(),
            connections: Default::default(),
            leases,
            seals: seals.clone(),
            replayer,
            datasets,
            tracer,
            anonymous_run: RunId::new("anonymous").map_err(|e| StartError::Tls(TlsError::BadCa(e.to_string())))?,
            drain: Drain::new(),
            h1,
            h2,
            auto,
        });
        if let Some(leases) = &proxy.leases {
            let weak = Arc::downgrade(&proxy);
            leases.sweep(move || weak.upgrade().map(|p| (p.runs.now_ms(), p.runs.leased())));
        }
        let (stop, stop_rx) = watch::channel(false);
        let capability_sync = match (&capabilities, &proxy.config.control_token) {
            (Some(caps), Some(token)) => Some(
                crate::capability::sync::start(
                    caps.clone(),
                    proxy.config.control_url.clone(),
                    token.clone(),
                    client_tls.clone(),
                    stop_rx.clone(),
                )
                .map_err(StartError::Worker)?,
            ),
            _ => None,
        };
        let mut threads = Vec::with_capacity(workers);
        for (worker, (runtime, listeners)) in runtimes.into_iter().zip(per_worker).enumerate() {
            let (proxy, mut stop_rx) = (proxy.clone(), stop_rx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("fleetforge-w{worker}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        serve_worker(proxy, worker, listeners);
                        // Runs until shutdown has drained (or timed out); dropping the runtime
                        // then cancels whatever is left.
                        let _ = stop_rx.wait_for(|stopped| *stopped).await;
                    });
                })
                .map_err(StartError::Worker)?;
            threads.push(thread);
        }
        Ok(Running {
            forward: forward_addr,
            admin: admin_addr,
            sidecars: sidecar_addrs,
            proxy,
            stop,
            workers: threads,
            background,
            capability_sync,
        })
    }
}

/// Starts one worker's accept loops on its runtime. Must run inside that runtime.
fn serve_worker(proxy: Arc<Proxy>, worker: usize, listeners: WorkerListeners) {
    let tokio_listener = |l: std::net::TcpListener| match tokio::net::TcpListener::from_std(l) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(worker, error = %e, "cannot register a listener with the worker's runtime");
            None
        }
    };
    if let Some(l) = tokio_listener(listeners.forward) {
        tokio::spawn(listener::forward::serve(proxy.clone(), l, worker));
    }
    if let Some(l) = listeners.admin.and_then(tokio_listener) {
        tokio::spawn(listener::admin::serve(proxy.clone(), l, worker));
    }
    for (l, sidecar) in listeners.sidecars {
        if let Some(l) = tokio_listener(l) {
            tokio::spawn(listener::sidecar::serve(proxy.clone(), l, worker, sidecar));
        }
    }
}

impl Running {
    /// Stops accepting, waits for calls in flight (at most the drain timeout), then stops the
    /// workers.
    pub async fn shutdown(self) {
        let drain_timeout = self.proxy.config.drain_timeout;
        let drain = self.proxy.drain.clone();
        if tokio::time::timeout(drain_timeout, drain.drain()).await.is_err() {
            tracing::warn!(
                remaining = drain.active(),
                timeout = ?drain_timeout,
                "calls still in flight after the drain timeout; closing them"
            );
        }
        if let Some(leases) = &self.proxy.leases {
            let _ = tokio::time::timeout(crate::lease::TIMEOUT, leases.release_all(&self.proxy.runs)).await;
        }
        let _ = self.stop.send(true);
        let workers = self.workers;
        let background = self.background;
        let capability_sync = self.capability_sync;
        let tracer = self.proxy.tracer.clone();
        // Joining blocks; keep it off the async threads.
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
            if let Some(sync) = capability_sync {
                let _ = sync.join();
            }
            // Every call has ended: seal the last receipts and give the shipper a moment.
            if let Some(background) = background {
                background.stop(drain_timeout);
            }
            if let Some(tracer) = &tracer {
                tracer.shutdown(drain_timeout);
            }
        })
        .await;
    }
}
