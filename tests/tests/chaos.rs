//! Chaos under load: the proxy killed with `kill -9`, control killed and restarted, the Postgres
//! server restarted, the spool's disk filled — each while 16 clients (`tests/clients/load.py`,
//! real httpx) keep calling through the proxy. What must hold every time: each call whose
//! response a client read to the end has its receipt at control afterwards, and the run's chain
//! verifies. These tests take turns (one restarts the Postgres server the others use).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fleetforge_e2e::harness::{ControlProcess, Database};
use fleetforge_e2e::{Clients, ProxyProcess, Upstream};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Calls in flight and their outcome lines, from `tests/clients/load.py`.
struct Load {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Receipt ids of the calls that completed with 200.
    completed: HashSet<String>,
    errors: usize,
    refused: Vec<String>,
}

impl Load {
    fn start(proxy: &ProxyProcess, run: &str, count: usize) -> Load {
        let clients = Clients::locate();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/load.py");
        let mut child = tokio::process::Command::new(clients.python_bin())
            .arg(script)
            .args(["--concurrency", "16", "--count", &count.to_string(), "--timeout", "10"])
            .arg("http://plain.internal.test/v1/chat/completions")
            .env("HTTP_PROXY", proxy.proxy_url(run, "tok"))
            .env("NO_PROXY", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Load { child, lines, completed: HashSet::new(), errors: 0, refused: Vec::new() }
    }

    fn take(&mut self, line: &str) {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("200"), Some(receipt)) if receipt != "-" => {
                self.completed.insert(receipt.to_owned());
            }
            (Some("error"), _) => self.errors += 1,
            _ => self.refused.push(line.to_owned()),
        }
    }

    /// Waits until `n` calls completed (or 60 s).
    async fn until_completed(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.completed.len() < n {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.take(&line),
                _ => panic!("only {} calls completed of the {n} awaited", self.completed.len()),
            }
        }
    }

    /// Waits for the load to end and reads the rest of its lines.
    async fn finish(mut self) -> Load {
        tokio::time::timeout(Duration::from_secs(180), self.child.wait()).await.expect("the load never ended").unwrap();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await {
            self.take(&line);
        }
        self
    }
}

struct Stack {
    dir: tempfile::TempDir,
    upstream: Upstream,
    db: Database,
    control: ControlProcess,
}

impl Stack {
    async fn new() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Upstream::builder().plain().start().await.unwrap();
        let db = Database::fresh(true).unwrap();
        let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
        Stack { dir, upstream, db, control }
    }

    fn proxy_home(&self) -> PathBuf {
        self.dir.path().join("proxy-home")
    }

    fn proxy(&self, extra_config: &str) -> ProxyProcess {
        let config = self.dir.path().join("proxy.toml");
        std::fs::write(&config, extra_config).unwrap();
        ProxyProcess::builder()
            .home(&self.proxy_home())
            .resolve("plain.internal.test", self.upstream.addr())
            .env("FLEETFORGE_CONTROL_URL", self.control.url())
            .env("FLEETFORGE_CONTROL_TOKEN", self.control.token.clone())
            // Runs are named freely here; run tokens are tested in capabilities.rs.
            .env("FLEETFORGE_CAPABILITIES", "false")
            .env("FLEETFORGE_LOG", "info")
            .arg("--config")
            .arg(config.display().to_string())
            .start()
            .unwrap()
    }

    /// Every receipt id control holds for `run`.
    fn receipt_ids(&self, run: &str) -> HashSet<String> {
        let mut ids = HashSet::new();
        let mut after = 0;
        loop {
            let path = format!("/v1/runs/{run}/receipts?limit=1000&after={after}");
            let (status, body) = self.control.api("GET", &path, &self.control.token, None).unwrap();
            if status == 404 {
                return ids;
            }
            assert_eq!(status, 200, "{path}: {body}");
            for r in body["receipts"].as_array().unwrap() {
                ids.insert(r["id"].as_str().unwrap().to_owned());
            }
            match body["next_after"].as_i64() {
                Some(next) => after = next,
                None => return ids,
            }
        }
    }

    /// Waits until control holds every id in `completed` for `run`; then the run must verify.
    fn all_arrive(&self, run: &str, completed: &HashSet<String>) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held = self.receipt_ids(run);
            let missing: Vec<_> = completed.difference(&held).collect();
            if missing.is_empty() {
                let (status, verify) =
                    self.control.api("GET", &format!("/v1/runs/{run}/verify"), &self.control.token, None).unwrap();
                assert_eq!(status, 200, "{verify}");
                assert_eq!(verify["ok"], true, "the run's chain does not verify: {verify}");
                return held.len();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} completed calls have no receipt at control, e.g. {:?}",
                missing.len(),
                completed.len(),
                &missing[..missing.len().min(3)]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `kill -9` of the proxy while 16 clients call through it; a new proxy on the same home
/// recovers the spool, and the load goes on against it.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_proxy_under_load_loses_no_receipt() {
    let _turn = TURNS.lock().await;
    let s = Stack::new().await;
    let mut proxy = s.proxy("");
    let addr = proxy.forward;
    let mut load = Load::start(&proxy, "run-chaos-k9", 1_500);
    load.until_completed(300).await;
    proxy.kill();
    // Clients fail while it is down; a new process takes the same port and home.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = s.dir.path().join("proxy.toml");
    let _proxy = ProxyProcess::builder()
        .home(&s.proxy_home())
        .env("FLEETFORGE_PROXY_LISTEN", addr.to_string())
        .resolve("plain.internal.test", s.upstream.addr())
        .env("FLEETFORGE_CONTROL_URL", s.control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", s.control.token.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .arg("--config")
        .arg(config.display().to_string())
        .start()
        .unwrap();
    let load = load.finish().await;
    assert!(load.errors > 0, "the kill interrupted no call: it came too late");
    assert!(load.completed.len() > 400, "only {} calls completed", load.completed.len());
    assert!(load.refused.is_empty(), "refused calls: {:?}", &load.refused[..load.refused.len().min(3)]);
    let held = s.all_arrive("run-chaos-k9", &load.completed);
    println!(
        "kill -9: {} calls completed, {} interrupted, {held} receipts at control",
        load.completed.len(),
        load.errors
    );
}

