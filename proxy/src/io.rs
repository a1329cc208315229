//! The client socket of a `CONNECT` tunnel, after the `200`.
//!
//! [`ClientIo`] replays the bytes the HTTP parser had already read past the `CONNECT` head, and
//! counts bytes in each direction for the tunnel's receipt. The listener makes it from hyper's
//! upgrade; the flow relays or intercepts over it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
