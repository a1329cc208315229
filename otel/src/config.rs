//! Export settings from the standard OpenTelemetry environment variables.
//!
//! Nothing is exported unless an endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! turn export off even then. Every other variable has the default the OpenTelemetry
//! specification gives it. A value that does not parse is an error naming the variable and the
//! value, so a typo never silently turns tracing off.

use std::time::Duration;

/// The protocol spans are sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`: `POST {endpoint}/v1/traces`, `application/x-protobuf`.
    HttpProtobuf,
    /// `grpc`: the `TraceService/Export` method over HTTP/2.
    Grpc,
}

/// Which names of the GenAI semantic conventions spans carry (`OTEL_SEMCONV_STABILITY_OPT_IN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semconv {
    /// The current names and the older ones beside them (the default).
    Dual,
    /// The current names only (`gen_ai_latest_experimental`).
    Latest,
}

impl Semconv {
    /// The value of `trust.semconv.version`: the semantic-conventions versions whose GenAI names
    /// the span carries.
    pub fn version(self) -> &'static str {
        match self {
            Semconv::Dual => "1.37.0+1.26.0",
            Semconv::Latest => "1.37.0",
        }
    }

    /// Whether the older names are emitted too.
    pub fn dual(self) -> bool {
        self == Semconv::Dual
    }
}

/// How spans are chosen (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Every span.
    AlwaysOn,
    /// No span.
    AlwaysOff,
    /// A fraction of traces, chosen by trace id so every service makes the same choice.
    Ratio(f64),
    /// Follow the caller's sampled flag when there is a caller; otherwise the inner sampler.
    ParentBased(Root),
}

/// The sampler of a parent-based sampler for traces that start here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    /// Every new trace.
    AlwaysOn,
    /// No new trace.
    AlwaysOff,
    /// A fraction of new traces.
    Ratio(f64),
}

impl Sampler {
    /// Whether a span of `trace` is sampled, given the caller's sampled flag when there is one.
    pub fn sample(self, trace: &crate::TraceId, parent_sampled: Option<bool>) -> bool {
        let ratio = |r: f64| {
            // The trace id's last 8 bytes, compared with the ratio of their range: the same
            // choice in every service that sees this trace.
            let tail = u64::from_be_bytes(trace.0[8..16].try_into().unwrap_or_default()) >> 1;
            (tail as f64) < r * (1u64 << 63) as f64
        };
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => ratio(r),
            Sampler::ParentBased(root) => match (parent_sampled, root) {
                (Some(sampled), _) => sampled,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::Ratio(r)) => ratio(r),
            },
        }
    }
}

/// Everything the exporter needs, read once at start.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The full URL spans are posted to (`…/v1/traces` for HTTP; the collector's base for gRPC).
    pub endpoint: http::Uri,
    /// HTTP/protobuf or gRPC.
    pub protocol: Protocol,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`); values are never logged.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// gzip the payload (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
    /// One export's deadline.
    pub timeout: Duration,
    /// A PEM bundle trusted for an `https` endpoint besides the system roots.
    pub certificate: Option<std::path::PathBuf>,
    /// Resource attributes: `service.name` first.
    pub resource: Vec<(String, String)>,
    /// Which spans are kept.
    pub sampler: Sampler,
    /// Spans held for export at most; more are dropped and counted.
    pub max_queue: usize,
    /// Spans per export at most.
    pub max_batch: usize,
    /// How long a partial batch waits before it is sent.
    pub schedule_delay: Duration,
    /// Which GenAI names spans carry.
    pub semconv: Semconv,
    /// Prompt and completion content captured on spans
    /// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`); off by default.
    pub capture_content: bool,
}

/// A variable whose value is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not valid: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub name: String,
    /// Its value (never a header value: those may hold credentials).
    pub value: String,
    /// What is expected.
    pub reason: String,
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { name: name.to_owned(), value: value.to_owned(), reason: reason.into() }
}

