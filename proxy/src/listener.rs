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

/// Accepts connections until shutdown, spawning `serve` for each.
pub(crate) async fn accept_loop<F, Fut>(proxy: Arc<Proxy>, listener: TcpListener, worker: usize, serve: F)
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
                tokio::spawn(serve(proxy.clone(), stream, peer, worker, proxy.drain.watch()));
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
        let (proxy, conn) = (proxy.clone(), conn.clone());
        async move { Ok(flow::handle(proxy, conn, req).await) }
    })
}
