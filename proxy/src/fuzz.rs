//! Fuzz entry points: each takes arbitrary bytes, drives one parser that reads untrusted input,
//! and panics only when an invariant breaks. `fuzz/` links them into libFuzzer (`scripts/fuzz`
//! runs them); `proxy/tests/fuzz_corpus.rs` runs every committed seed and every past crash
//! through them in `cargo test`.
//!
//! Besides "no panic, no hang", the targets check what the parsers promise:
//! - the usage reader and the usage stripper give the same answer however a body is split into
//!   chunks (the network decides the split);
//! - the streaming JCS canonicalizer refuses exactly what `serde_json` refuses and writes exactly
//!   what the `Value` canonicalizer writes;
//! - a request key does not depend on header order, and is the digest of its canonical form;
//! - the policy input document survives its own JSON round trip;
//! - a malformed `Proxy-Authorization` error never echoes the password;
//! - a run token that authorizes a call mints a per-call token that `verify_for_call` (biscuit-auth's
//!   own authorizer) accepts for the same call;
//! - the spool reopens any segment file — torn, corrupt or forged frames — without panicking.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fleetforge_trust::canonical::{json_to_canonical, sha256, to_canonical_any};
use fleetforge_trust::capability::{self, RootKeys, RunToken};
use fleetforge_trust::key::{KeyInput, KeyRules, request_key as key_of};
use fleetforge_trust::sign::SigningKey;
use fleetforge_trust::wire::ReceiptBatch;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, Flags};
use crate::identify;
use crate::policy::extract::{CallFacts, document};
use crate::policy::input::{Document, StateInput};
use crate::spool::{Spool, SpoolLimits};
use crate::usage::{StripUsage, UsageReader, inject};

/// A fuzz target: its name (the corpus folder under `fuzz/corpus/`) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("sse_usage", sse_usage),
    ("json_usage", json_usage),
    ("strip_usage", strip_usage),
    ("canonical_json", canonical_json),
    ("request_key", request_key),
    ("policy_input", policy_input),
    ("config", config),
    ("credentials", credentials),
    ("ingest_batch", ingest_batch),
    ("spool_segment", spool_segment),
    ("capability", capability),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The input's first byte seeds where the rest is cut into chunks (1 to 64 bytes each).
fn chunked(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let Some((&seed, body)) = data.split_first() else { return (data, Vec::new()) };
    let mut state = u32::from(seed) | 1;
    let mut chunks = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 64 + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        chunks.push(head);
        rest = tail;
    }
    (body, chunks)
}

fn usage(data: &[u8], sse: bool) {
    let (body, chunks) = chunked(data);
    let mut whole = UsageReader::new(sse).with_reply();
    whole.feed(body);
    let mut parts = UsageReader::new(sse).with_reply();
    for chunk in &chunks {
        parts.feed(chunk);
    }
    assert_eq!(whole.counts(), parts.counts(), "usage depends on how the body was split");
    assert_eq!(whole.reply(), parts.reply(), "reply fields depend on how the body was split");
}

/// The usage reader on an SSE stream.
pub fn sse_usage(data: &[u8]) {
    usage(data, true);
}

/// The usage reader on a JSON body; also the `stream_options` injection of a request body.
pub fn json_usage(data: &[u8]) {
    usage(data, false);
    let body = data.get(1..).unwrap_or_default();
    if let Some(injected) = inject(body) {
        let before = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body);
        if before.is_ok_and(|o| !o.contains_key("stream_options")) {
            let after: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&injected).expect("injecting into a JSON object keeps it JSON");
            assert_eq!(after["stream_options"]["include_usage"], serde_json::Value::Bool(true));
        }
    }
}

/// The stripper of the injected usage chunk: the same output for any split of the stream.
pub fn strip_usage(data: &[u8]) {
    let (body, chunks) = chunked(data);
    let mut whole = StripUsage::default();
    let mut expected = whole.rewrite(Bytes::copy_from_slice(body)).to_vec();
    expected.extend_from_slice(&whole.rewrite(Bytes::new()));
    let mut parts = StripUsage::default();
    let mut got = Vec::new();
    for chunk in chunks {
        got.extend_from_slice(&parts.rewrite(Bytes::copy_from_slice(chunk)));
    }
    got.extend_from_slice(&parts.rewrite(Bytes::new()));
    assert_eq!(got, expected, "the stripped stream depends on how it was split");
}

