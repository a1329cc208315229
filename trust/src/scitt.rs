//! SCITT signed statements and COSE receipts.
//!
//! A **signed statement** is a tagged COSE_Sign1 (RFC 9052) whose protected header carries the
//! algorithm, the payload's content type, the key id and the CWT claims `iss` and `sub` (RFC 9597,
//! header 15). Control issues one per run when the run ends — its payload a JSON summary of the
//! run's receipt chain ([`RUN_CONTENT_TYPE`]) — and registers statements others sign.
//!
//! A registered statement is a leaf of its tenant's transparency log: the leaf's data is the
//! SHA-256 of the statement's bytes, which is also the statement's id. Its **COSE receipt**
//! (draft-ietf-cose-merkle-tree-proofs, verifiable data structure `RFC9162_SHA256`) is a
//! COSE_Sign1 by the log's key with a detached payload: the tree head the inclusion proof
//! (unprotected header 396, label -1) leads to. A verifier recomputes that head from the statement
//! and the proof and checks the signature over it; nothing of ours is needed to do so.

use coset::cbor::value::Value;
use coset::{
    CborSerializable as _, CoseSign1, CoseSign1Builder, HeaderBuilder, Label, TaggedCborSerializable as _, iana,
};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

use crate::canonical::sha256;
use crate::merkle::{Hash, leaf_hash, root_from_path};

/// The content type of a run statement's payload: the run's receipt chain summarised as JSON.
pub const RUN_CONTENT_TYPE: &str = "application/vnd.fleetforge.run-statement+json";
/// The content type of a receipt statement's payload: the receipt's JSON.
pub const RECEIPT_CONTENT_TYPE: &str = "application/vnd.fleetforge.receipt+json";
/// COSE header parameter: CWT claims (RFC 9597).
pub const HEADER_CWT_CLAIMS: i64 = 15;
/// COSE header parameter: verifiable data structure (draft-ietf-cose-merkle-tree-proofs).
pub const HEADER_VDS: i64 = 395;
/// COSE header parameter: verifiable data structure proofs.
pub const HEADER_VDP: i64 = 396;
/// Verifiable data structure `RFC9162_SHA256`.
pub const VDS_RFC9162_SHA256: i64 = 1;
/// The proof-type label of inclusion proofs in the proofs map.
pub const INCLUSION_PROOFS: i64 = -1;
/// CWT claim keys (RFC 8392).
const CLAIM_ISS: i64 = 1;
const CLAIM_SUB: i64 = 2;
const CLAIM_IAT: i64 = 6;
/// The largest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// Why a statement or a receipt is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScittError {
    /// Not CBOR, or not a COSE_Sign1.
    #[error("not a COSE_Sign1 structure: {0}")]
    NotCose(String),
    /// A required header or claim is missing or has the wrong type.
    #[error("{0}")]
    Header(String),
    /// The signature does not verify.
    #[error("the signature does not verify with key {0}")]
    Signature(String),
    /// The inclusion proof does not lead to the signed head.
    #[error("{0}")]
    Proof(String),
    /// Too large.
    #[error("the statement is {0} bytes; at most {MAX_STATEMENT_BYTES} are accepted")]
    TooLarge(usize),
}

/// The CWT claims a statement or receipt carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `iss`: who makes the statement.
    pub iss: String,
    /// `sub`: what it is about.
    pub sub: String,
    /// `iat`: when, unix seconds.
    pub iat: Option<i64>,
}

impl Claims {
    fn to_value(&self) -> Value {
        let mut map = vec![
            (Value::from(CLAIM_ISS), Value::Text(self.iss.clone())),
            (Value::from(CLAIM_SUB), Value::Text(self.sub.clone())),
        ];
        if let Some(iat) = self.iat {
            map.push((Value::from(CLAIM_IAT), Value::from(iat)));
        }
        Value::Map(map)
    }

    fn from_value(v: &Value) -> Result<Self, ScittError> {
        let Value::Map(map) = v else {
            return Err(ScittError::Header("the CWT claims (header 15) are not a map".into()));
        };
        let get = |key: i64| map.iter().find(|(k, _)| k.as_integer() == Some(key.into())).map(|(_, v)| v);
        let text = |key: i64, name: &str| match get(key) {
            Some(Value::Text(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(ScittError::Header(format!("the CWT claim {name} ({key}) is not a non-empty text string"))),
            None => Err(ScittError::Header(format!("the CWT claims (header 15) have no {name} ({key})"))),
        };
        let iat = match get(CLAIM_IAT) {
            None => None,
            Some(v) => Some(
                v.as_integer()
                    .and_then(|i| i64::try_from(i).ok())
                    .ok_or_else(|| ScittError::Header("the CWT claim iat (6) is not an integer".into()))?,
            ),
        };
        Ok(Self { iss: text(CLAIM_ISS, "iss")?, sub: text(CLAIM_SUB, "sub")?, iat })
    }
}

/// Signs `payload` as a tagged COSE_Sign1 signed statement (EdDSA).
pub fn sign_statement(payload: &[u8], content_type: &str, claims: &Claims, kid: &str, key: &Ed25519KeyPair) -> Vec<u8> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .content_type(content_type.to_owned())
        .key_id(kid.as_bytes().to_vec())
        .value(HEADER_CWT_CLAIMS, claims.to_value())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload.to_vec())
        .create_signature(&[], |m| key.sign(m).as_ref().to_vec())
        .build();
    // Serializing a structure we just built cannot fail (no floats, no nesting limits reached).
    sign1.to_tagged_vec().unwrap_or_default()
}

