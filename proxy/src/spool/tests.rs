use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use fleetforge_trust::RunId;
use fleetforge_trust::canonical::hex;
use fleetforge_trust::receipt::{Chain, ReceiptBody};
use fleetforge_trust::sign::SigningKey;
use fleetforge_trust::verify::{Link, check_chain, verify};

use super::{Shippable, Spool, SpoolError, SpoolLimits};

fn limits() -> SpoolLimits {
    SpoolLimits {
        max_bytes: 1 << 30,
        segment_bytes: 16 << 20,
        seal_interval: Duration::from_millis(1),
        fsync: true,
        min_free_disk: 0,
    }
}

fn key(dir: &Path) -> SigningKey {
    SigningKey::load_or_create(&dir.join("keys/proxy.pem")).unwrap()
}

fn body(run: &str, chain: Chain) -> ReceiptBody {
    ReceiptBody::example(RunId::new(run).unwrap(), chain)
}

/// Verifies every shipped receipt and the chains they form; returns (run, seq) pairs.
fn check(shipped: &[Shippable], public: &[u8]) -> Vec<(String, u64)> {
    let mut links: Vec<(String, Link)> = Vec::new();
    for s in shipped {
        let value: serde_json::Value = serde_json::from_slice(&s.json).unwrap();
        let v = verify(&value, |_| Some(public.to_vec())).unwrap();
        let b = &v.receipt.body;
        assert_eq!(b.id.to_string(), s.id);
        links.push((
            b.run.to_string(),
            Link {
                id: s.id.clone(),
                lane: b.chain.lane.clone(),
                seq: b.chain.seq,
                hash: hex(&v.hash),
                prev_hash: b.chain.prev_hash.clone(),
            },
        ));
    }
    links.sort_by(|a, b| (&a.0, &a.1.lane, a.1.seq).cmp(&(&b.0, &b.1.lane, b.1.seq)));
    let mut runs: Vec<String> = links.iter().map(|(r, _)| r.clone()).collect();
    runs.dedup();
    for run in &runs {
        let chain: Vec<Link> = links.iter().filter(|(r, _)| r == run).map(|(_, l)| l.clone()).collect();
        assert!(check_chain(run, &chain).is_empty(), "chain of {run}: {:?}", check_chain(run, &chain));
    }
    links.into_iter().map(|(r, l)| (r, l.seq)).collect()
}

#[test]
fn appended_receipts_seal_into_verifiable_chains() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool"), key(dir.path()), limits()).unwrap();
    let mut reader = spool.reader();
    assert!(reader.next(&spool, 100).unwrap().is_empty());
    for i in 0..7 {
        let run = if i % 2 == 0 { "run-a" } else { "run-b" };
        spool.append(run, |chain| body(run, chain)).unwrap();
    }
    assert_eq!(spool.pending(), 7);
    assert!(reader.next(&spool, 100).unwrap().is_empty(), "unsealed receipts are not shipped");
    assert_eq!(spool.seal().unwrap(), 7);
    let shipped = reader.next(&spool, 100).unwrap();
    assert_eq!(shipped.len(), 7);
    let seqs = check(&shipped, spool.public_key());
    assert_eq!(seqs.iter().filter(|(r, _)| r == "run-a").count(), 4);
    assert_eq!(spool.seal().unwrap(), 0, "nothing left to seal");
    assert!(reader.next(&spool, 100).unwrap().is_empty(), "the reader moves on");
    assert_eq!(spool.unacknowledged(), 7);
}

