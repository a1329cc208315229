//! Sealing and shipping receipts: the two background threads behind the spool.
//!
//! - The **sealer** waits until receipts are pending, lets the batch fill for the seal interval,
//!   then signs it and syncs the spool ([`Spool::seal`]).
//! - The **shipper** registers this proxy's public key with control (`PUT /v1/keys/{key_id}`),
//!   then reads sealed receipts off the spool files in order and posts them in chunks
//!   (`POST /v1/receipts`). Each receipt control answers for — accepted, duplicate, or rejected
//!   (kept in `spool/rejected.jsonl` with the reason, and logged at ERROR) — is acknowledged, and
//!   fully acknowledged segments are deleted. Network errors and 5xx are retried with exponential
//!   backoff (100 ms doubling to 30 s); nothing is acknowledged until control has answered, so
//!   delivery is at least once and control's idempotent ingest makes it exactly once.
//!
//! Sealed bodies ([`crate::seal`]) travel the same way: before each batch of receipts the shipper
//! waits for the seal store's writer and puts every pending blob on control
//! (`PUT /v1/seals/{sha256}`), so a receipt never reaches control before the blobs it names.
//!
//! Without `FLEETFORGE_CONTROL_TOKEN` the shipper does not start: receipts stay in the spool
//! (bounded by its size limit) until a proxy with a token ships them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;

use crate::metrics::{Metrics, ShipResult};
use crate::seal::SealStore;
use crate::spool::{Shippable, Spool};
use fleetforge_trust::Secret;
use fleetforge_trust::wire::{IngestResponse, ItemResult, ItemStatus, ReceiptBatch};

/// Receipts per `POST /v1/receipts`.
const CHUNK: usize = 500;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

type ControlClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The running sealer and shipper.
#[derive(Debug)]
pub struct Background {
    spool: Arc<Spool>,
    stop: watch::Sender<bool>,
    sealer: Option<JoinHandle<()>>,
    shipper: Option<JoinHandle<()>>,
}

