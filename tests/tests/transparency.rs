//! The transparency log end to end: calls through the real proxy land at control (Postgres) as
//! receipts appended to the tenant's Merkle log; `fleetforge-ctl verify` checks each receipt's
//! inclusion under the signed head and the log's consistency with the head it kept; an
//! independent RFC 9162 / C2SP checker in Python (`tests/clients/rfc9162_verify.py`, hashlib and
//! `cryptography`) accepts the same proofs and refuses altered ones; an altered log node or a
//! rewritten head is caught.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use fleetforge_e2e::harness::{ClientOutput, ControlProcess, Database};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::{Value, json};

const HOST: &str = "api.openai.com";

async fn call(clients: &Clients, proxy: &ProxyProcess, run: &str, n: usize) {
    let env = [("HTTPS_PROXY", proxy.proxy_url(run, "unused")), ("CURL_CA_BUNDLE", proxy.bundle.display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = format!(r#"{{"n":{n}}}"#);
    clients.curl(&["--data-binary", &body, &format!("https://{HOST}/echo")], &env).await.unwrap().ok().unwrap();
}

async fn ctl(control: &ControlProcess, home: &Path, args: &[&str]) -> ClientOutput {
    control.ctl(home, args).await.unwrap()
}

fn get(control: &ControlProcess, path: &str) -> Value {
    let (status, body) = control.api("GET", path, &control.token, None).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Runs the independent checker on `doc`; its verdicts.
async fn independent(clients: &Clients, dir: &Path, doc: &Value) -> Value {
    let file = dir.join("log-check.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = clients.python("rfc9162_verify.py", &[file.to_str().unwrap()], &[]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receipt_is_logged_and_the_log_only_grows() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[HOST]).start().await.unwrap();
    let db = Database::fresh(true).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let proxy = ProxyProcess::builder()
        .home(&dir.path().join("proxy-home"))
        .resolve(HOST, upstream.addr())
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .env("FLEETFORGE_ALLOWED_HOSTS", HOST)
        .start()
        .unwrap();
    let clients = Clients::locate();
    let home = dir.path().join("ctl-home");

    for n in 0..3 {
        call(&clients, &proxy, "run-log", n).await;
    }
    let first = control.receipts("run-log", 3).unwrap();
    let out = ctl(&control, &home, &["verify", "run-log"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("log: 3 of 3 receipts included in the log of tenant default (size 3"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("first head of tenant default"), "{}", out.stdout);
    let kept: Value = serde_json::from_slice(&std::fs::read(home.join("log-heads/default.json")).unwrap()).unwrap();
    assert_eq!(kept["size"], 3);
    let head3 = get(&control, "/v1/log/default/head");

    for n in 3..5 {
        call(&clients, &proxy, "run-log", n).await;
    }
    let receipts = control.receipts("run-log", 5).unwrap();
    let out = ctl(&control, &home, &["verify", "run-log"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("log: 5 of 5 receipts included"), "{}", out.stdout);
    assert!(out.stdout.contains("consistent with the head seen last (size 3 -> 5)"), "{}", out.stdout);

    // The independent checker agrees, and refuses what was altered.
    let keys = get(&control, "/v1/keys");
    let head = get(&control, "/v1/log/default/head");
    let public =
        keys["keys"].as_array().unwrap().iter().find(|k| k["key_id"] == head["key_id"]).unwrap()["public_key"].clone();
    let inclusions: Vec<Value> = receipts
        .iter()
        .map(|r| {
            let hash = fleetforge_trust::verify::prove(r).unwrap().hash;
            let proof = get(&control, &format!("/v1/log/default/inclusion/{}", r["id"].as_str().unwrap()));
            json!({"leaf_data": fleetforge_trust::canonical::hex(&hash), "proof": proof})
        })
        .collect();
    let consistency = get(&control, "/v1/log/default/consistency?from=3&to=5");
    let mut doc = json!({"public_key": public, "head": head, "inclusions": inclusions, "consistency": consistency,
        "old_root": head3["root"]});
    let verdict = independent(&clients, dir.path(), &doc).await;
    assert_eq!(verdict, json!({"checkpoint": true, "inclusions": [true, true, true, true, true], "consistency": true}));
    assert!(first.iter().all(|r| receipts.iter().any(|s| s["id"] == r["id"])));

    doc["inclusions"][2]["proof"]["path"][0] = json!("00".repeat(32));
    doc["consistency"]["proof"][0] = json!("11".repeat(32));
    doc["head"]["checkpoint"] = json!(head["checkpoint"].as_str().unwrap().replacen("\n5\n", "\n6\n", 1));
    let verdict = independent(&clients, dir.path(), &doc).await;
    assert_eq!(
        verdict,
        json!({"checkpoint": false, "inclusions": [true, true, false, true, true], "consistency": false})
    );

    // An altered log node: the proofs through it (those of leaves 2 and 3) no longer reach the
    // signed head.
    db.execute(&control.home, &format!("UPDATE log_nodes SET hash = '{}' WHERE level = 1 AND idx = 0", "0".repeat(64)))
        .unwrap();
    let out = ctl(&control, &home, &["verify", "run-log"]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("does not lead to the signed head of size 5"), "{}", out.stdout);

    // A rewritten head: not consistent with the one kept.
    db.execute(&control.home, &format!("UPDATE log_heads SET root = '{}' WHERE tenant = 'default'", "ab".repeat(32)))
        .unwrap();
    let out = ctl(&control, &home, &["verify", "run-log"]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("is NOT consistent with the head seen last (size 5)"), "{}", out.stdout);
}
