//! The forward-proxy listener (`HTTP_PROXY` / `HTTPS_PROXY`).
//!
//! Absolute-form requests (`GET http://host/path`) go straight to the pipeline
//! ([`flow::handle`]). A `CONNECT` is decided by [`flow::connect`] before anything is relayed;
//! this listener then only does what it says: answers with its error, or upgrades the connection
//! and hands the client socket to [`super::intercept`] (TLS terminated, each request through the
//! pipeline) or to [`flow::relay`] (bytes relayed, the tunnel recorded as one call when it ends).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::intercept;
use crate::body::ProxyBody;
use crate::context::{ConnCtx, ConnMode};
use crate::flow::{self, Connect};
use crate::io::ClientIo;
use crate::metrics::ListenerKind;
use crate::shutdown::Watch;
use crate::state::Proxy;

/// Serves the forward listener until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, worker: usize) {
    super::accept_loop(proxy, listener, worker, true, connection).await;
}

async fn connection(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr, worker: usize, watch: Watch) {
    let _open = proxy.metrics.connection_opened(ListenerKind::Forward);
    let conn = Arc::new(ConnCtx {
        listener: ListenerKind::Forward,
        worker,
        mode: ConnMode::Proxy,
        peer,
        target: None,
        base_path: String::new(),
        credentials: None,
        default_run: None,
        seal: proxy.config.seal.forward,
    });
    let service = {
        let proxy = proxy.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (proxy, conn) = (proxy.clone(), conn.clone());
            // Boxed, as in `super::pipeline`: an idle connection holds no call's state.
            let call: std::pin::Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> =
                if req.method() == Method::CONNECT {
                    Box::pin(connect(proxy, conn, req))
                } else {
                    Box::pin(flow::handle(proxy, conn, req))
                };
            async move { Ok::<_, std::convert::Infallible>(call.await) }
        })
    };
    let served = proxy.h1.serve_connection(TokioIo::new(stream), service).with_upgrades();
    if let Err(e) = watch.serve(served, |c| c.graceful_shutdown()).await {
        tracing::debug!(%peer, error = %e, "forward-proxy connection ended with an error");
    }
}

async fn connect(proxy: Arc<Proxy>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
    match flow::connect(&proxy, &conn, &req).await {
        Connect::Refused(response) => response,
        Connect::Intercept(ctx) => {
            let watch = proxy.drain.watch();
            tokio::spawn(async move {
                match upgrade(req).await {
                    Some(io) => intercept::serve(proxy, ctx, io, watch).await,
                    None => tracing::debug!("client left before the CONNECT tunnel opened"),
                }
            });
            ok_response()
        }
        Connect::Relay(tunnel, response) => {
            let watch = proxy.drain.watch();
            tokio::spawn(async move {
                match upgrade(req).await {
                    Some(io) => flow::relay(&proxy, tunnel, io).await,
                    None => flow::abandon(&proxy, tunnel),
                }
                drop(watch);
            });
            response
        }
    }
}

/// The client socket after the `200` (with any bytes hyper had already buffered).
async fn upgrade(req: Request<Incoming>) -> Option<ClientIo> {
    match hyper::upgrade::on(req).await {
        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Some(ClientIo::new(parts.read_buf, parts.io.into_inner())),
            Err(_) => {
                tracing::error!("CONNECT upgrade did not yield a TCP stream; closing");
                None
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "client left before the CONNECT tunnel opened");
            None
        }
    }
}

fn ok_response() -> Response<ProxyBody> {
    Response::new(ProxyBody::empty())
}
