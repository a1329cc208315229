//! Cedar packs: a Cedar policy set (`.cedar`), decided by the Cedar authorizer.
//!
//! Each call becomes one Cedar request in the `FleetForge` namespace ([`SCHEMA`] is the schema
//! `lint` validates against, in strict mode):
//! - principal `FleetForge::Agent::"<run.agent>"` (`run.id` when the run has no agent);
//! - action `FleetForge::Action::"llm:chat"` for an LLM call, `"mcp:tools/call"` (or
//!   `"mcp:<method>"`) for an MCP message, otherwise `"http:<METHOD>"`. Actions are grouped:
//!   every action is `in Action::"http"` (every call goes over HTTP), LLM calls are also
//!   `in Action::"llm"` and MCP calls `in Action::"mcp"`;
//! - resource `FleetForge::Tool::"<tool>"` for an MCP `tools/call` (`""` when it names no tool),
//!   otherwise `FleetForge::Host::"<request.host>"` (the host is always `context.request.host`);
//! - context `{run, request, llm?, mcp?, state}`: the input document without `version`, `time` and
//!   the request headers; fields that may be null are absent instead (test with `has`). Integers
//!   above `i64::MAX` are clamped to it.
//!
//! The pack's `[config]` may hold one key, `entities`: Cedar entities JSON (validated against the
//! schema) that puts agents, hosts and tools in `FleetForge::Group`s, for policies such as
//! `principal in FleetForge::Group::"research"`.
//!
//! Decisions: allow when some permit applies and no forbid does; the reasons of an allow are the
//! `@reason` annotations of the permits that decided it (often none). A deny gives each deciding
//! forbid's `@reason` (or "cedar policy <id> forbids this call"), or "no Cedar policy permits this
//! call". Cedar skips a policy whose evaluation errors; FleetForge instead denies the call when any
//! policy errors, naming the error (fail closed).

use std::collections::{HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::OnceLock;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};

use super::input::{Document, Input, Verdict};

/// The schema of FleetForge requests; `lint` validates policies against it.
pub const SCHEMA: &str = r#"
namespace FleetForge {
  entity Group in [Group];
  entity Agent in [Group];
  entity Host in [Group];
  entity Tool in [Group];

  type RunInfo = { id: String, step: Long, agent?: String, tenant?: String };
  type RequestInfo = { method: String, scheme: String, host: String, port: Long, path: String, query: String };
  type LlmInfo = {
    provider: String, model: String, max_tokens?: Long, stream: Bool, messages: Long, tools: Set<String>
  };
  type McpInfo = { method: String, tool?: String, argument_keys: Set<String> };
  type StateInfo = {
    calls: Long, tokens: Long, cost_micro_usd: Long, hosts: Set<String>, tools: Set<String>
  };
  type Call = { run: RunInfo, request: RequestInfo, llm?: LlmInfo, mcp?: McpInfo, state: StateInfo };

  action "http";
  action "llm", "mcp" in ["http"];
  action "http:GET", "http:HEAD", "http:POST", "http:PUT", "http:PATCH", "http:DELETE", "http:OPTIONS",
    "http:TRACE", "http:CONNECT" in ["http"]
    appliesTo { principal: Agent, resource: Host, context: Call };
  action "llm:chat" in ["llm"]
    appliesTo { principal: Agent, resource: Host, context: Call };
  action "mcp:tools/call" in ["mcp"]
    appliesTo { principal: Agent, resource: Tool, context: Call };
  action "mcp:initialize", "mcp:ping", "mcp:tools/list", "mcp:resources/list", "mcp:resources/read",
    "mcp:resources/templates/list", "mcp:resources/subscribe", "mcp:resources/unsubscribe", "mcp:prompts/list",
    "mcp:prompts/get", "mcp:completion/complete", "mcp:logging/setLevel", "mcp:notifications/initialized",
    "mcp:notifications/cancelled", "mcp:notifications/progress", "mcp:notifications/roots/list_changed"
    in ["mcp"]
    appliesTo { principal: Agent, resource: Host, context: Call };
}
"#;

