//! Store and ingest tests, each run on a real Postgres (a fresh database per test on
//! 127.0.0.1:5432) and on SQLite (a temp file). The database and receipt helpers here serve the
//! API tests (`crate::api::tests`) too.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::RunId;
use fleetforge_trust::canonical::hex;
use fleetforge_trust::receipt::{Chain, DatasetDigest, Receipt, ReceiptBody, genesis_hex};
use fleetforge_trust::sign::SigningKey;
use serde_json::Value;

use super::Store;
use crate::auth::{Principal, Role};
use crate::ingest::{KeyCache, SignatureCache, ingest};

/// A fresh database: a new Postgres database, or a SQLite file in a temp dir.
pub(crate) struct Db {
    /// The store on it.
    pub(crate) store: Store,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh, migrated database: Postgres when `postgres`, else SQLite.
pub(crate) async fn db(postgres: bool) -> Db {
    let dir = tempfile::tempdir().unwrap();
    if !postgres {
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display())).await.unwrap();
        store.migrate().await.unwrap();
        return Db { store, pg_name: None, _dir: dir };
    }
    let admin = Store::connect(PG_ADMIN).await.unwrap_or_else(|e| {
        panic!("Postgres must run on 127.0.0.1:5432 (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): {e}")
    });
    let name = format!("ff_store_{}", crate::auth::new_id(10));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin.pool).await.unwrap();
    let store = Store::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await.unwrap();
    store.migrate().await.unwrap();
    Db { store, pg_name: Some(name), _dir: dir }
}

impl Db {
    /// Drops the Postgres database (SQLite's goes with the temp dir).
    pub(crate) async fn drop_pg(self) {
        self.store.pool.close().await;
        if let Some(name) = self.pg_name {
            let admin = Store::connect(PG_ADMIN).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin.pool).await.unwrap();
        }
    }
}

fn body(run: &str, lane: &str, seq: u64, prev: &str) -> ReceiptBody {
    ReceiptBody::example(RunId::new(run).unwrap(), Chain { lane: lane.into(), prev_hash: prev.into(), seq })
}

/// `bodies` (of one run) as the next receipts of `key`'s lane after `(after, prev)`, in order,
/// signed as one batch; and the new head hash.
pub(crate) fn sign_chain(key: &SigningKey, bodies: Vec<ReceiptBody>, after: u64, prev: &str) -> (Vec<Value>, String) {
    let mut prev = prev.to_owned();
    let mut chained = Vec::new();
    for (seq, mut b) in (after + 1..).zip(bodies) {
        b.chain = Chain { lane: key.id().to_owned(), prev_hash: prev, seq };
        prev = hex(&b.hash().unwrap());
        chained.push(b);
    }
    let hashes: Vec<_> = chained.iter().map(|b| b.hash().unwrap()).collect();
    let values = chained
        .into_iter()
        .zip(key.sign_batch(&hashes))
        .map(|(body, signature)| serde_json::to_value(Receipt { body, signature }).unwrap())
        .collect();
    (values, prev)
}

/// A signed chain of `n` receipts of `run` continuing after `(seq, prev)`.
fn chain(key: &SigningKey, run: &str, after: u64, prev: &str, n: u64) -> (Vec<Value>, String) {
    let bodies = (after + 1..=after + n).map(|seq| body(run, key.id(), seq, "")).collect();
    sign_chain(key, bodies, after, prev)
}

/// Registers `key` as a receipt signer of `tenant`.
pub(crate) async fn register(store: &Store, key: &SigningKey, tenant: &str) {
    store.put_key(key.id(), "ed25519", &URL_SAFE_NO_PAD.encode(key.public_key()), tenant).await.unwrap();
}

