//! SCITT end to end on Postgres with two control replicas: a run recorded through the real proxy
//! ends when idle and its signed statement is emitted once; `fleetforge-ctl export --format
//! scitt` writes the statement and its COSE receipt, which a checker written in Python from the
//! RFCs (`cbor2`, `cryptography`) accepts — and refuses once one byte changes; a statement made
//! in Python is registered and its receipt proves it; forty runs closed through both replicas at
//! once get exactly one statement each; malformed statements are refused naming the problem.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fleetforge_e2e::harness::{ControlProcess, Database};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::{Value, json};

const HOST: &str = "api.openai.com";

/// Polls `GET /v1/runs/{run}/scitt` on `control` (up to 20 s) until it lists a statement.
fn statements(control: &ControlProcess, run: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = control.api("GET", &format!("/v1/runs/{run}/scitt"), &control.token, None).unwrap();
        assert_eq!(status, 200, "{body}");
        let list = body["statements"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() || Instant::now() >= deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `curl` POST of a file to control with a content type; (status, body).
async fn post_file(clients: &Clients, control: &ControlProcess, path: &str, file: &str, media: &str) -> (u16, Value) {
    let url = format!("{}{path}", control.url());
    let auth = format!("authorization: Bearer {}", control.token);
    let content_type = format!("content-type: {media}");
    let data = format!("@{file}");
    let args = ["-sS", "-w", "\n%{http_code}", "-H", &auth, "-H", &content_type, "--data-binary", &data, &url];
    let out = clients.curl(&args, &[]).await.unwrap();
    let (body, status) = out.stdout.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_become_signed_statements_that_independent_code_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[HOST]).start().await.unwrap();
    let db = Database::fresh(true).unwrap();
    let idle = [("FLEETFORGE_SCITT_IDLE_SECS", "2")];
    let a = ControlProcess::start_with_env(&db, &dir.path().join("control-a"), None, &idle).unwrap();
    let b = ControlProcess::start_with_env(&db, &dir.path().join("control-b"), None, &idle).unwrap();
    let proxy = ProxyProcess::builder()
        .home(&dir.path().join("proxy-home"))
        .resolve(HOST, upstream.addr())
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", a.url())
        .env("FLEETFORGE_CONTROL_TOKEN", a.token.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .env("FLEETFORGE_ALLOWED_HOSTS", HOST)
        .start()
        .unwrap();
    let clients = Clients::locate();
    let env = [
        ("HTTPS_PROXY", proxy.proxy_url("run-scitt", "unused")),
        ("CURL_CA_BUNDLE", proxy.bundle.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;
    let url = format!("https://{HOST}/v1/chat/completions");
    for _ in 0..3 {
        let args = ["-H", "content-type: application/json", "--data-binary", chat, url.as_str()];
        clients.curl(&args, &env).await.unwrap().ok().unwrap();
    }
    let receipts = a.receipts("run-scitt", 3).unwrap();

    // Idle for 2 s: the run ends and one replica's worker emits its statement, once.
    let list = statements(&b, "run-scitt");
    assert_eq!(list.len(), 1, "{list:?}");
    let (_, run) = b.api("GET", "/v1/runs/run-scitt", &b.token, None).unwrap();
    assert_eq!(run["close_reason"], "idle", "{run}");
    assert_eq!(list[0]["receipts"], 3);

    // Exported and checked by code that is not ours.
    let home = dir.path().join("ctl-home");
    let statement = dir.path().join("run-scitt.cose");
    let out =
        a.ctl(&home, &["export", "run-scitt", "--format", "scitt", "-o", statement.to_str().unwrap()]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let (_, keys) = a.api("GET", "/v1/keys", &a.token, None).unwrap();
    let receipt = dir.path().join("run-scitt.cose.receipt");
    let (s, r) = (statement.to_str().unwrap(), receipt.to_str().unwrap());
    let checked = clients.python("scitt_verify.py", &[s], &[]).await.unwrap();
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
    let v: Value = serde_json::from_str(&checked.stdout).unwrap();
    assert_eq!((v["tag"].clone(), v["alg"].clone()), (json!(18), json!(-8)), "{v}");
    assert_eq!(v["content_type"], "application/vnd.fleetforge.run-statement+json");
    assert_eq!(v["sub"], "run:run-scitt");
    assert!(v["iss"].as_str().unwrap().starts_with("did:key:z6Mk"), "{v}");
    assert_eq!(v["statement_signature"], true, "the did:key issuer's signature verifies");
    let payload: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
    assert_eq!((payload["run"].clone(), payload["receipts"].clone()), (json!("run-scitt"), json!(3)));
    let hashes: Vec<String> = receipts
        .iter()
        .map(|r| fleetforge_trust::canonical::hex(&fleetforge_trust::verify::prove(r).unwrap().hash))
        .collect();
    assert!(
        payload["lanes"].as_array().unwrap().iter().any(|l| hashes.contains(&l["head"].as_str().unwrap().to_owned()))
    );
    // The receipt served by replica a: signed by a's log key, its proof and signature checked in
    // Python.
    let a_key = keys["keys"].as_array().unwrap().iter().find(|k| k["kind"] == "log-signer").unwrap()["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let checked = clients.python("scitt_verify.py", &[s, r, &a_key], &[]).await.unwrap();
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
    let v: Value = serde_json::from_str(&checked.stdout).unwrap();
    let rc = &v["receipt"];
    assert_eq!((rc["vds"].clone(), rc["signature"].clone()), (json!(1), json!(true)), "{v}");
    assert_eq!(rc["iss"], "fleetforge/log/default");
    assert_eq!(rc["sub"], list[0]["id"]);
    assert_eq!(rc["index"], list[0]["log_index"]);
    let head = a.api("GET", "/v1/log/default/head", &a.token, None).unwrap().1;
    assert_eq!((rc["size"].clone(), rc["root"].clone()), (head["size"].clone(), head["root"].clone()));

    // One changed byte in the statement: its signature and its receipt both fail.
    let original = std::fs::read(&statement).unwrap();
    let mut bad = original.clone();
    let at = bad.windows(9).position(|w| w == b"run-scitt").unwrap();
    bad[at] = b'R';
    std::fs::write(&statement, &bad).unwrap();
    let checked = clients.python("scitt_verify.py", &[s, r, &a_key], &[]).await.unwrap();
    assert_eq!(checked.code, 1, "{}", checked.stdout);
    let v: Value = serde_json::from_str(&checked.stdout).unwrap();
    assert_eq!((v["statement_signature"].clone(), v["receipt"]["signature"].clone()), (json!(false), json!(false)));
    std::fs::write(&statement, &original).unwrap();

    // A statement signed in Python is registered; its receipt proves it.
    let external = dir.path().join("external.cose");
    let made =
        clients.python("scitt_verify.py", &["sign", external.to_str().unwrap(), "model:gpt-4o"], &[]).await.unwrap();
    assert_eq!(made.code, 0, "{}", made.stderr);
    let (status, reg) =
        post_file(&clients, &b, "/v1/scitt/statements", external.to_str().unwrap(), "application/cose").await;
    assert_eq!(status, 201, "{reg}");
    assert_eq!((reg["kind"].clone(), reg["issuer_verified"].clone()), (json!("external"), json!(true)));
    assert_eq!(reg["issuer"], made.stdout.trim());
    let (again, _) =
        post_file(&clients, &a, "/v1/scitt/statements", external.to_str().unwrap(), "application/cose").await;
    assert_eq!(again, 200, "registering the same bytes twice appends nothing");
    let ext_receipt = dir.path().join("external.receipt.cose");
    let url = format!("{}/v1/scitt/receipts/{}", a.url(), reg["id"].as_str().unwrap());
    let auth = format!("authorization: Bearer {}", a.token);
    clients.curl(&["-sSf", "-H", &auth, "-o", ext_receipt.to_str().unwrap(), &url], &[]).await.unwrap().ok().unwrap();
    let checked = clients
        .python("scitt_verify.py", &[external.to_str().unwrap(), ext_receipt.to_str().unwrap(), &a_key], &[])
        .await
        .unwrap();
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);

    // Malformed statements: 400 naming the problem.
    let junk = dir.path().join("junk.cose");
    std::fs::write(&junk, b"not cbor at all").unwrap();
    let (status, err) =
        post_file(&clients, &a, "/v1/scitt/statements", junk.to_str().unwrap(), "application/cose").await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("not a COSE_Sign1"), "{err}");
    let mut forged = std::fs::read(&external).unwrap();
    let at = forged.windows(6).position(|w| w == b"passed").unwrap();
    forged[at] = b'P';
    std::fs::write(&junk, &forged).unwrap();
    let (status, err) =
        post_file(&clients, &a, "/v1/scitt/statements", junk.to_str().unwrap(), "application/cose").await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("does not verify"), "{err}");

    // Forty runs closed through both replicas at once: one statement each, no more.
    for i in 0..40 {
        let (status, _) = a.api("POST", "/v1/runs", &a.token, Some(&format!("{{\"id\":\"run-many-{i}\"}}"))).unwrap();
        assert_eq!(status, 201);
    }
    let close = |c: &ControlProcess, i: usize| {
        c.api("POST", &format!("/v1/runs/run-many-{i}/close"), &c.token, Some("")).unwrap()
    };
    std::thread::scope(|scope| {
        scope.spawn(|| (0..40).for_each(|i| assert_eq!(close(&a, i).0, 200)));
        scope.spawn(|| (0..40).rev().for_each(|i| assert_eq!(close(&b, i).0, 200)));
    });
    for i in 0..40 {
        let list = statements(&a, &format!("run-many-{i}"));
        assert_eq!(list.len(), 1, "run-many-{i}: {list:?}");
    }
    let rows = db.execute(&a.home, "SELECT count(*), count(DISTINCT run_id), count(*) FILTER (WHERE done_at IS NULL) FROM scitt_outbox WHERE run_id LIKE 'run-many-%'").unwrap();
    assert_eq!(rows.trim(), "40|40|0", "one outbox row per run, all done");
}
