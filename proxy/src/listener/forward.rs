//! The forward-proxy listener (`HTTP_PROXY` / `HTTPS_PROXY`).
//!
//! Absolute-form requests (`GET http://host/path`) go straight to the pipeline. A `CONNECT` is
//! decided here, before anything is relayed:
//! 1. the target must be `host:port`; credentials on the `CONNECT` must be well-formed (and
//!    present, when required) — they then apply to every request inside the tunnel;
//! 2. the destination must pass the egress allow-lists ([`crate::authorize::destination`]);
//! 3. hosts in the intercept set get `200` and then TLS terminated with a minted leaf
//!    ([`super::intercept`]); plain HTTP inside such a tunnel is served through the pipeline too;
//! 4. any other host is connected first (so resolution failures and private addresses are
//!    answered on the `CONNECT` itself), then relayed byte for byte ([`super::tunnel`]).
//!
//! A refused `CONNECT` is a call: it gets an error response with a receipt id.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::{ClientIo, intercept, tunnel};
use crate::body::ProxyBody;
use crate::context::{Call, CallKind, ConnCtx, ConnMode, Target};
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::metrics::{ConnectMode, ListenerKind};
use crate::pattern::normalize_host;
use crate::proxy::Proxy;
use crate::shutdown::Watch;
use crate::{authorize, flow, identify, upstream};

/// Serves the forward listener until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, worker: usize) {
    super::accept_loop(proxy, listener, worker, connection).await;
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
    });
    let service = {
        let proxy = proxy.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (proxy, conn) = (proxy.clone(), conn.clone());
            async move {
                Ok::<_, std::convert::Infallible>(if req.method() == Method::CONNECT {
                    connect(proxy, conn, req).await
                } else {
                    flow::handle(proxy, conn, req).await
                })
            }
        })
    };
    let served = proxy.h1.serve_connection(TokioIo::new(stream), service).with_upgrades();
    if let Err(e) = watch.serve(served, |c| c.graceful_shutdown()).await {
        tracing::debug!(%peer, error = %e, "forward-proxy connection ended with an error");
    }
}

fn connect_target(req: &Request<Incoming>) -> Result<Target, ProxyError> {
    let bad = || {
        ProxyError::new(
            ErrorKind::BadRequest,
            Phase::Accept,
            Side::Agent,
            format!("CONNECT target {:?} is not host:port", req.uri().to_string()),
        )
    };
    let authority = req.uri().authority().ok_or_else(bad)?;
    let port = authority.port_u16().ok_or_else(bad)?;
    let host = normalize_host(authority.host());
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    // The scheme is what the tunnel carries if we serve it ourselves; TLS is the usual case.
    Target::new(Scheme::HTTPS, host, port).map_err(|_| bad())
}

async fn connect(proxy: Arc<Proxy>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let mut call = Call::new(&conn, Method::CONNECT);
    let refuse = |proxy: &Proxy, call: Call, err: ProxyError| {
        proxy.metrics.connect(ConnectMode::Rejected);
        flow::fail(proxy, call, err)
    };
    if let Err(e) = flow::recordable(&proxy) {
        return refuse(&proxy, call, e);
    }
    let target = match connect_target(&req) {
        Ok(t) => t,
        Err(e) => return refuse(&proxy, call, e),
    };
    call.path = format!("{}:{}", target.host, target.port);
    let credentials = match identify::credentials(req.headers()) {
        Ok(c) => c,
        Err(e) => return refuse(&proxy, call, e),
    };
    let tunnel_ctx = ConnCtx {
        listener: ListenerKind::Forward,
        worker: conn.worker,
        mode: ConnMode::Intercepted,
        peer: conn.peer,
        target: Some(target.clone()),
        base_path: String::new(),
        credentials,
        default_run: None,
    };
    let admitted = if tunnel_ctx.credentials.is_none() && proxy.config.require_credentials {
        Err(identify::missing_credentials())
    } else {
        authorize::destination(&proxy, &mut call, &target)
    };
    if let Err(e) = admitted {
        // Best effort: name the run in the refusal when the credentials allow it.
        let _ = identify::identify(&proxy, &tunnel_ctx, &mut call, req.headers());
        call.target = Some(target);
        return refuse(&proxy, call, e);
    }
    let intercepted = proxy.config.intercept.matches(&target.host);

    if intercepted {
        let watch = proxy.drain.watch();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => match ClientIoParts::take(upgraded) {
                    Some(io) => intercept::serve(proxy, tunnel_ctx, io, watch).await,
                    None => tracing::error!("CONNECT upgrade did not yield a TCP stream; closing"),
                },
                Err(e) => tracing::debug!(error = %e, "client left before the CONNECT tunnel opened"),
            }
        });
        return ok_response();
    }

    // Not intercepted: this tunnel is one call. Identify it and connect before answering, so
    // DNS failures and private destinations are answered on the CONNECT itself.
    if let Err(e) = identify::identify(&proxy, &tunnel_ctx, &mut call, req.headers()) {
        return refuse(&proxy, call, e);
    }
    call.target = Some(target.clone());
    if let Err(e) = authorize::tunnel(&proxy, &mut call) {
        return refuse(&proxy, call, e);
    }
    let upstream = match proxy.egress.connect(&target.host, target.port).await {
        Ok(s) => s,
        Err(e) => {
            let err = upstream::classify(&e, &target);
            return refuse(&proxy, call, err);
        }
    };
    call.status = Some(StatusCode::OK);
    call.kind = CallKind::Tunnel;
    let mut response = ok_response();
    let mut buf = [0u8; 36];
    if let Ok(v) = http::HeaderValue::from_str(call.receipt_id.encode(&mut buf)) {
        response.headers_mut().insert(crate::headers::X_RECEIPT, v);
    }
    let watch = proxy.drain.watch();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => match ClientIoParts::take(upgraded) {
                Some(io) => tunnel::relay(proxy, call, io, upstream, watch).await,
                None => tracing::error!("CONNECT upgrade did not yield a TCP stream; closing"),
            },
            Err(e) => tracing::debug!(error = %e, "client left before the CONNECT tunnel opened"),
        }
    });
    response
}

fn ok_response() -> Response<ProxyBody> {
    Response::new(ProxyBody::empty())
}

/// Recovers the raw client socket (and any bytes already buffered) from a hyper upgrade.
struct ClientIoParts;

impl ClientIoParts {
    fn take(upgraded: hyper::upgrade::Upgraded) -> Option<ClientIo> {
        let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
        Some(ClientIo::new(parts.read_buf, parts.io.into_inner()))
    }
}
