use std::time::Duration;

use bytes::Bytes;
use fleetforge_trust::canonical::sha256;
use fleetforge_trust::text::hex;
use http::{HeaderMap, HeaderValue};

use super::{SealStore, read_blob};
use crate::body::Recording;
use crate::headers::is_secret_header;

#[test]
fn credentials_and_volatile_headers_are_secret() {
    for h in [
        "Authorization",
        "x-api-key",
        "Cookie",
        "x-stainless-retry-count",
        "Idempotency-Key",
        "User-Agent",
        "x-goog-api-key",
        "x-fleetforge-token",
    ] {
        assert!(is_secret_header(h), "{h}");
    }
    for h in ["content-type", "anthropic-version", "openai-beta"] {
        assert!(!is_secret_header(h), "{h}");
    }
}

#[test]
fn recording_keeps_chunks_and_gives_up_over_the_limit() {
    let mut r = Recording::new(10);
    r.push(&Bytes::from_static(b"abcd"));
    r.push(&Bytes::from_static(b"efgh"));
    let chunks = r.finish().unwrap();
    assert_eq!(chunks.iter().map(|(c, _)| c.len()).collect::<Vec<_>>(), vec![4, 4]);
    let mut r = Recording::new(6);
    r.push(&Bytes::from_static(b"abcd"));
    r.push(&Bytes::from_static(b"efgh"));
    assert!(r.finish().is_none());
}

#[tokio::test]
async fn blobs_are_stored_compressed_under_their_address_and_pending_until_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(dir.path()).unwrap();
    let body = Bytes::from(r#"{"choices":[{"message":{"content":"hello"}}]}"#.repeat(50));
    let address = sha256(&body);
    store.put(vec![(address, vec![body.slice(..100), body.slice(100..)])]);
    store.put(vec![(address, vec![body.clone()])]);
    store.flush().await;
    let hexed = hex(&address);
    assert_eq!(store.pending(), vec![hexed.clone()], "content addressing: once");
    let on_disk = std::fs::read(dir.path().join(&hexed[..2]).join(format!("{hexed}.zst"))).unwrap();
    assert!(on_disk.len() < body.len() / 5, "compressed: {} of {}", on_disk.len(), body.len());
    assert_eq!(read_blob(dir.path(), &hexed).unwrap(), body.to_vec());
    drop(store);
    // Pending blobs survive a restart; shipped ones are forgotten.
    std::thread::sleep(Duration::from_millis(50));
    let store = SealStore::open(dir.path()).unwrap();
    assert_eq!(store.pending(), vec![hexed.clone()]);
    // Shipping part of what is pending keeps the rest in the log.
    let other = Bytes::from_static(b"another body");
    store.put(vec![(sha256(&other), vec![other.clone()])]);
    store.flush().await;
    store.shipped(std::slice::from_ref(&hexed)).unwrap();
    assert_eq!(store.pending(), vec![hex(&sha256(&other))]);
    drop(store);
    std::thread::sleep(Duration::from_millis(50));
    let store = SealStore::open(dir.path()).unwrap();
    assert_eq!(store.pending(), vec![hex(&sha256(&other))]);
    store.shipped(&[hex(&sha256(&other))]).unwrap();
    assert!(store.pending().is_empty());
    drop(store);
    assert!(SealStore::open(dir.path()).unwrap().pending().is_empty());
    // An altered blob does not read back.
    let path = dir.path().join(&hexed[..2]).join(format!("{hexed}.zst"));
    std::fs::write(&path, zstd::stream::encode_all(&b"other"[..], 1).unwrap()).unwrap();
    assert!(read_blob(dir.path(), &hexed).is_none());
}

#[test]
fn credentials_are_scrubbed_from_sealed_bodies_even_across_chunks() {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer sk-live-abcdef123456"));
    headers.insert("x-api-key", HeaderValue::from_static("short"));
    let secrets = super::secrets_of(&headers, "/v1/x?key=AIzaSECRETSECRET&alt=sse");
    assert_eq!(secrets.len(), 2, "too short a value is not looked for");
    let echoed = [
        Bytes::from_static(b"{\"auth\":\"Bearer sk-live-abc"),
        Bytes::from_static(b"def123456\",\"q\":\"AIzaSECRETSECRET\"}"),
    ];
    let clean = super::scrub(&secrets, &echoed).unwrap();
    assert_eq!(&clean[..], &b"{\"auth\":\"Bearer [redacted]\",\"q\":\"[redacted]\"}"[..]);
    assert!(super::scrub(&secrets, &[Bytes::from_static(b"nothing here")]).is_none());
}

#[test]
fn gzip_bodies_are_keyed_decoded() {
    use std::io::Write as _;
    let json = br#"{"model":"gpt-4o","messages":[]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    assert_eq!(&super::decode(&headers, &Bytes::from(gz.finish().unwrap()))[..], json);
}
