//! Merkle trees over receipt hashes (RFC 9162 §2.1): leaf = H(0x00 ‖ d), node = H(0x01 ‖ l ‖ r).
//!
//! One ed25519 signature costs about 24 µs here, more than the whole budget for recording a
//! call, so the proxy signs batches: it builds a tree over the hashes of the receipts written in
//! the last few milliseconds and signs the root once. Every receipt still verifies on its own: it
//! carries its leaf index, the batch size and the audit path, from which anyone recomputes the
//! root and checks the one signature.

use crate::canonical::sha256;

/// A 32-byte SHA-256 value.
pub type Hash = [u8; 32];

/// H(0x00 ‖ data).
pub fn leaf_hash(data: &Hash) -> Hash {
    let mut buf = [0u8; 33];
    buf[1..].copy_from_slice(data);
    sha256(&buf)
}

/// H(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    sha256(&buf)
}

/// A tree built over a batch of receipt hashes.
///
/// Built level by level, pairing nodes left to right and carrying an unpaired last node up
/// unchanged: this yields exactly RFC 9162's `MTH` (left subtree = the largest power of two), and
/// every audit path is read off the levels in O(log n).
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[0]` are the leaf hashes; the last level holds the root alone.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree over `data` (receipt hashes, in batch order). `data` must not be empty.
    pub fn new(data: &[Hash]) -> Self {
        let mut levels = vec![data.iter().map(leaf_hash).collect::<Vec<_>>()];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let next = below
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [only] => *only,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    /// The root.
    pub fn root(&self) -> Hash {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or_else(|| sha256(b""))
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The audit path of leaf `index` (RFC 9162 §2.1.3.1), leaf side first.
    pub fn audit_path(&self, index: usize) -> Vec<Hash> {
        let mut out = Vec::with_capacity(self.levels.len());
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                out.push(*sibling);
            }
            i >>= 1;
        }
        out
    }
}

/// Recomputes the root from a receipt hash, its index, the tree size and its audit path
/// (RFC 9162 §2.1.3.2). `None` when the path cannot belong to such a tree.
pub fn root_from_path(data: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = leaf_hash(data);
    for p in path {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::{Tree, leaf_hash, node_hash, root_from_path};
    use crate::canonical::sha256;

    #[test]
    fn every_leaf_of_every_size_proves_the_root() {
        for n in 1..=33usize {
            let data: Vec<_> = (0..n).map(|i| sha256(&i.to_le_bytes())).collect();
            let tree = Tree::new(&data);
            for (i, d) in data.iter().enumerate() {
                let path = tree.audit_path(i);
                assert_eq!(root_from_path(d, i as u64, n as u64, &path), Some(tree.root()), "n={n} i={i}");
                // A proof for the wrong index, size or data fails.
                if n > 1 {
                    assert_ne!(root_from_path(d, ((i + 1) % n) as u64, n as u64, &path), Some(tree.root()));
                }
                let other = sha256(b"other");
                assert_ne!(root_from_path(&other, i as u64, n as u64, &path), Some(tree.root()));
            }
        }
    }

    #[test]
    fn small_trees_match_the_rfc_shape() {
        let d: Vec<_> = (0..3u8).map(|i| sha256(&[i])).collect();
        let t = Tree::new(&d);
        let expected = node_hash(&node_hash(&leaf_hash(&d[0]), &leaf_hash(&d[1])), &leaf_hash(&d[2]));
        assert_eq!(t.root(), expected);
        assert_eq!(Tree::new(&d[..1]).root(), leaf_hash(&d[0]));
    }
}
