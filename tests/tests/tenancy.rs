//! Tenancy, table-driven over the OpenAPI document: tenant `alpha` records a run through the real
//! proxy and gives it everything a run can have (labels, receipts, a sealed blob, an attestation,
//! a hold, a SCITT statement, a budget lease); then every route control documents is called with
//! tenant `beta`'s reader, proxy and admin tokens, aimed at alpha's run, receipts, blob,
//! attestation, statement, key and log. Each call is refused (or, for listings and beta's own
//! writes, answers without alpha's data), no answer carries anything of alpha's that beta did not
//! send, and alpha's run is unchanged afterwards. A route added to the API without a row here
//! fails the test.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fleetforge_e2e::harness::{ControlProcess, Database};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::{Value, json};

const HOST: &str = "api.openai.com";
const RUN: &str = "run-alpha-7c1d9e";
const LABEL: &str = "alpha-label-3f8a1c";
const BLOB: &[u8] = b"alpha sealed blob 91be0d";
const PREDICATE: &str = "alpha-predicate-5d2e77";

fn token(db: &Database, home: &std::path::Path, role: &str, tenant: &str) -> String {
    fleetforge_e2e::harness::create_token(db, home, role, tenant).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    fleetforge_trust::canonical::hex(&fleetforge_trust::canonical::sha256(bytes))
}

/// What a call to a route is expected to do when beta aims it at alpha.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 403 or 404.
    Refused,
    /// 2xx allowed (a listing or beta's own write), but without alpha's data.
    Scoped,
}

