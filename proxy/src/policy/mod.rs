//! Policy packs: every call is decided by policy before it leaves the machine.
//!
//! A pack is Wasm ([`wasm`]), Rego ([`rego`]) or Cedar ([`cedar`]); all get the same input
//! document ([`input::Document`], serialized at most once per form per call) and answer with the same
//! [`input::Verdict`]. Packs compose deny-overrides: every pack is asked, the call proceeds only if
//! all allow, and the receipt lists every pack that decided it (name, version and digest). The
//! egress allow-lists (`FLEETFORGE_ALLOWED_HOSTS` / `FLEETFORGE_ALLOWED_MODELS`) are the built-in
//! pack ([`builtin`]), checked at its cheapest point.
//!
//! Loading verifies each module against its manifest's digest. The loaded set is swapped whole on
//! reload (file change or SIGHUP): calls in flight finish with the set they started with, and a
//! pack that fails to load keeps its previous version and logs an ERROR. A pack that fails while
//! deciding — trap, fuel or time exhausted, an invalid verdict — denies the call (fail closed).

pub mod builtin;
mod cedar;
pub mod extract;
pub mod input;
pub mod manifest;
mod rego;
#[cfg(test)]
mod tests;
mod wasm;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use self::input::{Document, Verdict};
use self::manifest::{Kind, Source};
use self::wasm::CallStore;

/// Why a pack could not be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("cannot read policy file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A manifest is malformed.
    #[error("policy manifest {path} is not valid: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A module does not match the digest its manifest names.
    #[error(
        "policy module {path} has sha256 {actual} but its manifest says {expected}; refusing to load it (rebuild the pack, or fix the manifest if the change is intended)"
    )]
    Digest {
        /// The module file.
        path: PathBuf,
        /// The manifest's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// A module was read but its engine refused it.
    #[error("policy pack {pack} ({path}) cannot be loaded: {reason}")]
    Load {
        /// Pack name.
        pack: String,
        /// Where it was read from.
        path: PathBuf,
        /// What the engine said.
        reason: String,
    },
    /// A pack failed while deciding one call.
    #[error("policy pack {pack} failed: {reason}")]
    Evaluate {
        /// Pack name.
        pack: String,
        /// What went wrong.
        reason: String,
    },
}

pub use self::wasm::MAX_MEMORY as MAX_WASM_MEMORY;

/// Bounds on one Wasm evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wasm fuel (roughly, instructions) per call.
    pub fuel: u64,
    /// Wall-clock deadline per call.
    pub timeout: Duration,
    /// Linear memory a pack may grow to, in bytes (at most 256 MiB).
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { fuel: 50_000_000, timeout: Duration::from_millis(100), memory: 16 << 20 }
    }
}

enum Engine {
    Wasm(wasm::WasmPack),
    Rego(Box<rego::RegoPack>),
    Cedar(Box<cedar::CedarPack>),
}

/// Modification time and size of each file a pack was read from.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| match std::fs::metadata(f) {
            Ok(m) => (f.clone(), m.modified().ok(), m.len()),
            Err(_) => (f.clone(), None, u64::MAX),
        })
        .collect()
}

