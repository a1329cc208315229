//! Configuration of `fleetforge-proxy`: one typed [`Config`], validated before any port is bound.
//!
//! Values come from, in order of precedence: command-line flags, `FLEETFORGE_*` environment
//! variables, the TOML file given with `--config`, and built-in defaults. The file is parsed with
//! `deny_unknown_fields`, so a typo is an error rather than a silently ignored setting. Every
//! value is then validated into a typed field; an error names the key path, the bad value and
//! where it came from (flag, variable or file), and the binary exits 64.
//!
//! Secure by default: private destinations are denied, TLS to upstreams is always verified, and
//! listeners bind to loopback unless told otherwise.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetforge_trust::RunId;
use serde::Deserialize;

/// A secret from the environment; `Debug` never shows it (shared with control and the CLI).
pub use fleetforge_trust::Secret;

use crate::pattern::{PatternSet, normalize_host};

/// How long receipts gather before a batch is signed and synced. Each sync is a disk flush whose
/// cost reaches every process on the host (measured: 5 ms cost about 10 µs more CPU per call than
/// 25 ms under load, in the proxy and the upstream alike); a power cut loses at most this window.
pub const DEFAULT_SEAL_INTERVAL: Duration = Duration::from_millis(25);

/// The hosts whose TLS is intercepted when `FLEETFORGE_INTERCEPT` is not set: the public APIs of
/// the major LLM providers.
pub const DEFAULT_INTERCEPT: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.together.xyz",
    "api.together.ai",
    "openrouter.ai",
    "api.cohere.com",
    "api.cohere.ai",
    "*.openai.azure.com",
];

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// The TOML config file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "from flag {flag}"),
            Origin::Env(var) => write!(f, "from environment variable {var}"),
            Origin::File(path) => write!(f, "in {}", path.display()),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// A configuration error: which key, which value, where it came from, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error text.
        reason: String,
    },
    /// The config file is not valid TOML for this binary (syntax, unknown key or wrong type).
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        reason: String,
    },
    /// One value is invalid.
    #[error("invalid value for `{key}` ({origin}): {value:?}: {reason}")]
    Value {
        /// Key path, e.g. `egress.resolve` or `sidecar[0].upstream`.
        key: String,
        /// The offending value as given.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// An OpenTelemetry variable is invalid (the message names it).
    #[error(transparent)]
    Telemetry(#[from] fleetforge_otel::ConfigError),
}

/// A sidecar listener: plain HTTP in, bound to one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    /// Where the sidecar listens.
    pub listen: SocketAddr,
    /// The one upstream every request is sent to.
    pub upstream: UpstreamBase,
    /// Run to charge calls to when the request names none.
    pub default_run: Option<RunId>,
    /// Seal the calls on this listener (`[[sidecar]] seal`, default true).
    pub seal: bool,
}

/// The scheme, authority and optional path prefix of a sidecar's upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and (maybe) port as written.
    pub authority: http::uri::Authority,
    /// Normalized host name.
    pub host: String,
    /// Port (explicit or the scheme's default).
    pub port: u16,
    /// Path prefix prepended to every request path ("" or "/something", no trailing slash).
    pub base_path: String,
}

/// Ports a destination may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSet {
    /// Any port.
    Any,
    /// Only these.
    Only(Vec<u16>),
}

impl PortSet {
    /// Whether `port` is allowed.
    pub fn allows(&self, port: u16) -> bool {
        match self {
            PortSet::Any => true,
            PortSet::Only(ports) => ports.contains(&port),
        }
    }
}

/// The validated configuration of one proxy process.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory: CA, keys, spool, seals.
    pub home: PathBuf,
    /// Forward-proxy listener (`HTTP_PROXY` / `HTTPS_PROXY`).
    pub listen: SocketAddr,
    /// Admin listener: health, metrics, CA certificate.
    pub admin_listen: SocketAddr,
    /// Worker threads (each with its own listeners and upstream pool).
    pub workers: NonZeroUsize,
    /// Offer HTTP/2 to upstreams (ALPN); off = HTTP/1.1 with a keep-alive pool, like nginx.
    pub upstream_http2: bool,
    /// Sidecar listeners.
    pub sidecars: Vec<SidecarConfig>,
    /// Hosts whose TLS is terminated and inspected after `CONNECT`.
    pub intercept: PatternSet,
    /// Extra PEM bundle trusted for upstream TLS, on top of the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// Egress allow-list of hosts.
    pub allowed_hosts: PatternSet,
    /// Egress allow-list of ports (hosts pinned in `resolve` may use any port).
    pub allowed_ports: PortSet,
    /// Model allow-list for LLM calls.
    pub allowed_models: PatternSet,
    /// Whether destinations resolving to loopback, private or link-local addresses are allowed.
    pub allow_private: bool,
    /// Static name overrides: connections to the host go to the address.
    pub resolve: HashMap<String, SocketAddr>,
    /// Request body limit in bytes.
    pub max_body: u64,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Duration,
    /// Upper bound on the time from sending a request upstream to its response headers.
    pub response_timeout: Duration,
    /// How long a client may take to send request headers (and the first bytes after CONNECT).
    pub header_timeout: Duration,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// The longest an upstream response body may go without a byte before the call is cut as
    /// aborted.
    pub stream_idle_timeout: Duration,
    /// How long shutdown waits for calls in flight.
    pub drain_timeout: Duration,
    /// Most client connections open at once on the forward and sidecar listeners; past it, new
    /// ones get `503 overloaded` and are closed.
    pub max_connections: usize,
    /// Most calls of one run in flight at once on this proxy; past it, a call gets `429
    /// run_concurrency_exceeded` (with a receipt).
    pub max_calls_per_run: u64,
    /// Run to charge calls to when a call names none and its listener has no default.
    pub default_run: Option<RunId>,
    /// Run token presented for calls that fall to a default run (`FLEETFORGE_DEFAULT_TOKEN`; env
    /// only, never a file): a sidecar bound to one run whose agent cannot send headers.
    pub default_token: Option<Secret>,
    /// Reject calls that carry no run credentials with 407.
    pub require_credentials: bool,
    /// Ask OpenAI streams for their usage (`stream_options.include_usage`) when the client did not,
    /// and remove it from what the client receives (`FLEETFORGE_INJECT_STREAM_USAGE`).
    pub inject_stream_usage: bool,
    /// The price list (`FLEETFORGE_PRICES`; `None`: the built-in `configs/prices.toml`).
    pub prices: Option<PathBuf>,
    /// Receipts: recording, spool and signing.
    pub receipts: ReceiptsConfig,
    /// Where the control service is (`FLEETFORGE_CONTROL_URL`).
    pub control_url: http::Uri,
    /// Bearer token for the control service (`FLEETFORGE_CONTROL_TOKEN`; env only, never a file).
    pub control_token: Option<Secret>,
    /// Capability tokens: whether calls need one, and which upstreams are tools.
    pub capabilities: CapabilitiesConfig,
    /// Policy packs.
    pub policy: PolicyConfig,
    /// Budget enforcement and default budgets.
    pub budget: BudgetConfig,
    /// Sealing request and response bodies for replay.
    pub seal: SealConfig,
    /// Replay mode (`FLEETFORGE_REPLAY`): serve a recorded run's sealed responses.
    pub replay: Option<ReplayConfig>,
    /// Datasets whose SHA-256 digests are recorded on every run this proxy serves.
    pub datasets: Vec<Dataset>,
    /// OpenTelemetry export from the standard `OTEL_*` variables (`None`: no endpoint set, so no
    /// span is built; a caller's `traceparent` is still passed on and named in the receipt).
    pub telemetry: Option<fleetforge_otel::ExportConfig>,
}