/// Control killed while the proxy ships receipts under load, and started again on the same
/// address and database 2 s later: the proxy spools and retries.
#[tokio::test(flavor = "multi_thread")]
async fn control_killed_and_restarted_under_load_loses_no_receipt() {
    let _turn = TURNS.lock().await;
    let mut s = Stack::new().await;
    let proxy = s.proxy("");
    let mut load = Load::start(&proxy, "run-chaos-control", 1_500);
    load.until_completed(300).await;
    let addr = s.control.addr;
    s.control.kill();
    load.until_completed(600).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.control = ControlProcess::start(&s.db, &s.dir.path().join("control-home"), Some(addr)).unwrap();
    let load = load.finish().await;
    assert_eq!(load.errors, 0, "calls failed while control was down");
    assert!(load.refused.is_empty(), "refused calls: {:?}", &load.refused[..load.refused.len().min(3)]);
    assert!(proxy.metric("fleetforge_ship_failures_total").unwrap() >= 1.0, "the outage was not noticed");
    let held = s.all_arrive("run-chaos-control", &load.completed);
    assert_eq!(held, 1_500, "control holds {held} receipts of 1,500 calls");
}

/// The Postgres server restarted (`pg_ctlcluster … restart`) while receipts are ingested:
/// control's connections break, ingest fails, the proxy retries, nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_mid_ingest_loses_no_receipt() {
    let _turn = TURNS.lock().await;
    let s = Stack::new().await;
    let proxy = s.proxy("");
    let mut load = Load::start(&proxy, "run-chaos-pg", 1_500);
    load.until_completed(300).await;
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("this test restarts the local Postgres server with pg_ctlcluster (Debian's postgresql-common)")
        .flatten()
        .next()
        .expect("a cluster under /etc/postgresql")
        .file_name();
    let restart = tokio::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version.to_string_lossy(), "main", "restart", "-m", "fast"])
        .status()
        .await
        .unwrap();
    assert!(restart.success(), "pg_ctlcluster restart failed");
    let load = load.finish().await;
    assert_eq!(load.errors, 0, "calls failed while Postgres restarted");
    assert!(load.refused.is_empty(), "refused calls: {:?}", &load.refused[..load.refused.len().min(3)]);
    let held = s.all_arrive("run-chaos-pg", &load.completed);
    assert_eq!(held, 1_500, "control holds {held} receipts of 1,500 calls");
    drop(proxy);
}

/// A tmpfs of `size` mounted at `at` for as long as the guard lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs as the spool's disk and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The spool's disk filled up under load (a 8 MiB tmpfs, `min_free_disk = "2MiB"`): the proxy
/// refuses calls with `503 spool_full` naming the disk, serves again once space is freed, and
/// every call it served has its receipt at control.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_disk_fails_closed_and_recovers() {
    let _turn = TURNS.lock().await;
    let s = Stack::new().await;
    let spool = s.proxy_home().join("spool");
    let _disk = Tmpfs::mount(&spool, "8m");
    let proxy = s.proxy("[proxy.receipts]\nmin_free_disk = \"2MiB\"\n");
    let mut load = Load::start(&proxy, "run-chaos-disk", 100_000);
    load.until_completed(100).await;
    // Fill the disk to 1 MiB free: under min_free_disk, so calls are refused, with room left
    // for the receipts of the calls already in flight (what min_free_disk is for).
    let filler = spool.join("filler");
    let free = std::process::Command::new("stat").args(["-f", "-c", "%a %S"]).arg(&spool).output().unwrap();
    let free = String::from_utf8(free.stdout).unwrap();
    let (blocks, size) = free.trim().split_once(' ').unwrap();
    let free_kib = blocks.parse::<u64>().unwrap() * size.parse::<u64>().unwrap() / 1024;
    let filled = tokio::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1K", &format!("count={}", free_kib - 1024)])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(filled.success(), "dd could not write the filler");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while load.refused.len() < 50 {
        match tokio::time::timeout_at(deadline, load.lines.recv()).await {
            Ok(Some(line)) => load.take(&line),
            _ => panic!("the proxy went on serving with its spool's disk full"),
        }
    }
    assert!(load.refused.iter().all(|l| l.starts_with("503 ")), "refusals are 503: {:?}", &load.refused[..3]);
    // The refusal says why, and what to do.
    let out = Clients::locate()
        .curl(
            &["-s", "-d", "{}", "http://plain.internal.test/v1/chat/completions"],
            &[("http_proxy", &proxy.proxy_url("run-chaos-disk", "tok"))],
        )
        .await
        .unwrap();
    let error: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(error["error"]["type"], "spool_full", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("min_free_disk") && message.contains("free disk space"), "{message}");
    assert!(proxy.logs().contains("almost full"), "the proxy logs why it refuses calls");
    let served_before = load.completed.len();
    std::fs::remove_file(&filler).unwrap();
    load.until_completed(served_before + 100).await;
    load.child.kill().await.unwrap();
    let load = load.finish().await;
    let held = s.all_arrive("run-chaos-disk", &load.completed);
    println!(
        "disk full: {} calls served, {} refused with 503, {held} receipts at control",
        load.completed.len(),
        load.refused.len()
    );
}
