//! Verifying receipts: one receipt against a public key, and a run's chain.
//!
//! Used by control on ingest and by `GET /v1/runs/{id}/verify`, by `fleetforge-ctl verify`, and by
//! anyone holding receipts and the proxy keys (`GET /v1/keys`). Verification works on the JSON as
//! stored, recanonicalized: whitespace or member order changes nothing, any change to a value
//! breaks the hash.

use serde_json::Value;

use crate::canonical::{self, hex, unhex32};
use crate::merkle::{Hash, root_from_path};
use crate::receipt::{Receipt, genesis_hex};
use crate::sign::verify_batch;

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a v1 receipt (missing or mistyped members).
    #[error("not a fleetforge.receipt/v1: {0}")]
    Malformed(String),
    /// The signing key is not known.
    #[error("unknown signing key {0}")]
    UnknownKey(String),
    /// The inclusion proof does not lead to the batch root it names.
    #[error("the batch inclusion proof does not match the receipt's content (hash {0})")]
    Proof(String),
    /// The batch signature is not valid for the key.
    #[error("the batch signature does not verify with key {0}")]
    Signature(String),
}

/// A receipt whose hash, proof and signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The parsed receipt.
    pub receipt: Receipt,
    /// Its hash (over the canonical body).
    pub hash: Hash,
    /// The batch root its proof leads to.
    pub root: Hash,
}

/// The part of verification that needs no key: parse, hash, and recompute the batch root.
#[derive(Debug, Clone)]
pub struct Proven {
    /// The parsed receipt.
    pub receipt: Receipt,
    /// Its hash.
    pub hash: Hash,
    /// The root the proof leads to (equal to the root the receipt names).
    pub root: Hash,
}

/// Parses and hashes a receipt and checks its inclusion proof.
pub fn prove(value: &Value) -> Result<Proven, VerifyError> {
    use serde::Deserialize as _;
    let receipt = Receipt::deserialize(value).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if receipt.body.schema != crate::receipt::SCHEMA {
        return Err(VerifyError::Malformed(format!("schema is {:?}", receipt.body.schema)));
    }
    let object = value.as_object().ok_or_else(|| VerifyError::Malformed("a receipt is a JSON object".into()))?;
    let hash = canonical::digest_without(object, "signature").map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let batch = &receipt.signature.batch;
    let path = batch
        .path
        .iter()
        .map(|p| unhex32(p))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| VerifyError::Malformed("audit path is not hex".into()))?;
    let named = unhex32(&batch.root).ok_or_else(|| VerifyError::Malformed("batch root is not hex".into()))?;
    match root_from_path(&hash, batch.index, batch.size, &path) {
        Some(root) if root == named => Ok(Proven { receipt, hash, root }),
        _ => Err(VerifyError::Proof(hex(&hash))),
    }
}

/// Fully verifies one receipt: hash, inclusion proof, and the batch signature with the key that
/// `key` returns for the receipt's key id.
pub fn verify(value: &Value, key: impl Fn(&str) -> Option<Vec<u8>>) -> Result<Verified, VerifyError> {
    let Proven { receipt, hash, root } = prove(value)?;
    let sig = &receipt.signature;
    if sig.alg != "ed25519" {
        return Err(VerifyError::Malformed(format!("signature algorithm {:?}", sig.alg)));
    }
    let public = key(&sig.key_id).ok_or_else(|| VerifyError::UnknownKey(sig.key_id.clone()))?;
    if !verify_batch(&public, &root, sig.batch.size, &sig.sig) {
        return Err(VerifyError::Signature(sig.key_id.clone()));
    }
    Ok(Verified { receipt, hash, root })
}

/// One receipt's place in a chain, as stored.
#[derive(Debug, Clone)]
pub struct Link {
    /// Receipt id.
    pub id: String,
    /// Lane.
    pub lane: String,
    /// Position in the lane.
    pub seq: u64,
    /// The receipt's own hash (recomputed, hex).
    pub hash: String,
    /// The previous hash it names (hex).
    pub prev_hash: String,
}

/// A chain problem, naming the receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProblem {
    /// The receipt where the chain breaks.
    pub receipt_id: String,
    /// What is wrong.
    pub problem: String,
}

