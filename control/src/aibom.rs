//! The AI bill of materials of a run: a CycloneDX 1.6 JSON document built from its receipts.
//!
//! What a run used, as its receipts record it: the models it called (`machine-learning-model`
//! components, by provider and model, with calls and tokens), the endpoints it reached (services:
//! LLM providers and tools, with their endpoint URLs and how many calls were allowed or refused),
//! the policy packs that decided its calls (components with their SHA-256), the datasets its
//! proxies were configured with (`data` components with their SHA-256), and the FleetForge
//! version that recorded and exported it. The run itself is the BOM's subject
//! (`metadata.component`), depending on all of them.

use std::collections::BTreeMap;

use fleetforge_trust::canonical::{hex, sha256};
use fleetforge_trust::receipt::{DatasetDigest, ReceiptBody};
use serde_json::{Value, json};

/// What the BOM is built from.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The run id.
    pub run: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its receipts.
    pub bodies: &'a [ReceiptBody],
    /// The datasets its receipts name.
    pub datasets: &'a [DatasetDigest],
    /// The FleetForge version (proxy and control are released together).
    pub version: &'a str,
    /// When the BOM is made (RFC 3339).
    pub timestamp: String,
    /// The tenant's transparency-log head: (size, root hex).
    pub log_head: Option<(u64, String)>,
}

#[derive(Default)]
struct ModelUse {
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_micro_usd: u64,
}

#[derive(Default)]
struct ServiceUse {
    allowed: u64,
    refused: u64,
    llm: bool,
}

fn property(name: &str, value: impl ToString) -> Value {
    json!({ "name": format!("fleetforge:{name}"), "value": value.to_string() })
}

/// A version-4-shaped UUID from the SHA-256 of `seed`, so one run's BOMs made at one time share
/// a serial number.
fn serial(seed: &str) -> String {
    let mut b = sha256(seed.as_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b[..16]);
    format!("urn:uuid:{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Splits a policy pack id `name@version/sha256:digest`.
fn pack_parts(id: &str) -> (String, Option<String>, Option<String>) {
    let (name_version, digest) = match id.split_once("/sha256:") {
        Some((nv, d)) => (nv, Some(d.to_owned())),
        None => (id, None),
    };
    match name_version.split_once('@') {
        Some((name, version)) => (name.to_owned(), Some(version.to_owned()), digest),
        None => (name_version.to_owned(), None, digest),
    }
}

/// The BOM.
pub fn aibom(inputs: &Inputs<'_>) -> Value {
    let mut models: BTreeMap<(String, String), ModelUse> = BTreeMap::new();
    let mut services: BTreeMap<String, ServiceUse> = BTreeMap::new();
    let mut packs: BTreeMap<String, u64> = BTreeMap::new();
    let mut lanes: BTreeMap<String, u64> = BTreeMap::new();
    for b in inputs.bodies {
        *lanes.entry(b.chain.lane.clone()).or_default() += 1;
        let endpoint = format!("{}://{}:{}", b.upstream.scheme, b.upstream.host, b.upstream.port);
        let service = services.entry(endpoint).or_default();
        if b.decision.allow {
            service.allowed += 1;
        } else {
            service.refused += 1;
        }
        for pack in &b.decision.policy_packs {
            *packs.entry(pack.clone()).or_default() += 1;
        }
        let Some(usage) = &b.usage else { continue };
        let Some(model) = &usage.model else { continue };
        service.llm = true;
        let provider = usage.provider.clone().unwrap_or_else(|| b.upstream.host.clone());
        let m = models.entry((provider, model.clone())).or_default();
        m.calls += 1;
        m.input_tokens += usage.input_tokens.unwrap_or(0);
        m.output_tokens += usage.output_tokens.unwrap_or(0);
        m.cost_micro_usd += usage.cost_micro_usd.unwrap_or(0);
    }

    let run_ref = format!("run:{}", inputs.run);
    let mut components = Vec::new();
    let mut refs = Vec::new();
    components.push(json!({
        "type": "application",
        "bom-ref": "fleetforge-proxy",
        "name": "fleetforge-proxy",
        "version": inputs.version,
        "description": "The egress proxy that recorded the run's calls (its receipt signing keys in properties).",
        "properties": lanes.iter().map(|(lane, n)| property("signing_key", format!("{lane} ({n} receipts)"))).collect::<Vec<_>>(),
    }));
    refs.push("fleetforge-proxy".to_owned());
    for ((provider, model), u) in &models {
        let r = format!("model:{provider}/{model}");
        components.push(json!({
            "type": "machine-learning-model",
            "bom-ref": r,
            "name": model,
            "group": provider,
            "publisher": provider,
            "properties": [
                property("calls", u.calls),
                property("input_tokens", u.input_tokens),
                property("output_tokens", u.output_tokens),
                property("cost_micro_usd", u.cost_micro_usd),
            ],
        }));
        refs.push(r);
    }
    for (id, n) in &packs {
        let (name, version, digest) = pack_parts(id);
        let r = format!("policy:{id}");
        let mut c = json!({
            "type": "library",
            "bom-ref": r,
            "name": name,
            "description": "A FleetForge policy pack that decided the run's calls.",
            "properties": [property("kind", "policy-pack"), property("decisions", n)],
        });
        if let Some(v) = version {
            c["version"] = json!(v);
        }
        if let Some(d) = digest.filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())) {
            c["hashes"] = json!([{ "alg": "SHA-256", "content": d }]);
        }
        components.push(c);
        refs.push(r);
    }
    for d in inputs.datasets {
        let r = format!("dataset:{}:{}", d.name, d.sha256);
        components.push(json!({
            "type": "data",
            "bom-ref": r,
            "name": d.name,
            "hashes": [{ "alg": "SHA-256", "content": d.sha256 }],
            "data": [{ "type": "dataset", "name": d.name }],
            "properties": [property("size_bytes", d.size)],
        }));
        refs.push(r);
    }
    let services: Vec<Value> = services
        .iter()
        .map(|(endpoint, s)| {
            let host = endpoint.split("://").nth(1).unwrap_or(endpoint);
            let r = format!("service:{host}");
            refs.push(r.clone());
            json!({
                "bom-ref": r,
                "name": host.rsplit_once(':').map_or(host, |(h, _)| h),
                "endpoints": [endpoint],
                "properties": [
                    property("kind", if s.llm { "llm-provider" } else { "endpoint" }),
                    property("calls_allowed", s.allowed),
                    property("calls_refused", s.refused),
                ],
            })
        })
        .collect();

    let mut subject_properties = vec![property("tenant", inputs.tenant), property("receipts", inputs.bodies.len())];
    if let Some((size, root)) = &inputs.log_head {
        subject_properties.push(property("log_head", format!("{size} {root}")));
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial(&format!("{}\n{}", inputs.run, inputs.timestamp)),
        "version": 1,
        "metadata": {
            "timestamp": inputs.timestamp,
            "tools": { "components": [{
                "type": "application",
                "name": "fleetforge-control",
                "version": inputs.version,
            }]},
            "component": {
                "type": "application",
                "bom-ref": run_ref,
                "name": format!("agent run {}", inputs.run),
                "properties": subject_properties,
            },
        },
        "components": components,
        "services": services,
        "dependencies": [{ "ref": run_ref, "dependsOn": refs }],
    })
}