#[test]
fn a_crash_loses_nothing_and_chains_continue_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let public;
    {
        let spool = Spool::open(&spool_dir, key(dir.path()), limits()).unwrap();
        public = spool.public_key().to_vec();
        for _ in 0..3 {
            spool.append("run-a", |c| body("run-a", c)).unwrap();
        }
        spool.seal().unwrap();
        for _ in 0..2 {
            spool.append("run-a", |c| body("run-a", c)).unwrap();
        }
        // Dropped without sealing or acknowledging: as after kill -9.
    }
    let spool = Spool::open(&spool_dir, key(dir.path()), limits()).unwrap();
    let mut reader = spool.reader();
    let backlog = reader.next(&spool, 100).unwrap();
    assert_eq!(backlog.len(), 5, "sealed and unsealed receipts all come back");
    spool.append("run-a", |c| body("run-a", c)).unwrap();
    spool.seal().unwrap();
    let mut all = backlog;
    all.extend(reader.next(&spool, 100).unwrap());
    let seqs = check(&all, &public);
    assert_eq!(seqs.iter().map(|(_, s)| *s).max(), Some(6), "the chain continues at 6 on the same lane");
}

#[test]
fn a_torn_tail_is_cut_off_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    {
        let spool = Spool::open(&spool_dir, key(dir.path()), limits()).unwrap();
        for _ in 0..3 {
            spool.append("run-a", |c| body("run-a", c)).unwrap();
        }
        spool.seal().unwrap();
    }
    let segment = std::fs::read_dir(&spool_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let good_len = std::fs::metadata(&segment).unwrap().len();
    // Half a frame: a length that promises more than is there, as when power fails mid-write.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, b'{'])
        .unwrap();
    let spool = Spool::open(&spool_dir, key(dir.path()), limits()).unwrap();
    assert_eq!(spool.reader().next(&spool, 100).unwrap().len(), 3);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), good_len, "the torn tail was cut off");
}

#[test]
fn receipts_written_by_earlier_versions_are_recovered_and_shipped() {
    // Earlier versions framed a receipt as its bare canonical body (kind 1), unsealed here as if
    // the proxy stopped before sealing.
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let signing = key(dir.path());
    let lane = signing.id().to_owned();
    let first = body(
        "run-old",
        Chain { lane: lane.clone(), prev_hash: fleetforge_trust::receipt::genesis_hex("run-old", &lane), seq: 1 },
    );
    let bytes = first.canonical().unwrap();
    std::fs::write(spool_dir.join("0000000000000001.seg"), super::frame(super::KIND_RECEIPT, &bytes)).unwrap();

    let spool = Spool::open(&spool_dir, signing, limits()).unwrap();
    spool.append("run-old", |c| body("run-old", c)).unwrap();
    spool.seal().unwrap();
    let shipped = spool.reader().next(&spool, 100).unwrap();
    assert_eq!(shipped.len(), 2, "the old receipt is sealed again and shipped with the new one");
    assert_eq!(shipped[0].id, first.id.to_string(), "the old record's id is read from its body");
    assert_eq!(check(&shipped, spool.public_key()), [("run-old".to_owned(), 1), ("run-old".to_owned(), 2)]);
}

#[test]
fn acknowledged_closed_segments_are_deleted_and_heads_survive() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let small = SpoolLimits { segment_bytes: 1500, ..limits() };
    let segments = |d: &Path| {
        std::fs::read_dir(d).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "seg")).count()
    };
    {
        let spool = Spool::open(&spool_dir, key(dir.path()), small.clone()).unwrap();
        for _ in 0..6 {
            spool.append("run-a", |c| body("run-a", c)).unwrap();
        }
        spool.seal().unwrap();
        let shipped = spool.reader().next(&spool, 100).unwrap();
        assert_eq!(shipped.len(), 6);
        assert!(segments(&spool_dir) >= 3, "small segments rolled");
        let before = spool.bytes();
        spool.ack(shipped.iter().map(|s| s.segment)).unwrap();
        assert_eq!(segments(&spool_dir), 1, "only the active segment is left");
        assert!(spool.bytes() < before);
    }
    let spool = Spool::open(&spool_dir, key(dir.path()), small).unwrap();
    assert!(spool.reader().next(&spool, 100).unwrap().is_empty(), "acknowledged receipts are not shipped again");
    spool.append("run-a", |c| body("run-a", c)).unwrap();
    spool.seal().unwrap();
    let next = spool.reader().next(&spool, 100).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&next[0].json).unwrap();
    assert_eq!(value["chain"]["seq"], 7, "heads.json carried the chain across the deletion");
}

