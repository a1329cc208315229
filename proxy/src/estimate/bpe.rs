//! Token counts by OpenAI's byte-pair encodings in a few MiB.
//!
//! `tiktoken`'s encoder keeps every token three times (an encoder map, a decoder map and a sorted
//! list, each token its own allocation) and 256 copies of its pattern per vocabulary: about 58 MiB
//! resident for `o200k_base` and `cl100k_base` together, more than the rest of the proxy. A budget
//! only needs how many tokens a text is, so [`Bpe`] keeps each token's bytes once, in rank order in
//! one buffer, with an open-addressed table of ranks by the bytes' hash (about 4 MiB for
//! `o200k_base`). It splits text with the same pattern, treats special tokens the same way and
//! merges byte pairs in the same order as `tiktoken`'s `encode_with_special_tokens`, so its counts
//! are the same (`tests.rs` checks them against `tiktoken` on the chat corpus and on tricky text).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use fancy_regex::Regex;

/// `cl100k_base`'s split pattern (as `tiktoken` has it).
const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// Pieces at least this long are merged with a heap instead of rescanning (as `tiktoken` does):
/// a megabyte of one letter costs `n log n`, not `n²`.
const LARGE_PIECE: usize = 100;

/// One of the two vocabularies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vocabulary {
    /// GPT-4o, GPT-4.1, GPT-5, the `o` series.
    O200kBase,
    /// GPT-4, GPT-3.5, the ada-002 embeddings.
    Cl100kBase,
}

impl Vocabulary {
    fn pattern(self) -> &'static str {
        match self {
            Self::O200kBase => tiktoken_rs::O200K_BASE_PAT_STR,
            Self::Cl100kBase => CL100K_PATTERN,
        }
    }

    fn specials(self) -> &'static [&'static str] {
        use tiktoken_rs::{ENDOFPROMPT, ENDOFTEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX};
        match self {
            Self::O200kBase => &[ENDOFTEXT, ENDOFPROMPT],
            Self::Cl100kBase => &[ENDOFTEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, ENDOFPROMPT],
        }
    }
}

/// A compact byte-pair encoder that only counts.
#[derive(Debug)]
pub struct Bpe {
    /// Every token's bytes, in rank order.
    bytes: Vec<u8>,
    /// Where each rank's bytes end in `bytes` (they start where the previous rank's end).
    ends: Vec<u32>,
    /// Open addressing: rank + 1 at the slot of its bytes' hash, or 0 for an empty slot.
    slots: Vec<u32>,
    pattern: Regex,
    /// Special token texts: each counts as one token wherever it appears.
    specials: &'static [&'static str],
}

impl Bpe {
    /// Builds `vocabulary` from `tiktoken`'s ranks (read once through its decoder, then dropped).
    /// `None` when they are not what this module expects (a changed `tiktoken-rs`): the callers
    /// then count as for a model no tokenizer knows.
    pub fn load(vocabulary: Vocabulary) -> Option<Self> {
        let full = match vocabulary {
            Vocabulary::O200kBase => tiktoken_rs::o200k_base(),
            Vocabulary::Cl100kBase => tiktoken_rs::cl100k_base(),
        }
        .ok()?;
        let specials = vocabulary.specials();
        let special_ranks: Vec<u32> =
            specials.iter().filter_map(|s| full.encode_with_special_tokens(s).first().copied()).collect();
        // Straight into one buffer: no token lives in an allocation of its own, so what
        // tiktoken allocated can all be returned when it is dropped.
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for rank in 0u32.. {
            if special_ranks.contains(&rank) {
                break;
            }
            match full.decode_bytes(&[rank]) {
                Ok(token) => {
                    bytes.extend_from_slice(&token);
                    ends.push(u32::try_from(bytes.len()).ok()?);
                }
                Err(_) => break,
            }
        }
        drop(full);
        Self::from_parts(bytes, ends, vocabulary.pattern(), specials)
    }

