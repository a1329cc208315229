//! Listeners: accept connections, parse them, and hand every call to [`crate::flow`].
//!
//! - [`forward`]: the forward proxy — absolute-form requests, and `CONNECT`s, which the flow
//!   decides ([`crate::flow::connect`]) before the listener upgrades the connection;
//! - [`intercept`]: TLS terminated after `CONNECT` for hosts in the intercept set, then each
//!   request served like any other;
//! - [`sidecar`]: plain HTTP in, one fixed upstream;
//! - [`admin`]: health, metrics, CA certificate.
//!
//! Listeners decide nothing about a call: requests go to [`crate::flow::handle`], tunnels to
//! [`crate::flow::connect`] and [`crate::flow::relay`].

pub mod admin;
pub mod forward;
pub mod intercept;
pub mod sidecar;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};

use crate::body::ProxyBody;
use crate::context::ConnCtx;
use crate::flow;
use crate::shutdown::Watch;
use crate::state::Proxy;

/// A client connection counted against `limits.max_connections` until it closes.
struct Open(Arc<Proxy>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Answers a connection over `limits.max_connections` with `503 overloaded` and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt as _;
    let body = serde_json::json!({ "error": {
        "type": "overloaded",
        "code": "overloaded",
        "message": format!("the proxy holds its maximum of {max} client connections (limits.max_connections); retry shortly"),
        "reasons": ["max_connections"],
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Accepts connections until shutdown, spawning `serve` for each. With `capped`, at most
/// `limits.max_connections` are open at once across the workers' capped listeners; the next
/// is answered `503 overloaded` and closed.
pub(crate) async fn accept_loop<F, Fut>(proxy: Arc<Proxy>, listener: TcpListener, worker: usize, capped: bool, serve: F)
where
    F: Fn(Arc<Proxy>, TcpStream, SocketAddr, usize, Watch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut watch = proxy.drain.watch();
    loop {
        let accepted = tokio::select! {
            () = watch.signalled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Request/response traffic: latency matters more than packet count.
                let _ = stream.set_nodelay(true);
                if !capped {
                    tokio::spawn(serve(proxy.clone(), stream, peer, worker, proxy.drain.watch()));
                    continue;
                }
                let max = proxy.config.max_connections;
                if proxy.connections.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= max {
                    proxy.connections.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    proxy.metrics.connection_refused();
                    tokio::spawn(refuse(stream, max));
                    continue;
                }
                let open = Open(proxy.clone());
                let served = serve(proxy.clone(), stream, peer, worker, proxy.drain.watch());
                tokio::spawn(async move {
                    let _open = open;
                    served.await;
                });
            }
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(worker, error = %e, "accepting a connection failed; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The pipeline as a hyper service for one connection.
pub(crate) fn pipeline(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |req| {
        // hyper keeps a box the size of this future for every open connection, idle or not: the
        // call's state (kilobytes) is boxed apart, so it is allocated only while a call runs.
        let call = Box::pin(flow::handle(proxy.clone(), conn.clone(), req));
        async move { Ok(call.await) }
    })
}
