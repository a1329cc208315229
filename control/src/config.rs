//! Configuration of the control service: one typed [`ControlConfig`], validated before any port
//! is bound.
//!
//! Sources, by precedence: flags, environment (`FLEETFORGE_CONTROL_LISTEN`, `DATABASE_URL`,
//! `FLEETFORGE_CONTROL_TOKEN`, `FLEETFORGE_HOME`), the `[control]` table of the shared TOML file
//! (`deny_unknown_fields`; the file's `[proxy]` table belongs to the proxy and is not read here),
//! then defaults. Secrets — the database URL and the bootstrap token — come from the environment
//! only, never from the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleetforge_trust::Secret;
use serde::Deserialize;

/// A configuration error naming the key, the value and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The shared file, as far as control is concerned.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    /// State directory.
    home: Option<PathBuf>,
    /// The proxy's table: not validated here.
    proxy: Option<toml::Table>,
    /// The proxy's top-level `[[sidecar]]` tables: not validated here.
    sidecar: Option<Vec<toml::Table>>,
    /// `[control]`.
    control: FileControl,
}

/// `[control]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileControl {
    /// Listen address (`FLEETFORGE_CONTROL_LISTEN`, default `127.0.0.1:7070`).
    listen: Option<String>,
    /// Most receipts accepted in one `POST /v1/receipts` (default 1000).
    max_batch: Option<usize>,
    /// `[control.retention]`.
    retention: FileRetention,
    /// `[control.scitt]`.
    scitt: FileScitt,
}

/// `[control.scitt]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileScitt {
    /// Seconds without a receipt after which an open run ends and its statement is emitted
    /// (`FLEETFORGE_SCITT_IDLE_SECS`; default 900; 0: runs end only when closed).
    idle_secs: Option<u64>,
    /// Seconds between the statement worker's passes over idle runs and the outbox (default 5;
    /// a close wakes it at once).
    interval_secs: Option<u64>,
}

/// When runs end on their own and how often the statement worker looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scitt {
    /// Idle time after which an open run ends; `None`: only `POST /v1/runs/{id}/close` ends runs.
    pub idle: Option<std::time::Duration>,
    /// Time between the worker's passes.
    pub interval: std::time::Duration,
}

/// `[control.retention]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileRetention {
    /// Days a receipt's body is kept after ingest (`FLEETFORGE_RETENTION_RECEIPTS_DAYS`).
    receipts_days: Option<u32>,
    /// Days a sealed blob is kept (`FLEETFORGE_RETENTION_SEALS_DAYS`).
    seals_days: Option<u32>,
    /// Seconds between retention passes (default 3600).
    interval_secs: Option<u64>,
}

/// Retention periods; `None` keeps forever. Runs on legal hold are never pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Days a receipt's body is kept after ingest.
    pub receipts_days: Option<u32>,
    /// Days a sealed blob is kept.
    pub seals_days: Option<u32>,
    /// Time between retention passes.
    pub interval: std::time::Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// State directory (SQLite database, `control.token`).
    pub home: PathBuf,
    /// API listen address.
    pub listen: SocketAddr,
    /// `postgres://…`; `None` = SQLite at `$home/control.db`.
    pub database_url: Option<Secret>,
    /// Bootstrap admin token.
    pub bootstrap_token: Option<Secret>,
    /// Apply migrations on start.
    pub migrate: bool,
    /// Most receipts per ingest batch.
    pub max_batch: usize,
    /// OpenTelemetry export of a SERVER span per API request, from the standard `OTEL_*`
    /// variables (`None`: no endpoint set).
    pub telemetry: Option<fleetforge_otel::ExportConfig>,
    /// Retention periods (`[control.retention]`).
    pub retention: Retention,
    /// SCITT statements (`[control.scitt]`).
    pub scitt: Scitt,
}

/// Flags that override everything.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--no-migrate`.
    pub no_migrate: bool,
}