#[test]
fn one_spool_per_proxy_and_a_full_spool_says_why_but_still_takes_started_calls() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let spool = Spool::open(&spool_dir, key(dir.path()), SpoolLimits { max_bytes: 2000, ..limits() }).unwrap();
    let second = Spool::open(&spool_dir, key(dir.path()), limits());
    assert!(matches!(second, Err(SpoolError::Locked(_))), "{second:?}");
    assert!(!spool.is_full() && spool.refusal().is_none());
    let mut appended = 0;
    while !spool.is_full() {
        spool.append("run-a", |c| body("run-a", c)).unwrap();
        appended += 1;
        assert!(appended < 100, "2000 bytes never filled");
    }
    let why = spool.refusal().unwrap();
    assert!(why.contains("spool_max_bytes") && why.contains(&spool.bytes().to_string()), "{why}");
    // A call that started before the limit was reached still gets its receipt.
    spool.append("run-a", |c| body("run-a", c)).unwrap();
    assert_eq!(spool.resume("run-a").map(|h| h.0), Some(appended + 1));
}

#[test]
fn the_spliced_chain_position_is_what_serializing_it_gives() {
    let placeholder = super::Placeholder::new();
    let draft_chain = Chain { lane: "k1".into(), prev_hash: placeholder.sentinel.clone(), seq: 0 };
    let quoted = String::from_utf8(placeholder.needle.clone()).unwrap();
    // Plain, a capability, and a capability quoting the needle inside a string (escaped, so not a
    // second occurrence).
    let capability = |token_id: String| fleetforge_trust::receipt::Capability {
        call_token_id: Some("right(\"x\")".into()),
        expires: 1,
        token_id,
    };
    for capability in [None, Some(capability("ab".into())), Some(capability(quoted))] {
        let mut draft_body = body("run-a", draft_chain.clone());
        draft_body.capability = capability;
        let draft = draft_body.canonical().unwrap();
        let at = placeholder.find(&draft).expect("the needle occurs once");
        for seq in [1, 9, 10, 1_234_567, (1 << 53) - 1] {
            let mut spliced = draft[..at].to_vec();
            super::Placeholder::write_position(&mut spliced, &"ab".repeat(32), seq);
            spliced.extend_from_slice(&draft[at + placeholder.needle.len()..]);
            let mut want = draft_body.clone();
            want.chain.prev_hash = "ab".repeat(32);
            want.chain.seq = seq;
            assert_eq!(String::from_utf8(spliced).unwrap(), String::from_utf8(want.canonical().unwrap()).unwrap());
        }
    }
}

#[test]
fn a_body_quoting_the_placeholder_in_every_string_still_chains() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool"), key(dir.path()), limits()).unwrap();
    let mut reader = spool.reader();
    for _ in 0..3 {
        spool
            .append("run-a", |c| {
                let mut b = body("run-a", c.clone());
                // Strings holding the needle's text are escaped, so the needle still occurs once
                // and the position is spliced in (the serialize-again fallback is for a needle
                // that occurs twice).
                let needle = String::from_utf8(spool.placeholder.needle.clone()).unwrap();
                b.step_label = Some(needle.clone());
                b.capability =
                    Some(fleetforge_trust::receipt::Capability { call_token_id: None, expires: 0, token_id: needle });
                assert!(spool.placeholder.find(&b.canonical().unwrap()).is_some());
                b
            })
            .unwrap();
    }
    spool.seal().unwrap();
    let shipped = reader.next(&spool, 100).unwrap();
    assert_eq!(
        check(&shipped, spool.public_key()),
        vec![("run-a".into(), 1), ("run-a".into(), 2), ("run-a".into(), 3)]
    );
}