/// A statement as read.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Its id: the SHA-256 of its bytes (also its log leaf's data).
    pub id: Hash,
    /// The COSE algorithm (e.g. -8 EdDSA, -7 ES256).
    pub alg: i64,
    /// The payload's content type, when given.
    pub content_type: Option<String>,
    /// The key id, when given (as text when it is UTF-8).
    pub kid: Option<String>,
    /// The CWT claims.
    pub claims: Claims,
    /// The payload; `None` when detached.
    pub payload: Option<Vec<u8>>,
    sign1: CoseSign1,
}

fn parse_sign1(bytes: &[u8]) -> Result<CoseSign1, ScittError> {
    if bytes.len() > MAX_STATEMENT_BYTES {
        return Err(ScittError::TooLarge(bytes.len()));
    }
    match CoseSign1::from_tagged_slice(bytes) {
        Ok(s) => Ok(s),
        // Untagged COSE_Sign1 is accepted too (RFC 9052 §2: the tag is optional in context).
        Err(tagged) => CoseSign1::from_slice(bytes).map_err(|_| ScittError::NotCose(tagged.to_string())),
    }
}

fn header_value(h: &coset::Header, label: i64) -> Option<&Value> {
    h.rest.iter().find(|(l, _)| *l == Label::Int(label)).map(|(_, v)| v)
}

fn alg_of(h: &coset::Header) -> Result<i64, ScittError> {
    match &h.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => Ok(*a as i64),
        Some(coset::RegisteredLabelWithPrivate::PrivateUse(a)) => Ok(*a),
        Some(coset::RegisteredLabelWithPrivate::Text(t)) => Err(ScittError::Header(format!(
            "the algorithm (header 1) is the text {t:?}; a COSE algorithm number is required"
        ))),
        None => Err(ScittError::Header("the protected header has no algorithm (header 1)".into())),
    }
}

/// Reads a signed statement and checks its shape: a COSE_Sign1 with an algorithm and CWT claims
/// carrying `iss` and `sub` in the protected header. The signature is not checked here
/// ([`Statement::verify_ed25519`] does).
pub fn parse_statement(bytes: &[u8]) -> Result<Statement, ScittError> {
    let sign1 = parse_sign1(bytes)?;
    let h = &sign1.protected.header;
    let alg = alg_of(h)?;
    let claims = header_value(h, HEADER_CWT_CLAIMS)
        .ok_or_else(|| ScittError::Header("the protected header has no CWT claims (header 15) with iss and sub".into()))
        .and_then(Claims::from_value)?;
    let content_type = match &h.content_type {
        Some(coset::ContentType::Text(t)) => Some(t.clone()),
        Some(coset::ContentType::Assigned(a)) => Some(format!("coap/{}", *a as i64)),
        None => None,
    };
    let kid = (!h.key_id.is_empty()).then(|| String::from_utf8_lossy(&h.key_id).into_owned());
    Ok(Statement { id: sha256(bytes), alg, content_type, kid, claims, payload: sign1.payload.clone(), sign1 })
}

fn ed25519_verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key).verify(message, signature).is_ok()
}

impl Statement {
    /// Checks the statement's EdDSA signature with `public_key` (32 bytes).
    pub fn verify_ed25519(&self, public_key: &[u8]) -> Result<(), ScittError> {
        if self.alg != iana::Algorithm::EdDSA as i64 {
            return Err(ScittError::Header(format!(
                "the statement is signed with algorithm {}, not EdDSA (-8)",
                self.alg
            )));
        }
        let kid = self.kid.clone().unwrap_or_default();
        self.sign1
            .verify_signature(&[], |sig, m| if ed25519_verify(public_key, m, sig) { Ok(()) } else { Err(()) })
            .map_err(|()| ScittError::Signature(kid))
    }
}

/// The inclusion proof a COSE receipt carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptProof {
    /// The tree size.
    pub size: u64,
    /// The statement's leaf index.
    pub index: u64,
    /// The audit path, leaf side first.
    pub path: Vec<Hash>,
}

impl ReceiptProof {
    fn to_cbor(&self) -> Vec<u8> {
        let path = self.path.iter().map(|h| Value::Bytes(h.to_vec())).collect();
        let v = Value::Array(vec![Value::from(self.size), Value::from(self.index), Value::Array(path)]);
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = coset::cbor::ser::into_writer(&v, &mut out);
        out
    }

