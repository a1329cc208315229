//! Writes the fuzz seeds that must be made by the code they feed (signed receipts, spool
//! segments, run tokens) into `fuzz/corpus/`: `cargo run -p fleetforge-proxy --example fuzz_seeds`.
//! The other seeds are plain files, written by hand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use fleetforge_proxy::fuzz::{SEED_ROOT, seed_key, seed_spool_limits};
use fleetforge_proxy::spool::Spool;
use fleetforge_trust::RunId;
use fleetforge_trust::capability::{self, Grants, RunClaims};
use fleetforge_trust::receipt::ReceiptBody;
use fleetforge_trust::wire::ReceiptBatch;

fn corpus(target: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// The spool target's input form of a segment file: each frame as `kind, u16 length, payload`.
fn records(segment: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while segment.len() - at >= 9 {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap_or_default()) as usize;
        let Some(body) = segment.get(at + 8..at + 8 + len) else { break };
        let Ok(payload_len) = u16::try_from(body.len() - 1) else { break };
        out.push(body[0]);
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(&body[1..]);
        at += 8 + len;
    }
    out
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = seed_spool_limits();
    let spool = Spool::open(dir.path(), seed_key(), limits.clone())?;
    for run in ["run-seed-a", "run-seed-b", "run-seed-a"] {
        spool.append(run, |chain| ReceiptBody::example(RunId::new(run).expect("a run id"), chain))?;
    }
    spool.seal()?;
    // Written but never sealed: the spool seals it when it reopens.
    spool.append("run-seed-b", |chain| ReceiptBody::example(RunId::new("run-seed-b").expect("a run id"), chain))?;
    let segment = std::fs::read(dir.path().join(format!("{:016}.seg", 1)))?;
    let shipped = spool.reader().next(&spool, 100)?;
    drop(spool);

    let out = corpus("spool_segment")?;
    std::fs::write(out.join("gen-segment"), records(&segment))?;
    std::fs::write(out.join("gen-segment-torn"), &records(&segment)[..segment.len() / 2])?;
    let mut doubled = records(&segment);
    doubled.extend_from_slice(&records(&segment));
    std::fs::write(out.join("gen-segment-replayed"), doubled)?;

    let out = corpus("ingest_batch")?;
    let bodies: Vec<&[u8]> = shipped.iter().map(|s| s.json.as_slice()).collect();
    let mut batch = Vec::new();
    ReceiptBatch::encode(bodies.iter().copied(), &mut batch);
    std::fs::write(out.join("gen-batch"), &batch)?;
    let mut one = Vec::new();
    ReceiptBatch::encode(bodies.iter().take(1).copied(), &mut one);
    std::fs::write(out.join("gen-one"), &one)?;
    std::fs::write(out.join("empty"), br#"{"receipts":[]}"#)?;

    let out = corpus("capability")?;
    let root = capability::root_from_bytes(&SEED_ROOT)?;
    let grants = Grants {
        hosts: vec!["api.openai.com".into(), "*.example.com".into()],
        methods: vec!["POST".into()],
        paths: vec!["/v1/".into()],
        models: vec!["gpt-4o*".into()],
        max_tokens: Some(10_000),
        ..Grants::default()
    };
    let claims = RunClaims {
        run: "run-seed".into(),
        tenant: "acme".into(),
        agent: Some("planner".into()),
        expires: 4_102_444_800,
        grants,
    };
    let minted = capability::mint(&root, 1, &claims)?;
    std::fs::write(out.join("gen-run-token"), &minted.token)?;
    let open = RunClaims { grants: Grants { hosts: vec!["*".into()], ..Grants::default() }, ..claims };
    std::fs::write(out.join("gen-open-token"), capability::mint(&root, 1, &open)?.token)?;
    let narrow = Grants { hosts: vec!["api.openai.com".into()], ..Grants::default() };
    let narrowed = capability::attenuate(
        &minted.token,
        &narrow,
        Some(Duration::from_secs(3600 * 24 * 365 * 50)),
        std::time::SystemTime::now(),
    )?;
    std::fs::write(out.join("gen-attenuated-token"), narrowed)?;
    println!("fuzz seeds written under fuzz/corpus/");
    Ok(())
}
