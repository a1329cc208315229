//! Sidecar listeners: plain HTTP in (HTTP/1.1, or HTTP/2 with prior knowledge), one upstream out.
//!
//! The Envoy-style shape: an agent sets `OPENAI_BASE_URL=http://127.0.0.1:15001/v1` and every
//! request on the listener goes to the configured upstream, with the upstream's path prefix
//! prepended. Run identity comes from `x-fleetforge-*` headers or the listener's default run.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::pipeline;
use crate::config::SidecarConfig;
use crate::context::{ConnCtx, ConnMode, Target};
use crate::metrics::ListenerKind;
use crate::shutdown::Watch;
use crate::state::Proxy;

/// Serves one sidecar listener until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, worker: usize, sidecar: SidecarConfig) {
    let upstream = &sidecar.upstream;
    let target = match Target::new(upstream.scheme.clone(), upstream.host.clone(), upstream.port) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(upstream = %upstream.authority, error = %e, "sidecar upstream is not a valid authority; listener not started");
            return;
        }
    };
    let template = Arc::new(ConnCtx {
        listener: ListenerKind::Sidecar,
        worker,
        mode: ConnMode::Sidecar,
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        target: Some(target),
        base_path: upstream.base_path.clone(),
        credentials: None,
        default_run: sidecar.default_run.clone(),
        seal: sidecar.seal,
    });
    super::accept_loop(proxy, listener, worker, true, move |proxy, stream, peer, _worker, watch| {
        connection(proxy, template.clone(), stream, peer, watch)
    })
    .await;
}

async fn connection(proxy: Arc<Proxy>, template: Arc<ConnCtx>, stream: TcpStream, peer: SocketAddr, watch: Watch) {
    let _open = proxy.metrics.connection_opened(ListenerKind::Sidecar);
    let ctx = Arc::new(ConnCtx { peer, ..(*template).clone() });
    let service = pipeline(proxy.clone(), ctx);
    let served = proxy.auto.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watch.serve(served, |c| c.graceful_shutdown()).await {
        tracing::debug!(%peer, error = %e, "sidecar connection ended with an error");
    }
}
