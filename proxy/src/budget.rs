//! Budgets: a run's limits and the reservation arithmetic the meter and settle phases run on its
//! ledger.
//!
//! A run's [`Limits`] come from its run token (control signs them into the authority block, so
//! every proxy enforces them offline) and, member by member where the token sets none, from the
//! proxy's `[proxy.budget]` defaults for the run's agent, then its tenant, then every run.
//!
//! The guarantee: a call leaves only if what it could cost fits what is left — the run's limit
//! minus what settled calls used minus what calls in flight hold — and it holds that much until
//! it settles. Reserving and settling are one short critical section on the run's ledger, so
//! concurrent calls of one run can never together pass its limit. What a call could cost:
//! - tokens: its input estimate ([`crate::estimate`]) plus its output limit; a request with no
//!   output limit, or one larger than what remains, gets a limit equal to what remains (the cap
//!   obligation, `proxy.budget.cap_output`; never above the model's own `max_output` from the
//!   price list); with the cap off such a call holds everything that remains;
//! - cost: the same tokens at the model's list price (a run with a cost budget cannot call a
//!   model the price list does not know: its cost could not be bounded);
//! - calls: one; wall time: the call must start before the run's deadline.
//!
//! At settlement the reservation is released and what the upstream reported is charged; a
//! successful LLM response that reported no usage is charged its whole reservation and marked
//! estimated.

use fleetforge_trust::capability::Budget as TokenBudget;

use crate::prices::Price;
use crate::runs::RunState;

/// A run's limits; each unset member is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Input + output tokens of the run's LLM calls.
    pub tokens: Option<u64>,
    /// Cost, millionths of a US dollar.
    pub cost_micro_usd: Option<u64>,
    /// Calls the proxy forwards.
    pub calls: Option<u64>,
    /// Unix seconds after which the run makes no more calls.
    pub deadline: Option<u64>,
    /// Rate SLO: LLM tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Rate SLO: calls per minute.
    pub calls_per_minute: Option<u64>,
}

impl Limits {
    /// The limits a run token carries.
    pub fn from_token(max_tokens: Option<u64>, budget: &TokenBudget) -> Self {
        Self {
            tokens: max_tokens,
            cost_micro_usd: budget.cost_micro_usd,
            calls: budget.calls,
            deadline: budget.deadline,
            tokens_per_minute: budget.tokens_per_minute,
            calls_per_minute: budget.calls_per_minute,
        }
    }

    /// These limits, each unset member taken from `fallback`.
    pub fn or(self, fallback: &Limits) -> Limits {
        Limits {
            tokens: self.tokens.or(fallback.tokens),
            cost_micro_usd: self.cost_micro_usd.or(fallback.cost_micro_usd),
            calls: self.calls.or(fallback.calls),
            deadline: self.deadline.or(fallback.deadline),
            tokens_per_minute: self.tokens_per_minute.or(fallback.tokens_per_minute),
            calls_per_minute: self.calls_per_minute.or(fallback.calls_per_minute),
        }
    }

    /// Whether no member is set (the call is not metered at all).
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    /// The rate SLOs.
    pub fn rates(&self) -> crate::rate::Rates {
        crate::rate::Rates { tokens_per_minute: self.tokens_per_minute, calls_per_minute: self.calls_per_minute }
    }

    /// Whether an LLM call's tokens must be estimated before it leaves.
    pub fn meters_tokens(&self) -> bool {
        self.tokens.is_some() || self.cost_micro_usd.is_some() || self.tokens_per_minute.is_some()
    }
}

/// What a call asks of its run's budget.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    /// An LLM call (tokens and cost are metered); other calls count as calls only.
    pub llm: bool,
    /// Input tokens, estimated.
    pub input_tokens: u64,
    /// The output-token limit the request sets.
    pub output_tokens: Option<u64>,
    /// The model's price, when the price list knows it.
    pub price: Option<Price>,
    /// Whether the proxy may set the request's output limit (`proxy.budget.cap_output`).
    pub cap: bool,
}

/// What the meter phase set aside for a call; settle reconciles it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Tokens reserved (input estimate + output limit).
    pub tokens: u64,
    /// Cost reserved, millionths of a US dollar (runs with a cost budget).
    pub cost_micro_usd: u64,
    /// The output tokens of `tokens`: what the response may generate (the stream guard's bound).
    pub output: u64,
    /// Whether the call was admitted under a budget (settle releases and charges it).
    pub metered: bool,
}

/// A reservation that fitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Granted {
    /// What the call holds until it settles.
    pub reservation: Reservation,
    /// The output limit to set on the request (the cap obligation), when one is needed.
    pub output_cap: Option<u64>,
    /// Tokens the run had used (settled) before this call.
    pub tokens_before: u64,
    /// Cost the run had used (settled) before this call.
    pub cost_before_micro_usd: u64,
}

/// A reservation that did not fit: the 429's message, and when a retry could succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What did not fit, with the figures.
    pub message: String,
    /// Seconds after which a retry could fit (calls in flight will have settled); `None` when
    /// waiting cannot help.
    pub retry_after: Option<u64>,
}

/// How long a call refused only for what calls in flight hold is told to wait.
const IN_FLIGHT_RETRY_SECS: u64 = 1;

/// Micro-dollars for `tokens` at `per_million` US dollars per million tokens, rounded up.
fn micro(tokens: u64, per_million: f64) -> u64 {
    (tokens as f64 * per_million).ceil() as u64
}

