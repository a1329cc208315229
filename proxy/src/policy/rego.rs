//! Rego packs: OPA policies (a `.rego` file or an OPA bundle `.tar.gz`), run by regorus.
//!
//! Everything is parsed, merged and analysed once, at load: the result is a prepared
//! [`regorus::Engine`] that is never evaluated itself, only cloned. Each call clones it (the clone
//! shares the analysed modules and the data, so it costs about 0.1 µs), sets the input document
//! and evaluates the pack's rules; nothing one call computes is visible to another.
//!
//! A pack answers with three rules (paths configurable for the first two):
//! - `data.fleetforge.allow`: must be a bool; undefined, another type or a runtime error is an
//!   error, which the caller turns into a deny (fail closed).
//! - `data.fleetforge.reasons`: a set or array of strings; undefined means none.
//! - `data.fleetforge.obligations`: an object shaped like [`Obligations`]; undefined means none.
//!
//! The pack's `[config]` table is `data.config`; bundle `data.json` files are merged at the path
//! of their directory (OPA bundle semantics). `print` output goes to the log at DEBUG level, never
//! to stderr. Each evaluation is bounded by [`EVAL_TIME_LIMIT`].

use std::io::Read as _;
use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use serde::Deserialize;

use super::input::{Document, Obligations, Verdict};

/// The rule that decides, when the manifest names none.
pub const DEFAULT_ENTRYPOINT: &str = "data.fleetforge.allow";
/// The rule that gives the reasons, when the manifest names none.
pub const DEFAULT_REASONS: &str = "data.fleetforge.reasons";
/// The rule that gives the obligations (optional).
pub const OBLIGATIONS: &str = "data.fleetforge.obligations";
/// Wall-clock limit of one evaluation; past it the evaluation fails (and the call is denied).
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(100);
/// Largest bundle, uncompressed, that is read.
const MAX_BUNDLE_BYTES: u64 = 64 << 20;
/// What regorus says when a rule path names no rule.
const NO_SUCH_RULE: &str = "not a valid rule path";

/// A loaded Rego pack.
pub struct RegoPack {
    file_name: String,
    entrypoint: String,
    entrypoint_defined: bool,
    /// The reasons rule, `None` when no module defines it (the reasons are then empty).
    reasons: Option<String>,
    reasons_path: String,
    /// The obligations rule, `None` when no module defines it.
    obligations: Option<String>,
    /// `(package, file)` of every module.
    packages: Vec<(String, String)>,
    bundle: Option<BundleManifest>,
    /// Problems found while loading, reported by [`RegoPack::lint`].
    problems: Vec<String>,
    /// Prepared engine, only ever cloned (a clone shares the compiled policy and data: ~0.1 µs).
    template: Engine,
}

impl std::fmt::Debug for RegoPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoPack")
            .field("file_name", &self.file_name)
            .field("entrypoint", &self.entrypoint)
            .field("reasons", &self.reasons)
            .field("obligations", &self.obligations)
            .field("packages", &self.packages)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// The `.manifest` of an OPA bundle (the fields FleetForge reads; others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
struct BundleManifest {
    #[serde(default)]
    revision: Option<String>,
    /// Paths (`a/b`) the bundle owns; absent means the whole data tree.
    #[serde(default)]
    roots: Option<Vec<String>>,
    #[serde(default)]
    rego_version: Option<u8>,
    #[serde(default)]
    file_rego_versions: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    wasm: Option<Vec<serde_json::Value>>,
}

/// The files of a bundle that matter.
#[derive(Debug, Default)]
struct Bundle {
    /// `(path, text)` of each `.rego` file.
    modules: Vec<(String, String)>,
    /// `(directory components, value)` of each `data.json`.
    data: Vec<(Vec<String>, serde_json::Value)>,
    manifest: Option<BundleManifest>,
}

