//! The response body the proxy sends to clients, and the tap on upstream responses.
//!
//! [`ProxyBody`] is either a small body the proxy made itself (errors, admin pages) or an
//! upstream response streaming through a [`Tap`]. The tap passes data on as soon as it arrives —
//! an SSE token stream reaches the client chunk by chunk, never buffered until the end — while it
//! counts bytes; when the stream ends, fails, or the client goes away, it hands the call to
//! [`crate::flow::Finish`] exactly once, so settle and record run with the final figures.
//!
//! Coalescing: the upstream connection hands the body over one chunk at a time, so a response
//! whose chunks are all already buffered (a fast upstream) would otherwise cost one write system
//! call per chunk. When a chunk arrives and the next is not ready yet, the tap yields once to let
//! the upstream connection deliver what it already has, and sends everything gathered as one
//! frame. It only waits while that grows the frame, at most 64 KiB, so a chunk the upstream has
//! not sent yet is never waited for: a paced token stream still goes out token by token.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::context::Outcome;
use crate::flow::Finish;

/// The most data gathered into one frame before it is sent.
const MAX_COALESCE: usize = 64 * 1024;

type Polled = Option<Result<Frame<Bytes>, hyper::Error>>;

pin_project_lite::pin_project! {
    /// A response body: made by the proxy, or an upstream stream under a tap.
    // pin-project-lite accepts no attributes on variant fields, so they are documented above.
    #[allow(missing_docs)]
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A complete body made by the proxy (`data` is `None` once sent).
        Full { data: Option<Bytes> },
        /// An upstream response body (`inner`), observed by a tap.
        Tapped { #[pin] inner: Incoming, tap: Tap },
    }
}

/// Observes an upstream body on its way to the client; finishes the call exactly once.
pub struct Tap {
    bytes: u64,
    /// SHA-256 over the body as received from the upstream (the receipt's response digest).
    digest: ring::digest::Context,
    finish: Option<Finish>,
    /// Data received and not yet passed on (see the module docs on coalescing).
    held: Vec<Bytes>,
    held_len: usize,
    /// Whether `held` grew since the tap last yielded.
    grew: bool,
    /// What to return after `held` has been passed on (trailers, an error, or the end).
    after: Option<Polled>,
    spins: u32,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("bytes", &self.bytes).field("held_len", &self.held_len).finish_non_exhaustive()
    }
}

impl Tap {
    fn end(&mut self, outcome: Outcome) {
        if let Some(finish) = self.finish.take() {
            let digest =
                std::mem::replace(&mut self.digest, ring::digest::Context::new(&ring::digest::SHA256)).finish();
            let mut sha = [0u8; 32];
            sha.copy_from_slice(digest.as_ref());
            finish.done(self.bytes, sha, outcome);
        }
    }

    fn take_held(&mut self) -> Frame<Bytes> {
        self.held_len = 0;
        self.grew = false;
        self.spins = 0;
        if self.held.len() == 1 {
            return Frame::data(self.held.pop().unwrap_or_default());
        }
        let mut joined = BytesMut::with_capacity(self.held.iter().map(Bytes::len).sum());
        for b in self.held.drain(..) {
            joined.extend_from_slice(&b);
        }
        Frame::data(joined.freeze())
    }

    /// Passes `item` on, after any held data.
    fn then(&mut self, item: Polled) -> Poll<Polled> {
        if self.held.is_empty() {
            return Poll::Ready(item);
        }
        self.after = Some(item);
        Poll::Ready(Some(Ok(self.take_held())))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the connection closed) mid-body.
        self.end(Outcome::ClientGone);
    }
}

impl ProxyBody {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        ProxyBody::Full { data: (!data.is_empty()).then_some(data) }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full { data: None }
    }

    /// Streams `inner` to the client and calls `finish` when it ends.
    pub fn tapped(inner: Incoming, finish: Finish) -> Self {
        let mut tap = Tap {
            bytes: 0,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            finish: Some(finish),
            held: Vec::new(),
            held_len: 0,
            grew: false,
            after: None,
            spins: 0,
        };
        if inner.is_end_stream() {
            // Nothing will be polled: the call is complete now.
            tap.end(Outcome::Completed);
        }
        ProxyBody::Tapped { inner, tap }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Tapped { mut inner, tap } => {
                if let Some(item) = tap.after.take() {
                    return Poll::Ready(item);
                }
                loop {
                    match inner.as_mut().poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => {
                                tap.bytes += data.len() as u64;
                                tap.digest.update(&data);
                                tap.held_len += data.len();
                                tap.held.push(data);
                                tap.grew = true;
                                if inner.is_end_stream() {
                                    // With a known length the server stops polling after the last byte.
                                    tap.end(Outcome::Completed);
                                    return Poll::Ready(Some(Ok(tap.take_held())));
                                }
                                if tap.held_len >= MAX_COALESCE {
                                    return Poll::Ready(Some(Ok(tap.take_held())));
                                }
                            }
                            Err(trailers) => return tap.then(Some(Ok(trailers))),
                        },
                        Poll::Ready(Some(Err(e))) => {
                            tap.end(Outcome::UpstreamAborted(e.to_string()));
                            return tap.then(Some(Err(e)));
                        }
                        Poll::Ready(None) => {
                            tap.end(Outcome::Completed);
                            return tap.then(None);
                        }
                        Poll::Pending if tap.held.is_empty() => return Poll::Pending,
                        Poll::Pending if tap.grew || tap.spins < 2 => {
                            if tap.grew {
                                tap.spins = 0
                            } else {
                                tap.spins += 1
                            }
                            // Let the upstream connection hand over what it already has.
                            tap.grew = false;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        Poll::Pending => return Poll::Ready(Some(Ok(tap.take_held()))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Tapped { inner, tap } => inner.is_end_stream() && tap.held.is_empty() && tap.after.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Tapped { inner, .. } => inner.size_hint(),
        }
    }
}
