//! Replay mode (`FLEETFORGE_REPLAY=RUN[:strict]`): serve a recorded run's sealed responses.
//!
//! At start the proxy fetches the run's signed replay manifest from control, checks its signature
//! against control's capability root key (`GET /v1/keys`), and loads every sealed call — its
//! response envelope, its response body and its request body — from the local seal store or from
//! control, each checked against its address. A replay that cannot load exactly what was recorded
//! does not start: an unknown run, a run without seals, a manifest that does not verify and a
//! missing or altered blob are each an error naming what is wrong.
//!
//! The forward phase asks [`Replayer::take`] for the call's key: repeated identical calls get
//! the recorded responses in their recorded order (FIFO per key), while calls with different
//! keys may come in any order, so concurrent calls replay. What matches is served from memory
//! — no connection, no DNS lookup — chunk by chunk as recorded (`fast`, or at the recorded
//! offsets with `FLEETFORGE_REPLAY_TIMING=recorded`), with `x-fleetforge-virtual-time` naming
//! when the original call started. A miss in strict mode is refused with 599 `replay_miss`
//! naming the closest sealed request and how the request differs ([`Replayer::closest`]); an
//! exhausted key misses too. Outside strict mode a miss is forwarded live and recorded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use fleetforge_trust::key::{Difference, diff, distance};
use fleetforge_trust::replay::{MANIFEST, Manifest, ResponseMeta};
use fleetforge_trust::text::hex;
use fleetforge_trust::{ReceiptId, RunId, Secret};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::UpstreamBody;
use crate::config::ReplayConfig;
use crate::headers::X_VIRTUAL_TIME;

type ControlClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long one request to control may take while a replay loads.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a replay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Replay needs control to fetch the manifest from.
    #[error(
        "replay of run {0} needs FLEETFORGE_CONTROL_TOKEN: the proxy fetches the run's replay manifest and seals from control"
    )]
    NoControl(String),
    /// Control could not be reached or answered with an error.
    #[error("cannot load the replay of run {run}: {message}")]
    Control {
        /// The run.
        run: String,
        /// What went wrong.
        message: String,
    },
    /// Control knows no such run.
    #[error("cannot replay run {0}: control has no such run (check the id with `fleetforge-ctl runs list`)")]
    UnknownRun(String),
    /// The run has no sealed calls.
    #[error(
        "cannot replay run {0}: it has no sealed calls (it was recorded with sealing off, or its receipts have not reached control yet)"
    )]
    NoSeals(String),
    /// The manifest does not parse or does not verify.
    #[error("cannot replay run {run}: its replay manifest is corrupt: {reason}")]
    Manifest {
        /// The run.
        run: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A sealed blob is missing or altered.
    #[error("cannot replay run {run}: sealed blob {address} of receipt {receipt} {reason}")]
    Blob {
        /// The run.
        run: String,
        /// The blob's address.
        address: String,
        /// The call it belongs to.
        receipt: String,
        /// What is wrong.
        reason: String,
    },
}

/// One sealed call, loaded.
#[derive(Debug)]
pub struct Sealed {
    /// Receipt of the original call.
    pub receipt: ReceiptId,
    /// Method, host and path of the original call.
    pub method: String,
    /// Host.
    pub host: String,
    /// Path and query (credentials redacted).
    pub path: String,
    /// The request body, as JSON when it was JSON (for a miss's `diff`).
    pub request: Option<Arc<serde_json::Value>>,
    /// The response envelope (shared by identical calls).
    pub meta: Arc<ResponseMeta>,
    /// Address (hex) of the envelope.
    pub meta_address: String,
    /// The response body in its recorded chunks, with their offsets (ms).
    pub chunks: Vec<(Bytes, u64)>,
    /// When the original call started and ended.
    pub started_at: String,
    /// When it ended.
    pub ended_at: String,
    /// It has been served in this replay.
    pub taken: std::sync::atomic::AtomicBool,
}

/// A recorded run, ready to be served.
#[derive(Debug)]
pub struct Replayer {
    /// The run replayed.
    pub run: RunId,
    /// Refuse misses (never forward).
    pub strict: bool,
    /// Serve chunks at their recorded offsets.
    pub recorded_timing: bool,
    by_key: HashMap<String, Mutex<VecDeque<Arc<Sealed>>>>,
    all: Vec<Arc<Sealed>>,
}

impl Replayer {
    /// Builds a replayer from sealed calls (keys hex), in recorded order.
    pub fn new(config: &ReplayConfig, calls: Vec<(String, Sealed)>) -> Self {
        let mut by_key: HashMap<String, Mutex<VecDeque<Arc<Sealed>>>> = HashMap::new();
        let mut all = Vec::with_capacity(calls.len());
        for (key, sealed) in calls {
            let sealed = Arc::new(sealed);
            all.push(sealed.clone());
            if let Ok(queue) = by_key.entry(key).or_default().get_mut() {
                queue.push_back(sealed);
            }
        }
        Replayer {
            run: config.run.clone(),
            strict: config.strict,
            recorded_timing: config.recorded_timing,
            by_key,
            all,
        }
    }

