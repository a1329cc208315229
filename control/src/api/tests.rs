//! API tests of sealed blobs, replay manifests and reports, run datasets and blob verification:
//! the real router on `127.0.0.1:0` over a real database (Postgres and SQLite, as the store
//! tests), driven by an HTTP client.

use std::sync::Arc;

use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_trust::RunId;
use fleetforge_trust::canonical::{hex, sha256};
use fleetforge_trust::receipt::{Chain, DatasetDigest, ReceiptBody, Replay, Usage, genesis_hex};
use fleetforge_trust::replay::Manifest;
use fleetforge_trust::sign::SigningKey;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::{App, router};
use crate::auth::token_hash;
use crate::capability::KeyRing;
use crate::store::tests::{Db, db, register, sign_chain};
use crate::store::{Backend, Store};

const ADMIN: &str = "fft_test_admin";
const ACME: &str = "fft_test_acme_reader";

/// Control on an ephemeral port over a test database.
struct Control {
    base: String,
    app: Arc<App>,
    /// The SCITT statement worker, stopped with the test.
    worker: tokio::task::JoinHandle<()>,
    client: Client<HttpConnector, Full<Bytes>>,
    server: tokio::task::JoinHandle<()>,
    _home: tempfile::TempDir,
}

/// An answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn start(store: &Store) -> Control {
    let home = tempfile::tempdir().unwrap();
    let app = Arc::new(App {
        store: store.clone(),
        bootstrap: Some(token_hash(ADMIN)),
        signatures: Default::default(),
        keys: Default::default(),
        ingest_slots: Default::default(),
        metrics: Default::default(),
        max_batch: 1000,
        roots: KeyRing::load_or_create(home.path()).unwrap(),
        tracer: None,
        scitt: Default::default(),
        c2pa: crate::c2pa::SigningCa::load_or_create(home.path()).unwrap(),
    });
    let worker = crate::scitt::spawn(
        app.clone(),
        crate::config::Scitt { idle: None, interval: std::time::Duration::from_secs(1) },
    );
    store.insert_token("acme-reader", &token_hash(ACME), "reader", "acme", "test").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = app.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(served)).await.unwrap();
    });
    Control {
        base: format!("http://{addr}"),
        app,
        worker,
        client: Client::builder(TokioExecutor::new()).build_http(),
        server,
        _home: home,
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.worker.abort();
        self.server.abort();
    }
}

impl Control {
    async fn call(&self, method: &str, path: &str, token: &str, body: Option<(&str, Vec<u8>)>) -> Answer {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        let bytes = match body {
            Some((content_type, bytes)) => {
                req = req.header("content-type", content_type);
                bytes
            }
            None => Vec::new(),
        };
        let response = self.client.request(req.body(Full::new(Bytes::from(bytes))).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        Answer { status, content_type, body }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, token, None).await
    }

    async fn put_seal(&self, bytes: &[u8]) -> String {
        let address = hex(&sha256(bytes));
        let a = self
            .call("PUT", &format!("/v1/seals/{address}"), ADMIN, Some(("application/octet-stream", bytes.to_vec())))
            .await;
        assert!(a.status == 201 || a.status == 200, "{} {:?}", a.status, a.json());
        address
    }

    async fn ingest(&self, receipts: Vec<Value>) {
        let body = serde_json::to_vec(&json!({ "receipts": receipts })).unwrap();
        let a = self.call("POST", "/v1/receipts", ADMIN, Some(("application/json", body))).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["rejected"], 0, "{}", a.json());
    }
}

fn usage(input: u64, output: u64) -> Option<Usage> {
    Some(Usage {
        cached_input_tokens: None,
        cost_micro_usd: None,
        input_tokens: Some(input),
        model: Some("gpt-4o".into()),
        output_tokens: Some(output),
        provider: Some("openai".into()),
        reasoning_tokens: None,
    })
}

fn call(run: &str, step: u64, started_at: &str, path: &str) -> ReceiptBody {
    let mut b = ReceiptBody::example(
        RunId::new(run).unwrap(),
        Chain { lane: String::new(), prev_hash: String::new(), seq: step },
    );
    b.started_at = started_at.into();
    b.upstream.path = path.into();
    b
}

fn seal(b: &mut ReceiptBody, key: &str, request_blob: Option<&str>, response_meta: &str, response_body: &str) {
    b.seal.key = Some(key.into());
    b.seal.key_version = Some(fleetforge_trust::key::KEY_VERSION.into());
    b.seal.request_blob = request_blob.map(str::to_owned);
    b.seal.response_meta = Some(response_meta.into());
    b.seal.response_digest = Some(response_body.into());
}

fn problems(a: &Answer) -> Vec<String> {
    a.json()["problems"].as_array().unwrap().iter().map(|p| p["problem"].as_str().unwrap().to_owned()).collect()
}

async fn seals_manifests_reports_datasets_and_verify(postgres: bool) {
    let db: Db = db(postgres).await;
    scenario(&db.store).await;
    db.drop_pg().await;
}

