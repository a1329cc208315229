//! Replay on control's side: a run's signed replay manifest, the report of a replay run, and the
//! sealed blobs a receipt names.
//!
//! Everything here is computed from stored receipt bodies; nothing is kept. A manifest lists the
//! receipts whose `seal.key` and `seal.response_meta` are both set, by start time then step, and
//! is signed with control's newest capability root key (ed25519 over
//! [`Manifest::signing_digest`]), whose public key `GET /v1/keys` lists under the key id the
//! signature names. A report compares a replay run (receipts with a `replay` part) with the
//! sealed calls of the run it replayed.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::canonical::CanonicalError;
use fleetforge_trust::key::KEY_VERSION;
use fleetforge_trust::receipt::{ReceiptBody, Usage};
use fleetforge_trust::replay::{MANIFEST, Manifest, ManifestCall, ManifestSignature, Miss, REPORT, Report};

use crate::capability::RootKey;
use crate::ingest::micros_of;

/// Why a manifest could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The manifest has no canonical form.
    #[error("manifest has no canonical form: {0}")]
    Canonical(#[from] CanonicalError),
    /// The root key is not a usable ed25519 key.
    #[error("capability root key {0} is not a usable ed25519 key")]
    Key(String),
}

/// Input + output tokens of a call, when its usage names either.
fn tokens(usage: Option<&Usage>) -> Option<u64> {
    let u = usage?;
    if u.input_tokens.is_none() && u.output_tokens.is_none() {
        return None;
    }
    Some(u.input_tokens.unwrap_or(0).saturating_add(u.output_tokens.unwrap_or(0)))
}

/// Orders receipt bodies by start time, then step, then id (so equal times sort the same way
/// every time).
pub fn sort_by_start(bodies: &mut [ReceiptBody]) {
    bodies.sort_by_cached_key(|b| (micros_of(&b.started_at), b.step, b.id.to_string()));
}

/// The sealed calls among `bodies` (sorted with [`sort_by_start`]): receipts with both a request
/// key and a response envelope.
pub fn sealed_calls(bodies: &[ReceiptBody]) -> Vec<ManifestCall> {
    bodies
        .iter()
        .filter_map(|b| {
            let (key, response_meta) = (b.seal.key.clone()?, b.seal.response_meta.clone()?);
            Some(ManifestCall {
                receipt: b.id.to_string(),
                step: b.step,
                started_at: b.started_at.clone(),
                ended_at: b.ended_at.clone(),
                method: b.upstream.method.clone(),
                host: b.upstream.host.clone(),
                path: b.upstream.path.clone(),
                key,
                // A key without its scheme predates nothing: v1 is the only one there is.
                key_version: b.seal.key_version.clone().unwrap_or_else(|| KEY_VERSION.to_owned()),
                request_blob: b.seal.request_blob.clone(),
                response_meta,
                response_digest: b.seal.response_digest.clone(),
                status: b.seal.status,
                tokens: tokens(b.usage.as_ref()),
            })
        })
        .collect()
}

/// The unsigned manifest of `run` for its sealed `calls`.
pub fn manifest(run: &str, tenant: &str, generated_at: String, calls: Vec<ManifestCall>) -> Manifest {
    Manifest {
        schema: MANIFEST.to_owned(),
        run: run.to_owned(),
        tenant: tenant.to_owned(),
        generated_at,
        calls,
        signature: None,
    }
}

/// Signs `manifest` with `root`: ed25519 over [`Manifest::signing_digest`], naming the key as
/// `GET /v1/keys` lists it.
pub fn sign(manifest: &mut Manifest, root: &RootKey) -> Result<(), SignError> {
    manifest.signature = None;
    let digest = manifest.signing_digest()?;
    let pair = root.ring().ok_or_else(|| SignError::Key(root.key_id()))?;
    manifest.signature = Some(ManifestSignature {
        alg: "ed25519".to_owned(),
        key_id: root.key_id(),
        value: URL_SAFE_NO_PAD.encode(pair.sign(&digest).as_ref()),
    });
    Ok(())
}

/// The run a replay run replayed: the `of_run` of its first replayed call (bodies sorted with
/// [`sort_by_start`]); `None` when no call was replayed.
pub fn replayed_run(bodies: &[ReceiptBody]) -> Option<String> {
    bodies.iter().find_map(|b| b.replay.as_ref().map(|r| r.of_run.to_string()))
}

