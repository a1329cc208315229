//! Evidence bundles: `fleetforge-ctl export RUN --format bundle -o DIR` writes everything needed
//! to check a run with no network access, and `fleetforge-ctl verify --bundle DIR` checks it.
//!
//! The folder holds the run's receipts (`receipts.jsonl`, chain order), control's public keys
//! (`keys.json`), the tenant's signed log head (`log/head.json`, `log/checkpoint`) with one
//! inclusion proof per receipt at that head (`log/inclusion/{receipt}.json`), the AIBOM
//! (`aibom.cdx.json`), the run's verifiable credential (`vc.json`), the C2PA manifest store bound
//! to `receipts.jsonl` by data hash (`receipts.c2pa`), its SCITT signed statement
//! and COSE receipt (`scitt/statement.cose`, `scitt/receipt.cose`), and `manifest.json` listing
//! each file's SHA-256.
//!
//! Verifying reads only the folder: every file against the manifest; every receipt's hash,
//! batch proof and signature with the keys in the bundle, and the chain of each lane; the
//! checkpoint's signature by the log signer; each receipt's inclusion proof against the
//! checkpoint; the C2PA manifest, read by the c2pa library against `receipts.jsonl` trusting the
//! CA in `keys.json`; the credential's proof; the statement's signature by its `did:key` issuer (a key
//! in `keys.json`), that it states this run and exactly these receipts (count and tree head), and
//! its COSE receipt's inclusion proof and signature. Each failure names the file or receipt and
//! the check.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::canonical::{hex, sha256, unhex32};
use fleetforge_trust::merkle::root_from_path;
use fleetforge_trust::scitt;
use fleetforge_trust::tlog::Checkpoint;
use fleetforge_trust::verify::{Link, check_chain, verify};
use serde_json::{Value, json};

use crate::client::ControlClient;

/// The manifest's schema.
const SCHEMA: &str = "fleetforge.bundle/v1";