async fn scenario(store: &Store) {
    let c = start(store).await;
    let (key, _) = SigningKey::generate().unwrap();
    register(store, &key, "default").await;

    // Seals: stored once, read back as bytes; a body that does not hash to the address is refused.
    let blob = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#.to_vec();
    let address = hex(&sha256(&blob));
    let path = format!("/v1/seals/{address}");
    let control = &c;
    let put = |bytes: Vec<u8>, to: String| async move {
        control.call("PUT", &to, ADMIN, Some(("application/octet-stream", bytes))).await
    };
    assert_eq!(put(blob.clone(), path.clone()).await.status, 201);
    let again = put(blob.clone(), path.clone()).await;
    assert_eq!((again.status, again.json()["created"].clone()), (200, json!(false)), "idempotent");
    let got = c.get(&path, ADMIN).await;
    assert_eq!(
        (got.status, got.content_type.as_str(), got.body.as_slice()),
        (200, "application/octet-stream", blob.as_slice())
    );
    let other = "0".repeat(64);
    let wrong = put(b"not these bytes".to_vec(), format!("/v1/seals/{other}")).await;
    assert_eq!((wrong.status, wrong.json()["error"]["type"].clone()), (422, json!("seal_mismatch")));
    let message = wrong.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&other) && message.contains(&hex(&sha256(b"not these bytes"))), "{message}");
    assert_eq!(c.get(&format!("/v1/seals/{other}"), ADMIN).await.status, 404, "a mismatch is not stored");
    let bad = put(blob.clone(), "/v1/seals/ABC".into()).await;
    assert_eq!((bad.status, bad.json()["error"]["type"].clone()), (400, json!("invalid_request")));
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("\"ABC\""), "{}", bad.json());
    let reader = c.get(&path, ACME).await;
    assert_eq!(reader.status, 404, "another tenant's blob is not found");
    let denied = c.call("PUT", &path, ACME, Some(("application/octet-stream", blob.clone()))).await;
    assert_eq!(denied.status, 403, "a reader stores nothing");

    // The original run: two sealed calls (recorded out of start order), one plain call. The
    // second sealed call's request body was never shipped.
    let meta_a = c.put_seal(b"meta-a").await;
    let resp_a = c.put_seal(b"response-a").await;
    let meta_b = c.put_seal(b"meta-b").await;
    let resp_b = c.put_seal(b"response-b").await;
    let never_shipped = hex(&sha256(b"request-b"));
    let mut a = call("run-o", 1, "2026-11-26T18:00:02.000000Z", "/v1/chat/completions");
    seal(&mut a, &"a".repeat(64), Some(&address), &meta_a, &resp_a);
    a.usage = usage(100, 20);
    a.datasets = vec![DatasetDigest { name: "corpus".into(), sha256: "ab".repeat(32), size: 42 }];
    let mut b = call("run-o", 2, "2026-11-26T18:00:01.000000Z", "/v1/embeddings");
    seal(&mut b, &"b".repeat(64), Some(&never_shipped), &meta_b, &resp_b);
    b.usage = usage(7, 0);
    let plain = call("run-o", 3, "2026-11-26T18:00:00.000000Z", "/v1/models");
    let (receipts, _) = sign_chain(&key, vec![a.clone(), b.clone(), plain], 0, &genesis_hex("run-o", key.id()));
    c.ingest(receipts).await;

    // Datasets show on the run; a run without any shows an empty list.
    let run = c.get("/v1/runs/run-o", ADMIN).await.json();
    assert_eq!(run["datasets"], json!([{"name": "corpus", "sha256": "ab".repeat(32), "size": 42}]));

    // The manifest: sealed calls by start time, signed by the key GET /v1/keys lists.
    let m = c.get("/v1/runs/run-o/replay-manifest", ADMIN).await;
    assert_eq!(m.status, 200, "{:?}", m.json());
    let manifest: Manifest = serde_json::from_slice(&m.body).unwrap();
    assert_eq!((manifest.run.as_str(), manifest.tenant.as_str()), ("run-o", "default"));
    let receipts: Vec<&str> = manifest.calls.iter().map(|c| c.receipt.as_str()).collect();
    assert_eq!(receipts, [b.id.to_string(), a.id.to_string()], "by start time; the plain call is not sealed");
    let first = &manifest.calls[0];
    assert_eq!(
        (first.path.as_str(), first.key.as_str(), first.response_meta.as_str()),
        ("/v1/embeddings", "b".repeat(64).as_str(), meta_b.as_str())
    );
    assert_eq!(
        (first.request_blob.as_deref(), first.response_digest.as_deref()),
        (Some(never_shipped.as_str()), Some(resp_b.as_str()))
    );
    assert_eq!((manifest.calls[0].tokens, manifest.calls[1].tokens), (Some(7), Some(120)));
    let signature = manifest.signature.clone().unwrap();
    let keys = c.get("/v1/keys", ADMIN).await.json();
    let listed = keys["keys"].as_array().unwrap().iter().find(|k| k["key_id"] == signature.key_id.as_str()).unwrap();
    let public = URL_SAFE_NO_PAD.decode(listed["public_key"].as_str().unwrap()).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
        .verify(&manifest.signing_digest().unwrap(), &URL_SAFE_NO_PAD.decode(&signature.value).unwrap())
        .expect("the manifest signature verifies with the listed capability root key");
    assert_eq!(c.get("/v1/runs/run-o/replay-manifest", ACME).await.status, 404, "tenant-scoped");
    let unknown = c.get("/v1/runs/run-nope/replay-manifest", ADMIN).await;
    assert_eq!((unknown.status, unknown.json()["error"]["type"].clone()), (404, json!("not_found")));

    // A run with no sealed calls has no manifest, and is not a replay either.
    let (plain_run, _) = sign_chain(
        &key,
        vec![call("run-plain", 1, "2026-11-26T18:00:00.000000Z", "/v1/models")],
        0,
        &genesis_hex("run-plain", key.id()),
    );
    c.ingest(plain_run).await;
    assert_eq!(c.get("/v1/runs/run-plain", ADMIN).await.json()["datasets"], json!([]));
    let none = c.get("/v1/runs/run-plain/replay-manifest", ADMIN).await;
    assert_eq!((none.status, none.json()["error"]["type"].clone()), (404, json!("no_seals")));
    assert!(none.json()["error"]["message"].as_str().unwrap().starts_with("run run-plain has no sealed calls"));
    let not_replay = c.get("/v1/runs/run-o/replay-report", ADMIN).await;
    assert_eq!((not_replay.status, not_replay.json()["error"]["type"].clone()), (404, json!("not_a_replay")));
    assert_eq!(c.get("/v1/runs/run-nope/replay-report", ADMIN).await.status, 404);

    // A replay run: call a served from its seal, a miss whose closest seal is b; b's seal unused.
    let mut served = call("run-r", 1, "2026-11-27T18:00:00.000000Z", "/v1/chat/completions");
    served.usage = usage(100, 20);
    served.replay = Some(Replay {
        closest: None,
        of: Some(a.id),
        of_run: RunId::new("run-o").unwrap(),
        original_ended_at: Some(a.ended_at.clone()),
        original_started_at: Some(a.started_at.clone()),
        strict: false,
    });
    let mut missed = call("run-r", 2, "2026-11-27T18:00:01.000000Z", "/v1/embeddings");
    missed.usage = usage(9, 0);
    missed.replay = Some(Replay {
        closest: Some(b.id),
        of: None,
        of_run: RunId::new("run-o").unwrap(),
        original_ended_at: None,
        original_started_at: None,
        strict: false,
    });
    let (replay_run, _) = sign_chain(&key, vec![served.clone(), missed.clone()], 0, &genesis_hex("run-r", key.id()));
    c.ingest(replay_run).await;
    let report = c.get("/v1/runs/run-r/replay-report", ADMIN).await;
    assert_eq!(report.status, 200, "{:?}", report.json());
    let r = report.json();
    assert_eq!(
        (r["run"].clone(), r["of"].clone(), r["strict"].clone()),
        (json!("run-r"), json!("run-o"), json!(false))
    );
    assert_eq!((r["matched"].clone(), r["missed"].clone()), (json!(1), json!(1)));
    assert_eq!(
        r["misses"],
        json!([{"receipt": missed.id.to_string(), "call": "POST /v1/embeddings", "closest": b.id.to_string()}])
    );
    assert_eq!(r["unused"], json!([b.id.to_string()]));
    assert_eq!(
        (r["tokens_original"].clone(), r["tokens_replay"].clone(), r["token_drift"].clone()),
        (json!(127), json!(129), json!(2))
    );
    assert_eq!(r["verdict"], "drifted");

    // Verify: the request body never shipped is reported; then a stored blob altered in place.
    let v = c.get("/v1/runs/run-o/verify", ADMIN).await;
    assert_eq!(v.json()["ok"], false);
    assert_eq!(
        problems(&v),
        [format!("seal blob {never_shipped} of receipt {} is not on control (not yet shipped, or deleted)", b.id)]
    );
    let tamper = match store.backend() {
        Backend::Postgres => format!("UPDATE seals SET bytes = decode('6d657461', 'hex') WHERE address = '{meta_a}'"),
        Backend::Sqlite => format!("UPDATE seals SET bytes = X'6D657461' WHERE address = '{meta_a}'"),
    };
    store.execute_admin(&tamper).await.unwrap();
    let v = c.get("/v1/runs/run-o/verify", ADMIN).await;
    let found = problems(&v);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.contains(&format!(
        "seal blob {meta_a} of receipt {} does not match its address: it was altered after it was stored",
        a.id
    )));
    assert_eq!(v.json()["checked"], 3);
    // The blobs of the replay run: none named, nothing to report.
    assert_eq!(c.get("/v1/runs/run-r/verify", ADMIN).await.json()["ok"], true);

    let metrics = c.get("/metrics", ADMIN).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("fleetforge_control_seals_total{result=\"mismatch\"} 1"), "{text}");
    assert!(text.contains("fleetforge_control_seals_total{result=\"duplicate\"} 1"), "{text}");
    c.server.abort();
}

