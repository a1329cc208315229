//! Allowlist pack: calls may go only to listed hosts, and LLM calls may name only listed models.
//!
//! - `hosts`: host globs. A host matching none is denied; an empty list allows no host at all
//!   (an allowlist fails closed — use `["*"]` to restrict models only).
//! - `models`: model globs for LLM calls. Empty means no model restriction.
//!
//! Both checks run, so a call failing both is denied with both reasons.

use fleetforge_policy_sdk::{Input, Verdict, glob};
use serde::Deserialize;

/// The pack's `[config]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Host globs calls may go to (`*` wildcard, e.g. `*.openai.com`).
    pub hosts: Vec<String>,
    /// Model globs LLM calls may use; empty = any model.
    pub models: Vec<String>,
}

/// Denies a host outside `hosts` and an LLM model outside a non-empty `models`.
pub fn evaluate(config: &Config, input: &Input) -> Verdict {
    let mut verdict = Verdict::allow();
    let host = &input.request.host;
    if !glob::any_host(&config.hosts, host) {
        verdict = verdict.and(Verdict::deny(format!("host {host} is not in the allowlist")));
    }
    if let Some(llm) = &input.llm
        && !config.models.is_empty()
        && !glob::any(&config.models, &llm.model)
    {
        verdict = verdict.and(Verdict::deny(format!("model {} is not in the allowlist", llm.model)));
    }
    verdict
}

fleetforge_policy_sdk::policy!(evaluate);

#[cfg(test)]
mod tests {
    use fleetforge_policy_sdk::testing::{decide_both, example_input};
    use fleetforge_policy_sdk::{Input, Verdict};

    use super::evaluate;

    const CONFIG: &str = r#"{"hosts":["api.openai.com","*.anthropic.com"],"models":["gpt-4o*","claude-*"]}"#;

    fn decide(config: &str, input: &Input) -> Verdict {
        decide_both(config, input, evaluate)
    }

    #[test]
    fn listed_host_and_model_are_allowed() {
        assert_eq!(decide(CONFIG, &example_input()), Verdict::allow());
    }

    #[test]
    fn unlisted_host_is_denied_by_name() {
        let mut input = example_input();
        input.request.host = "evil.example".to_owned();
        let verdict = decide(CONFIG, &input);
        assert!(!verdict.allow);
        assert_eq!(verdict.reasons, ["host evil.example is not in the allowlist"]);
    }

    #[test]
    fn host_globs_match_subdomains() {
        let mut input = example_input();
        input.request.host = "api.anthropic.com".to_owned();
        input.llm.as_mut().unwrap().model = "claude-sonnet-4".to_owned();
        assert!(decide(CONFIG, &input).allow);
        input.request.host = "anthropic.com.evil.example".to_owned();
        assert!(!decide(CONFIG, &input).allow);
    }

    #[test]
    fn unlisted_model_is_denied_by_name() {
        let mut input = example_input();
        input.llm.as_mut().unwrap().model = "o3-pro".to_owned();
        let verdict = decide(CONFIG, &input);
        assert!(!verdict.allow);
        assert_eq!(verdict.reasons, ["model o3-pro is not in the allowlist"]);
    }

    #[test]
    fn both_failures_are_reported() {
        let mut input = example_input();
        input.request.host = "evil.example".to_owned();
        input.llm.as_mut().unwrap().model = "o3-pro".to_owned();
        assert_eq!(decide(CONFIG, &input).reasons.len(), 2);
    }

    #[test]
    fn empty_models_means_any_model() {
        let mut input = example_input();
        input.llm.as_mut().unwrap().model = "anything".to_owned();
        assert!(decide(r#"{"hosts":["*"]}"#, &input).allow);
    }

    #[test]
    fn non_llm_calls_skip_the_model_check() {
        let mut input = example_input();
        input.llm = None;
        assert!(decide(r#"{"hosts":["api.openai.com"],"models":["none-*"]}"#, &input).allow);
    }

    #[test]
    fn empty_hosts_allows_no_host() {
        assert!(!decide("{}", &example_input()).allow);
        assert!(!decide("null", &example_input()).allow);
    }

    #[test]
    fn config_typos_fail_closed() {
        let verdict = decide(r#"{"host":["*"]}"#, &example_input());
        assert!(!verdict.allow);
        assert!(verdict.reasons[0].starts_with("policy input is not valid: unknown field `host`"));
    }

    #[test]
    fn manifest_names_the_module_and_its_config_is_valid() {
        let manifest: toml::Table = toml::from_str(include_str!("../pack.toml")).unwrap();
        assert_eq!(manifest["name"].as_str(), Some("allowlist"));
        assert_eq!(manifest["module"].as_str(), Some("allowlist.wasm"));
        // The host hands the `[config]` table to the pack as JSON.
        let config = serde_json::to_string(&manifest["config"]).unwrap();
        let verdict = decide(&config, &example_input());
        assert!(!verdict.reasons.iter().any(|reason| reason.starts_with("policy input is not valid")), "{verdict:?}");
    }
}
