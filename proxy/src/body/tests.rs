#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt as _;

use super::{OnEnd, ProxyBody, UpstreamBody};
use crate::context::{Outcome, Summary};

type Ended = Arc<Mutex<Vec<(Summary, &'static str)>>>;

fn recorder() -> (Ended, OnEnd) {
    let ended: Ended = Arc::default();
    let sink = ended.clone();
    let on_end: OnEnd = Box::new(move |summary, outcome| {
        let how = match outcome {
            Outcome::Completed => "completed",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamAborted(_) => "upstream_aborted",
            Outcome::Failed(_) => "failed",
        };
        sink.lock().unwrap().push((summary, how));
    });
    (ended, on_end)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

#[tokio::test]
async fn a_replayed_body_streams_through_the_tap_and_ends_once_with_its_digest() {
    let (ended, on_end) = recorder();
    let chunks =
        ["data: a\n\n", "data: b\n\n", "data: [DONE]\n\n"].map(|c: &'static str| Bytes::from_static(c.as_bytes()));
    let body = ProxyBody::tapped(UpstreamBody::replayed(chunks), None, None, None, on_end);
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(got, "data: a\n\ndata: b\n\ndata: [DONE]\n\n");
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 1, "the end-of-body callback runs exactly once");
    let (summary, how) = &ended[0];
    assert_eq!(*how, "completed");
    assert_eq!((summary.upstream_bytes, summary.client_bytes), (got.len() as u64, got.len() as u64));
    assert_eq!(summary.digest, Some(sha256(&got)));
}

#[tokio::test]
async fn a_rewrite_changes_what_the_client_gets_but_not_the_digest_of_what_arrived() {
    let (ended, on_end) = recorder();
    let chunks = ["keep 1|", "drop me|", "keep 2|"].map(|c: &'static str| Bytes::from_static(c.as_bytes()));
    let rewrite = Box::new(|chunk: Bytes| if chunk.starts_with(b"drop") { Bytes::new() } else { chunk });
    let body = ProxyBody::tapped(UpstreamBody::replayed(chunks), Some(rewrite), None, None, on_end);
    assert_eq!(http_body::Body::size_hint(&body).exact(), None, "a rewritten body has no known length");
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(got, "keep 1|keep 2|");
    let ended = ended.lock().unwrap();
    let (summary, _) = &ended[0];
    assert_eq!(summary.client_bytes, 14);
    assert_eq!(summary.upstream_bytes, 22);
    assert_eq!(summary.digest, Some(sha256(b"keep 1|drop me|keep 2|")), "the digest covers the upstream's bytes");
}

#[tokio::test]
async fn an_undigested_body_streams_the_same_and_ends_without_a_digest() {
    let (ended, on_end) = recorder();
    let chunks = ["data: a\n\n", "data: [DONE]\n\n"].map(|c: &'static str| Bytes::from_static(c.as_bytes()));
    let body = ProxyBody::tapped(UpstreamBody::replayed(chunks), None, None, None, on_end).undigested();
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(got, "data: a\n\ndata: [DONE]\n\n");
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0.client_bytes, got.len() as u64);
    assert_eq!(ended[0].0.digest, None, "nothing records the call, so nothing hashes its body");
}

#[tokio::test]
async fn chunks_already_there_go_out_as_one_frame() {
    let (_ended, on_end) = recorder();
    let chunks = ["one", "two"].map(|c: &'static str| Bytes::from_static(c.as_bytes()));
    let mut body = ProxyBody::tapped(UpstreamBody::replayed(chunks), None, None, None, on_end);
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "onetwo", "coalesced: both chunks were ready");
    assert!(body.frame().await.is_none());
}

#[test]
fn a_body_dropped_before_its_end_ends_as_client_gone() {
    let (ended, on_end) = recorder();
    let body = ProxyBody::tapped(UpstreamBody::replayed([Bytes::from_static(b"one")]), None, None, None, on_end);
    assert!(ended.lock().unwrap().is_empty());
    drop(body);
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1, "client_gone");
    assert_eq!(ended[0].0.upstream_bytes, 0);
}

#[tokio::test]
async fn an_empty_body_ends_at_once() {
    let (ended, on_end) = recorder();
    let body = ProxyBody::tapped(UpstreamBody::replayed(Vec::new()), None, None, None, on_end);
    assert_eq!(ended.lock().unwrap().len(), 1, "nothing will be polled, so the call is complete now");
    assert!(http_body::Body::is_end_stream(&body));
    assert_eq!(ended.lock().unwrap()[0].0.digest, Some(sha256(b"")));
}