async fn tokens_runs_and_tenancy(postgres: bool) {
    let db = db(postgres).await;
    let s = &db.store;
    s.insert_token("t1", "hash-a", "reader", "tenant-a", "note").await.unwrap();
    assert_eq!(s.token("hash-a").await.unwrap().unwrap().tenant, "tenant-a");
    assert!(s.token("nope").await.unwrap().is_none());
    s.create_run("run-a1", "tenant-a", "{}", "{}", "h1").await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    s.create_run("run-b1", "tenant-b", r#"{"k":"v"}"#, "{}", "h2").await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    s.create_run("run-a2", "tenant-a", "{}", "{}", "h3").await.unwrap();
    let a: Vec<String> = s.runs(Some("tenant-a"), 10, None).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(a, ["run-a2", "run-a1"], "newest first, tenant only");
    let all = s.runs(None, 2, None).await.unwrap();
    assert_eq!(all.len(), 2);
    let last = all.last().unwrap();
    let rest = s.runs(None, 10, Some((last.created_at, &last.id))).await.unwrap();
    assert_eq!(rest.len(), 1, "keyset pagination continues after the cursor");
    assert_eq!(s.run("run-b1").await.unwrap().unwrap().labels, r#"{"k":"v"}"#);
    db.drop_pg().await;
}

#[tokio::test]
async fn tokens_runs_and_tenancy_sqlite() {
    tokens_runs_and_tenancy(false).await;
}

#[tokio::test]
async fn tokens_runs_and_tenancy_postgres() {
    tokens_runs_and_tenancy(true).await;
}

async fn ingest_accepts_dedups_rejects_and_continues_chains(postgres: bool) {
    let db = db(postgres).await;
    let s = &db.store;
    let (key, _) = SigningKey::generate().unwrap();
    register(s, &key, "default").await;
    let cache = SignatureCache::default();
    let keys = KeyCache::default();
    let proxy = Principal { role: Role::Proxy, tenant: Some("default".into()) };
    let genesis = genesis_hex("run-x", key.id());
    let (first, head) = chain(&key, "run-x", 0, &genesis, 5);
    let r = ingest(s, &cache, &keys, &proxy, first.clone()).await.unwrap();
    assert_eq!((r.accepted, r.duplicates, r.rejected), (5, 0, 0), "{r:?}");
    // The same batch again: all duplicates, nothing new.
    let r = ingest(s, &cache, &keys, &proxy, first.clone()).await.unwrap();
    assert_eq!((r.accepted, r.duplicates, r.rejected), (0, 5, 0));
    // The next batch continues the chain; one tampered receipt is rejected, the rest land.
    let (mut second, _) = chain(&key, "run-x", 5, &head, 3);
    second[2]["seal"]["status"] = serde_json::json!(500);
    let r = ingest(s, &cache, &keys, &proxy, second.clone()).await.unwrap();
    assert_eq!((r.accepted, r.rejected), (2, 1), "{r:?}");
    assert!(r.results[2].error.as_deref().unwrap().contains("proof"), "{r:?}");
    // A receipt that skips ahead breaks the chain and is refused.
    let (gap, _) = chain(&key, "run-x", 9, &head, 1);
    let r = ingest(s, &cache, &keys, &proxy, gap.clone()).await.unwrap();
    assert_eq!(r.rejected, 1);
    assert!(r.results[0].error.as_deref().unwrap().contains("chain break"), "{r:?}");
    // Unknown key and another tenant's principal are refused.
    let (other_key, _) = SigningKey::generate().unwrap();
    let (stray, _) = chain(&other_key, "run-y", 0, &genesis_hex("run-y", other_key.id()), 1);
    let r = ingest(s, &cache, &keys, &proxy, stray.clone()).await.unwrap();
    assert!(r.results[0].error.as_deref().unwrap().contains("unknown signing key"));
    let intruder = Principal { role: Role::Proxy, tenant: Some("tenant-b".into()) };
    let (next, _) = chain(&key, "run-x", 7, "0", 1);
    let r = ingest(s, &cache, &keys, &intruder, next.clone()).await.unwrap();
    assert_eq!(r.rejected, 1, "a key of another tenant is not usable: {r:?}");

    let stored = s.receipts("run-x", 0, 100).await.unwrap();
    assert_eq!(stored.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7]);
    let run = s.run("run-x").await.unwrap().unwrap();
    assert_eq!(run.calls, 7);
    assert_eq!(run.last_activity, Some(1795716000000002), "last activity is the latest ended_at");
    assert_eq!(run.tenant, "default", "an unknown run is created in the ingesting tenant");
    assert!(run.rejected >= 1);
    db.drop_pg().await;
}

#[tokio::test]
async fn ingest_accepts_dedups_rejects_and_continues_chains_sqlite() {
    ingest_accepts_dedups_rejects_and_continues_chains(false).await;
}

#[tokio::test]
async fn ingest_accepts_dedups_rejects_and_continues_chains_postgres() {
    ingest_accepts_dedups_rejects_and_continues_chains(true).await;
}

/// Two ingests of the same lane at once (two control replicas): exactly one copy of each receipt
/// lands and the chain stays whole.
async fn concurrent_ingest_of_one_lane(postgres: bool) {
    let db = db(postgres).await;
    let s = db.store.clone();
    let (key, _) = SigningKey::generate().unwrap();
    register(&s, &key, "default").await;
    let proxy = Principal { role: Role::Proxy, tenant: Some("default".into()) };
    let (receipts, _) = chain(&key, "run-c", 0, &genesis_hex("run-c", key.id()), 40);
    let cache = std::sync::Arc::new(SignatureCache::default());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, cache, proxy, receipts) = (s.clone(), cache.clone(), proxy.clone(), receipts.clone());
        tasks.push(tokio::spawn(async move { ingest(&s, &cache, &KeyCache::default(), &proxy, receipts).await }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap().unwrap().accepted;
    }
    assert_eq!(accepted, 40, "each receipt accepted exactly once across the four ingests");
    assert_eq!(s.receipts("run-c", 0, 1000).await.unwrap().len(), 40);
    db.drop_pg().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_ingest_of_one_lane_sqlite() {
    concurrent_ingest_of_one_lane(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_ingest_of_one_lane_postgres() {
    concurrent_ingest_of_one_lane(true).await;
}

/// Blobs are stored once under their address and read back; what the stored bytes hash to is
/// computed from the bytes, so bytes altered in the database show.
async fn seals_are_stored_once_and_hashed_on_read(postgres: bool) {
    let db = db(postgres).await;
    let s = &db.store;
    let blob = b"{\"choices\":[]}".to_vec();
    let address = hex(&fleetforge_trust::canonical::sha256(&blob));
    assert!(s.put_seal(&address, &blob, "tenant-a").await.unwrap(), "new");
    assert!(!s.put_seal(&address, b"other bytes", "tenant-b").await.unwrap(), "stored already: nothing changes");
    let row = s.seal(&address).await.unwrap().unwrap();
    assert_eq!((row.bytes.as_slice(), row.tenant.as_str()), (blob.as_slice(), "tenant-a"));
    assert!(s.seal(&"0".repeat(64)).await.unwrap().is_none());
    let empty = hex(&fleetforge_trust::canonical::sha256(b""));
    assert!(s.put_seal(&empty, b"", "tenant-a").await.unwrap(), "an empty blob is a blob");
    let missing = "f".repeat(64);
    let digests = s.seal_digests(&[&address, &empty, &missing]).await.unwrap();
    assert_eq!(digests.len(), 2, "only stored blobs: {digests:?}");
    assert_eq!(digests[&address], address);
    assert_eq!(digests[&empty], empty);
    let tamper = match s.backend() {
        super::Backend::Postgres => {
            format!("UPDATE seals SET bytes = decode('00ff', 'hex') WHERE address = '{address}'")
        }
        super::Backend::Sqlite => format!("UPDATE seals SET bytes = X'00FF' WHERE address = '{address}'"),
    };
    s.execute_admin(&tamper).await.unwrap();
    let digests = s.seal_digests(&[&address]).await.unwrap();
    assert_eq!(digests[&address], hex(&fleetforge_trust::canonical::sha256(&[0x00, 0xff])));
    db.drop_pg().await;
}

#[tokio::test]
async fn seals_are_stored_once_and_hashed_on_read_sqlite() {
    seals_are_stored_once_and_hashed_on_read(false).await;
}

#[tokio::test]
async fn seals_are_stored_once_and_hashed_on_read_postgres() {
    seals_are_stored_once_and_hashed_on_read(true).await;
}

/// The datasets receipts name land in `run_datasets` with the receipts, once each.
async fn ingest_records_datasets(postgres: bool) {
    let db = db(postgres).await;
    let s = &db.store;
    let (key, _) = SigningKey::generate().unwrap();
    register(s, &key, "default").await;
    let proxy = Principal { role: Role::Proxy, tenant: Some("default".into()) };
    let (cache, keys) = (SignatureCache::default(), KeyCache::default());
    let corpus = DatasetDigest { name: "corpus".into(), sha256: "ab".repeat(32), size: 1234 };
    let faq = DatasetDigest { name: "faq".into(), sha256: "cd".repeat(32), size: 56 };
    let mut bodies: Vec<ReceiptBody> = (1..=3).map(|seq| body("run-d", key.id(), seq, "")).collect();
    bodies[0].datasets = vec![faq.clone(), corpus.clone()];
    // The same dataset named twice in one batch is one row.
    bodies[2].datasets = vec![corpus.clone()];
    let (batch, head) = sign_chain(&key, bodies, 0, &genesis_hex("run-d", key.id()));
    let r = ingest(s, &cache, &keys, &proxy, batch).await.unwrap();
    assert_eq!(r.accepted, 3, "{r:?}");
    assert_eq!(s.datasets("run-d").await.unwrap(), vec![corpus.clone(), faq.clone()], "by name");
    // A later batch naming it again changes nothing; a new digest of the same name is a new row.
    let corpus2 = DatasetDigest { sha256: "ef".repeat(32), size: 1300, ..corpus.clone() };
    let mut later = body("run-d", key.id(), 4, "");
    later.datasets = vec![corpus.clone(), corpus2.clone()];
    let (batch, _) = sign_chain(&key, vec![later], 3, &head);
    assert_eq!(ingest(s, &cache, &keys, &proxy, batch).await.unwrap().accepted, 1);
    assert_eq!(s.datasets("run-d").await.unwrap(), vec![corpus, corpus2, faq]);
    assert!(s.datasets("run-none").await.unwrap().is_empty());
    db.drop_pg().await;
}

#[tokio::test]
async fn ingest_records_datasets_sqlite() {
    ingest_records_datasets(false).await;
}

#[tokio::test]
async fn ingest_records_datasets_postgres() {
    ingest_records_datasets(true).await;
}
