use std::collections::HashMap;

use super::*;
use crate::merkle::{Tree, root_from_path};

fn new_key() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
}

#[derive(Default)]
struct Mem(HashMap<(u32, u64), Hash>);

impl Nodes for Mem {
    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.0.get(&(level, index)).copied()
    }
}

fn data(n: u64) -> Vec<Hash> {
    (0..n).map(|i| sha256(&i.to_be_bytes())).collect()
}

/// A log of `n` leaves, and the frontier after each append.
fn log(n: u64) -> (Mem, Vec<Frontier>) {
    let mut mem = Mem::default();
    let mut frontier = Frontier::default();
    let mut history = vec![frontier.clone()];
    for d in data(n) {
        for (level, index, hash) in frontier.push(&d) {
            assert!(mem.0.insert((level, index), hash).is_none(), "node ({level}, {index}) written twice");
        }
        history.push(frontier.clone());
    }
    (mem, history)
}

#[test]
fn heads_of_every_size_equal_the_batch_tree() {
    let (mem, history) = log(70);
    let leaves = data(70);
    assert_eq!(root(&mem, 0).unwrap(), sha256(b""));
    for size in 1..=70u64 {
        let expected = Tree::new(&leaves[..size as usize]).root();
        assert_eq!(root(&mem, size).unwrap(), expected, "size {size}");
        assert_eq!(history[size as usize].root(), expected, "frontier at size {size}");
        assert_eq!(Frontier::load(size, &mem).unwrap(), history[size as usize], "loaded frontier at size {size}");
    }
    // One stored node per leaf, plus at most one per leaf for the subtrees they complete.
    assert_eq!(mem.0.len(), 70 + 67, "70 leaves = 64 + 4 + 2: inner nodes 63 + 3 + 1");
}

#[test]
fn every_inclusion_proof_of_every_size_verifies() {
    let (mem, _) = log(40);
    let leaves = data(40);
    for size in 1..=40u64 {
        let tree = Tree::new(&leaves[..size as usize]);
        for index in 0..size {
            let path = inclusion(&mem, index, size).unwrap();
            assert_eq!(path, tree.audit_path(index as usize), "size {size} leaf {index}");
            let d = &leaves[index as usize];
            assert_eq!(root_from_path(d, index, size, &path), Some(tree.root()));
            if size > 1 {
                assert_ne!(root_from_path(d, (index + 1) % size, size, &path), Some(tree.root()));
            }
        }
    }
    assert_eq!(inclusion(&mem, 5, 5), Err(LogError::OutOfRange { index: 5, size: 5 }));
}

#[test]
fn every_consistency_proof_verifies_and_a_changed_one_does_not() {
    let (mem, _) = log(40);
    let heads: Vec<Hash> = (0..=40).map(|n| root(&mem, n).unwrap()).collect();
    for to in 1..=40u64 {
        for from in 1..=to {
            let proof = consistency(&mem, from, to).unwrap();
            let (a, b) = (&heads[from as usize], &heads[to as usize]);
            assert!(verify_consistency(from, to, a, b, &proof), "{from} -> {to}");
            assert!(proof.len() <= 2 * 64, "proof length");
            if from < to {
                assert!(!verify_consistency(from, to, b, b, &proof), "{from} -> {to} with the wrong old head");
                assert!(!verify_consistency(from, to, a, a, &proof), "{from} -> {to} with the wrong new head");
                for i in 0..proof.len() {
                    let mut changed = proof.clone();
                    changed[i][0] ^= 1;
                    assert!(!verify_consistency(from, to, a, b, &changed), "{from} -> {to}, element {i} changed");
                }
                assert!(!verify_consistency(from, to, a, b, &[]), "an empty proof proves nothing");
            }
        }
    }
    // A rewritten history is caught: a log whose 7th leaf differs is not an extension.
    let mut other = Mem::default();
    let mut frontier = Frontier::default();
    for (i, d) in data(20).into_iter().enumerate() {
        let d = if i == 6 { sha256(b"rewritten") } else { d };
        for (level, index, hash) in frontier.push(&d) {
            other.0.insert((level, index), hash);
        }
    }
    let proof = consistency(&other, 10, 20).unwrap();
    assert!(!verify_consistency(10, 20, &heads[10], &root(&other, 20).unwrap(), &proof));
    assert_eq!(consistency(&mem, 0, 3), Err(LogError::Sizes { from: 0, to: 3 }));
    assert_eq!(consistency(&mem, 4, 3), Err(LogError::Sizes { from: 4, to: 3 }));
}

#[test]
fn a_missing_node_is_named() {
    let (mut mem, _) = log(8);
    mem.0.remove(&(2, 1));
    assert_eq!(inclusion(&mem, 0, 8), Err(LogError::Missing { level: 2, index: 1 }));
    mem.0.remove(&(3, 0));
    assert_eq!(root(&mem, 8), Err(LogError::Missing { level: 3, index: 0 }));
    assert_eq!(Frontier::load(8, &mem), Err(LogError::Missing { level: 3, index: 0 }));
}

#[test]
fn a_checkpoint_is_a_signed_note_that_verifies_with_its_key_only() {
    let key = new_key();
    let (mem, _) = log(13);
    let cp = Checkpoint { origin: "fleetforge.test/log/acme".into(), size: 13, root: root(&mem, 13).unwrap() };
    let note = cp.sign("fleetforge.test/log/acme", &key);
    let mut lines = note.lines();
    assert_eq!(lines.next(), Some("fleetforge.test/log/acme"));
    assert_eq!(lines.next(), Some("13"));
    assert_eq!(STANDARD.decode(lines.next().unwrap()).unwrap(), cp.root);
    assert_eq!(lines.next(), Some(""));
    let sig_line = lines.next().unwrap();
    assert!(sig_line.starts_with("\u{2014} fleetforge.test/log/acme "), "{sig_line}");
    assert_eq!(Checkpoint::verify(&note, "fleetforge.test/log/acme", key.public_key().as_ref()), Ok(cp.clone()));

    let other = new_key();
    assert!(matches!(
        Checkpoint::verify(&note, "fleetforge.test/log/acme", other.public_key().as_ref()),
        Err(NoteError::Signature(_))
    ));
    let grown = note.replacen("\n13\n", "\n14\n", 1);
    assert!(matches!(
        Checkpoint::verify(&grown, "fleetforge.test/log/acme", key.public_key().as_ref()),
        Err(NoteError::Signature(_))
    ));
    assert!(matches!(Checkpoint::verify("just text", "x", key.public_key().as_ref()), Err(NoteError::Format(_))));
    let vkey = verifier_key("fleetforge.test/log/acme", key.public_key().as_ref());
    // The key's base64 may itself hold '+': name and hash are the first two fields.
    let parts: Vec<&str> = vkey.splitn(3, '+').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1].len(), 8);
    assert_eq!(STANDARD.decode(parts[2]).unwrap()[1..], *key.public_key().as_ref());
}
