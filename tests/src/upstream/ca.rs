//! A throwaway certificate authority for end-to-end tests.
//!
//! The CA lives for one test run: its PEM is written to `dir/test-ca.pem` so the proxy (or curl,
//! Python, Node) can be told to trust it, and it mints leaf certificates for the fake upstream on
//! demand. Certificates carry the extensions strict verifiers want (Python 3.13's
//! `VERIFY_X509_STRICT`): a critical CA basic constraint, key identifiers on both sides, and a
//! `serverAuth` leaf with every name as a SAN (IP literals as IP SANs).
//!
//! Nothing here installs global state; rustls configs are built with an explicit ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate inside the directory given to [`TestCa::new`].
pub const CA_FILE_NAME: &str = "test-ca.pem";

/// A throwaway CA; cheap to clone (the key is shared).
#[derive(Clone)]
pub struct TestCa {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    pem_path: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("pem_path", &self.inner.pem_path).finish_non_exhaustive()
    }
}

impl TestCa {
    /// Generates a fresh CA key and certificate and writes the certificate to `dir/test-ca.pem`
    /// (creating `dir` if needed).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the test CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = distinguished_name("FleetForge Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(365);
        let cert = params.self_signed(&key).context("self-signing the test CA")?;

        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pem_path = dir.join(CA_FILE_NAME);
        let cert_pem = cert.pem();
        std::fs::write(&pem_path, &cert_pem).with_context(|| format!("writing {}", pem_path.display()))?;

        Ok(Self {
            inner: Arc::new(Inner {
                issuer: Issuer::new(params, key),
                cert_pem,
                cert_der: cert.der().clone(),
                pem_path,
            }),
        })
    }

    /// Path of the PEM file written by [`TestCa::new`].
    pub fn pem_path(&self) -> &Path {
        &self.inner.pem_path
    }

    /// The CA certificate in PEM form.
    pub fn cert_pem(&self) -> &str {
        &self.inner.cert_pem
    }

    /// The CA certificate in DER form.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.inner.cert_der
    }

    /// Mints a leaf certificate for `names` (DNS names or IP literals; the first also becomes the
    /// common name) signed by this CA, and returns a rustls server config offering `alpn`.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> anyhow::Result<Arc<ServerConfig>> {
        let first = names.first().context("a leaf certificate needs at least one name")?;
        let key = KeyPair::generate().context("generating a leaf key")?;
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .with_context(|| format!("invalid leaf names {names:?}"))?;
        params.distinguished_name = distinguished_name(first);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        let cert = params.signed_by(&key, &self.inner.issuer).context("signing the leaf certificate")?;

        let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
            .context("building the upstream TLS config")?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A rustls client config that trusts only this CA and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> anyhow::Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.inner.cert_der.clone())?;
        let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "FleetForge e2e");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Installs rustls's ring provider as the process default, for code that calls
/// `ServerConfig::builder()` / `ClientConfig::builder()`. Safe to call repeatedly.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