    fn from_cbor(bytes: &[u8]) -> Result<Self, ScittError> {
        let bad = |what: &str| ScittError::Proof(format!("the inclusion proof is not [size, index, [hashes]]: {what}"));
        let v: Value = coset::cbor::de::from_reader(bytes).map_err(|e| bad(&e.to_string()))?;
        let Value::Array(items) = v else { return Err(bad("not an array")) };
        let [size, index, Value::Array(path)] = items.as_slice() else { return Err(bad("not three members")) };
        let int = |v: &Value, name: &str| {
            v.as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| bad(&format!("{name} is not an unsigned integer")))
        };
        let path = path
            .iter()
            .map(|h| match h {
                Value::Bytes(b) => <[u8; 32]>::try_from(b.as_slice()).map_err(|_| bad("a hash is not 32 bytes")),
                _ => Err(bad("a hash is not a byte string")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { size: int(size, "size")?, index: int(index, "index")?, path })
    }
}

/// Signs a COSE receipt: the log's signature over the tree head `root` that `proof` leads to
/// from the statement (detached payload).
pub fn sign_receipt(proof: &ReceiptProof, root: &Hash, claims: &Claims, kid: &str, key: &Ed25519KeyPair) -> Vec<u8> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(kid.as_bytes().to_vec())
        .value(HEADER_VDS, Value::from(VDS_RFC9162_SHA256))
        .value(HEADER_CWT_CLAIMS, claims.to_value())
        .build();
    let proofs = Value::Map(vec![(Value::from(INCLUSION_PROOFS), Value::Array(vec![Value::Bytes(proof.to_cbor())]))]);
    let unprotected = HeaderBuilder::new().value(HEADER_VDP, proofs).build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .unprotected(unprotected)
        .create_detached_signature(root, &[], |m| key.sign(m).as_ref().to_vec())
        .build();
    sign1.to_tagged_vec().unwrap_or_default()
}

/// A receipt that verified: who issued it and where the statement is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The receipt's claims (`iss` is the log's origin, `sub` the statement id).
    pub claims: Claims,
    /// The proof.
    pub proof: ReceiptProof,
    /// The tree head it is signed over.
    pub root: Hash,
}

/// Checks a COSE receipt for `statement` (its bytes) with the log key `key_of` finds by the
/// receipt's `kid`: the inclusion proof leads from the statement's leaf to a head, and the
/// receipt's signature covers that head.
pub fn verify_receipt(
    receipt: &[u8],
    statement: &[u8],
    key_of: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<VerifiedReceipt, ScittError> {
    let sign1 = parse_sign1(receipt)?;
    let h = &sign1.protected.header;
    let kid = String::from_utf8_lossy(&h.key_id).into_owned();
    let public_key = key_of(&kid)
        .ok_or_else(|| ScittError::Header(format!("the receipt's signer {kid:?} is not a known log key")))?;
    if alg_of(h)? != iana::Algorithm::EdDSA as i64 {
        return Err(ScittError::Header("the receipt is not signed with EdDSA (-8)".into()));
    }
    match header_value(h, HEADER_VDS).and_then(Value::as_integer) {
        Some(v) if v == VDS_RFC9162_SHA256.into() => {}
        _ => {
            return Err(ScittError::Header(
                "the receipt's verifiable data structure (header 395) is not RFC9162_SHA256 (1)".into(),
            ));
        }
    }
    let claims = header_value(h, HEADER_CWT_CLAIMS)
        .ok_or_else(|| ScittError::Header("the receipt has no CWT claims (header 15)".into()))
        .and_then(Claims::from_value)?;
    let proofs = header_value(&sign1.unprotected, HEADER_VDP)
        .ok_or_else(|| ScittError::Header("the receipt has no proofs (unprotected header 396)".into()))?;
    let Value::Map(proofs) = proofs else {
        return Err(ScittError::Header("the proofs (header 396) are not a map".into()));
    };
    let inclusion = proofs
        .iter()
        .find(|(k, _)| k.as_integer() == Some(INCLUSION_PROOFS.into()))
        .and_then(|(_, v)| v.as_array())
        .and_then(|a| a.first())
        .and_then(Value::as_bytes)
        .ok_or_else(|| ScittError::Header("the proofs (header 396) hold no inclusion proof (-1)".into()))?;
    let proof = ReceiptProof::from_cbor(inclusion)?;
    let leaf = sha256(statement);
    let root = root_from_path(&leaf, proof.index, proof.size, &proof.path).ok_or_else(|| {
        ScittError::Proof(format!(
            "the inclusion proof of leaf {} in a tree of {} has the wrong length",
            proof.index, proof.size
        ))
    })?;
    sign1
        .verify_detached_signature(&root, &[], |sig, m| if ed25519_verify(&public_key, m, sig) { Ok(()) } else { Err(()) })
        .map_err(|()| {
            ScittError::Proof("the receipt's signature does not cover the head its proof leads to: the statement, the proof or the receipt was altered, or the key is not the log's".into())
        })?;
    Ok(VerifiedReceipt { claims, proof, root })
}

/// The leaf hash of a statement in the log (RFC 9162: SHA-256(0x00 ‖ SHA-256(statement))).
pub fn statement_leaf(statement: &[u8]) -> Hash {
    leaf_hash(&sha256(statement))
}

#[cfg(test)]
mod tests;
