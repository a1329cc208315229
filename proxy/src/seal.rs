//! Sealed IO: the request key, the sealed bodies of a call, and the content-addressed store that
//! keeps them on disk and ships them to control.
//!
//! A sealed call is three blobs, each named by the SHA-256 of its bytes
//! ([`fleetforge_trust::replay`]): the request body as the agent sent it (configured redactions
//! applied: `[proxy.seal] redact`), the response body exactly as the upstream sent it, and the
//! response envelope (status, content type and encoding, the body's address, chunk boundaries and
//! their offsets). The receipt names the three addresses and the request's replay key
//! ([`fleetforge_trust::key`]); no header is ever sealed, and the key includes only allow-listed
//! ones, so credentials never reach a seal.
//!
//! The forward phase computes the key and the request blob ([`seal_request`]) from the request as
//! the agent sent it — before obligations and usage injection change it — so a replay computes
//! the same key whatever its budget. The tap keeps the response chunks ([`Recording`]); when the
//! call has ended [`keep`] hands the blobs to the [`SealStore`], whose writer thread takes them in
//! batches (woken by the first, it lets more gather for a few milliseconds), compresses them
//! (zstd) into `$FLEETFORGE_HOME/seals/ab/<sha256>.zst` and notes them in `seals/pending.log`
//! until the receipt shipper has put them on control (`PUT /v1/seals/{sha}`, always before the
//! receipts that name them). Nothing on the request path waits for a disk.
//!
//! Credentials the request carried (the values of its `Authorization`, API-key and cookie
//! headers and of credential-like query parameters) are never sealed even when a body holds them:
//! a request body that holds one is sealed with each occurrence replaced by `[redacted]`, and a
//! response that holds one (an upstream that echoes its request, say) is not sealed at all — a
//! replay could not serve it faithfully without keeping the credential — so its call keeps only
//! its key.
//!
//! Not sealed: calls refused or failed before a response, responses cut short (client gone,
//! upstream aborted, or ended by the stream guard), tunnels, and bodies over
//! `[proxy.seal] max_body`.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fleetforge_trust::canonical::sha256;
use fleetforge_trust::key::{KeyInput, redact_pointer, request_key};
use fleetforge_trust::replay::{RESPONSE_HEADERS, RESPONSE_META, ResponseMeta};
use fleetforge_trust::text::hex;
use http::HeaderMap;

use crate::config::SealConfig;
use crate::context::{Call, Kept, SealedRequest, SecretValues};

#[cfg(test)]
mod tests;

/// Addresses the writer remembers having written before it forgets them (about 2.5 MiB; a
/// forgotten one costs a file-exists check).
const MAX_KNOWN: usize = 1 << 16;

/// How long the writer lets blobs gather after a wake-up before writing them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// zstd level of blobs at rest: level 1 is the fastest, and LLM JSON still shrinks 3–5×.
const ZSTD_LEVEL: i32 = 1;

/// Computes a request's key and its sealed body. `body` is the body as the agent sent it;
/// `digest`, when given, is its SHA-256 (the forward phase has it when nothing changed the body).
pub fn seal_request(
    rules: &SealConfig,
    call: &Call,
    headers: &HeaderMap,
    body: &Bytes,
    digest: Option<[u8; 32]>,
    keep: bool,
) -> Option<SealedRequest> {
    let target = call.target.as_ref()?;
    let decoded = decode(headers, body);
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let input = KeyInput {
        method: call.method.as_str(),
        scheme: target.scheme.as_str(),
        host: &target.host,
        port: target.port,
        path_and_query: &call.path,
        headers: &pairs,
        body: &decoded,
    };
    let key = match request_key(&input, &rules.key) {
        Ok(key) => key.digest,
        Err(e) => {
            tracing::debug!(error = %e, "request not sealed: its key could not be computed");
            return None;
        }
    };
    let keep = keep && body.len() as u64 <= rules.max_body;
    let (blob, redacted) = if body.is_empty() || !keep {
        (None, Vec::new())
    } else {
        let (sealed, redacted) = redact(&rules.redact, &decoded, body);
        let address = match digest {
            Some(d) if redacted.is_empty() && sealed.len() == body.len() => d,
            _ => sha256(&sealed),
        };
        (Some((address, sealed)), redacted)
    };
    let secrets = SecretValues(if keep { secrets_of(headers, &call.path) } else { Vec::new() });
    let blob = blob.map(|(address, sealed)| match scrub(&secrets.0, std::slice::from_ref(&sealed)) {
        Some(clean) => (sha256(&clean), clean),
        None => (address, sealed),
    });
    Some(SealedRequest { key, blob, redacted, response_headers: Vec::new(), keep, replayed_meta: None, secrets })
}

