//! FleetForge shared evidence types.
//!
//! This crate exists because two binaries — the proxy that writes evidence and the control service
//! that verifies and stores it — must agree on the same types byte for byte. It stays light: no
//! async runtime, no network, no database.
//!
//! It holds the identifiers every call carries ([`RunId`], [`ReceiptId`]), the receipt schema
//! ([`receipt`]), canonical JSON and digests ([`canonical`]), Merkle batches ([`merkle`]),
//! signing keys and batch signatures ([`sign`]), verification of receipts and chains
//! ([`verify`]), replay keys and the sealed-call types ([`key`], [`replay`]), and W3C Verifiable Credentials with `eddsa-jcs-2022` proofs and `did:key`
//! issuers ([`vc`]), secrets that never print ([`Secret`]), the text forms every binary writes
//! alike ([`text`]: times, hex, redacted paths), and — with the `tls` feature — the client TLS
//! setup the proxy and the CLI share ([`tls`]). Crypto is `ring` only: the same backend the
//! proxy's TLS already uses. The proxy↔control messages are defined once, in [`wire`].
#![forbid(unsafe_code)]

pub mod canonical;
pub mod capability;
pub mod key;
pub mod merkle;
pub mod receipt;
pub mod replay;
pub mod scitt;
pub mod secret;
pub mod sign;
pub mod text;
pub mod tlog;
#[cfg(feature = "tls")]
pub mod tls;
pub mod vc;
pub mod verify;
pub mod wire;

pub use secret::Secret;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest run id we accept, in bytes.
pub const MAX_RUN_ID_LEN: usize = 128;

/// Why a string is not a valid [`RunId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunIdError {
    /// The id is empty.
    #[error("run id is empty")]
    Empty,
    /// The id is longer than [`MAX_RUN_ID_LEN`].
    #[error("run id is {len} bytes long; the limit is {MAX_RUN_ID_LEN}")]
    TooLong {
        /// Length of the rejected id.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9._-]`.
    #[error("run id contains {found:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar {
        /// The first offending character.
        found: char,
    },
}

/// The identifier of a run: the unit that owns calls, receipts, budget and capabilities.
///
/// Invariant: 1 to [`MAX_RUN_ID_LEN`] bytes of `[A-Za-z0-9._-]`, so a run id is always safe to put
/// in a header, a path segment, a file name or a log line without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// Validates `s` as a run id.
    pub fn new(s: &str) -> Result<Self, RunIdError> {
        if s.is_empty() {
            return Err(RunIdError::Empty);
        }
        if s.len() > MAX_RUN_ID_LEN {
            return Err(RunIdError::TooLong { len: s.len() });
        }
        if let Some(found) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(RunIdError::BadChar { found });
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = RunIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The identifier of one receipt (one call).
///
/// A UUIDv7: time-ordered, so ids sort roughly by creation time and index well, and unique
/// without coordination between proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReceiptId(uuid::Uuid);

impl ReceiptId {
    /// A fresh id for a call that starts now.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id in its canonical hyphenated lowercase form, without allocating.
    pub fn encode<'b>(&self, buf: &'b mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }
}

impl fmt::Display for ReceiptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for ReceiptId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::{ReceiptId, RunId, RunIdError};

    #[test]
    fn run_id_accepts_safe_ids_and_rejects_the_rest() {
        assert_eq!(RunId::new("run-1.a_B").unwrap().as_str(), "run-1.a_B");
        assert_eq!(RunId::new(""), Err(RunIdError::Empty));
        assert_eq!(RunId::new("a b"), Err(RunIdError::BadChar { found: ' ' }));
        assert_eq!(RunId::new("a:b"), Err(RunIdError::BadChar { found: ':' }));
        let long = "x".repeat(129);
        assert_eq!(RunId::new(&long), Err(RunIdError::TooLong { len: 129 }));
        let err: Result<RunId, _> = serde_json::from_str("\"a/b\"");
        assert!(err.is_err());
    }

    #[test]
    fn receipt_ids_are_unique_ordered_and_round_trip() {
        let a = ReceiptId::generate();
        let b = ReceiptId::generate();
        assert_ne!(a, b);
        assert!(a < b, "UUIDv7 ids generated in sequence sort in sequence");
        let mut buf = [0u8; 36];
        let s = a.encode(&mut buf).to_owned();
        assert_eq!(s, a.to_string());
        assert_eq!(s.parse::<ReceiptId>().unwrap(), a);
    }
}
