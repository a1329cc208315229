//! Per-call policy cost, as the authorize phase pays it.
//!
//! - `input_document`: building the input document of an OpenAI chat call (headers filtered,
//!   body parsed for the LLM fields, run state) and encoding it once in the binary layout the
//!   example packs read (shared by every pack; the JSON form is made only if a pack needs it);
//! - `wasm_allowlist`: one Wasm verdict (fresh store and instance, document written in, verdict
//!   parsed) of the example allow-list pack;
//! - `wasm_four_packs`: the four example Wasm packs deciding one call, deny-overrides (one store
//!   for the call, an instance per pack);
//! - `wasm_noop`: a module that answers without reading the document: the engine's fixed cost
//!   per verdict (store, instance, document written in, verdict parsed, slot reset);
//! - `rego_decision`: one Rego decision (allow rule and reasons) with regorus;
//! - `cedar_decision`: one Cedar decision with cedar-policy.
//!
//! Run: `cargo bench -p fleetforge-proxy --bench policy`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use fleetforge_proxy::policy::extract::{CallFacts, document};
use fleetforge_proxy::policy::input::{Document, StateInput};
use fleetforge_proxy::policy::manifest::sha256_hex;
use fleetforge_proxy::policy::{Limits, Pack, PackSet};
use http::HeaderMap;

/// The allocator (feature `mimalloc`, on by default): it returns what a burst allocated, where
/// glibc's malloc kept it (README, Benchmarks).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chat_document() -> Document {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("authorization", "Bearer sk-not-in-the-document".parse().unwrap());
    headers.insert("user-agent", "OpenAI/Python 1.54.0".parse().unwrap());
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o-mini","max_tokens":256,"stream":false,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the fleet."}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]}"#,
    );
    let facts = CallFacts {
        run: "run-bench",
        agent: Some("planner"),
        tenant: Some("default"),
        step: 7,
        time: "2026-11-27T00:00:00.000Z".into(),
        method: "POST",
        scheme: "https",
        host: "api.openai.com",
        port: 443,
        path_and_query: "/v1/chat/completions",
    };
    let state = StateInput {
        calls: 6,
        hosts: vec!["api.openai.com".into()],
        tools: vec!["list_files".into()],
        ..StateInput::default()
    };
    // The body's facts are read once per call (crate::facts), then the document is built.
    let read = fleetforge_proxy::facts::read(facts.host, facts.path_and_query, true, &body);
    document(&facts, &headers, Some(&read), state)
}

/// Writes a one-file pack with its manifest into `dir`.
fn pack(dir: &Path, name: &str, kind: &str, file: &str, text: impl AsRef<[u8]>, config: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(file), text.as_ref()).unwrap();
    let manifest = format!(
        "name = \"{name}\"\nversion = \"1\"\nkind = \"{kind}\"\nmodule = \"{file}\"\nsha256 = \"{}\"\n{config}",
        sha256_hex(text.as_ref())
    );
    std::fs::write(p.join("pack.toml"), manifest).unwrap();
    p
}

const REGO: &str = r#"package fleetforge

import rego.v1

default allow := false

allow if {
	input.request.host in data.config.hosts
	not too_many_tokens
}

too_many_tokens if input.llm.max_tokens > data.config.max_tokens

reasons contains "host not allowed" if not input.request.host in data.config.hosts

reasons contains "max_tokens over the limit" if too_many_tokens
"#;

const CEDAR: &str = r#"
@id("openai-chat")
permit(principal, action == FleetForge::Action::"llm:chat", resource == FleetForge::Host::"api.openai.com");

@id("no-preview")
@reason("preview models are not allowed")
forbid(principal, action == FleetForge::Action::"llm:chat", resource)
when { context has llm && context.llm.model like "*-preview" };
"#;

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let packs = repo().join("policies/packs");
    let wasm: Vec<_> = ["allowlist", "model-limits", "mcp-tools", "info-flow"]
        .iter()
        .map(|n| std::sync::Arc::new(Pack::load(&packs.join(n)).unwrap()))
        .collect();
    let doc = chat_document();

    c.bench_function("input_document", |b| {
        b.iter(|| {
            let doc = chat_document();
            black_box(doc.binary().len());
            doc
        })
    });

    let allowlist = &wasm[0];
    assert!(allowlist.try_evaluate(&doc, &limits).unwrap().allow);
    c.bench_function("wasm_allowlist", |b| b.iter(|| black_box(allowlist.try_evaluate(&doc, &limits).unwrap())));

    for pack in &wasm[1..] {
        let name = format!("wasm_{}", pack.name());
        c.bench_function(&name, |b| b.iter(|| black_box(pack.try_evaluate(&doc, &limits).unwrap())));
    }

    let set = PackSet { packs: wasm.clone() };
    assert!(set.evaluate(&doc, &limits).allow, "{:?}", set.evaluate(&doc, &limits));
    c.bench_function("wasm_four_packs", |b| b.iter(|| black_box(set.evaluate(&doc, &limits))));

    // The engine's fixed cost: a module that returns a verdict without reading the document.
    let noop_dir = tempfile::tempdir().unwrap();
    let noop = wat::parse_str(
        r#"(module (memory (export "memory") 2) (data (i32.const 64) "{\"allow\":true}")
            (func (export "alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "evaluate") (param i32 i32) (result i64) (i64.const 274877906958))
            (func (export "evaluate_binary") (param i32 i32) (result i64) (i64.const 274877906958)))"#,
    )
    .unwrap();
    let noop = Pack::load(&pack(noop_dir.path(), "noop", "wasm", "noop.wasm", &noop, "")).unwrap();
    assert!(noop.try_evaluate(&doc, &limits).unwrap().allow);
    c.bench_function("wasm_noop", |b| b.iter(|| black_box(noop.try_evaluate(&doc, &limits).unwrap())));

    let dir = tempfile::tempdir().unwrap();
    let rego = Pack::load(&pack(
        dir.path(),
        "rego",
        "rego",
        "policy.rego",
        REGO,
        "[config]\nhosts = [\"api.openai.com\", \"api.anthropic.com\"]\nmax_tokens = 4096\n",
    ))
    .unwrap();
    assert!(rego.try_evaluate(&doc, &limits).unwrap().allow);
    c.bench_function("rego_decision", |b| b.iter(|| black_box(rego.try_evaluate(&doc, &limits).unwrap())));

    let cedar = Pack::load(&pack(dir.path(), "cedar", "cedar", "policy.cedar", CEDAR, "")).unwrap();
    assert!(cedar.try_evaluate(&doc, &limits).unwrap().allow);
    c.bench_function("cedar_decision", |b| b.iter(|| black_box(cedar.try_evaluate(&doc, &limits).unwrap())));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