/// A request body as GenAI content capture may put it on a span: content-encoding decoded, the
/// configured redactions applied, and any credential value the request carries (auth and API-key
/// headers, secret query parameters) replaced by `[redacted]`.
pub fn capturable(rules: &SealConfig, headers: &HeaderMap, path: &str, body: &Bytes) -> Bytes {
    let decoded = decode(headers, body);
    let (clean, _) = redact(&rules.redact, &decoded, &decoded);
    scrub(&secrets_of(headers, path), std::slice::from_ref(&clean)).unwrap_or(clean)
}

/// The shortest credential value looked for in bodies (shorter ones would match by chance).
const MIN_SECRET: usize = 8;

/// The credential values a request carries: auth, API-key and cookie headers (without their
/// `Bearer`/`Basic` scheme) and credential-like query parameters.
fn secrets_of(headers: &HeaderMap, path: &str) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        let credential = matches!(
            name,
            "authorization" | "proxy-authorization" | "x-api-key" | "api-key" | "x-goog-api-key" | "cookie"
        ) || name.contains("token")
            || name.contains("secret");
        if !credential {
            continue;
        }
        let value = value.as_bytes();
        let value = [&b"Bearer "[..], b"bearer ", b"Basic ", b"basic "]
            .iter()
            .find_map(|scheme| value.strip_prefix(*scheme))
            .unwrap_or(value)
            .trim_ascii();
        if value.len() >= MIN_SECRET {
            out.push(Bytes::copy_from_slice(value));
        }
    }
    if let Some((_, query)) = path.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && fleetforge_trust::text::is_secret_param(k)
                && v.len() >= MIN_SECRET
            {
                out.push(Bytes::copy_from_slice(v.as_bytes()));
            }
        }
    }
    out
}

/// When `chunks` (one body, in order) hold any of `secrets`, the body with each occurrence
/// replaced by `[redacted]`; `None` when they hold none.
fn scrub(secrets: &[Bytes], chunks: &[Bytes]) -> Option<Bytes> {
    if secrets.is_empty() {
        return None;
    }
    let found = secrets.iter().any(|secret| {
        let finder = memchr::memmem::Finder::new(&secret[..]);
        let n = secret.len();
        chunks.iter().any(|c| finder.find(c).is_some())
            || chunks.windows(2).any(|pair| {
                // A secret split across two chunks.
                let (a, b) = (&pair[0], &pair[1]);
                let mut seam = Vec::with_capacity(2 * n);
                seam.extend_from_slice(&a[a.len().saturating_sub(n - 1)..]);
                seam.extend_from_slice(&b[..b.len().min(n - 1)]);
                finder.find(&seam).is_some()
            })
    });
    if !found {
        return None;
    }
    let mut body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    for secret in secrets {
        let mut out = Vec::with_capacity(body.len());
        let mut rest = &body[..];
        while let Some(i) = memchr::memmem::find(rest, secret) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(b"[redacted]");
            rest = &rest[i + secret.len()..];
        }
        out.extend_from_slice(rest);
        body = out;
    }
    Some(Bytes::from(body))
}

/// The body decoded from its `content-encoding` (gzip, deflate, zstd); as it is otherwise.
fn decode(headers: &HeaderMap, body: &Bytes) -> Bytes {
    let Some(encoding) = headers.get(http::header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) else {
        return body.clone();
    };
    let mut out = Vec::new();
    let done = match encoding.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).is_ok(),
        "deflate" => flate2::read::ZlibDecoder::new(&body[..]).read_to_end(&mut out).is_ok(),
        "zstd" => zstd::stream::read::Decoder::new(&body[..]).and_then(|mut d| d.read_to_end(&mut out)).is_ok(),
        _ => false,
    };
    if done { Bytes::from(out) } else { body.clone() }
}

/// The body with the members at `pointers` replaced by `"[redacted]"` (JSON bodies only), and
/// the pointers that were present.
fn redact(pointers: &[String], decoded: &Bytes, raw: &Bytes) -> (Bytes, Vec<String>) {
    if pointers.is_empty() {
        return (raw.clone(), Vec::new());
    }
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(decoded) else {
        return (raw.clone(), Vec::new());
    };
    let redacted: Vec<String> = pointers.iter().filter(|p| redact_pointer(&mut json, p)).cloned().collect();
    if redacted.is_empty() {
        return (raw.clone(), redacted);
    }
    // A redacted body is sealed decoded: its encoding is the agent's transport, not its content.
    (Bytes::from(serde_json::to_vec(&json).unwrap_or_default()), redacted)
}

