//! `fleetforge-ctl verify RUN`, its transparency part: every receipt of the run is in its
//! tenant's log, and the log only grew since the head this machine saw last.
//!
//! The signed head (a C2SP checkpoint) is checked with the key `GET /v1/keys` lists under its
//! `key_id`; each receipt's hash is recomputed here from the receipt itself, and its inclusion
//! proof must lead to that head. The head is then kept in `$FLEETFORGE_HOME/log-heads/{tenant}.json`,
//! and the next verify asks control for a consistency proof from it: a log that was rewritten or
//! shrank cannot produce one.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::canonical::{hex, unhex32};
use fleetforge_trust::merkle::{Hash, root_from_path};
use fleetforge_trust::tlog::{Checkpoint, verify_consistency};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::ControlClient;

/// A head as kept between verifies.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    origin: String,
    size: u64,
    root: String,
    checkpoint: String,
}

/// What the transparency checks found: lines to print, and whether all passed.
#[derive(Debug, Default)]
pub struct Findings {
    /// One line per check.
    pub lines: Vec<String>,
    /// A check failed.
    pub failed: bool,
}

impl Findings {
    fn fail(&mut self, line: String) {
        self.failed = true;
        self.lines.push(line);
    }
}

fn heads_dir() -> PathBuf {
    PathBuf::from(std::env::var("FLEETFORGE_HOME").unwrap_or_else(|_| ".fleetforge".into())).join("log-heads")
}

fn hash_of(v: &Value, what: &str) -> anyhow::Result<Hash> {
    v.as_str().and_then(unhex32).with_context(|| format!("control sent {what} that is not a 32-byte hex hash: {v}"))
}

/// Checks the signed head of `tenant` and returns it (size, root).
async fn signed_head(c: &ControlClient, tenant: &str, findings: &mut Findings) -> anyhow::Result<Option<Kept>> {
    let head = c.get(&format!("/v1/log/{tenant}/head")).await.context("fetching the log head")?;
    let keys = c.get("/v1/keys").await.context("fetching control's keys")?;
    let key_id = head["key_id"].as_str().unwrap_or_default();
    let public = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["key_id"].as_str() == Some(key_id))
        .and_then(|k| k["public_key"].as_str())
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok());
    let Some(public) = public else {
        findings.fail(format!("log: the head is signed by key {key_id:?}, which GET /v1/keys does not list"));
        return Ok(None);
    };
    let origin = head["origin"].as_str().unwrap_or_default().to_owned();
    let note = head["checkpoint"].as_str().unwrap_or_default().to_owned();
    let checkpoint = match Checkpoint::verify(&note, &origin, &public) {
        Ok(cp) => cp,
        Err(e) => {
            findings.fail(format!("log: the head of tenant {tenant} does not verify: {e}"));
            return Ok(None);
        }
    };
    if checkpoint.size != head["size"].as_u64().unwrap_or(u64::MAX) || hex(&checkpoint.root) != head["root"] {
        findings.fail(format!("log: the signed checkpoint of tenant {tenant} does not match the head control reports"));
        return Ok(None);
    }
    Ok(Some(Kept { origin, size: checkpoint.size, root: hex(&checkpoint.root), checkpoint: note }))
}

/// Runs the transparency checks for run `run` of `tenant` whose receipts are `receipts`.
pub async fn check(c: &ControlClient, tenant: &str, receipts: &[Value]) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let Some(head) = signed_head(c, tenant, &mut findings).await? else { return Ok(findings) };
    let root = hash_of(&Value::from(head.root.clone()), "a head")?;
    let mut included = 0usize;
    for r in receipts {
        let id = r["id"].as_str().unwrap_or_default();
        let local = match fleetforge_trust::verify::prove(r) {
            Ok(p) => p.hash,
            Err(e) => {
                findings.fail(format!("log: receipt {id} does not hash: {e}"));
                continue;
            }
        };
        let proof = match c.get(&format!("/v1/log/{tenant}/inclusion/{id}?size={}", head.size)).await {
            Ok(p) => p,
            Err(e) => {
                findings.fail(format!("log: receipt {id} has no inclusion proof at size {}: {e}", head.size));
                continue;
            }
        };
        let index = proof["index"].as_u64().unwrap_or(u64::MAX);
        let path: Vec<Hash> =
            proof["path"].as_array().into_iter().flatten().filter_map(|h| h.as_str().and_then(unhex32)).collect();
        if hash_of(&proof["receipt_hash"], "a receipt hash")? != local {
            findings.fail(format!("log: receipt {id}: the log holds a different hash than the receipt's"));
        } else if root_from_path(&local, index, head.size, &path) != Some(root) {
            findings.fail(format!(
                "log: receipt {id}: its inclusion proof (leaf {index}) does not lead to the signed head of size {}",
                head.size
            ));
        } else {
            included += 1;
        }
    }
    findings.lines.push(format!(
        "log: {included} of {} receipts included in the log of tenant {tenant} (size {}, signed head verified)",
        receipts.len(),
        head.size
    ));
    consistent(c, tenant, &head, &mut findings).await?;
    Ok(findings)
}

/// Compares `head` with the head kept from the last verify, then keeps `head` (when it checks).
async fn consistent(c: &ControlClient, tenant: &str, head: &Kept, findings: &mut Findings) -> anyhow::Result<()> {
    let dir = heads_dir();
    let file = dir.join(format!("{}.json", tenant.replace(['/', '\\'], "_")));
    let previous: Option<Kept> = match std::fs::read(&file) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a kept log head; delete it to start over", file.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let keep = match &previous {
        None => {
            findings.lines.push(format!("log: first head of tenant {tenant} seen here; kept in {}", file.display()));
            true
        }
        Some(old) if old.size > head.size => {
            findings.fail(format!(
                "log: the log of tenant {tenant} shrank: {} receipts when last seen, {} now",
                old.size, head.size
            ));
            false
        }
        Some(old) if old.size == 0 => true,
        Some(old) => {
            let proof = c
                .get(&format!("/v1/log/{tenant}/consistency?from={}&to={}", old.size, head.size))
                .await
                .context("fetching a consistency proof")?;
            let path: Vec<Hash> =
                proof["proof"].as_array().into_iter().flatten().filter_map(|h| h.as_str().and_then(unhex32)).collect();
            let (old_root, new_root) = (
                hash_of(&Value::from(old.root.clone()), "a kept head")?,
                hash_of(&Value::from(head.root.clone()), "a head")?,
            );
            if verify_consistency(old.size, head.size, &old_root, &new_root, &path) {
                findings
                    .lines
                    .push(format!("log: consistent with the head seen last (size {} -> {})", old.size, head.size));
                true
            } else {
                findings.fail(format!(
                    "log: the log of tenant {tenant} is NOT consistent with the head seen last (size {}): it was rewritten",
                    old.size
                ));
                false
            }
        }
    };
    if keep {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&file, serde_json::to_vec_pretty(head)?)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}
