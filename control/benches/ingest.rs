//! Ingest throughput into Postgres (and SQLite), in one run, against a baseline.
//!
//! Starts the control service in-process on a fresh Postgres database (127.0.0.1:5432), registers
//! a proxy key, pre-builds 50,000 signed receipts in four streams of 50 runs each (as four
//! proxies' spools would ship them), then POSTs them over HTTP in batches of 500, each stream one
//! batch at a time like the proxy's shipper: first all four streams one after the other (one
//! proxy), then the four streams at once (four proxies). The figure includes JSON parsing,
//! hashing, Merkle proofs, signature checks (once per batch root), chain checks and the inserts.
//! Baseline: the same rows inserted with the portable multi-row INSERTs and no verification,
//! straight into the store, one batch at a time. Then the same on SQLite.
//!
//! Every verified receipt is also appended to the tenant's transparency log in its ingest
//! transaction. Last, the transparency log at scale: a tenant log of `LOG_SIZE` (default 10^6)
//! receipts is written straight into a fresh Postgres database (appended in batches of 10,000,
//! as ingest does), then control serves 2,000 inclusion proofs of random receipts and 200
//! consistency proofs between random sizes, one request at a time over HTTP: p50 and p99.
//!
//! Run: `cargo bench -p fleetforge-control --bench ingest` (Postgres must be running).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use fleetforge_control::config::{ControlConfig, Flags};
use fleetforge_control::store::{self, ReceiptRow, Store};
use fleetforge_trust::RunId;
use fleetforge_trust::Secret;
use fleetforge_trust::canonical::hex;
use fleetforge_trust::receipt::{Chain, Receipt, ReceiptBody, Seal, genesis_hex};
use fleetforge_trust::sign::SigningKey;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The allocator of `fleetforge-control` (feature `mimalloc`, on by default), so the bench
/// measures what the service pays.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 50;
const STREAMS: usize = 4;
const RECEIPTS: usize = 50_000;
const BATCH: usize = 500;

/// A receipt of realistic size: digests and byte counts of a chat completion.
fn body(run: &str, lane: &str, seq: u64, prev: String) -> ReceiptBody {
    let mut b = ReceiptBody::example(RunId::new(run).unwrap(), Chain { lane: lane.into(), prev_hash: prev, seq });
    b.seal = Seal {
        request_bytes: 412,
        request_digest: Some(hex(&[7; 32])),
        response_bytes: 1830,
        response_digest: Some(hex(&[9; 32])),
        status: Some(200),
        ..Seal::default()
    };
    b.ended_at = "2026-11-26T18:00:00.000250Z".into();
    b
}

/// Signed receipts in shipping order, in batches of `BATCH` (each batch signed once, as the
/// sealer does).
fn receipts(key: &SigningKey, stream: usize) -> Vec<Vec<Value>> {
    let run = |r: usize| format!("run-bench-{stream}-{r}");
    let mut heads: Vec<(u64, String)> = (0..RUNS).map(|r| (0, genesis_hex(&run(r), key.id()))).collect();
    let mut batches = Vec::new();
    let mut i = 0;
    let total = RECEIPTS / STREAMS;
    while i < total {
        let mut bodies = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min(total - i) {
            let r = i % RUNS;
            let (seq, prev) = heads[r].clone();
            let b = body(&run(r), key.id(), seq + 1, prev);
            heads[r] = (seq + 1, hex(&b.hash().unwrap()));
            bodies.push(b);
            i += 1;
        }
        let hashes: Vec<_> = bodies.iter().map(|b| b.hash().unwrap()).collect();
        batches.push(
            bodies
                .into_iter()
                .zip(key.sign_batch(&hashes))
                .map(|(body, signature)| serde_json::to_value(Receipt { body, signature }).unwrap())
                .collect(),
        );
    }
    batches
}