impl RegoPack {
    /// Parses and prepares a pack.
    ///
    /// `file_name` is for messages; `bytes` is either a plain `.rego` file or an OPA bundle
    /// `.tar.gz` (recognised by the gzip magic `1f 8b`): every `*.rego` in it is added, `data.json`
    /// files are merged into data at the path of their directory, and `.manifest` (revision,
    /// roots, rego_version) is read; anything malformed is an error. `config` (the manifest's
    /// `[config]` table as JSON) is `data.config`. `entrypoint` defaults to [`DEFAULT_ENTRYPOINT`]
    /// and `reasons` to [`DEFAULT_REASONS`].
    pub fn load(
        file_name: &str,
        bytes: &[u8],
        config: Option<&serde_json::Value>,
        entrypoint: Option<&str>,
        reasons: Option<&str>,
    ) -> Result<Self, String> {
        let entrypoint = rule_path("entrypoint", entrypoint.unwrap_or(DEFAULT_ENTRYPOINT))?;
        let reasons_path = rule_path("reasons", reasons.unwrap_or(DEFAULT_REASONS))?;
        let bundle = if bytes.starts_with(&[0x1f, 0x8b]) {
            read_bundle(file_name, bytes)?
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("{file_name} is neither Rego text nor a .tar.gz bundle"))?;
            Bundle { modules: vec![(file_name.to_owned(), text.to_owned())], ..Bundle::default() }
        };
        if bundle.modules.is_empty() {
            return Err(format!("{file_name} holds no .rego module"));
        }

        let mut engine = Engine::new();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: NonZeroU32::MIN.saturating_add(63),
        });
        engine.set_gather_prints(true);
        if let Some(m) = &bundle.manifest {
            match m.rego_version {
                None | Some(1) => {}
                Some(0) => engine.set_rego_v0(true),
                Some(v) => return Err(format!("{file_name}: .manifest has rego_version {v}; only 0 and 1 exist")),
            }
            if m.file_rego_versions.as_ref().is_some_and(|f| !f.is_empty()) {
                return Err(format!(
                    "{file_name}: .manifest file_rego_versions is not supported; use one rego_version"
                ));
            }
            if m.wasm.as_ref().is_some_and(|w| !w.is_empty()) {
                return Err(format!("{file_name}: Wasm-compiled OPA bundles are not supported (use kind = \"wasm\")"));
            }
        }

        let mut packages = Vec::new();
        for (path, text) in bundle.modules {
            let package = engine.add_policy(path.clone(), text).map_err(|e| format!("{path}: {e}"))?;
            packages.push((package, path));
        }
        for (dir, value) in bundle.data {
            let at = if dir.is_empty() { "data.json".to_owned() } else { format!("{}/data.json", dir.join("/")) };
            let nested = dir.into_iter().rev().fold(value, |v, key| serde_json::json!({ key: v }));
            if !nested.is_object() {
                return Err(format!("{file_name}: {at} at the bundle root must hold a JSON object"));
            }
            engine.add_data(Value::from(nested)).map_err(|e| format!("{file_name}: {at}: {e}"))?;
        }
        if let Some(config) = config {
            engine
                .add_data(Value::from(serde_json::json!({ "config": config })))
                .map_err(|e| format!("the pack's [config] cannot be data.config: {e}"))?;
        }

        // Analyse the pack's modules, then find which of its rules exist.
        engine.set_input(Value::new_object());
        engine.eval_query("true".to_owned(), false).map_err(|e| format!("{file_name}: {e}"))?;
        let mut problems = Vec::new();
        if !defines(&mut engine, &entrypoint) {
            problems.push(format!(
                "the entrypoint {entrypoint} is not a rule of any loaded module: every call will be denied"
            ));
        }
        let reasons = defines(&mut engine, &reasons_path).then(|| reasons_path.clone());
        if reasons.is_none() && reasons_path != DEFAULT_REASONS {
            problems.push(format!("the reasons rule {reasons_path} is not a rule of any loaded module"));
        }
        let obligations = defines(&mut engine, OBLIGATIONS).then(|| OBLIGATIONS.to_owned());
        let entrypoint_defined = problems.is_empty();
        let _ = engine.take_prints();
        if let Some(roots) = bundle.manifest.as_ref().and_then(|m| m.roots.as_ref()) {
            for (package, path) in &packages {
                let slashed = package.strip_prefix("data.").unwrap_or(package).replace('.', "/");
                if !roots.iter().any(|r| under_root(r, &slashed)) {
                    problems.push(format!("{path}: package {package} is outside the bundle roots {roots:?}"));
                }
            }
        }

        Ok(Self {
            file_name: file_name.to_owned(),
            entrypoint,
            entrypoint_defined,
            reasons,
            reasons_path,
            obligations,
            packages,
            bundle: bundle.manifest,
            problems,
            template: engine,
        })
    }

    /// Rule paths this pack answers (entrypoint, reasons, obligations) and the packages loaded.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!("entrypoint {} (bool)", self.entrypoint)];
        lines.push(match &self.reasons {
            Some(r) => format!("reasons {r} (set of strings)"),
            None => format!("reasons {} (not defined: none)", self.reasons_path),
        });
        lines.push(match &self.obligations {
            Some(o) => format!("obligations {o} (object)"),
            None => format!("obligations {OBLIGATIONS} (not defined: none)"),
        });
        for (package, path) in &self.packages {
            lines.push(format!("package {package} ({path})"));
        }
        if let Some(m) = &self.bundle {
            let roots = m.roots.as_ref().map_or_else(|| "all of data".to_owned(), |r| format!("{r:?}"));
            lines.push(format!(
                "bundle {} revision {:?}, roots {roots}",
                self.file_name,
                m.revision.as_deref().unwrap_or("")
            ));
        }
        lines
    }

    /// Problems a linter should report; empty when clean.
    pub fn lint(&self) -> Vec<String> {
        self.problems.clone()
    }

    /// Decides one call. An undefined or non-bool entrypoint, malformed reasons or obligations, or a
    /// runtime error is an error, which the caller turns into a deny.
    pub fn evaluate(&self, doc: &Document) -> Result<Verdict, String> {
        let input = Value::from_json_str(doc.json()).map_err(|e| format!("the input document is not JSON: {e}"))?;
        let mut engine = self.template.clone();
        engine.set_input(input);
        let verdict = self.decide(&mut engine);
        if let Ok(prints) = engine.take_prints() {
            for line in prints {
                tracing::debug!(pack = %self.file_name, run = %doc.input.run.id, "rego print: {line}");
            }
        }
        verdict
    }

    fn decide(&self, engine: &mut Engine) -> Result<Verdict, String> {
        // One rule at a time: measured faster in regorus 0.14 than one rule gathering all three.
        let allow = match engine.eval_rule(self.entrypoint.clone()) {
            Ok(Value::Bool(b)) => b,
            Ok(Value::Undefined) => {
                return Err(format!("{} is undefined for this call (give it a default)", self.entrypoint));
            }
            Ok(other) => return Err(format!("{} must be a bool, not {}", self.entrypoint, kind(&other))),
            Err(_) if !self.entrypoint_defined => {
                return Err(format!("{} is not a rule of any module in {}", self.entrypoint, self.file_name));
            }
            Err(e) => return Err(format!("evaluating {}: {e}", self.entrypoint)),
        };
        let mut reasons = match &self.reasons {
            Some(path) => {
                strings(path, engine.eval_rule(path.clone()).map_err(|e| format!("evaluating {path}: {e}"))?)?
            }
            None => Vec::new(),
        };
        let obligations = match &self.obligations {
            Some(path) => {
                obligations_of(path, engine.eval_rule(path.clone()).map_err(|e| format!("evaluating {path}: {e}"))?)?
            }
            None => Obligations::default(),
        };
        if !allow && reasons.is_empty() {
            reasons.push(format!("{} is false (the policy gave no reason)", self.entrypoint));
        }
        Ok(Verdict { allow, reasons, obligations })
    }
}

