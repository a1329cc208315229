//! The Hello Fleet agent: makes its calls the way an unmodified SDK behind `HTTPS_PROXY` does —
//! a `CONNECT` to the forward proxy with the run id and token as proxy credentials, TLS to the
//! upstream's name trusting the proxy's CA, then HTTP/1.1 inside the tunnel.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The API key the agent sends upstream: fake, and never in a receipt, seal or log.
pub const API_KEY: &str = "sk-hello-fleet-demo-key-0123456789";

/// How long one call may take, tunnel to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent calling through one forward proxy as one run.
pub struct Agent {
    proxy: SocketAddr,
    credentials: String,
    tls: tokio_rustls::TlsConnector,
}

/// What one call got back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `x-fleetforge-receipt`.
    pub receipt: Option<String>,
    /// `x-fleetforge-virtual-time` (replayed responses only).
    pub virtual_time: Option<String>,
    /// The body as it arrived, chunk by chunk.
    pub chunks: Vec<Bytes>,
}

impl Answer {
    /// The whole body.
    pub fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap_or(Value::Null)
    }
}

impl Agent {
    /// An agent for `run` with `token`, through the proxy at `proxy` whose CA is at `ca`.
    pub fn new(proxy: SocketAddr, run: &str, token: &str, ca: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(ca).with_context(|| format!("reading the proxy CA {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls_pki_types::CertificateDer<'static> =
                cert.with_context(|| format!("{} holds no valid PEM certificate", ca.display()))?;
            roots.add(cert).context("adding the proxy CA")?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{run}:{token}"));
        Ok(Self { proxy, credentials, tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    /// `method https://host{path}` with `body` (JSON) as step `step`.
    pub async fn call(
        &self,
        step: &str,
        method: Method,
        host: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(step, method.clone(), host, path, body))
            .await
            .with_context(|| format!("{method} https://{host}{path} took longer than {CALL_TIMEOUT:?}"))?
    }

    async fn call_inner(
        &self,
        step: &str,
        method: Method,
        host: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut tcp = TcpStream::connect(self.proxy)
            .await
            .with_context(|| format!("connecting to the proxy at {}", self.proxy))?;
        let connect = format!(
            "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {}\r\n\r\n",
            self.credentials
        );
        tcp.write_all(connect.as_bytes()).await?;
        let head = read_head(&mut tcp).await?;
        let status_line = head.lines().next().unwrap_or_default();
        if status_line.split_whitespace().nth(1) != Some("200") {
            anyhow::bail!("the proxy refused CONNECT {host}:443: {status_line}");
        }
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).context("upstream host name")?;
        let tls = self.tls.connect(name, tcp).await.with_context(|| format!("TLS to {host} through the proxy"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .header(http::header::AUTHORIZATION, format!("Bearer {API_KEY}"))
            .header("x-fleetforge-step", step);
        if body.is_some() {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "application/json, text/event-stream");
        }
        let response = sender.send_request(req.body(Full::new(bytes))?).await?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (receipt, virtual_time) = (header("x-fleetforge-receipt"), header("x-fleetforge-virtual-time"));
        let status = response.status().as_u16();
        let mut incoming = response.into_body();
        let mut chunks = Vec::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame?.into_data() {
                chunks.push(data);
            }
        }
        Ok(Answer { status, receipt, virtual_time, chunks })
    }
}

/// Reads a response head (up to the blank line) from the proxy, byte by byte.
async fn read_head(tcp: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            anyhow::bail!("the proxy's CONNECT answer has no end");
        }
        let byte = tcp.read_u8().await.context("the proxy closed the connection during CONNECT")?;
        head.push(byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
