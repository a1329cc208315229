//! OpenTelemetry end to end: the real proxy exports a CLIENT span per call to a real OTLP
//! receiver (HTTP/protobuf and gRPC, decoded with `opentelemetry-proto`), continues and forwards
//! W3C trace context, and records the trace in the receipt; a dead collector costs calls nothing.
//! Clients are the real `openai` and `anthropic` SDKs and curl through the forward proxy.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fleetforge_e2e::harness::{ControlProcess, Database};
use fleetforge_e2e::otlp::{OtlpReceiver, ReceivedSpan};
use fleetforge_e2e::{Clients, ProxyProcess, TestCa, Upstream};
use serde_json::Value;

const API_KEY: &str = "sk-e2e-OTEL-SECRET-51c7aa";
const RUN_TOKEN: &str = "tok-e2e-OTEL-SECRET-0d3e";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

struct Stack {
    _dir: tempfile::TempDir,
    upstream: Upstream,
    control: ControlProcess,
    proxy: ProxyProcess,
    clients: Clients,
}

async fn stack(otel: &[(&str, &str)]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let upstream =
        Upstream::builder().tls(&ca, &["api.openai.com", "api.anthropic.com", "mcp.tools.test"]).start().await.unwrap();
    let db = Database::fresh(false).unwrap();
    let control = ControlProcess::start(&db, &dir.path().join("control-home"), None).unwrap();
    let mut b = ProxyProcess::builder()
        .home(&dir.path().join("proxy-home"))
        .resolve("api.openai.com", upstream.addr())
        .resolve("api.anthropic.com", upstream.addr())
        .resolve("mcp.tools.test", upstream.addr())
        .upstream_ca(ca.pem_path())
        .env("FLEETFORGE_CONTROL_URL", control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", control.token.clone())
        .env("FLEETFORGE_CAPABILITIES", "false")
        .env("FLEETFORGE_INTERCEPT", "*")
        .env("FLEETFORGE_ALLOWED_HOSTS", "api.openai.com,api.anthropic.com,mcp.tools.test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    for (k, v) in otel {
        b = b.env(k, *v);
    }
    let proxy = b.start().unwrap();
    Stack { _dir: dir, upstream, control, proxy, clients: Clients::locate() }
}

impl Stack {
    fn env(&self, run: &str) -> Vec<(String, String)> {
        let url = self.proxy.proxy_url(run, RUN_TOKEN);
        let bundle = self.proxy.bundle.display().to_string();
        vec![
            ("HTTPS_PROXY".into(), url),
            ("SSL_CERT_FILE".into(), bundle.clone()),
            ("CURL_CA_BUNDLE".into(), bundle),
            ("OPENAI_BASE_URL".into(), "https://api.openai.com/v1".into()),
            ("OPENAI_API_KEY".into(), API_KEY.into()),
            ("ANTHROPIC_BASE_URL".into(), "https://api.anthropic.com".into()),
            ("ANTHROPIC_API_KEY".into(), API_KEY.into()),
        ]
    }

    async fn python(&self, run: &str, script: &str, args: &[&str]) -> Value {
        let env = self.env(run);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = self.clients.python(script, args, &env).await.unwrap();
        let out = out.ok().unwrap();
        out.json_lines().unwrap().pop().unwrap_or(Value::Null)
    }

    async fn curl(&self, run: &str, args: &[&str]) -> String {
        let env = self.env(run);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = self.clients.curl(args, &env).await.unwrap();
        out.stdout
    }
}

/// The span whose `trust.attestation_id` is `receipt`.
fn span_of<'a>(spans: &'a [ReceivedSpan], receipt: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.str("trust.attestation_id") == Some(receipt))
        .unwrap_or_else(|| panic!("no span for receipt {receipt}"))
}

const MCP_CALL: &str =
    r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Oslo"}}}"#;