/// One row of the table: the route, the body beta sends, what is expected.
struct Row {
    method: &'static str,
    path: &'static str,
    body: fn(&Alpha) -> Option<(String, &'static str)>,
    expect: Expect,
}

/// Alpha's data, as beta aims at it.
struct Alpha {
    receipt: String,
    receipt_json: Value,
    seal: String,
    attestation: String,
    statement: String,
    key_id: String,
    key_public: String,
    token_id: String,
}

fn json_body(v: Value) -> Option<(String, &'static str)> {
    Some((v.to_string(), "application/json"))
}

fn table() -> Vec<Row> {
    use Expect::{Refused, Scoped};
    vec![
        Row { method: "get", path: "/v1/runs", body: |_| None, expect: Scoped },
        // A run under an id alpha holds: refused as taken, nothing of alpha's shown.
        Row { method: "post", path: "/v1/runs", body: |_| json_body(json!({ "id": RUN })), expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}", body: |_| None, expect: Refused },
        Row { method: "post", path: "/v1/runs/{id}/token", body: |_| json_body(json!({})), expect: Refused },
        Row { method: "post", path: "/v1/runs/{id}/revoke", body: |_| json_body(json!({})), expect: Refused },
        Row {
            method: "post",
            path: "/v1/runs/{id}/budget/lease",
            body: |_| json_body(json!({ "holder": "beta-proxy", "want": { "tokens": 10 } })),
            expect: Refused,
        },
        Row { method: "post", path: "/v1/runs/{id}/close", body: |_| None, expect: Refused },
        Row { method: "post", path: "/v1/runs/{id}/hold", body: |_| json_body(json!({})), expect: Refused },
        Row { method: "delete", path: "/v1/runs/{id}/hold", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/receipts", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/verify", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/replay-manifest", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/replay-report", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/attestations", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/scitt", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/export/vc", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/export/aibom", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/export/c2pa", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/runs/{id}/export/scitt", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/receipts/{id}", body: |_| None, expect: Refused },
        // Alpha's own receipt, re-sent by beta: each item refused (200 with the item rejected).
        Row {
            method: "post",
            path: "/v1/receipts",
            body: |a| json_body(json!({ "receipts": [a.receipt_json] })),
            expect: Scoped,
        },
        Row { method: "get", path: "/v1/seals/{sha256}", body: |_| None, expect: Refused },
        // Other bytes under alpha's address: refused as a mismatch before anything is stored.
        Row {
            method: "put",
            path: "/v1/seals/{sha256}",
            body: |_| Some(("beta bytes".into(), "application/octet-stream")),
            expect: Refused,
        },
        Row { method: "get", path: "/v1/attestations/{id}", body: |_| None, expect: Refused },
        Row {
            method: "put",
            path: "/v1/attestations/{id}",
            body: |_| {
                json_body(json!({
                    "_type": "https://in-toto.io/Statement/v1",
                    "subject": [{ "name": "beta", "digest": { "sha256": "ab".repeat(32) } }],
                    "predicateType": "https://example.com/beta",
                }))
            },
            expect: Refused,
        },
        Row { method: "get", path: "/v1/keys", body: |_| None, expect: Scoped },
        Row {
            method: "put",
            path: "/v1/keys/{key_id}",
            body: |a| json_body(json!({ "alg": "ed25519", "public_key": a.key_public })),
            expect: Refused,
        },
        Row {
            method: "post",
            path: "/v1/capabilities/revoke",
            body: |a| json_body(json!({ "revocation_id": a.token_id })),
            expect: Refused,
        },
        Row { method: "get", path: "/v1/revocations", body: |_| None, expect: Scoped },
        Row { method: "get", path: "/v1/log/{tenant}/head", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/log/{tenant}/checkpoint", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/log/{tenant}/inclusion/{receipt_id}", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/log/{tenant}/consistency", body: |_| None, expect: Refused },
        Row {
            method: "post",
            path: "/v1/scitt/statements",
            body: |_| json_body(json!({ "run": RUN })),
            expect: Refused,
        },
        Row { method: "get", path: "/v1/scitt/statements/{id}", body: |_| None, expect: Refused },
        Row { method: "get", path: "/v1/scitt/receipts/{id}", body: |_| None, expect: Refused },
        Row { method: "post", path: "/v1/ui/login-links", body: |_| json_body(json!({})), expect: Scoped },
    ]
}

/// The concrete path beta calls for a row.
fn concrete(path: &str, a: &Alpha) -> String {
    let id = if path.starts_with("/v1/runs/") {
        RUN
    } else if path.starts_with("/v1/receipts/") {
        &a.receipt
    } else if path.starts_with("/v1/attestations/") {
        &a.attestation
    } else {
        &a.statement
    };
    let mut p = path
        .replace("{id}", id)
        .replace("{sha256}", &a.seal)
        .replace("{key_id}", &a.key_id)
        .replace("{tenant}", "alpha")
        .replace("{receipt_id}", &a.receipt);
    if p.ends_with("/consistency") {
        p.push_str("?from=1");
    }
    p
}

/// A raw HTTP/1.1 call (any method, any content type); (status, body).
fn call(c: &ControlProcess, method: &str, path: &str, token: &str, body: Option<&(String, &str)>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let (bytes, media) = body.map_or(("", "application/json"), |(b, m)| (b.as_str(), *m));
    write!(
        s,
        "{} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {media}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{bytes}",
        method.to_ascii_uppercase(),
        bytes.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), rest.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_gets_nothing_of_a_run_on_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[HOST]).start().await.unwrap();
    let db = Database::fresh(true).unwrap();
    let home = dir.path().join("control-home");
    let control = ControlProcess::start(&db, &home, None).unwrap();
    let alpha_admin = token(&db, &home, "admin", "alpha");
    let alpha_proxy = token(&db, &home, "proxy", "alpha");

    // Alpha's run, recorded through the real proxy with alpha's proxy token.
    let created = call(
        &control,
        "POST",
        "/v1/runs",
        &alpha_admin,
        Some(&(
            json!({ "id": RUN, "labels": { "team": LABEL }, "budget": { "tokens": 100000 } }).to_string(),
            "application/json",
        )),
    );
    assert_eq!(created.0, 201, "{}", created.1);
    let created: Value = serde_json::from_str(&created.1).unwrap();
    let proxy = ProxyProcess::builder()
        .home(&dir.path().join("proxy-home"))
        .resolve(HOST, upstream.addr())
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", alpha_proxy.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .env("FLEETFORGE_ALLOWED_HOSTS", HOST)
        .start()
        .unwrap();
    let clients = Clients::locate();
    let env = [("HTTPS_PROXY", proxy.proxy_url(RUN, "unused")), ("CURL_CA_BUNDLE", proxy.bundle.display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;
    let url = format!("https://{HOST}/v1/chat/completions");
    let args = ["-H", "content-type: application/json", "--data-binary", chat, url.as_str()];
    clients.curl(&args, &env).await.unwrap().ok().unwrap();
    let (_, receipts) = control.api("GET", &format!("/v1/runs/{RUN}/receipts"), &alpha_admin, None).unwrap();
    let mut receipts = receipts["receipts"].as_array().cloned().unwrap_or_default();
    for _ in 0..100 {
        if !receipts.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (_, r) = control.api("GET", &format!("/v1/runs/{RUN}/receipts"), &alpha_admin, None).unwrap();
        receipts = r["receipts"].as_array().cloned().unwrap_or_default();
    }
    let receipt_json = receipts.first().cloned().expect("alpha's receipt at control");
    let seal = sha256_hex(BLOB);
    let put = call(
        &control,
        "PUT",
        &format!("/v1/seals/{seal}"),
        &alpha_proxy,
        Some(&(String::from_utf8(BLOB.to_vec()).unwrap(), "application/octet-stream")),
    );
    assert_eq!(put.0, 201, "{}", put.1);
    let attestation = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "name": RUN, "digest": { "sha256": "cd".repeat(32) } }],
        "predicateType": "https://example.com/eval",
        "predicate": { "result": PREDICATE },
    });
    let put = call(
        &control,
        "PUT",
        &format!("/v1/attestations/att-alpha?run={RUN}"),
        &alpha_admin,
        Some(&(attestation.to_string(), "application/json")),
    );
    assert_eq!(put.0, 201, "{}", put.1);
    let held = call(
        &control,
        "POST",
        &format!("/v1/runs/{RUN}/hold"),
        &alpha_admin,
        Some(&(json!({ "reason": "alpha audit" }).to_string(), "application/json")),
    );
    assert_eq!(held.0, 200, "{}", held.1);
    let lease = call(
        &control,
        "POST",
        &format!("/v1/runs/{RUN}/budget/lease"),
        &alpha_proxy,
        Some(&(json!({ "holder": "alpha-proxy", "want": { "tokens": 100 } }).to_string(), "application/json")),
    );
    assert_eq!(lease.0, 200, "{}", lease.1);
    let (status, stated) =
        control.api("POST", "/v1/scitt/statements", &alpha_admin, Some(&json!({ "run": RUN }).to_string())).unwrap();
    assert_eq!(status, 201, "{stated}");
    let (_, keys) = control.api("GET", "/v1/keys", &alpha_admin, None).unwrap();
    let key = keys["keys"].as_array().unwrap().iter().find(|k| k["kind"] == "receipt-signer").unwrap().clone();
    let alpha = Alpha {
        receipt: receipt_json["id"].as_str().unwrap().to_owned(),
        receipt_json: receipt_json.clone(),
        seal,
        attestation: "att-alpha".into(),
        statement: stated["id"].as_str().unwrap().to_owned(),
        key_id: key["key_id"].as_str().unwrap().to_owned(),
        key_public: key["public_key"].as_str().unwrap().to_owned(),
        token_id: created["token_id"].as_str().unwrap().to_owned(),
    };
    let before = control.api("GET", &format!("/v1/runs/{RUN}"), &alpha_admin, None).unwrap().1;
    let log_before = control.api("GET", "/v1/log/alpha/head", &alpha_admin, None).unwrap().1;

