//! TLS: the FleetForge interception CA, leaf certificates minted from it, and the client-side
//! trust used for upstreams.
//!
//! The CA is generated on first start under `$FLEETFORGE_HOME/ca/`: `ca.key` (PKCS#8, mode 0600,
//! created with `O_EXCL` so two proxies starting on one home cannot both write it), `ca.pem`, and
//! `bundle.pem` = the system roots + the CA, for clients whose `SSL_CERT_FILE` *replaces* their
//! roots. On every start the pair is checked by minting and verifying a leaf, so a `ca.pem` that
//! does not belong to `ca.key` is an error at start, not a confusing failure in every client.
//!
//! Leaves reuse one key pair generated per process (no key generation per host), carry a DNS or
//! IP SAN for the intercepted host, and are cached per host as a ready `ServerConfig` offering
//! ALPN `h2` and `http/1.1`, with session tickets so reconnecting clients resume cheaply.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fleetforge_trust::tls::ClientTlsError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// Leaf certificates are valid this long and re-minted a day before they expire.
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most leaf configs kept; the cache is cleared when it is full.
const LEAF_CACHE_MAX: usize = 10_000;

/// Places the system keeps its PEM bundle of trusted roots, most common first.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// Key or certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA files on disk are inconsistent.
    #[error("{0}")]
    BadCa(String),
    /// No root certificates to verify upstreams with.
    #[error("{0}")]
    NoRoots(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_owned(), source }
}

pub use fleetforge_trust::tls::provider;

struct CachedLeaf {
    config: Arc<ServerConfig>,
    refresh_after: SystemTime,
}

/// The interception CA and its leaf cache.
pub struct Ca {
    cert_pem: String,
    ca_path: PathBuf,
    bundle_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    cache: RwLock<HashMap<String, CachedLeaf>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("ca_path", &self.ca_path).finish_non_exhaustive()
    }
}

/// The CA's certificate parameters; a pure function of its key, so the issuer can be rebuilt
/// from `ca.key` alone on every start.
fn ca_params(key: &KeyPair) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let id: String = params.key_identifier(key).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("FleetForge Interception CA {id}"));
    dn.push(DnType::OrganizationName, "FleetForge");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