#[tokio::test]
async fn seals_manifests_reports_datasets_and_verify_sqlite() {
    seals_manifests_reports_datasets_and_verify(false).await;
}

#[tokio::test]
async fn seals_manifests_reports_datasets_and_verify_postgres() {
    seals_manifests_reports_datasets_and_verify(true).await;
}

/// Every route of sealed IO and replay is in the OpenAPI document.
#[test]
fn openapi_documents_the_replay_routes() {
    use utoipa::OpenApi as _;
    let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
    for path in ["/v1/seals/{sha256}", "/v1/runs/{id}/replay-manifest", "/v1/runs/{id}/replay-report"] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    assert!(doc["paths"]["/v1/seals/{sha256}"].get("put").is_some());
    assert!(doc["paths"]["/v1/seals/{sha256}"].get("get").is_some());
}

/// The transparency log on both databases: signed heads that verify as C2SP checkpoints, an
/// inclusion proof per receipt leading to the head, consistency between heads, tenant scoping,
/// bad sizes refused, receipts stored before the log appended on start, and an altered node
/// caught.
async fn transparency_log(postgres: bool) {
    use fleetforge_trust::merkle::root_from_path;
    use fleetforge_trust::tlog::{Checkpoint, verify_consistency};

    let db: Db = db(postgres).await;
    let store = &db.store;
    let c = start(store).await;
    let (key, _) = SigningKey::generate().unwrap();
    register(store, &key, "default").await;
    let keys = c.get("/v1/keys", ADMIN).await.json();
    let root_key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "capability-root")
        .map(|k| URL_SAFE_NO_PAD.decode(k["public_key"].as_str().unwrap()).unwrap())
        .unwrap();
    let hash_of = |v: &Value| fleetforge_trust::verify::prove(v).unwrap().hash;
    let unhex = |v: &Value| fleetforge_trust::canonical::unhex32(v.as_str().unwrap()).unwrap();

    let bodies = (1..=5).map(|i| call("run-log", i, &format!("2026-12-07T00:00:0{i}Z"), "/v1/chat/completions"));
    let (first, prev) = sign_chain(&key, bodies.collect(), 0, &genesis_hex("run-log", key.id()));
    c.ingest(first.clone()).await;

    let head = c.get("/v1/log/default/head", ADMIN).await.json();
    assert_eq!((head["size"].clone(), head["origin"].clone()), (json!(5), json!("fleetforge/log/default")));
    let cp = Checkpoint::verify(head["checkpoint"].as_str().unwrap(), "fleetforge/log/default", &root_key)
        .expect("the checkpoint verifies with the capability root key");
    assert_eq!((cp.size, hex(&cp.root)), (5, head["root"].as_str().unwrap().to_owned()));
    assert!(head["verifier_key"].as_str().unwrap().starts_with("fleetforge/log/default+"));
    let text = c.get("/v1/log/default/checkpoint", ADMIN).await;
    assert!(text.content_type.starts_with("text/plain"));
    assert_eq!(String::from_utf8(text.body).unwrap(), head["checkpoint"].as_str().unwrap());

    let mut indexes = Vec::new();
    for r in &first {
        let id = r["id"].as_str().unwrap();
        let p = c.get(&format!("/v1/log/default/inclusion/{id}"), ADMIN).await.json();
        assert_eq!(unhex(&p["receipt_hash"]), hash_of(r));
        let path: Vec<_> = p["path"].as_array().unwrap().iter().map(&unhex).collect();
        let index = p["index"].as_u64().unwrap();
        assert_eq!(root_from_path(&hash_of(r), index, 5, &path), Some(cp.root), "receipt {id}");
        indexes.push(index);
    }
    indexes.sort_unstable();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4], "one leaf per receipt");

    // More receipts: the new head extends the old one.
    let bodies = (6..=12).map(|i| call("run-log", i, &format!("2026-12-07T00:00:{i:02}Z"), "/v1/chat/completions"));
    let (second, _) = sign_chain(&key, bodies.collect(), 5, &prev);
    c.ingest(second.clone()).await;
    let head12 = c.get("/v1/log/default/head", ADMIN).await.json();
    assert_eq!(head12["size"], 12);
    let root12 = unhex(&head12["root"]);
    let p = c.get("/v1/log/default/consistency?from=5", ADMIN).await.json();
    assert_eq!((p["from"].clone(), p["to"].clone(), unhex(&p["from_root"])), (json!(5), json!(12), cp.root));
    let proof: Vec<_> = p["proof"].as_array().unwrap().iter().map(&unhex).collect();
    assert!(verify_consistency(5, 12, &cp.root, &root12, &proof));
    let old = c.get(&format!("/v1/log/default/inclusion/{}?size=5", first[0]["id"].as_str().unwrap()), ADMIN).await;
    assert_eq!(old.json()["root"], head["root"], "a proof against an older head");

    // Bad sizes and other tenants.
    let id = second[6]["id"].as_str().unwrap();
    for (path, needle) in [
        (format!("/v1/log/default/inclusion/{id}?size=3"), "not in the tree of size 3"),
        (format!("/v1/log/default/inclusion/{id}?size=13"), "size 13 is past"),
        ("/v1/log/default/consistency?from=0".to_owned(), "0 < from"),
        ("/v1/log/default/consistency?from=13".to_owned(), "from=13"),
        ("/v1/log/default/consistency?from=5&to=99".to_owned(), "to=99"),
        ("/v1/log/default/consistency?from=abc".to_owned(), "from"),
    ] {
        let a = c.get(&path, ADMIN).await;
        assert_eq!((a.status, a.json()["error"]["type"].clone()), (400, json!("invalid_request")), "{path}");
        assert!(a.json()["error"]["message"].as_str().unwrap().contains(needle), "{path}: {}", a.json());
    }
    assert_eq!(c.get("/v1/log/default/inclusion/no-such-receipt", ADMIN).await.status, 404);
    assert_eq!(c.get("/v1/log/default/head", ACME).await.status, 404, "another tenant's log is not found");
    assert_eq!(c.get(&format!("/v1/log/acme/inclusion/{id}"), ACME).await.status, 404);
    let empty = c.get("/v1/log/acme/head", ACME).await.json();
    assert_eq!((empty["size"].clone(), empty["root"].clone()), (json!(0), json!(hex(&sha256(b"")))));

    // Receipts stored before the log existed are appended when control starts.
    for sql in ["UPDATE receipts SET log_index = NULL", "DELETE FROM log_nodes", "DELETE FROM log_heads"] {
        store.execute_admin(sql).await.unwrap();
    }
    assert_eq!(c.get(&format!("/v1/log/default/inclusion/{id}"), ADMIN).await.status, 409);
    assert_eq!(store.backfill_log().await.unwrap(), 12);
    assert_eq!(store.backfill_log().await.unwrap(), 0, "nothing twice");
    let rebuilt = c.get("/v1/log/default/head", ADMIN).await.json();
    assert_eq!(rebuilt["size"], 12);
    let rebuilt_root = unhex(&rebuilt["root"]);
    for r in first.iter().chain(&second) {
        let p = c.get(&format!("/v1/log/default/inclusion/{}", r["id"].as_str().unwrap()), ADMIN).await.json();
        let path: Vec<_> = p["path"].as_array().unwrap().iter().map(&unhex).collect();
        assert_eq!(root_from_path(&hash_of(r), p["index"].as_u64().unwrap(), 12, &path), Some(rebuilt_root));
    }

    // An altered node: the proofs through it no longer lead to the signed head.
    store
        .execute_admin(&format!("UPDATE log_nodes SET hash = '{}' WHERE level = 1 AND idx = 0", "0".repeat(64)))
        .await
        .unwrap();
    let mut broken = 0;
    for r in first.iter().chain(&second) {
        let p = c.get(&format!("/v1/log/default/inclusion/{}", r["id"].as_str().unwrap()), ADMIN).await.json();
        let path: Vec<_> = p["path"].as_array().unwrap().iter().map(&unhex).collect();
        if root_from_path(&hash_of(r), p["index"].as_u64().unwrap(), 12, &path) != Some(rebuilt_root) {
            broken += 1;
        }
    }
    assert_eq!(broken, 2, "the proofs of leaves 2 and 3 pass through node (1, 0)");
    c.server.abort();
    db.drop_pg().await;
}

