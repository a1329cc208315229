//! The control API's contract, against the real `fleetforge-control` binary on SQLite and
//! Postgres: authentication and roles, error envelopes, keys, runs, the OpenAPI document.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetforge_e2e::harness::{ControlProcess, Database, http_get};

fn token(db: &Database, home: &std::path::Path, role: &str, tenant: &str) -> String {
    fleetforge_e2e::harness::create_token(db, home, role, tenant).unwrap()
}

fn contract(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::fresh(postgres).unwrap();
    let c = ControlProcess::start(&db, dir.path(), None).unwrap();
    let admin = &c.token;
    let reader = token(&db, dir.path(), "reader", "default");
    let proxy = token(&db, dir.path(), "proxy", "default");
    let other_admin = token(&db, dir.path(), "admin", "acme");

    // Operations need no token.
    assert_eq!(http_get(c.addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(c.addr, "/readyz").unwrap().0, 200);
    let (status, metrics) = http_get(c.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("fleetforge_control_receipts_total"), "{metrics}");
    let (status, doc) = http_get(c.addr, "/openapi.json").unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for path in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/token",
        "/v1/runs/{id}/receipts",
        "/v1/runs/{id}/verify",
        "/v1/receipts",
        "/v1/receipts/{id}",
        "/v1/keys",
        "/v1/keys/{key_id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi.json documents {path}");
    }

    // Authentication and roles.
    let (status, body) = c.api("GET", "/v1/runs", "", None).unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "unauthorized");
    assert_eq!(c.api("GET", "/v1/runs", "fft_wrong", None).unwrap().0, 401);
    let (status, body) = c.api("POST", "/v1/runs", &reader, Some("{}")).unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(c.api("POST", "/v1/runs", &proxy, Some("{}")).unwrap().0, 403);
    assert_eq!(c.api("POST", "/v1/receipts", &reader, Some(r#"{"receipts":[]}"#)).unwrap().0, 403);

    // Runs: created by an admin, visible to its tenant only.
    let (status, created) =
        c.api("POST", "/v1/runs", admin, Some(r#"{"labels":{"team":"search"},"budget":{"tokens":1000}}"#)).unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("run-"), "{created}");
    let token = created["token"].as_str().unwrap();
    assert!(token.len() > 100 && !token.contains('.'), "a base64url Biscuit: {token}");
    assert_eq!(created["token_id"].as_str().unwrap().len(), 128, "{created}");
    let (status, run) = c.api("GET", &format!("/v1/runs/{id}"), &reader, None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(run["labels"]["team"], "search");
    assert_eq!(run["budget"]["tokens"], 1000);
    assert_eq!(run["verification"], "unverified");
    assert_eq!(
        c.api("GET", &format!("/v1/runs/{id}"), &other_admin, None).unwrap().0,
        404,
        "another tenant's run is not found"
    );
    let (_, list) = c.api("GET", "/v1/runs", &other_admin, None).unwrap();
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
    let (status, verify) = c.api("GET", &format!("/v1/runs/{id}/verify"), &reader, None).unwrap();
    assert_eq!((status, verify["ok"].as_bool(), verify["checked"].as_u64()), (200, Some(true), Some(0)));
    let (_, run) = c.api("GET", &format!("/v1/runs/{id}"), &reader, None).unwrap();
    assert_eq!(run["verification"], "ok", "a full verification is remembered");

    // A run named by its creator; the id is taken once. A new token for an existing run revokes
    // the previous one; a revoked run gets none.
    let (status, named) = c.api("POST", "/v1/runs", admin, Some(r#"{"id":"hello-fleet","agent":"demo"}"#)).unwrap();
    assert_eq!((status, named["id"].as_str()), (201, Some("hello-fleet")), "{named}");
    let (status, body) = c.api("POST", "/v1/runs", admin, Some(r#"{"id":"hello-fleet"}"#)).unwrap();
    assert_eq!((status, body["error"]["type"].as_str()), (409, Some("conflict")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("/v1/runs/hello-fleet/token"), "{body}");
    let (status, body) = c.api("POST", "/v1/runs", admin, Some(r#"{"id":"not a run id"}"#)).unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(c.api("POST", "/v1/runs/hello-fleet/token", &reader, None).unwrap().0, 403);
    assert_eq!(c.api("POST", "/v1/runs/nobody/token", admin, None).unwrap().0, 404);
    let (status, fresh) = c.api("POST", "/v1/runs/hello-fleet/token", admin, None).unwrap();
    assert_eq!(status, 201, "{fresh}");
    assert_ne!(fresh["token"], named["token"]);
    assert_ne!(fresh["token_id"], named["token_id"]);
    let (_, run) = c.api("GET", "/v1/runs/hello-fleet", admin, None).unwrap();
    assert_eq!((run["token_id"].clone(), run["agent"].as_str()), (fresh["token_id"].clone(), Some("demo")), "{run}");
    let (_, revoked) = c.api("GET", "/v1/revocations", &proxy, None).unwrap();
    assert!(
        revoked["revocations"].as_array().unwrap().contains(&named["token_id"]),
        "the superseded token is revoked: {revoked}"
    );
    assert_eq!(c.api("POST", "/v1/runs/hello-fleet/revoke", admin, None).unwrap().0, 200);
    let (status, body) = c.api("POST", "/v1/runs/hello-fleet/token", admin, Some("{}")).unwrap();
    assert_eq!((status, body["error"]["type"].as_str()), (409, Some("conflict")), "{body}");

    // Bad input: one envelope, with the reason.
    let (status, body) = c.api("POST", "/v1/runs", admin, Some("{not json")).unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request");
    let (status, body) = c.api("POST", "/v1/runs", admin, Some(r#"{"lables":{}}"#)).unwrap();
    assert!(status == 422 || status == 400, "{status} {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("lables"), "{body}");
    for (budget, member) in [
        (r#"{"tokens":-5}"#, "budget.tokens"),
        (r#"{"tokens":1.5}"#, "budget.tokens"),
        (r#"{"calls":"ten"}"#, "budget.calls"),
        (r#"{"cost_usd":-1}"#, "budget.cost_usd"),
        (r#"{"cost_usd":"lots"}"#, "budget.cost_usd"),
        (r#"{"tokens_per_minute":-1}"#, "budget.tokens_per_minute"),
        (r#"{"token":10}"#, "\"token\""),
    ] {
        let (status, body) = c.api("POST", "/v1/runs", admin, Some(&format!(r#"{{"budget":{budget}}}"#))).unwrap();
        assert_eq!((status, body["error"]["type"].as_str()), (422, Some("invalid_request")), "{budget}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(member), "{budget} names {member}: {body}");
    }
    let (status, body) =
        c.api("POST", "/v1/runs", admin, Some(r#"{"budget":{"tokens":0,"cost_usd":2.5,"calls":null}}"#)).unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, _) = c.api("GET", "/v1/runs?limit=many", admin, None).unwrap();
    assert_eq!(status, 400);
    let (status, body) = c.api("GET", "/v1/nowhere", admin, None).unwrap();
    assert_eq!((status, body["error"]["type"].as_str()), (404, Some("not_found")));

    // Keys: the id must be derived from the key; registration is idempotent.
    let (key, _) = fleetforge_trust::sign::SigningKey::generate().unwrap();
    let pk = URL_SAFE_NO_PAD.encode(key.public_key());
    let body = format!(r#"{{"alg":"ed25519","public_key":"{pk}"}}"#);
    let (status, answer) = c.api("PUT", "/v1/keys/ed25519:0000000000000000", &proxy, Some(&body)).unwrap();
    assert_eq!(status, 400, "{answer}");
    for _ in 0..2 {
        let (status, answer) = c.api("PUT", &format!("/v1/keys/{}", key.id()), &proxy, Some(&body)).unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    let (_, keys) = c.api("GET", "/v1/keys", &reader, None).unwrap();
    assert_eq!(keys["keys"][0]["key_id"], key.id());
    assert_eq!(keys["keys"][0]["public_key"], pk);
    let (_, keys) = c.api("GET", "/v1/keys", &other_admin, None).unwrap();
    // Proxies read a public key from every entry: each one has one.
    assert!(keys["keys"].as_array().unwrap().iter().all(|k| k["public_key"].as_str().is_some_and(|p| !p.is_empty())));
    let kinds: Vec<&str> = keys["keys"].as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["capability-root", "log-signer", "c2pa-ca"],
        "receipt signers are per tenant; control's capability root (which also signs log heads) and C2PA CA are public"
    );

    // Ingest limits and junk.
    let big = format!(r#"{{"receipts":[{}]}}"#, vec!["{}"; 1001].join(","));
    let (status, body) = c.api("POST", "/v1/receipts", &proxy, Some(&big)).unwrap();
    assert_eq!(status, 413, "{body}");
    let (status, body) = c.api("POST", "/v1/receipts", &proxy, Some("{not json")).unwrap();
    assert_eq!((status, body["error"]["type"].as_str()), (400, Some("invalid_request")), "{body}");
    let (status, body) = c.api("POST", "/v1/receipts", &proxy, Some(r#"{"receipt":[]}"#)).unwrap();
    assert_eq!((status, body["error"]["type"].as_str()), (422, Some("invalid_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("`receipt`"), "{body}");
    let (status, body) = c.api("POST", "/v1/receipts", &proxy, Some(r#"{"receipts":[{"id":"x"}]}"#)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["rejected"], 1);
    assert!(body["results"][0]["error"].as_str().unwrap().contains("fleetforge.receipt/v1"), "{body}");
}

#[test]
fn control_api_contract_sqlite() {
    contract(false);
}

#[test]
fn control_api_contract_postgres() {
    contract(true);
}
