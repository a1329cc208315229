//! The durable receipt spool: nothing recorded is lost across crashes, restarts or control
//! outages.
//!
//! Layout under `$FLEETFORGE_HOME/spool/`: append-only segment files `NNNNNNNNNNNNNNNN.seg`, a
//! `heads.json` snapshot of chain heads (each with what the run's receipts charged to its budget,
//! [`Spent`]), `rejected.jsonl` (receipts control refused, kept for an
//! operator), and `.lock` (held while a proxy uses the spool, so two proxies never share one).
//!
//! Records are framed `[u32 length][u32 CRC-32 of payload][payload]` (little-endian), payload
//! `[kind][bytes]`: kind 3 is a receipt — its hash (32 bytes), its id (one length byte, then the
//! id) and its body in canonical JSON (whose SHA-256 is the hash), so the shipper reads receipts
//! back without parsing or hashing them; kind 1, written by earlier versions, is a bare body;
//! kind 2 is a batch seal — the key id, Merkle root, signature and the leaf hashes it covers.
//!
//! Invariants:
//! - A receipt is written (`write(2)`, so it survives `kill -9`) by the call's own thread before
//!   the call's last response byte is released, under the same lock that assigns its chain
//!   position: spool order is chain order.
//! - The sealer signs what was written in the last few milliseconds as one batch, appends the
//!   seal and then `fdatasync`s (group commit).
//! - A segment is deleted only when it is closed and control has acknowledged every receipt in it;
//!   `heads.json` is rewritten first, so chain heads survive the deletion.
//! - On start, a torn tail (a frame cut short or failing its checksum) is cut off with a warning;
//!   receipts without a seal are sealed again (a receipt's hash covers its body only, so a new
//!   seal is as good as the lost one); every sealed receipt still on disk is shipped again —
//!   control ingest is idempotent.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use fleetforge_trust::canonical::{hex, sha256, unhex32};
use fleetforge_trust::merkle::{Hash, Tree};
use fleetforge_trust::receipt::{BatchProof, Chain, ReceiptBody, Signature, genesis_hex};
use fleetforge_trust::sign::SigningKey;
use serde::{Deserialize, Serialize};

/// A bare receipt body (earlier versions; still read).
const KIND_RECEIPT: u8 = 1;
/// A receipt with its hash and id in front of the body.
const KIND_RECEIPT_INDEXED: u8 = 3;
const KIND_SEAL: u8 = 2;
/// Frames larger than this are corruption, not receipts.
const MAX_FRAME: u32 = 16 << 20;

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Disk IO failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// Another process holds the spool.
    #[error("spool {0} is in use by another fleetforge-proxy; give each proxy its own FLEETFORGE_HOME")]
    Locked(PathBuf),
    /// A receipt could not be serialized.
    #[error("cannot serialize a receipt: {0}")]
    Encode(String),
}

/// Spool limits and timing.
#[derive(Debug, Clone)]
pub struct SpoolLimits {
    /// Refuse appends above this many bytes on disk.
    pub max_bytes: u64,
    /// Roll to a new segment at this size.
    pub segment_bytes: u64,
    /// How long the sealer gathers receipts before signing.
    pub seal_interval: Duration,
    /// fdatasync after each seal.
    pub fsync: bool,
    /// Refuse appends while the disk under the spool has less than this many bytes free
    /// (checked at most every [`DISK_CHECK_MS`]); 0: never check.
    pub min_free_disk: u64,
}

/// How often the free space under the spool is checked, at most.
pub const DISK_CHECK_MS: u64 = 100;

/// A signed receipt ready to ship, and the segment holding it (for the acknowledgement).
#[derive(Debug, Clone)]
pub struct Shippable {
    /// The receipt id (for matching control's per-item results).
    pub id: String,
    /// The complete receipt JSON (body + signature).
    pub json: Vec<u8>,
    /// The segment the receipt body lives in.
    pub segment: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Head {
    seq: u64,
    #[serde(with = "hex_hash")]
    hash: Hash,
    /// What the run's receipts in this lane charged, so a restarted proxy's budget ledger starts
    /// where it stopped.
    #[serde(default)]
    spent: Spent,
}

/// What a run's receipts charged to its budget: tokens and cost (reported usage, or the whole
/// reservation when the receipt says it was estimated) and calls admitted under a budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// Tokens.
    pub tokens: u64,
    /// Cost, millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// Calls admitted under a budget.
    pub calls: u64,
}

