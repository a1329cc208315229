//! Control's capability root keys: ed25519 key pairs under `$FLEETFORGE_HOME/keys/`, one file per
//! key id (`capability-root-<id>.key`, hex, mode 0600). The newest id signs new run tokens; every
//! key stays listed in `GET /v1/keys` so tokens signed before a rotation keep verifying. The same
//! key issues Verifiable Credentials (its `did:key`) and signs replay manifests.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use biscuit_auth::KeyPair;
use fleetforge_trust::canonical::hex;
use fleetforge_trust::capability::{generate_root, root_from_bytes};

/// Why the key ring could not be loaded or extended.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A key file is not a hex ed25519 private key.
    #[error("{path}: not a hex ed25519 private key ({why}); remove it or restore it from backup")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One root key.
pub struct RootKey {
    /// Key id (the Biscuit `root_key_id`).
    pub id: u32,
    /// The key pair.
    pub pair: KeyPair,
    /// Raw private key (for VC signing with ring).
    seed: Vec<u8>,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKey({}, {})", self.id, self.public_hex())
    }
}

impl RootKey {
    /// The public key, 32 bytes.
    pub fn public(&self) -> Vec<u8> {
        self.pair.public().to_bytes()
    }

    /// The public key as an array (for `did:key`).
    pub fn public_array(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let public = self.public();
        if public.len() == 32 {
            out.copy_from_slice(&public);
        }
        out
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex(&self.public())
    }

    /// The key as a ring key pair, for signing credentials and replay manifests.
    pub fn ring(&self) -> Option<ring::signature::Ed25519KeyPair> {
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.seed).ok()
    }

    /// The key id `GET /v1/keys` lists it under (`capability-root-<id>`), which signatures made
    /// with it name.
    pub fn key_id(&self) -> String {
        format!("capability-root-{}", self.id)
    }

    /// The key's entry in `GET /v1/keys`.
    pub fn listing(&self) -> serde_json::Value {
        serde_json::json!({
            "key_id": self.key_id(),
            "root_key_id": self.id,
            "alg": "ed25519",
            "public_key": URL_SAFE_NO_PAD.encode(self.public()),
            "kind": "capability-root",
            "did": fleetforge_trust::vc::did_key(&self.public_array()),
        })
    }
}

/// All root keys, oldest first.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<RootKey>,
}

fn key_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("capability-root-{id}.key"))
}

impl KeyRing {
    /// Loads `home/keys/capability-root-*.key`, generating key 1 when there is none.
    pub fn load_or_create(home: &Path) -> Result<Self, KeyRingError> {
        let dir = home.join("keys");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyRingError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("capability-root-"))
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let seed = decode_hex(text.trim())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| KeyRingError::Bad { path: path.clone(), why: "expected 64 hex digits".into() })?;
            let pair =
                root_from_bytes(&seed).map_err(|e| KeyRingError::Bad { path: path.clone(), why: e.to_string() })?;
            keys.push(RootKey { id, pair, seed });
        }
        keys.sort_by_key(|k| k.id);
        let mut ring = Self { keys };
        if ring.keys.is_empty() {
            ring.rotate(home)?;
        }
        Ok(ring)
    }

    /// Adds a new newest key (id = newest + 1) and writes it. Older keys keep verifying.
    pub fn rotate(&mut self, home: &Path) -> Result<u32, KeyRingError> {
        let id = self.keys.last().map_or(1, |k| k.id + 1);
        let (seed, _) = generate_root();
        let path = key_path(&home.join("keys"), id);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| KeyRingError::Io { path: path.clone(), source })?;
        f.write_all(hex(&seed).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|source| KeyRingError::Io { path: path.clone(), source })?;
        let pair = root_from_bytes(&seed).map_err(|e| KeyRingError::Bad { path, why: e.to_string() })?;
        self.keys.push(RootKey { id, pair, seed });
        Ok(id)
    }

    /// The key that signs new tokens.
    pub fn newest(&self) -> Option<&RootKey> {
        self.keys.last()
    }

    /// Every key, oldest first.
    pub fn all(&self) -> &[RootKey] {
        &self.keys
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn keys_are_created_0600_reloaded_and_rotated() {
        let home = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::load_or_create(home.path()).unwrap();
        let first = ring.newest().unwrap().public_hex();
        let mode = std::fs::metadata(home.path().join("keys/capability-root-1.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ring.rotate(home.path()).unwrap(), 2);
        let again = KeyRing::load_or_create(home.path()).unwrap();
        assert_eq!(again.all().len(), 2);
        assert_eq!(again.all()[0].public_hex(), first);
        assert_eq!(again.newest().unwrap().id, 2);
        std::fs::write(home.path().join("keys/capability-root-3.key"), "zz").unwrap();
        assert!(matches!(KeyRing::load_or_create(home.path()), Err(KeyRingError::Bad { .. })));
    }
}