/// Sealing (`[proxy.seal]`): request and response bodies kept content-addressed under
/// `$FLEETFORGE_HOME/seals/` and shipped to control, so a run can be replayed ([`crate::seal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealConfig {
    /// Seal calls at all (`FLEETFORGE_SEAL`, default true; needs receipts on).
    pub enabled: bool,
    /// Seal the calls on the forward listener (`proxy.seal.forward`, default true; sidecars have
    /// their own `seal`).
    pub forward: bool,
    /// JSON pointers of request members replaced by `"[redacted]"` before a body is sealed.
    pub redact: Vec<String>,
    /// What the replay key includes: headers, and body members left out.
    pub key: fleetforge_trust::key::KeyRules,
    /// Bodies larger than this (request or response) are not sealed (default 32 MiB).
    pub max_body: u64,
}

impl Default for SealConfig {
    /// Sealing on everywhere, nothing redacted, the default key, bodies up to 32 MiB.
    fn default() -> Self {
        Self {
            enabled: true,
            forward: true,
            redact: Vec::new(),
            key: fleetforge_trust::key::KeyRules::default(),
            max_body: 32 << 20,
        }
    }
}

/// Replay mode: which run, how strictly, at what pace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayConfig {
    /// The recorded run.
    pub run: RunId,
    /// Strict: a request with no sealed response is refused with 599 `replay_miss`, and nothing
    /// is ever sent upstream; otherwise a miss is forwarded and recorded.
    pub strict: bool,
    /// Re-emit stream chunks at their recorded offsets (`FLEETFORGE_REPLAY_TIMING=recorded`)
    /// rather than as fast as the client reads (`fast`, the default).
    pub recorded_timing: bool,
    /// Where to look for sealed bodies before asking control (default `$FLEETFORGE_HOME/seals`).
    pub local_seals: Option<PathBuf>,
}

/// A dataset the agent's run depends on (`[[dataset]] name, path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Its name.
    pub name: String,
    /// The file.
    pub path: PathBuf,
}

/// Budgets (`[proxy.budget]`): how the meter phase enforces a run's budget, and the budgets of
/// runs whose token sets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Set a request's output limit to what remains of its run's budget when the request has
    /// none or a larger one (`FLEETFORGE_BUDGET_CAP_OUTPUT`, default true).
    pub cap_output: bool,
    /// How long a call over its run's rate SLO may wait in the run's queue before it is refused
    /// with 429 (`proxy.budget.max_wait`, `FLEETFORGE_BUDGET_MAX_WAIT`, default 30 s).
    pub max_wait: Duration,
    /// Every run's budget, member by member where neither its token nor its agent's or tenant's
    /// default sets one.
    pub default: crate::budget::Limits,
    /// Default budgets of runs by agent (the run token's agent).
    pub agents: HashMap<String, crate::budget::Limits>,
    /// Default budgets of runs by tenant (the run token's tenant).
    pub tenants: HashMap<String, crate::budget::Limits>,
    /// Lease the budgets run tokens carry from control, so a fleet of proxies shares each run's
    /// budget ([`crate::lease`]; `proxy.budget.lease`, `FLEETFORGE_BUDGET_LEASE`, default on when
    /// `FLEETFORGE_CONTROL_TOKEN` is set).
    pub lease: bool,
    /// A run's budget is leased in slices of `1 / lease_slices` of it (default 16).
    pub lease_slices: u64,
    /// What a run holds beyond its commitment goes back to control after it has had no call in
    /// flight for this long (`FLEETFORGE_BUDGET_LEASE_IDLE`, default 5 s).
    pub lease_idle: Duration,
    /// When control cannot be reached for a lease: admit against the run's whole budget on this
    /// proxy alone, with a WARN and a receipt flag (`on_control_unreachable = "fail_open"`), or
    /// spend only what is held and then refuse (`"fail_closed"`, the default).
    pub lease_fail_open: bool,
}

impl BudgetConfig {
    /// Whether any default budget is set.
    pub fn has_defaults(&self) -> bool {
        !self.default.is_unlimited() || !self.agents.is_empty() || !self.tenants.is_empty()
    }

    /// The default budget of a run of `agent` in `tenant`.
    pub fn defaults_for(&self, agent: Option<&str>, tenant: Option<&str>) -> crate::budget::Limits {
        let none = crate::budget::Limits::default();
        let agent = agent.and_then(|a| self.agents.get(a)).unwrap_or(&none);
        let tenant = tenant.and_then(|t| self.tenants.get(t)).unwrap_or(&none);
        agent.or(tenant).or(&self.default)
    }
}

/// Policy pack settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Pack paths, in evaluation order.
    pub packs: Vec<PathBuf>,
    /// How often pack files are checked for changes (zero: only on SIGHUP).
    pub reload_interval: Duration,
    /// Bounds on each Wasm evaluation.
    pub limits: crate::policy::Limits,
}

/// Capability tokens (Biscuit run tokens from control).
#[derive(Debug, Clone)]
pub struct CapabilitiesConfig {
    /// Every call must present a valid run token that allows it (`FLEETFORGE_CAPABILITIES`).
    /// Defaults to on whenever control is known (`FLEETFORGE_CONTROL_TOKEN` is set): control holds
    /// the root keys tokens are checked with.
    pub required: bool,
    /// Whether `required` was given (environment or file) rather than defaulted: turning checks
    /// off while control is known is an explicit choice, logged at WARN at start.
    pub explicit: bool,
    /// Lifetime of the per-call token handed to tools.
    pub call_ttl: Duration,
    /// Upstreams that are tools: they receive the per-call token in `x-fleetforge-capability`.
    pub tool_hosts: PatternSet,
}

/// How receipts are recorded and spooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptsConfig {
    /// Record a receipt for every call (off only for benchmarks of the bare proxy).
    pub enabled: bool,
    /// Spool size at which new calls are refused (or, with `fail_open`, go unrecorded).
    pub spool_max_bytes: u64,
    /// Size at which the active spool segment is closed and a new one started.
    pub segment_bytes: u64,
    /// How long the sealer gathers receipts before signing a batch.
    pub seal_interval: Duration,
    /// When the spool is full: `false` refuses calls (503), `true` forwards them unrecorded.
    pub fail_open: bool,
    /// `fdatasync` the spool after every sealed batch (group commit).
    pub fsync: bool,
    /// Free disk space under the spool below which the spool counts as full: the receipts of
    /// the calls already in flight still fit.
    pub min_free_disk: u64,
}