impl Ca {
    /// Loads the CA from `$home/ca/`, generating it on first start, and writes `bundle.pem`.
    pub fn load_or_create(home: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let dir = home.join("ca");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        let key_path = dir.join("ca.key");
        let ca_path = dir.join("ca.pem");

        let (key, created) = match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path) {
            Ok(mut file) => {
                let key = KeyPair::generate()?;
                file.write_all(key.serialize_pem().as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io_err(&key_path))?;
                (key, true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (Self::read_key(&key_path)?, false),
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let params = ca_params(&key)?;
        let cert_pem = if created {
            let pem = params.self_signed(&key)?.pem();
            write_atomic(&ca_path, pem.as_bytes(), 0o644)?;
            pem
        } else {
            Self::read_cert(&ca_path)?
        };

        let ca = Self {
            cert_pem,
            bundle_path: dir.join("bundle.pem"),
            ca_path,
            issuer: Issuer::new(params, key),
            leaf_key: KeyPair::generate()?,
            ticketer: rustls::crypto::ring::Ticketer::new()?,
            provider,
            cache: RwLock::new(HashMap::new()),
        };
        ca.self_test()?;
        ca.write_bundle()?;
        Ok(ca)
    }

    fn read_key(path: &Path) -> Result<KeyPair, TlsError> {
        // A concurrent first start may have created the file and not yet written it: wait briefly.
        for _ in 0..50 {
            let text = fs::read_to_string(path).map_err(io_err(path))?;
            if !text.is_empty() {
                if let Ok(meta) = fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    let mode = format!("{:o}", meta.permissions().mode() & 0o777);
                    tracing::warn!(path = %path.display(), mode, "CA key is readable by other users; run chmod 600 on it");
                }
                return KeyPair::from_pem(&text)
                    .map_err(|e| TlsError::BadCa(format!("{} is not a PEM private key: {e}", path.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TlsError::BadCa(format!("{} is empty; delete it (and ca.pem) to generate a new CA", path.display())))
    }

    fn read_cert(path: &Path) -> Result<String, TlsError> {
        for _ in 0..50 {
            match fs::read_to_string(path) {
                Ok(text) if !text.is_empty() => return Ok(text),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path)(e)),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TlsError::BadCa(format!(
            "{} is missing but ca.key exists next to it; delete ca.key to generate a new CA, or restore ca.pem",
            path.display()
        )))
    }

    /// Mints a leaf and verifies it against `ca.pem` as the only root.
    fn self_test(&self) -> Result<(), TlsError> {
        let mismatch = |why: String| {
            TlsError::BadCa(format!(
                "{} does not match ca.key next to it ({why}); delete both to generate a new CA",
                self.ca_path.display()
            ))
        };
        let root = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| mismatch(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        roots.add(root).map_err(|e| mismatch(e.to_string()))?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| mismatch(e.to_string()))?;
        let name = "fleetforge-self-test.invalid";
        let leaf = self.mint_cert(name)?;
        let server_name = ServerName::try_from(name).map_err(|e| mismatch(e.to_string()))?;
        verifier
            .verify_server_cert(&leaf, &[], &server_name, &[], UnixTime::now())
            .map_err(|e| mismatch(e.to_string()))?;
        Ok(())
    }

    fn write_bundle(&self) -> Result<(), TlsError> {
        let system = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .filter(|p| p != &self.bundle_path)
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
            .find_map(|p| fs::read_to_string(&p).ok().filter(|t| t.contains("BEGIN CERTIFICATE")));
        let mut bundle = system.unwrap_or_else(|| {
            tracing::warn!("no system CA bundle found; bundle.pem holds only the FleetForge CA");
            String::new()
        });
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str("# FleetForge interception CA\n");
        bundle.push_str(&self.cert_pem);
        write_atomic(&self.bundle_path, bundle.as_bytes(), 0o644)
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of `ca.pem`.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Path of `bundle.pem` (system roots + CA).
    pub fn bundle_path(&self) -> &Path {
        &self.bundle_path
    }

    fn mint_cert(&self, host: &str) -> Result<CertificateDer<'static>, TlsError> {
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        Ok(params.signed_by(&self.leaf_key, &self.issuer)?.der().clone())
    }

    /// The server config presenting a leaf for `host` (cached). Returns whether it was minted now.
    pub fn server_config(&self, host: &str) -> Result<(Arc<ServerConfig>, bool), TlsError> {
        let now = SystemTime::now();
        if let Some(hit) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(host)
            && now < hit.refresh_after
        {
            return Ok((hit.config.clone(), false));
        }
        let leaf = self.mint_cert(host)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = self.ticketer.clone();
        let config = Arc::new(config);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= LEAF_CACHE_MAX {
            cache.clear();
        }
        let refresh_after = now + LEAF_VALIDITY - Duration::from_secs(24 * 3600);
        cache.insert(host.to_owned(), CachedLeaf { config: config.clone(), refresh_after });
        Ok((config, true))
    }
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(io_err(path))
}

/// The client config for upstreams: the system roots plus `extra_ca` (`FLEETFORGE_UPSTREAM_CA`).
pub fn upstream_client_config(
    provider: Arc<CryptoProvider>,
    extra_ca: Option<&Path>,
) -> Result<ClientConfig, TlsError> {
    fleetforge_trust::tls::client_config(provider, extra_ca).map_err(|e| match e {
        ClientTlsError::Rustls(e) => TlsError::Rustls(e),
        ClientTlsError::NoRoots(message) => TlsError::NoRoots(message),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::{Ca, provider};

    #[test]
    fn ca_is_created_once_reloaded_and_mints_cached_leaves() {
        let home = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(home.path(), provider()).unwrap();
        let key_mode = std::fs::metadata(home.path().join("ca/ca.key")).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let bundle = std::fs::read_to_string(ca.bundle_path()).unwrap();
        assert!(bundle.ends_with(ca.cert_pem()));

        let again = Ca::load_or_create(home.path(), provider()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem(), "a restart keeps the same CA");

        let (a, minted) = ca.server_config("api.openai.com").unwrap();
        assert!(minted);
        let (b, minted) = ca.server_config("api.openai.com").unwrap();
        assert!(!minted);
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(ca.server_config("127.0.0.1").is_ok(), "IP literals get an IP SAN");
    }

    #[test]
    fn a_ca_pem_that_does_not_match_the_key_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        Ca::load_or_create(home.path(), provider()).unwrap();
        Ca::load_or_create(other.path(), provider()).unwrap();
        std::fs::copy(other.path().join("ca/ca.pem"), home.path().join("ca/ca.pem")).unwrap();
        let err = Ca::load_or_create(home.path(), provider()).unwrap_err();
        assert!(err.to_string().contains("does not match ca.key"), "{err}");
    }
}
