//! MCP-tools pack: deny `tools/call` of listed tools.
//!
//! - `deny_tools`: tool-name globs. A `tools/call` naming a matching tool is denied; a
//!   `tools/call` whose tool name the proxy could not read is denied too when the list is not
//!   empty (it cannot be shown to be harmless). Other MCP methods and non-MCP calls are allowed.

use fleetforge_policy_sdk::{Input, Verdict, glob};
use serde::Deserialize;

/// The pack's `[config]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Globs of MCP tool names that may not be called.
    pub deny_tools: Vec<String>,
}

/// Denies `tools/call` of a tool matching `deny_tools`.
pub fn evaluate(config: &Config, input: &Input) -> Verdict {
    let Some(mcp) = input.mcp.as_ref().filter(|mcp| mcp.method == "tools/call") else {
        return Verdict::allow();
    };
    match mcp.tool.as_deref() {
        Some(tool) => match glob::first_match(&config.deny_tools, tool) {
            Some(pattern) => Verdict::deny(format!("MCP tool {tool} is denied (deny_tools: {pattern})")),
            None => Verdict::allow(),
        },
        None if !config.deny_tools.is_empty() => Verdict::deny("MCP tools/call names no tool"),
        None => Verdict::allow(),
    }
}

fleetforge_policy_sdk::policy!(evaluate);

#[cfg(test)]
mod tests {
    use fleetforge_policy_sdk::testing::{decide_both, example_input};
    use fleetforge_policy_sdk::{Input, Verdict};

    use super::evaluate;

    const CONFIG: &str = r#"{"deny_tools":["delete_*","shell"]}"#;

    fn decide(config: &str, input: &Input) -> Verdict {
        decide_both(config, input, evaluate)
    }

    fn calling(method: &str, tool: Option<&str>) -> Input {
        let mut input = example_input();
        let mcp = input.mcp.as_mut().unwrap();
        mcp.method = method.to_owned();
        mcp.tool = tool.map(str::to_owned);
        input
    }

    #[test]
    fn denied_tools_are_denied_by_name() {
        let verdict = decide(CONFIG, &calling("tools/call", Some("delete_repo")));
        assert!(!verdict.allow);
        assert_eq!(verdict.reasons, ["MCP tool delete_repo is denied (deny_tools: delete_*)"]);
        assert!(!decide(CONFIG, &calling("tools/call", Some("Shell"))).allow);
    }

    #[test]
    fn other_tools_are_allowed() {
        assert_eq!(decide(CONFIG, &calling("tools/call", Some("read_file"))), Verdict::allow());
    }

    #[test]
    fn other_methods_are_allowed() {
        assert!(decide(CONFIG, &calling("tools/list", None)).allow);
        assert!(decide(CONFIG, &calling("resources/read", Some("shell"))).allow);
    }

    #[test]
    fn unnamed_tool_calls_fail_closed_when_anything_is_denied() {
        assert!(!decide(CONFIG, &calling("tools/call", None)).allow);
        assert!(decide("{}", &calling("tools/call", None)).allow);
    }

    #[test]
    fn non_mcp_calls_are_allowed() {
        let mut input = example_input();
        input.mcp = None;
        assert!(decide(CONFIG, &input).allow);
    }

    #[test]
    fn manifest_names_the_module_and_its_config_is_valid() {
        let manifest: toml::Table = toml::from_str(include_str!("../pack.toml")).unwrap();
        assert_eq!(manifest["name"].as_str(), Some("mcp-tools"));
        assert_eq!(manifest["module"].as_str(), Some("mcp-tools.wasm"));
        // The host hands the `[config]` table to the pack as JSON.
        let config = serde_json::to_string(&manifest["config"]).unwrap();
        let verdict = decide(&config, &example_input());
        assert!(!verdict.reasons.iter().any(|reason| reason.starts_with("policy input is not valid")), "{verdict:?}");
    }
}