/// The TOML file, as written: shared keys at the top, one table per binary. Every FleetForge
/// binary reads the same file (so `fleetforge-ctl up` needs one), each validating its own table;
/// see `configs/` for examples.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// State directory (`FLEETFORGE_HOME`, default `./.fleetforge`).
    pub home: Option<PathBuf>,
    /// `[proxy]`: this binary's settings.
    pub proxy: FileConfig,
    /// Top-level `[[sidecar]]` tables (the contract's spelling; `[[proxy.sidecar]]` is the same).
    pub sidecar: Vec<FileSidecar>,
    /// `[control]`: the control service's settings (validated by `fleetforge-control`).
    pub control: Option<toml::Table>,
    /// Top-level `[[dataset]]` tables (`[[proxy.dataset]]` is the same).
    pub dataset: Vec<FileDataset>,
}

/// `[proxy]`. Every key is optional; see [`Config`] for the meaning of each.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Forward-proxy listener (`FLEETFORGE_PROXY_LISTEN`, default `127.0.0.1:8080`).
    pub listen: Option<String>,
    /// Admin listener (`FLEETFORGE_ADMIN_LISTEN`, default `127.0.0.1:9901`).
    pub admin_listen: Option<String>,
    /// Worker threads (`FLEETFORGE_WORKERS`, default: one per CPU).
    pub workers: Option<usize>,
    /// Upstream connection settings.
    pub upstream: FileUpstream,
    /// TLS settings.
    pub tls: FileTls,
    /// Egress controls.
    pub egress: FileEgress,
    /// How calls are tied to runs.
    pub identity: FileIdentity,
    /// Limits and timeouts.
    pub limits: FileLimits,
    /// Sidecar listeners (`[[sidecar]]`).
    pub sidecar: Vec<FileSidecar>,
    /// Receipt recording and the spool.
    pub receipts: FileReceipts,
    /// The control service the spool ships to (the token comes from the environment only).
    pub control: FileControl,
    /// Capability tokens.
    pub capabilities: FileCapabilities,
    /// Tool upstreams (`[[proxy.tool]] host = "…"`): they receive the per-call capability.
    pub tool: Vec<FileTool>,
    /// Policy packs.
    pub policy: FilePolicy,
    /// Token usage.
    pub usage: FileUsage,
    /// Budgets.
    pub budget: FileBudget,
    /// Sealing.
    pub seal: FileSeal,
    /// Replay mode.
    pub replay: FileReplay,
    /// Datasets (`[[proxy.dataset]]`).
    pub dataset: Vec<FileDataset>,
}

/// `[proxy.seal]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSeal {
    /// Seal calls (`FLEETFORGE_SEAL`, default true).
    pub enabled: Option<bool>,
    /// Seal calls on the forward listener (default true).
    pub forward: Option<bool>,
    /// JSON pointers redacted before sealing, e.g. `["/user", "/metadata/email"]`.
    pub redact: Option<Vec<String>>,
    /// JSON pointers left out of the replay key, e.g. `["/metadata/request_id"]`.
    pub key_exclude: Option<Vec<String>>,
    /// Request headers added to the key, beyond content-type and the API-version headers.
    pub key_headers: Option<Vec<String>>,
    /// Largest body sealed, e.g. `"32MiB"`.
    pub max_body: Option<String>,
}

/// `[proxy.replay]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileReplay {
    /// The run to replay (`FLEETFORGE_REPLAY=RUN[:strict]`).
    pub run: Option<String>,
    /// Refuse misses (default false; `RUN:strict` in the variable).
    pub strict: Option<bool>,
    /// `fast` (default) or `recorded` (`FLEETFORGE_REPLAY_TIMING`).
    pub timing: Option<String>,
}

/// `[[dataset]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDataset {
    /// Name, e.g. `"eval-questions"`.
    pub name: String,
    /// File path (relative to the working directory).
    pub path: PathBuf,
}

/// `[proxy.budget]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileBudget {
    /// Cap output limits at what remains (`FLEETFORGE_BUDGET_CAP_OUTPUT`, default true).
    pub cap_output: Option<bool>,
    /// Longest wait in a run's rate queue, e.g. `"30s"`.
    pub max_wait: Option<String>,
    /// `[proxy.budget.default]`: every run's default budget.
    pub default: Option<FileBudgetLimits>,
    /// `[proxy.budget.agent.NAME]`: default budgets by agent.
    pub agent: HashMap<String, FileBudgetLimits>,
    /// `[proxy.budget.tenant.NAME]`: default budgets by tenant.
    pub tenant: HashMap<String, FileBudgetLimits>,
    /// Lease run budgets from control (default: when a control token is set).
    pub lease: Option<bool>,
    /// Slices a run's budget is leased in.
    pub lease_slices: Option<u64>,
    /// Idle time after which unused slices go back, e.g. `"5s"`.
    pub lease_idle: Option<String>,
    /// `"fail_closed"` (default) or `"fail_open"` when control cannot be reached for a lease.
    pub on_control_unreachable: Option<String>,
}

/// A default budget in the file; each member optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileBudgetLimits {
    /// Input + output tokens.
    pub tokens: Option<u64>,
    /// US dollars.
    pub cost_usd: Option<f64>,
    /// Calls.
    pub calls: Option<u64>,
    /// Rate SLO: tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Rate SLO: calls per minute.
    pub calls_per_minute: Option<u64>,
}

/// `[proxy.usage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileUsage {
    /// Inject `stream_options.include_usage` into OpenAI streams that lack it (default true).
    pub inject_stream_usage: Option<bool>,
    /// Price list file (`FLEETFORGE_PRICES`; default: the built-in list), relative to this file.
    pub prices: Option<String>,
}

/// `[proxy.policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilePolicy {
    /// Pack paths (directories with `pack.toml`, manifests, or bare module files).
    pub packs: Option<Vec<String>>,
    /// How often to look for changed pack files, e.g. `"1s"`; `"0s"` = only on SIGHUP.
    pub reload_interval: Option<String>,
    /// Wasm fuel per evaluation.
    pub fuel: Option<u64>,
    /// Wall-clock limit per Wasm evaluation, e.g. `"100ms"`.
    pub timeout: Option<String>,
    /// Linear-memory limit per Wasm evaluation, e.g. `"16MiB"`.
    pub memory: Option<String>,
}

/// `[proxy.capabilities]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileCapabilities {
    /// Require a valid run token on every call (`FLEETFORGE_CAPABILITIES`; default: true when
    /// `FLEETFORGE_CONTROL_TOKEN` is set, false otherwise).
    pub required: Option<bool>,
    /// Per-call token lifetime, e.g. `"60s"`.
    pub call_ttl: Option<String>,
}

/// `[[proxy.tool]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTool {
    /// Host name or glob of the tool's API.
    pub host: String,
}

/// `[proxy.receipts]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileReceipts {
    /// Record receipts (`FLEETFORGE_RECEIPTS`, default true).
    pub enabled: Option<bool>,
    /// Spool limit, e.g. `"1GiB"` (`FLEETFORGE_SPOOL_MAX`).
    pub spool_max_bytes: Option<String>,
    /// Segment size, e.g. `"16MiB"`.
    pub segment_bytes: Option<String>,
    /// Batch window, e.g. `"25ms"`.
    pub seal_interval: Option<String>,
    /// `"fail_closed"` (default: refuse calls with 503) or `"fail_open"` when the spool is full.
    pub on_spool_full: Option<String>,
    /// fdatasync after each sealed batch (default true).
    pub fsync: Option<bool>,
    /// Free disk space the spool keeps, e.g. `"64MiB"`.
    pub min_free_disk: Option<String>,
}