/// Checks a configured rule path (`data.<package>.<rule>`).
fn rule_path(what: &str, path: &str) -> Result<String, String> {
    let path = path.trim();
    let ok = path.strip_prefix("data.").is_some_and(|rest| {
        !rest.is_empty()
            && rest.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    });
    if ok {
        Ok(path.to_owned())
    } else {
        Err(format!("{what} {path:?} is not a rule path like \"data.fleetforge.allow\""))
    }
}

/// Whether some module defines the rule at `path` (evaluated once on an empty input; a runtime
/// error there still means the rule exists).
fn defines(engine: &mut Engine, path: &str) -> bool {
    match engine.eval_rule(path.to_owned()) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains(NO_SUCH_RULE),
    }
}

/// Whether the data path `a/b/c` is under the bundle root `root` (`""` owns everything).
fn under_root(root: &str, path: &str) -> bool {
    let root = root.trim_matches('/');
    root.is_empty() || path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}

/// The reasons: a set or array of strings; undefined is none.
fn strings(path: &str, value: Value) -> Result<Vec<String>, String> {
    let items: Vec<&Value> = match &value {
        Value::Undefined => return Ok(Vec::new()),
        Value::Set(s) => s.iter().collect(),
        Value::Array(a) => a.iter().collect(),
        other => return Err(format!("{path} must be a set or array of strings, not {}", kind(other))),
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.to_string()),
            other => Err(format!("{path} must hold only strings, not {}", kind(other))),
        })
        .collect()
}