/// The streaming JCS canonicalizer against `serde_json` and the `Value` canonicalizer.
pub fn canonical_json(data: &[u8]) {
    let mut fast = Vec::new();
    let fast_ok = json_to_canonical(data, &mut fast).is_some();
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(value) => {
            let mut slow = Vec::new();
            if to_canonical_any(&value, &mut slow).is_ok() {
                assert!(fast_ok, "serde_json parsed it, the streaming canonicalizer refused it");
                assert_eq!(fast, slow, "the two canonical forms differ");
                let mut again = Vec::new();
                assert!(json_to_canonical(&fast, &mut again).is_some(), "canonical form does not parse");
                assert_eq!(again, fast, "canonicalizing is not idempotent");
            }
        }
        Err(_) => assert!(!fast_ok, "serde_json refused it, the streaming canonicalizer took it"),
    }
}

/// A request as lines: method, host, port, path and query, headers (`name: value`) up to a blank
/// line, then the body.
struct RawRequest<'a> {
    method: &'a str,
    host: &'a str,
    port: u16,
    path: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a [u8],
}

fn raw_request(data: &[u8]) -> RawRequest<'_> {
    let mut rest = data;
    let mut line = || -> &[u8] {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let (l, r) = rest.split_at(end);
        rest = r.get(1..).unwrap_or_default();
        l
    };
    fn text<'a>(l: &'a [u8], fallback: &'static str) -> &'a str {
        std::str::from_utf8(l).unwrap_or(fallback)
    }
    let method = text(line(), "POST");
    let host = text(line(), "api.openai.com");
    let port = text(line(), "443").trim().parse().unwrap_or(443);
    let path = text(line(), "/v1/chat/completions");
    let mut headers = Vec::new();
    loop {
        let l = line();
        if l.is_empty() {
            break;
        }
        let Some(colon) = memchr::memchr(b':', l) else { continue };
        let name = text(&l[..colon], "x");
        headers.push((name, l[colon + 1..].trim_ascii()));
    }
    RawRequest { method, host, port, path, headers, body: rest }
}

/// The seal's request key: independent of header order, the digest of its canonical form.
pub fn request_key(data: &[u8]) {
    let raw = raw_request(data);
    let rules = KeyRules { exclude: vec!["/metadata".into(), "/user".into()], ..KeyRules::default() };
    let input = KeyInput {
        method: raw.method,
        scheme: "https",
        host: raw.host,
        port: raw.port,
        path_and_query: raw.path,
        headers: &raw.headers,
        body: raw.body,
    };
    let Ok(key) = key_of(&input, &rules) else { return };
    assert_eq!(key.digest, sha256(&key.canonical), "the key is not the digest of its canonical form");
    serde_json::from_slice::<serde_json::Value>(&key.canonical).expect("a key's canonical form is JSON");
    let reversed: Vec<_> = raw.headers.iter().rev().copied().collect();
    let again = key_of(&KeyInput { headers: &reversed, ..input }, &rules).expect("the same request keyed twice");
    // Repeated headers keep their order among themselves: only distinct names may move.
    let mut names: Vec<&str> = raw.headers.iter().map(|(n, _)| *n).collect();
    names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
    if names.windows(2).all(|w| !w[0].eq_ignore_ascii_case(w[1])) {
        assert_eq!(key, again, "the key depends on header order");
    }
}

/// Builds the headers a request's `name: value` lines describe, skipping what is not a valid
/// header (hyper refuses those before the proxy sees them).
fn header_map(headers: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// The policy input builder and its LLM/MCP field extraction; the document's JSON round trip,
/// its binary layout, and the `max_tokens` cap obligation.
pub fn policy_input(data: &[u8]) {
    let raw = raw_request(data);
    let headers = header_map(&raw.headers);
    let body = Bytes::copy_from_slice(raw.body);
    let facts = crate::facts::read(raw.host, raw.path, true, &body);
    let call = CallFacts {
        run: "run-fuzz",
        agent: Some("agent"),
        tenant: None,
        step: 1,
        time: "2026-01-01T00:00:00Z".into(),
        method: raw.method,
        scheme: "https",
        host: raw.host,
        port: raw.port,
        path_and_query: raw.path,
    };
    let doc = document(&call, &headers, Some(&facts), StateInput::default());
    let parsed = Document::parse(doc.json()).expect("the input document parses back");
    assert_eq!(parsed.input, doc.input, "the input document changed in its JSON round trip");
    assert!(!doc.binary().is_empty());
    if let Some(capped) = crate::policy::extract::cap_max_tokens(&body, 17) {
        serde_json::from_slice::<serde_json::Value>(&capped).expect("a capped body is JSON");
    }
}

/// The config loader on any TOML text (environment and flags empty).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::from_text(Path::new("fuzz.toml"), &text, &|_| None, &Flags::default()) {
        assert!(!e.to_string().is_empty(), "a config error says nothing");
    }
}