    // Never in an answer to beta: what only alpha holds.
    let secret = [
        LABEL.to_owned(),
        String::from_utf8(BLOB.to_vec()).unwrap(),
        PREDICATE.to_owned(),
        receipt_json["chain"]["prev_hash"].as_str().unwrap().to_owned(),
        "alpha audit".to_owned(),
    ];

    let documented: Value =
        serde_json::from_str(&fleetforge_e2e::harness::http_get(control.addr, "/openapi.json").unwrap().1).unwrap();
    let table = table();
    for (path, ops) in documented["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            assert!(
                table.iter().any(|r| r.path == path && r.method == method),
                "{} {path} has no tenancy row: add it to tests/tests/tenancy.rs",
                method.to_ascii_uppercase()
            );
        }
    }
    let beta = [
        ("reader", token(&db, &home, "reader", "beta")),
        ("proxy", token(&db, &home, "proxy", "beta")),
        ("admin", token(&db, &home, "admin", "beta")),
    ];
    let mut tried = 0;
    for row in &table {
        let path = concrete(row.path, &alpha);
        let body = (row.body)(&alpha);
        for (role, t) in &beta {
            let (status, answer) = call(&control, row.method, &path, t, body.as_ref());
            tried += 1;
            let what = format!("beta's {role}: {} {path} -> {status} {answer}", row.method.to_ascii_uppercase());
            match row.expect {
                Expect::Refused => assert!(
                    matches!(status, 403 | 404 | 409 | 422),
                    "refused expected (403, 404, or 409/422 for an id alpha holds): {what}"
                ),
                Expect::Scoped => assert!(status < 500, "{what}"),
            }
            for s in &secret {
                assert!(!answer.contains(s.as_str()), "alpha's {s:?} revealed to {what}");
            }
            // Alpha's ids appear only where beta sent them.
            let sent = format!("{path} {}", body.as_ref().map_or("", |b| b.0.as_str()));
            for id in
                [RUN, &alpha.receipt, &alpha.attestation, &alpha.statement, &alpha.key_id, &alpha.seal, &alpha.token_id]
            {
                assert!(sent.contains(id) || !answer.contains(id), "alpha's {id} revealed to {what}");
            }
            if row.path == "/v1/receipts" && status == 200 {
                let v: Value = serde_json::from_str(&answer).unwrap();
                assert_eq!((v["accepted"].clone(), v["rejected"].clone()), (json!(0), json!(1)), "{what}");
            }
        }
    }
    assert_eq!(tried, 3 * table.len(), "every row with each of beta's tokens");

    // Alpha's run is as it was: not revoked, closed, released or re-leased; its log did not move.
    let after = control.api("GET", &format!("/v1/runs/{RUN}"), &alpha_admin, None).unwrap().1;
    for field in ["revoked_at", "closed_at", "calls", "labels", "budget_state", "token_id"] {
        assert_eq!(after[field], before[field], "alpha's run {field} changed");
    }
    let (_, linked) = control.api("GET", &format!("/v1/runs/{RUN}/attestations"), &alpha_admin, None).unwrap();
    assert_eq!(linked["attestations"][0]["id"], "att-alpha");
    let held =
        db.execute(&home, &format!("SELECT held_at IS NOT NULL, hold_reason FROM runs WHERE id = '{RUN}'")).unwrap();
    assert_eq!(held.trim(), "t|alpha audit", "alpha's hold stays");
    let log_after = control.api("GET", "/v1/log/alpha/head", &alpha_admin, None).unwrap().1;
    assert_eq!(log_after["size"], log_before["size"], "beta appended nothing to alpha's log");
    let (_, revocations) = control.api("GET", "/v1/revocations", &alpha_admin, None).unwrap();
    assert!(!revocations.to_string().contains(&alpha.token_id), "beta revoked alpha's run token");
    let got = call(&control, "GET", &format!("/v1/seals/{}", alpha.seal), &alpha_proxy, None);
    assert_eq!((got.0, got.1.as_bytes()), (200, BLOB), "alpha's blob intact");
}