impl Spent {
    /// Adds what one receipt charged.
    fn add(&mut self, body: &ReceiptBody) {
        let usage = body.usage.as_ref();
        let reported = usage.map_or(0, |u| u.input_tokens.unwrap_or(0).saturating_add(u.output_tokens.unwrap_or(0)));
        let reported_cost = usage.and_then(|u| u.cost_micro_usd).unwrap_or(0);
        let (tokens, cost) = match &body.budget {
            Some(b) if b.estimated => (b.reserved_tokens, b.cost_reserved_micro_usd.unwrap_or(0)),
            _ => (reported, reported_cost),
        };
        self.tokens = self.tokens.saturating_add(tokens);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(cost);
        self.calls += u64::from(body.budget.is_some());
    }
}

mod hex_hash {
    use fleetforge_trust::canonical::{hex, unhex32};
    use fleetforge_trust::merkle::Hash;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        unhex32(&s).ok_or_else(|| serde::de::Error::custom("not a 32-byte hex hash"))
    }
}

/// A seal record: which receipt hashes one signature covers.
#[derive(Debug, Serialize, Deserialize)]
struct SealRecord {
    key_id: String,
    root: String,
    sig: String,
    leaves: Vec<String>,
}

impl SealRecord {
    /// The leaves and their tree, if the record is well formed and its root matches.
    fn tree(&self) -> Option<(Vec<Hash>, Tree)> {
        let leaves: Vec<Hash> = self.leaves.iter().map(|l| unhex32(l)).collect::<Option<_>>()?;
        let tree = Tree::new(&leaves);
        (!leaves.is_empty() && unhex32(&self.root) == Some(tree.root())).then_some((leaves, tree))
    }
}

/// A receipt written and not yet sealed.
#[derive(Debug)]
struct Pending {
    hash: Hash,
    segment: u64,
}

#[derive(Debug, Default, Clone)]
struct SegmentState {
    bytes: u64,
    receipts: u64,
    acked: u64,
    unsealed: u64,
}

#[derive(Debug)]
struct Inner {
    active_id: u64,
    active: File,
    segments: BTreeMap<u64, SegmentState>,
    heads: HashMap<String, Head>,
    pending: Vec<Pending>,
    /// Closed segments not yet synced to disk.
    to_sync: Vec<File>,
}

/// The spool. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    key: SigningKey,
    limits: SpoolLimits,
    inner: Mutex<Inner>,
    wake: Condvar,
    /// Woken after every seal, for the shipper.
    sealed: tokio::sync::Notify,
    bytes: AtomicU64,
    stopping: AtomicBool,
    /// Marks the chain position in bodies serialized outside the lock.
    placeholder: Placeholder,
    /// When the spool opened: the clock of `disk_checked_ms`.
    opened: std::time::Instant,
    /// When the free disk space was last checked, ms after `opened`.
    disk_checked_ms: AtomicU64,
    /// Free disk space under the spool, bytes, at the last check (or 0 after a failed write).
    disk_free: AtomicU64,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_owned(), source }
}

/// Appends `bytes` to `file`; on a failure part-way (a full disk), cuts what was written, so the
/// segment never holds a torn frame that later frames would sit behind.
fn write_or_undo(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => return undo(file, written, io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return undo(file, written, e),
        }
    }
    Ok(())
}

fn undo(file: &mut File, written: usize, error: io::Error) -> io::Result<()> {
    if written > 0 {
        let len = file.metadata()?.len();
        file.set_len(len.saturating_sub(written as u64))?;
    }
    Err(error)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

pub(crate) fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    frame_parts(kind, &[payload])
}

/// One frame whose payload is `parts` concatenated, built in a single allocation.
fn frame_parts(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len + 8);
    out.extend_from_slice(&[0; 8]);
    out.push(kind);
    for part in parts {
        out.extend_from_slice(part);
    }
    finish_frame(&mut out);
    out
}