/// The report of replay run `run` (its `bodies`, sorted with [`sort_by_start`]) against the
/// sealed `original` calls of run `of`.
pub fn report(run: &str, bodies: &[ReceiptBody], of: &str, original: &[ManifestCall]) -> Report {
    let replayed: Vec<&ReceiptBody> =
        bodies.iter().filter(|b| b.replay.as_ref().is_some_and(|r| r.of_run.as_str() == of)).collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut misses = Vec::new();
    let mut strict = false;
    for b in &replayed {
        let Some(r) = b.replay.as_ref() else { continue };
        strict |= r.strict;
        match &r.of {
            Some(served) => {
                used.insert(served.to_string());
            }
            None => misses.push(Miss {
                receipt: b.id.to_string(),
                call: format!("{} {}", b.upstream.method, b.upstream.path),
                closest: r.closest.as_ref().map(ToString::to_string),
            }),
        }
    }
    let matched = replayed.len() - misses.len();
    let unused: Vec<String> =
        original.iter().filter(|c| !used.contains(&c.receipt)).map(|c| c.receipt.clone()).collect();
    // Every sealed call of the original run is either matched or unused: all of them count.
    let tokens_original = original.iter().fold(0u64, |sum, c| sum.saturating_add(c.tokens.unwrap_or(0)));
    let tokens_replay = bodies.iter().fold(0u64, |sum, b| sum.saturating_add(tokens(b.usage.as_ref()).unwrap_or(0)));
    let token_drift = i64::try_from(tokens_replay)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(tokens_original).unwrap_or(i64::MAX));
    let identical = misses.is_empty() && unused.is_empty() && token_drift == 0;
    Report {
        schema: REPORT.to_owned(),
        run: run.to_owned(),
        of: of.to_owned(),
        strict,
        matched: matched as u64,
        missed: misses.len() as u64,
        misses,
        unused,
        tokens_original,
        tokens_replay,
        token_drift,
        verdict: if identical { "identical" } else { "drifted" }.to_owned(),
    }
}