/// `[proxy.control]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileControl {
    /// Control service URL (`FLEETFORGE_CONTROL_URL`, default `http://127.0.0.1:7070`).
    pub url: Option<String>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTls {
    /// Host globs whose TLS is intercepted (`FLEETFORGE_INTERCEPT`); `["*"]` = all.
    pub intercept: Option<Vec<String>>,
    /// Extra PEM bundle trusted for upstream TLS (`FLEETFORGE_UPSTREAM_CA`).
    pub upstream_ca: Option<PathBuf>,
}

/// `[proxy.upstream]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileUpstream {
    /// Offer HTTP/2 to upstreams via ALPN (default false: HTTP/1.1 keep-alive pool).
    pub http2: Option<bool>,
}

/// `[egress]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileEgress {
    /// Host globs calls may reach (`FLEETFORGE_ALLOWED_HOSTS`, default all).
    pub allowed_hosts: Option<Vec<String>>,
    /// Ports calls may reach (`FLEETFORGE_ALLOWED_PORTS`, default 80 and 443; `"*"` = any).
    pub allowed_ports: Option<PortsValue>,
    /// Model globs LLM calls may use (`FLEETFORGE_ALLOWED_MODELS`, default all).
    pub allowed_models: Option<Vec<String>>,
    /// Allow loopback/private/link-local destinations (`FLEETFORGE_ALLOW_PRIVATE`, default false).
    pub allow_private: Option<bool>,
    /// Static name overrides `{ "host" = "addr:port" }` (`FLEETFORGE_RESOLVE`).
    pub resolve: Option<HashMap<String, String>>,
}

/// A port list in the file: `[80, 443]` or `"*"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PortsValue {
    /// `"*"` (or a comma list as a string).
    Text(String),
    /// A list of ports.
    List(Vec<u16>),
}

/// `[identity]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileIdentity {
    /// Run for calls that name none (`FLEETFORGE_DEFAULT_RUN`).
    pub default_run: Option<String>,
    /// Reject calls without run credentials with 407 (`FLEETFORGE_REQUIRE_CREDENTIALS`).
    pub require_credentials: Option<bool>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLimits {
    /// Request body limit, e.g. `"16MiB"` (`FLEETFORGE_MAX_BODY`).
    pub max_body: Option<String>,
    /// Upstream connect timeout, e.g. `"10s"`.
    pub connect_timeout: Option<String>,
    /// Time allowed from request sent to upstream response headers, e.g. `"600s"`.
    pub response_timeout: Option<String>,
    /// Time a client may take to send request headers, e.g. `"30s"`.
    pub header_timeout: Option<String>,
    /// Time a client may take to send a request body, e.g. `"60s"`.
    pub body_timeout: Option<String>,
    /// Longest silence of an upstream response body before the call is cut, e.g. `"300s"`.
    pub stream_idle_timeout: Option<String>,
    /// Time shutdown waits for calls in flight, e.g. `"10s"`.
    pub drain_timeout: Option<String>,
    /// Most client connections open at once (default 10000).
    pub max_connections: Option<u64>,
    /// Most calls of one run in flight at once on this proxy (default 1000).
    pub max_calls_per_run: Option<u64>,
}

