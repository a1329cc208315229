//! Starting the real FleetForge binaries and the real client programs.
//!
//! [`ProxyProcess`] runs `fleetforge-proxy` as a child process on ephemeral ports (it binds
//! `127.0.0.1:0` and the harness reads the bound ports from its JSON "ready" line), with a fresh
//! `FLEETFORGE_HOME` and a clean environment, and keeps its log for assertions. [`Clients`] runs
//! the Python and Node programs in `tests/clients/` (installed by `scripts/test-deps`) and curl.
//!
//! Children get a cleared environment: this machine exports CA and proxy variables globally, and a
//! test must only see what it sets.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the FleetForge binaries are: `$FLEETFORGE_BIN_DIR`, or the cargo target directory this
/// test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEETFORGE_BIN_DIR") {
        return dir.into();
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_owned()
}

fn newest_source(dir: &Path, binary: &str) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            // Unit-test files (`tests.rs`, `tests/`) are not part of a binary: cargo does not
            // relink it when they change.
            if path.file_name().is_some_and(|n| n == "tests" || n == "tests.rs") {
                continue;
            }
            // Another binary's main file (`src/bin/OTHER.rs`) is not part of this one either.
            if path.parent().is_some_and(|p| p.ends_with("src/bin"))
                && path.file_stem().is_some_and(|stem| stem != binary)
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(modified);
            }
        }
    }
    newest
}

/// The path of binary `name`, refusing a missing or stale one (older than the sources).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!("{} is missing: run `cargo build --workspace --bins` (scripts/test does)", path.display())
    });
    let root = workspace();
    let sources: &[&str] = match name {
        "fleetforge-proxy" => &["proxy/src", "trust/src"],
        "fleetforge-control" => &["control/src", "trust/src"],
        _ => &["control/src", "proxy/src", "trust/src"],
    };
    for crate_dir in sources {
        assert!(
            newest_source(&root.join(crate_dir), name) <= built,
            "{} is older than {crate_dir}: run `cargo build --workspace --bins` (scripts/test does)",
            path.display()
        );
    }
    path
}

fn base_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for var in ["PATH", "HOME", "LANG", "TMPDIR"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd
}

/// Builder for a [`ProxyProcess`].
#[derive(Debug, Default)]
pub struct ProxyBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    resolve: Vec<String>,
    home: Option<PathBuf>,
}

impl ProxyBuilder {
    /// Sets an environment variable for the proxy.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Pins `host` to `addr` (`FLEETFORGE_RESOLVE`).
    pub fn resolve(mut self, host: &str, addr: SocketAddr) -> Self {
        self.resolve.push(format!("{host}={addr}"));
        self
    }

    /// Trusts this CA for upstream TLS (`FLEETFORGE_UPSTREAM_CA`).
    pub fn upstream_ca(self, pem: &Path) -> Self {
        self.env("FLEETFORGE_UPSTREAM_CA", pem.display().to_string())
    }

    /// Adds a sidecar listener on an ephemeral port bound to `upstream_url`.
    pub fn sidecar(self, upstream_url: &str) -> Self {
        self.arg("--sidecar").arg(format!("127.0.0.1:0={upstream_url}"))
    }

    /// Uses this state directory instead of a fresh one (to restart on the same CA).
    pub fn home(mut self, home: &Path) -> Self {
        self.home = Some(home.to_owned());
        self
    }