fn write(dir: &Path, name: &str, bytes: &[u8], files: &mut serde_json::Map<String, Value>) -> anyhow::Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    files.insert(name.to_owned(), json!(hex(&sha256(bytes))));
    Ok(())
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Writes the bundle of `run` into `dir` (created; it must not hold a bundle already).
pub async fn export(c: &ControlClient, run: &str, dir: &Path) -> anyhow::Result<()> {
    if dir.join("manifest.json").exists() {
        anyhow::bail!("{} already holds a bundle; choose an empty folder", dir.display());
    }
    let tenant = c.get(&format!("/v1/runs/{run}")).await.map_err(crate::show::not_found(run))?["tenant"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    // The statement first: it covers the receipts stored when it is issued, which the bundle
    // then holds (a run still receiving calls may outgrow it; verify names the difference).
    let (statement, cose_receipt) = scitt(c, run).await?;
    let receipts = crate::show::all_receipts(c, run).await?;
    let keys = c.get("/v1/keys").await.context("fetching control's keys")?;
    let head = c.get(&format!("/v1/log/{tenant}/head")).await.context("fetching the log head")?;
    let size = head["size"].as_u64().unwrap_or(0);
    let mut files = serde_json::Map::new();
    let lines = receipt_bundle(&receipts);
    write(dir, "receipts.jsonl", &lines, &mut files)?;
    write(dir, "keys.json", &pretty(&keys), &mut files)?;
    write(dir, "log/head.json", &pretty(&head), &mut files)?;
    write(dir, "log/checkpoint", head["checkpoint"].as_str().unwrap_or_default().as_bytes(), &mut files)?;
    for r in &receipts {
        let id = r["id"].as_str().unwrap_or_default();
        let proof = c
            .get(&format!("/v1/log/{tenant}/inclusion/{id}?size={size}"))
            .await
            .with_context(|| format!("fetching the inclusion proof of receipt {id}"))?;
        write(dir, &format!("log/inclusion/{id}.json"), &pretty(&proof), &mut files)?;
    }
    let aibom = c.get(&format!("/v1/runs/{run}/export/aibom")).await.context("fetching the AIBOM")?;
    write(dir, "aibom.cdx.json", &pretty(&aibom), &mut files)?;
    let vc = c.get(&format!("/v1/runs/{run}/export/vc")).await.context("fetching the credential")?;
    write(dir, "vc.json", &pretty(&vc), &mut files)?;
    let manifest = c2pa(c, run, &lines, &keys).await?;
    write(dir, "receipts.c2pa", &manifest, &mut files)?;
    write(dir, "scitt/statement.cose", &statement, &mut files)?;
    write(dir, "scitt/receipt.cose", &cose_receipt, &mut files)?;
    let manifest =
        json!({ "schema": SCHEMA, "run": run, "tenant": tenant, "receipts": receipts.len(), "files": files });
    std::fs::write(dir.join("manifest.json"), pretty(&manifest)).context("writing manifest.json")?;
    Ok(())
}

/// The receipt bundle: each receipt as served, one per line, by seq then lane (by bytes) — the
/// asset control's C2PA manifest is bound to ([`fleetforge_control::c2pa::receipt_bundle`]).
pub fn receipt_bundle(receipts: &[Value]) -> Vec<u8> {
    let key =
        |r: &Value| (r["chain"]["seq"].as_i64().unwrap_or(0), r["chain"]["lane"].as_str().unwrap_or("").to_owned());
    let mut sorted: Vec<&Value> = receipts.iter().collect();
    sorted.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        (ka.0, ka.1.as_bytes()).cmp(&(kb.0, kb.1.as_bytes()))
    });
    let mut out = Vec::new();
    for r in sorted {
        out.extend_from_slice(r.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The C2PA signing CA's certificate from a `GET /v1/keys` answer.
pub fn c2pa_ca(keys: &Value) -> Option<&str> {
    keys["keys"].as_array()?.iter().find(|k| k["kind"] == "c2pa-ca")?["certificate_pem"].as_str()
}

/// The run's C2PA manifest store for `asset` (the receipt bundle written beside it), checked
/// against it before it is written: receipts that changed in between are an error, not a broken
/// export.
pub async fn c2pa(c: &ControlClient, run: &str, asset: &[u8], keys: &Value) -> anyhow::Result<Vec<u8>> {
    let manifest = c
        .get_bytes(&format!("/v1/runs/{run}/export/c2pa"))
        .await
        .map_err(crate::show::not_found(run))
        .context("fetching the run's C2PA manifest")?;
    let ca = c2pa_ca(keys).context("control lists no C2PA signing CA (kind c2pa-ca) in GET /v1/keys")?;
    let checked = fleetforge_control::c2pa::check(&manifest, asset, ca).context("reading the C2PA manifest")?;
    anyhow::ensure!(
        checked.failures.is_empty(),
        "the C2PA manifest does not match the receipts fetched ({}): the run received receipts meanwhile; export again",
        checked.failures.join(", ")
    );
    Ok(manifest.to_vec())
}

/// The run's SCITT statement covering its receipts so far (issued now unless the newest one
/// does; `GET /v1/runs/{id}/export/scitt`) and its COSE receipt.
pub async fn scitt(c: &ControlClient, run: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let statement = c
        .get_bytes(&format!("/v1/runs/{run}/export/scitt"))
        .await
        .map_err(crate::show::not_found(run))
        .context("fetching the run's SCITT statement")?;
    let id = hex(&sha256(&statement));
    let receipt = c.get_bytes(&format!("/v1/scitt/receipts/{id}")).await.context("fetching its COSE receipt")?;
    Ok((statement.to_vec(), receipt.to_vec()))
}

/// Checks `receipts.c2pa` against `receipts.jsonl`.
fn check_c2pa(dir: &Path, run: &str, count: usize, keys: &Value, report: &mut Report) {
    let (Ok(manifest), Ok(asset)) =
        (std::fs::read(dir.join("receipts.c2pa")), std::fs::read(dir.join("receipts.jsonl")))
    else {
        report.failed.push(("receipts.c2pa".into(), "missing".into()));
        return;
    };
    let Some(ca) = c2pa_ca(keys) else {
        report.failed.push(("keys.json".into(), "holds no C2PA signing CA (kind c2pa-ca)".into()));
        return;
    };
    match fleetforge_control::c2pa::check(&manifest, &asset, ca) {
        Err(e) => report.failed.push(("receipts.c2pa".into(), format!("is not a C2PA manifest store: {e}"))),
        Ok(c) if !c.failures.is_empty() => report.failed.push((
            "receipts.c2pa".into(),
            format!("the c2pa library refuses it against receipts.jsonl: {}", c.failures.join(", ")),
        )),
        Ok(c) if c.state != fleetforge_control::c2pa::ValidationState::Trusted => report.failed.push((
            "receipts.c2pa".into(),
            format!("its signer does not chain to the C2PA CA in keys.json ({:?})", c.state),
        )),
        Ok(c) => {
            let a = c.assertion.unwrap_or(Value::Null);
            if a["run"] != run || a["receipts"] != count {
                report.failed.push((
                    "receipts.c2pa".into(),
                    format!("its assertion states run {} with {} receipts", a["run"], a["receipts"]),
                ));
            } else {
                report.passed.push(format!(
                    "receipts.c2pa: C2PA manifest trusted, its data hash binds receipts.jsonl, assertion states run {run} ({count} receipts)"
                ));
            }
        }
    }
}

/// Checks the run statement and its COSE receipt against the bundle's receipts (`links`).
fn check_scitt(
    dir: &Path,
    run: &str,
    links: &[Link],
    key_of: &dyn Fn(&str, &str) -> Option<Vec<u8>>,
    report: &mut Report,
) {
    let (Ok(statement), Ok(receipt)) =
        (std::fs::read(dir.join("scitt/statement.cose")), std::fs::read(dir.join("scitt/receipt.cose")))
    else {
        report.failed.push(("scitt/".into(), "the statement or its receipt is missing".into()));
        return;
    };
    let fail = |report: &mut Report, what: &str, why: String| report.failed.push((what.to_owned(), why));
    let parsed = match scitt::parse_statement(&statement) {
        Ok(p) => p,
        Err(e) => return fail(report, "scitt/statement.cose", e.to_string()),
    };
    // The issuer is a did:key; it must be one of control's keys in the bundle.
    let kid = parsed.kid.clone().unwrap_or_default();
    let listed = key_of("log-signer", &kid);
    match fleetforge_trust::vc::resolve_did_key(&parsed.claims.iss) {
        Ok(key) if listed.as_deref() == Some(&key[..]) => match parsed.verify_ed25519(&key) {
            Ok(()) => {}
            Err(e) => return fail(report, "scitt/statement.cose", e.to_string()),
        },
        Ok(_) => {
            return fail(
                report,
                "scitt/statement.cose",
                format!("its issuer is not control's key {kid:?} in keys.json"),
            );
        }
        Err(e) => return fail(report, "scitt/statement.cose", format!("its issuer is not a did:key: {e}")),
    }
    let payload: Value = parsed.payload.as_deref().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null);
    let mut chain: Vec<&Link> = links.iter().collect();
    chain.sort_by(|a, b| (a.lane.as_bytes(), a.seq).cmp(&(b.lane.as_bytes(), b.seq)));
    let hashes: Vec<[u8; 32]> = chain.iter().filter_map(|l| unhex32(&l.hash)).collect();
    let root = fleetforge_control::scitt::receipts_root(&hashes);
    if payload["run"] != run {
        return fail(report, "scitt/statement.cose", format!("it states run {}, not {run}", payload["run"]));
    }
    if payload["receipts"] != links.len() || payload["receipts_root"] != hex(&root).as_str() {
        return fail(
            report,
            "scitt/statement.cose",
            format!(
                "it covers {} receipts with tree head {}; the bundle holds {} with head {}",
                payload["receipts"],
                payload["receipts_root"],
                links.len(),
                hex(&root)
            ),
        );
    }
    match scitt::verify_receipt(&receipt, &statement, |kid| key_of("log-signer", kid)) {
        Ok(v) if v.claims.sub == hex(&parsed.id) => report.passed.push(format!(
            "scitt: statement {} by {} states these {} receipts; its COSE receipt proves leaf {} of {} in {}",
            &hex(&parsed.id)[..16],
            kid,
            links.len(),
            v.proof.index,
            v.proof.size,
            v.claims.iss
        )),
        Ok(v) => {
            fail(report, "scitt/receipt.cose", format!("it is the receipt of statement {}, not this one", v.claims.sub))
        }
        Err(e) => fail(report, "scitt/receipt.cose", e.to_string()),
    }
}

/// What an offline check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Checks that passed, one line each.
    pub passed: Vec<String>,
    /// Failures: `(file or receipt, what failed)`.
    pub failed: Vec<(String, String)>,
}

