//! Transparency log: an append-only Merkle tree over receipt hashes (RFC 9162 §2.1), inclusion
//! and consistency proofs with their verification, and signed tree heads as C2SP
//! `tlog-checkpoint` signed notes.
//!
//! A log of `n` leaves is kept as its perfect subtrees: node `(level, index)` is the hash of
//! leaves `index·2^level .. (index+1)·2^level`, stored once that range is complete. Appending a
//! leaf adds its leaf hash and one node per subtree it completes (one on average), and any tree
//! head or proof of any size up to `n` is computed from at most `2·log2(n)` of those nodes each
//! (a proof of a range that is not a perfect subtree splits it as RFC 9162's `MTH` does). Where the
//! nodes live is the caller's: [`Nodes`] reads them (control's database, or a map in tests).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::canonical::sha256;
use crate::merkle::{Hash, leaf_hash, node_hash};

/// The `(level, index)` of a perfect subtree and its hash.
pub type Node = (u32, u64, Hash);

/// Reads stored nodes.
pub trait Nodes {
    /// The hash of the complete subtree `(level, index)`, if stored.
    fn node(&self, level: u32, index: u64) -> Option<Hash>;
}

impl Nodes for std::collections::HashMap<(u32, u64), Hash> {
    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.get(&(level, index)).copied()
    }
}

/// Records the nodes a computation reads, answering each with a placeholder.
#[derive(Debug, Default)]
struct Recorder(std::cell::RefCell<Vec<(u32, u64)>>);

impl Nodes for Recorder {
    fn node(&self, level: u32, index: u64) -> Option<Hash> {
        self.0.borrow_mut().push((level, index));
        Some([0; 32])
    }
}

/// The nodes `compute` (a head or proof over [`Nodes`]) reads: what to fetch from storage
/// before running it for real. Which nodes a head or proof reads depends on the sizes and
/// indexes asked for, never on the hashes.
pub fn positions<T, E>(compute: impl Fn(&dyn Nodes) -> Result<T, E>) -> Vec<(u32, u64)> {
    let recorder = Recorder::default();
    let _ = compute(&recorder);
    let mut wanted = recorder.0.into_inner();
    wanted.sort_unstable();
    wanted.dedup();
    wanted
}

/// Why a proof or a head cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// A leaf index at or past the tree size.
    #[error("leaf {index} is not in a tree of size {size}")]
    OutOfRange {
        /// The leaf asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof between sizes that are not `0 < from ≤ to`.
    #[error("no consistency proof from size {from} to size {to}: it needs 0 < from <= to")]
    Sizes {
        /// The older size.
        from: u64,
        /// The newer size.
        to: u64,
    },
    /// A node the log should hold is missing from its storage.
    #[error("the log's storage lacks node (level {level}, index {index}): it is corrupt or was written partly")]
    Missing {
        /// Its level.
        level: u32,
        /// Its index.
        index: u64,
    },
}

/// The right border of a log: its size and the perfect subtrees that make it up, largest first
/// (one per bit set in the size). Enough to append leaves and compute the head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    /// Number of leaves.
    pub size: u64,
    /// `(level, hash)` of each perfect subtree, left to right.
    pub nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The `(level, index)` of each node on the border of a log of `size` leaves, left to right.
    pub fn positions(size: u64) -> Vec<(u32, u64)> {
        let mut start = 0u64;
        let mut out = Vec::new();
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                out.push((level, start >> level));
                start += 1u64 << level;
            }
        }
        out
    }

    /// The border of a log of `size` leaves read from `nodes`.
    pub fn load(size: u64, nodes: &(impl Nodes + ?Sized)) -> Result<Self, LogError> {
        let nodes = Self::positions(size)
            .into_iter()
            .map(|(level, index)| {
                nodes.node(level, index).map(|h| (level, h)).ok_or(LogError::Missing { level, index })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { size, nodes })
    }

    /// Appends the receipt hash `data`; returns the nodes to store: its leaf hash and each
    /// subtree it completes.
    pub fn push(&mut self, data: &Hash) -> Vec<Node> {
        let index = self.size;
        let leaf = leaf_hash(data);
        let mut created = vec![(0, index, leaf)];
        self.nodes.push((0, leaf));
        while let [.., (l, left), (r, right)] = self.nodes[..] {
            if l != r {
                break;
            }
            let merged = node_hash(&left, &right);
            self.nodes.truncate(self.nodes.len() - 2);
            self.nodes.push((l + 1, merged));
            created.push((l + 1, index >> (l + 1), merged));
        }
        self.size += 1;
        created
    }

    /// The tree head (RFC 9162 `MTH`); SHA-256 of nothing for an empty log.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some((_, last)) = nodes.next() else { return sha256(b"") };
        nodes.fold(*last, |right, (_, left)| node_hash(left, &right))
    }
}

/// RFC 9162 `MTH` of leaves `start..end` (`start < end`, and `start` aligned as every range of a
/// proof is).
fn subtree(nodes: &(impl Nodes + ?Sized), start: u64, end: u64) -> Result<Hash, LogError> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros();
        let index = start >> level;
        return nodes.node(level, index).ok_or(LogError::Missing { level, index });
    }
    let k = split(n);
    Ok(node_hash(&subtree(nodes, start, start + k)?, &subtree(nodes, start + k, end)?))
}

