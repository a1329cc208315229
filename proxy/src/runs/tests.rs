#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fleetforge_trust::RunId;

use super::Runs;

fn run(id: &str) -> RunId {
    RunId::new(id).unwrap()
}

#[test]
fn steps_are_unique_and_monotonic_per_run_under_concurrency() {
    let runs = Arc::new(Runs::default());
    let r1 = run("r1");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (runs, r1) = (runs.clone(), r1.clone());
            std::thread::spawn(move || {
                (0..1000)
                    .map(|_| {
                        let (ledger, step) = runs.begin(&r1, || 0);
                        ledger.end_call();
                        step
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        let steps = h.join().unwrap();
        assert!(steps.windows(2).all(|w| w[0] < w[1]));
        all.extend(steps);
    }
    assert_eq!(all.len(), 4000);
    assert_eq!(all.iter().max(), Some(&4000));
    assert_eq!(runs.begin(&run("other"), || 0).1, 1);
}

#[test]
fn the_ledger_keeps_what_policy_packs_see() {
    let runs = Runs::default();
    let (ledger, _) = runs.begin(&run("r"), || 0);
    ledger.note_call("api.openai.com", None);
    ledger.note_call("tools.internal", Some("search"));
    ledger.note_call("api.openai.com", Some("search"));
    let state = ledger.policy_state();
    assert_eq!(state.calls, 3);
    assert_eq!(state.hosts, ["api.openai.com", "tools.internal"]);
    assert_eq!(state.tools, ["search"]);
    assert_eq!((state.tokens, state.cost_micro_usd), (0, 0));
    assert!(Arc::ptr_eq(&ledger, &runs.get(&run("r")).unwrap()), "one ledger per run");
    let (other, _) = runs.begin(&run("other"), || 0);
    assert_eq!(other.policy_state().calls, 0, "another run's ledger starts empty");
}

#[test]
fn idle_runs_are_evicted_unless_a_call_is_in_flight_and_steps_resume() {
    let runs = Runs::new(Duration::from_millis(20));
    let (idle, _) = runs.begin(&run("idle"), || 0);
    idle.end_call();
    let (busy, _) = runs.begin(&run("busy"), || 0);
    std::thread::sleep(Duration::from_millis(50));
    // A new run triggers the sweep: the idle run goes, the one with a call in flight stays.
    let (fresh, _) = runs.begin(&run("fresh"), || 0);
    assert!(runs.get(&run("idle")).is_none(), "an idle run with nothing in flight is evicted");
    assert!(runs.get(&run("busy")).is_some(), "a run with a call in flight is kept");
    assert_eq!(runs.len(), 2);
    busy.end_call();
    fresh.end_call();
    // The evicted run comes back: its steps continue after what the spool recorded for it.
    let (back, step) = runs.begin(&run("idle"), || 7);
    assert_eq!(step, 8);
    assert_eq!(back.policy_state().calls, 0, "a fresh ledger");
    back.end_call();
}