#[test]
fn a_backlog_larger_than_a_read_chunk_ships_whole_a_piece_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool"), key(dir.path()), limits()).unwrap();
    // About 1.5 KiB each: well over one 1 MiB read chunk in one segment, sealed in a few batches.
    let receipts = 2_000;
    for i in 0..receipts {
        spool.append("run-a", |c| body("run-a", c)).unwrap();
        if i % 700 == 699 {
            spool.seal().unwrap();
        }
    }
    spool.seal().unwrap();
    assert!(spool.bytes() > super::READ_CHUNK, "the backlog spans more than one chunk: {}", spool.bytes());
    let mut reader = spool.reader();
    let mut shipped = Vec::new();
    let mut rounds = 0;
    for _ in 0..100 {
        let next = reader.next(&spool, 100).unwrap();
        if next.is_empty() {
            break;
        }
        rounds += 1;
        shipped.extend(next);
    }
    assert!(rounds >= 2, "the backlog came in pieces, not in one read: {rounds} round(s)");
    let seqs = check(&shipped, spool.public_key());
    assert_eq!(seqs.len(), receipts, "every receipt shipped exactly once");
    assert_eq!(seqs.last(), Some(&("run-a".to_owned(), receipts as u64)));
}

#[test]
fn a_bad_frame_at_the_start_of_a_full_chunk_stops_the_reader_instead_of_looping() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let spool = Spool::open(&spool_dir, key(dir.path()), limits()).unwrap();
    while spool.bytes() < 2 * super::READ_CHUNK {
        spool.append("run-a", |c| body("run-a", c)).unwrap();
    }
    spool.seal().unwrap();
    // Flip a payload byte of the first frame of the (active) segment: its CRC no longer matches.
    let segment = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut data = std::fs::read(&segment).unwrap();
    data[20] ^= 0xff;
    std::fs::write(&segment, data).unwrap();
    let read = spool.reader().next(&spool, 100).unwrap();
    assert!(read.is_empty(), "nothing past the bad frame of the active segment is shipped: {}", read.len());
}

#[test]
fn what_a_run_spent_survives_a_crash_and_the_deletion_of_its_segments() {
    use fleetforge_trust::receipt::{Budget, Usage};
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let small = SpoolLimits { segment_bytes: 1500, ..limits() };
    let charged = |c: Chain, estimated: bool| {
        let mut b = body("run-a", c);
        b.usage = (!estimated).then_some(Usage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            cost_micro_usd: Some(7),
            cached_input_tokens: None,
            model: None,
            provider: None,
            reasoning_tokens: None,
        });
        b.budget =
            Some(Budget { estimated, reserved_tokens: 40, cost_reserved_micro_usd: Some(20), ..Budget::default() });
        b
    };
    {
        let spool = Spool::open(&spool_dir, key(dir.path()), small.clone()).unwrap();
        spool.append("run-a", |c| charged(c, false)).unwrap();
        spool.append("run-a", |c| charged(c, true)).unwrap();
        // A refused call: no budget part, no usage.
        spool.append("run-a", |c| body("run-a", c)).unwrap();
        let expected = super::Spent { tokens: 15 + 40, cost_micro_usd: 7 + 20, calls: 2 };
        assert_eq!(spool.resume("run-a"), Some((3, expected)));
        // Dropped without sealing: as after kill -9.
    }
    let spool = Spool::open(&spool_dir, key(dir.path()), small.clone()).unwrap();
    let expected = super::Spent { tokens: 55, cost_micro_usd: 27, calls: 2 };
    assert_eq!(spool.resume("run-a"), Some((3, expected)), "recovered from the segments");
    spool.append("run-a", |c| charged(c, false)).unwrap();
    spool.seal().unwrap();
    let shipped = spool.reader().next(&spool, 100).unwrap();
    spool.ack(shipped.iter().map(|s| s.segment)).unwrap();
    drop(spool);
    let spool = Spool::open(&spool_dir, key(dir.path()), small).unwrap();
    let expected = super::Spent { tokens: 70, cost_micro_usd: 34, calls: 3 };
    assert_eq!(spool.resume("run-a"), Some((4, expected)), "heads.json carried it across the deletion");
    assert_eq!(spool.resume("run-b"), None);
}