impl ControlConfig {
    /// Loads file, environment and flags.
    pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>, flags: &Flags) -> Result<Self, ConfigError> {
        let raw: ConfigFile = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
                toml::from_str(&text).map_err(|e| {
                    ConfigError(format!("invalid config file {}: {}", path.display(), e.to_string().trim_end()))
                })?
            }
            None => ConfigFile::default(),
        };
        let _ = raw.proxy;
        let env_nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let home = env_nonempty("FLEETFORGE_HOME")
            .map(PathBuf::from)
            .or(raw.home)
            .unwrap_or_else(|| PathBuf::from(".fleetforge"));
        let (listen, origin) = match (&flags.listen, env_nonempty("FLEETFORGE_CONTROL_LISTEN"), raw.control.listen) {
            (Some(l), _, _) => (l.clone(), "flag --listen".to_owned()),
            (None, Some(l), _) => (l, "environment variable FLEETFORGE_CONTROL_LISTEN".to_owned()),
            (None, None, Some(l)) => (l, "config file".to_owned()),
            (None, None, None) => ("127.0.0.1:7070".to_owned(), "default".to_owned()),
        };
        let listen = listen.trim().parse().map_err(|_| {
            ConfigError(format!(
                "invalid value for `control.listen` ({origin}): {listen:?}: not a socket address; expected IP:PORT such as 127.0.0.1:7070"
            ))
        })?;
        let database_url = env_nonempty("DATABASE_URL").map(Secret::new);
        if let Some(url) = &database_url {
            let u = url.expose();
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://") || u.starts_with("sqlite:")) {
                return Err(ConfigError(
                    "invalid value for DATABASE_URL: expected postgres://… (or sqlite:PATH); unset it to use SQLite under FLEETFORGE_HOME".into(),
                ));
            }
        }
        let max_batch = raw.control.max_batch.unwrap_or(1000);
        if max_batch == 0 || max_batch > 10_000 {
            return Err(ConfigError(format!(
                "invalid value for `control.max_batch`: {max_batch}: expected 1 to 10000"
            )));
        }
        let days = |var: &str, file: Option<u32>, key: &str| -> Result<Option<u32>, ConfigError> {
            match env_nonempty(var) {
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    ConfigError(format!(
                        "invalid value for `control.retention.{key}` (environment variable {var}): {v:?}: expected a whole number of days"
                    ))
                }),
                None => Ok(file),
            }
        };
        let interval_secs = raw.control.retention.interval_secs.unwrap_or(3600);
        if interval_secs == 0 {
            return Err(ConfigError(
                "invalid value for `control.retention.interval_secs`: 0: expected at least 1 second".into(),
            ));
        }
        let retention = Retention {
            receipts_days: days(
                "FLEETFORGE_RETENTION_RECEIPTS_DAYS",
                raw.control.retention.receipts_days,
                "receipts_days",
            )?,
            seals_days: days("FLEETFORGE_RETENTION_SEALS_DAYS", raw.control.retention.seals_days, "seals_days")?,
            interval: std::time::Duration::from_secs(interval_secs),
        };
        let idle_secs = match env_nonempty("FLEETFORGE_SCITT_IDLE_SECS") {
            Some(v) => v.trim().parse().map_err(|_| {
                ConfigError(format!(
                    "invalid value for `control.scitt.idle_secs` (environment variable FLEETFORGE_SCITT_IDLE_SECS): {v:?}: expected a whole number of seconds (0: runs end only when closed)"
                ))
            })?,
            None => raw.control.scitt.idle_secs.unwrap_or(900),
        };
        let scitt_interval = raw.control.scitt.interval_secs.unwrap_or(5);
        if scitt_interval == 0 {
            return Err(ConfigError(
                "invalid value for `control.scitt.interval_secs`: 0: expected at least 1 second".into(),
            ));
        }
        let scitt = Scitt {
            idle: (idle_secs > 0).then(|| std::time::Duration::from_secs(idle_secs)),
            interval: std::time::Duration::from_secs(scitt_interval),
        };
        Ok(Self {
            scitt,
            retention,
            home,
            listen,
            database_url,
            bootstrap_token: env_nonempty("FLEETFORGE_CONTROL_TOKEN").map(|t| Secret::new(t.trim().to_owned())),
            migrate: !flags.no_migrate,
            max_batch,
            telemetry: fleetforge_otel::ExportConfig::from_env(env, "fleetforge-control", env!("CARGO_PKG_VERSION"))
                .map_err(|e| ConfigError(e.to_string()))?,
        })
    }

    /// The database URL to connect to (SQLite under `home` when `DATABASE_URL` is unset).
    pub fn database(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}?mode=rwc", self.home.join("control.db").display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ControlConfig, Flags};

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn defaults_env_and_errors() {
        let c = ControlConfig::load(None, &env(&[]), &Flags::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert!(c.database().starts_with("sqlite://.fleetforge/control.db"));
        let c = ControlConfig::load(
            None,
            &env(&[("DATABASE_URL", "postgres://u@h/db"), ("FLEETFORGE_CONTROL_LISTEN", "127.0.0.1:0")]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(c.database(), "postgres://u@h/db");
        assert_eq!(c.listen.port(), 0);
        let e =
            ControlConfig::load(None, &env(&[("FLEETFORGE_CONTROL_LISTEN", "nope")]), &Flags::default()).unwrap_err();
        assert!(
            e.0.contains("control.listen") && e.0.contains("nope") && e.0.contains("FLEETFORGE_CONTROL_LISTEN"),
            "{e}"
        );
        let e = ControlConfig::load(None, &env(&[("DATABASE_URL", "mysql://x")]), &Flags::default()).unwrap_err();
        assert!(!e.0.contains("mysql://x"), "the URL may hold a password: never echo it");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[proxy]\nlisten = \"127.0.0.1:1\"\n[control]\nlisten = \"127.0.0.1:2\"\n").unwrap();
        assert_eq!(ControlConfig::load(Some(&f), &env(&[]), &Flags::default()).unwrap().listen.port(), 2);
        std::fs::write(&f, "[control]\nlistn = \"127.0.0.1:2\"\n").unwrap();
        assert!(ControlConfig::load(Some(&f), &env(&[]), &Flags::default()).unwrap_err().0.contains("listn"));
    }

    #[test]
    fn scitt_idle_time_from_env_and_file() {
        let c = ControlConfig::load(None, &env(&[]), &Flags::default()).unwrap();
        assert_eq!((c.scitt.idle.map(|d| d.as_secs()), c.scitt.interval.as_secs()), (Some(900), 5));
        let c = ControlConfig::load(None, &env(&[("FLEETFORGE_SCITT_IDLE_SECS", "0")]), &Flags::default()).unwrap();
        assert_eq!(c.scitt.idle, None, "0 turns the idle end off");
        let e =
            ControlConfig::load(None, &env(&[("FLEETFORGE_SCITT_IDLE_SECS", "soon")]), &Flags::default()).unwrap_err();
        assert!(e.0.contains("control.scitt.idle_secs") && e.0.contains("soon"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[control.scitt]\nidle_secs = 60\ninterval_secs = 1\n").unwrap();
        let c = ControlConfig::load(Some(&f), &env(&[]), &Flags::default()).unwrap();
        assert_eq!((c.scitt.idle.map(|d| d.as_secs()), c.scitt.interval.as_secs()), (Some(60), 1));
        std::fs::write(&f, "[control.scitt]\ninterval_secs = 0\n").unwrap();
        assert!(ControlConfig::load(Some(&f), &env(&[]), &Flags::default()).unwrap_err().0.contains("interval_secs"));
    }

    #[test]
    fn retention_periods_from_env_and_file() {
        let c = ControlConfig::load(None, &env(&[]), &Flags::default()).unwrap();
        assert_eq!((c.retention.receipts_days, c.retention.seals_days), (None, None), "kept forever by default");
        let c = ControlConfig::load(None, &env(&[("FLEETFORGE_RETENTION_RECEIPTS_DAYS", "365")]), &Flags::default())
            .unwrap();
        assert_eq!(c.retention.receipts_days, Some(365));
        let e = ControlConfig::load(None, &env(&[("FLEETFORGE_RETENTION_SEALS_DAYS", "a month")]), &Flags::default())
            .unwrap_err();
        assert!(e.0.contains("control.retention.seals_days") && e.0.contains("a month"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[control.retention]\nseals_days = 30\ninterval_secs = 60\n").unwrap();
        let c = ControlConfig::load(Some(&f), &env(&[]), &Flags::default()).unwrap();
        assert_eq!((c.retention.seals_days, c.retention.interval.as_secs()), (Some(30), 60));
        std::fs::write(&f, "[control.retention]\ninterval_secs = 0\n").unwrap();
        let e = ControlConfig::load(Some(&f), &env(&[]), &Flags::default()).unwrap_err();
        assert!(e.0.contains("interval_secs"), "{e}");
    }
}