    /// Starts the proxy and waits for its ready line.
    pub fn start(self) -> anyhow::Result<ProxyProcess> {
        let tmp = tempfile::tempdir()?;
        let home = self.home.clone().unwrap_or_else(|| tmp.path().join("home"));
        let log_path = tmp.path().join("proxy.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = base_command(&binary("fleetforge-proxy"));
        cmd.env("FLEETFORGE_HOME", &home)
            .env("FLEETFORGE_PROXY_LISTEN", "127.0.0.1:0")
            .env("FLEETFORGE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("FLEETFORGE_WORKERS", "2")
            .env("FLEETFORGE_LOG", "debug");
        if !self.resolve.is_empty() {
            cmd.env("FLEETFORGE_RESOLVE", self.resolve.join(","));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(&self.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().context("spawning fleetforge-proxy")?;
        let stdout = child.stdout.take().context("proxy stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if !line.trim().is_empty() => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "fleetforge-proxy printed no ready line; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        let ready: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
        let addr = |v: &serde_json::Value| -> anyhow::Result<SocketAddr> {
            v.as_str().context("address is a string")?.parse().context("address parses")
        };
        let sidecars =
            ready["sidecars"].as_array().context("sidecars")?.iter().map(addr).collect::<Result<Vec<_>, _>>()?;
        Ok(ProxyProcess {
            forward: addr(&ready["forward"])?,
            admin: addr(&ready["admin"])?,
            sidecars,
            ca_pem: ready["ca"].as_str().context("ca path")?.into(),
            bundle: ready["bundle"].as_str().context("bundle path")?.into(),
            home,
            log_path,
            child: Some(child),
            _tmp: tmp,
        })
    }
}

/// A running `fleetforge-proxy`; killed when dropped.
#[derive(Debug)]
pub struct ProxyProcess {
    /// Forward-proxy address.
    pub forward: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Sidecar addresses.
    pub sidecars: Vec<SocketAddr>,
    /// The interception CA certificate.
    pub ca_pem: PathBuf,
    /// System roots + the interception CA.
    pub bundle: PathBuf,
    /// `FLEETFORGE_HOME`.
    pub home: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl ProxyProcess {
    /// A builder with the test defaults (ephemeral ports, fresh home, debug logs).
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// `http://RUN:TOKEN@forward` — what an agent puts in `HTTPS_PROXY`.
    pub fn proxy_url(&self, run: &str, token: &str) -> String {
        format!("http://{run}:{token}@{}", self.forward)
    }

    /// Everything the proxy has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET a path on the admin listener; returns (status, body).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin, path)
    }

    /// The value of one Prometheus sample line, e.g. `fleetforge_connect_total{mode="tunnelled"}`.
    pub fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let (_, text) = self.admin_get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok()))
            .with_context(|| format!("no sample {sample} in metrics:\n{text}"))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("proxy did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process and waits for it (like `kill -9`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a child's first stdout line (its JSON ready line) within 30 s.
fn ready_line(child: &mut Child, log_path: &Path, what: &str) -> anyhow::Result<serde_json::Value> {
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if !line.trim().is_empty() => {
            serde_json::from_str(&line).with_context(|| format!("{what} ready line {line:?}"))
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} printed no ready line; log:\n{}", std::fs::read_to_string(log_path).unwrap_or_default());
        }
    }
}

/// Which database a control service runs on.
#[derive(Debug)]
pub enum Database {
    /// The embedded default: SQLite under `FLEETFORGE_HOME`.
    Sqlite,
    /// A fresh Postgres database on 127.0.0.1:5432, dropped when this value is dropped.
    Postgres(PgDatabase),
}

impl Database {
    /// A fresh Postgres database, or the SQLite default.
    pub fn fresh(postgres: bool) -> anyhow::Result<Self> {
        Ok(if postgres { Database::Postgres(PgDatabase::create()?) } else { Database::Sqlite })
    }

    /// Runs SQL against the database (Postgres via `psql`, SQLite via Python's sqlite3), for
    /// tests that must reach under the API (tampering, dumps).
    pub fn execute(&self, home: &Path, sql: &str) -> anyhow::Result<String> {
        let out = match self {
            Database::Postgres(db) => Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db.name, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .output()?,
            Database::Sqlite => Command::new("python3")
                .args([
                    "-c",
                    "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.argv[2]):\n  print('|'.join(str(x) for x in r))\nc.commit()",
                    &home.join("control.db").display().to_string(),
                    sql,
                ])
                .output()?,
        };
        anyhow::ensure!(out.status.success(), "SQL failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A throwaway Postgres database.
#[derive(Debug)]
pub struct PgDatabase {
    /// Database name.
    pub name: String,
}

impl PgDatabase {
    fn psql(sql: &str) -> anyhow::Result<()> {
        let out = Command::new("psql").args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql]).output().context(
            "running psql (Postgres must run on 127.0.0.1:5432: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)",
        )?;
        anyhow::ensure!(
            out.status.success(),
            "psql {sql}: {} (Postgres must run on 127.0.0.1:5432: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Creates `ff_e2e_<random>`.
    pub fn create() -> anyhow::Result<Self> {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("ff_e2e_{}_{}", std::process::id(), nanos % 1_000_000_000_000);
        Self::psql(&format!("CREATE DATABASE {name}"))?;
        Ok(Self { name })
    }

    /// The connection URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Self::psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Creates a bearer token with `role` in `tenant` by running `fleetforge-control token create`
/// against `db` with `FLEETFORGE_HOME=home`.
pub fn create_token(db: &Database, home: &Path, role: &str, tenant: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new(binary("fleetforge-control"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEETFORGE_HOME", home)
        .args(["token", "create", "--role", role, "--tenant", tenant]);
    if let Database::Postgres(pg) = db {
        cmd.env("DATABASE_URL", pg.url());
    }
    let out = cmd.output().context("running fleetforge-control token create")?;
    anyhow::ensure!(out.status.success(), "token create failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A running `fleetforge-control`; killed when dropped.
#[derive(Debug)]
pub struct ControlProcess {
    /// Its API address.
    pub addr: SocketAddr,
    /// Its `FLEETFORGE_HOME`.
    pub home: PathBuf,
    /// The bootstrap admin token it accepts.
    pub token: String,
    log_path: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl ControlProcess {
    /// Starts control on `db` (a fresh home) with a bootstrap admin token, on an ephemeral port
    /// or on `listen` (to restart on the same address).
    pub fn start(db: &Database, home: &Path, listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        Self::start_with_env(db, home, listen, &[])
    }

    /// [`Self::start`] with extra environment variables.
    pub fn start_with_env(
        db: &Database,
        home: &Path,
        listen: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let log_path = tmp.path().join("control.log");
        let token = "fft_e2e-bootstrap-admin-token".to_owned();
        let mut cmd = base_command(&binary("fleetforge-control"));
        cmd.env("FLEETFORGE_HOME", home)
            .env("FLEETFORGE_CONTROL_LISTEN", listen.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string()))
            .env("FLEETFORGE_CONTROL_TOKEN", &token)
            .env("FLEETFORGE_LOG", "debug");
        cmd.envs(env.iter().copied());
        if let Database::Postgres(pg) = db {
            cmd.env("DATABASE_URL", pg.url());
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&log_path)?);
        let mut child = cmd.spawn().context("spawning fleetforge-control")?;
        let ready = ready_line(&mut child, &log_path, "fleetforge-control")?;
        let addr = ready["listen"].as_str().context("listen address")?.parse()?;
        Ok(Self { addr, home: home.to_owned(), token, log_path, child: Some(child), _tmp: tmp })
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything control has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A blocking API request with a bearer token; returns (status, JSON body or null).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.unwrap_or("");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, rest) = raw.split_once("\r\n\r\n").context("no header end")?;
        let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let text = if chunked { dechunk(rest) } else { rest.to_owned() };
        let json = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("body {text}"))?
        };
        Ok((status, json))
    }

    /// Runs `fleetforge-ctl ARGS` against this control with `FLEETFORGE_HOME=home`.
    pub async fn ctl(&self, home: &Path, args: &[&str]) -> anyhow::Result<ClientOutput> {
        let home = home.display().to_string();
        let url = self.url();
        let env = [
            ("FLEETFORGE_HOME", home.as_str()),
            ("FLEETFORGE_CONTROL_URL", &url),
            ("FLEETFORGE_CONTROL_TOKEN", &self.token),
        ];
        run_program(&binary("fleetforge-ctl"), args, &env).await
    }

    /// Polls control (for up to 20 s) until `run` has at least `n` receipts; returns them in
    /// chain order.
    pub fn receipts(&self, run: &str, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = self.api("GET", &format!("/v1/runs/{run}/receipts?limit=1000"), &self.token, None)?;
            let got = body["receipts"].as_array().cloned().unwrap_or_default();
            if got.len() >= n {
                return Ok(got);
            }
            if std::time::Instant::now() >= deadline {
                bail!("control has {} of {n} receipts for run {run}", got.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal blocking HTTP/1.1 GET (for admin endpoints); returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no header end")?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok((status, body.to_owned()))
}

/// Output of a client program.
#[derive(Debug)]
pub struct ClientOutput {
    /// Exit status code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ClientOutput {
    /// Fails with the client's stderr unless it exited 0.
    pub fn ok(self) -> anyhow::Result<Self> {
        anyhow::ensure!(self.code == 0, "client exited {}: {}\nstdout: {}", self.code, self.stderr, self.stdout);
        Ok(self)
    }

    /// Parses stdout as one JSON document.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("client stdout is not JSON: {}", self.stdout))
    }

    /// Parses stdout as JSON lines.
    pub fn json_lines(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }
}

/// The real client programs: Python (openai, anthropic, httpx, requests), Node (undici), curl.
#[derive(Debug, Clone)]
pub struct Clients {
    python: PathBuf,
    node_modules: PathBuf,
    scripts: PathBuf,
}

impl Clients {
    /// Finds the installed client dependencies (`scripts/test-deps`); panics with the fix if they
    /// are missing, so CI never skips these tests silently.
    pub fn locate() -> Self {
        let deps =
            std::env::var_os("FLEETFORGE_TEST_DEPS").map_or_else(|| workspace().join(".test-deps"), PathBuf::from);
        let python = deps.join("venv/bin/python");
        let node_modules = deps.join("node/node_modules");
        assert!(
            python.exists() && node_modules.join("undici").exists(),
            "client dependencies missing under {}: run scripts/test-deps (scripts/test does)",
            deps.display()
        );
        Self { python, node_modules, scripts: workspace().join("tests/clients") }
    }

    /// The virtualenv's Python interpreter (for long-running example servers).
    pub fn python_bin(&self) -> &Path {
        &self.python
    }

    /// Runs `tests/clients/<script>` with Python.
    pub async fn python(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ClientOutput> {
        let mut cmd = base_command(&self.python);
        cmd.arg(self.scripts.join(script)).args(args);
        run(cmd, env).await
    }

    /// Runs `tests/clients/<script>` with Node and undici on `NODE_PATH`.
    pub async fn node(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ClientOutput> {
        let mut cmd = base_command(Path::new("node"));
        cmd.env("NODE_PATH", &self.node_modules).arg(self.scripts.join(script)).args(args);
        run(cmd, env).await
    }

    /// Runs curl (always with `--silent --show-error`).
    pub async fn curl(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ClientOutput> {
        let mut cmd = base_command(Path::new("curl"));
        cmd.args(["--silent", "--show-error", "--max-time", "60"]).args(args);
        run(cmd, env).await
    }
}

/// Runs `program` with `args` in a clean environment plus `env` (at most 120 s).
pub async fn run_program(program: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ClientOutput> {
    let mut cmd = base_command(program);
    cmd.args(args);
    run(cmd, env).await
}

async fn run(cmd: Command, env: &[(&str, &str)]) -> anyhow::Result<ClientOutput> {
    let mut cmd = tokio::process::Command::from(cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("client timed out after 120 s")??;
    Ok(ClientOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
