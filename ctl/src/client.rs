//! The CLI's client for the control API.
//!
//! Finds control at `FLEETFORGE_CONTROL_URL` (default `http://127.0.0.1:7070`) and authenticates
//! with `FLEETFORGE_CONTROL_TOKEN`, or, when that is unset, with the token `fleetforge-ctl up`
//! wrote to `$FLEETFORGE_HOME/control.token`. Errors say what to check.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A failed API call, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Control did not answer.
    #[error(
        "cannot reach the control service at {url}: {reason}; is it running (fleetforge-control or fleetforge-ctl up) and is FLEETFORGE_CONTROL_URL right?"
    )]
    Unreachable {
        /// The URL tried.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Missing or wrong token.
    #[error(
        "control refused the token ({status}): set FLEETFORGE_CONTROL_TOKEN to a token with the right role ({message})"
    )]
    Unauthorized {
        /// 401 or 403.
        status: StatusCode,
        /// Control's message.
        message: String,
    },
    /// Not found (or not visible to this token's tenant).
    #[error("{0}")]
    NotFound(String),
    /// Any other error answer.
    #[error("control answered {status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Control's message.
        message: String,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

/// A control API client.
#[derive(Debug, Clone)]
pub struct ControlClient {
    base: String,
    token: Option<String>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// How long one request may take.
    timeout: Duration,
}

impl ControlClient {
    /// A client for `base` with `token`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        base.parse::<Uri>()
            .map_err(|_| ClientError::Config(format!("FLEETFORGE_CONTROL_URL {base:?} is not a URL")))?;
        let provider = fleetforge_trust::tls::provider();
        let tls =
            fleetforge_trust::tls::client_config(provider, None).map_err(|e| ClientError::Config(e.to_string()))?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        Ok(Self {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: Duration::from_secs(60),
        })
    }

    /// The same client with another per-request timeout (default 60 s), for requests that do
    /// a run's worth of work, like verifying it.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { timeout, ..self.clone() }
    }

    /// A client configured from the environment (see the module docs).
    pub fn from_env() -> Result<Self, ClientError> {
        let base = std::env::var("FLEETFORGE_CONTROL_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
        let token = std::env::var("FLEETFORGE_CONTROL_TOKEN").ok().filter(|t| !t.trim().is_empty()).or_else(|| {
            let home = std::env::var("FLEETFORGE_HOME").unwrap_or_else(|_| ".fleetforge".into());
            std::fs::read_to_string(Path::new(&home).join("control.token")).ok().map(|t| t.trim().to_owned())
        });
        Self::new(&base, token)
    }

    /// Sends a request; returns the JSON answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let bytes = self.send(method, path, body).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// GET of a non-JSON resource (a COSE object): its bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// Sends a request; returns the body of a success, or the error control answered.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url).header(CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req.body(Full::new(body)).map_err(|e| ClientError::Config(e.to_string()))?;
        let unreachable = |reason: String| ClientError::Unreachable { url: self.base.clone(), reason };
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", self.timeout.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = value["error"]["message"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned);
        match status {
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(ClientError::Unauthorized { status: s, message })
            }
            StatusCode::NOT_FOUND => Err(ClientError::NotFound(message)),
            s => Err(ClientError::Status { status: s, message }),
        }
    }

    /// The control URL (no trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token, when one is configured.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// POST.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Control's capability root keys (`GET /v1/keys`), for verifying capabilities offline.
    pub async fn capability_roots(&self) -> anyhow::Result<fleetforge_trust::capability::RootKeys> {
        use anyhow::Context as _;
        use base64::Engine as _;
        let keys = self.get("/v1/keys").await?;
        let mut roots = fleetforge_trust::capability::RootKeys::default();
        for k in keys["keys"].as_array().into_iter().flatten().filter(|k| k["kind"] == "capability-root") {
            let (Some(id), Some(pk)) = (k["root_key_id"].as_u64(), k["public_key"].as_str()) else { continue };
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(pk)
                .context("control listed a root key that is not base64url")?;
            roots.insert(u32::try_from(id).unwrap_or(u32::MAX), &raw)?;
        }
        Ok(roots)
    }

    /// A one-time login URL for control's web view, opening `next` (a local path).
    pub async fn login_url(&self, next: &str) -> anyhow::Result<String> {
        use anyhow::Context as _;
        anyhow::ensure!(
            next.starts_with('/') && !next.starts_with("//"),
            "--next {next:?}: give a path such as / or /demo"
        );
        let link =
            self.post("/v1/ui/login-links", &serde_json::json!({})).await.context("asking control for a login link")?;
        let path = link["path"].as_str().context("control answered without a login path")?;
        let next: String = next
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        Ok(format!("{}{path}&next={next}", self.base))
    }
}
