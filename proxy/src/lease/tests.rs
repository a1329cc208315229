use fleetforge_trust::wire::{Held, Slice};

use super::{DEFAULT_OUTPUT, need, shortfall, within};
use crate::budget::{self, Ask, Limits};
use crate::runs::RunState;

fn tokens(limit: u64) -> Limits {
    Limits { tokens: Some(limit), ..Limits::default() }
}

fn llm(input: u64, output: Option<u64>) -> Ask {
    Ask { llm: true, input_tokens: input, output_tokens: output, price: None, cap: true }
}

#[test]
fn a_call_needs_its_input_and_output_limit() {
    assert_eq!(need(&tokens(1000), &llm(100, Some(50))).tokens, 150);
    assert_eq!(need(&tokens(1000), &llm(100, None)).tokens, 100 + DEFAULT_OUTPUT);
    let calls = Limits { calls: Some(3), ..Limits::default() };
    assert_eq!(need(&calls, &llm(100, None)), Slice { calls: 1, ..Slice::default() });
}

#[test]
fn nothing_held_leases_the_need_and_a_slice() {
    let s = RunState::default();
    let want = shortfall(&s, &tokens(1600), &Slice { tokens: 150, ..Slice::default() }, 16).expect("short");
    assert_eq!(want.tokens, 150 + 100);
}

#[test]
fn what_is_held_serves_calls_until_it_runs_short() {
    let mut s = RunState {
        held: Some(Held { tokens: Some(400), ..Held::default() }),
        tokens_used: 100,
        tokens_reserved: 150,
        ..RunState::default()
    };
    let need = Slice { tokens: 150, ..Slice::default() };
    assert_eq!(shortfall(&s, &tokens(1600), &need, 16), None, "150 of 400 are free");
    s.tokens_reserved = 200;
    assert_eq!(shortfall(&s, &tokens(1600), &need, 16).map(|w| w.tokens), Some(50 + 100));
}

#[test]
fn a_member_control_does_not_limit_is_not_leased() {
    let s = RunState { held: Some(Held { tokens: None, ..Held::default() }), ..RunState::default() };
    assert_eq!(shortfall(&s, &tokens(1600), &Slice { tokens: 150, ..Slice::default() }, 16), None);
    let limits = within(&tokens(1600), &tokens(1600), s.held.as_ref());
    assert_eq!(limits.tokens, Some(1600), "the token's own limit still applies");
}

#[test]
fn calls_are_admitted_only_against_what_is_held() {
    let limits = Limits { tokens: Some(1000), tokens_per_minute: Some(5000), ..Limits::default() };
    assert_eq!(within(&limits, &tokens(1000), None).tokens, Some(0), "nothing leased yet");
    let held = Held { tokens: Some(300), ..Held::default() };
    let lowered = within(&limits, &tokens(1000), Some(&held));
    assert_eq!((lowered.tokens, lowered.tokens_per_minute), (Some(300), Some(5000)));
    let mut s = RunState { held: Some(held), ..RunState::default() };
    let granted = budget::reserve(&mut s, &lowered, &llm(100, None), 0).expect("fits what is held");
    assert_eq!(granted.output_cap, Some(200), "capped at what this proxy holds");
    assert!(budget::reserve(&mut s, &lowered, &llm(100, None), 0).is_err(), "the holding is spent");
}

#[test]
fn a_proxy_holding_the_whole_budget_does_not_ask_for_more() {
    let s = RunState {
        held: Some(Held { tokens: Some(1600), ..Held::default() }),
        tokens_used: 1590,
        ..RunState::default()
    };
    assert_eq!(shortfall(&s, &tokens(1600), &Slice { tokens: 150, ..Slice::default() }, 16), None);
}
