//! The request as it will leave for the upstream: its head, and its body once read.
//!
//! The body starts unread ([`OutboundBody::Unread`]) so that a destination the proxy refuses
//! costs no buffering; the authorize phase reads it ([`Outbound::read_body`]) once the destination
//! is allowed, bounded by the body limit and the body timeout, and from then on every phase sees
//! the same bytes. Obligations (header changes, a capped output-token limit) change it in place.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::request::Parts;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::error::{ErrorKind, Phase, ProxyError, Side};

/// A request on its way out.
#[derive(Debug)]
pub struct Outbound {
    /// Method, URI, headers as received (the forward phase rewrites the URI and cleans the
    /// headers just before sending).
    pub parts: Parts,
    /// The body.
    pub body: OutboundBody,
    /// The body as the agent sent it (obligations do not change it): what a seal keeps.
    original: Bytes,
}

/// A request body, before and after it is read.
#[derive(Debug)]
pub enum OutboundBody {
    /// Still on the client connection.
    Unread(Incoming),
    /// Read in full.
    Read(Bytes),
}

impl Outbound {
    /// A request whose body has not been read.
    pub fn new(parts: Parts, body: Incoming) -> Self {
        Self { parts, body: OutboundBody::Unread(body), original: Bytes::new() }
    }

    /// A request with its body in hand.
    pub fn read(parts: Parts, body: Bytes) -> Self {
        Self { parts, original: body.clone(), body: OutboundBody::Read(body) }
    }

    /// The body, once read (empty before).
    pub fn bytes(&self) -> &Bytes {
        static EMPTY: Bytes = Bytes::new();
        match &self.body {
            OutboundBody::Read(b) => b,
            OutboundBody::Unread(_) => &EMPTY,
        }
    }

    /// Reads the body off the client connection (once; a body already read stays as it is): at
    /// most `max` bytes, within `timeout`. A declared `Content-Length` over the limit is refused
    /// before anything is read.
    pub async fn read_body(&mut self, max: u64, timeout: Duration) -> Result<(), ProxyError> {
        let taken = std::mem::replace(&mut self.body, OutboundBody::Read(Bytes::new()));
        self.body = match taken {
            OutboundBody::Unread(body) => {
                let body = read(&self.parts.headers, body, max, timeout).await?;
                self.original = body.clone();
                OutboundBody::Read(body)
            }
            read => read,
        };
        Ok(())
    }

    /// The body as the agent sent it, before any obligation changed it (empty before it is read).
    pub fn original(&self) -> &Bytes {
        &self.original
    }

    /// Replaces the body (an obligation changed it), keeping `Content-Length` right.
    pub fn set_body(&mut self, body: Bytes) {
        self.parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
        self.body = OutboundBody::Read(body);
    }
}

async fn read(headers: &HeaderMap, body: Incoming, max: u64, timeout: Duration) -> Result<Bytes, ProxyError> {
    let too_large = |size: String| {
        ProxyError::new(
            ErrorKind::BodyTooLarge,
            Phase::Accept,
            Side::Agent,
            format!("request body is {size}; the limit is {max} bytes (FLEETFORGE_MAX_BODY)"),
        )
    };
    if let Some(len) = content_length(headers)
        && len > max
    {
        return Err(too_large(format!("{len} bytes")));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await.map_err(|_| {
        ProxyError::new(
            ErrorKind::BadRequest,
            Phase::Accept,
            Side::Agent,
            format!("the request body did not arrive within {timeout:?}"),
        )
    })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large(format!("more than {max} bytes"))),
        Err(e) => Err(ProxyError::new(
            ErrorKind::BadRequest,
            Phase::Accept,
            Side::Agent,
            format!("could not read the request body: {e}"),
        )),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}