/// Five kinds of call, each checked against its receipt.
async fn five_calls_become_spans_matching_their_receipts(protocol: &str) {
    let receiver = OtlpReceiver::start().await.unwrap();
    let s = stack(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint().as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", if protocol == "grpc" { "grpc" } else { "http/protobuf" }),
        ("OTEL_SERVICE_NAME", "fleet-proxy-e2e"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
    ])
    .await;
    let run = format!("run-otel-{}", protocol.replace('/', "-"));
    // 1. OpenAI JSON, continuing the caller's trace.
    let traceparent = format!("traceparent=00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    s.python(&run, "py_openai.py", &["--header", &traceparent, "--header", "tracestate=vendor=abc"]).await;
    let forwarded = s.upstream.last_request().unwrap();
    // 2. OpenAI stream. 3. Anthropic stream.
    s.python(&run, "py_openai.py", &["--stream"]).await;
    s.python(&run, "py_anthropic.py", &["--stream"]).await;
    // 4. An MCP tool call.
    s.curl(
        &run,
        &["-s", "-H", "content-type: application/json", "--data-binary", MCP_CALL, "https://mcp.tools.test/echo/mcp"],
    )
    .await;
    // 5. A call the allow-list denies.
    s.curl(&run, &["-s", "https://denied.example.test/v1/chat/completions"]).await;

    let receipts = s.control.receipts(&run, 5).unwrap();
    let spans = receiver.wait_for(5).await.unwrap();
    assert!(spans.iter().all(|sp| sp.protocol == if protocol == "grpc" { "grpc" } else { "http" }));
    let r = |i: usize| receipts[i]["id"].as_str().unwrap().to_owned();

    // Resource.
    let first = span_of(&spans, &r(0));
    let res = |k: &str| match first.resource.get(k).and_then(|v| v.value.as_ref()) {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(res("service.name"), "fleet-proxy-e2e");
    assert_eq!(res("deployment.environment"), "e2e");

    // Every span names its receipt, and the receipt names the span.
    for receipt in &receipts {
        let span = span_of(&spans, receipt["id"].as_str().unwrap());
        assert_eq!(span.span.kind, 3, "CLIENT");
        assert_eq!(receipt["trace"]["trace_id"], span.trace_id());
        assert_eq!(receipt["trace"]["span_id"], span.span_id());
        assert_eq!(span.str("trust.run.id"), Some(run.as_str()));
        assert_eq!(span.str("trust.semconv.version"), Some("1.37.0+1.26.0"));
        if let Some(input) = receipt["usage"]["input_tokens"].as_i64() {
            assert_eq!(span.int("gen_ai.usage.input_tokens"), Some(input));
            assert_eq!(span.int("gen_ai.usage.prompt_tokens"), Some(input), "dual emission");
            let output = receipt["usage"]["output_tokens"].as_i64().unwrap();
            assert_eq!(span.int("gen_ai.usage.output_tokens"), Some(output));
            assert_eq!(span.int("gen_ai.usage.completion_tokens"), Some(output));
        }
        // No credential anywhere in a span.
        let dump = format!("{:?}", span.span);
        assert!(!dump.contains(API_KEY) && !dump.contains(RUN_TOKEN), "a credential in span {dump}");
    }

    // 1: the caller's trace continued, the upstream got the proxy's span as its parent.
    let json = span_of(&spans, &r(0));
    assert_eq!(json.span.name, "chat gpt-4o-mini");
    assert_eq!(json.trace_id(), CALLER_TRACE);
    assert_eq!(json.parent_id(), CALLER_SPAN);
    assert_eq!(json.span.trace_state, "vendor=abc");
    assert_eq!(
        forwarded.headers["traceparent"].to_str().unwrap(),
        format!("00-{CALLER_TRACE}-{}-01", json.span_id()),
        "the upstream continues the proxy's span"
    );
    assert_eq!(forwarded.headers["tracestate"], "vendor=abc");
    assert_eq!(json.str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(json.str("gen_ai.provider.name"), Some("openai"));
    assert_eq!(json.str("gen_ai.system"), Some("openai"));
    assert_eq!(json.str("gen_ai.request.model"), Some("gpt-4o-mini"));
    assert_eq!(json.int("gen_ai.request.max_tokens"), Some(64));
    assert_eq!(json.str("gen_ai.response.model"), Some("gpt-4o-mini"));
    assert_eq!(json.str("gen_ai.response.id"), Some("chatcmpl-fleetforge-fake"));
    assert_eq!(json.strs("gen_ai.response.finish_reasons"), Some(vec!["stop".to_owned()]));
    assert_eq!(json.str("http.request.method"), Some("POST"));
    assert_eq!(json.str("server.address"), Some("api.openai.com"));
    assert_eq!(json.int("server.port"), Some(443));
    assert_eq!(json.int("http.response.status_code"), Some(200));
    assert_eq!(json.str("url.full"), Some("https://api.openai.com/v1/chat/completions"));
    assert_eq!(json.str("trust.policy.decision"), Some("allow"));
    assert!(
        json.attr("gen_ai.input.messages").is_none() && json.span.events.is_empty(),
        "content capture is off by default"
    );
    assert!(json.span.status.as_ref().is_none_or(|st| st.code == 0));
    let (start, end) = (json.span.start_time_unix_nano, json.span.end_time_unix_nano);
    assert!(start > 0 && end >= start);

    // 2: a stream started a trace of its own.
    let stream = span_of(&spans, &r(1));
    assert_ne!(stream.trace_id(), CALLER_TRACE);
    assert!(stream.parent_id().is_empty());
    assert_eq!(stream.strs("gen_ai.response.finish_reasons"), Some(vec!["stop".to_owned()]));
    assert!(stream.int("gen_ai.usage.output_tokens").unwrap() > 0);

    // 3: Anthropic.
    let anthropic = span_of(&spans, &r(2));
    assert_eq!(anthropic.span.name, "chat claude-haiku-4-5");
    assert_eq!(anthropic.str("gen_ai.provider.name"), Some("anthropic"));
    assert_eq!(anthropic.str("gen_ai.response.id"), Some("msg_fleetforge_fake"));
    assert_eq!(anthropic.strs("gen_ai.response.finish_reasons"), Some(vec!["end_turn".to_owned()]));

    // 4: the MCP tool call.
    let tool = span_of(&spans, &r(3));
    assert_eq!(tool.span.name, "tools/call get_weather");
    assert_eq!(tool.str("gen_ai.tool.name"), Some("get_weather"));
    assert_eq!(tool.str("gen_ai.operation.name"), Some("execute_tool"));
    assert_eq!(tool.str("mcp.method.name"), Some("tools/call"));

    // 5: the denial is an error span with the contract's error type.
    let deny = span_of(&spans, &r(4));
    assert_eq!(receipts[4]["decision"]["allow"], false);
    assert_eq!(deny.str("trust.policy.decision"), Some("deny"));
    assert_eq!(deny.str("error.type"), Some("policy_denied"));
    assert_eq!(deny.span.status.as_ref().map(|st| st.code), Some(2));

    // `fleetforge-ctl receipts` shows each call's trace id, so an operator can jump to its span.
    let out = std::process::Command::new(fleetforge_e2e::harness::binary("fleetforge-ctl"))
        .env("FLEETFORGE_CONTROL_URL", s.control.url())
        .env("FLEETFORGE_CONTROL_TOKEN", &s.control.token)
        .args(["receipts", &run])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().ends_with("TRACE"), "{table}");
    assert!(table.lines().nth(1).unwrap().ends_with(CALLER_TRACE), "{table}");

    // The exporter's counts are on /metrics.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.proxy.metric("fleetforge_otel_spans_total{result=\"exported\"}").unwrap_or(0.0) < 5.0 {
        assert!(Instant::now() < deadline, "exported spans not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.proxy.metric("fleetforge_otel_spans_total{result=\"dropped\"}").unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn five_calls_exported_over_http_protobuf() {
    five_calls_become_spans_matching_their_receipts("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn five_calls_exported_over_grpc() {
    five_calls_become_spans_matching_their_receipts("grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn control_exports_a_server_span_per_request_continuing_the_callers_trace() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Database::fresh(false).unwrap();
    let endpoint = receiver.endpoint();
    let control = ControlProcess::start_with_env(
        &db,
        &dir.path().join("control-home"),
        None,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
    .unwrap();
    // A request carrying a traceparent, over a raw socket.
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(control.addr).unwrap();
    write!(
        stream,
        "GET /v1/runs/nope HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer {}\r\ntraceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\nConnection: close\r\n\r\n",
        control.token
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    let spans = receiver.wait_for(1).await.unwrap();
    let span = spans.iter().find(|s| s.trace_id() == CALLER_TRACE).expect("the request's span");
    assert_eq!(span.span.kind, 2, "SERVER");
    assert_eq!(span.span.name, "GET /v1/runs/{id}");
    assert_eq!(span.parent_id(), CALLER_SPAN);
    assert_eq!(span.str("http.route"), Some("/v1/runs/{id}"));
    assert_eq!(span.int("http.response.status_code"), Some(404));
    let service = span.resource.get("service.name").and_then(|v| v.value.clone());
    assert_eq!(
        service,
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("fleetforge-control".into()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_capture_is_opt_in_and_never_holds_a_credential() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let s = stack(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint().as_str()),
        ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
    ])
    .await;
    // The agent pastes its own API key into the prompt: the span gets the prompt without it.
    let prompt = format!("Summarise the plan. (debug: my key is {API_KEY})");
    s.python("run-content", "py_openai.py", &["--prompt", &prompt]).await;
    s.python("run-content", "py_openai.py", &["--stream", "--prompt", "Stream it."]).await;
    let receipts = s.control.receipts("run-content", 2).unwrap();
    let spans = receiver.wait_for(2).await.unwrap();
    let json = span_of(&spans, receipts[0]["id"].as_str().unwrap());
    let input = json.str("gen_ai.input.messages").unwrap();
    assert!(input.contains("Summarise the plan.") && input.contains("[redacted]"), "{input}");
    assert!(!format!("{:?}", json.span).contains(API_KEY), "a credential in the captured content");
    let output = json.str("gen_ai.output.messages").unwrap();
    assert!(output.contains("chatcmpl-fleetforge-fake"), "{output}");
    // The older conventions' events carry the same content.
    let names: Vec<&str> = json.span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["gen_ai.content.prompt", "gen_ai.content.completion"]);
    let stream = span_of(&spans, receipts[1]["id"].as_str().unwrap());
    let output = stream.str("gen_ai.output.messages").unwrap();
    assert!(output.starts_with("data: ") && output.contains("[DONE]"), "the stream's text: {output}");
    assert!(stream.str("gen_ai.input.messages").unwrap().contains("Stream it."));
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_semconv_only_when_opted_in() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let s = stack(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint().as_str()),
        ("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental"),
    ])
    .await;
    s.python("run-latest", "py_openai.py", &[]).await;
    let receipts = s.control.receipts("run-latest", 1).unwrap();
    let spans = receiver.wait_for(1).await.unwrap();
    let span = span_of(&spans, receipts[0]["id"].as_str().unwrap());
    assert_eq!(span.str("trust.semconv.version"), Some("1.37.0"));
    assert_eq!(span.str("gen_ai.provider.name"), Some("openai"));
    assert!(span.int("gen_ai.usage.input_tokens").is_some());
    for old in ["gen_ai.system", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"] {
        assert!(span.attr(old).is_none(), "{old} emitted with the latest conventions only");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_the_callers_trace_passes_through_untouched() {
    let s = stack(&[]).await;
    let traceparent = format!("traceparent=00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    s.python("run-pass", "py_openai.py", &["--header", &traceparent]).await;
    let seen = s.upstream.last_request().unwrap();
    assert_eq!(seen.headers["traceparent"].to_str().unwrap(), format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"));
    s.python("run-pass", "py_openai.py", &[]).await;
    assert!(!s.upstream.last_request().unwrap().headers.contains_key("traceparent"), "no trace is started");
    let receipts = s.control.receipts("run-pass", 2).unwrap();
    assert_eq!(receipts[0]["trace"]["trace_id"], CALLER_TRACE);
    assert_eq!(receipts[0]["trace"]["span_id"], CALLER_SPAN, "the receipt names the caller's span");
    assert!(receipts[1]["trace"].is_null());
    assert!(s.proxy.metric("fleetforge_otel_spans_total{result=\"exported\"}").is_err(), "no exporter, no metric");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_collector_never_slows_or_fails_a_call() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let s = stack(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_TIMEOUT", "200")]).await;
    let t0 = Instant::now();
    for _ in 0..5 {
        s.python("run-dead", "py_openai.py", &[]).await;
    }
    let elapsed = t0.elapsed();
    assert_eq!(s.control.receipts("run-dead", 5).unwrap().len(), 5);
    // Five SDK runs (interpreter start-up included) with nothing waiting on the collector.
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.proxy.metric("fleetforge_otel_spans_total{result=\"failed\"}").unwrap_or(0.0) < 5.0 {
        assert!(Instant::now() < deadline, "failed exports not counted:\n{}", s.proxy.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.proxy.metric("fleetforge_otel_spans_total{result=\"exported\"}").unwrap(), 0.0);
}