fn read_json(dir: &Path, name: &str, report: &mut Report) -> Option<Value> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            report.failed.push((name.to_owned(), format!("is not JSON: {e}")));
            None
        }
    }
}

/// Checks the bundle in `dir` with nothing but its files.
pub fn check(dir: &Path) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .with_context(|| format!("{} holds no manifest.json: not a bundle", dir.display()))?,
    )
    .context("manifest.json is not JSON")?;
    anyhow::ensure!(manifest["schema"] == SCHEMA, "manifest.json is not a {SCHEMA} manifest");
    let run = manifest["run"].as_str().unwrap_or_default().to_owned();

    // 1. Every file as the manifest lists it.
    let files = manifest["files"].as_object().cloned().unwrap_or_default();
    let mut intact = 0;
    for (name, digest) in &files {
        match std::fs::read(dir.join(name)) {
            Ok(bytes) if Some(hex(&sha256(&bytes)).as_str()) == digest.as_str() => intact += 1,
            Ok(_) => report.failed.push((name.clone(), "changed: its SHA-256 is not the manifest's".into())),
            Err(e) => report.failed.push((name.clone(), format!("missing: {e}"))),
        }
    }
    report.passed.push(format!("{intact} of {} files match the manifest", files.len()));

    // 2. Receipts: hash, batch proof, signature, chain.
    let keys = read_json(dir, "keys.json", &mut report).unwrap_or(Value::Null);
    let key_of = |kind: &str, id: &str| {
        keys["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["key_id"].as_str() == Some(id) && (kind.is_empty() || k["kind"] == kind))
            .and_then(|k| k["public_key"].as_str())
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
    };
    let text = std::fs::read_to_string(dir.join("receipts.jsonl")).unwrap_or_default();
    let mut links = Vec::new();
    let mut hashes: HashMap<String, [u8; 32]> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                report.failed.push((format!("receipts.jsonl line {}", n + 1), format!("is not JSON: {e}")));
                continue;
            }
        };
        let id = value["id"].as_str().unwrap_or("?").to_owned();
        match verify(&value, |kid| key_of("receipt-signer", kid)) {
            Ok(v) => {
                hashes.insert(id.clone(), v.hash);
                links.push(Link {
                    id,
                    lane: v.receipt.body.chain.lane.clone(),
                    seq: v.receipt.body.chain.seq,
                    hash: hex(&v.hash),
                    prev_hash: v.receipt.body.chain.prev_hash.clone(),
                });
            }
            Err(e) => report.failed.push((format!("receipt {id}"), e.to_string())),
        }
    }
    for p in check_chain(&run, &links) {
        report.failed.push((format!("receipt {}", p.receipt_id), p.problem));
    }
    report.passed.push(format!("{} receipts: hash, batch proof, signature and chain checked", links.len()));

    // 3. The log head and each receipt's inclusion under it.
    if let Some(head) = read_json(dir, "log/head.json", &mut report) {
        let key_id = head["key_id"].as_str().unwrap_or_default();
        let origin = head["origin"].as_str().unwrap_or_default();
        let note = std::fs::read_to_string(dir.join("log/checkpoint")).unwrap_or_default();
        match key_of("log-signer", key_id).map(|k| Checkpoint::verify(&note, origin, &k)) {
            None => report.failed.push(("log/checkpoint".into(), format!("its signer {key_id} is not in keys.json"))),
            Some(Err(e)) => report.failed.push(("log/checkpoint".into(), e.to_string())),
            Some(Ok(cp)) => {
                let mut included = 0;
                for (id, hash) in &hashes {
                    let Some(proof) = read_json(dir, &format!("log/inclusion/{id}.json"), &mut report) else {
                        report.failed.push((format!("receipt {id}"), "has no inclusion proof in the bundle".into()));
                        continue;
                    };
                    let path: Vec<[u8; 32]> = proof["path"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|h| h.as_str().and_then(unhex32))
                        .collect();
                    let index = proof["index"].as_u64().unwrap_or(u64::MAX);
                    if root_from_path(hash, index, cp.size, &path) == Some(cp.root) {
                        included += 1;
                    } else {
                        report.failed.push((
                            format!("receipt {id}"),
                            format!("its inclusion proof does not lead to the checkpoint (size {})", cp.size),
                        ));
                    }
                }
                report.passed.push(format!(
                    "checkpoint of {origin} (size {}) signed by {key_id}; {included} receipts included under it",
                    cp.size
                ));
            }
        }
    }

    // 4. The C2PA manifest, read by the c2pa library against receipts.jsonl, trusting the CA in
    //    keys.json.
    check_c2pa(dir, &run, links.len(), &keys, &mut report);

    // 5. The SCITT statement and its receipt.
    check_scitt(dir, &run, &links, &|kind, id| key_of(kind, id), &mut report);

    // 6. The credential's own proof.
    if let Some(vc) = read_json(dir, "vc.json", &mut report) {
        match fleetforge_trust::vc::verify_credential(&vc) {
            Ok(()) => report.passed.push("vc.json: the credential's proof verifies".into()),
            Err(e) => report.failed.push(("vc.json".into(), format!("the credential's proof does not verify: {e}"))),
        }
    }
    Ok(report)
}