/// Reserves what `ask` could cost under `limits` on the run's figures `s`, or refuses.
/// `now` is unix seconds.
pub fn reserve(s: &mut RunState, limits: &Limits, ask: &Ask, now: u64) -> Result<Granted, Refusal> {
    let refuse = |message: String, retry_after: Option<u64>| Err(Refusal { message, retry_after });
    if let Some(deadline) = limits.deadline
        && now >= deadline
    {
        let at = fleetforge_trust::text::rfc3339_from_unix_secs(deadline);
        return refuse(format!("the run's wall-time budget ended at {at}; start a new run to continue"), None);
    }
    if let Some(max) = limits.calls
        && s.calls_admitted >= max
    {
        return refuse(
            format!("the run has made the {max} calls its budget allows; start a new run to continue"),
            None,
        );
    }
    let mut granted =
        Granted { tokens_before: s.tokens_used, cost_before_micro_usd: s.cost_micro_usd, ..Granted::default() };
    if ask.llm && (limits.tokens.is_some() || limits.cost_micro_usd.is_some()) {
        let input = ask.input_tokens;
        // Output tokens the budget has room for once the input is paid: `None` = no bound.
        let mut room: Option<u64> = None;
        // Whether the call would fit if every call in flight released its reservation.
        let mut fits_settled = true;
        if let Some(limit) = limits.tokens {
            let free = limit.saturating_sub(s.tokens_used.saturating_add(s.tokens_reserved));
            // The least the call needs: one output token, or with the cap off the limit it asks.
            let least_output = if ask.cap { 1 } else { ask.output_tokens.unwrap_or(1).max(1) };
            fits_settled &= input.saturating_add(least_output) <= limit.saturating_sub(s.tokens_used);
            if input >= free {
                return refuse(
                    format!(
                        "the run's token budget cannot cover this call: its input is about {input} tokens and {free} of {limit} remain ({} used, {} held by calls in flight)",
                        s.tokens_used, s.tokens_reserved
                    ),
                    (fits_settled && s.tokens_reserved > 0).then_some(IN_FLIGHT_RETRY_SECS),
                );
            }
            room = Some(free - input);
        }
        if let Some(limit) = limits.cost_micro_usd {
            let Some(price) = ask.price else {
                return refuse(
                    "the run has a cost budget and the price list has no price for this model, so its cost cannot be bounded; add the model to the price list (proxy.usage.prices)".into(),
                    None,
                );
            };
            let free = limit.saturating_sub(s.cost_micro_usd.saturating_add(s.cost_reserved_micro_usd));
            let input_cost = micro(input, price.input);
            let one_out = micro(1, price.output);
            fits_settled &= input_cost + one_out <= limit.saturating_sub(s.cost_micro_usd);
            if input_cost.saturating_add(one_out) > free {
                return refuse(
                    format!(
                        "the run's cost budget cannot cover this call: its input costs about {input_cost} µUSD and {free} of {limit} µUSD remain ({} used, {} held by calls in flight)",
                        s.cost_micro_usd, s.cost_reserved_micro_usd
                    ),
                    (fits_settled && s.cost_reserved_micro_usd > 0).then_some(IN_FLIGHT_RETRY_SECS),
                );
            }
            if price.output > 0.0 {
                let by_cost = ((free - input_cost) as f64 / price.output).floor() as u64;
                room = Some(room.map_or(by_cost, |r| r.min(by_cost)));
            }
        }
        let output = match (ask.output_tokens, room) {
            (Some(asked), Some(room)) if asked <= room => asked,
            (_, Some(room)) if ask.cap => {
                let cap = ask.price.and_then(|p| p.max_output).map_or(room, |m| m.min(room));
                granted.output_cap = Some(cap);
                cap
            }
            (Some(asked), Some(room)) => {
                return refuse(
                    format!(
                        "the request allows up to {asked} output tokens and the run's budget has room for {room}; lower its output limit (or turn proxy.budget.cap_output on)"
                    ),
                    (fits_settled && (s.tokens_reserved > 0 || s.cost_reserved_micro_usd > 0))
                        .then_some(IN_FLIGHT_RETRY_SECS),
                );
            }
            // No output limit and the cap is off: the call holds everything that remains.
            (None, Some(room)) => room,
            (asked, None) => asked.unwrap_or(0),
        };
        let tokens = input.saturating_add(output);
        let cost = ask.price.map_or(0, |p| micro(input, p.input).saturating_add(micro(output, p.output)));
        granted.reservation.tokens = tokens;
        granted.reservation.output = output;
        if limits.cost_micro_usd.is_some() {
            granted.reservation.cost_micro_usd = cost;
        }
    }
    granted.reservation.metered = true;
    (s.tokens_limit, s.cost_limit_micro_usd) = (limits.tokens, limits.cost_micro_usd);
    s.tokens_reserved = s.tokens_reserved.saturating_add(granted.reservation.tokens);
    s.cost_reserved_micro_usd = s.cost_reserved_micro_usd.saturating_add(granted.reservation.cost_micro_usd);
    s.calls_admitted += 1;
    Ok(granted)
}

/// Releases `reservation` and charges what the call used: `used` tokens and cost as reported,
/// or, when `None` (no usage reported), the whole reservation.
pub fn settle(s: &mut RunState, reservation: &Reservation, used: Option<(u64, u64)>) {
    s.tokens_reserved = s.tokens_reserved.saturating_sub(reservation.tokens);
    s.cost_reserved_micro_usd = s.cost_reserved_micro_usd.saturating_sub(reservation.cost_micro_usd);
    let (tokens, cost) = used.unwrap_or((reservation.tokens, reservation.cost_micro_usd));
    s.tokens_used = s.tokens_used.saturating_add(tokens);
    s.cost_micro_usd = s.cost_micro_usd.saturating_add(cost);
}

#[cfg(test)]
mod tests;
