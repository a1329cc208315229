//! The Hello Fleet upstream: a fake OpenAI-style LLM, a tool and an MCP server behind one HTTPS
//! listener on 127.0.0.1, with a certificate from a throwaway CA the demo's proxy is told to trust.
//!
//! - `api.openai.com` — `POST /v1/chat/completions`, JSON or SSE (`"stream": true`, a usage chunk
//!   when `stream_options.include_usage`); answers are deterministic, so a strict replay can be
//!   compared with the recording byte for byte.
//! - `tools.hello-fleet.test` — `GET /weather?city=…`: verifies the per-call capability in
//!   `x-fleetforge-capability` offline against control's Biscuit root keys and refuses the call
//!   (401) without a valid one; the answer says which run the capability was for.
//! - `mcp.hello-fleet.test` — `POST /mcp`: JSON-RPC `tools/list` and `tools/call`.
//!
//! Every accepted connection is counted, so the demo can show that a strict replay opened none.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use fleetforge_trust::capability::{self as cap, CallFacts, RootKeys};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The LLM API host.
pub const LLM_HOST: &str = "api.openai.com";
/// The tool host (it receives per-call capabilities).
pub const TOOL_HOST: &str = "tools.hello-fleet.test";
/// The MCP server host.
pub const MCP_HOST: &str = "mcp.hello-fleet.test";

/// Largest request body the fake upstream reads.
const MAX_BODY: usize = 1 << 20;
/// Pause between SSE chunks, so the stream is a stream.
const CHUNK_PAUSE: Duration = Duration::from_millis(15);

/// The running upstream; dropping it stops the listener.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes the upstream's CA to `ca_path` and starts serving on 127.0.0.1 (a free port).
/// `roots` are control's capability root keys, for the tool's offline check.
pub async fn start(ca_path: &Path, roots: RootKeys) -> anyhow::Result<Upstream> {
    let tls = server_config(ca_path)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.context("binding the demo upstream")?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let roots = Arc::new(roots);
    let task = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, roots) = (acceptor.clone(), roots.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req| {
                    let roots = roots.clone();
                    async move { Ok::<_, Infallible>(route(req, &roots).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(Upstream { addr, connections, task })
}

/// A CA (written to `ca_path`) and a leaf for the three hosts, as a rustls server config.
fn server_config(ca_path: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let name = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().context("generating the demo upstream CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("Hello Fleet demo upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(7);
    let ca_cert = ca.self_signed(&ca_key).context("self-signing the demo upstream CA")?;
    std::fs::write(ca_path, ca_cert.pem()).with_context(|| format!("writing {}", ca_path.display()))?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().context("generating the demo upstream key")?;
    let mut leaf = CertificateParams::new(vec![LLM_HOST.to_owned(), TOOL_HOST.to_owned(), MCP_HOST.to_owned()])?;
    leaf.distinguished_name = name(LLM_HOST);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = now + time::Duration::days(7);
    let cert = leaf.signed_by(&key, &issuer).context("signing the demo upstream certificate")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .context("building the demo upstream TLS config")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Reply = Response<DemoBody>;

async fn route(req: Request<Incoming>, roots: &RootKeys) -> Reply {
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default().to_owned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let capability = req.headers().get("x-fleetforge-capability").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json_reply(StatusCode::BAD_REQUEST, &json!({"error": format!("cannot read the body: {e}")})),
    };
    match (host.as_str(), method.as_str(), path.as_str()) {
        (LLM_HOST, "POST", "/v1/chat/completions") => chat(&body),
        (TOOL_HOST, "GET", "/weather") => weather(&query, capability.as_deref(), &path, roots),
        (MCP_HOST, "POST", "/mcp") => mcp(&body),
        _ => json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("no route {method} {host}{path}")})),
    }
}

/// The answer the fake LLM gives to `prompt`: deterministic, a few sentences.
pub fn answer(prompt: &str) -> String {
    let topic = prompt.trim().trim_end_matches(['?', '.', '!']);
    format!(
        "Here is a short plan for \"{topic}\": check the forecast first, pick two sights close together, \
         and leave an hour free for the unexpected."
    )
}

/// Tokens as the fake LLM counts them: words.
fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn chat(body: &[u8]) -> Reply {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return json_reply(StatusCode::BAD_REQUEST, &json!({"error": {"message": "the body is not JSON"}}));
    };
    let model = req["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let prompt = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let text = answer(&prompt);
    let id =
        format!("chatcmpl-demo-{}", fleetforge_trust::canonical::hex(&fleetforge_trust::canonical::sha256(body)[..6]));
    let usage = json!({
        "prompt_tokens": words(&prompt) + 8,
        "completion_tokens": words(&text),
        "total_tokens": words(&prompt) + 8 + words(&text),
    });
    let created = 1_767_225_600; // fixed, so answers are the same every time
    if req["stream"] != true {
        return json_reply(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            }),
        );
    }
    let include_usage = req["stream_options"]["include_usage"] == true;
    let mut events: Vec<Value> = text
        .split_inclusive(' ')
        .map(|piece| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
        })
        .collect();
    events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
    if include_usage {
        events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [], "usage": usage}));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for event in events {
            if tx.send(Bytes::from(format!("data: {event}\n\n"))).await.is_err() {
                return;
            }
            tokio::time::sleep(CHUNK_PAUSE).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let mut reply = Response::new(DemoBody::Stream(rx));
    reply.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    reply
}

fn weather(query: &str, capability: Option<&str>, path: &str, roots: &RootKeys) -> Reply {
    let Some(token) = capability else {
        return json_reply(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "no x-fleetforge-capability: this tool serves only calls FleetForge authorized"}),
        );
    };
    let facts =
        CallFacts { host: TOOL_HOST, method: "GET", path, model: None, step: 0, now: std::time::SystemTime::now() };
    let run = match cap::verify_for_call(token, roots, &facts) {
        Ok(run) => run,
        Err(e) => {
            return json_reply(StatusCode::UNAUTHORIZED, &json!({"error": format!("capability refused: {e}")}));
        }
    };
    let city = query.split('&').find_map(|p| p.strip_prefix("city=")).unwrap_or("Oslo");
    json_reply(
        StatusCode::OK,
        &json!({"city": city, "forecast": "light snow, -2 °C", "capability": {"verified": true, "run": run}}),
    )
}

fn mcp(body: &[u8]) -> Reply {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}),
        );
    };
    let id = req["id"].clone();
    let result = match req["method"].as_str() {
        Some("tools/list") => json!({"tools": [
            {"name": "search_docs", "description": "Search the team's documents", "inputSchema": {"type": "object"}},
            {"name": "delete_repo", "description": "Delete a repository", "inputSchema": {"type": "object"}},
        ]}),
        Some("tools/call") => {
            let name = req["params"]["name"].as_str().unwrap_or_default();
            let query = req["params"]["arguments"]["query"].as_str().unwrap_or_default();
            json!({"content": [{"type": "text", "text": format!("{name}: 2 documents match {query:?}: packing-list.md, oslo-notes.md")}]})
        }
        other => {
            return json_reply(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("no method {other:?}")}}),
            );
        }
    };
    json_reply(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut reply = Response::new(DemoBody::Full(Full::new(Bytes::from(body.to_string()))));
    *reply.status_mut() = status;
    reply.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    reply
}

/// A whole body or a stream of chunks.
pub enum DemoBody {
    /// Known up front.
    Full(Full<Bytes>),
    /// Chunks as they are produced.
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for DemoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            DemoBody::Full(full) => Pin::new(full).poll_frame(cx),
            DemoBody::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
        }
    }
}
