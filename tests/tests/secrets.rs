//! Secrets never written down: a unique fake key, sent every way SDKs send one — `Authorization:
//! Bearer`, `x-api-key` (Anthropic), `api-key` (Azure OpenAI), `x-goog-api-key` and `?key=`
//! (Gemini), and the proxy password in `HTTPS_PROXY` — through the real proxy (tracing at `trace`,
//! sealing on, OTLP export on, receipts shipped to control on Postgres), then searched for in
//! every receipt, every file under the proxy's home (spool, seals, keys), both processes' logs,
//! both `/metrics`, every exported span, and a dump of control's database. It is in none of them.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use fleetforge_e2e::harness::{ControlProcess, Database};
use fleetforge_e2e::otlp::OtlpReceiver;
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};

const OPENAI: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";
const GEMINI: &str = "generativelanguage.googleapis.com";
const AZURE: &str = "ff-test.openai.azure.com";

/// Every file under `dir`, with its bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            // Sealed bodies are stored zstd-compressed: search what they hold, too.
            if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                let inflated = zstd::stream::decode_all(bytes.as_slice()).unwrap();
                out.push((format!("{} (decompressed)", path.display()), inflated));
            }
            out.push((path.display().to_string(), bytes));
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sent_every_way_is_written_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream = Upstream::builder().tls(&ca, &[OPENAI, ANTHROPIC, GEMINI, AZURE]).start().await.unwrap();
    let otlp = OtlpReceiver::start().await.unwrap();
    let db = Database::fresh(true).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let proxy_home = dir.path().join("proxy-home");
    let nonce = format!("{:x}", std::process::id() as u64 * 7919 + 104_729);
    // One distinct key per way it is sent, so a leak names its way.
    let key = |way: &str| format!("sk-fftest-{way}-{nonce}-Zq8");
    let ways = ["bearer", "xapikey", "azure", "goog", "query", "password"];
    let mut proxy = ProxyProcess::builder()
        .home(&proxy_home)
        .resolve(OPENAI, upstream.addr())
        .resolve(ANTHROPIC, upstream.addr())
        .resolve(GEMINI, upstream.addr())
        .resolve(AZURE, upstream.addr())
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .env("FLEETFORGE_ALLOWED_HOSTS", format!("{OPENAI},{ANTHROPIC},{GEMINI},{AZURE}"))
        .env("FLEETFORGE_LOG", "trace")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .unwrap();
    let clients = Clients::locate();
    let env = [
        ("HTTPS_PROXY", proxy.proxy_url("run-secrets", &key("password"))),
        ("CURL_CA_BUNDLE", proxy.bundle.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;
    let claude = r#"{"model":"claude-sonnet-4","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}"#;
    let gemini = r#"{"contents":[{"role":"user","parts":[{"text":"hello"}]}]}"#;
    let calls: Vec<(String, String, &str)> = vec![
        (format!("authorization: Bearer {}", key("bearer")), format!("https://{OPENAI}/v1/chat/completions"), chat),
        (format!("x-api-key: {}", key("xapikey")), format!("https://{ANTHROPIC}/v1/messages"), claude),
        (
            format!("api-key: {}", key("azure")),
            format!("https://{AZURE}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
            chat,
        ),
        (
            format!("x-goog-api-key: {}", key("goog")),
            format!("https://{GEMINI}/v1beta/models/gemini-2.0-flash:generateContent"),
            gemini,
        ),
        (
            "x-client: query".to_owned(),
            format!("https://{GEMINI}/v1beta/models/gemini-2.0-flash:generateContent?key={}", key("query")),
            gemini,
        ),
    ];
    for (header, url, body) in &calls {
        let args =
            ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/json", "-H", header];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--data-binary", body, url.as_str()]);
        let out = clients.curl(&args, &env).await.unwrap();
        assert_eq!(out.code, 0, "{url}: {}", out.stderr);
        assert!(out.stdout.starts_with('2') || out.stdout.starts_with('4'), "{url}: {}", out.stdout);
    }
    let receipts = control.receipts("run-secrets", calls.len()).unwrap();

    // Let the spans go out, then look everywhere.
    for _ in 0..50 {
        if otlp.spans().len() >= calls.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(otlp.spans().len() >= calls.len(), "spans exported: {}", otlp.spans().len());
    let proxy_metrics = proxy.admin_get("/metrics").unwrap().1;
    let control_metrics = fleetforge_e2e::harness::http_get(control.addr, "/metrics").unwrap().1;
    let manifest = control.api("GET", "/v1/runs/run-secrets/replay-manifest", &control.token, None).unwrap().1;
    proxy.terminate(std::time::Duration::from_secs(10)).unwrap();
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    files(&proxy_home, &mut places);
    assert!(places.iter().any(|(p, _)| p.contains("spool")), "the spool is searched");
    assert!(places.iter().any(|(p, _)| p.contains("seal")), "the seal store is searched");
    places.push(("receipts at control".into(), serde_json::to_vec(&receipts).unwrap()));
    places.push(("replay manifest".into(), manifest.to_string().into_bytes()));
    places.push(("proxy log".into(), proxy.logs().into_bytes()));
    places.push(("control log".into(), control.logs().into_bytes()));
    places.push(("proxy /metrics".into(), proxy_metrics.into_bytes()));
    places.push(("control /metrics".into(), control_metrics.into_bytes()));
    places.push((
        "exported spans".into(),
        format!("{:?}", otlp.exports().iter().map(|e| &e.request).collect::<Vec<_>>()).into_bytes(),
    ));
    let Database::Postgres(pg) = &db else { unreachable!() };
    let dump = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--data-only", &pg.name])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(contains(&dump.stdout, "run-secrets"), "the dump holds the run");
    places.push(("control database".into(), dump.stdout));

    // The searches can find what is there: the run id is in the log, the receipts and the spans.
    for place in ["proxy log", "receipts at control", "exported spans"] {
        let (_, bytes) = places.iter().find(|(p, _)| p == place).unwrap();
        assert!(contains(bytes, "run-secrets"), "{place} holds the run id");
    }
    // Sealed bodies are read decompressed: the prompt is there.
    assert!(
        places.iter().any(|(p, b)| p.ends_with("(decompressed)") && contains(b, "\"content\":\"hello\"")),
        "the sealed request bodies are searched: {:?}",
        places.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>()
    );
    // The query key's receipt is there, its key redacted.
    let (_, in_receipts) = places.iter().find(|(p, _)| p == "receipts at control").unwrap();
    assert!(contains(in_receipts, "generateContent"), "the Gemini calls have receipts");
    let mut leaks = Vec::new();
    for way in ways {
        for (place, bytes) in &places {
            if contains(bytes, &key(way)) {
                leaks.push(format!("the {way} key is in {place}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{leaks:#?}");
    assert!(places.len() > 10, "{} places searched", places.len());
}
