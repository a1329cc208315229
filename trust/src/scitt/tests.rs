use std::collections::HashMap;

use ring::signature::KeyPair as _;

use super::*;
use crate::tlog::{self, Frontier, Nodes};

fn new_key() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
}

fn claims(sub: &str) -> Claims {
    Claims { iss: "fleetforge/control/acme".into(), sub: sub.into(), iat: Some(1_800_000_000) }
}

#[derive(Default)]
struct Mem(HashMap<(u32, u64), Hash>);

impl Nodes for Mem {
    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.0.get(&(level, index)).copied()
    }
}

#[test]
fn a_statement_round_trips_and_verifies() {
    let key = new_key();
    let bytes = sign_statement(b"{\"run\":\"r1\"}", RUN_CONTENT_TYPE, &claims("run:r1"), "capability-root-1", &key);
    assert_eq!(bytes[0], 0xd2, "tagged COSE_Sign1 (tag 18)");
    let s = parse_statement(&bytes).unwrap();
    assert_eq!(s.alg, -8);
    assert_eq!(s.content_type.as_deref(), Some(RUN_CONTENT_TYPE));
    assert_eq!(s.kid.as_deref(), Some("capability-root-1"));
    assert_eq!(s.claims, claims("run:r1"));
    assert_eq!(s.payload.as_deref(), Some(&b"{\"run\":\"r1\"}"[..]));
    assert_eq!(s.id, sha256(&bytes));
    s.verify_ed25519(key.public_key().as_ref()).unwrap();
    let other = new_key();
    assert!(matches!(s.verify_ed25519(other.public_key().as_ref()), Err(ScittError::Signature(_))));
}

#[test]
fn a_changed_byte_in_the_payload_breaks_the_signature() {
    let key = new_key();
    let mut bytes = sign_statement(b"{\"run\":\"r1\"}", RUN_CONTENT_TYPE, &claims("run:r1"), "k", &key);
    let at = bytes.windows(2).position(|w| w == b"r1").unwrap();
    bytes[at + 1] = b'2';
    let s = parse_statement(&bytes).unwrap();
    assert!(s.verify_ed25519(key.public_key().as_ref()).is_err());
}

#[test]
fn malformed_statements_are_refused_naming_the_problem() {
    assert!(matches!(parse_statement(b"not cbor"), Err(ScittError::NotCose(_))));
    // A COSE_Sign1 with no CWT claims.
    let key = new_key();
    let bare = CoseSign1Builder::new()
        .protected(HeaderBuilder::new().algorithm(iana::Algorithm::EdDSA).build())
        .payload(b"x".to_vec())
        .create_signature(&[], |m| key.sign(m).as_ref().to_vec())
        .build()
        .to_tagged_vec()
        .unwrap();
    let e = parse_statement(&bare).unwrap_err().to_string();
    assert!(e.contains("CWT claims (header 15)"), "{e}");
    // Claims without sub.
    let no_sub = CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .value(HEADER_CWT_CLAIMS, Value::Map(vec![(Value::from(1), Value::Text("me".into()))]))
                .build(),
        )
        .create_signature(&[], |m| key.sign(m).as_ref().to_vec())
        .build()
        .to_tagged_vec()
        .unwrap();
    let e = parse_statement(&no_sub).unwrap_err().to_string();
    assert!(e.contains("no sub (2)"), "{e}");
    // No algorithm.
    let no_alg = CoseSign1Builder::new()
        .protected(HeaderBuilder::new().value(HEADER_CWT_CLAIMS, claims("s").to_value()).build())
        .build()
        .to_tagged_vec()
        .unwrap();
    assert!(parse_statement(&no_alg).unwrap_err().to_string().contains("no algorithm (header 1)"));
    assert!(matches!(parse_statement(&vec![0u8; MAX_STATEMENT_BYTES + 1]), Err(ScittError::TooLarge(_))));
}

/// A log holding `n` statements; each receipt verifies, and altering the statement, the proof or
/// the head breaks it.
#[test]
fn receipts_prove_inclusion_in_the_log() {
    let key = new_key();
    let public = key.public_key().as_ref().to_vec();
    let statements: Vec<Vec<u8>> = (0..13)
        .map(|i| {
            sign_statement(format!("{{\"i\":{i}}}").as_bytes(), RUN_CONTENT_TYPE, &claims(&format!("s{i}")), "k", &key)
        })
        .collect();
    let mut mem = Mem::default();
    let mut frontier = Frontier::default();
    for s in &statements {
        for (level, index, hash) in frontier.push(&sha256(s)) {
            mem.0.insert((level, index), hash);
        }
    }
    let size = frontier.size;
    for (i, s) in statements.iter().enumerate() {
        let index = i as u64;
        let path = tlog::inclusion(&mem, index, size).unwrap();
        let root = tlog::root(&mem, size).unwrap();
        let proof = ReceiptProof { size, index, path };
        let receipt = sign_receipt(&proof, &root, &claims(&crate::canonical::hex(&sha256(s))), "k", &key);
        let v = verify_receipt(&receipt, s, |_| Some(public.clone())).unwrap();
        assert_eq!((v.proof.index, v.proof.size, v.root), (index, size, root));
        // Another statement's receipt does not prove this one.
        let other = &statements[(i + 1) % statements.len()];
        assert!(matches!(verify_receipt(&receipt, other, |_| Some(public.clone())), Err(ScittError::Proof(_))));
        // Another key.
        let stranger = new_key().public_key().as_ref().to_vec();
        assert!(verify_receipt(&receipt, s, |_| Some(stranger.clone())).is_err());
        assert!(verify_receipt(&receipt, s, |kid| (kid == "other").then(|| public.clone())).is_err());
    }
    // A changed byte anywhere in a receipt is caught, or makes it unreadable — except where the
    // signature does not reach and nothing proven changes: the proof's tree size (the signed head
    // is what counts, and the same path may fit another size) and the detached payload's `nil`
    // read as `undefined`. Either way the statement is still proven under the same signed head.
    let path = tlog::inclusion(&mem, 5, size).unwrap();
    let root = tlog::root(&mem, size).unwrap();
    let receipt = sign_receipt(&ReceiptProof { size, index: 5, path }, &root, &claims("s5"), "k", &key);
    let mut unsigned = 0;
    for at in 0..receipt.len() {
        let mut bad = receipt.clone();
        bad[at] ^= 0x01;
        if let Ok(v) = verify_receipt(&bad, &statements[5], |_| Some(public.clone())) {
            assert_eq!((v.root, v.proof.index), (root, 5), "byte {at} changed and the receipt proves something else");
            unsigned += 1;
        }
    }
    assert!(unsigned <= 2, "only the size and the nil payload bytes");
}