/// The response headers a seal keeps, from the upstream's response.
pub fn response_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    RESPONSE_HEADERS
        .iter()
        .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()).map(|v| ((*name).to_owned(), v.to_owned())))
        .collect()
}

/// Hands a completed call's blobs to the store and notes their addresses on the call. Calls
/// whose response was not recorded keep only their key.
pub fn keep(store: Option<&SealStore>, call: &mut Call, chunks: Option<Vec<(Bytes, u64)>>) {
    let (Some(store), Some(sealed)) = (store, call.seal.as_ref()) else { return };
    if !sealed.keep || call.truncated {
        return;
    }
    let mut blobs = Vec::with_capacity(3);
    let request_blob = sealed.blob.as_ref().map(|(address, body)| {
        blobs.push((*address, vec![body.clone()]));
        hex(address)
    });
    if let Some(meta) = &sealed.replayed_meta {
        // Served from a seal: its blobs are the recorded ones.
        store.put(blobs);
        call.kept = Some(Kept { request_blob, response_meta: meta.clone() });
        return;
    }
    let (Some(chunks), Some(status), Some(digest)) = (chunks, call.status, call.response_digest) else { return };
    let bodies: Vec<Bytes> = chunks.iter().map(|(c, _)| c.clone()).collect();
    if scrub(&sealed.secrets.0, &bodies).is_some() {
        tracing::debug!(receipt = %call.receipt_id, "response not sealed: it holds a credential of its request");
        return;
    }
    if let Some(response_meta) = response_blobs(&sealed.response_headers, status.as_u16(), digest, chunks, &mut blobs) {
        call.kept = Some(Kept { request_blob, response_meta });
    }
    // One job per call; the writer takes them in batches.
    store.put(blobs);
}

/// Adds a response body (`digest` is its SHA-256) and its envelope to `blobs`; the envelope's
/// address (hex).
pub fn response_blobs(
    headers: &[(String, String)],
    status: u16,
    digest: [u8; 32],
    chunks: Vec<(Bytes, u64)>,
    blobs: &mut Vec<([u8; 32], Vec<Bytes>)>,
) -> Option<String> {
    let meta = ResponseMeta {
        v: RESPONSE_META.into(),
        status,
        headers: headers.iter().cloned().collect(),
        body: hex(&digest),
        bytes: chunks.iter().map(|(c, _)| c.len() as u64).sum(),
        chunks: chunks.iter().map(|(c, ms)| [c.len() as u64, *ms]).collect(),
    };
    let meta_bytes = meta.to_bytes().ok()?;
    let meta_address = sha256(&meta_bytes);
    blobs.push((digest, chunks.into_iter().map(|(c, _)| c).collect()));
    blobs.push((meta_address, vec![Bytes::from(meta_bytes)]));
    Some(hex(&meta_address))
}

