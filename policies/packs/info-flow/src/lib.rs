//! Info-flow pack: once a run has read secrets, it may not talk to outbound hosts.
//!
//! - `secret_reading_tools`: MCP tool-name globs whose results are secret.
//! - `outbound_hosts`: host globs where data would leave the trust boundary.
//!
//! The run is tainted from the first call of a secret-reading tool on (`state.tools`, or this
//! call itself when it is a `tools/call` of one); from then on every call to an outbound host is
//! denied, naming the tool that tainted the run and the host. Taint never clears within a run.

use fleetforge_policy_sdk::{Input, Verdict, glob};
use serde::Deserialize;

/// The pack's `[config]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Globs of MCP tools that read secrets.
    pub secret_reading_tools: Vec<String>,
    /// Globs of hosts a tainted run may not call.
    pub outbound_hosts: Vec<String>,
}

/// Denies calls to `outbound_hosts` once the run has called a secret-reading tool.
pub fn evaluate(config: &Config, input: &Input) -> Verdict {
    let host = &input.request.host;
    if !glob::any_host(&config.outbound_hosts, host) {
        return Verdict::allow();
    }
    let is_secret = |tool: &&str| glob::any(&config.secret_reading_tools, tool);
    let taint =
        input.state.tools.iter().map(String::as_str).find(is_secret).or(input.mcp_tool_call().filter(is_secret));
    match taint {
        Some(tool) => Verdict::deny(format!(
            "run read secrets with MCP tool {tool}; outbound calls to host {host} are denied for the rest of the run"
        )),
        None => Verdict::allow(),
    }
}

fleetforge_policy_sdk::policy!(evaluate);

#[cfg(test)]
mod tests {
    use fleetforge_policy_sdk::testing::{decide_both, example_input};
    use fleetforge_policy_sdk::{Input, Verdict};

    use super::evaluate;

    const CONFIG: &str = r#"{"secret_reading_tools":["read_secret","vault_*"],
        "outbound_hosts":["*.pastebin.com","hooks.slack.com"]}"#;

    fn decide(config: &str, input: &Input) -> Verdict {
        decide_both(config, input, evaluate)
    }

    fn call(host: &str, tools_so_far: &[&str], this_tool: Option<&str>) -> Input {
        let mut input = example_input();
        input.request.host = host.to_owned();
        input.state.tools = tools_so_far.iter().map(|tool| (*tool).to_owned()).collect();
        input.mcp.as_mut().unwrap().tool = this_tool.map(str::to_owned);
        input
    }

    #[test]
    fn untainted_runs_may_call_outbound_hosts() {
        assert_eq!(decide(CONFIG, &call("hooks.slack.com", &["read_file"], None)), Verdict::allow());
    }

    #[test]
    fn tainted_runs_may_not_call_outbound_hosts() {
        let verdict = decide(CONFIG, &call("api.pastebin.com", &["read_file", "vault_get", "read_secret"], None));
        assert!(!verdict.allow);
        assert_eq!(
            verdict.reasons,
            [
                "run read secrets with MCP tool vault_get; outbound calls to host api.pastebin.com are denied for the rest of the run"
            ]
        );
    }

    #[test]
    fn this_call_can_taint_the_run() {
        let verdict = decide(CONFIG, &call("hooks.slack.com", &[], Some("read_secret")));
        assert!(!verdict.allow);
        assert!(verdict.reasons[0].contains("MCP tool read_secret"));
    }

    #[test]
    fn only_tools_call_taints() {
        let mut input = call("hooks.slack.com", &[], Some("read_secret"));
        input.mcp.as_mut().unwrap().method = "tools/list".to_owned();
        assert!(decide(CONFIG, &input).allow);
    }

    #[test]
    fn tainted_runs_may_still_call_other_hosts() {
        assert!(decide(CONFIG, &call("api.openai.com", &["read_secret"], None)).allow);
    }

    #[test]
    fn empty_config_allows_everything() {
        assert!(decide("{}", &call("hooks.slack.com", &["read_secret"], None)).allow);
    }

    #[test]
    fn manifest_names_the_module_and_its_config_is_valid() {
        let manifest: toml::Table = toml::from_str(include_str!("../pack.toml")).unwrap();
        assert_eq!(manifest["name"].as_str(), Some("info-flow"));
        assert_eq!(manifest["module"].as_str(), Some("info-flow.wasm"));
        // The host hands the `[config]` table to the pack as JSON.
        let config = serde_json::to_string(&manifest["config"]).unwrap();
        let verdict = decide(&config, &example_input());
        assert!(!verdict.reasons.iter().any(|reason| reason.starts_with("policy input is not valid")), "{verdict:?}");
    }
}