/// Starts the sealer, and the shipper when a control token is configured.
pub fn start(
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    control_url: Uri,
    token: Option<Secret>,
    tls: rustls::ClientConfig,
    seals: Option<Arc<SealStore>>,
) -> std::io::Result<Background> {
    let (stop, stop_rx) = watch::channel(false);
    let sealer = {
        let spool = spool.clone();
        std::thread::Builder::new().name("fleetforge-sealer".into()).spawn(move || {
            while spool.wait_for_batch() {
                if let Err(e) = spool.seal() {
                    tracing::error!(error = %e, "cannot seal receipts; retrying in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if let Err(e) = spool.seal() {
                tracing::error!(error = %e, "cannot seal the last receipts; they are sealed on the next start");
            }
        })?
    };
    let shipper = match token {
        None => {
            tracing::warn!(
                "FLEETFORGE_CONTROL_TOKEN is not set: receipts are kept in the spool and not shipped to control"
            );
            None
        }
        Some(token) => {
            let spool = spool.clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let client: ControlClient =
                Client::builder(TokioExecutor::new()).timer(TokioTimer::new()).pool_timer(TokioTimer::new()).build(
                    hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(tls)
                        .https_or_http()
                        .enable_http1()
                        .build(),
                );
            let shipper = Shipper { spool, metrics, base: control_url, token, client, seals };
            Some(std::thread::Builder::new().name("fleetforge-shipper".into()).spawn(move || {
                runtime.block_on(shipper.run(stop_rx));
            })?)
        }
    };
    Ok(Background { spool, stop, sealer: Some(sealer), shipper })
}

impl Background {
    /// Seals what is pending, gives the shipper until `deadline` to deliver it, and stops both.
    pub fn stop(mut self, deadline: Duration) {
        self.spool.stop();
        if let Some(sealer) = self.sealer.take() {
            let _ = sealer.join();
        }
        if let Some(shipper) = self.shipper.take() {
            let start = std::time::Instant::now();
            while self.spool.unacknowledged() > 0 && start.elapsed() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.stop.send(true);
            let _ = shipper.join();
        }
    }
}

struct Shipper {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    base: Uri,
    token: Secret,
    client: ControlClient,
    seals: Option<Arc<SealStore>>,
}

/// What one attempt to reach control came to.
#[derive(Debug)]
enum Failure {
    /// Worth retrying (network, 5xx, 429).
    Retry(String),
    /// Needs an operator (401/403/4xx): retried slowly, logged at ERROR.
    Operator(String),
}

impl Shipper {
    fn url(&self, path: &str) -> Result<Uri, Failure> {
        let base = self.base.to_string();
        format!("{}{path}", base.trim_end_matches('/'))
            .parse()
            .map_err(|_| Failure::Operator(format!("bad control URL {base}")))
    }

    async fn send(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Bytes, Failure> {
        self.send_as(method, path, "application/json", body).await
    }

    async fn send_as(&self, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Result<Bytes, Failure> {
        let request = Request::builder()
            .method(method)
            .uri(self.url(path)?)
            .header(AUTHORIZATION, format!("Bearer {}", self.token.expose()))
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::Operator(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| Failure::Retry(format!("control at {} did not answer within 30 s", self.base)))?
            .map_err(|e| Failure::Retry(format!("cannot reach control at {}: {e}", self.base)))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| Failure::Retry(e.to_string()))?.to_bytes();
        match status {
            s if s.is_success() => Ok(body),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(Failure::Operator(format!(
                "control refused the proxy's credentials ({s}): check FLEETFORGE_CONTROL_TOKEN (it needs the proxy or admin role)"
            ))),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Err(Failure::Retry(format!("control answered {s}")))
            }
            s => Err(Failure::Operator(format!("control answered {s}: {}", String::from_utf8_lossy(&body)))),
        }
    }

    async fn register_key(&self) -> Result<(), Failure> {
        let body = serde_json::json!({
            "alg": "ed25519",
            "public_key": URL_SAFE_NO_PAD.encode(self.spool.public_key()),
        });
        let path = format!("/v1/keys/{}", self.spool.key_id());
        self.send(Method::PUT, &path, body.to_string().into_bytes()).await.map(|_| ())
    }

    async fn post(&self, chunk: &[Shippable]) -> Result<(), Failure> {
        let mut body = Vec::with_capacity(chunk.iter().map(|s| s.json.len() + 1).sum::<usize>() + 16);
        ReceiptBatch::encode(chunk.iter().map(|s| s.json.as_slice()), &mut body);
        let answer = self.send(Method::POST, "/v1/receipts", body).await?;
        let parsed: IngestResponse = serde_json::from_slice(&answer)
            .map_err(|e| Failure::Operator(format!("control's ingest answer is not understood: {e}")))?;
        let mut acked = Vec::with_capacity(chunk.len());
        let (mut accepted, mut duplicate, mut rejected) = (0, 0, 0);
        // Control answers per receipt id, in the order posted; a receipt it did not mention is not
        // acknowledged. The order is only a shortcut: an answer out of order is found by id.
        let mut by_id: Option<std::collections::HashMap<&str, &ItemResult>> = None;
        for (i, item) in chunk.iter().enumerate() {
            let result = match parsed.results.get(i) {
                Some(r) if r.id == item.id => r,
                _ => {
                    let index =
                        by_id.get_or_insert_with(|| parsed.results.iter().map(|r| (r.id.as_str(), r)).collect());
                    match index.get(item.id.as_str()) {
                        Some(r) => *r,
                        None => continue,
                    }
                }
            };
            match result.status {
                ItemStatus::Accepted => accepted += 1,
                ItemStatus::Duplicate => duplicate += 1,
                ItemStatus::Rejected => {
                    rejected += 1;
                    let reason = result.error.clone().unwrap_or_else(|| "rejected".into());
                    tracing::error!(receipt = %item.id, reason = %reason, "control rejected a receipt; kept in spool/rejected.jsonl");
                    if let Err(e) = self.spool.reject(item, &reason) {
                        tracing::error!(error = %e, "cannot keep the rejected receipt");
                    }
                }
            }
            acked.push(item.segment);
        }
        self.metrics.receipts_shipped(ShipResult::Accepted, accepted);
        self.metrics.receipts_shipped(ShipResult::Duplicate, duplicate);
        self.metrics.receipts_shipped(ShipResult::Rejected, rejected);
        self.spool.ack(acked).map_err(|e| Failure::Operator(e.to_string()))
    }

    /// Puts every blob the seal store has written and control does not hold yet on control.
    async fn ship_seals(&self) -> Result<(), Failure> {
        let Some(seals) = &self.seals else { return Ok(()) };
        seals.flush().await;
        let pending = seals.pending();
        let mut shipped = Vec::with_capacity(pending.len());
        let mut result = Ok(());
        for address in pending {
            let Some(bytes) = seals.read(&address) else {
                tracing::error!(address = %address, "a sealed body is missing or damaged in seals/ and cannot be shipped; the call it belongs to cannot be replayed");
                shipped.push(address);
                continue;
            };
            let path = format!("/v1/seals/{address}");
            match self.send_as(Method::PUT, &path, "application/octet-stream", bytes).await {
                Ok(_) => shipped.push(address),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = seals.shipped(&shipped) {
            tracing::warn!(error = %e, "cannot note shipped seals in seals/pending.log; they are shipped again on the next start");
        }
        result
    }

    /// Retries `attempt` with backoff until it succeeds or the stop signal comes.
    async fn persist<F, Fut>(&self, what: &str, stop: &mut watch::Receiver<bool>, attempt: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), Failure>>,
    {
        let mut backoff = BACKOFF_MIN;
        loop {
            match attempt().await {
                Ok(()) => return true,
                Err(failure) => {
                    self.metrics.ship_failed();
                    match &failure {
                        Failure::Retry(m) if backoff <= BACKOFF_MIN * 4 => {
                            tracing::warn!(what, error = %m, retry_in = ?backoff, "shipping receipts failed")
                        }
                        Failure::Retry(m) => {
                            tracing::debug!(what, error = %m, retry_in = ?backoff, "shipping receipts failed")
                        }
                        Failure::Operator(m) => {
                            tracing::error!(what, error = %m, retry_in = ?backoff, "shipping receipts failed")
                        }
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return false,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        if !self.persist("register key", &mut stop, || self.register_key()).await {
            return;
        }
        tracing::info!(key_id = %self.spool.key_id(), control = %self.base, "receipt signing key registered with control");
        let mut reader = self.spool.reader();
        let mut queue: VecDeque<Shippable> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match reader.next(&self.spool, CHUNK) {
                    Ok(items) => queue.extend(items),
                    Err(e) => tracing::error!(error = %e, "cannot read the spool"),
                }
            }
            self.metrics.spool_state(self.spool.bytes(), self.spool.unacknowledged());
            if queue.is_empty() {
                tokio::select! {
                    () = self.spool.sealed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            let n = queue.len().min(CHUNK);
            let chunk: Vec<Shippable> = queue.drain(..n).collect();
            if !self.persist("put seals", &mut stop, || self.ship_seals()).await {
                return;
            }
            if !self.persist("post receipts", &mut stop, || self.post(&chunk)).await {
                return;
            }
        }
    }
}