/// `[[sidecar]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSidecar {
    /// Listen address, e.g. `"127.0.0.1:15001"`.
    pub listen: String,
    /// Upstream base URL, e.g. `"https://api.openai.com"`.
    pub upstream: String,
    /// Run for calls on this listener that name none.
    #[serde(default)]
    pub default_run: Option<String>,
    /// Seal the calls on this listener (default true).
    #[serde(default)]
    pub seal: Option<bool>,
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--home`
    pub home: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<String>,
    /// `--intercept` (comma list)
    pub intercept: Option<String>,
    /// `--upstream-ca`
    pub upstream_ca: Option<PathBuf>,
    /// `--resolve HOST=ADDR:PORT`, repeatable
    pub resolve: Vec<String>,
    /// `--sidecar LISTEN=URL`, repeatable; replaces the file's sidecars
    pub sidecar: Vec<String>,
    /// `--default-run`
    pub default_run: Option<String>,
    /// `--allow-private`
    pub allow_private: bool,
    /// `--policy PATH`, repeatable; replaces the file's and the environment's packs
    pub policy: Vec<PathBuf>,
}

/// Reads environment variables; a function so tests need not touch the process environment.
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Loads the configuration: file (if any), then environment, then flags; then validates.
    pub fn load(file: Option<&Path>, env: EnvFn<'_>, flags: &Flags) -> Result<Self, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read { path: path.to_owned(), reason: e.to_string() })?;
                Self::from_text(path, &text, env, flags)
            }
            None => Builder { env, flags, file_origin: Origin::Default }.build(ConfigFile::default()),
        }
    }

    /// Loads the configuration from the text of the file at `path` (already read), then the
    /// environment and flags; then validates.
    pub fn from_text(path: &Path, text: &str, env: EnvFn<'_>, flags: &Flags) -> Result<Self, ConfigError> {
        let raw = Self::parse_file(path, text)?;
        Builder { env, flags, file_origin: Origin::File(path.to_owned()) }.build(raw)
    }

    /// Parses the TOML text of a config file (no validation of values yet).
    pub fn parse_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), reason: e.to_string().trim_end().to_owned() })
    }
}

struct Builder<'a> {
    env: EnvFn<'a>,
    flags: &'a Flags,
    file_origin: Origin,
}

/// A raw value and where it came from.
struct Given<T> {
    value: T,
    origin: Origin,
}

impl Builder<'_> {
    fn env(&self, var: &'static str) -> Option<Given<String>> {
        (self.env)(var).filter(|v| !v.trim().is_empty()).map(|value| Given { value, origin: Origin::Env(var) })
    }

    fn file<T>(&self, value: Option<T>) -> Option<Given<T>> {
        value.map(|value| Given { value, origin: self.file_origin.clone() })
    }

    fn flag<T>(&self, name: &'static str, value: Option<T>) -> Option<Given<T>> {
        value.map(|value| Given { value, origin: Origin::Flag(name) })
    }

    /// flag > env > file for a plain string setting.
    fn string(
        &self,
        flag: (&'static str, Option<String>),
        var: &'static str,
        file: Option<String>,
    ) -> Option<Given<String>> {
        self.flag(flag.0, flag.1).or_else(|| self.env(var)).or_else(|| self.file(file))
    }

    /// env (comma list) > file for a list setting.
    fn list(&self, var: &'static str, file: Option<Vec<String>>) -> Option<Given<Vec<String>>> {
        self.env(var).map(|g| Given { value: split_list(&g.value), origin: g.origin }).or_else(|| self.file(file))
    }

    fn build(self, file: ConfigFile) -> Result<Config, ConfigError> {
        let flags = self.flags;
        let raw = file.proxy;
        let top_sidecars = file.sidecar;
        let home = self
            .flag("--home", flags.home.clone())
            .or_else(|| self.env("FLEETFORGE_HOME").map(|g| Given { value: g.value.into(), origin: g.origin }))
            .or_else(|| self.file(file.home))
            .map_or_else(|| PathBuf::from(".fleetforge"), |g| g.value);

        let listen = parse_addr(
            "proxy.listen",
            self.string(("--listen", flags.listen.clone()), "FLEETFORGE_PROXY_LISTEN", raw.listen),
            "127.0.0.1:8080",
        )?;
        let admin_listen = parse_addr(
            "proxy.admin_listen",
            self.string(("--admin-listen", flags.admin_listen.clone()), "FLEETFORGE_ADMIN_LISTEN", raw.admin_listen),
            "127.0.0.1:9901",
        )?;

        let workers = match self.env("FLEETFORGE_WORKERS").or_else(|| self.file(raw.workers.map(|w| w.to_string()))) {
            Some(g) => g.value.trim().parse::<NonZeroUsize>().map_err(|_| {
                value_error("proxy.workers", &g.value, g.origin.clone(), "expected a positive number of worker threads")
            })?,
            None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        };
        let upstream_http2 = raw.upstream.http2.unwrap_or(false);
        let intercept = match self
            .flag("--intercept", flags.intercept.as_deref().map(split_list))
            .or_else(|| self.list("FLEETFORGE_INTERCEPT", raw.tls.intercept))
        {
            Some(g) => patterns("proxy.tls.intercept", g)?,
            None => PatternSet::new(DEFAULT_INTERCEPT),
        };
        let upstream_ca = self
            .flag("--upstream-ca", flags.upstream_ca.clone())
            .or_else(|| self.env("FLEETFORGE_UPSTREAM_CA").map(|g| Given { value: g.value.into(), origin: g.origin }))
            .or_else(|| self.file(raw.tls.upstream_ca));
        let upstream_ca = match upstream_ca {
            Some(g) if !g.value.is_file() => {
                return Err(value_error(
                    "proxy.tls.upstream_ca",
                    &g.value.display().to_string(),
                    g.origin,
                    "no such file; give the path of a PEM bundle of CA certificates",
                ));
            }
            other => other.map(|g| g.value),
        };

        let allowed_hosts = match self.list("FLEETFORGE_ALLOWED_HOSTS", raw.egress.allowed_hosts) {
            Some(g) => patterns("proxy.egress.allowed_hosts", g)?,
            None => PatternSet::any(),
        };
        let allowed_models = match self.list("FLEETFORGE_ALLOWED_MODELS", raw.egress.allowed_models) {
            Some(g) => patterns("proxy.egress.allowed_models", g)?,
            None => PatternSet::any(),
        };
        let allowed_ports = match self
            .env("FLEETFORGE_ALLOWED_PORTS")
            .map(|g| Given { value: PortsValue::Text(g.value), origin: g.origin })
            .or_else(|| self.file(raw.egress.allowed_ports))
        {
            Some(g) => parse_ports(g)?,
            None => PortSet::Only(vec![80, 443]),
        };
        let allow_private = if flags.allow_private {
            true
        } else {
            match self.env("FLEETFORGE_ALLOW_PRIVATE") {
                Some(g) => parse_bool("proxy.egress.allow_private", g)?,
                None => raw.egress.allow_private.unwrap_or(false),
            }
        };

        let mut resolve = HashMap::new();
        let mut add_resolve = |entry: &str, origin: &Origin| -> Result<(), ConfigError> {
            let (host, addr) = parse_resolve_entry(entry)
                .map_err(|reason| value_error("proxy.egress.resolve", entry, origin.clone(), &reason))?;
            resolve.insert(host, addr);
            Ok(())
        };
        for (host, addr) in raw.egress.resolve.unwrap_or_default() {
            add_resolve(&format!("{host}={addr}"), &self.file_origin)?;
        }
        if let Some(g) = self.env("FLEETFORGE_RESOLVE") {
            for entry in split_list(&g.value) {
                add_resolve(&entry, &g.origin)?;
            }
        }
        for entry in &flags.resolve {
            add_resolve(entry, &Origin::Flag("--resolve"))?;
        }

        let max_body = match self.env("FLEETFORGE_MAX_BODY").or_else(|| self.file(raw.limits.max_body)) {
            Some(g) => parse_size("proxy.limits.max_body", g)?,
            None => 16 * 1024 * 1024,
        };
        let duration = |key: &'static str, value: Option<String>, default: Duration| match self.file(value) {
            Some(g) => parse_duration(key, g),
            None => Ok(default),
        };
        let connect_timeout =
            duration("proxy.limits.connect_timeout", raw.limits.connect_timeout, Duration::from_secs(10))?;
        let response_timeout =
            duration("proxy.limits.response_timeout", raw.limits.response_timeout, Duration::from_secs(600))?;
        let header_timeout =
            duration("proxy.limits.header_timeout", raw.limits.header_timeout, Duration::from_secs(30))?;
        let body_timeout = duration("proxy.limits.body_timeout", raw.limits.body_timeout, Duration::from_secs(60))?;
        let stream_idle_timeout =
            duration("proxy.limits.stream_idle_timeout", raw.limits.stream_idle_timeout, Duration::from_secs(300))?;
        let drain_timeout = duration("proxy.limits.drain_timeout", raw.limits.drain_timeout, Duration::from_secs(10))?;
        // A count between 1 and 1,000,000 (`what` names its unit in the error).
        let count = |key: &str, given: Option<u64>, default: u64, what: &str| match self.file(given) {
            None => Ok(default),
            Some(Given { value: n @ 1..=1_000_000, .. }) => Ok(n),
            Some(given) => {
                Err(value_error(key, &given.value.to_string(), given.origin, &format!("expected 1 to 1000000 {what}")))
            }
        };
        let max_calls_per_run = count("proxy.limits.max_calls_per_run", raw.limits.max_calls_per_run, 1_000, "calls")?;
        let max_connections = count("proxy.limits.max_connections", raw.limits.max_connections, 10_000, "connections")?;
        let max_connections = usize::try_from(max_connections).unwrap_or(10_000);

        let default_run = self
            .string(("--default-run", flags.default_run.clone()), "FLEETFORGE_DEFAULT_RUN", raw.identity.default_run)
            .map(|g| parse_run("proxy.identity.default_run", g))
            .transpose()?;
        let require_credentials = match self.env("FLEETFORGE_REQUIRE_CREDENTIALS") {
            Some(g) => parse_bool("proxy.identity.require_credentials", g)?,
            None => raw.identity.require_credentials.unwrap_or(false),
        };
        let inject_stream_usage = match self.env("FLEETFORGE_INJECT_STREAM_USAGE") {
            Some(g) => parse_bool("proxy.usage.inject_stream_usage", g)?,
            None => raw.usage.inject_stream_usage.unwrap_or(true),
        };
        // A path in a config file is relative to the file; others to the working directory.
        let prices = match self.env("FLEETFORGE_PRICES").or_else(|| self.file(raw.usage.prices.clone())) {
            Some(Given { value, origin: Origin::File(file) }) => {
                Some(file.parent().map(Path::to_path_buf).unwrap_or_default().join(value))
            }
            Some(g) => Some(PathBuf::from(g.value)),
            None => None,
        };

        let budget = {
            let b = &raw.budget;
            let cap_output = match self.env("FLEETFORGE_BUDGET_CAP_OUTPUT") {
                Some(g) => parse_bool("proxy.budget.cap_output", g)?,
                None => b.cap_output.unwrap_or(true),
            };
            let max_wait = match self.env("FLEETFORGE_BUDGET_MAX_WAIT").or_else(|| self.file(b.max_wait.clone())) {
                Some(g) => parse_duration("proxy.budget.max_wait", g)?,
                None => Duration::from_secs(30),
            };
            let limits = |key: String, f: &FileBudgetLimits| -> Result<crate::budget::Limits, ConfigError> {
                let cost_micro_usd = match f.cost_usd {
                    None => None,
                    Some(usd) if usd.is_finite() && usd >= 0.0 => Some((usd * 1e6).floor() as u64),
                    Some(usd) => {
                        return Err(value_error(
                            &format!("{key}.cost_usd"),
                            &usd.to_string(),
                            self.file_origin.clone(),
                            "expected US dollars, 0 or more",
                        ));
                    }
                };
                Ok(crate::budget::Limits {
                    tokens: f.tokens,
                    cost_micro_usd,
                    calls: f.calls,
                    deadline: None,
                    tokens_per_minute: f.tokens_per_minute,
                    calls_per_minute: f.calls_per_minute,
                })
            };
            let default = match &b.default {
                Some(f) => limits("proxy.budget.default".into(), f)?,
                None => crate::budget::Limits::default(),
            };
            let mut agents = HashMap::new();
            for (name, f) in &b.agent {
                agents.insert(name.clone(), limits(format!("proxy.budget.agent.{name}"), f)?);
            }
            let mut tenants = HashMap::new();
            for (name, f) in &b.tenant {
                tenants.insert(name.clone(), limits(format!("proxy.budget.tenant.{name}"), f)?);
            }
            let lease_slices = match b.lease_slices {
                Some(0) => {
                    return Err(value_error(
                        "proxy.budget.lease_slices",
                        "0",
                        self.file_origin.clone(),
                        "expected 1 or more (the budget is leased in slices of 1/N of it)",
                    ));
                }
                Some(n) => n,
                None => 16,
            };
            let lease_idle = match self.env("FLEETFORGE_BUDGET_LEASE_IDLE").or_else(|| self.file(b.lease_idle.clone()))
            {
                Some(g) => parse_duration("proxy.budget.lease_idle", g)?,
                None => Duration::from_secs(5),
            };
            let lease_fail_open = match self
                .env("FLEETFORGE_BUDGET_ON_CONTROL_UNREACHABLE")
                .or_else(|| self.file(b.on_control_unreachable.clone()))
            {
                None => false,
                Some(g) => match g.value.as_str() {
                    "fail_closed" => false,
                    "fail_open" => true,
                    _ => {
                        return Err(value_error(
                            "proxy.budget.on_control_unreachable",
                            &g.value,
                            g.origin,
                            "expected fail_closed or fail_open",
                        ));
                    }
                },
            };
            BudgetConfig {
                cap_output,
                max_wait,
                default,
                agents,
                tenants,
                lease: false,
                lease_slices,
                lease_idle,
                lease_fail_open,
            }
        };

        let receipts = {
            let r = &raw.receipts;
            let enabled = match self.env("FLEETFORGE_RECEIPTS") {
                Some(g) => parse_bool("proxy.receipts.enabled", g)?,
                None => r.enabled.unwrap_or(true),
            };
            let size = |key: &'static str, env: Option<&'static str>, v: Option<String>, default: u64| match env
                .and_then(|e| self.env(e))
                .or_else(|| self.file(v))
            {
                Some(g) => parse_size(key, g),
                None => Ok(default),
            };
            let fail_open = match self.file(r.on_spool_full.clone()) {
                None => false,
                Some(g) => match g.value.as_str() {
                    "fail_closed" => false,
                    "fail_open" => true,
                    _ => {
                        return Err(value_error(
                            "proxy.receipts.on_spool_full",
                            &g.value,
                            g.origin,
                            "expected fail_closed or fail_open",
                        ));
                    }
                },
            };
            ReceiptsConfig {
                enabled,
                spool_max_bytes: size(
                    "proxy.receipts.spool_max_bytes",
                    Some("FLEETFORGE_SPOOL_MAX"),
                    r.spool_max_bytes.clone(),
                    1 << 30,
                )?,
                segment_bytes: size("proxy.receipts.segment_bytes", None, r.segment_bytes.clone(), 16 << 20)?,
                seal_interval: duration(
                    "proxy.receipts.seal_interval",
                    r.seal_interval.clone(),
                    DEFAULT_SEAL_INTERVAL,
                )?,
                fail_open,
                fsync: r.fsync.unwrap_or(true),
                min_free_disk: size("proxy.receipts.min_free_disk", None, r.min_free_disk.clone(), 64 << 20)?,
            }
        };
        let seal = self.seal(&raw.seal, receipts.enabled)?;
        let replay = self.replay(&raw.replay)?;
        let datasets = file
            .dataset
            .into_iter()
            .chain(raw.dataset)
            .enumerate()
            .map(|(i, d)| {
                if d.name.trim().is_empty() {
                    return Err(value_error(
                        &format!("dataset[{i}].name"),
                        &d.name,
                        self.file_origin.clone(),
                        "give the dataset a name",
                    ));
                }
                if !d.path.is_file() {
                    return Err(value_error(
                        &format!("dataset[{i}].path"),
                        &d.path.display().to_string(),
                        self.file_origin.clone(),
                        "no such file; give the path of the dataset file (relative to the working directory)",
                    ));
                }
                Ok(Dataset { name: d.name, path: d.path })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let control_url = {
            let given = self.env("FLEETFORGE_CONTROL_URL").or_else(|| self.file(raw.control.url.clone()));
            let Given { value, origin } =
                given.unwrap_or(Given { value: "http://127.0.0.1:7070".into(), origin: Origin::Default });
            match value.trim().parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => uri,
                _ => {
                    return Err(value_error(
                        "proxy.control.url",
                        &value,
                        origin,
                        "expected an http:// or https:// URL such as http://127.0.0.1:7070",
                    ));
                }
            }
        };
        let control_token = self.env("FLEETFORGE_CONTROL_TOKEN").map(|g| Secret::new(g.value.trim().to_owned()));
        let mut budget = budget;
        budget.lease = match self.env("FLEETFORGE_BUDGET_LEASE") {
            Some(g) => parse_bool("proxy.budget.lease", g)?,
            None => raw.budget.lease.unwrap_or(control_token.is_some()),
        };
        if budget.lease && control_token.is_none() {
            return Err(value_error(
                "proxy.budget.lease",
                "true",
                self.file_origin.clone(),
                "leasing run budgets needs control: set FLEETFORGE_CONTROL_TOKEN (or turn proxy.budget.lease off)",
            ));
        }
        let default_token = self.env("FLEETFORGE_DEFAULT_TOKEN").map(|g| Secret::new(g.value.trim().to_owned()));
        let capabilities = {
            // Secure by default: a proxy that knows control verifies every run token.
            let (required, explicit) = match self.env("FLEETFORGE_CAPABILITIES") {
                Some(g) => (parse_bool("proxy.capabilities.required", g)?, true),
                None => match raw.capabilities.required {
                    Some(r) => (r, true),
                    None => (control_token.is_some(), false),
                },
            };
            let call_ttl =
                duration("proxy.capabilities.call_ttl", raw.capabilities.call_ttl.clone(), Duration::from_secs(60))?;
            let file_tools: Vec<String> = raw.tool.iter().map(|t| t.host.clone()).collect();
            let tool_hosts = match self.list("FLEETFORGE_TOOL_HOSTS", (!file_tools.is_empty()).then_some(file_tools)) {
                Some(g) => patterns("proxy.tool.host", g)?,
                None => PatternSet::default(),
            };
            CapabilitiesConfig { required, explicit, call_ttl, tool_hosts }
        };
        let policy = {
            let p = &raw.policy;
            let packs: Vec<PathBuf> = if flags.policy.is_empty() {
                match self.list("FLEETFORGE_POLICY", p.packs.clone()) {
                    // Paths in a config file are relative to the file; others to the working directory.
                    Some(Given { value, origin: Origin::File(file) }) => {
                        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
                        value.into_iter().map(|v| base.join(v)).collect()
                    }
                    Some(g) => g.value.into_iter().map(PathBuf::from).collect(),
                    None => Vec::new(),
                }
            } else {
                flags.policy.clone()
            };
            let reload_interval = match p.reload_interval.as_deref().map(str::trim) {
                // Zero turns polling off (SIGHUP still reloads).
                Some("0" | "0s" | "0ms") => Duration::ZERO,
                _ => duration("proxy.policy.reload_interval", p.reload_interval.clone(), Duration::from_secs(1))?,
            };
            let defaults = crate::policy::Limits::default();
            let timeout = duration("proxy.policy.timeout", p.timeout.clone(), defaults.timeout)?;
            let memory = match self.file(p.memory.clone()) {
                Some(g) => {
                    let (value, origin) = (g.value.clone(), g.origin.clone());
                    let bytes = parse_size("proxy.policy.memory", g)?;
                    if bytes > crate::policy::MAX_WASM_MEMORY {
                        return Err(value_error(
                            "proxy.policy.memory",
                            &value,
                            origin,
                            "the most a pack may be given is 256MiB",
                        ));
                    }
                    bytes
                }
                None => defaults.memory,
            };
            let fuel = match p.fuel {
                Some(0) => {
                    return Err(value_error(
                        "proxy.policy.fuel",
                        "0",
                        self.file_origin.clone(),
                        "expected a positive amount of fuel, e.g. 50000000",
                    ));
                }
                Some(f) => f,
                None => defaults.fuel,
            };
            PolicyConfig { packs, reload_interval, limits: crate::policy::Limits { fuel, timeout, memory } }
        };

        let sidecars = if flags.sidecar.is_empty() {
            // Both spellings of the table are read: `[[sidecar]]` (the contract's) first, then
            // `[[proxy.sidecar]]`; errors name the table the entry was written in.
            let top = top_sidecars.into_iter().enumerate().map(|(i, s)| (format!("sidecar[{i}]"), s));
            let nested = raw.sidecar.into_iter().enumerate().map(|(i, s)| (format!("proxy.sidecar[{i}]"), s));
            top.chain(nested)
                .map(|(key, s)| self.sidecar(&key, s, self.file_origin.clone()))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            flags
                .sidecar
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let (listen, upstream) = entry.split_once('=').ok_or_else(|| {
                        value_error(
                            "proxy.sidecar",
                            entry,
                            Origin::Flag("--sidecar"),
                            "expected LISTEN=UPSTREAM_URL, e.g. 127.0.0.1:15001=https://api.openai.com",
                        )
                    })?;
                    let raw =
                        FileSidecar { listen: listen.into(), upstream: upstream.into(), default_run: None, seal: None };
                    self.sidecar(&format!("proxy.sidecar[{i}]"), raw, Origin::Flag("--sidecar"))
                })
                .collect::<Result<Vec<_>, _>>()?
        };

        let config = Config {
            home,
            listen,
            admin_listen,
            workers,
            upstream_http2,
            sidecars,
            intercept,
            upstream_ca,
            allowed_hosts,
            allowed_ports,
            allowed_models,
            allow_private,
            resolve,
            max_body,
            connect_timeout,
            response_timeout,
            header_timeout,
            body_timeout,
            stream_idle_timeout,
            drain_timeout,
            max_connections,
            max_calls_per_run,
            default_run,
            default_token,
            require_credentials,
            inject_stream_usage,
            prices,
            receipts,
            control_url,
            control_token,
            capabilities,
            policy,
            budget,
            seal,
            replay,
            datasets,
            telemetry: fleetforge_otel::ExportConfig::from_env(
                |var| (self.env)(var),
                "fleetforge-proxy",
                env!("CARGO_PKG_VERSION"),
            )?,
        };
        check_distinct_listeners(&config)?;
        Ok(config)
    }

    /// `[proxy.seal]`, with `FLEETFORGE_SEAL`.
    fn seal(&self, raw: &FileSeal, receipts: bool) -> Result<SealConfig, ConfigError> {
        let enabled = match self.env("FLEETFORGE_SEAL") {
            Some(g) => parse_bool("proxy.seal.enabled", g)?,
            None => raw.enabled.unwrap_or(true),
        };
        let pointers = |key: &str, list: &Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
            let list = list.clone().unwrap_or_default();
            for p in &list {
                fleetforge_trust::key::parse_pointer(p)
                    .map_err(|e| value_error(key, p, self.file_origin.clone(), &e.to_string()))?;
            }
            Ok(list)
        };
        let mut key = fleetforge_trust::key::KeyRules {
            exclude: pointers("proxy.seal.key_exclude", &raw.key_exclude)?,
            ..fleetforge_trust::key::KeyRules::default()
        };
        for h in raw.key_headers.clone().unwrap_or_default() {
            let name = h.trim().to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(value_error("proxy.seal.key_headers", &h, self.file_origin.clone(), "not a header name"));
            }
            if crate::headers::is_secret_header(&name) {
                return Err(value_error(
                    "proxy.seal.key_headers",
                    &h,
                    self.file_origin.clone(),
                    "credentials, cookies and SDK retry headers never go into a replay key",
                ));
            }
            if !key.headers.contains(&name) {
                key.headers.push(name);
            }
        }
        let max_body = match self.file(raw.max_body.clone()) {
            Some(g) => parse_size("proxy.seal.max_body", g)?,
            None => 32 << 20,
        };
        Ok(SealConfig {
            enabled: enabled && receipts,
            forward: raw.forward.unwrap_or(true),
            redact: pointers("proxy.seal.redact", &raw.redact)?,
            key,
            max_body,
        })
    }

    /// `[proxy.replay]`, with `FLEETFORGE_REPLAY` and `FLEETFORGE_REPLAY_TIMING`.
    fn replay(&self, raw: &FileReplay) -> Result<Option<ReplayConfig>, ConfigError> {
        let given = self.env("FLEETFORGE_REPLAY").or_else(|| self.file(raw.run.clone()));
        let Some(Given { value, origin }) = given else { return Ok(None) };
        let (run, strict) = match value.trim().rsplit_once(':') {
            Some((run, "strict")) => (run.to_owned(), true),
            Some(_) => {
                return Err(value_error(
                    "proxy.replay.run",
                    &value,
                    origin,
                    "expected RUN_ID or RUN_ID:strict (FLEETFORGE_REPLAY)",
                ));
            }
            None => (value.trim().to_owned(), raw.strict.unwrap_or(false)),
        };
        let run = parse_run("proxy.replay.run", Given { value: run, origin })?;
        let timing = self.env("FLEETFORGE_REPLAY_TIMING").or_else(|| self.file(raw.timing.clone()));
        let recorded_timing = match timing {
            None => false,
            Some(g) => match g.value.trim() {
                "fast" => false,
                "recorded" => true,
                _ => return Err(value_error("proxy.replay.timing", &g.value, g.origin, "expected fast or recorded")),
            },
        };
        Ok(Some(ReplayConfig { run, strict, recorded_timing, local_seals: None }))
    }

    /// One sidecar entry; `key` is its table path, e.g. `sidecar[0]` or `proxy.sidecar[1]`.
    fn sidecar(&self, key: &str, raw: FileSidecar, origin: Origin) -> Result<SidecarConfig, ConfigError> {
        let listen =
            parse_addr(&format!("{key}.listen"), Some(Given { value: raw.listen, origin: origin.clone() }), "")?;
        let upstream = parse_upstream(&format!("{key}.upstream"), &raw.upstream)
            .map_err(|reason| value_error(&format!("{key}.upstream"), &raw.upstream, origin.clone(), &reason))?;
        let default_run = raw
            .default_run
            .map(|value| parse_run(&format!("{key}.default_run"), Given { value, origin }))
            .transpose()?;
        Ok(SidecarConfig { listen, upstream, default_run, seal: raw.seal.unwrap_or(true) })
    }
}

fn value_error(key: &str, value: &str, origin: Origin, reason: &str) -> ConfigError {
    ConfigError::Value { key: key.to_owned(), value: value.to_owned(), origin, reason: reason.to_owned() }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn parse_addr(key: &str, given: Option<Given<String>>, default: &str) -> Result<SocketAddr, ConfigError> {
    let Given { value, origin } = given.unwrap_or(Given { value: default.to_owned(), origin: Origin::Default });
    value.trim().parse().map_err(|_| {
        value_error(
            key,
            &value,
            origin,
            "not a socket address; expected IP:PORT such as 127.0.0.1:8080 (port 0 picks a free port)",
        )
    })
}

fn patterns(key: &str, given: Given<Vec<String>>) -> Result<PatternSet, ConfigError> {
    for p in &given.value {
        if p.chars().any(|c| c.is_whitespace() || c == '/' || c == ':') {
            return Err(value_error(
                key,
                p,
                given.origin,
                "a pattern is a bare name or glob such as api.openai.com or *.openai.com (no scheme, port or path)",
            ));
        }
    }
    Ok(PatternSet::new(&given.value))
}

fn parse_ports(given: Given<PortsValue>) -> Result<PortSet, ConfigError> {
    let key = "proxy.egress.allowed_ports";
    match given.value {
        PortsValue::List(ports) => Ok(PortSet::Only(ports)),
        PortsValue::Text(text) if text.trim() == "*" => Ok(PortSet::Any),
        PortsValue::Text(text) => split_list(&text)
            .iter()
            .map(|p| {
                p.parse::<u16>().map_err(|_| {
                    value_error(
                        key,
                        &text,
                        given.origin.clone(),
                        &format!("{p:?} is not a port; give a comma list such as 80,443 or *"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PortSet::Only),
    }
}

fn parse_bool(key: &str, given: Given<String>) -> Result<bool, ConfigError> {
    match given.value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(value_error(key, &given.value, given.origin, "expected true or false")),
    }
}

fn parse_run(key: &str, given: Given<String>) -> Result<RunId, ConfigError> {
    RunId::new(given.value.trim()).map_err(|e| value_error(key, &given.value, given.origin, &e.to_string()))
}

/// Parses `host=addr:port`.
fn parse_resolve_entry(entry: &str) -> Result<(String, SocketAddr), String> {
    let (host, addr) =
        entry.split_once('=').ok_or_else(|| "expected HOST=IP:PORT, e.g. api.llm.test=127.0.0.1:8443".to_owned())?;
    let host = normalize_host(host.trim());
    if host.is_empty() || host.contains(['/', ':', ' ']) && host.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("{host:?} is not a host name"));
    }
    let addr = addr
        .trim()
        .parse::<SocketAddr>()
        .map_err(|_| format!("{addr:?} is not IP:PORT; expected HOST=IP:PORT, e.g. api.llm.test=127.0.0.1:8443"))?;
    Ok((host, addr))
}

/// Parses `16MiB`, `512KiB`, `1MB`, `1048576`.
fn parse_size(key: &str, given: Given<String>) -> Result<u64, ConfigError> {
    let text = given.value.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => u64::MAX,
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) if mult != u64::MAX && n > 0 => Ok(n),
        _ => Err(value_error(
            key,
            &given.value,
            given.origin,
            "expected a positive size such as 16MiB, 512KiB or 1000000",
        )),
    }
}

/// Parses `30s`, `500ms`, `5m`, `1h`.
fn parse_duration(key: &str, given: Given<String>) -> Result<Duration, ConfigError> {
    let text = given.value.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n = digits.parse::<u64>().ok();
    let d = match (n, unit) {
        (Some(n), "ms") => Some(Duration::from_millis(n)),
        (Some(n), "s") => Some(Duration::from_secs(n)),
        (Some(n), "m") => n.checked_mul(60).map(Duration::from_secs),
        (Some(n), "h") => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    };
    match d {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(value_error(
            key,
            &given.value,
            given.origin,
            "expected a positive duration such as 500ms, 30s, 5m or 1h",
        )),
    }
}

/// Parses a sidecar upstream base URL.
fn parse_upstream(key: &str, text: &str) -> Result<UpstreamBase, String> {
    let _ = key;
    let uri: http::Uri =
        text.trim().parse().map_err(|_| "not a URL; expected e.g. https://api.openai.com".to_owned())?;
    let scheme = uri.scheme().cloned().ok_or("the URL needs a scheme (https:// or http://)")?;
    let port_default = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        other => return Err(format!("scheme {other:?} is not supported; use https or http")),
    };
    let authority = uri.authority().cloned().ok_or("the URL needs a host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the upstream URL are not allowed; send them from the agent".to_owned());
    }
    if uri.query().is_some() {
        return Err("the upstream URL must not have a query string".to_owned());
    }
    let host = normalize_host(authority.host());
    let port = authority.port_u16().unwrap_or(port_default);
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(UpstreamBase { scheme, authority, host, port, base_path })
}

fn check_distinct_listeners(config: &Config) -> Result<(), ConfigError> {
    let mut seen: Vec<(SocketAddr, String)> =
        vec![(config.listen, "proxy.listen".to_owned()), (config.admin_listen, "proxy.admin_listen".to_owned())];
    for (i, s) in config.sidecars.iter().enumerate() {
        seen.push((s.listen, format!("proxy.sidecar[{i}].listen")));
    }
    for (i, (addr, key)) in seen.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        if let Some((_, other)) = seen[..i].iter().find(|(a, _)| a == addr) {
            return Err(value_error(
                key,
                &addr.to_string(),
                Origin::Default,
                &format!("the same address is already used by `{other}`; give each listener its own port"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