/// Fills in the length and CRC-32 of a frame built after 8 placeholder header bytes.
fn finish_frame(frame: &mut [u8]) {
    let len = (frame.len() - 8) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The frame of an indexed receipt record whose body `write_body` appends, and the body's hash:
/// one buffer, the body hashed where it lies.
fn receipt_record(id: &str, write_body: impl FnOnce(&mut Vec<u8>)) -> (Vec<u8>, Hash) {
    let id = &id.as_bytes()[..id.len().min(255)];
    let body_at = 8 + 1 + 32 + 1 + id.len();
    let mut out = Vec::with_capacity(body_at + 2048);
    out.extend_from_slice(&[0; 8]);
    out.push(KIND_RECEIPT_INDEXED);
    out.extend_from_slice(&[0; 32]);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    write_body(&mut out);
    let hash = sha256(&out[body_at..]);
    out[9..41].copy_from_slice(&hash);
    finish_frame(&mut out);
    (out, hash)
}

/// Where a receipt's chain position goes in a body serialized before the position was known.
///
/// The body is serialized with `prev_hash` set to `sentinel` (64 random hex digits, new for
/// every spool opening) and `seq` 0; the chain object is the last thing in `{"lane":…,
/// "prev_hash":…,"seq":…}`, so `"prev_hash":"<sentinel>","seq":0}` marks exactly the bytes the
/// real position replaces. Canonical JSON has no whitespace and escapes nothing in hex digits,
/// so the spliced bytes are what serializing the body with its position would give.
#[derive(Debug)]
struct Placeholder {
    sentinel: String,
    needle: Vec<u8>,
    /// A searcher for `needle`, built once.
    finder: memchr::memmem::Finder<'static>,
}

impl Placeholder {
    fn new() -> Self {
        let mut seed = [0u8; 32];
        // Any unpredictable value will do; on the (never seen) failure of the system RNG, the
        // clock and process id still make a collision with receipt content implausible.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            seed = sha256(format!("{now:?}/{}", std::process::id()).as_bytes());
        }
        let sentinel = hex(&seed);
        let needle = format!("\"prev_hash\":\"{sentinel}\",\"seq\":0}}").into_bytes();
        let finder = memchr::memmem::Finder::new(&needle).into_owned();
        Self { sentinel, needle, finder }
    }

    /// Where the needle starts in `draft`, if it occurs exactly once.
    fn find(&self, draft: &[u8]) -> Option<usize> {
        let at = self.finder.find(draft)?;
        self.finder.find(&draft[at + 1..]).is_none().then_some(at)
    }

    /// Appends what replaces the needle: the real `prev_hash` and `seq`.
    fn write_position(out: &mut Vec<u8>, prev_hash: &str, seq: u64) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "\"prev_hash\":\"{prev_hash}\",\"seq\":{seq}}}");
    }
}

/// A receipt record's hash, id (when the record carries it) and body; `None` if it is not a
/// receipt record or is malformed.
fn receipt_parts(kind: u8, payload: &[u8]) -> Option<(Hash, Option<&str>, &[u8])> {
    match kind {
        KIND_RECEIPT => Some((sha256(payload), None, payload)),
        KIND_RECEIPT_INDEXED => {
            let hash: Hash = payload.get(..32)?.try_into().ok()?;
            let id_len = usize::from(*payload.get(32)?);
            let id = std::str::from_utf8(payload.get(33..33 + id_len)?).ok()?;
            Some((hash, Some(id), payload.get(33 + id_len..)?))
        }
        _ => None,
    }
}

/// Parses frames from `data`; returns the records and the length of the valid prefix.
fn parse_frames(data: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let end = at + 8 + len as usize;
        if len == 0 || len > MAX_FRAME || end > data.len() {
            break;
        }
        let body = &data[at + 8..end];
        if crc32fast::hash(body) != crc {
            break;
        }
        records.push((body[0], &body[1..]));
        at = end;
    }
    (records, at)
}

/// Appends `,"signature":{…}` to a canonical body object.
fn with_signature(body: &[u8], sig: &Signature) -> Result<Vec<u8>, SpoolError> {
    let sig = serde_json::to_vec(sig).map_err(|e| SpoolError::Encode(e.to_string()))?;
    let Some(open) = body.strip_suffix(b"}") else {
        return Err(SpoolError::Encode("receipt body is not a JSON object".into()));
    };
    let mut out = Vec::with_capacity(body.len() + sig.len() + 16);
    out.extend_from_slice(open);
    out.extend_from_slice(b",\"signature\":");
    out.extend_from_slice(&sig);
    out.push(b'}');
    Ok(out)
}

/// The signature block of leaf `index` of a sealed batch.
fn signature_for(key_id: &str, sig: &str, tree: &Tree, index: usize) -> Signature {
    Signature {
        alg: "ed25519".into(),
        batch: BatchProof {
            index: index as u64,
            path: tree.audit_path(index).iter().map(|h| hex(h)).collect(),
            root: hex(&tree.root()),
            size: tree.len() as u64,
        },
        key_id: key_id.to_owned(),
        sig: sig.to_owned(),
    }
}