#[tokio::test]
async fn transparency_log_sqlite() {
    transparency_log(false).await;
}

#[tokio::test]
async fn transparency_log_postgres() {
    transparency_log(true).await;
}

/// The attestation vault on both databases: statements, provenance and envelopes stored and read
/// back, linked to a run, idempotent by id, refused with the member named, tenant-scoped.
async fn attestation_vault(postgres: bool) {
    use base64::engine::general_purpose::STANDARD;

    let db: Db = db(postgres).await;
    let store = &db.store;
    let c = start(store).await;
    let run = c.call("POST", "/v1/runs", ADMIN, Some(("application/json", br#"{"id":"run-att"}"#.to_vec()))).await;
    assert_eq!(run.status, 201, "{:?}", run.json());
    let provenance = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "agent.tar", "digest": {"sha256": "ab".repeat(32)}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {"buildDefinition": {"buildType": "https://example.com/build"}},
    });
    let envelope = json!({
        "payloadType": "application/vnd.in-toto+json",
        "payload": STANDARD.encode(provenance.to_string()),
        "signatures": [{"keyid": "k1", "sig": STANDARD.encode([7u8; 64])}],
    });
    let put = |id: &str, body: &Value, token: &'static str| {
        let (path, bytes) = (format!("/v1/attestations/{id}?run=run-att"), body.to_string().into_bytes());
        let c = &c;
        async move { c.call("PUT", &path, token, Some(("application/json", bytes))).await }
    };
    let a = put("slsa-1", &provenance, ADMIN).await;
    assert_eq!((a.status, a.json()["kind"].clone()), (201, json!("slsa-provenance")), "{:?}", a.json());
    let a = put("dsse-1", &envelope, ADMIN).await;
    assert_eq!(
        (a.status, a.json()["kind"].clone(), a.json()["predicate_type"].clone()),
        (201, json!("dsse"), json!("https://slsa.dev/provenance/v1"))
    );
    let again = put("slsa-1", &provenance, ADMIN).await;
    assert_eq!((again.status, again.json()["created"].clone()), (200, json!(false)));
    let other = put("slsa-1", &envelope, ADMIN).await;
    assert_eq!((other.status, other.json()["error"]["type"].clone()), (409, json!("conflict")));

    let got = c.get("/v1/attestations/dsse-1", ADMIN).await.json();
    assert_eq!((got["attestation"].clone(), got["run"].clone()), (envelope.clone(), json!("run-att")));
    let listed = c.get("/v1/runs/run-att/attestations", ADMIN).await.json();
    let ids: Vec<&str> = listed["attestations"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"slsa-1") && ids.contains(&"dsse-1"));

    // Refusals name what is wrong.
    let mut broken = provenance.clone();
    broken["subject"][0]["digest"]["sha256"] = json!("not-hex");
    let a = put("bad-1", &broken, ADMIN).await;
    assert_eq!(a.status, 422);
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("subject[0].digest.sha256"), "{:?}", a.json());
    let a = c.call("PUT", "/v1/attestations/bad-2", ADMIN, Some(("application/json", b"{not json".to_vec()))).await;
    assert_eq!(a.status, 422);
    let a = put("bad%20id", &provenance, ADMIN).await;
    assert_eq!(a.status, 400);
    let a = c
        .call(
            "PUT",
            "/v1/attestations/x?run=no-such-run",
            ADMIN,
            Some(("application/json", provenance.to_string().into_bytes())),
        )
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(put("by-reader", &provenance, ACME).await.status, 403, "a reader stores nothing");
    assert_eq!(c.get("/v1/attestations/slsa-1", ACME).await.status, 404, "another tenant's attestation");
    assert_eq!(c.get("/v1/attestations/nope", ADMIN).await.status, 404);
    c.server.abort();
    db.drop_pg().await;
}

