//! Per-call capability cost, as the authorize phase pays it, next to what the cache saves.
//!
//! - `per_call`: what an LLM call pays — the run token from the verified-token cache and the
//!   Datalog authorization of the call's facts, on the token's world loaded once
//!   (`trust/src/capability/decide.rs`; everything `Capabilities::check` does for a non-tool
//!   upstream but the revocation lookup and the remembered decision);
//! - `per_call_tool`: what a tool call pays the first time its facts are decided — the same plus
//!   one block appended (bound to host, method, path, model, 60 s expiry; one ed25519 signature,
//!   the key pairs being derived once per run token) and serialized for `x-fleetforge-capability`;
//! - `mint_call`: what a tool call pays when the proxy remembers the decision (single-block run
//!   tokens, the same call facts): the block, its signature and the serialization;
//! - `check_llm_call` / `check_tool_call`: the authorize phase's whole capability step as the
//!   proxy runs it (`Capabilities::check` on a call that arrived with its run token: cached
//!   verification, revocation lookup, remembered decision, and for a tool the per-call token and
//!   its header), once the run's first call has warmed the caches;
//! - `verify_uncached`: checking a run token's signature and reading its claims, which the cache
//!   keeps off the per-call path (once per token);
//! - `attenuate_offline`: appending a block to a token without its key (what
//!   `fleetforge-ctl capability attenuate` does);
//! - `tool_verify`: what a tool pays to check a per-call token offline (signatures of both
//!   blocks plus the authorization).
//!
//! Run: `cargo bench -p fleetforge-proxy --bench capability`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use fleetforge_proxy::capability::Capabilities;
use fleetforge_proxy::context::{Call, ConnCtx, ConnMode, Identity, IdentitySource, Target, Token};
use fleetforge_proxy::metrics::ListenerKind;
use fleetforge_trust::RunId;
use fleetforge_trust::capability::{self as cap, CallFacts, Grants, RootKeys, RunClaims, RunToken};
use http::Method;
use http::uri::Scheme;

/// The allocator (feature `mimalloc`, on by default): it returns what a burst allocated, where
/// glibc's malloc kept it (README, Benchmarks).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn setup() -> (RootKeys, String) {
    let (private, public) = cap::generate_root();
    let root = cap::root_from_bytes(&private).unwrap();
    let mut roots = RootKeys::default();
    roots.insert(1, &public).unwrap();
    let claims = RunClaims {
        run: "run-bench".into(),
        tenant: "default".into(),
        agent: Some("planner".into()),
        expires: cap::unix_now() + 3600,
        grants: Grants {
            hosts: vec!["api.openai.com".into(), "*.tools.example".into()],
            methods: vec!["POST".into()],
            paths: vec!["/v1/".into()],
            models: vec!["gpt-4o*".into()],
            max_tokens: Some(100_000),
            ..Grants::default()
        },
    };
    (roots, cap::mint(&root, 1, &claims).unwrap().token)
}

fn facts() -> CallFacts<'static> {
    CallFacts {
        host: "api.openai.com",
        method: "POST",
        path: "/v1/chat/completions",
        model: Some("gpt-4o-mini"),
        step: 42,
        now: SystemTime::now(),
    }
}

fn bench(c: &mut Criterion) {
    let (roots, token) = setup();
    let caps = Capabilities::new(Duration::from_secs(60));
    caps.set_roots(roots.clone());
    caps.run_token(&token).unwrap();
    let mut g = c.benchmark_group("capability");
    g.bench_function("per_call", |b| {
        b.iter(|| {
            let t = caps.run_token(black_box(&token)).unwrap();
            t.authorize("run-bench", &facts()).unwrap();
        })
    });
    g.bench_function("per_call_tool", |b| {
        b.iter(|| {
            let t = caps.run_token(black_box(&token)).unwrap();
            let per_call = t.authorize_call("run-bench", &facts(), Duration::from_secs(60)).unwrap();
            black_box(per_call.to_base64().unwrap())
        })
    });
    g.bench_function("mint_call", |b| {
        b.iter(|| {
            let t = caps.run_token(black_box(&token)).unwrap();
            black_box(t.mint_call(&facts(), Duration::from_secs(60)).unwrap().to_base64().unwrap())
        })
    });
    let conn = ConnCtx {
        listener: ListenerKind::Sidecar,
        worker: 0,
        mode: ConnMode::Sidecar,
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        target: None,
        base_path: String::new(),
        credentials: None,
        default_run: None,
        seal: true,
    };
    let mut call = Call::new(&conn, Method::POST);
    call.path = "/v1/chat/completions".into();
    call.facts =
        Some(fleetforge_proxy::facts::RequestFacts { model: Some("gpt-4o-mini".into()), ..Default::default() });
    call.target = Some(Target::new(Scheme::HTTPS, "api.openai.com".into(), 443).unwrap());
    call.identity = Some(Identity {
        run: RunId::new("run-bench").unwrap(),
        token: Some(Token::new(token.clone())),
        source: IdentitySource::ProxyAuthorization,
        step: 42,
        step_label: None,
    });
    caps.check(&call, true).unwrap();
    g.bench_function("check_llm_call", |b| b.iter(|| black_box(caps.check(black_box(&call), false).unwrap())));
    g.bench_function("check_tool_call", |b| b.iter(|| black_box(caps.check(black_box(&call), true).unwrap())));
    g.bench_function("verify_uncached", |b| b.iter(|| black_box(RunToken::verify(black_box(&token), &roots).unwrap())));
    let verified = RunToken::verify(&token, &roots).unwrap();
    g.bench_function("attenuate_offline", |b| {
        b.iter(|| {
            black_box(
                cap::attenuate(
                    black_box(&token),
                    &Grants { paths: vec!["/v1/chat/".into()], ..Grants::default() },
                    None,
                    SystemTime::now(),
                )
                .unwrap(),
            )
        })
    });
    let per_call =
        verified.authorize_call("run-bench", &facts(), Duration::from_secs(60)).unwrap().to_base64().unwrap();
    g.bench_function("tool_verify", |b| {
        b.iter(|| black_box(cap::verify_for_call(black_box(&per_call), &roots, &facts()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