/// `heads.json`: the chain heads of this proxy's lane, per run.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HeadsFile {
    lane: String,
    heads: HashMap<String, Head>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and recovers it: torn tails cut off, chain heads
    /// rebuilt, receipts written but never sealed sealed now. Everything still on disk is then
    /// shipped again by the [`Reader`].
    pub fn open(dir: &Path, key: SigningKey, limits: SpoolLimits) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(".lock");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }

        let heads_path = dir.join("heads.json");
        let saved: HeadsFile = match fs::read(&heads_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %heads_path.display(), error = %e, "unreadable heads.json; chains continue from the spool alone");
                HeadsFile::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HeadsFile::default(),
            Err(e) => return Err(io_err(&heads_path)(e)),
        };
        // Heads belong to a lane (a key): a new key starts new chains.
        let mut heads = if saved.lane == key.id() { saved.heads } else { HashMap::new() };

        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();

        let mut segments = BTreeMap::new();
        // Receipts in spool order, and the hashes some seal covers.
        let mut receipts: Vec<Pending> = Vec::new();
        let mut sealed: std::collections::HashSet<Hash> = std::collections::HashSet::new();
        let mut total = 0u64;
        for (n, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let mut data = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_err(&path))?;
            let (records, valid) = parse_frames(&data);
            if valid < data.len() {
                let last = n + 1 == ids.len();
                tracing::warn!(
                    path = %path.display(),
                    kept = valid,
                    dropped = data.len() - valid,
                    "spool segment has a torn or corrupt tail; cutting it off{}",
                    if last { " (an interrupted write)" } else { " (not the last segment: this is disk corruption)" }
                );
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(valid as u64))
                    .map_err(io_err(&path))?;
            }
            let mut state = SegmentState { bytes: valid as u64, ..SegmentState::default() };
            for (kind, payload) in records {
                match kind {
                    KIND_RECEIPT | KIND_RECEIPT_INDEXED => {
                        // Recovery trusts nothing it can recompute: the hash must be the body's.
                        let parsed =
                            receipt_parts(kind, payload).filter(|(hash, _, body)| sha256(body) == *hash).and_then(
                                |(hash, _, body)| Some((hash, serde_json::from_slice::<ReceiptBody>(body).ok()?)),
                            );
                        let Some((hash, body)) = parsed else {
                            tracing::error!(path = %path.display(), "unreadable receipt in the spool; skipped");
                            continue;
                        };
                        if body.chain.lane == key.id() {
                            let head = heads.entry(body.run.to_string()).or_insert(Head {
                                seq: 0,
                                hash,
                                spent: Spent::default(),
                            });
                            if body.chain.seq > head.seq {
                                let mut spent = head.spent;
                                spent.add(&body);
                                *head = Head { seq: body.chain.seq, hash, spent };
                            }
                        }
                        state.receipts += 1;
                        receipts.push(Pending { hash, segment: id });
                    }
                    KIND_SEAL => {
                        let Ok(seal) = serde_json::from_slice::<SealRecord>(payload) else {
                            tracing::error!(path = %path.display(), "unreadable seal in the spool; its receipts will be sealed again");
                            continue;
                        };
                        match seal.tree() {
                            Some((leaves, _)) => sealed.extend(leaves),
                            None => {
                                tracing::error!(path = %path.display(), "a seal does not match its leaves; its receipts will be sealed again")
                            }
                        }
                    }
                    other => {
                        tracing::error!(path = %path.display(), kind = other, "unknown spool record kind; skipped")
                    }
                }
            }
            total += state.bytes;
            segments.insert(id, state);
        }

        // Receipts no seal covers were written just before a stop: seal them again.
        let mut unsealed = Vec::new();
        for p in receipts {
            if !sealed.contains(&p.hash) {
                if let Some(s) = segments.get_mut(&p.segment) {
                    s.unsealed += 1;
                }
                unsealed.push(p);
            }
        }

        let active_id = ids.last().map_or(1, |last| last + 1);
        let active_path = segment_path(dir, active_id);
        let active =
            OpenOptions::new().create_new(true).append(true).open(&active_path).map_err(io_err(&active_path))?;
        segments.insert(active_id, SegmentState::default());
        let spool = Spool {
            dir: dir.to_owned(),
            key,
            limits,
            inner: Mutex::new(Inner { active_id, active, segments, heads, pending: unsealed, to_sync: Vec::new() }),
            wake: Condvar::new(),
            sealed: tokio::sync::Notify::new(),
            bytes: AtomicU64::new(total),
            stopping: AtomicBool::new(false),
            placeholder: Placeholder::new(),
            opened: std::time::Instant::now(),
            disk_checked_ms: AtomicU64::new(0),
            disk_free: AtomicU64::new(u64::MAX),
            _lock: lock,
        };
        spool.check_disk();
        let resealed = spool.seal()?;
        if resealed > 0 {
            tracing::info!(
                receipts = resealed,
                "sealed receipts that were written but not sealed before the last stop"
            );
        }
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is a push or an
        // increment after the write succeeded), so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The signing key's id: this proxy's lane in every run's chain.
    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// The signing key's public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The seq of `run`'s last receipt in this proxy's lane (`None`: none yet), so a run's step
    /// numbers can continue where its receipts left off.
    pub fn last_seq(&self, run: &str) -> Option<u64> {
        self.lock().heads.get(run).map(|h| h.seq)
    }

    /// The seq of `run`'s last receipt in this proxy's lane and what its receipts charged (`None`:
    /// none yet), so a run's steps and budget continue where its receipts left off.
    pub fn resume(&self, run: &str) -> Option<(u64, Spent)> {
        self.lock().heads.get(run).map(|h| (h.seq, h.spent))
    }

    /// Whether the spool refuses new calls: over its size limit, or with less than
    /// `min_free_disk` free on its disk (or a write that failed since the last check).
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.limits.max_bytes || self.disk_low()
    }

    /// Why the spool refuses new calls, for the refusal's message; `None` when it does not.
    pub fn refusal(&self) -> Option<String> {
        if self.bytes() >= self.limits.max_bytes {
            return Some(format!(
                "its spool holds {} bytes, the limit of proxy.receipts.spool_max_bytes, until control acknowledges receipts",
                self.bytes()
            ));
        }
        self.disk_low().then(|| {
            format!(
                "the disk under its spool ({}) has {} bytes free, under proxy.receipts.min_free_disk = {}; free disk space",
                self.dir.display(),
                self.disk_free.load(Ordering::Relaxed),
                self.limits.min_free_disk
            )
        })
    }

    /// Whether the disk is under `min_free_disk`; checks it again when the last check is
    /// [`DISK_CHECK_MS`] old (one `statvfs`, by one caller).
    fn disk_low(&self) -> bool {
        if self.limits.min_free_disk == 0 {
            return false;
        }
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.disk_checked_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DISK_CHECK_MS
            && self.disk_checked_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.check_disk();
        }
        self.disk_free.load(Ordering::Relaxed) < self.limits.min_free_disk
    }

    /// Reads the free space under the spool and logs when it crosses `min_free_disk`.
    fn check_disk(&self) {
        if self.limits.min_free_disk == 0 {
            return;
        }
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space under the spool");
                return;
            }
        };
        let before = self.disk_free.swap(free, Ordering::Relaxed);
        let min = self.limits.min_free_disk;
        if free < min && before >= min {
            tracing::error!(dir = %self.dir.display(), free, min, "the disk under the spool is almost full: calls are refused (503 spool_full) until space is freed");
        } else if free >= min && before < min {
            tracing::warn!(dir = %self.dir.display(), free, "the disk under the spool has room again: calls are served");
        }
    }

    /// Receipts written and not yet sealed.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Writes one receipt of `run`. `build` makes the body outside the spool's lock, with the
    /// lane set and the chain position left open; the body is serialized there too, with this
    /// spool's random sentinel standing in for `prev_hash`. Under the lock only the chain
    /// position is spliced in where the sentinel stands, and the result hashed and written.
    ///
    /// The spool's limits (`max_bytes`, `min_free_disk`) are not checked here: they decide which
    /// calls start ([`Spool::is_full`]), and a call that started has its receipt written as long
    /// as the disk takes it — `min_free_disk` is the room kept for them.
    pub fn append(&self, run: &str, build: impl FnOnce(Chain) -> ReceiptBody) -> Result<(), SpoolError> {
        let lane = self.key.id();
        let mut body = build(Chain { lane: lane.to_owned(), prev_hash: self.placeholder.sentinel.clone(), seq: 0 });
        let mut charged = Spent::default();
        charged.add(&body);
        let receipt_id = body.id.to_string();
        let draft = body.canonical().map_err(|e| SpoolError::Encode(e.to_string()))?;
        let splice = self.placeholder.find(&draft);
        let mut inner = self.lock();
        let head = inner.heads.get(run).copied();
        let seq = head.map_or(1, |h| h.seq + 1);
        let prev_hash = head.map_or_else(|| genesis_hex(run, lane), |h| hex(&h.hash));
        let (record, hash) = match splice {
            Some(at) => receipt_record(&receipt_id, |out| {
                out.extend_from_slice(&draft[..at]);
                Placeholder::write_position(out, &prev_hash, seq);
                out.extend_from_slice(&draft[at + self.placeholder.needle.len()..]);
            }),
            // The sentinel is missing or not unique (a free-form member quoting it): serialize
            // again with the position filled in.
            None => {
                body.chain.prev_hash = prev_hash;
                body.chain.seq = seq;
                let bytes = body.canonical().map_err(|e| SpoolError::Encode(e.to_string()))?;
                receipt_record(&receipt_id, |out| out.extend_from_slice(&bytes))
            }
        };
        if let Err(e) = write_or_undo(&mut inner.active, &record) {
            // Most likely the disk is full: refuse calls until a check finds room.
            self.disk_free.store(0, Ordering::Relaxed);
            return Err(io_err(&segment_path(&self.dir, inner.active_id))(e));
        }
        let segment = inner.active_id;
        if let Some(s) = inner.segments.get_mut(&segment) {
            s.bytes += record.len() as u64;
            s.receipts += 1;
            s.unsealed += 1;
        }
        self.bytes.fetch_add(record.len() as u64, Ordering::Relaxed);
        let mut spent = head.map(|h| h.spent).unwrap_or_default();
        spent.tokens = spent.tokens.saturating_add(charged.tokens);
        spent.cost_micro_usd = spent.cost_micro_usd.saturating_add(charged.cost_micro_usd);
        spent.calls += charged.calls;
        inner.heads.insert(run.to_owned(), Head { seq, hash, spent });
        let was_empty = inner.pending.is_empty();
        inner.pending.push(Pending { hash, segment });
        if inner.segments.get(&segment).is_some_and(|s| s.bytes >= self.limits.segment_bytes) {
            self.roll(&mut inner)?;
        }
        drop(inner);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn roll(&self, inner: &mut Inner) -> Result<(), SpoolError> {
        let next = inner.active_id + 1;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err(&path))?;
        let old = std::mem::replace(&mut inner.active, file);
        inner.to_sync.push(old);
        inner.active_id = next;
        inner.segments.insert(next, SegmentState::default());
        Ok(())
    }

    /// Signs every pending receipt as one batch, writes the seal and syncs (group commit).
    /// Returns how many receipts were sealed.
    pub fn seal(&self) -> Result<usize, SpoolError> {
        let (pending, to_sync, active) = {
            let mut inner = self.lock();
            if inner.pending.is_empty() {
                return Ok(0);
            }
            let pending = std::mem::take(&mut inner.pending);
            let to_sync = std::mem::take(&mut inner.to_sync);
            let active = inner.active.try_clone().map_err(io_err(&self.dir))?;
            (pending, to_sync, active)
        };
        // Sign outside the lock: calls keep appending while the batch is signed.
        let hashes: Vec<Hash> = pending.iter().map(|p| p.hash).collect();
        let tree = Tree::new(&hashes);
        let sig = self.key.sign_root(&tree);
        let seal = SealRecord {
            key_id: self.key.id().to_owned(),
            root: hex(&tree.root()),
            sig,
            leaves: hashes.iter().map(|h| hex(h)).collect(),
        };
        let record = frame(KIND_SEAL, &serde_json::to_vec(&seal).map_err(|e| SpoolError::Encode(e.to_string()))?);
        {
            let mut inner = self.lock();
            let path = segment_path(&self.dir, inner.active_id);
            if let Err(e) = write_or_undo(&mut inner.active, &record) {
                // Nothing of the batch is lost: it is sealed with the next one, once the disk
                // has room (calls are refused until then).
                self.disk_free.store(0, Ordering::Relaxed);
                let later = std::mem::replace(&mut inner.pending, pending);
                inner.pending.extend(later);
                let later = std::mem::replace(&mut inner.to_sync, to_sync);
                inner.to_sync.extend(later);
                return Err(io_err(&path)(e));
            }
            let active_id = inner.active_id;
            if let Some(s) = inner.segments.get_mut(&active_id) {
                s.bytes += record.len() as u64;
            }
            for p in &pending {
                if let Some(s) = inner.segments.get_mut(&p.segment) {
                    s.unsealed = s.unsealed.saturating_sub(1);
                }
            }
        }
        self.bytes.fetch_add(record.len() as u64, Ordering::Relaxed);
        if self.limits.fsync {
            for f in to_sync.iter().chain(std::iter::once(&active)) {
                f.sync_data().map_err(io_err(&self.dir))?;
            }
        }
        self.sealed.notify_one();
        Ok(pending.len())
    }

    /// Completes when a batch has been sealed since the last call (or one is already waiting).
    pub async fn sealed(&self) {
        self.sealed.notified().await;
    }

    /// The segment receipts are appended to now.
    fn active_segment(&self) -> u64 {
        self.lock().active_id
    }

    /// Receipts written and not yet acknowledged by control.
    pub fn unacknowledged(&self) -> u64 {
        self.lock().segments.values().map(|s| s.receipts.saturating_sub(s.acked)).sum()
    }

    /// A reader that yields every sealed receipt on disk, oldest first, for shipping.
    pub fn reader(&self) -> Reader {
        let first = self.lock().segments.keys().next().copied().unwrap_or(1);
        Reader { dir: self.dir.clone(), segment: first, offset: 0, unsealed: HashMap::new() }
    }

    /// Blocks until receipts are pending (or `stop` is called), then waits the seal interval so
    /// the batch fills. Returns `false` once stopping.
    pub fn wait_for_batch(&self) -> bool {
        let stopping = || self.stopping.load(Ordering::Relaxed);
        let wait = |inner, timeout| -> MutexGuard<'_, Inner> {
            self.wake.wait_timeout(inner, timeout).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0)
        };
        let mut inner = self.lock();
        while inner.pending.is_empty() && !stopping() {
            inner = wait(inner, Duration::from_secs(1));
        }
        // Let the batch fill; `stop` cuts the wait short.
        let deadline = std::time::Instant::now() + self.limits.seal_interval;
        while !stopping() {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            inner = wait(inner, deadline - now);
        }
        !stopping()
    }

    /// Wakes the sealer for a last batch and makes it return.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// Records control's acknowledgement of receipts (one entry per receipt: its segment), and
    /// deletes segments that are closed and fully acknowledged.
    pub fn ack(&self, segments: impl IntoIterator<Item = u64>) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        for id in segments {
            if let Some(s) = inner.segments.get_mut(&id) {
                s.acked += 1;
            }
        }
        let active_id = inner.active_id;
        let done: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(id, s)| **id != active_id && s.unsealed == 0 && s.acked >= s.receipts)
            .map(|(id, _)| *id)
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        // Heads first: the chain must continue after the receipts that carried it are gone.
        let heads_path = self.dir.join("heads.json");
        let tmp = self.dir.join("heads.json.tmp");
        let file = HeadsFile { lane: self.key.id().to_owned(), heads: inner.heads.clone() };
        let bytes = serde_json::to_vec(&file).map_err(|e| SpoolError::Encode(e.to_string()))?;
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &heads_path)
        };
        write().map_err(io_err(&heads_path))?;
        for id in done {
            let path = segment_path(&self.dir, id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            if let Some(s) = inner.segments.remove(&id) {
                self.bytes.fetch_sub(s.bytes.min(self.bytes()), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Keeps a receipt control refused in `rejected.jsonl`, with the reason, for an operator.
    pub fn reject(&self, receipt: &Shippable, reason: &str) -> Result<(), SpoolError> {
        let path = self.dir.join("rejected.jsonl");
        let line = serde_json::json!({ "reason": reason, "receipt": String::from_utf8_lossy(&receipt.json) });
        let mut f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        writeln!(f, "{line}").map_err(io_err(&path))?;
        Ok(())
    }
}

/// The most of a segment the reader holds in memory at once, so a shipper catching up after a
/// control outage reads a 16 MiB segment a piece at a time.
const READ_CHUNK: u64 = 1 << 20;

/// The length of the first frame in `data` (header included), if its header is there.
fn first_frame_len(data: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    Some(8 + len as usize)
}

/// Reads `file` from `offset`, at most `limit` bytes (all of the rest with `None`), into one
/// buffer of the size the file has now: the shipper reads what calls have just appended, and a
/// buffer grown as it was read cost a reallocation and a copy per doubling (1.4% of the proxy's
/// CPU under load, bench/README.md), plus a seek and a read that found the end.
fn read_at(file: &File, offset: u64, limit: Option<u64>) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let available = file.metadata()?.len().saturating_sub(offset);
    let len = limit.map_or(available, |limit| limit.min(available));
    let len = usize::try_from(len).map_err(|_| io::Error::other(format!("{len} bytes do not fit in memory")))?;
    let mut data = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut data[filled..], offset + filled as u64) {
            // Cut back since its length was read (a failed write is undone): keep what is there.
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(filled);
    Ok(data)
}

/// Reads sealed receipts off the spool files in order, for the shipper. The files are the single
/// source of truth: the shipper holds at most one chunk in memory however long control is away.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    segment: u64,
    offset: u64,
    /// Receipts read whose seal has not been read yet: hash → (id, body, segment).
    unsealed: HashMap<Hash, (String, Vec<u8>, u64)>,
}

impl Reader {
    /// Reads up to `max` sealed receipts past the cursor. An empty result means nothing new yet.
    pub fn next(&mut self, spool: &Spool, max: usize) -> Result<Vec<Shippable>, SpoolError> {
        let mut out = Vec::new();
        while out.len() < max {
            let active = spool.active_segment();
            let path = segment_path(&self.dir, self.segment);
            let (data, more) = match File::open(&path) {
                Ok(f) => {
                    let chunk = read_at(&f, self.offset, Some(READ_CHUNK)).map_err(io_err(&path))?;
                    let more = chunk.len() as u64 >= READ_CHUNK;
                    // A chunk holding no whole frame: one frame is larger than a chunk; read it whole.
                    if more && first_frame_len(&chunk).is_none_or(|len| len > chunk.len()) {
                        (read_at(&f, self.offset, None).map_err(io_err(&path))?, false)
                    } else {
                        (chunk, more)
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.segment < active => {
                    self.segment += 1;
                    self.offset = 0;
                    continue;
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            let (records, valid) = parse_frames(&data);
            for (kind, payload) in records {
                match kind {
                    KIND_RECEIPT | KIND_RECEIPT_INDEXED => {
                        let Some((hash, id, body)) = receipt_parts(kind, payload) else { continue };
                        // Only a record altered on disk (its checksum recomputed) fails this; it is
                        // left behind rather than shipped, so it cannot hold up the ones after it.
                        // The body hashing to the leaf a seal names is what was written (a JSON
                        // object): checking that costs a tenth of parsing it.
                        if !body.starts_with(b"{") || !body.ends_with(b"}") || sha256(body) != hash {
                            tracing::error!(path = %path.display(), offset = self.offset, "a receipt in the spool is not JSON; skipping it (the segment was altered on disk)");
                            continue;
                        }
                        let id = match id {
                            Some(id) => id.to_owned(),
                            None => serde_json::from_slice::<IdOnly>(body).map(|r| r.id).unwrap_or_default(),
                        };
                        self.unsealed.insert(hash, (id, body.to_vec(), self.segment));
                    }
                    KIND_SEAL => {
                        let Ok(seal) = serde_json::from_slice::<SealRecord>(payload) else { continue };
                        let Some((leaves, tree)) = seal.tree() else { continue };
                        for (i, leaf) in leaves.iter().enumerate() {
                            if let Some((id, body, segment)) = self.unsealed.remove(leaf) {
                                let signature = signature_for(&seal.key_id, &seal.sig, &tree, i);
                                out.push(Shippable { id, json: with_signature(&body, &signature)?, segment });
                            }
                        }
                    }
                    _ => {}
                }
            }
            self.offset += valid as u64;
            // A chunk that starts with a bad frame is corruption, handled below like at the end.
            if more && valid > 0 {
                // The rest of this segment is read by the next round.
                continue;
            }
            let at_end = valid == data.len();
            if self.segment < active && (at_end || valid == 0) {
                if !at_end {
                    tracing::error!(path = %path.display(), offset = self.offset, "corrupt record in a closed spool segment; skipping the rest of it");
                }
                // A closed segment read to its end: move on.
                self.segment += 1;
                self.offset = 0;
                continue;
            }
            // The active segment: a partial frame at its end is a write in progress.
            break;
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}