/// Checks the chains of one run: `links` sorted by (lane, seq). Each lane must start at seq 1 on
/// the lane's genesis, and each receipt must name its predecessor's hash with the next seq.
pub fn check_chain(run: &str, links: &[Link]) -> Vec<ChainProblem> {
    let mut problems = Vec::new();
    let mut prev: Option<&Link> = None;
    for link in links {
        let (expected_seq, expected_prev) = match prev {
            Some(p) if p.lane == link.lane => (p.seq + 1, p.hash.clone()),
            _ => (1, genesis_hex(run, &link.lane)),
        };
        if link.seq != expected_seq {
            problems.push(ChainProblem {
                receipt_id: link.id.clone(),
                problem: format!(
                    "lane {} seq {} where {} was expected (a receipt is missing or repeated)",
                    link.lane, link.seq, expected_seq
                ),
            });
        } else if link.prev_hash != expected_prev {
            problems.push(ChainProblem {
                receipt_id: link.id.clone(),
                problem: format!(
                    "prev_hash {} does not match the hash of the previous receipt ({expected_prev})",
                    link.prev_hash
                ),
            });
        }
        prev = Some(link);
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::{Link, VerifyError, check_chain, verify};
    use crate::canonical::hex;
    use crate::receipt::tests::sample;
    use crate::receipt::{Receipt, genesis_hex};
    use crate::sign::SigningKey;

    fn signed_chain(key: &SigningKey, n: u64) -> Vec<serde_json::Value> {
        let mut prev = genesis_hex("run-1", "ed25519:0011223344556677");
        let mut bodies = Vec::new();
        for seq in 1..=n {
            let body = sample(seq, &prev);
            prev = hex(&body.hash().unwrap());
            bodies.push(body);
        }
        let hashes: Vec<_> = bodies.iter().map(|b| b.hash().unwrap()).collect();
        bodies
            .into_iter()
            .zip(key.sign_batch(&hashes))
            .map(|(body, signature)| serde_json::to_value(Receipt { body, signature }).unwrap())
            .collect()
    }

    #[test]
    fn signed_receipts_verify_and_any_change_is_caught() {
        let (key, _) = SigningKey::generate().unwrap();
        let public = key.public_key().to_vec();
        let lookup = |id: &str| (id == key.id()).then(|| public.clone());
        let receipts = signed_chain(&key, 3);
        for r in &receipts {
            verify(r, lookup).unwrap();
            // Reordered members and whitespace change nothing.
            let reparsed: serde_json::Value = serde_json::from_str(&serde_json::to_string_pretty(r).unwrap()).unwrap();
            verify(&reparsed, lookup).unwrap();
        }
        let mut tampered = receipts[1].clone();
        tampered["seal"]["status"] = serde_json::json!(200);
        assert!(matches!(verify(&tampered, lookup), Err(VerifyError::Proof(_))));
        let mut forged = receipts[1].clone();
        forged["signature"]["key_id"] = serde_json::json!("ed25519:ffffffffffffffff");
        assert!(matches!(verify(&forged, lookup), Err(VerifyError::UnknownKey(_))));
        let (other, _) = SigningKey::generate().unwrap();
        let other_pk = other.public_key().to_vec();
        assert!(matches!(verify(&receipts[0], |_| Some(other_pk.clone())), Err(VerifyError::Signature(_))));
    }

    #[test]
    fn chains_break_on_gaps_repeats_and_wrong_links() {
        let (key, _) = SigningKey::generate().unwrap();
        let public = key.public_key().to_vec();
        let links: Vec<Link> = signed_chain(&key, 4)
            .iter()
            .map(|r| {
                let v = verify(r, |_| Some(public.clone())).unwrap();
                Link {
                    id: v.receipt.body.id.to_string(),
                    lane: v.receipt.body.chain.lane.clone(),
                    seq: v.receipt.body.chain.seq,
                    hash: hex(&v.hash),
                    prev_hash: v.receipt.body.chain.prev_hash.clone(),
                }
            })
            .collect();
        assert!(check_chain("run-1", &links).is_empty());
        let gap: Vec<_> = links.iter().filter(|l| l.seq != 2).cloned().collect();
        let problems = check_chain("run-1", &gap);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].receipt_id, links[2].id);
        let mut relinked = links.clone();
        relinked[3].prev_hash = relinked[1].hash.clone();
        assert_eq!(check_chain("run-1", &relinked)[0].receipt_id, links[3].id);
        assert!(!check_chain("other-run", &links).is_empty(), "the genesis binds the run");
    }
}
