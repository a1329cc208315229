//! Budget admission as the meter and settle phases pay it, per call.
//!
//! - `budget_admit_settle`: one reservation against a run's token and cost budget and its
//!   settlement to reported usage, each under the run ledger's lock (a local ledger: no lease);
//! - `budget_admit_settle_leased`: the same through the fleet path ([`Leases::reserve`]) of a
//!   proxy that holds a slice of the run's budget leased from control: the run's lease lock, the
//!   check that the slice covers the call, and the reservation against it (no request to control:
//!   the slice has room);
//! - `estimate_openai_chat`: the input estimate of a three-message chat request (about 90 tokens)
//!   with OpenAI's tokenizer, JSON parse included, as an agent's resent conversation pays it (the
//!   counts of messages seen before are remembered);
//! - `estimate_openai_chat_new`: the same with every message new (tokenized every time);
//! - `estimate_bound`: the conservative byte bound used for other providers.
//!
//! Run: `cargo bench -p fleetforge-proxy --bench budget`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fleetforge_proxy::budget::{self, Ask, Limits};
use fleetforge_proxy::estimate;
use fleetforge_proxy::lease::{Leases, Settings};
use fleetforge_proxy::prices::Price;
use fleetforge_proxy::runs::Runs;
use fleetforge_trust::wire::Held;
use fleetforge_trust::{RunId, Secret};

const CHAT: &str = r#"{"model":"gpt-4o-mini","max_completion_tokens":256,"messages":[{"role":"system","content":"You are a customer-support agent for Acme Cloud. Be polite, ask for the account ID when needed, and never promise refunds."},{"role":"user","content":"My invoice #48213 shows a charge of $129.99 I don't recognise. Can you explain it?"},{"role":"assistant","content":"I'm sorry for the confusion. That charge is the annual renewal of your Pro plan, billed on the 1st."}]}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("budget");
    g.throughput(Throughput::Elements(1));
    let runs = Runs::default();
    let (ledger, _) = runs.begin(&RunId::new("run-bench").unwrap(), || 0);
    let limits = Limits { tokens: Some(u64::MAX / 4), cost_micro_usd: Some(u64::MAX / 4), ..Limits::default() };
    let price = Price { input: 0.15, output: 0.60, cached_input: Some(0.075), max_output: Some(16_384) };
    let ask = Ask { llm: true, input_tokens: 90, output_tokens: Some(256), price: Some(price), cap: true };
    g.bench_function("budget_admit_settle", |b| {
        b.iter(|| {
            let granted = ledger.with_state(|s| budget::reserve(s, black_box(&limits), black_box(&ask), 1)).unwrap();
            ledger.with_state(|s| budget::settle(s, &granted.reservation, Some((120, 30))));
        })
    });
    // A lease client whose control is never reached: the slice it holds covers every call.
    let tls = fleetforge_proxy::tls::upstream_client_config(fleetforge_trust::tls::provider(), None).unwrap();
    let settings = Settings { holder: "bench".into(), slices: 16, idle: Duration::from_secs(3600), fail_open: false };
    let (leases, _thread) =
        Leases::start(settings, "http://127.0.0.1:9".parse().unwrap(), Secret::new("unused".into()), tls).unwrap();
    let run = RunId::new("run-leased").unwrap();
    let (leased_ledger, _) = runs.begin(&run, || 0);
    leased_ledger.with_state(|s| {
        s.held = Some(Held { tokens: Some(u64::MAX / 4), cost_micro_usd: Some(u64::MAX / 4), calls: None })
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    g.bench_function("budget_admit_settle_leased", |b| {
        b.to_async(&runtime).iter(|| async {
            let admitted = leases
                .reserve(&leased_ledger, &run, black_box(&limits), black_box(&limits), black_box(&ask), (1, 1))
                .await
                .unwrap();
            leased_ledger.with_state(|s| budget::settle(s, &admitted.granted.reservation, Some((120, 30))));
        })
    });
    estimate::warm();
    g.bench_function("estimate_openai_chat", |b| {
        b.iter(|| estimate::input_tokens("openai", "gpt-4o-mini", black_box(CHAT.as_bytes())))
    });
    let mut n = 0u64;
    g.bench_function("estimate_openai_chat_new", |b| {
        b.iter(|| {
            n += 1;
            // A number in every message: no count can be remembered.
            let body = CHAT.replace("\"},", &format!(" {n}\"}},")).replace("\"}]", &format!(" {n}\"}}]"));
            estimate::input_tokens("openai", "gpt-4o-mini", black_box(body.as_bytes()))
        })
    });
    g.bench_function("estimate_bound", |b| b.iter(|| estimate::bound(black_box(CHAT.as_bytes()))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
