//! Pack manifests (`pack.toml`) and loading a pack's bytes with its digest checked.
//!
//! A pack is named by a path: a directory holding `pack.toml`, a `pack.toml` itself, or — for
//! quick use and `fleetforge-ctl policy test` — a bare `.wasm`, `.rego`, OPA bundle `.tar.gz` or
//! `.cedar` file, whose manifest is made up from the file (its digest is computed, not checked,
//! and inspect reports it as having no manifest).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PolicyError;

/// The kinds of policy pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A core Wasm module with the FleetForge ABI.
    Wasm,
    /// Rego, as a `.rego` file or an OPA bundle.
    Rego,
    /// A Cedar policy set.
    Cedar,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wasm => "wasm",
            Self::Rego => "rego",
            Self::Cedar => "cedar",
        })
    }
}

/// A pack manifest, as written in `pack.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Pack name.
    pub name: String,
    /// Pack version.
    pub version: String,
    /// Kind of pack.
    pub kind: Kind,
    /// The module file, relative to the manifest.
    pub module: String,
    /// Hex SHA-256 of the module file; loading refuses a module that does not match.
    pub sha256: String,
    /// Where the pack's source lives.
    #[serde(default)]
    pub source: Option<String>,
    /// Who signed off on the pack.
    #[serde(default)]
    pub signer: Option<String>,
    /// Wasm: the export to call (only `evaluate` exists in ABI 1). Rego: the allow rule.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// Rego: the reasons rule.
    #[serde(default)]
    pub reasons: Option<String>,
    /// The pack's configuration, handed to it with every call.
    #[serde(default)]
    pub config: Option<toml::Table>,
}

/// A manifest with the module's bytes, read from disk and checked against the manifest's digest.
#[derive(Debug, Clone)]
pub struct Source {
    /// The manifest (made up for a bare module file).
    pub manifest: Manifest,
    /// Whether the manifest was written by someone (false: made up from a bare file).
    pub has_manifest: bool,
    /// The module's bytes.
    pub module: Vec<u8>,
    /// Lower-case hex SHA-256 of the module.
    pub digest: String,
    /// The files the pack was read from (watched for hot reload).
    pub files: Vec<PathBuf>,
    /// The path the pack was named by.
    pub path: PathBuf,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    fleetforge_trust::canonical::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn read(path: &Path) -> Result<Vec<u8>, PolicyError> {
    std::fs::read(path).map_err(|e| PolicyError::Read { path: path.to_owned(), reason: e.to_string() })
}

impl Source {
    /// Reads the pack named by `path`, verifying the module digest against its manifest.
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        if let Err(e) = std::fs::metadata(path) {
            return Err(PolicyError::Read { path: path.to_owned(), reason: e.to_string() });
        }
        let manifest_path = if path.is_dir() { path.join("pack.toml") } else { path.to_owned() };
        let file_name = manifest_path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !file_name.ends_with(".toml") {
            return Self::bare(path, &file_name);
        }
        let text = String::from_utf8(read(&manifest_path)?).map_err(|_| PolicyError::Manifest {
            path: manifest_path.clone(),
            reason: "the manifest is not UTF-8".into(),
        })?;
        let manifest: Manifest = toml::from_str(&text)
            .map_err(|e| PolicyError::Manifest { path: manifest_path.clone(), reason: e.to_string() })?;
        let bad = |reason: String| PolicyError::Manifest { path: manifest_path.clone(), reason };
        if manifest.module.is_empty() || Path::new(&manifest.module).is_absolute() || manifest.module.contains("..") {
            return Err(bad(format!(
                "module {:?} must name a file beside the manifest (relative, no ..)",
                manifest.module
            )));
        }
        let expected = manifest.sha256.to_ascii_lowercase();
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("sha256 {:?} is not 64 hex digits", manifest.sha256)));
        }
        let module_path = manifest_path.parent().unwrap_or(Path::new(".")).join(&manifest.module);
        let module = read(&module_path)?;
        let digest = sha256_hex(&module);
        if digest != expected {
            return Err(PolicyError::Digest { path: module_path, expected, actual: digest });
        }
        Ok(Self {
            manifest,
            has_manifest: true,
            module,
            digest,
            files: vec![manifest_path, module_path],
            path: path.to_owned(),
        })
    }

    /// A bare module file: the manifest is made up from its name.
    fn bare(path: &Path, file_name: &str) -> Result<Self, PolicyError> {
        let kind = if file_name.ends_with(".wasm") {
            Kind::Wasm
        } else if file_name.ends_with(".rego") || file_name.ends_with(".tar.gz") || file_name.ends_with(".tgz") {
            Kind::Rego
        } else if file_name.ends_with(".cedar") {
            Kind::Cedar
        } else {
            return Err(PolicyError::Manifest {
                path: path.to_owned(),
                reason:
                    "expected a pack directory, a pack.toml, or a .wasm, .rego, .tar.gz (OPA bundle) or .cedar file"
                        .into(),
            });
        };
        let module = read(path)?;
        let digest = sha256_hex(&module);
        let name = file_name.split('.').next().unwrap_or(file_name).to_owned();
        let manifest = Manifest {
            name,
            version: "0.0.0".into(),
            kind,
            module: file_name.to_owned(),
            sha256: digest.clone(),
            source: Some(path.display().to_string()),
            signer: None,
            entrypoint: None,
            reasons: None,
            config: None,
        };
        Ok(Self { manifest, has_manifest: false, module, digest, files: vec![path.to_owned()], path: path.to_owned() })
    }

    /// The pack's config as JSON (`None` when the manifest has no `[config]`).
    pub fn config_json(&self) -> Option<serde_json::Value> {
        // A TOML table always converts to JSON (datetimes become strings).
        self.manifest.config.as_ref().and_then(|c| serde_json::to_value(c).ok())
    }
}
