//! OpenTelemetry for FleetForge's binaries: W3C trace context, spans built as plain data on the
//! hot path, and an OTLP exporter (HTTP/protobuf or gRPC) on a thread of its own.
//!
//! Configured by the standard environment variables ([`config`]); with no endpoint set nothing
//! is started and nothing is spent. The attribute names the proxy and control put on spans are in
//! `docs/reference/telemetry.md`.

pub mod config;
pub mod context;
pub mod export;
pub mod proto;
pub mod span;
pub mod wire;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use config::{ConfigError, ExportConfig, Protocol, Sampler, Semconv};
pub use context::{Parent, SpanId, TraceId, traceparent};
pub use export::{Exporter, StartError, Stats};
pub use span::{Event, Kind, Span, Status, Value};

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A variable is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The exporter could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// A process's tracer: the sampler, the semantic-conventions mode and the exporter.
#[derive(Debug)]
pub struct Tracer {
    exporter: Exporter,
    sampler: Sampler,
    /// Which GenAI names spans carry.
    pub semconv: Semconv,
    /// Whether prompt and completion content go on spans.
    pub capture_content: bool,
    endpoint: String,
}

/// Room for the attributes of a typical call's span (an LLM call carries about 22), so building
/// one grows its list at most once.
const ATTRIBUTES: usize = 24;

/// The ids of a span that starts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Its trace (the caller's, or a new one).
    pub trace_id: TraceId,
    /// Its own id.
    pub span_id: SpanId,
    /// The caller's span.
    pub parent: Option<SpanId>,
    /// Whether it is recorded and exported.
    pub sampled: bool,
    /// The caller's `tracestate`, passed on.
    pub state: Option<String>,
}

impl Started {
    /// The `traceparent` to send downstream, naming this span as the parent.
    pub fn traceparent(&self) -> String {
        traceparent(self.trace_id, self.span_id, self.sampled)
    }

    /// A span with these ids, named `name`, started at `start_unix_nano`.
    pub fn span(&self, name: String, kind: Kind, start_unix_nano: u64) -> Span {
        Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            trace_state: self.state.clone(),
            name,
            kind,
            start_unix_nano,
            end_unix_nano: start_unix_nano,
            attributes: Vec::with_capacity(ATTRIBUTES),
            events: Vec::new(),
            status: Status::Unset,
        }
    }
}

impl Tracer {
    /// The tracer the environment asks for (`std::env::var`), or `None` when no OTLP endpoint is
    /// set. `service` is the default `service.name`.
    pub fn from_env(service: &str, version: &str) -> Result<Option<Self>, Error> {
        let Some(config) = ExportConfig::from_env(|k| std::env::var(k).ok(), service, version)? else {
            return Ok(None);
        };
        Ok(Some(Self::start(config)?))
    }

    /// Starts the exporter for `config`.
    pub fn start(config: ExportConfig) -> Result<Self, StartError> {
        let sampler = config.sampler;
        let semconv = config.semconv;
        let capture_content = config.capture_content;
        let endpoint = format!(
            "{} ({})",
            config.endpoint,
            match config.protocol {
                Protocol::Grpc => "grpc",
                Protocol::HttpProtobuf => "http/protobuf",
            }
        );
        Ok(Self { exporter: Exporter::start(config)?, sampler, semconv, capture_content, endpoint })
    }

    /// Where spans go, for the start-up log line.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Ids for a span starting now under `parent` (the caller's `traceparent`), and whether the
    /// sampler keeps it.
    pub fn start_span(&self, parent: Option<&Parent>) -> Started {
        let trace_id = parent.map_or_else(TraceId::random, |p| p.trace_id);
        let sampled = self.sampler.sample(&trace_id, parent.map(|p| p.sampled));
        Started {
            trace_id,
            span_id: SpanId::random(),
            parent: parent.map(|p| p.span_id),
            sampled,
            state: parent.and_then(|p| p.state.clone()),
        }
    }

    /// Queues a finished span for export; never waits.
    pub fn submit(&self, span: Span) {
        self.exporter.submit(span);
    }

    /// Exports what is queued, waiting up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.exporter.flush(timeout)
    }

    /// The exporter's counts.
    pub fn stats(&self) -> &Stats {
        self.exporter.stats()
    }

    /// Flushes for up to `timeout` and stops the exporter.
    pub fn shutdown(&self, timeout: Duration) {
        self.exporter.shutdown(timeout);
    }
}

/// Unix nanoseconds of `t`.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
