#![allow(clippy::unwrap_used)]

use super::*;

fn tokens(limit: u64) -> Limits {
    Limits { tokens: Some(limit), ..Limits::default() }
}

fn llm(input: u64, output: Option<u64>) -> Ask {
    Ask { llm: true, input_tokens: input, output_tokens: output, price: None, cap: true }
}

#[test]
fn reservations_never_pass_the_limit_and_settle_to_what_was_used() {
    let mut s = RunState::default();
    let limits = tokens(1000);
    let a = reserve(&mut s, &limits, &llm(100, Some(300)), 0).unwrap();
    assert_eq!((a.reservation.tokens, a.output_cap, a.tokens_before), (400, None, 0));
    // 600 remain: a call asking for 800 output is capped to what remains after its input.
    let b = reserve(&mut s, &limits, &llm(100, Some(800)), 0).unwrap();
    assert_eq!((b.reservation.tokens, b.output_cap), (600, Some(500)));
    assert_eq!(s.tokens_reserved, 1000);
    // Nothing remains while both are in flight; waiting could help, so Retry-After is given.
    let refused = reserve(&mut s, &limits, &llm(10, Some(10)), 0).unwrap_err();
    assert_eq!(refused.retry_after, Some(1), "{}", refused.message);
    settle(&mut s, &a.reservation, Some((150, 0)));
    settle(&mut s, &b.reservation, None);
    assert_eq!((s.tokens_used, s.tokens_reserved), (750, 0), "b reported nothing and is charged in full");
    // 250 remain, no call in flight: an input of 300 can never fit, so no Retry-After.
    let refused = reserve(&mut s, &limits, &llm(300, Some(1)), 0).unwrap_err();
    assert_eq!(refused.retry_after, None);
    assert!(refused.message.contains("250 of 1000 remain"), "{}", refused.message);
}

#[test]
fn with_the_cap_off_a_call_without_a_limit_holds_everything_left_and_a_larger_limit_is_refused() {
    let mut s = RunState::default();
    let limits = tokens(1000);
    let open = Ask { cap: false, ..llm(100, None) };
    let held = reserve(&mut s, &limits, &open, 0).unwrap();
    assert_eq!((held.reservation.tokens, held.output_cap), (1000, None));
    settle(&mut s, &held.reservation, Some((200, 0)));
    let big = Ask { cap: false, ..llm(100, Some(900)) };
    let refused = reserve(&mut s, &limits, &big, 0).unwrap_err();
    assert!(refused.message.contains("up to 900 output tokens"), "{}", refused.message);
}

#[test]
fn the_cap_never_exceeds_the_models_own_output_limit() {
    let mut s = RunState::default();
    let price = Price { input: 2.5, output: 10.0, cached_input: None, max_output: Some(16_384) };
    let ask = Ask { price: Some(price), ..llm(50, None) };
    let granted = reserve(&mut s, &tokens(1_000_000), &ask, 0).unwrap();
    assert_eq!(granted.output_cap, Some(16_384));
}

#[test]
fn cost_budgets_cap_the_output_at_what_the_money_buys() {
    let mut s = RunState::default();
    // 10 µUSD per output token, 2.5 per input token; 2,000 µUSD budget.
    let price = Price { input: 2.5, output: 10.0, cached_input: None, max_output: None };
    let limits = Limits { cost_micro_usd: Some(2_000), ..Limits::default() };
    let granted = reserve(&mut s, &limits, &Ask { price: Some(price), ..llm(100, Some(1000)) }, 0).unwrap();
    // input costs 250, leaving 1,750: 175 output tokens.
    assert_eq!((granted.output_cap, granted.reservation.cost_micro_usd), (Some(175), 2_000));
    // Without a price a cost budget cannot be enforced: refused, naming the fix.
    let refused = reserve(&mut RunState::default(), &limits, &llm(1, Some(1)), 0).unwrap_err();
    assert!(refused.message.contains("price list"), "{}", refused.message);
}

#[test]
fn calls_and_wall_time_budgets() {
    let mut s = RunState::default();
    let limits = Limits { calls: Some(2), deadline: Some(1_000), ..Limits::default() };
    let tool = Ask::default();
    reserve(&mut s, &limits, &tool, 10).unwrap();
    reserve(&mut s, &limits, &tool, 10).unwrap();
    let third = reserve(&mut s, &limits, &tool, 10).unwrap_err();
    assert!(third.message.contains("2 calls"), "{}", third.message);
    let late = reserve(&mut RunState::default(), &limits, &tool, 1_000).unwrap_err();
    assert!(late.message.contains("wall-time budget ended at 1970-01-01T00:16:40"), "{}", late.message);
}

#[test]
fn concurrent_reservations_never_overspend() {
    let ledger = std::sync::Arc::new(std::sync::Mutex::new(RunState::default()));
    let limits = tokens(10_000);
    let admitted: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ledger = ledger.clone();
                scope.spawn(move || {
                    let mut n = 0;
                    for _ in 0..100 {
                        let mut s = ledger.lock().unwrap();
                        if let Ok(g) = reserve(&mut s, &limits, &Ask { cap: false, ..llm(50, Some(50)) }, 0) {
                            settle(&mut s, &g.reservation, None);
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 100, "10,000 tokens fit exactly 100 calls of 100");
    assert_eq!(ledger.lock().unwrap().tokens_used, 10_000);
}