    /// Number of sealed calls loaded.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The next recorded response for `key` (FIFO per key), or `None` on a miss.
    pub fn take(&self, key: &[u8; 32]) -> Option<Arc<Sealed>> {
        let sealed = self.by_key.get(&hex(key))?.lock().ok()?.pop_front()?;
        sealed.taken.store(true, std::sync::atomic::Ordering::Relaxed);
        Some(sealed)
    }

    /// The most similar sealed request to a miss, and where the two bodies differ: same method
    /// and path first, then the fewest differing members, then one not served yet.
    pub fn closest(&self, method: &str, host: &str, path: &str, body: &[u8]) -> (Option<ReceiptId>, Vec<Difference>) {
        let request: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        const NULL: &serde_json::Value = &serde_json::Value::Null;
        fn body_of(s: &Sealed) -> &serde_json::Value {
            s.request.as_deref().unwrap_or(NULL)
        }
        let best = self.all.iter().min_by_key(|s| {
            let place = usize::from(s.method != method) * 4
                + usize::from(s.host != host) * 2
                + usize::from(s.path != fleetforge_trust::text::redact_path(path));
            let taken = s.taken.load(std::sync::atomic::Ordering::Relaxed);
            (place, distance(body_of(s), &request), taken)
        });
        match best {
            Some(s) => (Some(s.receipt), diff(body_of(s), &request)),
            None => (None, Vec::new()),
        }
    }

    /// The response to serve for a sealed call.
    pub fn serve(&self, sealed: &Sealed) -> Response<UpstreamBody> {
        let chunks = sealed.chunks.iter().cloned();
        let body = if self.recorded_timing {
            UpstreamBody::timed(chunks)
        } else {
            UpstreamBody::replayed(chunks.map(|(c, _)| c))
        };
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(sealed.meta.status).unwrap_or(StatusCode::OK);
        let headers = response.headers_mut();
        for (name, value) in &sealed.meta.headers {
            if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            {
                headers.insert(name, value);
            }
        }
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(sealed.meta.bytes));
        if let Ok(v) = HeaderValue::from_str(&sealed.started_at) {
            headers.insert(X_VIRTUAL_TIME, v);
        }
        response
    }

    /// Loads a run's sealed calls: the manifest from control, blobs from `local` or control.
    /// Blocks (on a thread of its own) until loaded.
    pub fn load(
        config: &ReplayConfig,
        control: &Uri,
        token: Option<&Secret>,
        tls: rustls::ClientConfig,
        local: &std::path::Path,
    ) -> Result<Self, ReplayError> {
        let run = config.run.as_str().to_owned();
        let Some(token) = token.cloned() else { return Err(ReplayError::NoControl(run)) };
        let (control, local, config) = (control.clone(), local.to_owned(), config.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                ReplayError::Control { run: config.run.as_str().to_owned(), message: format!("cannot start: {e}") }
            })?;
            runtime.block_on(async {
                let client: ControlClient = Client::builder(TokioExecutor::new()).timer(TokioTimer::new()).build(
                    hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(tls)
                        .https_or_http()
                        .enable_http1()
                        .build(),
                );
                let conn = Conn { base: control, token, client, run: config.run.as_str().to_owned() };
                let calls = conn.load(&local).await?;
                Ok(Replayer::new(&config, calls))
            })
        })
        .join()
        .map_err(|_| ReplayError::Control { run, message: "the loader thread panicked".into() })?
    }
}

struct Conn {
    base: Uri,
    token: Secret,
    client: ControlClient,
    run: String,
}

impl Conn {
    fn err(&self, message: String) -> ReplayError {
        ReplayError::Control { run: self.run.clone(), message }
    }

