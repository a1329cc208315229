//! C2PA: a run's receipt bundle as an asset with a content-credential manifest store beside it.
//!
//! The asset is the run's **receipt bundle**: its receipts as JSON lines, ordered by seq then
//! lane (by bytes), each line a receipt exactly as `GET /v1/receipts/{id}` serves it — the
//! `receipts.jsonl` of an evidence bundle. The manifest store (`.c2pa` sidecar) binds it by a
//! hard data hash (`c2pa.hash.data`, SHA-256 over every byte, no exclusions: the manifest lives
//! outside the asset) and carries a FleetForge assertion, [`ASSERTION`]: run id, tenant, receipt
//! count, the tenant's log head, the policy packs that decided the run's calls with their digests,
//! and the run token's capability (revocation) id. It is signed with ES256 by a leaf certificate
//! issued by a FleetForge signing CA that control generates under `$FLEETFORGE_HOME/c2pa/`; the
//! leaf carries what C2PA requires of a signer (digitalSignature key usage only, the C2PA
//! claimSigning extended key usage, authority and subject key identifiers). The CA certificate
//! is published in `GET /v1/keys` (`kind: c2pa-ca`) as a trust anchor.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

pub use ::c2pa::ValidationState;
use ::c2pa::assertions::DataHash;
use ::c2pa::{Builder, Context, Reader, SigningAlg};
use fleetforge_trust::canonical::{hex, sha256};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::store::StoredReceipt;

/// The label of the FleetForge assertion.
pub const ASSERTION: &str = "com.fleetforge.run";
/// The media type the asset is read as.
pub const ASSET_FORMAT: &str = "application/octet-stream";
/// The name C2PA gives a data hash that covers the whole asset.
const DATA_HASH_NAME: &str = "jumbf manifest";
/// id-kp-c2pa-claimSigning, the extended key usage C2PA defines for claim signers (readers of
/// every SDK version accept it; some no longer accept documentSigning by default).
const EKU_C2PA_CLAIM_SIGNING: &[u64] = &[1, 3, 6, 1, 4, 1, 62558, 2, 1];

/// Why a manifest could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum C2paError {
    /// The signing CA's files could not be read or written.
    #[error("C2PA signing CA {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The C2PA library refused.
    #[error("C2PA: {0}")]
    Sdk(#[from] ::c2pa::Error),
}

fn ca_error(path: &Path, reason: impl ToString) -> C2paError {
    C2paError::Ca { path: path.display().to_string(), reason: reason.to_string() }
}

/// The FleetForge C2PA signing CA and the leaf that signs manifests.
#[derive(Clone)]
pub struct SigningCa {
    /// The CA certificate, PEM: the trust anchor verifiers configure.
    pub ca_pem: String,
    /// The CA's public key (an uncompressed P-256 point), base64url.
    ca_public: String,
    /// The leaf then the CA, PEM.
    chain_pem: String,
    /// The leaf's PKCS#8 private key, PEM.
    key_pem: String,
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningCa(..)")
    }
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), C2paError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| ca_error(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| ca_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ca_error(path, e))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "FleetForge C2PA signing CA");
    params.distinguished_name.push(DnType::OrganizationName, "FleetForge");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "FleetForge control");
    params.distinguished_name.push(DnType::OrganizationName, "FleetForge");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(EKU_C2PA_CLAIM_SIGNING.to_vec())];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

impl SigningCa {
    /// Loads the CA and the signing leaf from `$home/c2pa/`, generating both on first use.
    pub fn load_or_create(home: &Path) -> Result<Self, C2paError> {
        let dir: PathBuf = home.join("c2pa");
        let (ca_path, chain_path, key_path) = (dir.join("ca.pem"), dir.join("signer.pem"), dir.join("signer.key"));
        if !chain_path.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| ca_error(&dir, e))?;
            let gen_err = |e: rcgen::Error| ca_error(&dir, format!("generating the CA: {e}"));
            let ca_key = KeyPair::generate().map_err(gen_err)?;
            let ca_cert = ca_params().self_signed(&ca_key).map_err(gen_err)?;
            let issuer = Issuer::new(ca_params(), ca_key);
            let leaf_key = KeyPair::generate().map_err(gen_err)?;
            let leaf = leaf_params().signed_by(&leaf_key, &issuer).map_err(gen_err)?;
            // The CA key is not kept: the leaf is issued once, and a new CA is made if the files
            // are deleted.
            write_private(&key_path, leaf_key.serialize_pem().as_bytes(), 0o600)?;
            let public = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                issuer.key().public_key_raw(),
            );
            write_private(&dir.join("ca.pub"), public.as_bytes(), 0o644)?;
            write_private(&ca_path, ca_cert.pem().as_bytes(), 0o644)?;
            write_private(&chain_path, format!("{}{}", leaf.pem(), ca_cert.pem()).as_bytes(), 0o644)?;
        }
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| ca_error(p, e));
        Ok(Self {
            ca_pem: read(&ca_path)?,
            ca_public: read(&dir.join("ca.pub"))?,
            chain_pem: read(&chain_path)?,
            key_pem: read(&key_path)?,
        })
    }

    /// The CA's entry in `GET /v1/keys`.
    pub fn listing(&self) -> Value {
        json!({
            "key_id": format!("c2pa-ca-{}", &hex(&sha256(self.ca_pem.as_bytes()))[..16]),
            "kind": "c2pa-ca",
            "alg": "es256",
            "public_key": self.ca_public,
            "certificate_pem": self.ca_pem,
        })
    }
}

