//! TLS interception after `CONNECT` to a host in the intercept set.
//!
//! The first byte after the `200` decides: `0x16` (a TLS handshake record) is terminated with a
//! leaf minted for the `CONNECT` host; an ASCII letter is plain HTTP, served as is; anything else
//! closes the connection. The ClientHello is read before a certificate is chosen, and a client
//! whose SNI names a different host than its `CONNECT` is refused — otherwise a client could
//! `CONNECT` to an allowed host and speak to it under another name (domain fronting). Requests in
//! the tunnel then run the pipeline with the `CONNECT` host as their fixed target, whatever their
//! `Host` header says.

use std::sync::Arc;

use http::uri::Scheme;
use hyper_util::rt::TokioIo;
use tokio_rustls::LazyConfigAcceptor;

use super::pipeline;
use crate::context::{ConnCtx, ConnMode, Target};
use crate::io::ClientIo;
use crate::metrics::ConnectMode;
use crate::pattern::normalize_host;
use crate::shutdown::Watch;
use crate::state::Proxy;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves an intercepted tunnel until the client closes it.
pub async fn serve(proxy: Arc<Proxy>, mut ctx: ConnCtx, io: ClientIo, watch: Watch) {
    let Some(target) = ctx.target.clone() else { return };
    let first = match tokio::time::timeout(proxy.config.header_timeout, io.peek_first()).await {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "client socket failed after CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(host = %target.host, "client sent nothing after CONNECT; closing");
            proxy.metrics.connect(ConnectMode::Rejected);
            return;
        }
    };
    if first == TLS_HANDSHAKE {
        // Boxed apart, like each of its phases: the task of an open connection then holds a
        // pointer, not room for the largest phase (the handshake's and HTTP/2's state).
        Box::pin(serve_tls(proxy, ctx, target, io, watch)).await;
    } else if first.is_ascii_uppercase() {
        // Plain HTTP inside the tunnel: same pipeline, http scheme.
        proxy.metrics.connect(ConnectMode::Plain);
        let Ok(plain) = Target::new(Scheme::HTTP, target.host.clone(), target.port) else { return };
        ctx.target = Some(plain);
        ctx.mode = ConnMode::PlainTunnel;
        let service = pipeline(proxy.clone(), Arc::new(ctx));
        let served = proxy.h1.serve_connection(TokioIo::new(io), service);
        if let Err(e) = Box::pin(watch.serve(served, |c| c.graceful_shutdown())).await {
            tracing::debug!(host = %target.host, error = %e, "plain tunnel connection ended with an error");
        }
    } else {
        proxy.metrics.connect(ConnectMode::Rejected);
        tracing::info!(host = %target.host, first_byte = first, "neither TLS nor HTTP after CONNECT; closing");
    }
}

async fn serve_tls(proxy: Arc<Proxy>, ctx: ConnCtx, target: Target, io: ClientIo, watch: Watch) {
    let timeout = proxy.config.header_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match Box::pin(tokio::time::timeout(timeout, acceptor)).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            proxy.metrics.tls_handshake_failed();
            tracing::info!(host = %target.host, error = %e, "unreadable TLS ClientHello after CONNECT");
            return;
        }
        Err(_) => {
            proxy.metrics.tls_handshake_failed();
            return;
        }
    };
    if let Some(sni) = start.client_hello().server_name() {
        let sni = normalize_host(sni);
        if sni != target.host {
            proxy.metrics.connect(ConnectMode::Rejected);
            tracing::warn!(connect_host = %target.host, sni = %sni, peer = %ctx.peer, "TLS SNI differs from the CONNECT host; refusing the tunnel");
            return;
        }
    }
    let config = match proxy.ca.server_config(&target.host) {
        Ok((config, minted)) => {
            if minted {
                proxy.metrics.leaf_minted();
            }
            config
        }
        Err(e) => {
            tracing::error!(host = %target.host, error = %e, "cannot mint an interception certificate");
            return;
        }
    };
    let tls = match Box::pin(tokio::time::timeout(timeout, start.into_stream(config))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            proxy.metrics.tls_handshake_failed();
            tracing::info!(host = %target.host, error = %e, "client TLS handshake failed; does the client trust the FleetForge CA (ca.pem / bundle.pem)?");
            return;
        }
        Err(_) => {
            proxy.metrics.tls_handshake_failed();
            return;
        }
    };
    proxy.metrics.connect(ConnectMode::Intercepted);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let service = pipeline(proxy.clone(), Arc::new(ctx));
    let io = TokioIo::new(tls);
    let result = if h2 {
        let served = proxy.h2.serve_connection(io, service);
        Box::pin(watch.serve(served, |c| c.graceful_shutdown())).await
    } else {
        let served = proxy.h1.serve_connection(io, service);
        Box::pin(watch.serve(served, |c| c.graceful_shutdown())).await
    };
    if let Err(e) = result {
        tracing::debug!(host = %target.host, error = %e, "intercepted connection ended with an error");
    }
}
