//! FleetForge control service and operator CLI.
//!
//! The control service keeps the evidence: runs, receipts (verified on ingest — signature,
//! Merkle proof, chain, seq — and stored idempotently), proxy keys, the sealed request and
//! response bodies proxies ship, and on-demand verification of a whole run. It runs on Postgres
//! (`DATABASE_URL`) or, by default, on SQLite under `$FLEETFORGE_HOME`. Start reading at
//! [`api::router`]; storage is [`store`], ingest is [`ingest`], replay manifests and reports are
//! [`replay`]. The operator CLI, `fleetforge-ctl`, is its own crate (`ctl/`): it links the proxy
//! for `up` and `policy`, which this crate does not.
#![forbid(unsafe_code)]

pub mod aibom;
pub mod api;
pub mod attest;
pub mod auth;
pub mod c2pa;
pub mod capability;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod replay;
pub mod scitt;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::App;
use crate::config::ControlConfig;
use crate::store::{Backend, Store, StoreError};

/// Why control could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The state directory or the listener failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The OTLP exporter could not start.
    #[error("{0}")]
    Telemetry(#[from] fleetforge_otel::StartError),
}

/// A running control service.
#[derive(Debug)]
pub struct Running {
    /// The API address.
    pub addr: SocketAddr,
    /// The database engine.
    pub backend: Backend,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Connects the store, migrates it (unless disabled), binds the listener and serves.
pub async fn start(config: &ControlConfig) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.home).map_err(|source| StartError::Io {
        what: format!("cannot create FLEETFORGE_HOME {}", config.home.display()),
        source,
    })?;
    let store = Store::connect(&config.database()).await?;
    if config.migrate {
        store.migrate().await?;
    }
    // Receipts stored before the transparency log existed are appended in the background, a
    // thousand per transaction, so a large database does not hold up the start; until then their
    // inclusion proofs answer 409.
    let backfill = store.clone();
    tokio::spawn(async move {
        match backfill.backfill_log().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                receipts = n,
                "appended receipts stored before the transparency log to their tenants' logs"
            ),
            Err(e) => {
                tracing::error!(error = %e, "appending older receipts to the transparency log failed; retried at the next start")
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|source| StartError::Io {
        what: format!("cannot listen on {} (control.listen)", config.listen),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Io { what: "listener address".into(), source })?;
    let backend = store.backend();
    let roots = capability::KeyRing::load_or_create(&config.home).map_err(|e| StartError::Io {
        what: "capability root keys".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let c2pa = c2pa::SigningCa::load_or_create(&config.home)
        .map_err(|e| StartError::Io { what: "C2PA signing CA".into(), source: std::io::Error::other(e.to_string()) })?;
    let tracer = match &config.telemetry {
        Some(otel) => {
            let tracer = fleetforge_otel::Tracer::start(otel.clone())?;
            tracing::info!(endpoint = tracer.endpoint(), "exporting a span per API request over OTLP");
            Some(Arc::new(tracer))
        }
        None => None,
    };
    let retention = spawn_retention(&store, &config.retention);
    let app = Arc::new(App {
        roots,
        store,
        bootstrap: config.bootstrap_token.as_ref().map(|t| auth::token_hash(t.expose())),
        signatures: Default::default(),
        keys: Default::default(),
        ingest_slots: Default::default(),
        metrics: Default::default(),
        max_batch: config.max_batch,
        tracer,
        scitt: Default::default(),
        c2pa,
    });
    let statements = scitt::spawn(app.clone(), config.scitt.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let router = api::router(app);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "control API server failed");
        }
        if let Some(job) = retention {
            job.abort();
        }
        statements.abort();
    });
    Ok(Running { addr, backend, stop, task })
}

/// The retention job: a pass at start and every `interval`, pruning receipt bodies and sealed
/// blobs older than their periods ([`store::Store::prune_receipts`], [`store::Store::prune_seals`]);
/// `None` when no period is set.
fn spawn_retention(store: &Store, retention: &config::Retention) -> Option<JoinHandle<()>> {
    if retention.receipts_days.is_none() && retention.seals_days.is_none() {
        return None;
    }
    let (store, retention) = (store.clone(), retention.clone());
    let cutoff = |days: u32| store::now_micros() - i64::from(days) * 86_400_000_000;
    Some(tokio::spawn(async move {
        loop {
            if let Some(days) = retention.receipts_days {
                match store.prune_receipts(cutoff(days)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        receipts = n,
                        days,
                        "retention pruned receipt bodies (logged in the tenants' logs)"
                    ),
                    Err(e) => tracing::error!(error = %e, "retention: pruning receipts failed; retried next pass"),
                }
            }
            if let Some(days) = retention.seals_days {
                match store.prune_seals(cutoff(days)).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(blobs = n, days, "retention deleted sealed blobs (logged in the tenants' logs)")
                    }
                    Err(e) => tracing::error!(error = %e, "retention: deleting sealed blobs failed; retried next pass"),
                }
            }
            tokio::time::sleep(retention.interval).await;
        }
    }))
}

impl Running {
    /// Stops accepting, finishes requests in flight, and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