#[cfg(test)]
mod tests {
    use fleetforge_trust::RunId;
    use fleetforge_trust::receipt::{Chain, Usage};

    use super::*;

    #[test]
    fn models_services_packs_and_datasets_are_listed_once_with_their_figures() {
        let run = RunId::new("run-a").unwrap();
        let call = |host: &str, model: Option<&str>, allow: bool| {
            let mut b = ReceiptBody::example(
                run.clone(),
                Chain { lane: "ed25519:k1".into(), prev_hash: String::new(), seq: 1 },
            );
            b.upstream.host = host.into();
            b.decision.allow = allow;
            b.decision.policy_packs = vec![format!("pii@1.0.0/sha256:{}", "ab".repeat(32))];
            b.usage = model.map(|m| Usage {
                model: Some(m.into()),
                provider: Some("openai".into()),
                input_tokens: Some(10),
                output_tokens: Some(5),
                cost_micro_usd: Some(7),
                cached_input_tokens: None,
                reasoning_tokens: None,
            });
            b
        };
        let bodies = vec![
            call("api.openai.com", Some("gpt-4o"), true),
            call("api.openai.com", Some("gpt-4o"), true),
            call("tools.example", None, true),
            call("evil.example", None, false),
        ];
        let datasets = vec![DatasetDigest { name: "faq".into(), sha256: "cd".repeat(32), size: 12 }];
        let bom = aibom(&Inputs {
            run: "run-a",
            tenant: "acme",
            bodies: &bodies,
            datasets: &datasets,
            version: "0.1.0",
            timestamp: "2026-12-07T00:00:00Z".into(),
            log_head: Some((4, "ef".repeat(32))),
        });
        assert_eq!(bom["specVersion"], "1.6");
        let components = bom["components"].as_array().unwrap();
        let model = components.iter().find(|c| c["type"] == "machine-learning-model").unwrap();
        assert_eq!((model["name"].clone(), model["publisher"].clone()), (json!("gpt-4o"), json!("openai")));
        assert!(model["properties"].as_array().unwrap().contains(&property("calls", 2)));
        assert!(model["properties"].as_array().unwrap().contains(&property("input_tokens", 20)));
        let pack = components.iter().find(|c| c["name"] == "pii").unwrap();
        assert_eq!(
            (pack["version"].clone(), pack["hashes"][0]["content"].clone()),
            (json!("1.0.0"), json!("ab".repeat(32)))
        );
        let data = components.iter().find(|c| c["type"] == "data").unwrap();
        assert_eq!(data["hashes"][0]["content"], "cd".repeat(32));
        let services = bom["services"].as_array().unwrap();
        assert_eq!(services.len(), 3);
        let evil = services.iter().find(|s| s["name"] == "evil.example").unwrap();
        assert!(evil["properties"].as_array().unwrap().contains(&property("calls_refused", 1)));
        assert_eq!(evil["endpoints"][0], "https://evil.example:443");
        let depends = bom["dependencies"][0]["dependsOn"].as_array().unwrap();
        assert_eq!(depends.len(), 1 + 1 + 1 + 1 + 3, "proxy, model, pack, dataset, three services");
        let serial = bom["serialNumber"].as_str().unwrap();
        assert_eq!(serial.len(), "urn:uuid:".len() + 36);
        assert_eq!(&serial[9 + 14..9 + 15], "4", "version 4 shape");
    }
}