/// `Proxy-Authorization` (the input's first line) and the `x-fleetforge-run` / `-token` headers
/// (the next two): errors name the problem and never echo the password or token. A secret is
/// echoed when the message changes with it: the same input with the secret's letters and digits
/// shifted by one (as valid or invalid as before) must get the same message.
pub fn credentials(data: &[u8]) {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let auth = lines.next().unwrap_or_default();
    let run = lines.next();
    let token = lines.next();
    if let Ok(value) = HeaderValue::from_bytes(auth) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::PROXY_AUTHORIZATION, value);
        match identify::credentials(&headers) {
            Ok(Some(c)) => assert!(!c.run.as_str().is_empty()),
            Ok(None) => panic!("a present Proxy-Authorization read as absent"),
            Err(e) => password_not_echoed(auth, &e.message),
        }
    }
    let with_token = |token: Option<&[u8]>| {
        let mut headers = HeaderMap::new();
        for (name, value) in [(crate::headers::X_RUN, run), (crate::headers::X_TOKEN, token)] {
            if let Some(Ok(v)) = value.map(HeaderValue::from_bytes) {
                headers.insert(name, v);
            }
        }
        headers
    };
    let headers = with_token(token);
    match identify::header_credentials(&headers) {
        Ok(Some(c)) => assert!(!c.run.as_str().is_empty()),
        Ok(None) => assert!(!headers.contains_key(crate::headers::X_RUN)),
        Err(e) => {
            if let Some(shifted) = token.map(shift).filter(|t| Some(t.as_slice()) != token) {
                let again =
                    identify::header_credentials(&with_token(Some(&shifted))).expect_err("as invalid as before");
                assert_eq!(e.message, again.message, "the error depends on the token's letters: it echoes them");
            }
        }
    }
}

/// The `Proxy-Authorization` value `auth` failed with `message`: the same value with its
/// password shifted must fail with the same message.
fn password_not_echoed(auth: &[u8], message: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Only an ASCII value gets as far as its password (others fail as "not ASCII").
    let Some(text) = std::str::from_utf8(auth).ok().filter(|t| t.is_ascii()) else { return };
    let Some((scheme, encoded)) = text.trim().split_once(' ') else { return };
    let Ok(decoded) = b64.decode(encoded.trim()) else { return };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else { return };
    let password = &decoded[colon + 1..];
    let shifted = shift(password);
    if shifted == password {
        return;
    }
    let mut user_pass = decoded[..=colon].to_vec();
    user_pass.extend_from_slice(&shifted);
    let Ok(value) = HeaderValue::from_str(&format!("{scheme} {}", b64.encode(&user_pass))) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::PROXY_AUTHORIZATION, value);
    let again = identify::credentials(&headers).expect_err("as invalid as before");
    assert_eq!(message, again.message, "the error depends on the password's letters: it echoes them");
}

/// Each ASCII letter and digit moved one on in its class (`z` to `a`, `9` to `0`); the rest kept.
fn shift(secret: &[u8]) -> Vec<u8> {
    secret
        .iter()
        .map(|&b| match b {
            b'z' => b'a',
            b'Z' => b'A',
            b'9' => b'0',
            b'a'..=b'y' | b'A'..=b'Y' | b'0'..=b'8' => b + 1,
            other => other,
        })
        .collect()
}

/// Control's receipt-batch ingest body: the batch parsed as `POST /v1/receipts` parses it, then
/// every receipt proven (hash, Merkle proof) and verified as control does.
pub fn ingest_batch(data: &[u8]) {
    static PUBLIC: OnceLock<Vec<u8>> = OnceLock::new();
    let public = PUBLIC.get_or_init(|| seed_key().public_key().to_vec());
    let Ok(batch) = serde_json::from_slice::<ReceiptBatch>(data) else { return };
    for receipt in &batch.receipts {
        let proven = fleetforge_trust::verify::prove(receipt);
        let verified = fleetforge_trust::verify::verify(receipt, |_| Some(public.to_vec()));
        if verified.is_ok() {
            assert!(proven.is_ok(), "a receipt verified but did not prove");
        }
    }
}