/// Receipts per second through `POST /v1/receipts`, the streams shipped one after the other or
/// all at once.
async fn through_api(database_url: String, streams: &[Vec<Vec<Value>>], key: &SigningKey, parallel: bool) -> f64 {
    let home = tempfile::tempdir().unwrap();
    let env = |k: &str| match k {
        "FLEETFORGE_HOME" => Some(home.path().display().to_string()),
        "FLEETFORGE_CONTROL_LISTEN" => Some("127.0.0.1:0".into()),
        _ => None,
    };
    let mut config = ControlConfig::load(None, &env, &Flags::default()).unwrap();
    config.database_url = Some(Secret::new(database_url));
    config.bootstrap_token = Some(Secret::new("bench-token".into()));
    let running = fleetforge_control::start(&config).await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = |method: &str, path: &str, body: String| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", running.addr))
            .header("authorization", "Bearer bench-token")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    let pk = URL_SAFE_NO_PAD.encode(key.public_key());
    send("PUT", &format!("/v1/keys/{}", key.id()), format!(r#"{{"alg":"ed25519","public_key":"{pk}"}}"#)).await;
    let bodies: Vec<Vec<String>> = streams
        .iter()
        .map(|batches| batches.iter().map(|b| serde_json::json!({ "receipts": b }).to_string()).collect())
        .collect();
    let ship = |stream: Vec<String>| {
        let send = &send;
        async move {
            let mut accepted = 0;
            for b in stream {
                accepted += send("POST", "/v1/receipts", b).await["accepted"].as_u64().unwrap();
            }
            accepted
        }
    };
    let start = Instant::now();
    let accepted: u64 = if parallel {
        futures_util::future::join_all(bodies.into_iter().map(ship)).await.into_iter().sum()
    } else {
        let mut sum = 0;
        for stream in bodies {
            sum += ship(stream).await;
        }
        sum
    };
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(accepted as usize, RECEIPTS, "every receipt accepted");
    running.shutdown().await;
    RECEIPTS as f64 / secs
}

/// A receipt row with the columns of a chat completion that the benchmarks do not vary.
fn row(id: &str, run: &str, lane: &str, seq: i64, hash: String) -> ReceiptRow {
    ReceiptRow {
        id: id.into(),
        run_id: run.into(),
        tenant: "default".into(),
        lane: lane.into(),
        seq,
        step: seq,
        hash,
        prev_hash: String::new(),
        kind: "call".into(),
        started_at: "2026-12-07T00:00:00Z".into(),
        ended_at: "2026-12-07T00:00:00Z".into(),
        method: "POST".into(),
        host: "api.openai.com".into(),
        path: "/v1/chat/completions".into(),
        status: Some(200),
        allow: true,
        outcome: "completed".into(),
        request_bytes: 412,
        response_bytes: 1830,
        request_digest: None,
        response_digest: None,
        body: "{}".into(),
        log_index: None,
    }
}

async fn baseline(database_url: String, streams: &[Vec<Vec<Value>>]) -> f64 {
    let store = Store::connect(&database_url).await.unwrap();
    store.migrate().await.unwrap();
    let rows: Vec<Vec<ReceiptRow>> = streams
        .iter()
        .flatten()
        .map(|b| {
            b.iter()
                .map(|v| {
                    let mut row = row(
                        v["id"].as_str().unwrap(),
                        v["run"].as_str().unwrap(),
                        v["chain"]["lane"].as_str().unwrap(),
                        v["chain"]["seq"].as_i64().unwrap(),
                        "h".repeat(64),
                    );
                    row.step = v["step"].as_i64().unwrap();
                    row.prev_hash = v["chain"]["prev_hash"].as_str().unwrap().into();
                    row.started_at = v["started_at"].as_str().unwrap().into();
                    row.ended_at = v["ended_at"].as_str().unwrap().into();
                    row.body = v.to_string();
                    row
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    for batch in &rows {
        let mut tx = store.begin().await.unwrap();
        store::insert_receipts(&mut tx, batch).await.unwrap();
        tx.commit().await.unwrap();
    }
    RECEIPTS as f64 / start.elapsed().as_secs_f64()
}

async fn fresh_postgres() -> String {
    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let name = format!("ff_bench_{}", fleetforge_control::auth::new_id(8));
    let store = Store::connect(admin).await.expect("Postgres on 127.0.0.1:5432 (pg_ctlcluster … main start)");
    store.execute_admin(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

async fn drop_postgres(url: &str) {
    let name = url.rsplit('/').next().unwrap();
    let store = Store::connect("postgres://postgres@127.0.0.1:5432/postgres").await.unwrap();
    let _ = store.execute_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

/// Milliseconds at quantile `q` of `samples`.
fn quantile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

/// A tenant log of `size` receipts written straight into the store; then inclusion and
/// consistency proofs served by control over HTTP, one at a time: (p50, p99) of each, in ms.
async fn proofs_at_scale(database_url: String, size: u64) -> ((f64, f64), (f64, f64)) {
    let store = Store::connect(&database_url).await.unwrap();
    store.migrate().await.unwrap();
    let started = Instant::now();
    let mut next = 0u64;
    while next < size {
        let n = 10_000.min(size - next);
        let hashes: Vec<[u8; 32]> =
            (next..next + n).map(|i| fleetforge_trust::canonical::sha256(&i.to_be_bytes())).collect();
        let mut tx = store.begin_ingest().await.unwrap();
        let first = tx.append_log("default", &hashes).await.unwrap();
        assert_eq!(first, next);
        let rows: Vec<ReceiptRow> = (next..next + n)
            .zip(&hashes)
            .map(|(i, h)| ReceiptRow {
                log_index: Some(i as i64),
                ..row(&format!("r{i}"), "run-log-bench", "l", i as i64 + 1, hex(h))
            })
            .collect();
        tx.insert_receipts(&rows).await.unwrap();
        tx.commit().await.unwrap();
        next += n;
    }
    println!("wrote a tenant log of {size} receipts in {:.1} s", started.elapsed().as_secs_f64());
    let home = tempfile::tempdir().unwrap();
    let env = |k: &str| match k {
        "FLEETFORGE_HOME" => Some(home.path().display().to_string()),
        "FLEETFORGE_CONTROL_LISTEN" => Some("127.0.0.1:0".into()),
        _ => None,
    };
    let mut config = ControlConfig::load(None, &env, &Flags::default()).unwrap();
    config.database_url = Some(Secret::new(database_url));
    config.bootstrap_token = Some(Secret::new("bench-token".into()));
    let running = fleetforge_control::start(&config).await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let timed = |path: String| {
        let req = http::Request::builder()
            .uri(format!("http://{}{path}", running.addr))
            .header("authorization", "Bearer bench-token")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        async move {
            let start = Instant::now();
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(status.is_success(), "{path}: {status}: {}", String::from_utf8_lossy(&body));
            start.elapsed().as_secs_f64() * 1e3
        }
    };
    // A fixed pseudo-random sequence (xorshift), so runs are comparable.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = move |below: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % below
    };
    let mut inclusion = Vec::new();
    for _ in 0..2_000 {
        inclusion.push(timed(format!("/v1/log/default/inclusion/r{}", random(size))).await);
    }
    let mut consistency = Vec::new();
    for _ in 0..200 {
        let from = 1 + random(size - 1);
        consistency.push(timed(format!("/v1/log/default/consistency?from={from}")).await);
    }
    running.shutdown().await;
    (
        (quantile(&mut inclusion, 0.5), quantile(&mut inclusion, 0.99)),
        (quantile(&mut consistency, 0.5), quantile(&mut consistency, 0.99)),
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (key, _) = SigningKey::generate().unwrap();
        println!("building {RECEIPTS} signed receipts across {RUNS} runs, batches of {BATCH}…");
        let streams: Vec<_> = (0..STREAMS).map(|s| receipts(&key, s)).collect();
        let mut pg = Vec::new();
        for db in [fresh_postgres().await, fresh_postgres().await, fresh_postgres().await] {
            pg.push(db);
        }
        let pg_one = through_api(pg[0].clone(), &streams, &key, false).await;
        let pg_four = through_api(pg[1].clone(), &streams, &key, true).await;
        let pg_base = baseline(pg[2].clone(), &streams).await;
        for db in &pg {
            drop_postgres(db).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let sqlite = |n: &str| format!("sqlite://{}?mode=rwc", dir.path().join(n).display());
        let lite_one = through_api(sqlite("one.db"), &streams, &key, false).await;
        let lite_four = through_api(sqlite("four.db"), &streams, &key, true).await;
        let lite_base = baseline(sqlite("base.db"), &streams).await;
        println!();
        println!(
            "| store | verified ingest, 1 shipper (receipts/s) | verified ingest, {STREAMS} shippers (receipts/s) | \
             baseline: unverified multi-row INSERT (receipts/s) | 1 shipper / baseline |"
        );
        println!("|---|---:|---:|---:|---:|");
        println!("| Postgres | {pg_one:.0} | {pg_four:.0} | {pg_base:.0} | {:.2} |", pg_one / pg_base);
        println!("| SQLite | {lite_one:.0} | {lite_four:.0} | {lite_base:.0} | {:.2} |", lite_one / lite_base);

        let size: u64 = std::env::var("LOG_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        let db = fresh_postgres().await;
        let ((inc50, inc99), (con50, con99)) = proofs_at_scale(db.clone(), size).await;
        drop_postgres(&db).await;
        println!();
        println!("| tenant log (Postgres) | inclusion proof p50 / p99 (ms) | consistency proof p50 / p99 (ms) |");
        println!("|---|---:|---:|");
        println!("| {size} receipts | {inc50:.2} / {inc99:.2} | {con50:.2} / {con99:.2} |");
    });
}