    /// An encoder of `tokens` (in rank order), splitting text with `pattern`. `None` when the
    /// pattern does not compile, there are more than 2³² bytes or a token is repeated.
    #[cfg(test)]
    pub fn new<'a>(
        tokens: impl Iterator<Item = &'a [u8]>,
        pattern: &str,
        specials: &'static [&'static str],
    ) -> Option<Self> {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for token in tokens {
            bytes.extend_from_slice(token);
            ends.push(u32::try_from(bytes.len()).ok()?);
        }
        Self::from_parts(bytes, ends, pattern, specials)
    }

    /// The encoder of the tokens in `bytes` (rank r ends at `ends[r]`, starts where r - 1 ends).
    fn from_parts(
        mut bytes: Vec<u8>,
        mut ends: Vec<u32>,
        pattern: &str,
        specials: &'static [&'static str],
    ) -> Option<Self> {
        let pattern = Regex::new(pattern).ok()?;
        bytes.shrink_to_fit();
        ends.shrink_to_fit();
        let slots = vec![0; (ends.len() * 2).next_power_of_two().max(2)];
        let mut bpe = Self { bytes, ends, slots, pattern, specials };
        let mask = bpe.slots.len() - 1;
        for rank in 0..u32::try_from(bpe.ends.len()).ok()? {
            let token = bpe.token(rank);
            let mut slot = hash(token) & mask;
            while bpe.slots[slot] != 0 {
                if bpe.token(bpe.slots[slot] - 1) == token {
                    return None;
                }
                slot = (slot + 1) & mask;
            }
            bpe.slots[slot] = rank + 1;
        }
        Some(bpe)
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + 4 * (self.ends.capacity() + self.slots.capacity())
    }

    fn token(&self, rank: u32) -> &[u8] {
        let rank = rank as usize;
        let start = if rank == 0 { 0 } else { self.ends[rank - 1] as usize };
        &self.bytes[start..self.ends[rank] as usize]
    }

    /// The rank of the token spelled `piece`, if there is one.
    fn rank(&self, piece: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut slot = hash(piece) & mask;
        loop {
            let entry = self.slots[slot];
            if entry == 0 {
                return None;
            }
            if self.token(entry - 1) == piece {
                return Some(entry - 1);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// How many tokens `text` is, special tokens allowed (one each, as `tiktoken`'s
    /// `encode_with_special_tokens` has them).
    pub fn count(&self, text: &str) -> usize {
        let mut total = 0;
        let mut start = 0;
        loop {
            match self.next_special(text, start) {
                Some((at, len)) => {
                    total += self.count_ordinary(&text[start..at]) + 1;
                    start = at + len;
                }
                None => return total + self.count_ordinary(&text[start..]),
            }
        }
    }

    /// The leftmost special token at or after `from`: (where, length). No special token is a
    /// prefix of another, so at most one starts at a place.
    fn next_special(&self, text: &str, from: usize) -> Option<(usize, usize)> {
        let rest = text.get(from..)?;
        memchr::memmem::find_iter(rest.as_bytes(), b"<|").find_map(|at| {
            let tail = &rest[at..];
            self.specials.iter().find(|s| tail.starts_with(**s)).map(|s| (from + at, s.len()))
        })
    }

    fn count_ordinary(&self, text: &str) -> usize {
        let mut total = 0;
        for piece in self.pattern.find_iter(text) {
            match piece {
                Ok(piece) => {
                    let piece = piece.as_str().as_bytes();
                    total += if self.rank(piece).is_some() { 1 } else { self.merge(piece) };
                }
                // The pattern's backtracking limit (not reached by these patterns in practice):
                // count the rest a token a byte, an upper bound.
                Err(_) => return total + text.len(),
            }
        }
        total
    }

    /// Tokens of a piece that is not one token: its byte pairs merged lowest rank first.
    fn merge(&self, piece: &[u8]) -> usize {
        if piece.len() < 2 {
            return piece.len();
        }
        if piece.len() >= LARGE_PIECE {
            return self.merge_large(piece);
        }
        let pair = |parts: &[(usize, u32)], i: usize| {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0]).unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        // (start, rank of the pair starting there); the last two are sentinels.
        let mut parts: Vec<(usize, u32)> = (0..piece.len() - 1)
            .map(|i| (i, self.rank(&piece[i..i + 2]).unwrap_or(u32::MAX)))
            .chain([(piece.len() - 1, u32::MAX), (piece.len(), u32::MAX)])
            .collect();
        while let Some((i, _)) = lowest(&parts[..parts.len() - 1]) {
            if i > 0 {
                parts[i - 1].1 = pair(&parts, i - 1);
            }
            parts[i].1 = pair(&parts, i);
            parts.remove(i + 1);
        }
        parts.len() - 1
    }

    /// [`Self::merge`] for long pieces: the candidate merges on a heap, a part's start linked
    /// to its neighbours, stale candidates skipped when they surface.
    fn merge_large(&self, piece: &[u8]) -> usize {
        let n = piece.len();
        // For a part starting at i: where it ends, where the part before it starts, and the rank
        // of merging it with the next part (u32::MAX: none).
        let mut end: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next_rank = vec![u32::MAX; n];
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some(rank) = self.rank(&piece[i..i + 2]) {
                next_rank[i] = rank;
                heap.push(Reverse((rank, i)));
            }
        }
        let mut parts = n;
        while let Some(Reverse((rank, left))) = heap.pop() {
            if rank != next_rank[left] {
                continue;
            }
            let right = end[left];
            end[left] = end[right];
            parts -= 1;
            next_rank[right] = u32::MAX;
            // Proposes merging the part at `start` with the one ending at `stop` (none past the end).
            let propose = |start: usize, stop: usize, next_rank: &mut [u32], heap: &mut BinaryHeap<_>| {
                next_rank[start] = u32::MAX;
                if stop <= n
                    && let Some(rank) = self.rank(&piece[start..stop])
                {
                    next_rank[start] = rank;
                    heap.push(Reverse((rank, start)));
                }
            };
            let after = end[left];
            if after < n {
                prev[after] = left;
            }
            propose(left, if after < n { end[after] } else { n + 1 }, &mut next_rank, &mut heap);
            if left > 0 {
                propose(prev[left], after, &mut next_rank, &mut heap);
            }
        }
        parts
    }
}

/// The first lowest-ranked pair: (index, rank), or `None` when no pair merges.
fn lowest(parts: &[(usize, u32)]) -> Option<(usize, u32)> {
    let mut best: Option<(usize, u32)> = None;
    for (i, &(_, rank)) in parts.iter().enumerate() {
        if rank != u32::MAX && best.is_none_or(|(_, b)| rank < b) {
            best = Some((i, rank));
        }
    }
    best
}

/// FxHash-style: eight bytes at a time, rotate, xor, multiply.
fn hash(bytes: &[u8]) -> usize {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // The high bits mix best; the table masks the low ones.
    (h ^ (h >> 29)) as usize
}