/// A job for the writer thread.
enum Job {
    Put(Vec<([u8; 32], Vec<Bytes>)>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Addresses written and not yet on control, mirrored in `pending.log`.
#[derive(Debug)]
struct Pending {
    addresses: Vec<String>,
    log: fs::File,
}

/// The content-addressed blob store under `$FLEETFORGE_HOME/seals/`.
#[derive(Debug)]
pub struct SealStore {
    dir: PathBuf,
    jobs: mpsc::Sender<Job>,
    pending: Arc<Mutex<Pending>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Put(blobs) => write!(f, "Put({} blobs)", blobs.len()),
            Job::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl SealStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread. Blobs noted in
    /// `pending.log` by an earlier process are shipped again.
    pub fn open(dir: &Path) -> io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        let log_path = dir.join("pending.log");
        let mut addresses: Vec<String> = match fs::read_to_string(&log_path) {
            Ok(text) => text.lines().filter(|l| l.len() == 64).map(str::to_owned).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut seen = HashSet::new();
        addresses.retain(|a| seen.insert(a.clone()));
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let pending = Arc::new(Mutex::new(Pending { addresses, log }));
        let (jobs, rx) = mpsc::channel();
        let writer = Writer { dir: dir.to_owned(), pending: pending.clone(), known: HashSet::new() };
        std::thread::Builder::new().name("fleetforge-seals".into()).spawn(move || writer.run(rx))?;
        Ok(Arc::new(SealStore { dir: dir.to_owned(), jobs, pending }))
    }

    /// Queues blobs (each its chunks, in order, under its address); never blocks.
    pub fn put(&self, blobs: Vec<([u8; 32], Vec<Bytes>)>) {
        if !blobs.is_empty() {
            let _ = self.jobs.send(Job::Put(blobs));
        }
    }

    /// Waits until every blob queued so far is on disk.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Addresses on disk and not yet on control, oldest first.
    pub fn pending(&self) -> Vec<String> {
        self.pending.lock().map(|p| p.addresses.clone()).unwrap_or_default()
    }

    /// Notes that control holds `shipped`: `pending.log` is rewritten to what is still pending
    /// (under the lock the writer appends under, so nothing written meanwhile is lost).
    pub fn shipped(&self, shipped: &[String]) -> io::Result<()> {
        if shipped.is_empty() {
            return Ok(());
        }
        let Ok(mut p) = self.pending.lock() else { return Ok(()) };
        let done: HashSet<&String> = shipped.iter().collect();
        p.addresses.retain(|a| !done.contains(a));
        if p.addresses.is_empty() {
            return p.log.set_len(0);
        }
        let mut text = String::with_capacity(p.addresses.len() * 65);
        for a in &p.addresses {
            text.push_str(a);
            text.push('\n');
        }
        let path = self.dir.join("pending.log");
        let tmp = self.dir.join("pending.log.tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        p.log = fs::OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }

    /// A blob's bytes, checked against its address; `None` when absent or damaged.
    pub fn read(&self, address: &str) -> Option<Vec<u8>> {
        read_blob(&self.dir, address)
    }
}

/// Path of a blob: `dir/ab/<address>.zst`.
fn blob_path(dir: &Path, address: &str) -> PathBuf {
    dir.join(&address[..2]).join(format!("{address}.zst"))
}

/// A blob's bytes from `dir`, checked against its address.
pub fn read_blob(dir: &Path, address: &str) -> Option<Vec<u8>> {
    if address.len() != 64 || !address.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let compressed = fs::read(blob_path(dir, address)).ok()?;
    let bytes = zstd::stream::decode_all(&compressed[..]).ok()?;
    (hex(&sha256(&bytes)) == address).then_some(bytes)
}

struct Writer {
    dir: PathBuf,
    pending: Arc<Mutex<Pending>>,
    /// Addresses this process wrote or found on disk (content addressing: once is enough).
    known: HashSet<[u8; 32]>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut compressor = match zstd::bulk::Compressor::new(ZSTD_LEVEL) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the seal writer; calls are not sealed");
                return;
            }
        };
        let mut joined = Vec::new();
        // Woken by the first job, the writer lets more gather before taking them all: a call
        // that queues its blobs while the writer is not waiting costs no wake-up (no syscall).
        while let Ok(first) = rx.recv() {
            // A flush (the shipper, before a receipt batch) is answered at once.
            if !matches!(first, Job::Flush(_)) {
                std::thread::sleep(GATHER);
            }
            for job in std::iter::once(first).chain(rx.try_iter()) {
                self.handle(job, &mut compressor, &mut joined);
            }
        }
    }

    fn handle(&mut self, job: Job, compressor: &mut zstd::bulk::Compressor<'_>, joined: &mut Vec<u8>) {
        let blobs = match job {
            Job::Flush(done) => {
                let _ = done.send(());
                return;
            }
            Job::Put(blobs) => blobs,
        };
        for (address, chunks) in blobs {
            if self.known.len() >= MAX_KNOWN {
                // Only a shortcut: the file check below still finds what was written.
                self.known.clear();
            }
            if !self.known.insert(address) {
                continue;
            }
            let hexed = hex(&address);
            let path = blob_path(&self.dir, &hexed);
            if path.exists() {
                continue;
            }
            joined.clear();
            for c in &chunks {
                joined.extend_from_slice(c);
            }
            if let Err(e) = self.write(&path, compressor, joined, &hexed) {
                self.known.remove(&address);
                tracing::error!(address = %hexed, error = %e, "cannot write a sealed body; the call cannot be replayed; check the disk under seals/");
            }
        }
    }

    fn write(
        &self,
        path: &Path,
        compressor: &mut zstd::bulk::Compressor<'_>,
        bytes: &[u8],
        hexed: &str,
    ) -> io::Result<()> {
        let compressed = compressor.compress(bytes)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, &compressed)?;
        fs::rename(&tmp, path)?;
        let mut p = self.pending.lock().map_err(|_| io::Error::other("seal store lock poisoned"))?;
        writeln!(p.log, "{hexed}")?;
        p.addresses.push(hexed.to_owned());
        Ok(())
    }
}
