//! Exports end to end: a run recorded through the real proxy (an LLM call, a plain call, a
//! refused one) is exported by `fleetforge-ctl export --format aibom` as CycloneDX 1.6 JSON that
//! the CycloneDX project's own validator (cyclonedx-python-lib, the official 1.6 schema) accepts,
//! listing the model, the endpoints and what was refused; a document with a required member
//! removed is refused by the same validator; `--format vc` writes the run's credential;
//! `--format bundle` writes a folder that `verify --bundle` checks with control stopped, and a
//! one-byte change to a receipt, a proof, the AIBOM or the SCITT statement is named;
//! `--format c2pa` writes a manifest store the C2PA project's reader (c2pa-python) trusts and
//! binds to the receipts written beside it, and refuses once one byte of them changes.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fleetforge_e2e::harness::{ControlProcess, Database, binary, run_program};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::{Value, json};

const HOST: &str = "api.openai.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exports_as_a_valid_cyclonedx_aibom() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[HOST]).start().await.unwrap();
    let db = Database::fresh(false).unwrap();
    let mut control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
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
    let env =
        [("HTTPS_PROXY", proxy.proxy_url("run-bom", "unused")), ("CURL_CA_BUNDLE", proxy.bundle.display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;
    let url = format!("https://{HOST}/v1/chat/completions");
    let args = ["-H", "content-type: application/json", "--data-binary", chat, url.as_str()];
    clients.curl(&args, &env).await.unwrap().ok().unwrap();
    clients.curl(&["--data-binary", "{}", &format!("https://{HOST}/echo")], &env).await.unwrap().ok().unwrap();
    // Refused: not an allowed host (the proxy refuses the CONNECT with 403).
    let refused =
        clients.curl(&["-o", "/dev/null", "-w", "%{http_connect}", "https://evil.example/x"], &env).await.unwrap();
    assert_eq!(refused.stdout, "403", "{}", refused.stderr);
    control.receipts("run-bom", 3).unwrap();

    let file = dir.path().join("run-bom.cdx.json");
    let home = dir.path().join("ctl-home");
    let out =
        control.ctl(&home, &["export", "run-bom", "--format", "aibom", "-o", file.to_str().unwrap()]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let valid = clients.python("cyclonedx_validate.py", &[file.to_str().unwrap()], &[]).await.unwrap();
    assert_eq!((valid.code, valid.stdout.trim()), (0, "valid"), "{}", valid.stderr);

    let bom: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(bom["specVersion"], "1.6");
    assert_eq!(bom["metadata"]["component"]["bom-ref"], "run:run-bom");
    let model = bom["components"].as_array().unwrap().iter().find(|c| c["type"] == "machine-learning-model").unwrap();
    assert_eq!((model["name"].clone(), model["publisher"].clone()), (json!("gpt-4o"), json!("openai")));
    let services = bom["services"].as_array().unwrap();
    let names: Vec<&str> = services.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&HOST) && names.contains(&"evil.example"), "{names:?}");
    let evil = services.iter().find(|s| s["name"] == "evil.example").unwrap();
    assert!(
        evil["properties"].as_array().unwrap().contains(&json!({"name": "fleetforge:calls_refused", "value": "1"}))
    );

    // The validator is not a rubber stamp: the same document without `bomFormat` is refused.
    let mut broken = bom.clone();
    broken.as_object_mut().unwrap().remove("bomFormat");
    std::fs::write(&file, broken.to_string()).unwrap();
    let invalid = clients.python("cyclonedx_validate.py", &[file.to_str().unwrap()], &[]).await.unwrap();
    assert_eq!(invalid.code, 1, "{}", invalid.stdout);
    assert!(invalid.stdout.contains("'bomFormat' is a required property"), "{}", invalid.stdout);

    let vc = control.ctl(&home, &["export", "run-bom", "--format", "vc"]).await.unwrap();
    assert_eq!(vc.code, 0, "{}", vc.stderr);
    let credential: Value = serde_json::from_str(&vc.stdout).unwrap();
    assert_eq!(credential["id"], "urn:fleetforge:run:run-bom");
    // C2PA: the manifest store and the receipts it binds, read by the C2PA project's own reader.
    let sidecar = dir.path().join("run-bom.c2pa");
    let out =
        control.ctl(&home, &["export", "run-bom", "--format", "c2pa", "-o", sidecar.to_str().unwrap()]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let asset = dir.path().join("run-bom.jsonl");
    let (_, keys) = control.api("GET", "/v1/keys", &control.token, None).unwrap();
    let ca = keys["keys"].as_array().unwrap().iter().find(|k| k["kind"] == "c2pa-ca").unwrap()["certificate_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_file = dir.path().join("c2pa-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let read = |asset: std::path::PathBuf| {
        let (clients, sidecar, ca_file) = (&clients, sidecar.clone(), ca_file.clone());
        async move {
            let args = [sidecar.to_str().unwrap(), asset.to_str().unwrap(), ca_file.to_str().unwrap()];
            let out = clients.python("c2pa_read.py", &args, &[]).await.unwrap();
            assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
            serde_json::from_str::<Value>(&out.stdout).unwrap()
        }
    };
    let read_ok = read(asset.clone()).await;
    assert_eq!(read_ok["state"].as_str().unwrap().to_ascii_lowercase(), "trusted", "{read_ok}");
    assert_eq!(read_ok["failures"], json!([]), "{read_ok}");
    let stated = &read_ok["assertion"];
    assert_eq!((stated["run"].clone(), stated["receipts"].clone()), (json!("run-bom"), json!(3)), "{read_ok}");
    assert!(stated["log_head"]["size"].as_u64().unwrap() >= 3, "{read_ok}");
    let bytes = std::fs::read(&asset).unwrap();
    let mut one_byte = bytes.clone();
    one_byte[bytes.len() / 2] ^= 0x01;
    let changed = dir.path().join("run-bom-changed.jsonl");
    std::fs::write(&changed, one_byte).unwrap();
    let read_bad = read(changed).await;
    assert_eq!(read_bad["state"].as_str().unwrap().to_ascii_lowercase(), "invalid", "{read_bad}");
    assert!(read_bad["failures"].as_array().unwrap().contains(&json!("assertion.dataHash.mismatch")), "{read_bad}");

    let missing = control.ctl(&home, &["export", "no-such-run", "--format", "aibom"]).await.unwrap();
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("run no-such-run not found"), "{}", missing.stderr);

    // The bundle, checked with control stopped.
    let bundle = dir.path().join("bundle");
    let out =
        control.ctl(&home, &["export", "run-bom", "--format", "bundle", "-o", bundle.to_str().unwrap()]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    control.kill();
    let offline = |bundle: std::path::PathBuf| {
        let home = home.display().to_string();
        async move {
            run_program(
                &binary("fleetforge-ctl"),
                &["verify", "--bundle", bundle.to_str().unwrap()],
                &[("FLEETFORGE_HOME", &home), ("FLEETFORGE_CONTROL_URL", "http://127.0.0.1:9")],
            )
            .await
            .unwrap()
        }
    };
    let out = offline(bundle.clone()).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("3 receipts: hash, batch proof, signature and chain checked"), "{}", out.stdout);
    assert!(out.stdout.contains("3 receipts included under it"), "{}", out.stdout);
    assert!(out.stdout.contains("vc.json: the credential's proof verifies"), "{}", out.stdout);
    assert!(out.stdout.contains("states these 3 receipts; its COSE receipt proves leaf"), "{}", out.stdout);
    assert!(
        out.stdout.contains("receipts.c2pa: C2PA manifest trusted, its data hash binds receipts.jsonl"),
        "{}",
        out.stdout
    );

    // One changed byte, in three places: each is named.
    let receipts = std::fs::read_to_string(bundle.join("receipts.jsonl")).unwrap();
    let victim: Value = serde_json::from_str(receipts.lines().next().unwrap()).unwrap();
    let victim = victim["id"].as_str().unwrap().to_owned();
    let changed = receipts.replacen("\"status\":200", "\"status\":201", 1);
    assert_ne!(changed, receipts);
    std::fs::write(bundle.join("receipts.jsonl"), changed).unwrap();
    let out = offline(bundle.clone()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("FAILED  receipts.jsonl: changed"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("FAILED  receipt {victim}:")), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "FAILED  receipts.c2pa: the c2pa library refuses it against receipts.jsonl: assertion.dataHash.mismatch"
        ),
        "{}",
        out.stdout
    );
    std::fs::write(bundle.join("receipts.jsonl"), receipts).unwrap();

    let proof_file = bundle.join(format!("log/inclusion/{victim}.json"));
    let proof = std::fs::read_to_string(&proof_file).unwrap();
    let mut p: Value = serde_json::from_str(&proof).unwrap();
    let first = p["path"][0].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if first.starts_with('0') { "1" } else { "0" }, &first[1..]);
    p["path"][0] = json!(flipped);
    std::fs::write(&proof_file, p.to_string()).unwrap();
    let out = offline(bundle.clone()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("FAILED  receipt {victim}: its inclusion proof does not lead to the checkpoint")),
        "{}",
        out.stdout
    );
    std::fs::write(&proof_file, proof).unwrap();

    let aibom = std::fs::read(bundle.join("aibom.cdx.json")).unwrap();
    let mut one_byte = aibom.clone();
    let at = one_byte.iter().position(|b| *b == b'6').unwrap();
    one_byte[at] = b'7';
    std::fs::write(bundle.join("aibom.cdx.json"), one_byte).unwrap();
    let out = offline(bundle.clone()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("FAILED  aibom.cdx.json: changed"), "{}", out.stdout);
    std::fs::write(bundle.join("aibom.cdx.json"), aibom).unwrap();

    // The SCITT statement: one changed byte of its payload breaks its signature.
    let statement = std::fs::read(bundle.join("scitt/statement.cose")).unwrap();
    let mut one_byte = statement.clone();
    let at = one_byte.windows(7).position(|w| w == b"run-bom").unwrap();
    one_byte[at] = b'R';
    std::fs::write(bundle.join("scitt/statement.cose"), one_byte).unwrap();
    let out = offline(bundle.clone()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("FAILED  scitt/statement.cose: changed"), "{}", out.stdout);
    assert!(out.stdout.contains("FAILED  scitt/statement.cose: the signature does not verify"), "{}", out.stdout);
    std::fs::write(bundle.join("scitt/statement.cose"), statement).unwrap();
    assert_eq!(offline(bundle).await.code, 0, "restored, it verifies again");
}
