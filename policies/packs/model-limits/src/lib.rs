//! Model-limits pack: deny listed LLM models and cap output tokens per model.
//!
//! - `deny_models`: model globs that are denied outright.
//! - `models`: `{"<glob>": {"max_tokens": N}}`. When several globs match a model the lowest cap
//!   applies, so the result does not depend on the order of the table.
//! - `default_max_tokens`: the cap for models no glob in `models` matches; `null`/absent = none.
//!
//! A request asking for more than its cap, or setting no limit at all, is allowed with the
//! obligation `max_tokens_cap` and a reason saying why; a request within its cap passes untouched.
//! Calls that are not LLM calls are allowed.

use std::collections::BTreeMap;

use fleetforge_policy_sdk::{Input, Verdict, glob};
use serde::Deserialize;

/// The pack's `[config]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Per-model-glob limits.
    pub models: BTreeMap<String, ModelLimit>,
    /// Model globs that are denied.
    pub deny_models: Vec<String>,
    /// Output-token cap for models that match no glob in `models`.
    pub default_max_tokens: Option<u64>,
}

/// Limits for the models one glob matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimit {
    /// Output-token cap.
    pub max_tokens: u64,
}

/// Denies `deny_models`, caps output tokens at the model's limit.
pub fn evaluate(config: &Config, input: &Input) -> Verdict {
    let Some(llm) = &input.llm else {
        return Verdict::allow();
    };
    let model = &llm.model;
    if let Some(pattern) = glob::first_match(&config.deny_models, model) {
        return Verdict::deny(format!("model {model} is denied (deny_models: {pattern})"));
    }
    let cap = config
        .models
        .iter()
        .filter(|(pattern, _)| glob::matches(pattern, model))
        .map(|(_, limit)| limit.max_tokens)
        .min()
        .or(config.default_max_tokens);
    match (cap, llm.max_tokens) {
        (Some(cap), Some(asked)) if asked > cap => Verdict::allow()
            .cap_max_tokens(cap)
            .with_reason(format!("max_tokens {asked} exceeds the cap {cap} for model {model}; capped to {cap}")),
        (Some(cap), None) => Verdict::allow()
            .cap_max_tokens(cap)
            .with_reason(format!("max_tokens not set; capped to {cap} for model {model}")),
        _ => Verdict::allow(),
    }
}

fleetforge_policy_sdk::policy!(evaluate);

#[cfg(test)]
mod tests {
    use fleetforge_policy_sdk::testing::{decide_both, example_input};
    use fleetforge_policy_sdk::{Input, Verdict};

    use super::evaluate;

    const CONFIG: &str = r#"{"models":{"gpt-4o*":{"max_tokens":4096},"gpt-4o-mini":{"max_tokens":256}},
        "deny_models":["o1-*","*-preview"],"default_max_tokens":1024}"#;

    fn decide(config: &str, input: &Input) -> Verdict {
        decide_both(config, input, evaluate)
    }

    fn with_model(model: &str, max_tokens: Option<u64>) -> Input {
        let mut input = example_input();
        let llm = input.llm.as_mut().unwrap();
        llm.model = model.to_owned();
        llm.max_tokens = max_tokens;
        input
    }

    #[test]
    fn denied_models_are_denied_by_name() {
        let verdict = decide(CONFIG, &with_model("o1-pro", Some(10)));
        assert!(!verdict.allow);
        assert_eq!(verdict.reasons, ["model o1-pro is denied (deny_models: o1-*)"]);
    }

    #[test]
    fn within_the_cap_passes_untouched() {
        assert_eq!(decide(CONFIG, &with_model("gpt-4o", Some(4096))), Verdict::allow());
    }

    #[test]
    fn over_the_cap_is_capped_with_a_reason() {
        let verdict = decide(CONFIG, &with_model("gpt-4o", Some(10_000)));
        assert!(verdict.allow);
        assert_eq!(verdict.obligations.max_tokens_cap, Some(4096));
        assert_eq!(verdict.reasons, ["max_tokens 10000 exceeds the cap 4096 for model gpt-4o; capped to 4096"]);
    }

    #[test]
    fn the_lowest_matching_cap_wins() {
        let verdict = decide(CONFIG, &with_model("gpt-4o-mini", Some(512)));
        assert_eq!(verdict.obligations.max_tokens_cap, Some(256));
    }

    #[test]
    fn missing_max_tokens_gets_the_cap() {
        let verdict = decide(CONFIG, &with_model("gpt-4o", None));
        assert!(verdict.allow);
        assert_eq!(verdict.obligations.max_tokens_cap, Some(4096));
        assert_eq!(verdict.reasons, ["max_tokens not set; capped to 4096 for model gpt-4o"]);
    }

    #[test]
    fn unmatched_models_use_the_default_cap() {
        let verdict = decide(CONFIG, &with_model("claude-sonnet-4", Some(2000)));
        assert_eq!(verdict.obligations.max_tokens_cap, Some(1024));
    }

    #[test]
    fn no_cap_configured_means_no_obligation() {
        let config = r#"{"models":{"gpt-*":{"max_tokens":10}}}"#;
        assert_eq!(decide(config, &with_model("claude-sonnet-4", None)), Verdict::allow());
        assert_eq!(decide("null", &with_model("gpt-4o", Some(1 << 40))), Verdict::allow());
    }

    #[test]
    fn non_llm_calls_are_allowed() {
        let mut input = example_input();
        input.llm = None;
        assert_eq!(decide(CONFIG, &input), Verdict::allow());
    }

    #[test]
    fn malformed_limits_fail_closed() {
        let verdict = decide(r#"{"models":{"gpt-*":{"max_token":10}}}"#, &example_input());
        assert!(!verdict.allow);
        assert!(verdict.reasons[0].starts_with("policy input is not valid: "));
    }

    #[test]
    fn manifest_names_the_module_and_its_config_is_valid() {
        let manifest: toml::Table = toml::from_str(include_str!("../pack.toml")).unwrap();
        assert_eq!(manifest["name"].as_str(), Some("model-limits"));
        assert_eq!(manifest["module"].as_str(), Some("model-limits.wasm"));
        // The host hands the `[config]` table to the pack as JSON.
        let config = serde_json::to_string(&manifest["config"]).unwrap();
        let verdict = decide(&config, &example_input());
        assert!(!verdict.reasons.iter().any(|reason| reason.starts_with("policy input is not valid")), "{verdict:?}");
    }
}
