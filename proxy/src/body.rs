//! The response body the proxy sends to clients, and the tap on upstream responses.
//!
//! [`ProxyBody`] is either a small body the proxy made itself (errors, admin pages) or an
//! upstream response streaming through a [`Tap`]. The upstream body is an [`UpstreamBody`]: live
//! from the upstream connection, or replayed from recorded chunks. The tap passes data on as soon
//! as it arrives — an SSE token stream reaches the client chunk by chunk, never buffered until the
//! end — while it counts and digests the bytes, and can rewrite each chunk on its way
//! ([`Rewrite`]; the digest covers the bytes as received), and reads an LLM response's token usage
//! as it passes ([`crate::usage`]), holding nothing back. When the stream ends, fails, or the
//! client goes away, it calls its end-of-body callback ([`OnEnd`]) exactly once with a
//! [`Summary`], so settle and record run with the final figures.
//!
//! Coalescing: the upstream connection hands the body over one chunk at a time, so a response
//! whose chunks are all already buffered (a fast upstream) would otherwise cost one write system
//! call per chunk. When a chunk arrives and the next is not ready yet, the tap yields once to let
//! the upstream connection deliver what it already has, and sends everything gathered as one
//! frame. It only waits while that grows the frame, at most 64 KiB, so a chunk the upstream has
//! not sent yet is never waited for: a paced token stream still goes out token by token.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::context::{Outcome, Summary};
use crate::error::ErrorBody;
use crate::guard::Guard;
use crate::usage::UsageReader;

/// Called once when a tapped body ends, with what the tap saw and how the body ended.
pub type OnEnd = Box<dyn FnOnce(Summary, Outcome) + Send>;

/// Rewrites one chunk of a tapped body on its way to the client; an empty result drops it. When
/// the body ends it is called once more with an empty chunk, and what it returns is sent last (a
/// rewrite that waits for whole lines passes on what it still holds).
pub type Rewrite = Box<dyn FnMut(Bytes) -> Bytes + Send>;

/// The most data gathered into one frame before it is sent.
const MAX_COALESCE: usize = 64 * 1024;

/// The error a response body ends with: the upstream connection's, or the proxy's own (an
/// upstream silent past `limits.stream_idle_timeout`).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

type Polled = Option<Result<Frame<Bytes>, BodyError>>;

pin_project_lite::pin_project! {
    /// An upstream response body: live from the upstream connection, or replayed.
    // pin-project-lite accepts no attributes on variant fields, so they are documented above.
    #[allow(missing_docs)]
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        /// Streaming from the upstream connection (`inner`); cut when nothing arrives for `idle`
        /// after `last` (`timer` waits for that moment).
        Live { #[pin] inner: Incoming, idle: std::time::Duration, last: Instant, timer: Option<Pin<Box<tokio::time::Sleep>>> },
        /// Recorded chunks served in order (`chunks`).
        Replayed { chunks: VecDeque<Bytes> },
        /// Recorded chunks served at their recorded offsets (ms) from `start` (`sleep` waits
        /// for the next one).
        Timed { chunks: VecDeque<(Bytes, u64)>, start: std::time::Instant, sleep: Option<Pin<Box<tokio::time::Sleep>>> },
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamBody::Live { .. } => f.write_str("UpstreamBody::Live"),
            UpstreamBody::Replayed { chunks } => write!(f, "UpstreamBody::Replayed({} chunks)", chunks.len()),
            UpstreamBody::Timed { chunks, .. } => write!(f, "UpstreamBody::Timed({} chunks)", chunks.len()),
        }
    }
}

impl UpstreamBody {
    /// A live body, cut as aborted when the upstream sends nothing for `idle`.
    pub fn live(inner: Incoming, idle: std::time::Duration) -> Self {
        UpstreamBody::Live { inner, idle, last: Instant::now(), timer: None }
    }

    /// A body that replays `chunks`, one frame each.
    pub fn replayed(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        UpstreamBody::Replayed { chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect() }
    }

