//! The capability sync thread: root public keys and revocations from control.
//!
//! Keys: fetched at start, every 30 s, and at once when a call presents a token signed by an
//! unknown key id (`Capabilities::refresh`). Revocations: `GET /v1/revocations?after=N` every
//! second, so a revoked token is refused within about a second of the revocation (the contract
//! allows 5). Failures are logged and retried; keys and revocations already learned stay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use fleetforge_trust::capability::RootKeys;
use http::header::AUTHORIZATION;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tokio::sync::watch;

use super::Capabilities;
use fleetforge_trust::Secret;
use fleetforge_trust::wire::RevocationPage;

const POLL: Duration = Duration::from_secs(1);
const KEYS_EVERY: Duration = Duration::from_secs(30);

type ControlClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Deserialize)]
struct Keys {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Key {
    kind: String,
    #[serde(default)]
    root_key_id: Option<u32>,
    /// Absent from entries that are certificates (`kind: c2pa-ca`); only capability roots are read.
    #[serde(default)]
    public_key: String,
}

struct Sync {
    caps: Arc<Capabilities>,
    base: Uri,
    token: Secret,
    client: ControlClient,
}

/// Starts the thread; it stops when `stop` turns true.
pub fn start(
    caps: Arc<Capabilities>,
    base: Uri,
    token: Secret,
    tls: rustls::ClientConfig,
    stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client: ControlClient = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .build(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build());
    let sync = Sync { caps, base, token, client };
    std::thread::Builder::new()
        .name("fleetforge-capability-sync".into())
        .spawn(move || runtime.block_on(sync.run(stop)))
}

impl Sync {
    async fn get(&self, path: &str) -> Result<Bytes, String> {
        let uri: Uri = format!("{}{path}", self.base.to_string().trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("bad control URL: {e}"))?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(AUTHORIZATION, format!("Bearer {}", self.token.expose()))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| format!("control at {} did not answer within 10 s", self.base))?
            .map_err(|e| format!("cannot reach control at {}: {e}", self.base))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("control answered {status} to GET {path}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body)
    }

    async fn fetch_keys(&self) -> Result<usize, String> {
        let body = self.get("/v1/keys").await?;
        let keys: Keys = serde_json::from_slice(&body).map_err(|e| format!("GET /v1/keys: {e}"))?;
        let mut roots = RootKeys::default();
        for k in keys.keys.iter().filter(|k| k.kind == "capability-root") {
            let (Some(id), Ok(public)) = (k.root_key_id, URL_SAFE_NO_PAD.decode(&k.public_key)) else {
                continue;
            };
            if let Err(e) = roots.insert(id, &public) {
                tracing::error!(root_key_id = id, error = %e, "control listed an unusable capability root key");
            }
        }
        let n = roots.len();
        if n == 0 {
            return Err("control lists no capability root key".into());
        }
        self.caps.set_roots(roots);
        Ok(n)
    }

    async fn fetch_revocations(&self, after: i64) -> Result<i64, String> {
        let body = self.get(&format!("/v1/revocations?after={after}")).await?;
        let page: RevocationPage = serde_json::from_slice(&body).map_err(|e| format!("GET /v1/revocations: {e}"))?;
        if !page.revocations.is_empty() {
            tracing::info!(count = page.revocations.len(), "capability revocations learned from control");
            self.caps.revoke(page.revocations);
        }
        Ok(page.next_after)
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut after = 0i64;
        let mut keys_at: Option<Instant> = None;
        let mut failing = false;
        loop {
            if keys_at.is_none_or(|t| t.elapsed() >= KEYS_EVERY) {
                match self.fetch_keys().await {
                    Ok(n) => {
                        tracing::debug!(keys = n, "capability root keys loaded");
                        keys_at = Some(Instant::now());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load capability root keys; calls with tokens are refused until they load")
                    }
                }
            }
            match self.fetch_revocations(after).await {
                Ok(next) => {
                    after = next;
                    if failing {
                        tracing::info!("revocation polling recovered");
                        failing = false;
                    }
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot poll revocations; retrying every second");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                () = self.caps.refresh.notified() => keys_at = None,
                _ = stop.changed() => return,
            }
        }
    }
}