impl ExportConfig {
    /// Reads the standard variables through `env` (`std::env::var` in the binaries).
    /// `Ok(None)`: no endpoint is set, or export is switched off.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        default_service: &str,
        version: &str,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        // The signal-specific variable wins over the general one.
        let pick = |specific: &str, general: &str| {
            get(specific).map(|v| (specific.to_owned(), v)).or_else(|| get(general).map(|v| (general.to_owned(), v)))
        };
        if let Some(v) = get("OTEL_SDK_DISABLED") {
            match v.to_ascii_lowercase().as_str() {
                "true" => return Ok(None),
                "false" => {}
                _ => return Err(invalid("OTEL_SDK_DISABLED", &v, "expected true or false")),
            }
        }
        if let Some(v) = get("OTEL_TRACES_EXPORTER") {
            match v.to_ascii_lowercase().as_str() {
                "none" => return Ok(None),
                "otlp" => {}
                _ => return Err(invalid("OTEL_TRACES_EXPORTER", &v, "only otlp and none are supported")),
            }
        }
        let protocol = match pick("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::HttpProtobuf,
            Some((name, v)) => match v.as_str() {
                "http/protobuf" => Protocol::HttpProtobuf,
                "grpc" => Protocol::Grpc,
                "http/json" => return Err(invalid(&name, &v, "http/json is not supported; use http/protobuf or grpc")),
                _ => return Err(invalid(&name, &v, "expected http/protobuf or grpc")),
            },
        };
        let endpoint = if let Some(v) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            // Used as given.
            parse_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &v, false, protocol)?
        } else if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            parse_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &v, true, protocol)?
        } else {
            return Ok(None);
        };
        let mut headers = Vec::new();
        for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            if let Some(v) = get(var) {
                for (k, value) in parse_pairs(var, &v, false)? {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| invalid(var, &k, format!("{k:?} is not a header name")))?;
                    let value = http::HeaderValue::from_str(&value).map_err(|_| {
                        invalid(var, &k, format!("the value of header {k} is not a valid header value"))
                    })?;
                    headers.retain(|(n, _)| *n != name);
                    headers.push((name, value));
                }
            }
        }
        let gzip = match pick("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION") {
            None => false,
            Some((name, v)) => match v.as_str() {
                "gzip" => true,
                "none" => false,
                _ => return Err(invalid(&name, &v, "expected gzip or none")),
            },
        };
        let timeout = match pick("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            None => Duration::from_secs(10),
            Some((name, v)) => Duration::from_millis(whole(&name, &v)?),
        };
        let certificate =
            pick("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE").map(|(_, v)| v.into());

        let mut resource: Vec<(String, String)> = Vec::new();
        if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
            resource = parse_pairs("OTEL_RESOURCE_ATTRIBUTES", &v, true)?;
        }
        let service = get("OTEL_SERVICE_NAME")
            .or_else(|| resource.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| default_service.to_owned());
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(0, ("service.name".into(), service));
        for (k, v) in [
            ("service.version", version),
            ("telemetry.sdk.name", "fleetforge-otel"),
            ("telemetry.sdk.language", "rust"),
            ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ] {
            if !resource.iter().any(|(key, _)| key == k) {
                resource.push((k.into(), v.into()));
            }
        }

        let sampler = sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?;
        let number = |name: &str, default: u64| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => whole(name, &v),
            }
        };
        let max_queue = usize::try_from(number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?).unwrap_or(usize::MAX).max(1);
        let max_batch =
            usize::try_from(number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?).unwrap_or(usize::MAX).clamp(1, max_queue);
        let schedule_delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
        let semconv = semconv_from_env(&env);
        let capture_content = match get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT") {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(invalid(
                        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
                        &v,
                        "expected true or false",
                    ));
                }
            },
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            headers,
            gzip,
            timeout,
            certificate,
            resource,
            sampler,
            max_queue,
            max_batch,
            schedule_delay,
            semconv,
            capture_content,
        }))
    }
}

/// Which GenAI names spans carry, from `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma list).
pub fn semconv_from_env(env: impl Fn(&str) -> Option<String>) -> Semconv {
    match env("OTEL_SEMCONV_STABILITY_OPT_IN") {
        Some(v) if v.split(',').any(|s| s.trim() == "gen_ai_latest_experimental") => Semconv::Latest,
        _ => Semconv::Dual,
    }
}

fn whole(name: &str, v: &str) -> Result<u64, ConfigError> {
    v.parse::<u64>().map_err(|_| invalid(name, v, "expected a whole number"))
}