/// The receipt bundle of a run: each receipt as served, one per line, by seq then lane.
pub fn receipt_bundle(receipts: &mut [StoredReceipt]) -> Vec<u8> {
    receipts.sort_by(|a, b| (a.seq, a.lane.as_bytes()).cmp(&(b.seq, b.lane.as_bytes())));
    let mut out = Vec::new();
    for r in receipts.iter() {
        out.extend_from_slice(r.json().to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Signs a manifest store for `asset` carrying `assertion`; the `.c2pa` bytes.
pub fn sign(ca: &SigningCa, asset: &[u8], title: &str, assertion: &Value) -> Result<Vec<u8>, C2paError> {
    let definition = json!({
        "title": title,
        "format": ASSET_FORMAT,
        "claim_generator_info": [{ "name": "FleetForge", "version": env!("CARGO_PKG_VERSION") }],
    });
    let mut builder = Builder::from_context(Context::new()).with_definition(definition)?;
    // C2PA requires the first action to say how the asset came to be: control wrote it, from the
    // receipts, by algorithm.
    builder.add_action(json!({
        "action": "c2pa.created",
        "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicMedia",
        "softwareAgent": { "name": "FleetForge control", "version": env!("CARGO_PKG_VERSION") },
    }))?;
    builder.add_assertion(ASSERTION, assertion)?;
    let mut hash = DataHash::new(DATA_HASH_NAME, "sha256");
    hash.set_hash(sha256(asset).to_vec());
    let signer =
        ::c2pa::create_signer::from_keys(ca.chain_pem.as_bytes(), ca.key_pem.as_bytes(), SigningAlg::Es256, None)?;
    // The placeholder puts the data-hash binding into the claim; its bytes are not used (the
    // manifest is a sidecar, so nothing of the asset is excluded from the hash).
    builder.data_hashed_placeholder(signer.reserve_size(), "application/c2pa")?;
    Ok(builder.sign_data_hashed_embeddable(signer.as_ref(), &hash, "application/c2pa")?)
}

/// What reading a manifest store against its asset found.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `Trusted` (signed by a leaf of the given CA, every hash matching), `Valid` (intact, signer
    /// not trusted) or `Invalid`.
    pub state: ValidationState,
    /// The failure codes (`assertion.dataHash.mismatch`, …), empty when none.
    pub failures: Vec<String>,
    /// The FleetForge assertion, when present.
    pub assertion: Option<Value>,
}

/// Reads `manifest` against `asset` with the c2pa library's own validation, trusting signers
/// issued by `ca_pem` that carry the C2PA claim-signing extended key usage.
pub fn check(manifest: &[u8], asset: &[u8], ca_pem: &str) -> Result<Checked, C2paError> {
    // The trust policy: the anchor, and the extended key usage a signer must carry.
    let settings =
        json!({ "trust": { "trust_anchors": ca_pem, "trust_config": "1.3.6.1.4.1.62558.2.1\n" } }).to_string();
    let context = Context::new().with_settings(settings.as_str())?;
    let reader = Reader::from_context(context).with_manifest_data_and_stream(
        manifest,
        ASSET_FORMAT,
        std::io::Cursor::new(asset),
    )?;
    let failures = reader
        .validation_results()
        .and_then(|r| r.active_manifest())
        .map(|m| m.failure().iter().map(|s| s.code().to_owned()).collect())
        .unwrap_or_default();
    let assertion = reader.active_manifest().and_then(|m| m.find_assertion::<Value>(ASSERTION).ok());
    Ok(Checked { state: reader.validation_state(), failures, assertion })
}

#[cfg(test)]
mod tests;