    /// GET `path` from control: the status and body.
    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), ReplayError> {
        let uri: Uri = format!("{}{path}", self.base.to_string().trim_end_matches('/'))
            .parse()
            .map_err(|e| self.err(format!("bad control URL: {e}")))?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(AUTHORIZATION, format!("Bearer {}", self.token.expose()))
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.err(e.to_string()))?;
        let answer = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("cannot reach control at {}: {e}", self.base))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, body))
        };
        tokio::time::timeout(TIMEOUT, answer)
            .await
            .map_err(|_| self.err(format!("control at {} did not answer within {} s", self.base, TIMEOUT.as_secs())))?
            .map_err(|m| self.err(m))
    }

    async fn load(&self, local: &std::path::Path) -> Result<Vec<(String, Sealed)>, ReplayError> {
        let run = &self.run;
        let (status, body) = self.get(&format!("/v1/runs/{run}/replay-manifest")).await?;
        if !status.is_success() {
            let kind = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["type"].as_str().map(str::to_owned));
            return Err(match (status, kind.as_deref()) {
                (StatusCode::NOT_FOUND, Some("no_seals")) => ReplayError::NoSeals(run.clone()),
                (StatusCode::NOT_FOUND, _) => ReplayError::UnknownRun(run.clone()),
                _ => self.err(format!(
                    "control answered {status} to GET /v1/runs/{run}/replay-manifest: {}",
                    String::from_utf8_lossy(&body)
                )),
            });
        }
        let corrupt = |reason: String| ReplayError::Manifest { run: run.clone(), reason };
        let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| corrupt(format!("not a manifest: {e}")))?;
        if manifest.schema != MANIFEST || manifest.run != *run {
            return Err(corrupt(format!("it is a {:?} of run {:?}", manifest.schema, manifest.run)));
        }
        self.check_signature(&manifest).await.map_err(corrupt)?;
        if manifest.calls.is_empty() {
            return Err(ReplayError::NoSeals(run.clone()));
        }
        let mut calls = Vec::with_capacity(manifest.calls.len());
        // Identical calls share their blobs: each is fetched and parsed once.
        let mut metas: HashMap<String, Arc<ResponseMeta>> = HashMap::new();
        let mut bodies: HashMap<String, Bytes> = HashMap::new();
        let mut requests: HashMap<String, Option<Arc<serde_json::Value>>> = HashMap::new();
        for call in manifest.calls {
            let meta = match metas.get(&call.response_meta) {
                Some(meta) => meta.clone(),
                None => {
                    let bytes = self.blob(local, &call.response_meta, &call.receipt).await?;
                    let meta: ResponseMeta = serde_json::from_slice(&bytes).map_err(|e| ReplayError::Blob {
                        run: run.clone(),
                        address: call.response_meta.clone(),
                        receipt: call.receipt.clone(),
                        reason: format!("is not a response envelope: {e}"),
                    })?;
                    metas.entry(call.response_meta.clone()).or_insert(Arc::new(meta)).clone()
                }
            };
            let body = match bodies.get(&meta.body) {
                Some(body) => body.clone(),
                None => {
                    let body = Bytes::from(self.blob(local, &meta.body, &call.receipt).await?);
                    bodies.entry(meta.body.clone()).or_insert(body).clone()
                }
            };
            let request = match &call.request_blob {
                Some(address) => match requests.get(address) {
                    Some(parsed) => parsed.clone(),
                    None => {
                        let bytes = self.blob(local, address, &call.receipt).await?;
                        let parsed = serde_json::from_slice(&bytes).ok().map(Arc::new);
                        requests.entry(address.clone()).or_insert(parsed).clone()
                    }
                },
                None => None,
            };
            let mut chunks = Vec::with_capacity(meta.chunks.len());
            let mut at = 0usize;
            for [len, ms] in &meta.chunks {
                let end = at.saturating_add(usize::try_from(*len).unwrap_or(usize::MAX)).min(body.len());
                chunks.push((body.slice(at..end), *ms));
                at = end;
            }
            if at != body.len() {
                chunks.push((body.slice(at..), meta.chunks.last().map_or(0, |c| c[1])));
            }
            let receipt = call
                .receipt
                .parse::<ReceiptId>()
                .map_err(|_| corrupt(format!("receipt id {:?} is not valid", call.receipt)))?;
            let sealed = Sealed {
                receipt,
                method: call.method,
                host: call.host,
                path: call.path,
                request,
                meta,
                meta_address: call.response_meta.clone(),
                chunks,
                started_at: call.started_at,
                ended_at: call.ended_at,
                taken: std::sync::atomic::AtomicBool::new(false),
            };
            calls.push((call.key, sealed));
        }
        Ok(calls)
    }

    /// Checks control's signature over the manifest with the root key `GET /v1/keys` lists.
    async fn check_signature(&self, manifest: &Manifest) -> Result<(), String> {
        let signature = manifest.signature.as_ref().ok_or("it is not signed")?;
        let (status, body) = self.get("/v1/keys").await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("control answered {status} to GET /v1/keys"));
        }
        let keys: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let list = keys.get("keys").and_then(|k| k.as_array()).or_else(|| keys.as_array()).cloned().unwrap_or_default();
        let public = list
            .iter()
            .find(|k| k["key_id"].as_str() == Some(signature.key_id.as_str()))
            .and_then(|k| k["public_key"].as_str())
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .ok_or_else(|| format!("it is signed by key {}, which control does not list", signature.key_id))?;
        manifest.verify(&public)
    }

    /// A blob, from the local store or control, checked against its address.
    async fn blob(&self, local: &std::path::Path, address: &str, receipt: &str) -> Result<Vec<u8>, ReplayError> {
        if let Some(bytes) = crate::seal::read_blob(local, address) {
            return Ok(bytes);
        }
        let fail = |reason: String| ReplayError::Blob {
            run: self.run.clone(),
            address: address.to_owned(),
            receipt: receipt.to_owned(),
            reason,
        };
        if address.len() != 64 || !address.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail("is not a SHA-256 address".into()));
        }
        let (status, body) = self.get(&format!("/v1/seals/{address}")).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(fail("is neither in the local seal store nor on control".into()));
        }
        if !status.is_success() {
            return Err(fail(format!("could not be fetched: control answered {status}")));
        }
        if hex(&fleetforge_trust::canonical::sha256(&body)) != address {
            return Err(fail("does not match its address: it was altered".into()));
        }
        Ok(body.to_vec())
    }
}
