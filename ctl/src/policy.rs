//! `fleetforge-ctl policy`: inspect, test and lint policy packs offline, with the proxy's own
//! engines (the verdict printed is the verdict the proxy would reach).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fleetforge_proxy::policy::input::{Document, Verdict};
use fleetforge_proxy::policy::{Limits, Pack};
use serde_json::{Value, json};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Show a pack: kind, digest (checked against its manifest), how receipts name it,
    /// entry points, provenance and config.
    Inspect {
        /// A pack directory (with pack.toml), a pack.toml, or a .wasm/.rego/.tar.gz/.cedar file.
        pack: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask a pack about one input document (--input) and print its verdict, or run a folder of
    /// cases (--cases: NAME.input.json with NAME.expected.json) and exit 1 on any mismatch.
    Test {
        /// The pack.
        pack: PathBuf,
        /// An input document (docs/reference/policy-input.md), or `-` for stdin.
        #[arg(long, value_name = "FILE.json", conflicts_with = "cases", required_unless_present = "cases")]
        input: Option<PathBuf>,
        /// A folder of cases. An expected file is a verdict; `allow` must match, and `reasons`
        /// and `obligations` must match when the expected file has them.
        #[arg(long, value_name = "DIR")]
        cases: Option<PathBuf>,
    },
    /// Load each pack as the proxy would and report problems: digest mismatches, modules that
    /// do not compile or lack the ABI, Rego entry points no module defines, Cedar policies that
    /// do not validate against the FleetForge schema, manifests without signer or source. Exit 1
    /// if any. Without PACKs, lints the packs of --config / FLEETFORGE_POLICY.
    Lint {
        /// Packs to lint.
        packs: Vec<PathBuf>,
    },
}

/// Runs a policy command; `configured` are the packs of the configuration, for `lint`.
pub fn run(
    command: PolicyCommand,
    configured: impl FnOnce() -> anyhow::Result<Vec<PathBuf>>,
) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Inspect { pack, json } => inspect(&pack, json),
        PolicyCommand::Test { pack, input: Some(input), .. } => test_one(&pack, &input),
        PolicyCommand::Test { pack, cases: Some(cases), .. } => test_cases(&pack, &cases),
        PolicyCommand::Test { .. } => anyhow::bail!("give --input FILE.json or --cases DIR"),
        PolicyCommand::Lint { packs } => {
            let packs = if packs.is_empty() { configured()? } else { packs };
            if packs.is_empty() {
                anyhow::bail!("no packs to lint: name them, or configure [proxy.policy] packs / FLEETFORGE_POLICY");
            }
            Ok(lint(&packs))
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Pack> {
    Pack::load(path).map_err(anyhow::Error::from)
}

fn inspect(path: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let pack = load(path)?;
    let m = &pack.source.manifest;
    let info = json!({
        "name": m.name,
        "version": m.version,
        "kind": m.kind.to_string(),
        "sha256": pack.source.digest,
        "digest_checked": pack.source.has_manifest,
        "receipt_id": pack.id,
        "module": m.module,
        "source": m.source,
        "signer": m.signer,
        "entrypoints": pack.describe(),
        "config": pack.source.config_json(),
    });
    if as_json {
        println!("{info}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("pack        {} {}", m.name, m.version);
    println!("kind        {}", m.kind);
    let checked = if pack.source.has_manifest { "matches pack.toml" } else { "computed; no manifest pins it" };
    println!("sha256      {} ({checked})", pack.source.digest);
    println!("receipts    {}", pack.id);
    println!("module      {}", m.module);
    println!("source      {}", m.source.as_deref().unwrap_or("-"));
    println!("signer      {}", m.signer.as_deref().unwrap_or("-"));
    for (i, e) in pack.describe().iter().enumerate() {
        println!("{}{e}", if i == 0 { "entrypoints " } else { "            " });
    }
    if let Some(config) = pack.source.config_json() {
        println!("config      {config}");
    }
    Ok(ExitCode::SUCCESS)
}

fn read_document(path: &Path) -> anyhow::Result<Document> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the input document from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Document::parse(&text).with_context(|| {
        format!("{} is not a policy input document (see docs/reference/policy-input.md)", path.display())
    })
}

fn test_one(pack: &Path, input: &Path) -> anyhow::Result<ExitCode> {
    let pack = load(pack)?;
    let doc = read_document(input)?;
    let verdict = pack.try_evaluate(&doc, &Limits::default())?;
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    Ok(ExitCode::SUCCESS)
}

/// Whether `got` matches the expected verdict: `allow` always, the rest when given.
fn matches(expected: &Value, got: &Verdict) -> Result<(), String> {
    let got_json = serde_json::to_value(got).map_err(|e| e.to_string())?;
    let Some(allow) = expected.get("allow").and_then(Value::as_bool) else {
        return Err("the expected file has no boolean \"allow\"".into());
    };
    if allow != got.allow {
        return Err(format!("expected allow={allow}, got {got_json}"));
    }
    for field in ["reasons", "obligations"] {
        if let Some(want) = expected.get(field)
            && got_json.get(field) != Some(want)
        {
            return Err(format!("expected {field} {want}, got {}", got_json.get(field).unwrap_or(&Value::Null)));
        }
    }
    Ok(())
}

fn test_cases(pack_path: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let pack = load(pack_path)?;
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the cases folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    inputs.sort();
    if inputs.is_empty() {
        anyhow::bail!("{} holds no NAME.input.json cases", dir.display());
    }
    let (mut passed, mut failed) = (0, 0);
    for input in &inputs {
        let name = input.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches(".input.json");
        let expected_path = dir.join(format!("{name}.expected.json"));
        let outcome = (|| -> Result<(), String> {
            let expected: Value = serde_json::from_str(
                &std::fs::read_to_string(&expected_path)
                    .map_err(|e| format!("cannot read {}: {e}", expected_path.display()))?,
            )
            .map_err(|e| format!("{} is not JSON: {e}", expected_path.display()))?;
            let doc = read_document(input).map_err(|e| format!("{e:#}"))?;
            let verdict = pack.try_evaluate(&doc, &Limits::default()).map_err(|e| e.to_string())?;
            matches(&expected, &verdict)
        })();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok    {name}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL  {name}: {why}");
            }
        }
    }
    println!("{passed} passed, {failed} failed ({})", pack.id);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn lint(packs: &[PathBuf]) -> ExitCode {
    let mut problems = 0;
    for path in packs {
        match Pack::load(path) {
            Ok(pack) => {
                let found = pack.lint();
                if found.is_empty() {
                    println!("ok    {} ({})", path.display(), pack.id);
                }
                for p in &found {
                    println!("WARN  {}: {p}", path.display());
                }
                problems += found.len();
            }
            Err(e) => {
                problems += 1;
                println!("ERROR {}: {e}", path.display());
            }
        }
    }
    if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
