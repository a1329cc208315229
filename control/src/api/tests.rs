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
        metrics: Default::default(),
        max_batch: 1000,
        roots: KeyRing::load_or_create(home.path()).unwrap(),
        tracer: None,
    });
    store.insert_token("acme-reader", &token_hash(ACME), "reader", "acme", "test").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(app)).await.unwrap();
    });
    Control {
        base: format!("http://{addr}"),
        client: Client::builder(TokioExecutor::new()).build_http(),
        server,
        _home: home,
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
