//! The exporter: a bounded queue the hot path pushes finished spans into without ever waiting,
//! and a thread of its own that sends them in batches over OTLP.
//!
//! A full queue drops the span and counts it (`dropped`): a slow or dead collector never slows or
//! fails a call. The thread wakes for the first span, takes whatever else is queued, and lets more
//! gather for 10 ms before it looks again; it sends a batch when it holds `max_batch` spans or
//! when the oldest has waited `schedule_delay`; a failed export is retried twice (after 100 and 400 ms) when the
//! collector says it is unavailable or overloaded, then counted as failed and dropped.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prost::Message as _;

use crate::config::{ExportConfig, Protocol};
use crate::proto;
use crate::span::{Span, Value};

/// How long the export thread lets spans gather after a wake-up, so a busy proxy wakes it about
/// a hundred times a second rather than once per call.
const GATHER: Duration = Duration::from_millis(10);

/// The gRPC method spans are exported with.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Counts of what happened to spans, for the binaries' `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Spans accepted onto the queue.
    pub queued: AtomicU64,
    /// Spans the collector acknowledged.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans lost to failed exports (collector unreachable, refused, timed out).
    pub failed: AtomicU64,
}

enum Msg {
    Span(Box<Span>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The handle callers hold: queue spans, flush, read the counts.
#[derive(Debug)]
pub struct Exporter {
    tx: SyncSender<Msg>,
    stats: Arc<Stats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Span(_) => "Span",
            Msg::Flush(_) => "Flush",
        })
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TLS configuration for an `https` endpoint failed.
    #[error("OTLP exporter TLS: {0}")]
    Tls(#[from] fleetforge_trust::tls::ClientTlsError),
    /// The thread or its runtime could not be made.
    #[error("cannot start the OTLP exporter thread: {0}")]
    Thread(#[from] std::io::Error),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

impl Exporter {
    /// Starts the export thread for `config`.
    pub fn start(config: ExportConfig) -> Result<Self, StartError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.max_queue);
        let stats = Arc::new(Stats::default());
        let tls =
            fleetforge_trust::tls::client_config(fleetforge_trust::tls::provider(), config.certificate.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new().name("fleetforge-otlp".into()).spawn(move || {
            let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
            let grpc = config.protocol == Protocol::Grpc;
            let client: HttpClient = {
                let _guard = runtime.enter();
                let mut builder = Client::builder(TokioExecutor::new());
                builder.timer(TokioTimer::new()).pool_timer(TokioTimer::new());
                if grpc {
                    builder.http2_only(true).build(connector.enable_http2().build())
                } else {
                    builder.build(connector.enable_http1().build())
                }
            };
            let worker = Worker { config, client, stats: thread_stats, resource: Vec::new() };
            worker.run(&runtime, &rx);
        })?;
        Ok(Self { tx, stats, thread: Mutex::new(Some(thread)) })
    }

    /// Queues a finished span; never waits. A full queue drops it and counts the drop.
    pub fn submit(&self, span: Span) {
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends everything queued so far and waits up to `timeout` for it to be exported (or to
    /// fail). `false` when the deadline passed first.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok()
    }

    /// The counts so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Flushes for up to `timeout`, then lets the thread end.
    pub fn shutdown(&self, timeout: Duration) {
        self.flush(timeout);
        // The thread ends when every sender is gone; it is detached here rather than joined, so a
        // collector that hangs cannot hold the process.
        drop(self.thread.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

struct Worker {
    config: ExportConfig,
    client: HttpClient,
    stats: Arc<Stats>,
    resource: Vec<(String, Value)>,
}

impl Worker {
    fn run(mut self, runtime: &tokio::runtime::Runtime, rx: &Receiver<Msg>) {
        self.resource = self.config.resource.iter().map(|(k, v)| (k.clone(), Value::Str(v.clone()))).collect();
        let mut batch: Vec<Span> = Vec::with_capacity(self.config.max_batch);
        let mut oldest: Option<Instant> = None;
        loop {
            let wait = match oldest {
                Some(t) => self.config.schedule_delay.saturating_sub(t.elapsed()),
                None => Duration::from_secs(3600),
            };
            let mut flushes = Vec::new();
            let mut closed = false;
            let mut got_span = false;
            let mut take = |msg: Msg, batch: &mut Vec<Span>| match msg {
                Msg::Span(span) => {
                    batch.push(*span);
                    got_span = true;
                }
                Msg::Flush(done) => flushes.push(done),
            };
            match rx.recv_timeout(wait) {
                Ok(msg) => take(msg, &mut batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
            // Whatever else is queued comes along without another wait.
            while batch.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(msg) => take(msg, &mut batch),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                oldest.get_or_insert_with(Instant::now);
            }
            let due = oldest.is_some_and(|t| t.elapsed() >= self.config.schedule_delay);
            if batch.len() >= self.config.max_batch || due || ((closed || !flushes.is_empty()) && !batch.is_empty()) {
                runtime.block_on(self.export(std::mem::take(&mut batch)));
                oldest = None;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if closed {
                return;
            }
            // Under load, let spans gather instead of waking for each one: one wake-up per
            // GATHER rather than per call (a flush is answered at most GATHER late).
            if got_span {
                let left = oldest.map_or(GATHER, |t| self.config.schedule_delay.saturating_sub(t.elapsed()));
                std::thread::sleep(GATHER.min(left));
            }
        }
    }

    async fn export(&self, spans: Vec<Span>) {
        let count = spans.len() as u64;
        let mut payload = crate::wire::export_request(&self.resource, &spans);
        drop(spans);
        if self.config.gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            // Writing to a Vec cannot fail.
            let _ = enc.write_all(&payload);
            payload = enc.finish().unwrap_or_default();
        }
        let payload = Bytes::from(payload);
        let mut delay = Duration::from_millis(100);
        for attempt in 0..3 {
            let outcome = tokio::time::timeout(self.config.timeout, self.send(payload.clone())).await;
            let retry = match outcome {
                Ok(Ok(rejected)) => {
                    self.stats.exported.fetch_add(count.saturating_sub(rejected), Ordering::Relaxed);
                    self.stats.failed.fetch_add(rejected.min(count), Ordering::Relaxed);
                    return;
                }
                Ok(Err(Failure { retryable, message })) => {
                    tracing::warn!(endpoint = %self.config.endpoint, attempt, "OTLP export failed: {message}");
                    retryable
                }
                Err(_) => {
                    tracing::warn!(endpoint = %self.config.endpoint, attempt, timeout_ms = self.config.timeout.as_millis() as u64, "OTLP export timed out");
                    true
                }
            };
            if !retry || attempt == 2 {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 4;
        }
        self.stats.failed.fetch_add(count, Ordering::Relaxed);
    }

    /// One export; `Ok(rejected spans)` when the collector answered with success.
    async fn send(&self, payload: Bytes) -> Result<u64, Failure> {
        let grpc = self.config.protocol == Protocol::Grpc;
        let (uri, body, content_type) = if grpc {
            let base = self.config.endpoint.to_string();
            let uri = format!("{}{GRPC_PATH}", base.trim_end_matches('/'));
            let mut framed = Vec::with_capacity(payload.len() + 5);
            framed.push(u8::from(self.config.gzip));
            framed.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
            framed.extend_from_slice(&payload);
            (uri, Bytes::from(framed), "application/grpc")
        } else {
            (self.config.endpoint.to_string(), payload, "application/x-protobuf")
        };
        let mut req = Request::post(uri.as_str()).header(http::header::CONTENT_TYPE, content_type);
        if grpc {
            req = req.header(http::header::TE, "trailers");
            if self.config.gzip {
                req = req.header("grpc-encoding", "gzip");
            }
        } else if self.config.gzip {
            req = req.header(http::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &self.config.headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(body)).map_err(|e| Failure::fatal(format!("bad request to {uri}: {e}")))?;
        let response = self.client.request(req).await.map_err(|e| Failure::retry(format!("{uri}: {e}")))?;
        let status = response.status();
        let grpc_status_header = response.headers().get("grpc-status").cloned();
        let collected = response.into_body().collect().await.map_err(|e| Failure::retry(format!("{uri}: {e}")))?;
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        if !status.is_success() {
            let retryable = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            return Err(Failure { retryable, message: format!("{uri} answered {status}") });
        }
        let reply = if grpc {
            let code = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or(grpc_status_header.as_ref())
                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
            match code {
                Some(0) => {}
                // UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED.
                Some(c @ (14 | 8 | 4 | 10)) => return Err(Failure::retry(format!("{uri}: grpc-status {c}"))),
                Some(c) => return Err(Failure::fatal(format!("{uri}: grpc-status {c}"))),
                None => return Err(Failure::fatal(format!("{uri}: the answer has no grpc-status"))),
            }
            bytes.get(5..).unwrap_or_default().to_vec()
        } else {
            bytes.to_vec()
        };
        let rejected = proto::ExportTraceServiceResponse::decode(reply.as_slice())
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| {
                if p.rejected_spans > 0 {
                    tracing::warn!(rejected = p.rejected_spans, "the collector rejected spans: {}", p.error_message);
                }
                u64::try_from(p.rejected_spans).unwrap_or(0)
            });
        Ok(rejected)
    }
}

struct Failure {
    retryable: bool,
    message: String,
}

impl Failure {
    fn retry(message: String) -> Self {
        Self { retryable: true, message }
    }
    fn fatal(message: String) -> Self {
        Self { retryable: false, message }
    }
}

#[cfg(test)]
mod tests;
