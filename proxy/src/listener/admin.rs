//! The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/ca.pem`.
//!
//! Bind it to loopback (the default): it needs no credentials and exposes operational detail.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::body::ProxyBody;
use crate::shutdown::Watch;
use crate::state::Proxy;

/// Serves the admin listener until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, worker: usize) {
    super::accept_loop(proxy, listener, worker, false, connection).await;
}

async fn connection(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr, _worker: usize, watch: Watch) {
    let service = {
        let proxy = proxy.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = route(&proxy, &req);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let served = proxy.h1.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watch.serve(served, |c| c.graceful_shutdown()).await {
        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn route(proxy: &Proxy, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        // Listeners are bound before the admin port serves, so serving means ready.
        "/readyz" => text(StatusCode::OK, "text/plain", "ready\n"),
        "/metrics" => {
            let mut body = proxy.metrics.render();
            crate::metrics::render_budgets(&proxy.runs, &mut body);
            if let Some(tracer) = &proxy.tracer {
                crate::metrics::render_spans(tracer.stats(), &mut body);
            }
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/ca.pem" => text(StatusCode::OK, "application/x-pem-file", proxy.ca.cert_pem().to_owned()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found; try /healthz, /readyz, /metrics or /ca.pem\n"),
    }
}