/// The endpoint URL: `http` or `https` with a host. The general variable is a base the signal
/// path `v1/traces` is appended to (for HTTP; gRPC uses the base as is).
fn parse_endpoint(name: &str, v: &str, general: bool, protocol: Protocol) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = v.parse().map_err(|_| invalid(name, v, "expected a URL such as http://127.0.0.1:4318"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid(name, v, "the URL must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(name, v, "the URL has no host"));
    }
    if !general || protocol == Protocol::Grpc {
        return Ok(uri);
    }
    let base = v.trim_end_matches('/');
    format!("{base}/v1/traces").parse().map_err(|_| invalid(name, v, "expected a URL such as http://127.0.0.1:4318"))
}

/// `key=value,key2=value2` with percent-encoded values (W3C Baggage octets), as
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` are written.
fn parse_pairs(name: &str, v: &str, show_value: bool) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let shown = if show_value { item } else { item.split('=').next().unwrap_or_default() };
        let Some((k, val)) = item.split_once('=') else {
            return Err(invalid(name, shown, "expected key=value pairs separated by commas"));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(invalid(name, shown, "a key is empty"));
        }
        let val = percent_decode(val.trim()).ok_or_else(|| invalid(name, shown, "a value has a bad %-escape"))?;
        out.push((k.to_owned(), val));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        match &arg {
            None => Ok(1.0),
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(invalid("OTEL_TRACES_SAMPLER_ARG", v, "expected a ratio between 0 and 1")),
            },
        }
    };
    let Some(name) = name else { return Ok(Sampler::ParentBased(Root::AlwaysOn)) };
    Ok(match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::Ratio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio()?)),
        _ => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                &name,
                "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_when_switched_off() {
        assert!(ExportConfig::from_env(env(&[]), "svc", "1").unwrap().is_none());
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert!(ExportConfig::from_env(env(&on), "svc", "1").unwrap().is_some());
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            let vars = [on[0], off];
            assert!(ExportConfig::from_env(env(&vars), "svc", "1").unwrap().is_none(), "{off:?}");
        }
    }

    #[test]
    fn endpoints_follow_the_specification() {
        let c = ExportConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318/")]), "s", "1")
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://h:4318/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        let c = ExportConfig::from_env(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
            ]),
            "s",
            "1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://t:9/custom");
        let c = ExportConfig::from_env(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4317"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")]),
            "s",
            "1",
        )
        .unwrap()
        .unwrap();
        assert_eq!((c.protocol, c.endpoint.to_string().as_str()), (Protocol::Grpc, "http://h:4317/"));
    }

    #[test]
    fn resource_headers_and_batch_settings_are_read() {
        let c = ExportConfig::from_env(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=from-attrs,team=a%20b"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc,x-tenant=t1"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ]),
            "default-svc",
            "9.9",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.resource[0], ("service.name".into(), "from-attrs".into()));
        assert!(c.resource.contains(&("team".into(), "a b".into())));
        assert!(c.resource.contains(&("service.version".into(), "9.9".into())));
        assert_eq!(c.headers[0].1, "Bearer abc");
        assert_eq!((c.max_queue, c.max_batch), (100, 100));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(c.gzip);
        let c = ExportConfig::from_env(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"), ("OTEL_SERVICE_NAME", "named")]),
            "default-svc",
            "1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.resource[0].1, "named");
    }

    #[test]
    fn bad_values_name_the_variable_and_never_echo_a_header_value() {
        let cases = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/json is not supported"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp", "expected http/protobuf or grpc"),
            ("OTEL_TRACES_SAMPLER", "sometimes", "expected always_on"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1", "whole number"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "br", "gzip or none"),
        ];
        for (name, value, says) in cases {
            let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"), (name, value)];
            let e = ExportConfig::from_env(env(&vars), "s", "1").unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(says), "{e}");
        }
        let e = ExportConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://h")]), "s", "1").unwrap_err();
        assert!(e.to_string().contains("http:// or https://"), "{e}");
        let vars =
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"), ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr%zz")];
        let e = ExportConfig::from_env(env(&vars), "s", "1").unwrap_err().to_string();
        assert!(e.contains("api-key") && !e.contains("s3cr"), "{e}");
    }

    #[test]
    fn samplers_decide_by_parent_and_ratio() {
        let t = crate::TraceId([0xff; 16]);
        let low = crate::TraceId([0; 16]);
        assert!(Sampler::ParentBased(Root::AlwaysOn).sample(&t, None));
        assert!(!Sampler::ParentBased(Root::AlwaysOn).sample(&t, Some(false)));
        assert!(Sampler::ParentBased(Root::AlwaysOff).sample(&t, Some(true)));
        assert!(!Sampler::Ratio(0.5).sample(&t, None));
        assert!(Sampler::Ratio(0.5).sample(&low, None));
        assert!(!Sampler::Ratio(0.0).sample(&low, Some(true)));
        let kept = (0..10_000).filter(|_| Sampler::Ratio(0.25).sample(&crate::TraceId::random(), None)).count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ];
        let c = ExportConfig::from_env(env(&vars), "s", "1").unwrap().unwrap();
        assert_eq!(c.sampler, Sampler::ParentBased(Root::Ratio(0.1)));
    }

    #[test]
    fn semconv_opt_in_selects_the_latest_names_only() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"),
            ("OTEL_SEMCONV_STABILITY_OPT_IN", "http,gen_ai_latest_experimental"),
        ];
        assert_eq!(ExportConfig::from_env(env(&vars), "s", "1").unwrap().unwrap().semconv, Semconv::Latest);
        assert_eq!(semconv_from_env(env(&[])), Semconv::Dual);
    }
}
