//! Client-side TLS shared by the FleetForge binaries (feature `tls`): the one rustls crypto
//! provider (ring) and a client configuration trusting the system roots plus an optional extra
//! PEM bundle. The proxy uses it for upstreams and for control; the CLI for control.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Why a client TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// No root certificates to verify servers with, or the extra bundle is unusable.
    #[error("{0}")]
    NoRoots(String),
}

/// The one rustls crypto provider of the process (ring), installed as the process default too so
/// that no library picks another backend.
pub fn provider() -> Arc<CryptoProvider> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Fails only if a provider is already installed, which is fine.
    let _ = CryptoProvider::install_default((*provider).clone());
    provider
}

/// A client config trusting the system roots and, when given, the certificates of `extra_ca`
/// (`FLEETFORGE_UPSTREAM_CA`).
pub fn client_config(provider: Arc<CryptoProvider>, extra_ca: Option<&Path>) -> Result<ClientConfig, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipped part of the system root store");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(roots = added, "loaded system roots for client TLS");
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| {
                ClientTlsError::NoRoots(format!("cannot read FLEETFORGE_UPSTREAM_CA {}: {e}", path.display()))
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ClientTlsError::NoRoots(format!("FLEETFORGE_UPSTREAM_CA {} is not a PEM bundle: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(ClientTlsError::NoRoots(format!(
                "FLEETFORGE_UPSTREAM_CA {} holds no certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots.add(cert)?;
        }
    }
    if roots.is_empty() {
        return Err(ClientTlsError::NoRoots(
            "no trusted root certificates for client TLS: install the system CA bundle (ca-certificates) or set FLEETFORGE_UPSTREAM_CA".into(),
        ));
    }
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::{client_config, provider};

    #[test]
    fn an_extra_bundle_that_is_missing_or_empty_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = client_config(provider(), Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = client_config(provider(), Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