/// The signing key of the spool and ingest targets and of their seeds: fixed, so a seed signed
/// with it verifies.
pub fn seed_key() -> SigningKey {
    SigningKey::from_pem(SEED_KEY_PEM).expect("the seed key is a PKCS#8 ed25519 key")
}

/// A PKCS#8 ed25519 key for fuzzing only (never a proxy's key).
const SEED_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJ\n-----END PRIVATE KEY-----\n";

/// The spool limits of the spool target and its seeds: no size or disk limits, no fsync.
pub fn seed_spool_limits() -> SpoolLimits {
    SpoolLimits {
        max_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        seal_interval: Duration::from_millis(1),
        fsync: false,
        min_free_disk: 0,
    }
}

/// The spool folder of this process's spool target.
fn spool_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| std::env::temp_dir().join(format!("fleetforge-fuzz-spool-{}", std::process::id())))
}

/// The spool's recovery of a segment file: the input, read as `kind, u16 length, payload`
/// records, becomes frames with valid CRCs (so the fuzzer reaches the record decoder rather than
/// stopping at the checksum), and whatever bytes are left become a torn tail. The spool is
/// opened on it, every receipt it then offers is read, and it is reopened once more.
pub fn spool_segment(data: &[u8]) {
    let mut segment = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let kind = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        if len == 0 || rest.len() < 3 + len {
            break;
        }
        segment.extend_from_slice(&crate::spool::frame(kind, &rest[3..3 + len]));
        rest = &rest[3 + len..];
    }
    segment.extend_from_slice(rest);
    let dir = spool_dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create the fuzz spool folder");
    std::fs::write(dir.join(format!("{:016}.seg", 1)), &segment).expect("write the segment");
    let limits = seed_spool_limits();
    for _ in 0..2 {
        let Ok(spool) = Spool::open(dir, seed_key(), limits.clone()) else { return };
        let mut reader = spool.reader();
        let mut seen = 0;
        while let Ok(batch) = reader.next(&spool, 256) {
            if batch.is_empty() || seen > 10_000 {
                break;
            }
            for receipt in &batch {
                serde_json::from_slice::<serde_json::Value>(&receipt.json).expect("a shipped receipt is JSON");
            }
            seen += batch.len();
        }
        drop(spool);
    }
}

/// The private root key of the capability target's seeds (key id 1): fixed, so seed tokens verify.
pub const SEED_ROOT: [u8; 32] = [7; 32];

/// The root keys the capability target verifies against: [`SEED_ROOT`]'s public key as id 1.
pub fn seed_roots() -> RootKeys {
    let root = capability::root_from_bytes(&SEED_ROOT).expect("32 bytes are an ed25519 key");
    let mut roots = RootKeys::default();
    roots.insert(1, &root.public().to_bytes()).expect("a public key of 32 bytes");
    roots
}

/// Biscuit token intake: any text as a run token; one that verifies must authorize the call its
/// own claims allow (or refuse it), and a per-call token minted for an allowed call must pass
/// `verify_for_call` for that call.
pub fn capability(data: &[u8]) {
    static ROOTS: OnceLock<RootKeys> = OnceLock::new();
    let roots = ROOTS.get_or_init(seed_roots);
    let token = String::from_utf8_lossy(data);
    let _ = capability::root_key_id(&token);
    let Ok(run) = RunToken::verify(&token, roots) else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(run.expires.saturating_sub(1).min(1 << 40));
    let call = capability::CallFacts {
        host: "api.openai.com",
        method: "POST",
        path: "/v1/chat/completions",
        model: Some("gpt-4o-mini"),
        step: 1,
        now,
    };
    if run.authorize(&run.run, &call).is_err() {
        return;
    }
    let minted = run.mint_call(&call, Duration::from_secs(60)).expect("an allowed call mints a token");
    let minted = minted.to_base64().expect("a per-call token serializes");
    capability::verify_for_call(&minted, roots, &call)
        .expect("a token minted for an allowed call is accepted for that call by biscuit-auth");
}
