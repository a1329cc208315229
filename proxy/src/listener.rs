//! Listeners: accept loops and how each kind of connection is served.
//!
//! - [`forward`]: the forward proxy — absolute-form requests and `CONNECT`;
//! - [`intercept`]: TLS terminated after `CONNECT` for hosts in the intercept set;
//! - [`tunnel`]: byte-for-byte relay for every other `CONNECT`;
//! - [`sidecar`]: plain HTTP in, one fixed upstream;
//! - [`admin`]: health, metrics, CA certificate.
//!
//! All of them hand requests to the same pipeline, [`crate::flow::handle`].

pub mod admin;
pub mod forward;
pub mod intercept;
pub mod sidecar;
pub mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::body::ProxyBody;
use crate::context::ConnCtx;
use crate::flow;
use crate::proxy::Proxy;
use crate::shutdown::Watch;

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

pin_project_lite::pin_project! {
    /// A client socket after `CONNECT`: replays bytes the HTTP parser had already read, and
    /// counts bytes in each direction for the tunnel's receipt.
    #[derive(Debug)]
    pub struct ClientIo {
        prefix: Bytes,
        #[pin]
        inner: TcpStream,
        read: u64,
        written: u64,
    }
}

impl ClientIo {
    /// Wraps `inner`, to be read after `prefix`.
    pub fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner, read: 0, written: 0 }
    }

    /// The first byte the client sends, without consuming it; `None` if it closed first.
    pub async fn peek_first(&self) -> io::Result<Option<u8>> {
        if let Some(&b) = self.prefix.first() {
            return Ok(Some(b));
        }
        let mut buf = [0u8; 1];
        let n = self.inner.peek(&mut buf).await?;
        Ok((n == 1).then_some(buf[0]))
    }

    /// Bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Bytes written to the client so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            *this.read += n as u64;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        *this.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &polled {
            *this.written += *n as u64;
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            *this.written += *n as u64;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