#[tokio::test]
async fn attestation_vault_sqlite() {
    attestation_vault(false).await;
}

#[tokio::test]
async fn attestation_vault_postgres() {
    attestation_vault(true).await;
}

/// Retention and legal holds on both databases: a held run keeps its receipts and the blobs they
/// name; another run's receipts lose their bodies but keep their chain and log leaves, each pruning
/// logged; unreferenced blobs are deleted and logged; releasing the hold lets retention prune it.
async fn retention_and_holds(postgres: bool) {
    use fleetforge_trust::merkle::root_from_path;

    let db: Db = db(postgres).await;
    let store = &db.store;
    let c = start(store).await;
    let (key, _) = SigningKey::generate().unwrap();
    register(store, &key, "default").await;
    let kept_blob = c.put_seal(b"response of the held run").await;
    let other_blob = c.put_seal(b"a blob nobody holds").await;
    let meta_blob = c.put_seal(b"envelope of the held run's response").await;
    let mut held_bodies: Vec<ReceiptBody> =
        (1..=3).map(|i| call("run-held", i, &format!("2026-12-07T00:00:0{i}Z"), "/v1/chat/completions")).collect();
    seal(&mut held_bodies[0], &"k".repeat(64), None, &meta_blob, &kept_blob);
    let (held, _) = sign_chain(&key, held_bodies, 0, &genesis_hex("run-held", key.id()));
    let free_bodies = (1..=2).map(|i| call("run-free", i, &format!("2026-12-07T00:00:0{i}Z"), "/v1/chat/completions"));
    let (free, _) = sign_chain(&key, free_bodies.collect(), 0, &genesis_hex("run-free", key.id()));
    c.ingest(held.clone()).await;
    c.ingest(free.clone()).await;

    let hold = |token: &'static str, body: &'static [u8]| {
        let c = &c;
        async move { c.call("POST", "/v1/runs/run-held/hold", token, Some(("application/json", body.to_vec()))).await }
    };
    assert_eq!(hold(ACME, b"{}").await.status, 403, "a reader holds nothing");
    assert_eq!(hold(ADMIN, b"{\"why\":1}").await.status, 400);
    let held_now = hold(ADMIN, br#"{"reason":"litigation 42"}"#).await.json();
    assert_eq!((held_now["held"].clone(), held_now["reason"].clone()), (json!(true), json!("litigation 42")));

    let later = crate::store::now_micros() + 1_000_000;
    assert_eq!(store.prune_receipts(later).await.unwrap(), 2, "only the free run's receipts");
    assert_eq!(store.prune_receipts(later).await.unwrap(), 0, "nothing twice");
    let head = c.get("/v1/log/default/head", ADMIN).await.json();
    assert_eq!(head["size"], 5 + 2, "each pruning is a log entry");
    let root = fleetforge_trust::canonical::unhex32(head["root"].as_str().unwrap()).unwrap();

    let stubs = c.get("/v1/runs/run-free/receipts", ADMIN).await.json();
    let stubs = stubs["receipts"].as_array().unwrap().clone();
    assert_eq!(stubs.len(), 2);
    for (stub, original) in stubs.iter().zip(&free) {
        assert_eq!((stub["pruned"].clone(), stub["id"].clone()), (json!(true), original["id"].clone()));
        assert!(stub.get("upstream").is_none(), "the body is gone: {stub}");
        let hash = fleetforge_trust::verify::prove(original).unwrap().hash;
        assert_eq!(stub["hash"], hex(&hash));
        // Still in the log: its proof leads to the new head.
        let p = c.get(&format!("/v1/log/default/inclusion/{}", stub["id"].as_str().unwrap()), ADMIN).await.json();
        let path: Vec<_> = p["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| fleetforge_trust::canonical::unhex32(h.as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(root_from_path(&hash, p["index"].as_u64().unwrap(), 7, &path), Some(root));
    }
    let verified = c.get("/v1/runs/run-free/verify", ADMIN).await.json();
    assert_eq!((verified["ok"].clone(), verified["pruned"].clone()), (json!(true), json!(2)), "{verified}");
    let verified = c.get("/v1/runs/run-held/verify", ADMIN).await.json();
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(c.get("/v1/runs/run-held/receipts", ADMIN).await.json()["receipts"][0]["id"], held[0]["id"]);

    assert_eq!(store.prune_seals(later).await.unwrap(), 1, "the blob no held run names");
    assert_eq!(c.get(&format!("/v1/seals/{kept_blob}"), ADMIN).await.status, 200);
    assert_eq!(c.get(&format!("/v1/seals/{other_blob}"), ADMIN).await.status, 404);
    assert_eq!(c.get("/v1/log/default/head", ADMIN).await.json()["size"], 8);

    let released = c.call("DELETE", "/v1/runs/run-held/hold", ADMIN, None).await.json();
    assert_eq!(released["held"], false);
    assert_eq!(store.prune_receipts(later).await.unwrap(), 3);
    assert_eq!(c.get("/v1/runs/run-held/verify", ADMIN).await.json()["pruned"], 3);
    c.server.abort();
    db.drop_pg().await;
}

#[tokio::test]
async fn retention_and_holds_sqlite() {
    retention_and_holds(false).await;
}

#[tokio::test]
async fn retention_and_holds_postgres() {
    retention_and_holds(true).await;
}

/// SCITT on both databases: closing a run emits one signed statement through the outbox (and
/// closing again emits none); the statement verifies with its did:key issuer and states the run's
/// receipts; its COSE receipt proves it under the log head; a receipt arriving later opens the run
/// again and a requested statement covers it; external statements are registered once and
/// malformed ones refused naming the problem; four workers draining one outbox at once emit
/// each run's statement once.
async fn scitt_statements(postgres: bool) {
    use fleetforge_trust::merkle::Tree;
    use fleetforge_trust::scitt;

    let db: Db = db(postgres).await;
    let store = &db.store;
    let c = start(store).await;
    let (key, _) = SigningKey::generate().unwrap();
    register(store, &key, "default").await;
    let bodies = (1..=3).map(|i| call("run-s", i, &format!("2026-12-07T00:00:0{i}Z"), "/v1/chat/completions"));
    let (first, prev) = sign_chain(&key, bodies.collect(), 0, &genesis_hex("run-s", key.id()));
    c.ingest(first.clone()).await;
    let root_key = c.get("/v1/keys", ADMIN).await.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "log-signer")
        .map(|k| {
            (
                k["key_id"].as_str().unwrap().to_owned(),
                URL_SAFE_NO_PAD.decode(k["public_key"].as_str().unwrap()).unwrap(),
            )
        })
        .unwrap();

    let close = |token: &'static str| {
        let c = &c;
        async move { c.call("POST", "/v1/runs/run-s/close", token, None).await }
    };
    assert_eq!(close(ACME).await.status, 403, "a reader closes nothing");
    let closed = close(ADMIN).await.json();
    assert_eq!((closed["ended_now"].clone(), closed["reason"].clone()), (json!(true), json!("closed")), "{closed}");
    assert_eq!(close(ADMIN).await.json()["ended_now"], false, "closing is idempotent");
    let mut list = Vec::new();
    for _ in 0..100 {
        list = c.get("/v1/runs/run-s/scitt", ADMIN).await.json()["statements"].as_array().unwrap().clone();
        if !list.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let got = c.get(&format!("/v1/scitt/statements/{id}"), ADMIN).await;
    assert_eq!(got.content_type, "application/cose");
    let statement = scitt::parse_statement(&got.body).unwrap();
    assert_eq!(hex(&statement.id), id);
    assert_eq!((statement.claims.sub.as_str(), statement.kid.as_deref()), ("run:run-s", Some(root_key.0.as_str())));
    let issuer = fleetforge_trust::vc::resolve_did_key(&statement.claims.iss).unwrap();
    assert_eq!(issuer.to_vec(), root_key.1, "the did:key is control's key");
    statement.verify_ed25519(&issuer).unwrap();
    let payload: Value = serde_json::from_slice(statement.payload.as_deref().unwrap()).unwrap();
    let hashes: Vec<_> = first.iter().map(|r| fleetforge_trust::verify::prove(r).unwrap().hash).collect();
    assert_eq!(payload["receipts"], 3);
    assert_eq!(payload["receipts_root"], hex(&Tree::new(&hashes).root()));
    assert_eq!((payload["reason"].clone(), payload["log"]["size"].clone()), (json!("closed"), json!(3)));
    let receipt = c.get(&format!("/v1/scitt/receipts/{id}"), ADMIN).await;
    let v =
        scitt::verify_receipt(&receipt.body, &got.body, |kid| (kid == root_key.0).then(|| root_key.1.clone())).unwrap();
    let head = c.get("/v1/log/default/head", ADMIN).await.json();
    assert_eq!((v.proof.index, v.proof.size), (3, 4), "the statement is the log's fourth leaf");
    assert_eq!(hex(&v.root), head["root"].as_str().unwrap());
    assert_eq!(c.get(&format!("/v1/scitt/receipts/{id}"), ACME).await.status, 404, "another tenant's");

    // A later receipt opens the run again; a requested statement covers it, once.
    let more = vec![call("run-s", 4, "2026-12-07T00:00:04Z", "/v1/chat/completions")];
    let (second, _) = sign_chain(&key, more, 3, &prev);
    c.ingest(second).await;
    assert_eq!(c.get("/v1/runs/run-s", ADMIN).await.json()["closed_at"], Value::Null, "open again");
    let ask = |body: &'static [u8]| {
        let c = &c;
        async move { c.call("POST", "/v1/scitt/statements", ADMIN, Some(("application/json", body.to_vec()))).await }
    };
    let issued = ask(br#"{"run":"run-s"}"#).await;
    assert_eq!(issued.status, 201, "{:?}", issued.json());
    assert_eq!(issued.json()["receipts"], 4);
    let again = ask(br#"{"run":"run-s"}"#).await;
    assert_eq!((again.status, again.json()["id"].clone()), (200, issued.json()["id"].clone()), "nothing new to state");
    let exported = c.get("/v1/runs/run-s/export/scitt", ACME).await;
    assert_eq!(exported.status, 404, "another tenant's run");
    let exported = c.get("/v1/runs/run-s/export/scitt", ADMIN).await;
    assert_eq!((exported.status, exported.content_type.as_str()), (200, "application/cose"));
    assert_eq!(json!(hex(&sha256(&exported.body))), issued.json()["id"], "the newest statement, not a new one");
    let one = first[0]["id"].as_str().unwrap();
    let body = format!("{{\"receipt\":\"{one}\"}}");
    let r = c.call("POST", "/v1/scitt/statements", ADMIN, Some(("application/json", body.into_bytes()))).await;
    assert_eq!((r.status, r.json()["kind"].clone()), (201, json!("receipt")), "{:?}", r.json());
    assert_eq!(ask(br#"{"run":"x","receipt":"y"}"#).await.status, 400);
    assert_eq!(ask(br#"{"run":"no-such-run"}"#).await.status, 404);

    // External statements.
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let did = fleetforge_trust::vc::did_key(
        &<[u8; 32]>::try_from(ring::signature::KeyPair::public_key(&pair).as_ref()).unwrap(),
    );
    let claims = scitt::Claims { iss: did.clone(), sub: "model:gpt-4o".into(), iat: None };
    let external = scitt::sign_statement(b"{\"eval\":\"passed\"}", "application/json", &claims, "ext", &pair);
    let post = |bytes: Vec<u8>, token: &'static str, media: &'static str| {
        let c = &c;
        async move { c.call("POST", "/v1/scitt/statements", token, Some((media, bytes))).await }
    };
    let reg = post(external.clone(), ADMIN, "application/cose").await;
    assert_eq!(reg.status, 201, "{:?}", reg.json());
    assert_eq!((reg.json()["issuer"].clone(), reg.json()["issuer_verified"].clone()), (json!(did), json!(true)));
    assert_eq!(post(external.clone(), ADMIN, "application/cose").await.status, 200, "registered once");
    assert_eq!(post(external.clone(), ACME, "application/cose").await.status, 403, "readers register nothing");
    assert_eq!(post(external.clone(), ADMIN, "text/plain").await.status, 415);
    let mut forged = external.clone();
    let at = forged.windows(6).position(|w| w == b"passed").unwrap();
    forged[at] = b'P';
    let refused = post(forged, ADMIN, "application/cose").await;
    assert_eq!(refused.status, 400);
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("does not verify"), "{:?}", refused.json());
    let junk = post(b"\xa1\x01\x02".to_vec(), ADMIN, "application/cose").await;
    assert_eq!(junk.status, 400);
    assert!(junk.json()["error"]["message"].as_str().unwrap().contains("not a COSE_Sign1"), "{:?}", junk.json());

    // Four workers on one outbox: each run's statement once.
    for i in 0..24 {
        assert!(store.create_run(&format!("run-o{i}"), "default", "{}", "{}", "").await.unwrap());
        assert!(store.end_run(&format!("run-o{i}"), "closed").await.unwrap());
    }
    let app = c.app.clone();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { while crate::scitt::drain_once(&*app).await.unwrap() > 0 {} })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    for _ in 0..100 {
        if store.outbox_pending().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    for i in 0..24 {
        assert_eq!(store.statements_of_run(&format!("run-o{i}")).await.unwrap().len(), 1, "run-o{i}");
    }
    c.server.abort();
    db.drop_pg().await;
}

#[tokio::test]
async fn scitt_statements_sqlite() {
    scitt_statements(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scitt_statements_postgres() {
    scitt_statements(true).await;
}