/// The sealed blobs a receipt names: its request body, its response envelope and, when the
/// response was sealed, the response body.
pub fn blob_addresses(body: &ReceiptBody) -> Vec<&str> {
    let seal = &body.seal;
    let mut out: Vec<&str> = seal.request_blob.iter().chain(seal.response_meta.iter()).map(String::as_str).collect();
    if seal.response_meta.is_some()
        && let Some(digest) = &seal.response_digest
    {
        out.push(digest);
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use fleetforge_trust::receipt::{Chain, ReceiptBody, Replay, Usage};
    use fleetforge_trust::{ReceiptId, RunId};

    use super::{blob_addresses, manifest, report, sealed_calls, sign, sort_by_start};
    use crate::capability::KeyRing;

    fn call(seq: u64, started: &str, sealed: bool, tokens: Option<(u64, u64)>) -> ReceiptBody {
        let mut b = ReceiptBody::example(
            RunId::new("run-o").unwrap(),
            Chain { lane: "lane".into(), prev_hash: "p".into(), seq },
        );
        b.started_at = started.into();
        if sealed {
            b.seal.key = Some(format!("{seq:064x}"));
            b.seal.request_blob = Some(format!("{:064x}", seq + 100));
            b.seal.response_meta = Some(format!("{:064x}", seq + 200));
            b.seal.response_digest = Some(format!("{:064x}", seq + 300));
        }
        b.usage = tokens.map(|(i, o)| Usage {
            cached_input_tokens: None,
            cost_micro_usd: None,
            input_tokens: Some(i),
            model: None,
            output_tokens: Some(o),
            provider: None,
            reasoning_tokens: None,
        });
        b
    }

    #[test]
    fn the_manifest_lists_sealed_calls_in_start_order_and_its_signature_checks_out() {
        let home = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::load_or_create(home.path()).unwrap();
        ring.rotate(home.path()).unwrap();
        let mut bodies = vec![
            call(1, "2026-11-26T18:00:02.000000Z", true, Some((10, 5))),
            call(2, "2026-11-26T18:00:01.000000Z", true, None),
            call(3, "2026-11-26T18:00:00.000000Z", false, Some((1, 1))),
        ];
        sort_by_start(&mut bodies);
        let calls = sealed_calls(&bodies);
        assert_eq!(calls.iter().map(|c| c.step).collect::<Vec<_>>(), [2, 1], "sealed only, by start time");
        assert_eq!(calls[1].tokens, Some(15));
        assert_eq!(calls[0].tokens, None);
        assert_eq!(calls[0].key_version, fleetforge_trust::key::KEY_VERSION);
        let mut m = manifest("run-o", "default", "2026-11-26T18:01:00.000000Z".into(), calls);
        sign(&mut m, ring.newest().unwrap()).unwrap();
        let signature = m.signature.clone().unwrap();
        assert_eq!(signature.alg, "ed25519");
        // The key the signature names, as GET /v1/keys lists it.
        let listed = ring.all().iter().map(|r| r.listing()).find(|k| k["key_id"] == signature.key_id.as_str()).unwrap();
        assert_eq!(listed["kind"], "capability-root");
        assert_eq!(listed["root_key_id"], 2, "the newest root key signs");
        let public = URL_SAFE_NO_PAD.decode(listed["public_key"].as_str().unwrap()).unwrap();
        let check = |m: &fleetforge_trust::replay::Manifest| {
            let value = URL_SAFE_NO_PAD.decode(&m.signature.as_ref().unwrap().value).unwrap();
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
                .verify(&m.signing_digest().unwrap(), &value)
                .is_ok()
        };
        assert!(check(&m), "the signature verifies with the listed public key");
        let roundtrip: fleetforge_trust::replay::Manifest =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(check(&roundtrip), "and still does after a trip through JSON");
        let mut changed = m.clone();
        changed.calls[1].response_meta = format!("{:064x}", 999);
        assert!(!check(&changed), "changing one call breaks it");
        let mut dropped = m.clone();
        dropped.calls.pop();
        assert!(!check(&dropped), "so does dropping one");
    }

    #[test]
    fn a_report_counts_matches_misses_unused_seals_and_token_drift() {
        let mut original = vec![
            call(1, "2026-11-26T18:00:00.000000Z", true, Some((10, 5))),
            call(2, "2026-11-26T18:00:01.000000Z", true, Some((20, 5))),
            call(3, "2026-11-26T18:00:02.000000Z", true, Some((1, 1))),
        ];
        sort_by_start(&mut original);
        let sealed = sealed_calls(&original);
        let replayed = |seq: u64, of: Option<ReceiptId>, tokens: Option<(u64, u64)>| {
            let mut b = call(seq, &format!("2026-11-27T18:00:0{seq}.000000Z"), false, tokens);
            b.run = RunId::new("run-r").unwrap();
            b.replay = Some(Replay {
                closest: if of.is_none() { Some(original[1].id) } else { None },
                of,
                of_run: RunId::new("run-o").unwrap(),
                original_ended_at: None,
                original_started_at: None,
                strict: false,
            });
            b
        };
        let bodies = vec![
            replayed(1, Some(original[0].id), Some((10, 5))),
            replayed(2, None, Some((20, 7))),
            replayed(3, Some(original[2].id), None),
        ];
        let r = report("run-r", &bodies, "run-o", &sealed);
        assert_eq!((r.matched, r.missed), (2, 1));
        assert_eq!(r.misses[0].receipt, bodies[1].id.to_string());
        assert_eq!(r.misses[0].call, "POST /v1/chat/completions");
        assert_eq!(r.misses[0].closest, Some(original[1].id.to_string()));
        assert_eq!(r.unused, [original[1].id.to_string()]);
        assert_eq!((r.tokens_original, r.tokens_replay, r.token_drift), (42, 42, 0));
        assert_eq!(r.verdict, "drifted");
        assert!(!r.strict);
        // Every seal served, same tokens: identical.
        let bodies = vec![
            replayed(1, Some(original[0].id), Some((10, 5))),
            replayed(2, Some(original[1].id), Some((20, 5))),
            replayed(3, Some(original[2].id), Some((1, 1))),
        ];
        let r = report("run-r", &bodies, "run-o", &sealed);
        assert_eq!((r.matched, r.missed, r.unused.len(), r.token_drift), (3, 0, 0, 0));
        assert_eq!(r.verdict, "identical");
    }

    #[test]
    fn a_receipt_names_its_response_body_only_when_the_response_was_sealed() {
        let sealed = call(1, "2026-11-26T18:00:00.000000Z", true, None);
        assert_eq!(blob_addresses(&sealed).len(), 3);
        let mut plain = call(2, "2026-11-26T18:00:00.000000Z", false, None);
        plain.seal.response_digest = Some("ab".repeat(32));
        assert!(blob_addresses(&plain).is_empty(), "a digest without a seal is not a blob");
    }
}