    /// A body that replays `chunks` at their offsets (ms from now), as they were recorded.
    pub fn timed(chunks: impl IntoIterator<Item = (Bytes, u64)>) -> Self {
        UpstreamBody::Timed {
            chunks: chunks.into_iter().filter(|(c, _)| !c.is_empty()).collect(),
            start: std::time::Instant::now(),
            sleep: None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            UpstreamBodyProj::Live { inner, idle, last, timer } => match inner.poll_frame(cx) {
                Poll::Ready(item) => {
                    // A frame costs a clock read; the timer is only moved when it fires early.
                    *last = Instant::now();
                    Poll::Ready(item.map(|r| r.map_err(BodyError::from)))
                }
                Poll::Pending => {
                    let due = *last + *idle;
                    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
                    loop {
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let due = *last + *idle;
                        if due <= Instant::now() {
                            let message = format!(
                                "the upstream sent nothing for {idle:?} in the middle of its response (limits.stream_idle_timeout)"
                            );
                            return Poll::Ready(Some(Err(message.into())));
                        }
                        timer.as_mut().reset(due.into());
                    }
                }
            },
            UpstreamBodyProj::Replayed { chunks } => Poll::Ready(chunks.pop_front().map(|c| Ok(Frame::data(c)))),
            UpstreamBodyProj::Timed { chunks, start, sleep } => {
                let Some((_, at)) = chunks.front() else { return Poll::Ready(None) };
                let due = *start + std::time::Duration::from_millis(*at);
                if due > std::time::Instant::now() {
                    let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
                    timer.as_mut().reset(due.into());
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(chunks.pop_front().map(|(c, _)| Ok(Frame::data(c))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Live { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Replayed { chunks } => chunks.is_empty(),
            UpstreamBody::Timed { chunks, .. } => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Live { inner, .. } => inner.size_hint(),
            UpstreamBody::Replayed { chunks } => SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum()),
            UpstreamBody::Timed { chunks, .. } => {
                SizeHint::with_exact(chunks.iter().map(|(c, _)| c.len() as u64).sum())
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body: made by the proxy, or an upstream stream under a tap.
    // pin-project-lite accepts no attributes on variant fields, so they are documented above.
    #[allow(missing_docs)]
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A complete body made by the proxy (`data` is `None` once sent).
        Full { data: Option<Bytes> },
        /// An upstream response body (`inner`), observed by a tap.
        Tapped { #[pin] inner: UpstreamBody, tap: Tap },
    }
}

/// Observes (and may rewrite) an upstream body on its way to the client; calls its end-of-body
/// callback exactly once.
pub struct Tap {
    /// Bytes received from the upstream.
    bytes: u64,
    /// Bytes passed on to the client.
    client_bytes: u64,
    /// SHA-256 over the body as received from the upstream (the receipt's response digest);
    /// `None` when nothing records the call.
    digest: Option<ring::digest::Context>,
    rewrite: Option<Rewrite>,
    /// Ends an LLM stream that would run past its reservation ([`crate::guard`]).
    guard: Option<Guard>,
    /// The guard ended the stream: nothing more is read from the upstream.
    cut: bool,
    /// Reads token usage from the body as received (LLM responses only).
    usage: Option<UsageReader>,
    /// Keeps the chunks as received, for the call's seal.
    recording: Option<Recording>,
    on_end: Option<OnEnd>,
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
        f.debug_struct("Tap")
            .field("bytes", &self.bytes)
            .field("client_bytes", &self.client_bytes)
            .field("held_len", &self.held_len)
            .finish_non_exhaustive()
    }
}

impl Tap {
    fn new(on_end: OnEnd, rewrite: Option<Rewrite>, usage: Option<UsageReader>, recording: Option<Recording>) -> Self {
        Tap {
            usage,
            recording,
            guard: None,
            cut: false,
            bytes: 0,
            client_bytes: 0,
            digest: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            rewrite,
            on_end: Some(on_end),
            held: Vec::new(),
            held_len: 0,
            grew: false,
            after: None,
            spins: 0,
        }
    }

    /// Takes in one chunk from the upstream: counted and digested as received, rewritten, held.
    fn take_in(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.bytes += data.len() as u64;
        if let Some(digest) = &mut self.digest {
            digest.update(&data);
        }
        if let Some(usage) = &mut self.usage {
            usage.feed(&data);
        }
        if let Some(recording) = &mut self.recording {
            recording.push(&data);
        }
        let data = match &mut self.rewrite {
            Some(rewrite) => rewrite(data),
            None => data,
        };
        let data = self.guarded(data);
        self.hold(data);
    }

    /// `data` through the guard, if any; notes a cut.
    fn guarded(&mut self, data: Bytes) -> Bytes {
        let Some(guard) = &mut self.guard else { return data };
        if data.is_empty() {
            return data;
        }
        let data = guard.pass(data);
        self.cut = guard.is_cut();
        data
    }

    fn hold(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.client_bytes += data.len() as u64;
        self.held_len += data.len();
        self.held.push(data);
        self.grew = true;
    }

    /// The body ended: whatever the rewrite and the guard still hold goes out last.
    fn flush(&mut self) {
        if let Some(rewrite) = &mut self.rewrite {
            let rest = rewrite(Bytes::new());
            let rest = self.guarded(rest);
            self.hold(rest);
        }
        if let Some(guard) = &mut self.guard {
            let rest = guard.pass(Bytes::new());
            self.hold(rest);
        }
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(on_end) = self.on_end.take() {
            let digest = self.digest.take().map(|d| {
                let mut sha = [0u8; 32];
                sha.copy_from_slice(d.finish().as_ref());
                sha
            });
            let summary = Summary {
                upstream_bytes: self.bytes,
                client_bytes: self.client_bytes,
                digest,
                usage: self.usage.as_ref().map(UsageReader::counts).filter(|c| !c.is_empty()),
                reply: self.usage.as_ref().and_then(UsageReader::reply),
                truncated: self.cut,
                recorded: self.recording.take().and_then(Recording::finish),
            };
            on_end(summary, outcome);
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

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyBody::Full { data } => write!(f, "ProxyBody::Full({} bytes)", data.as_ref().map_or(0, Bytes::len)),
            ProxyBody::Tapped { inner, tap } => {
                f.debug_struct("ProxyBody::Tapped").field("inner", inner).field("tap", tap).finish()
            }
        }
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

    /// Streams `inner` to the client, each chunk through `rewrite` when given, read by `usage`
    /// when given and kept by `recording` when given, and calls `on_end` when it ends.
    pub fn tapped(
        inner: UpstreamBody,
        rewrite: Option<Rewrite>,
        usage: Option<UsageReader>,
        recording: Option<Recording>,
        on_end: OnEnd,
    ) -> Self {
        let mut tap = Tap::new(on_end, rewrite, usage, recording);
        if inner.is_end_stream() {
            // Nothing will be polled: the call is complete now.
            tap.end(Outcome::Completed);
        }
        ProxyBody::Tapped { inner, tap }
    }

    /// This tapped body without the SHA-256 of what the upstream sent, for a call that nothing
    /// records (no receipt, no seal): the summary's digest is `None`.
    pub fn undigested(mut self) -> Self {
        if let ProxyBody::Tapped { tap, .. } = &mut self
            && tap.on_end.is_some()
        {
            tap.digest = None;
        }
        self
    }

    /// This tapped body with `guard` over the stream the client receives: when it ends the
    /// stream, nothing more is read from the upstream and the summary says `truncated`.
    pub fn guarded(mut self, guard: Option<Guard>) -> Self {
        if let ProxyBody::Tapped { tap, .. } = &mut self {
            tap.guard = guard;
        }
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Tapped { mut inner, tap } => {
                if let Some(item) = tap.after.take() {
                    return Poll::Ready(item);
                }
                if tap.cut {
                    return Poll::Ready(None);
                }
                loop {
                    match inner.as_mut().poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => {
                                tap.take_in(data);
                                if tap.cut {
                                    // The guard sent the stream's end: the rest is not read.
                                    tap.end(Outcome::Completed);
                                    return tap.then(None);
                                }
                                if inner.is_end_stream() {
                                    // With a known length the server stops polling after the last byte.
                                    tap.flush();
                                    tap.end(Outcome::Completed);
                                    if tap.held.is_empty() {
                                        return Poll::Ready(None);
                                    }
                                    return Poll::Ready(Some(Ok(tap.take_held())));
                                }
                                if tap.held_len >= MAX_COALESCE {
                                    return Poll::Ready(Some(Ok(tap.take_held())));
                                }
                            }
                            Err(trailers) => return tap.then(Some(Ok(trailers))),
                        },
                        Poll::Ready(Some(Err(e))) => {
                            tap.flush();
                            tap.end(Outcome::UpstreamAborted(e.to_string()));
                            return tap.then(Some(Err(e)));
                        }
                        Poll::Ready(None) => {
                            tap.flush();
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
            // A rewritten body's length is not known ahead.
            ProxyBody::Tapped { inner, tap } if tap.rewrite.is_none() && tap.guard.is_none() => inner.size_hint(),
            ProxyBody::Tapped { .. } => SizeHint::default(),
        }
    }
}

impl From<ErrorBody> for ProxyBody {
    fn from(body: ErrorBody) -> Self {
        ProxyBody::full(body.0)
    }
}

/// The chunks of a response body as they arrived, kept by the tap for its seal.
#[derive(Debug)]
pub struct Recording {
    start: Instant,
    chunks: Vec<(Bytes, u64)>,
    bytes: u64,
    max: u64,
    overflow: bool,
}

impl Recording {
    /// Starts recording now (the response head has arrived); at most `max` body bytes.
    pub fn new(max: u64) -> Self {
        Recording { start: Instant::now(), chunks: Vec::new(), bytes: 0, max, overflow: false }
    }

    /// Keeps one chunk (a reference-counted slice: no copy).
    pub fn push(&mut self, data: &Bytes) {
        if self.overflow {
            return;
        }
        self.bytes += data.len() as u64;
        if self.bytes > self.max {
            self.overflow = true;
            self.chunks = Vec::new();
            return;
        }
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.chunks.push((data.clone(), ms));
    }

    /// The chunks with their offsets (ms), or `None` when the body was over the limit.
    pub fn finish(self) -> Option<Vec<(Bytes, u64)>> {
        (!self.overflow).then_some(self.chunks)
    }
}

#[cfg(test)]
mod tests;