/// The obligations: an object shaped like [`Obligations`]; undefined is none.
fn obligations_of(path: &str, value: Value) -> Result<Obligations, String> {
    match value {
        Value::Undefined => Ok(Obligations::default()),
        Value::Object(_) => {
            let json = value.to_json_str().map_err(|e| format!("{path}: {e}"))?;
            serde_json::from_str(&json).map_err(|e| format!("{path} is not valid obligations: {e}"))
        }
        other => Err(format!("{path} must be an object, not {}", kind(&other))),
    }
}

/// Reads an OPA bundle (`.tar.gz`).
fn read_bundle(file_name: &str, bytes: &[u8]) -> Result<Bundle, String> {
    let bad = |what: String| format!("{file_name} is not a valid OPA bundle: {what}");
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_BUNDLE_BYTES);
    let mut archive = tar::Archive::new(gz);
    let mut bundle = Bundle::default();
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path().map_err(|e| bad(e.to_string()))?.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!("{raw} is not a regular file")));
        }
        let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        if parts.contains(&"..") {
            return Err(bad(format!("{raw} leaves the bundle")));
        }
        let Some((name, dir)) = parts.split_last() else { continue };
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(|e| bad(format!("{raw}: {e}")))?;
        let path = parts.join("/");
        if dir.is_empty() && *name == ".manifest" {
            let manifest = serde_json::from_slice(&content).map_err(|e| bad(format!(".manifest: {e}")))?;
            bundle.manifest = Some(manifest);
        } else if name.ends_with(".rego") {
            let text = String::from_utf8(content).map_err(|_| bad(format!("{path} is not UTF-8")))?;
            bundle.modules.push((path, text));
        } else if *name == "data.json" {
            let value = serde_json::from_slice(&content).map_err(|e| bad(format!("{path}: {e}")))?;
            bundle.data.push((dir.iter().map(|d| (*d).to_owned()).collect(), value));
        } else if *name == "data.yaml" || *name == "data.yml" || name.ends_with(".wasm") || *name == "plan.json" {
            return Err(bad(format!("{path}: only .rego and data.json files are supported")));
        }
        // Anything else (.signatures.json, README, tests data) is ignored: the manifest's sha256
        // pins the whole archive.
    }
    if let Some(roots) = bundle.manifest.as_ref().and_then(|m| m.roots.as_ref()) {
        for (dir, _) in &bundle.data {
            let dir = dir.join("/");
            if !dir.is_empty() && !roots.iter().any(|r| under_root(r, &dir)) {
                return Err(bad(format!("{dir}/data.json is outside the bundle roots {roots:?}")));
            }
        }
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use serde_json::json;

    use super::RegoPack;
    use crate::policy::input::{Document, Verdict};

    const EXAMPLE: &str = include_str!("../../../policies/examples/rego/policy.rego");

    fn doc(host: &str, llm: serde_json::Value) -> Document {
        let input = json!({
            "version": 1, "time": "2026-11-26T18:00:00.123Z",
            "run": {"id": "run-1", "agent": "planner", "tenant": null, "step": 3},
            "request": {"method": "POST", "scheme": "https", "host": host, "port": 443,
                        "path": "/v1/chat/completions", "query": "", "headers": {"content-type": "application/json"}},
            "llm": llm, "mcp": null,
            "state": {"calls": 2, "tokens": 1200, "cost_micro_usd": 3400, "hosts": [], "tools": []}
        });
        Document::parse(&input.to_string()).unwrap()
    }

    fn chat(max_tokens: Option<u64>) -> serde_json::Value {
        json!({"provider": "openai", "model": "gpt-4o", "max_tokens": max_tokens, "stream": false,
               "messages": 2, "tools": []})
    }

    fn example() -> RegoPack {
        let config = json!({"hosts": ["api.openai.com", "*.githubusercontent.com"], "max_tokens": 4096});
        RegoPack::load("policy.rego", EXAMPLE.as_bytes(), Some(&config), None, None).unwrap()
    }

    fn simple(text: &str) -> Result<RegoPack, String> {
        RegoPack::load("p.rego", text.as_bytes(), None, None, None)
    }

    fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            // Written raw: `set_path` refuses the `..` the escape test needs.
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            tar.append(&header, text.as_bytes()).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn example_pack_allows_listed_hosts_and_denies_with_reasons() {
        let pack = example();
        assert!(pack.lint().is_empty(), "{:?}", pack.lint());
        assert_eq!(pack.evaluate(&doc("api.openai.com", chat(Some(512)))).unwrap(), Verdict::allow());
        assert!(pack.evaluate(&doc("raw.githubusercontent.com", json!(null))).unwrap().allow);
        assert!(!pack.evaluate(&doc("githubusercontent.com", json!(null))).unwrap().allow, "* needs a character");

        let denied = pack.evaluate(&doc("evil.example", chat(Some(10_000)))).unwrap();
        assert!(!denied.allow);
        assert_eq!(
            denied.reasons,
            vec![
                "host evil.example is not in the allow-list",
                "max_tokens 10000 for model gpt-4o exceeds the limit 4096",
            ]
        );

        let capped = pack.evaluate(&doc("api.openai.com", chat(None))).unwrap();
        assert!(capped.allow);
        assert_eq!(capped.reasons, vec!["max_tokens not set; capped to 4096"]);
        assert_eq!(capped.obligations.max_tokens_cap, Some(4096));

        // Nothing carries over from one call to the next.
        for _ in 0..3 {
            assert!(!pack.evaluate(&doc("evil.example", json!(null))).unwrap().allow);
            assert_eq!(pack.evaluate(&doc("api.openai.com", json!(null))).unwrap(), Verdict::allow());
        }
    }

    #[test]
    fn describe_names_the_rules_and_packages() {
        let lines = example().describe();
        assert_eq!(lines[0], "entrypoint data.fleetforge.allow (bool)");
        assert_eq!(lines[1], "reasons data.fleetforge.reasons (set of strings)");
        assert_eq!(lines[2], "obligations data.fleetforge.obligations (object)");
        assert_eq!(lines[3], "package data.fleetforge (policy.rego)");
    }

    #[test]
    fn a_deny_without_reasons_says_which_rule_denied() {
        let pack = simple("package fleetforge\nallow := input.request.host == \"a.example\"").unwrap();
        let v = pack.evaluate(&doc("b.example", json!(null))).unwrap();
        assert_eq!(v, Verdict::deny("data.fleetforge.allow is false (the policy gave no reason)"));
        assert_eq!(pack.describe()[1], "reasons data.fleetforge.reasons (not defined: none)");
    }

    #[test]
    fn custom_rule_paths_and_array_reasons() {
        let text = "package acme.egress\ndecision := false\nwhy := [\"no\", \"never\"]";
        let pack = RegoPack::load(
            "p.rego",
            text.as_bytes(),
            None,
            Some("data.acme.egress.decision"),
            Some("data.acme.egress.why"),
        )
        .unwrap();
        assert!(pack.lint().is_empty(), "{:?}", pack.lint());
        let v = pack.evaluate(&doc("a.example", json!(null))).unwrap();
        assert_eq!(v.reasons, vec!["no", "never"]);
        assert!(RegoPack::load("p.rego", text.as_bytes(), None, Some("acme.allow"), None).is_err());
    }

    #[test]
    fn bundle_with_data_and_manifest_evaluates() {
        let bundle = tar_gz(&[
            (".manifest", r#"{"revision": "rev-7", "roots": ["fleetforge", "acme"]}"#),
            (
                "fleetforge/policy.rego",
                "package fleetforge\nimport data.acme.hosts\ndefault allow := false\nallow if input.request.host in hosts\nreasons contains \"team limit\" if data.config.team == \"x\"\n",
            ),
            ("acme/data.json", r#"{"hosts": ["a.example"]}"#),
            ("README.md", "ignored"),
        ]);
        let config = json!({"team": "x"});
        let pack = RegoPack::load("bundle.tar.gz", &bundle, Some(&config), None, None).unwrap();
        assert!(pack.lint().is_empty(), "{:?}", pack.lint());
        let v = pack.evaluate(&doc("a.example", json!(null))).unwrap();
        assert_eq!((v.allow, v.reasons), (true, vec!["team limit".to_owned()]));
        assert!(!pack.evaluate(&doc("b.example", json!(null))).unwrap().allow);
        let described = pack.describe().join("\n");
        assert!(described.contains("package data.fleetforge (fleetforge/policy.rego)"), "{described}");
        assert!(described.contains("revision \"rev-7\""), "{described}");
    }

    #[test]
    fn bundle_packages_outside_the_roots_are_linted() {
        let bundle =
            tar_gz(&[(".manifest", r#"{"roots": ["acme"]}"#), ("policy.rego", "package fleetforge\nallow := true")]);
        let pack = RegoPack::load("bundle.tar.gz", &bundle, None, None, None).unwrap();
        assert_eq!(pack.lint(), vec![r#"policy.rego: package data.fleetforge is outside the bundle roots ["acme"]"#]);
    }

    #[test]
    fn malformed_bundles_are_refused() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("truncated", tar_gz(&[("p.rego", "package fleetforge\nallow := true")])[..20].to_vec()),
            ("bad manifest", tar_gz(&[(".manifest", "{"), ("p.rego", "package fleetforge\nallow := true")])),
            ("bad data", tar_gz(&[("data.json", "[1"), ("p.rego", "package fleetforge\nallow := true")])),
            ("no module", tar_gz(&[("data.json", "{}")])),
            ("escape", tar_gz(&[("a/../../p.rego", "package fleetforge\nallow := true")])),
        ];
        for (what, bytes) in cases {
            let err = RegoPack::load("b.tar.gz", &bytes, None, None, None).unwrap_err();
            assert!(err.starts_with("b.tar.gz "), "{what}: {err}");
            assert!(!what.starts_with("escape") || err.contains("leaves the bundle"), "{err}");
        }
        let conflict = tar_gz(&[("data.json", r#"{"config": 1}"#), ("p.rego", "package fleetforge\nallow := true")]);
        let err = RegoPack::load("b.tar.gz", &conflict, Some(&json!({"a": 1})), None, None).unwrap_err();
        assert!(err.contains("data.config"), "{err}");
    }

    #[test]
    fn garbage_and_syntax_errors_are_refused() {
        assert!(RegoPack::load("p.rego", b"\xff\xfe\x00", None, None, None).unwrap_err().contains("neither Rego"));
        let err = simple("package fleetforge\nallow := {").unwrap_err();
        assert!(err.starts_with("p.rego:"), "{err}");
        assert!(simple("package fleetforge\nallow if { x }").is_err(), "unsafe variable");
    }

    #[test]
    fn a_non_bool_or_undefined_allow_is_an_error() {
        let number = simple("package fleetforge\nallow := 1").unwrap();
        let err = number.evaluate(&doc("a.example", json!(null))).unwrap_err();
        assert_eq!(err, "data.fleetforge.allow must be a bool, not a number");

        let undefined = simple("package fleetforge\nallow if input.request.host == \"a.example\"").unwrap();
        assert!(undefined.evaluate(&doc("a.example", json!(null))).unwrap().allow);
        let err = undefined.evaluate(&doc("b.example", json!(null))).unwrap_err();
        assert!(err.contains("undefined"), "{err}");

        let bad_reasons = simple("package fleetforge\nallow := false\nreasons := \"no\"").unwrap();
        assert!(bad_reasons.evaluate(&doc("a.example", json!(null))).is_err());
        let bad_obligation =
            simple("package fleetforge\nallow := true\nobligations := {\"max_token_cap\": 1}").unwrap();
        assert!(bad_obligation.evaluate(&doc("a.example", json!(null))).unwrap_err().contains("max_token_cap"));
    }

    #[test]
    fn a_missing_entrypoint_is_linted_and_denies() {
        let pack = simple("package other\nallow := true").unwrap();
        assert_eq!(
            pack.lint(),
            vec!["the entrypoint data.fleetforge.allow is not a rule of any loaded module: every call will be denied"]
        );
        let err = pack.evaluate(&doc("a.example", json!(null))).unwrap_err();
        assert!(err.contains("not a rule of any module"), "{err}");
    }

    #[test]
    fn runtime_errors_are_errors() {
        let pack = simple("package fleetforge\nallow if to_number(input.request.host) > 1").unwrap();
        let err = pack.evaluate(&doc("a.example", json!(null))).unwrap_err();
        assert!(err.starts_with("evaluating data.fleetforge.allow: "), "{err}");
        // The failed engine is not reused: the next call evaluates normally.
        assert!(pack.evaluate(&doc("a.example", json!(null))).is_err());
    }

    #[test]
    fn a_runaway_policy_is_stopped() {
        let text = "package fleetforge\nallow if count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000)]) > 0";
        let pack = simple(text).unwrap();
        let started = std::time::Instant::now();
        let err = pack.evaluate(&doc("a.example", json!(null))).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{err}");
        assert!(err.contains("time"), "{err}");
    }

    #[test]
    fn rego_packs_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RegoPack>();
    }
}
