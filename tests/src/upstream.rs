//! An in-process fake upstream (OpenAI, Anthropic, echo, bytes, status) for end-to-end tests.
//!
//! Built with [`Upstream::builder`], it binds `127.0.0.1:0` (never a fixed port), serves HTTPS with
//! a leaf from a [`TestCa`] (ALPN `h2` + `http/1.1`, both served by hyper-util's auto builder) or
//! plain HTTP (HTTP/1.1 or h2c prior knowledge), and records every request together with the SNI
//! and ALPN of the TLS session it arrived on, so a test can prove whose TLS reached it.
//!
//! Invariants: a request is recorded before its response is returned; dropping the [`Upstream`]
//! aborts the accept task, which drops the listener and every open connection with it.

mod body;
mod ca;
mod routes;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub use body::{PATTERN_FRAME, pattern_bytes};
pub use ca::{CA_FILE_NAME, TestCa, install_crypto_provider};
pub use routes::{
    CHUNKS_HEADER, DEFAULT_CHUNKS, DELAY_HEADER, IGNORE_LIMIT_HEADER, MAX_REQUEST_BODY, NO_USAGE_HEADER,
    TOKENS_PER_PIECE, completion_text, content_piece, prompt_tokens,
};

use body::FrameBody;
use routes::Reject;

/// ALPN protocols a TLS upstream offers unless [`UpstreamBuilder::alpn`] says otherwise.
pub const DEFAULT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Request method.
    pub method: Method,
    /// Request target exactly as received (origin-form for HTTP/1.1, absolute for h2).
    pub uri: Uri,
    /// HTTP version the request arrived with.
    pub version: Version,
    /// Request headers.
    pub headers: HeaderMap,
    /// The full request body (empty if it was refused as too large or could not be read).
    pub body: Bytes,
    /// SNI the client sent; `None` on plain HTTP or when the client sent none.
    pub sni: Option<String>,
    /// ALPN protocol negotiated on the connection; `None` on plain HTTP or without ALPN.
    pub alpn: Option<Vec<u8>>,
}

/// TLS facts about one accepted connection, shared by all its requests.
#[derive(Debug, Default)]
pub(crate) struct ConnInfo {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// State shared by the accept task, every connection and the [`Upstream`] handle.
struct Shared {
    record: bool,
    requests: Mutex<Vec<RecordedRequest>>,
    connections: AtomicUsize,
}

impl Shared {
    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        // A panicking test thread must not hide the log from the others.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Configures an [`Upstream`]; see [`Upstream::builder`].
#[derive(Debug)]
pub struct UpstreamBuilder {
    tls: Option<(TestCa, Vec<String>)>,
    alpn: Vec<Vec<u8>>,
    listen: SocketAddr,
    record: bool,
}

impl UpstreamBuilder {
    /// Serves HTTPS with a leaf for `names` (DNS names or IP literals) signed by `ca`.
    pub fn tls(mut self, ca: &TestCa, names: &[&str]) -> Self {
        self.tls = Some((ca.clone(), names.iter().map(|n| (*n).to_owned()).collect()));
        self
    }

    /// Serves plain HTTP (the default).
    pub fn plain(mut self) -> Self {
        self.tls = None;
        self
    }

    /// ALPN protocols to offer over TLS, in preference order (default [`DEFAULT_ALPN`]).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Address to bind (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Whether to keep a log of requests (default on; benchmarks turn it off).
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// Binds the listener and starts serving on the current tokio runtime.
    pub async fn start(self) -> anyhow::Result<Upstream> {
        let acceptor = match &self.tls {
            Some((ca, names)) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
                Some(TlsAcceptor::from(ca.server_config(&names, &alpn)?))
            }
            None => None,
        };
        let listener = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("binding the fake upstream to {}", self.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            record: self.record,
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared)));
        Ok(Upstream { addr, tls: self.tls.is_some(), shared, task })
    }
}

/// A running fake upstream; stops serving when dropped.
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("addr", &self.addr).field("tls", &self.tls).finish_non_exhaustive()
    }
}

impl Upstream {
    /// A builder for a plain HTTP upstream on `127.0.0.1:0` that records requests.
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder {
            tls: None,
            alpn: DEFAULT_ALPN.iter().map(|p| p.to_vec()).collect(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            record: true,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether this upstream serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests().clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.requests().last().cloned()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.shared.requests().clear();
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts until aborted; connections live in a `JoinSet` so aborting this task ends them too.
async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(connection(stream, acceptor.clone(), Arc::clone(&shared)));
                }
                // Typically EMFILE under load: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: TcpStream, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    // Small SSE frames must leave at once; Nagle would batch them.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        return serve(stream, ConnInfo::default(), shared).await;
    };
    // A failed handshake is the client's business (tests of bad trust do exactly that).
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let session = tls.get_ref().1;
    let info =
        ConnInfo { sni: session.server_name().map(str::to_owned), alpn: session.alpn_protocol().map(<[u8]>::to_vec) };
    serve(tls, info, shared).await;
}

async fn serve<S>(io: S, info: ConnInfo, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let service = service_fn(move |request| handle(request, Arc::clone(&shared), Arc::clone(&info)));
    // Errors here are clients hanging up mid-request; nothing to report.
    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service).await;
}

/// Reads the whole request body (up to [`MAX_REQUEST_BODY`]), routes, records, responds.
async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
) -> Result<Response<FrameBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let declared_too_large = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > MAX_REQUEST_BODY as u64);
    let (body, response) = if declared_too_large {
        (Bytes::new(), Reject::too_large().into_response())
    } else {
        match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(collected) => {
                let body = collected.to_bytes();
                let response = routes::route(&parts, &body, &info);
                (body, response)
            }
            Err(e) if e.is::<LengthLimitError>() => (Bytes::new(), Reject::too_large().into_response()),
            Err(_) => (Bytes::new(), Reject::bad_request("could not read the request body").into_response()),
        }
    };
    if shared.record {
        shared.requests().push(RecordedRequest {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body,
            sni: info.sni.clone(),
            alpn: info.alpn.clone(),
        });
    }
    Ok(response)
}
