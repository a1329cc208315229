//! The fake upstream's response body: a queue of frames, optionally paced.
//!
//! Each queued `Bytes` is yielded as its own body frame, with `delay` slept *between* frames (the
//! first frame goes out at once), so SSE tests can watch events arrive one by one. `/bytes/{n}`
//! streams a deterministic pattern lazily in [`PATTERN_FRAME`]-sized slices of one shared table, so
//! large downloads cost no allocation per request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Size of each frame of the `/bytes/{n}` route.
pub const PATTERN_FRAME: usize = 16 * 1024;

/// The pattern repeats with this period, since byte `i` is `(i * 31 + 7) % 251`.
const PATTERN_PERIOD: usize = 251;

/// `n` bytes of the `/bytes/{n}` pattern: byte `i` is `(i * 31 + 7) % 251`.
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

fn pattern_byte(i: usize) -> u8 {
    // Always < 251, so the narrowing is lossless.
    (((i % PATTERN_PERIOD) * 31 + 7) % PATTERN_PERIOD) as u8
}

/// One frame's worth of pattern plus one period, so any frame is a slice of it.
fn pattern_table() -> &'static Bytes {
    static TABLE: OnceLock<Bytes> = OnceLock::new();
    TABLE.get_or_init(|| Bytes::from(pattern_bytes(PATTERN_FRAME + PATTERN_PERIOD)))
}

enum Source {
    /// Explicit frames; `exact` says whether to advertise their total length.
    Queue { frames: VecDeque<Bytes>, exact: bool },
    /// `total` pattern bytes, `sent` of which have gone out.
    Pattern { sent: u64, total: u64 },
}

/// A response body of paced frames.
pub(crate) struct FrameBody {
    source: Source,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    started: bool,
}

impl FrameBody {
    fn new(source: Source, delay: Duration) -> Self {
        Self { source, delay, sleep: None, started: false }
    }

    /// A single-frame body with a known length.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let frames = VecDeque::from([bytes.into()]);
        Self::new(Source::Queue { frames, exact: true }, Duration::ZERO)
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        Self::new(Source::Queue { frames: VecDeque::new(), exact: true }, Duration::ZERO)
    }

    /// A streamed body (no advertised length) of `frames`, `delay` apart.
    pub(crate) fn stream(frames: Vec<Bytes>, delay: Duration) -> Self {
        Self::new(Source::Queue { frames: frames.into(), exact: false }, delay)
    }

    /// `total` bytes of the deterministic pattern with a known length, frames `delay` apart.
    pub(crate) fn pattern(total: u64, delay: Duration) -> Self {
        Self::new(Source::Pattern { sent: 0, total }, delay)
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        match &mut self.source {
            Source::Queue { frames, .. } => frames.pop_front(),
            Source::Pattern { sent, total } => {
                let remaining = total.saturating_sub(*sent);
                if remaining == 0 {
                    return None;
                }
                let len = usize::try_from(remaining).map_or(PATTERN_FRAME, |r| r.min(PATTERN_FRAME));
                let start = usize::try_from(*sent % PATTERN_PERIOD as u64).unwrap_or_default();
                *sent += len as u64;
                Some(pattern_table().slice(start..start + len))
            }
        }
    }
}

impl Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.is_end_stream() {
            return Poll::Ready(None);
        }
        if this.started && !this.delay.is_zero() {
            let delay = this.delay;
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        this.started = true;
        Poll::Ready(this.next_chunk().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Queue { frames, .. } => frames.is_empty(),
            Source::Pattern { sent, total } => sent >= total,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Queue { frames, exact: true } => SizeHint::with_exact(frames.iter().map(|f| f.len() as u64).sum()),
            Source::Queue { exact: false, .. } => SizeHint::default(),
            Source::Pattern { sent, total } => SizeHint::with_exact(total.saturating_sub(*sent)),
        }
    }
}
