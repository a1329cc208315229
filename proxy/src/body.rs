//! The response body the proxy sends to clients, and the tap on upstream responses.
//!
//! [`ProxyBody`] is either a small body the proxy made itself (errors, admin pages) or an
//! upstream response streaming through a [`Tap`]. The tap passes every frame on as soon as it
//! arrives — an SSE token stream reaches the client chunk by chunk, never buffered — while it
//! counts bytes; when the stream ends, fails, or the client goes away, it hands the call to
//! [`crate::flow::Finish`] exactly once, so settle and record run with the final figures.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::context::Outcome;
use crate::flow::Finish;

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
#[derive(Debug)]
pub struct Tap {
    bytes: u64,
    finish: Option<Finish>,
}

impl Tap {
    fn end(&mut self, outcome: Outcome) {
        if let Some(finish) = self.finish.take() {
            finish.done(self.bytes, outcome);
        }
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
        let mut tap = Tap { bytes: 0, finish: Some(finish) };
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
                let polled = ready!(inner.as_mut().poll_frame(cx));
                match &polled {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            tap.bytes += data.len() as u64;
                        }
                        // With a known length the server stops polling once the last byte is out.
                        if inner.is_end_stream() {
                            tap.end(Outcome::Completed);
                        }
                    }
                    Some(Err(e)) => tap.end(Outcome::UpstreamAborted(e.to_string())),
                    None => tap.end(Outcome::Completed),
                }
                Poll::Ready(polled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Tapped { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Tapped { inner, .. } => inner.size_hint(),
        }
    }
}
