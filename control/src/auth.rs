//! Bearer-token authentication: who is calling, in which role, for which tenant.
//!
//! Tokens are random (32 bytes, base64url, prefixed `fft_`) and stored only as SHA-256 hashes.
//! The bootstrap token (`FLEETFORGE_CONTROL_TOKEN`) is compared in constant time and acts as an
//! admin of every tenant; what it writes goes to tenant `default`. A principal asking for another
//! tenant's data gets *not found*, never *forbidden*: the existence of other tenants' runs is not
//! revealed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::canonical::{hex, sha256};

/// The tenant that all-tenant principals write to.
pub const DEFAULT_TENANT: &str = "default";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Create runs, read everything of its tenant.
    Admin,
    /// Ingest receipts, register keys, read keys.
    Proxy,
    /// Read.
    Reader,
}

impl Role {
    /// Parses `admin`, `proxy` or `reader`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "proxy" => Some(Role::Proxy),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Proxy => "proxy",
            Role::Reader => "reader",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its role.
    pub role: Role,
    /// Its tenant; `None` for the bootstrap token, which sees every tenant.
    pub tenant: Option<String>,
}

impl Principal {
    /// Whether it may read data of `tenant`.
    pub fn can_read(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// The tenant its writes belong to.
    pub fn write_tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// The tenant filter for listings (`None` = all).
    pub fn tenant_filter(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

/// SHA-256 (hex) of a token: what the database keeps.
pub fn token_hash(token: &str) -> String {
    hex(&sha256(token.as_bytes()))
}

/// A fresh random token with `prefix`.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is not recoverable; an all-zero token would be worse than a panic.
    #[allow(clippy::expect_used)]
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system random generator");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random id in lowercase base32 (`n` characters).
pub fn new_id(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = vec![0u8; n];
    #[allow(clippy::expect_used)]
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system random generator");
    bytes.iter().map(|b| ALPHABET[usize::from(b % 32)] as char).collect()
}

/// Constant-time comparison of two secrets' hashes.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (ha, hb) = (sha256(a.as_bytes()), sha256(b.as_bytes()));
    ha.iter().zip(hb.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a one-time login code is good for.
pub const LOGIN_CODE_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a web-view session lasts.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

#[cfg(test)]
mod tests {
    use super::{Principal, Role, new_id, new_token, same_secret, token_hash};

    #[test]
    fn tokens_ids_and_tenancy() {
        let t = new_token("fft_");
        assert!(t.starts_with("fft_") && t.len() == 4 + 43);
        assert_ne!(t, new_token("fft_"));
        assert_eq!(token_hash(&t).len(), 64);
        assert_eq!(new_id(12).len(), 12);
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
        let all = Principal { role: Role::Admin, tenant: None };
        let a = Principal { role: Role::Reader, tenant: Some("a".into()) };
        assert!(all.can_read("b") && a.can_read("a") && !a.can_read("b"));
        assert_eq!(all.write_tenant(), "default");
        assert_eq!(Role::parse("proxy"), Some(Role::Proxy));
        assert_eq!(Role::parse("root"), None);
    }
}