/// A loaded pack.
pub struct Pack {
    /// Manifest, digest and files.
    pub source: Source,
    /// How receipts name it: `name@version/sha256:<module digest>`, plus
    /// `;config=sha256:<digest of its config JSON>` when it has a config.
    pub id: String,
    engine: Engine,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for Pack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pack").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Pack {
    /// Reads, verifies and compiles the pack named by `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let mut source = Source::read(path)?;
        let config = source.config_json();
        let m = &source.manifest;
        let load_error = |reason: String| PolicyError::Load { pack: m.name.clone(), path: path.to_owned(), reason };
        let file_name = m.module.as_str();
        let engine = match m.kind {
            Kind::Wasm => {
                if let Some(e) = m.entrypoint.as_deref().filter(|e| *e != "evaluate") {
                    return Err(load_error(format!("entrypoint {e:?}: ABI 1 packs are entered through \"evaluate\"")));
                }
                Engine::Wasm(wasm::WasmPack::load(&source.module, config.as_ref()).map_err(load_error)?)
            }
            Kind::Rego => Engine::Rego(Box::new(
                rego::RegoPack::load(
                    file_name,
                    &source.module,
                    config.as_ref(),
                    m.entrypoint.as_deref(),
                    m.reasons.as_deref(),
                )
                .map_err(load_error)?,
            )),
            Kind::Cedar => {
                let text = std::str::from_utf8(&source.module)
                    .map_err(|_| load_error(format!("{file_name} is not UTF-8 text")))?;
                Engine::Cedar(Box::new(cedar::CedarPack::load(file_name, text, config.as_ref()).map_err(load_error)?))
            }
        };
        let mut id = format!("{}@{}/sha256:{}", m.name, m.version, source.digest);
        if let Some(config) = &config {
            id.push_str(";config=sha256:");
            id.push_str(&manifest::sha256_hex(config.to_string().as_bytes()));
        }
        // The module's bytes live on in the engine; drop the copy.
        source.module = Vec::new();
        let fingerprint = fingerprint(&source.files);
        Ok(Self { source, id, engine, fingerprint })
    }

    /// The pack's name.
    pub fn name(&self) -> &str {
        &self.source.manifest.name
    }

    /// The pack's kind.
    pub fn kind(&self) -> Kind {
        self.source.manifest.kind
    }

    /// Entry points or rules the pack answers with, for inspection.
    pub fn describe(&self) -> Vec<String> {
        match &self.engine {
            Engine::Wasm(p) => p.describe(),
            Engine::Rego(p) => p.describe(),
            Engine::Cedar(p) => p.describe(),
        }
    }

    /// Problems a linter should report (empty when clean).
    pub fn lint(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let m = &self.source.manifest;
        if !self.source.has_manifest {
            problems.push("no manifest (pack.toml): the pack has no name, version, signer or pinned digest".into());
        } else {
            if m.signer.is_none() {
                problems.push("the manifest names no signer".into());
            }
            if m.source.is_none() {
                problems.push("the manifest names no source".into());
            }
        }
        match &self.engine {
            Engine::Wasm(_) => {}
            Engine::Rego(p) => problems.extend(p.lint()),
            Engine::Cedar(p) => problems.extend(p.lint()),
        }
        problems
    }

    /// Decides one call; an error is the pack failing, not a deny.
    pub fn try_evaluate(&self, doc: &Document, limits: &Limits) -> Result<Verdict, PolicyError> {
        self.try_evaluate_in(&mut CallStore::default(), doc, limits)
    }

    /// [`Self::try_evaluate`], a Wasm pack instantiated in the call's `store`.
    fn try_evaluate_in(&self, store: &mut CallStore, doc: &Document, limits: &Limits) -> Result<Verdict, PolicyError> {
        let result = match &self.engine {
            Engine::Wasm(p) => p.evaluate(store, doc, limits),
            Engine::Rego(p) => p.evaluate(doc),
            Engine::Cedar(p) => p.evaluate(doc),
        };
        result.map_err(|reason| PolicyError::Evaluate { pack: self.name().to_owned(), reason })
    }

    /// Decides one call; a pack that fails denies it (fail closed) and logs an ERROR.
    pub fn evaluate(&self, doc: &Document, limits: &Limits) -> Verdict {
        self.evaluate_in(&mut CallStore::default(), doc, limits)
    }

    /// [`Self::evaluate`], a Wasm pack instantiated in the call's `store`.
    fn evaluate_in(&self, store: &mut CallStore, doc: &Document, limits: &Limits) -> Verdict {
        self.try_evaluate_in(store, doc, limits).unwrap_or_else(|e| {
            tracing::error!(pack = %self.id, run = %doc.input.run.id, error = %e, "policy pack failed; call denied");
            Verdict::deny(format!("{e}; the call is denied (fail closed)"))
        })
    }
}

