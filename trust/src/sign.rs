//! Signing keys and batch signatures.
//!
//! A proxy signs receipts in batches: a Merkle tree over the batch's receipt hashes
//! ([`crate::merkle`]) and one ed25519 signature over
//! `"fleetforge.receipt-batch/v1\0" ‖ root ‖ size (u64, big-endian)`. The size is signed so a
//! proof cannot claim a different tree shape. Keys are stored as PKCS#8 PEM files, mode 0600, and
//! named by a key id derived from the public key: `ed25519:` + the first 8 bytes of its SHA-256, in
//! hex.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::canonical::{hex, sha256};
use crate::merkle::{Hash, Tree};
use crate::receipt::{BatchProof, Signature};

const BATCH_DOMAIN: &[u8] = b"fleetforge.receipt-batch/v1\0";

/// Why a key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not an ed25519 PKCS#8 key.
    #[error("key file {path} is not an ed25519 PKCS#8 PEM key: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The system random generator failed.
    #[error("cannot generate a key: the system random generator failed")]
    Random,
}

/// The key id of an ed25519 public key.
pub fn key_id(public_key: &[u8]) -> String {
    format!("ed25519:{}", hex(&sha256(public_key)[..8]))
}

/// The message a batch signature covers.
fn batch_message(root: &Hash, size: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(BATCH_DOMAIN.len() + 40);
    m.extend_from_slice(BATCH_DOMAIN);
    m.extend_from_slice(root);
    m.extend_from_slice(&size.to_be_bytes());
    m
}

/// An ed25519 signing key with its id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key and its PKCS#8 document.
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let key =
            Self::from_pkcs8(doc.as_ref()).map_err(|reason| KeyError::Format { path: "(generated)".into(), reason })?;
        Ok((key, doc.as_ref().to_vec()))
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| e.to_string())?;
        let id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, id })
    }

    /// Loads the key at `path`, creating it (mode 0600, never overwriting) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io { path: shown.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut file) => {
                let (key, der) = Self::generate()?;
                file.write_all(pem("PRIVATE KEY", &der).as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(io)?;
                Self::from_pem(&text).map_err(|e| match e {
                    KeyError::Format { reason, .. } => KeyError::Format { path: shown, reason },
                    other => other,
                })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key in the PEM text `text` (PKCS#8), as [`Self::load_or_create`] reads it from a file.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let der =
            unpem(text).ok_or_else(|| KeyError::Format { path: "(PEM text)".into(), reason: "no PEM block".into() })?;
        Self::from_pkcs8(&der).map_err(|reason| KeyError::Format { path: "(PEM text)".into(), reason })
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs a batch's tree: the signature (base64url) over its root and size.
    pub fn sign_root(&self, tree: &Tree) -> String {
        URL_SAFE_NO_PAD.encode(self.pair.sign(&batch_message(&tree.root(), tree.len() as u64)).as_ref())
    }

    /// Signs a batch of receipt hashes; returns one [`Signature`] per hash, in order.
    pub fn sign_batch(&self, hashes: &[Hash]) -> Vec<Signature> {
        if hashes.is_empty() {
            return Vec::new();
        }
        let tree = Tree::new(hashes);
        let size = hashes.len() as u64;
        let sig = self.sign_root(&tree);
        let root_hex = hex(&tree.root());
        (0..hashes.len())
            .map(|i| Signature {
                alg: "ed25519".into(),
                batch: BatchProof {
                    index: i as u64,
                    path: tree.audit_path(i).iter().map(|h| hex(h)).collect(),
                    root: root_hex.clone(),
                    size,
                },
                key_id: self.id.clone(),
                sig: sig.clone(),
            })
            .collect()
    }
}

/// Checks a batch signature with a raw ed25519 public key.
pub fn verify_batch(public_key: &[u8], root: &Hash, size: u64, sig_b64url: &str) -> bool {
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig_b64url) else { return false };
    UnparsedPublicKey::new(&ED25519, public_key).verify(&batch_message(root, size), &sig).is_ok()
}

/// PEM-encodes `der` under `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Decodes the first PEM block of `text`.
fn unpem(text: &str) -> Option<Vec<u8>> {
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .collect();
    STANDARD.decode(body.trim()).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::{SigningKey, verify_batch};
    use crate::canonical::{sha256, unhex32};
    use crate::merkle::root_from_path;

    #[test]
    fn keys_persist_with_0600_and_batches_verify_per_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/proxy.pem");
        let key = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(key.id(), again.id());
        assert!(key.id().starts_with("ed25519:") && key.id().len() == 8 + 16);

        let hashes: Vec<_> = (0..5u8).map(|i| sha256(&[i])).collect();
        let sigs = key.sign_batch(&hashes);
        for (h, s) in hashes.iter().zip(&sigs) {
            let path: Vec<_> = s.batch.path.iter().map(|p| unhex32(p).unwrap()).collect();
            let root = root_from_path(h, s.batch.index, s.batch.size, &path).unwrap();
            assert_eq!(root, unhex32(&s.batch.root).unwrap());
            assert!(verify_batch(again.public_key(), &root, s.batch.size, &s.sig));
            assert!(!verify_batch(again.public_key(), &root, s.batch.size + 1, &s.sig), "the size is signed");
        }
        let (other, _) = SigningKey::generate().unwrap();
        let root = unhex32(&sigs[0].batch.root).unwrap();
        assert!(!verify_batch(other.public_key(), &root, 5, &sigs[0].sig));
    }
}