/// The schema and the entity types requests use, parsed once.
struct Types {
    schema: Schema,
    agent: EntityTypeName,
    host: EntityTypeName,
    tool: EntityTypeName,
    action: EntityTypeName,
}

fn types() -> Result<&'static Types, String> {
    static TYPES: OnceLock<Result<Types, String>> = OnceLock::new();
    TYPES
        .get_or_init(|| {
            let (schema, _) =
                Schema::from_cedarschema_str(SCHEMA).map_err(|e| format!("FleetForge Cedar schema: {e}"))?;
            let name = |n: &str| EntityTypeName::from_str(n).map_err(|e| format!("Cedar type {n}: {e}"));
            Ok(Types {
                schema,
                agent: name("FleetForge::Agent")?,
                host: name("FleetForge::Host")?,
                tool: name("FleetForge::Tool")?,
                action: name("FleetForge::Action")?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// How a policy is named in reasons and what it says when it decides.
#[derive(Debug)]
struct Label {
    /// `policy0`, or `policy0 (@id "name")`.
    name: String,
    /// The `@reason` annotation.
    reason: Option<String>,
}

/// A loaded Cedar pack.
pub struct CedarPack {
    file_name: String,
    policies: PolicySet,
    labels: HashMap<PolicyId, Label>,
    /// The schema's action entities, plus the config's entities.
    entities: Entities,
    authorizer: Authorizer,
    types: &'static Types,
    /// The context attributes the policies read; only those are built.
    reads: Reads,
}

impl std::fmt::Debug for CedarPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CedarPack")
            .field("file_name", &self.file_name)
            .field("policies", &self.labels)
            .finish_non_exhaustive()
    }
}

impl CedarPack {
    /// Parses a Cedar policy set. `config` may hold `entities` (Cedar entities JSON, checked against
    /// [`SCHEMA`]); any other config key is an error.
    pub fn load(file_name: &str, text: &str, config: Option<&serde_json::Value>) -> Result<Self, String> {
        let types = types()?;
        let policies = PolicySet::from_str(text).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("{file_name}: {}", all.join("; "))
        })?;
        let entities = match config {
            None | Some(serde_json::Value::Null) => {
                types.schema.action_entities().map_err(|e| format!("FleetForge Cedar actions: {e}"))?
            }
            Some(serde_json::Value::Object(map)) => {
                if let Some(key) = map.keys().find(|k| *k != "entities") {
                    return Err(format!("[config] key {key:?} is not known to Cedar packs (only \"entities\")"));
                }
                let json = map.get("entities").cloned().unwrap_or_else(|| serde_json::json!([]));
                // With a schema, the schema's action entities are added too.
                Entities::from_json_value(json, Some(&types.schema)).map_err(|e| format!("[config] entities: {e}"))?
            }
            Some(_) => return Err("[config] must be a table".to_owned()),
        };
        let labels = policies
            .policies()
            .map(|p| {
                let name = match p.annotation("id") {
                    Some(id) => format!("{} (@id {id:?})", p.id()),
                    None => p.id().to_string(),
                };
                (p.id().clone(), Label { name, reason: p.annotation("reason").map(str::to_owned) })
            })
            .collect();
        let mut reads = Reads::default();
        for p in policies.policies() {
            let est = p.to_json().map_err(|e| format!("{file_name}: policy {}: {e}", p.id()))?;
            reads.scan(&est);
        }
        Ok(Self {
            file_name: file_name.to_owned(),
            policies,
            labels,
            entities,
            authorizer: Authorizer::new(),
            types,
            reads,
        })
    }

    /// One line per policy: id (and `@id`), effect, `@reason`; templates are listed as unlinked.
    pub fn describe(&self) -> Vec<String> {
        let mut policies: Vec<_> = self.policies.policies().collect();
        // policy0, policy1, …, policy10 in the order they were written.
        policies.sort_by_key(|p| (p.id().to_string().len(), p.id().to_string()));
        let mut lines: Vec<String> = policies
            .into_iter()
            .map(|p| match p.annotation("reason") {
                Some(r) => format!("{}: {} @reason({r:?})", self.name(p.id()), p.effect()),
                None => format!("{}: {}", self.name(p.id()), p.effect()),
            })
            .collect();
        lines.extend(
            self.policies
                .templates()
                .map(|t| format!("{}: {} template (not linked: never applies)", t.id(), t.effect())),
        );
        lines
    }

    /// Validation errors and warnings against [`SCHEMA`] (strict mode); empty when clean.
    pub fn lint(&self) -> Vec<String> {
        let validator = Validator::new(self.types.schema.clone());
        let result = validator.validate(&self.policies, ValidationMode::Strict);
        let mut problems: Vec<String> = result.validation_errors().map(ToString::to_string).collect();
        problems.extend(result.validation_warnings().map(|w| format!("warning: {w}")));
        let mut seen = HashSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        problems.extend(
            self.policies
                .templates()
                .map(|t| format!("{} is a template; templates are never linked, so it never applies", t.id())),
        );
        problems
    }

    /// Decides one call.
    pub fn evaluate(&self, doc: &Document) -> Result<Verdict, String> {
        let input = &doc.input;
        let t = self.types;
        let agent = input.run.agent.as_deref().unwrap_or(&input.run.id);
        let principal = EntityUid::from_type_name_and_id(t.agent.clone(), EntityId::new(agent));
        let (action, resource) = match (&input.llm, &input.mcp) {
            (Some(_), _) => ("llm:chat".to_owned(), self.host(input)),
            (None, Some(mcp)) if mcp.method == "tools/call" => (
                "mcp:tools/call".to_owned(),
                EntityUid::from_type_name_and_id(t.tool.clone(), EntityId::new(mcp.tool.as_deref().unwrap_or(""))),
            ),
            (None, Some(mcp)) => (format!("mcp:{}", mcp.method), self.host(input)),
            (None, None) => (format!("http:{}", input.request.method), self.host(input)),
        };
        let action_uid = EntityUid::from_type_name_and_id(t.action.clone(), EntityId::new(&action));
        let request = Request::new(principal, action_uid.clone(), resource, context(input, &self.reads)?, None)
            .map_err(|e| format!("Cedar request: {e}"))?;
        let response = if self.entities.get(&action_uid).is_some() {
            self.authorizer.is_authorized(&request, &self.policies, &self.entities)
        } else {
            // An action the schema does not list: give it its groups for this call.
            let mut groups = HashSet::from([EntityUid::from_type_name_and_id(t.action.clone(), EntityId::new("http"))]);
            if let Some(group) = action.split_once(':').map(|(g, _)| g).filter(|g| *g == "mcp" || *g == "llm") {
                groups.insert(EntityUid::from_type_name_and_id(t.action.clone(), EntityId::new(group)));
            }
            let entities = self
                .entities
                .clone()
                .add_entities([Entity::new_no_attrs(action_uid, groups)], None)
                .map_err(|e| format!("Cedar action {action}: {e}"))?;
            self.authorizer.is_authorized(&request, &self.policies, &entities)
        };

        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                format!("cedar policy {} could not be evaluated: {}", self.name(e.policy_id()), e.inner())
            })
            .collect();
        let label = |id: &PolicyId| self.labels.get(id);
        match response.decision() {
            Decision::Allow if errors.is_empty() => {
                let mut verdict = Verdict::allow();
                verdict.reasons = diagnostics.reason().filter_map(|id| label(id)?.reason.clone()).collect();
                Ok(verdict)
            }
            decision => {
                let mut reasons = errors;
                if decision == Decision::Deny {
                    reasons.extend(diagnostics.reason().map(|id| match label(id) {
                        Some(Label { reason: Some(r), .. }) => r.clone(),
                        _ => format!("cedar policy {} forbids this call", self.name(id)),
                    }));
                }
                if reasons.is_empty() {
                    reasons.push("no Cedar policy permits this call".to_owned());
                }
                Ok(Verdict { allow: false, reasons, obligations: Default::default() })
            }
        }
    }

    fn host(&self, input: &Input) -> EntityUid {
        EntityUid::from_type_name_and_id(self.types.host.clone(), EntityId::new(&input.request.host))
    }

    fn name(&self, id: &PolicyId) -> String {
        self.labels.get(id).map_or_else(|| id.to_string(), |l| l.name.clone())
    }
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn long(n: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX))
}

