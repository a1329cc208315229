//! The built-in pack: the egress allow-lists `FLEETFORGE_ALLOWED_HOSTS` and
//! `FLEETFORGE_ALLOWED_MODELS`.
//!
//! It decides like any other pack — same input, same verdict, named in receipts by a digest of
//! its lists — but runs where it is cheapest: the host check before the request body is read (and
//! on every `CONNECT`), the model check once the body is in hand.

use crate::pattern::PatternSet;

use super::input::{Input, Verdict};
use super::manifest::sha256_hex;

/// The allow-list pack.
#[derive(Debug, Clone)]
pub struct Builtin {
    hosts: PatternSet,
    models: PatternSet,
    id: Option<String>,
}

impl Builtin {
    /// The pack for these lists.
    pub fn new(hosts: PatternSet, models: PatternSet) -> Self {
        let restricted = !hosts.is_any() || !models.is_any();
        let id = restricted.then(|| {
            let lists = serde_json::json!({ "hosts": hosts.patterns(), "models": models.patterns() }).to_string();
            format!("builtin:allowlist@{}/sha256:{}", env!("CARGO_PKG_VERSION"), sha256_hex(lists.as_bytes()))
        });
        Self { hosts, models, id }
    }

    /// How receipts name it; `None` when both lists allow everything (it then decides nothing).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Whether the model list restricts anything (if not, bodies need not be parsed for it).
    pub fn restricts_models(&self) -> bool {
        !self.models.is_any()
    }

    /// The host check: `Err(reason)` when `host` is not allowed.
    pub fn check_host(&self, host: &str) -> Result<(), &'static str> {
        if self.hosts.matches(host) { Ok(()) } else { Err("host_not_allowed") }
    }

    /// The model check: `Err(reason)` when `model` is not allowed.
    pub fn check_model(&self, model: &str) -> Result<(), &'static str> {
        if self.models.matches(model) { Ok(()) } else { Err("model_not_allowed") }
    }

    /// Both checks on a whole input document, as a verdict.
    pub fn evaluate(&self, input: &Input) -> Verdict {
        let mut verdict = Verdict::allow();
        if let Err(reason) = self.check_host(&input.request.host) {
            verdict = verdict.and(Verdict::deny(reason));
        }
        if let Some(llm) = &input.llm
            && let Err(reason) = self.check_model(&llm.model)
        {
            verdict = verdict.and(Verdict::deny(reason));
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::policy::input::Document;

    fn doc(host: &str, model: Option<&str>) -> Input {
        let llm = model.map_or("null".to_owned(), |m| {
            format!(r#"{{"provider":"openai","model":"{m}","stream":false,"messages":1,"tools":[]}}"#)
        });
        let text = format!(
            r#"{{"version":1,"time":"t","run":{{"id":"r","step":1}},"request":{{"method":"POST","scheme":"https","host":"{host}","port":443,"path":"/","query":"","headers":{{}}}},"llm":{llm},"state":{{"calls":0,"tokens":0,"cost_micro_usd":0,"hosts":[],"tools":[]}}}}"#
        );
        Document::parse(&text).unwrap().input
    }

    #[test]
    fn decides_hosts_and_models_and_names_its_lists() {
        let hosts = vec!["*.openai.com".to_owned()];
        let models = vec!["gpt-4o*".to_owned()];
        let b = Builtin::new(PatternSet::new(&hosts), PatternSet::new(&models));
        assert!(b.evaluate(&doc("api.openai.com", Some("gpt-4o-mini"))).allow);
        assert_eq!(b.evaluate(&doc("evil.example", None)).reasons, vec!["host_not_allowed"]);
        assert_eq!(b.evaluate(&doc("api.openai.com", Some("o1-pro"))).reasons, vec!["model_not_allowed"]);
        let other = Builtin::new(PatternSet::new(&hosts), PatternSet::any());
        assert_ne!(b.id(), other.id(), "the id names the lists in force");
        assert!(b.id().unwrap().starts_with("builtin:allowlist@"));
        assert_eq!(Builtin::new(PatternSet::any(), PatternSet::any()).id(), None);
    }
}