/// The largest power of two smaller than `n` (`n > 1`).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The head of the first `size` leaves.
pub fn root(nodes: &(impl Nodes + ?Sized), size: u64) -> Result<Hash, LogError> {
    if size == 0 {
        return Ok(sha256(b""));
    }
    subtree(nodes, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1), leaf
/// side first; [`crate::merkle::root_from_path`] checks it.
pub fn inclusion(nodes: &(impl Nodes + ?Sized), index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
    if index >= size {
        return Err(LogError::OutOfRange { index, size });
    }
    let mut path = Vec::new();
    let (mut start, mut end) = (0, size);
    // Descend to the leaf, noting each sibling subtree; the path lists them bottom-up.
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            path.push(subtree(nodes, start + k, end)?);
            end = start + k;
        } else {
            path.push(subtree(nodes, start, start + k)?);
            start += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The consistency proof between the trees of `from` and `to` leaves (RFC 9162 §2.1.4.1);
/// [`verify_consistency`] checks it.
pub fn consistency(nodes: &(impl Nodes + ?Sized), from: u64, to: u64) -> Result<Vec<Hash>, LogError> {
    if from == 0 || from > to {
        return Err(LogError::Sizes { from, to });
    }
    let mut proof = Vec::new();
    let (mut m, mut start, end) = (from, 0u64, to);
    let mut whole = true;
    let mut end = end;
    // SUBPROOF(m, D[start:end], whole), iteratively; nodes are collected top-down.
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(subtree(nodes, start, end)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            proof.push(subtree(nodes, start + k, end)?);
            end = start + k;
        } else {
            proof.push(subtree(nodes, start, start + k)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): the tree of `to` leaves with head `to_root`
/// extends the tree of `from` leaves with head `from_root`.
pub fn verify_consistency(from: u64, to: u64, from_root: &Hash, to_root: &Hash, proof: &[Hash]) -> bool {
    if from == 0 || from > to {
        return false;
    }
    if from == to {
        return proof.is_empty() && from_root == to_root;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if from.is_power_of_two() {
        path.push(*from_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else { return false };
    let (mut f_n, mut s_n) = (from - 1, to - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *from_root && sr == *to_root && s_n == 0
}

/// A signed tree head in the C2SP `tlog-checkpoint` format: origin line, size, base64 root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (`fleetforge.dev/log/{tenant}` or as configured).
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// The head.
    pub root: Hash,
}

/// Why a signed note is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a checkpoint followed by a blank line and signature lines.
    #[error("not a signed checkpoint: {0}")]
    Format(String),
    /// No signature line by the expected key verifies.
    #[error("no valid signature by {0} on the checkpoint")]
    Signature(String),
}

/// The 4-byte key hash of an ed25519 note key (C2SP signed-note): the first bytes of
/// SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
pub fn note_key_hash(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut m = Vec::with_capacity(name.len() + 2 + public_key.len());
    m.extend_from_slice(name.as_bytes());
    m.push(b'\n');
    m.push(0x01);
    m.extend_from_slice(public_key);
    let h = sha256(&m);
    [h[0], h[1], h[2], h[3]]
}

/// The verifier key string witness tooling reads: `name+hash+base64(0x01 ‖ key)`.
pub fn verifier_key(name: &str, public_key: &[u8]) -> String {
    let mut typed = vec![0x01];
    typed.extend_from_slice(public_key);
    format!("{name}+{}+{}", crate::canonical::hex(&note_key_hash(name, public_key)), STANDARD.encode(typed))
}

impl Checkpoint {
    /// The note text that is signed (ends with a newline).
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root))
    }

    /// The signed note: the body, a blank line, and one signature line by `key` named `name`.
    pub fn sign(&self, name: &str, key: &Ed25519KeyPair) -> String {
        let body = self.body();
        let mut sig = note_key_hash(name, key.public_key().as_ref()).to_vec();
        sig.extend_from_slice(key.sign(body.as_bytes()).as_ref());
        format!("{body}\n\u{2014} {name} {}\n", STANDARD.encode(sig))
    }

    /// Parses a signed note and checks the signature of the key `name` with `public_key`.
    pub fn verify(note: &str, name: &str, public_key: &[u8]) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Format(why.to_owned());
        let (body, sigs) = note.split_once("\n\n").ok_or_else(|| bad("no blank line before the signatures"))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or_else(|| bad("no origin line"))?.to_owned();
        let size = lines
            .next()
            .and_then(|s| (s == "0" || !s.starts_with('0')).then(|| s.parse::<u64>().ok()).flatten())
            .ok_or_else(|| bad("the second line is not a tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the third line is not a base64 SHA-256 root"))?;
        let hash = note_key_hash(name, public_key);
        let key = UnparsedPublicKey::new(&ED25519, public_key);
        let signed = sigs.lines().filter_map(|line| line.strip_prefix("\u{2014} ")).any(|line| {
            let Some((who, sig)) = line.split_once(' ') else { return false };
            let Ok(sig) = STANDARD.decode(sig) else { return false };
            who == name && sig.len() == 68 && sig[..4] == hash && key.verify(body.as_bytes(), &sig[4..]).is_ok()
        });
        if !signed {
            return Err(NoteError::Signature(name.to_owned()));
        }
        Ok(Self { origin, size, root })
    }
}

#[cfg(test)]
mod tests;