/// The packs in force, swapped whole on reload.
#[derive(Debug, Default)]
pub struct PackSet {
    /// The packs, in configuration order.
    pub packs: Vec<Arc<Pack>>,
}

impl PackSet {
    /// Asks every pack; deny-overrides. The Wasm packs share one store for the call (each in
    /// its own fresh instance).
    pub fn evaluate(&self, doc: &Document, limits: &Limits) -> Verdict {
        let mut store = CallStore::default();
        self.packs.iter().fold(Verdict::allow(), |acc, p| acc.and(p.evaluate_in(&mut store, doc, limits)))
    }

    /// How receipts name the packs.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.packs.iter().map(|p| p.id.as_str())
    }
}

/// The policy engine of a proxy: the packs in force and their limits (the run state packs see
/// is in the run's ledger, [`crate::runs`]).
#[derive(Debug)]
pub struct Policy {
    paths: Vec<PathBuf>,
    current: RwLock<Arc<PackSet>>,
    /// Bounds on each Wasm evaluation.
    pub limits: Limits,
}

/// What a reload did to one pack.
#[derive(Debug)]
pub enum Reloaded {
    /// The pack's files changed and the new version is in force.
    Updated(String),
    /// The pack's files changed but did not load; the previous version stays in force.
    Kept(PolicyError),
}

impl Policy {
    /// Loads every pack; any pack that does not load is an error (there is no previous version
    /// to keep at start).
    pub fn load(paths: &[PathBuf], limits: Limits) -> Result<Self, PolicyError> {
        let packs = paths.iter().map(|p| Pack::load(p).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { paths: paths.to_vec(), current: RwLock::new(Arc::new(PackSet { packs })), limits })
    }

    /// The packs in force now.
    pub fn current(&self) -> Arc<PackSet> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reloads the packs whose files changed (all of them when `force`); a pack that fails to
    /// load keeps its previous version. Swaps the set only if something changed.
    pub fn reload(&self, force: bool) -> Vec<Reloaded> {
        let old = self.current();
        let mut events = Vec::new();
        let mut packs = Vec::with_capacity(old.packs.len());
        for (path, pack) in self.paths.iter().zip(&old.packs) {
            if !force && fingerprint(&pack.source.files) == pack.fingerprint {
                packs.push(pack.clone());
                continue;
            }
            match Pack::load(path) {
                Ok(new) => {
                    if new.id != pack.id {
                        tracing::info!(old = %pack.id, new = %new.id, "policy pack reloaded");
                        events.push(Reloaded::Updated(new.id.clone()));
                    }
                    packs.push(Arc::new(new));
                }
                Err(e) => {
                    tracing::error!(pack = %pack.id, error = %e, "policy pack failed to reload; keeping the previous version");
                    events.push(Reloaded::Kept(e));
                    packs.push(pack.clone());
                }
            }
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(PackSet { packs });
        events
    }

    /// Starts the thread that reloads packs: every `interval` for changed files (unless zero),
    /// and all of them on SIGHUP. It ends when the policy is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("fleetforge-policy-reload".into()).spawn(move || {
            runtime.block_on(async move {
                let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGHUP; policy packs reload on file change only");
                        None
                    }
                };
                let poll = if interval.is_zero() { Duration::from_secs(3600) } else { interval };
                loop {
                    let forced = tokio::select! {
                        () = tokio::time::sleep(poll) => false,
                        Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                    };
                    let Some(policy) = weak.upgrade() else { return };
                    if forced {
                        tracing::info!("SIGHUP: reloading policy packs");
                    }
                    if forced || !interval.is_zero() {
                        policy.reload(forced);
                    }
                }
            });
        })?;
        Ok(())
    }
}