fn strings(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().map(|s| string(s)))
}

fn record(fields: Vec<(&str, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .map_err(|e| format!("Cedar context: {e}"))
}

/// Which top-level context attributes some policy reads. A policy's value cannot depend on an
/// attribute it never names, so the others are left out of the context: building Cedar values is
/// most of the cost of a decision.
#[derive(Debug, Default, Clone, Copy)]
struct Reads {
    run: bool,
    request: bool,
    llm: bool,
    mcp: bool,
    state: bool,
}

impl Reads {
    fn all() -> Self {
        Self { run: true, request: true, llm: true, mcp: true, state: true }
    }

    /// Walks a policy's JSON form (EST): `context.<attr>` and `context has <attr>` name one
    /// attribute; any other use of `context` (or an attribute of no known name) needs all of it.
    fn scan(&mut self, est: &serde_json::Value) {
        match est {
            serde_json::Value::Object(map) => {
                if map.get("Var").and_then(serde_json::Value::as_str) == Some("context") {
                    *self = Self::all();
                    return;
                }
                for (key, value) in map {
                    if key == "." || key == "has" {
                        let attr = value.get("attr").and_then(serde_json::Value::as_str);
                        let left = value.get("left").and_then(|l| l.get("Var")).and_then(serde_json::Value::as_str);
                        if let (Some(attr), Some("context")) = (attr, left) {
                            self.name(attr);
                            continue;
                        }
                    }
                    self.scan(value);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| self.scan(i)),
            _ => {}
        }
    }

    fn name(&mut self, attr: &str) {
        match attr {
            "run" => self.run = true,
            "request" => self.request = true,
            "llm" => self.llm = true,
            "mcp" => self.mcp = true,
            "state" => self.state = true,
            // Not an attribute FleetForge sets: evaluating it errors either way.
            _ => {}
        }
    }
}

/// The request context: the input document as Cedar values (the attributes `reads` names).
fn context(input: &Input, reads: &Reads) -> Result<Context, String> {
    let mut pairs = Vec::with_capacity(5);
    if reads.run {
        let run = &input.run;
        let mut fields = vec![("id", string(&run.id)), ("step", long(run.step))];
        if let Some(agent) = &run.agent {
            fields.push(("agent", string(agent)));
        }
        if let Some(tenant) = &run.tenant {
            fields.push(("tenant", string(tenant)));
        }
        pairs.push(("run", record(fields)?));
    }
    if reads.request {
        let r = &input.request;
        let fields = vec![
            ("method", string(&r.method)),
            ("scheme", string(&r.scheme)),
            ("host", string(&r.host)),
            ("port", long(u64::from(r.port))),
            ("path", string(&r.path)),
            ("query", string(&r.query)),
        ];
        pairs.push(("request", record(fields)?));
    }
    if let Some(llm) = input.llm.as_ref().filter(|_| reads.llm) {
        let mut fields = vec![
            ("provider", string(&llm.provider)),
            ("model", string(&llm.model)),
            ("stream", RestrictedExpression::new_bool(llm.stream)),
            ("messages", long(llm.messages)),
            ("tools", strings(&llm.tools)),
        ];
        if let Some(max) = llm.max_tokens {
            fields.push(("max_tokens", long(max)));
        }
        pairs.push(("llm", record(fields)?));
    }
    if let Some(mcp) = input.mcp.as_ref().filter(|_| reads.mcp) {
        let mut fields = vec![("method", string(&mcp.method)), ("argument_keys", strings(&mcp.argument_keys))];
        if let Some(tool) = &mcp.tool {
            fields.push(("tool", string(tool)));
        }
        pairs.push(("mcp", record(fields)?));
    }
    if reads.state {
        let s = &input.state;
        let fields = vec![
            ("calls", long(s.calls)),
            ("tokens", long(s.tokens)),
            ("cost_micro_usd", long(s.cost_micro_usd)),
            ("hosts", strings(&s.hosts)),
            ("tools", strings(&s.tools)),
        ];
        pairs.push(("state", record(fields)?));
    }
    Context::from_pairs(pairs.into_iter().map(|(k, v)| (k.to_owned(), v))).map_err(|e| format!("Cedar context: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::{CedarPack, types};
    use crate::policy::input::{Document, Verdict};

    const EXAMPLE: &str = include_str!("../../../policies/examples/cedar/policy.cedar");

    fn doc(method: &str, host: &str, llm: serde_json::Value, mcp: serde_json::Value) -> Document {
        let input = json!({
            "version": 1, "time": "2026-11-26T18:00:00.123Z",
            "run": {"id": "run-1", "agent": "planner", "tenant": "acme", "step": 3},
            "request": {"method": method, "scheme": "https", "host": host, "port": 443,
                        "path": "/v1/x", "query": "", "headers": {}},
            "llm": llm, "mcp": mcp,
            "state": {"calls": 2, "tokens": 1200, "cost_micro_usd": u64::MAX, "hosts": ["a"], "tools": []}
        });
        Document::parse(&input.to_string()).unwrap()
    }

    fn http(method: &str, host: &str) -> Document {
        doc(method, host, json!(null), json!(null))
    }

    fn chat(host: &str, model: &str) -> Document {
        let llm = json!({"provider": "openai", "model": model, "max_tokens": null, "stream": false,
                         "messages": 2, "tools": ["get_weather"]});
        doc("POST", host, llm, json!(null))
    }

    fn tool(host: &str, name: &str) -> Document {
        doc("POST", host, json!(null), json!({"method": "tools/call", "tool": name, "argument_keys": ["repo"]}))
    }

    fn example() -> CedarPack {
        CedarPack::load("policy.cedar", EXAMPLE, None).unwrap()
    }

    #[test]
    fn example_pack_permits_and_forbids_with_reasons() {
        let pack = example();
        assert!(pack.lint().is_empty(), "{:?}", pack.lint());
        assert_eq!(pack.evaluate(&http("GET", "api.openai.com")).unwrap(), Verdict::allow());
        assert_eq!(pack.evaluate(&chat("api.anthropic.com", "claude-x")).unwrap(), Verdict::allow());
        assert_eq!(pack.evaluate(&tool("api.githubcopilot.com", "read_file")).unwrap(), Verdict::allow());

        assert_eq!(
            pack.evaluate(&chat("api.openai.com", "gpt-5-preview")).unwrap(),
            Verdict::deny("preview models are not allowed")
        );
        assert_eq!(
            pack.evaluate(&tool("api.githubcopilot.com", "delete_repo")).unwrap(),
            Verdict::deny("MCP tool delete_repo may not be called by agents")
        );
        assert_eq!(
            pack.evaluate(&http("GET", "evil.example")).unwrap(),
            Verdict::deny("no Cedar policy permits this call")
        );
        // An MCP tools/call is decided on the tool, not on the host.
        assert!(!pack.evaluate(&tool("api.openai.com", "read_file")).unwrap().allow);
    }

    #[test]
    fn methods_the_schema_does_not_list_are_still_in_their_groups() {
        let pack = example();
        assert!(pack.evaluate(&http("PROPFIND", "api.openai.com")).unwrap().allow);
        let mcp = json!({"method": "sampling/createMessage", "tool": null, "argument_keys": []});
        let text = "permit (principal, action in FleetForge::Action::\"mcp\", resource);";
        let only_mcp = CedarPack::load("p.cedar", text, None).unwrap();
        assert!(only_mcp.evaluate(&doc("POST", "h", json!(null), mcp)).unwrap().allow);
        assert!(!only_mcp.evaluate(&http("PROPFIND", "h")).unwrap().allow);
    }

    #[test]
    fn forbids_without_a_reason_are_named() {
        let text = "permit (principal, action, resource);\n@id(\"no-evil\")\nforbid (principal, action, resource == FleetForge::Host::\"evil.example\");";
        let pack = CedarPack::load("p.cedar", text, None).unwrap();
        assert_eq!(
            pack.evaluate(&http("GET", "evil.example")).unwrap(),
            Verdict::deny("cedar policy policy1 (@id \"no-evil\") forbids this call")
        );
        assert_eq!(pack.describe(), vec!["policy0: permit", "policy1 (@id \"no-evil\"): forbid"]);
    }

    #[test]
    fn permit_reasons_are_kept_on_allow() {
        let text = "@reason(\"planner may call anything\")\npermit (principal == FleetForge::Agent::\"planner\", action, resource);";
        let pack = CedarPack::load("p.cedar", text, None).unwrap();
        let v = pack.evaluate(&http("GET", "x.example")).unwrap();
        assert!(v.allow);
        assert_eq!(v.reasons, vec!["planner may call anything"]);
    }

    #[test]
    fn context_carries_the_document() {
        let text = r#"permit (principal == FleetForge::Agent::"planner", action == FleetForge::Action::"llm:chat", resource)
            when { context.run has tenant && context.run.tenant == "acme" && context.run.step == 3
                   && context.request.port == 443 && context has llm
                   && context.llm.tools.contains("get_weather") && !(context.llm has max_tokens)
                   && context.state.cost_micro_usd == 9223372036854775807 && context.state.hosts == ["a"] };"#;
        let pack = CedarPack::load("p.cedar", text, None).unwrap();
        assert!(pack.lint().is_empty(), "{:?}", pack.lint());
        assert!(pack.evaluate(&chat("api.openai.com", "gpt-4o")).unwrap().allow);
    }

    #[test]
    fn the_context_conforms_to_the_schema() {
        let types = types().unwrap();
        for d in [http("GET", "h"), chat("h", "m"), tool("h", "t")] {
            let pack = example();
            let input = &d.input;
            let (action, resource) = if input.llm.is_some() {
                ("llm:chat", pack.host(input))
            } else if input.mcp.is_some() {
                (
                    "mcp:tools/call",
                    super::EntityUid::from_type_name_and_id(types.tool.clone(), super::EntityId::new("t")),
                )
            } else {
                ("http:GET", pack.host(input))
            };
            let principal = super::EntityUid::from_type_name_and_id(types.agent.clone(), super::EntityId::new("a"));
            let action = super::EntityUid::from_type_name_and_id(types.action.clone(), super::EntityId::new(action));
            let ctx = super::context(input, &super::Reads::all()).unwrap();
            super::Request::new(principal, action, resource, ctx, Some(&types.schema)).unwrap();
        }
    }

    #[test]
    fn an_evaluation_error_denies_and_says_why() {
        // Cedar would skip the erroring forbid and allow; FleetForge denies.
        let text = "permit (principal, action, resource);\nforbid (principal, action, resource) when { context.llm.model == \"x\" };";
        let pack = CedarPack::load("p.cedar", text, None).unwrap();
        let v = pack.evaluate(&http("GET", "a.example")).unwrap();
        assert!(!v.allow);
        assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
        assert!(v.reasons[0].starts_with("cedar policy policy1 could not be evaluated: "), "{:?}", v.reasons);
        assert!(v.reasons[0].contains("llm"), "{:?}", v.reasons);
        assert!(pack.evaluate(&chat("a.example", "y")).unwrap().allow);
        // The same policy fails strict validation: `llm` is optional.
        assert!(pack.lint().iter().any(|p| p.contains("llm")), "{:?}", pack.lint());
    }

    #[test]
    fn lint_reports_unknown_types_and_attributes() {
        let text = "permit (principal is FleetForge::User, action, resource);\npermit (principal, action, resource) when { context.request.verb == \"GET\" };\npermit (principal, action == FleetForge::Action::\"http:FETCH\", resource);";
        let problems = CedarPack::load("p.cedar", text, None).unwrap().lint();
        assert!(problems.iter().any(|p| p.contains("FleetForge::User")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("verb")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("http:FETCH")), "{problems:?}");
    }

    #[test]
    fn config_entities_put_agents_in_groups() {
        let config = json!({"entities": [
            {"uid": {"type": "FleetForge::Agent", "id": "planner"}, "attrs": {},
             "parents": [{"type": "FleetForge::Group", "id": "research"}]}
        ]});
        let text =
            "permit (principal in FleetForge::Group::\"research\", action in FleetForge::Action::\"http\", resource);";
        let pack = CedarPack::load("p.cedar", text, Some(&config)).unwrap();
        assert!(pack.lint().is_empty(), "{:?}", pack.lint());
        assert!(pack.evaluate(&http("GET", "a.example")).unwrap().allow);
        let without_groups = CedarPack::load("p.cedar", text, None).unwrap();
        assert!(!without_groups.evaluate(&http("GET", "a.example")).unwrap().allow);

        let err = CedarPack::load("p.cedar", text, Some(&json!({"entitys": []}))).unwrap_err();
        assert!(err.contains("entitys"), "{err}");
        let bad = json!({"entities": [{"uid": {"type": "FleetForge::User", "id": "x"}, "attrs": {}, "parents": []}]});
        assert!(CedarPack::load("p.cedar", text, Some(&bad)).is_err());
    }

    #[test]
    fn syntax_errors_are_refused() {
        let err = CedarPack::load("p.cedar", "permit (principal, action, resource", None).unwrap_err();
        assert!(err.starts_with("p.cedar: "), "{err}");
        assert!(CedarPack::load("p.cedar", "allow everything", None).is_err());
    }

    #[test]
    fn only_the_context_attributes_policies_read_are_built() {
        let reads = |text: &str| {
            let r = CedarPack::load("p.cedar", text, None).unwrap().reads;
            [r.run, r.request, r.llm, r.mcp, r.state]
        };
        assert_eq!(reads("permit (principal, action, resource);"), [false; 5]);
        assert_eq!(reads(EXAMPLE), [false, true, true, false, false]);
        let text = "permit (principal, action, resource) when { context has mcp && context.state.calls < 3 };";
        assert_eq!(reads(text), [false, false, false, true, true]);
        assert_eq!(reads("permit (principal, action, resource) when { context == {} };"), [true; 5]);
        // Whatever is left out, decisions do not change.
        let text = "permit (principal, action, resource) when { context.state.calls == 2 && !(context has llm) };";
        assert!(CedarPack::load("p.cedar", text, None).unwrap().evaluate(&http("GET", "h")).unwrap().allow);
        assert!(!CedarPack::load("p.cedar", text, None).unwrap().evaluate(&chat("h", "m")).unwrap().allow);
    }

    #[test]
    fn cedar_packs_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<CedarPack>();
    }
}
