//! Helpers for unit-testing packs on the host: the documented example input and a call-document
//! builder, so a test can run a pack through [`run`](crate::run) exactly as the Wasm export does.

use crate::input::Input;
use crate::verdict::Verdict;

/// The full example input document from `docs/reference/policy-input.md` (`example-input.json`,
/// which the proxy's tests read too; `example-input.bin` is the same document in the binary layout).
pub const EXAMPLE_INPUT: &str = include_str!("../example-input.json");

/// [`EXAMPLE_INPUT`], parsed; tests change the fields they care about.
pub fn example_input() -> Input {
    // The constant is checked by this module's tests; a failure here is a bug in the SDK.
    serde_json::from_str(EXAMPLE_INPUT).unwrap_or_else(|err| panic!("EXAMPLE_INPUT does not parse: {err}"))
}

/// The call document the host would write for `config` (JSON text) and `input`.
pub fn document(config: &str, input: &Input) -> Vec<u8> {
    let input = serde_json::to_string(input).unwrap_or_else(|err| panic!("input does not serialize: {err}"));
    format!(r#"{{"config":{config},"input":{input}}}"#).into_bytes()
}

/// The binary call document the host would write for `config` (JSON text) and `input`, for the
/// `evaluate_binary` export ([`run_binary`](crate::run_binary)).
pub fn binary_document(config: &str, input: &Input) -> Vec<u8> {
    let len = u32::try_from(config.len()).unwrap_or_else(|_| panic!("a config of {} bytes", config.len()));
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(config.as_bytes());
    out.extend_from_slice(&crate::binary::encode(input));
    out
}

/// Runs `decide` on `config` and `input` through both call documents ([`run`](crate::run) on the
/// JSON one, [`run_binary`](crate::run_binary) on the binary one), checks that they agree, and
/// returns the verdict. Reasons for a document that does not parse may word the position
/// differently; everything else must be identical.
pub fn decide_both<C, F>(config: &str, input: &Input, decide: F) -> Verdict
where
    C: serde::de::DeserializeOwned + Default,
    F: Fn(&C, &Input) -> Verdict,
{
    let json = crate::run(&document(config, input), &decide);
    let binary = crate::run_binary(&binary_document(config, input), &decide);
    assert_eq!(
        (json.allow, &json.obligations),
        (binary.allow, &binary.obligations),
        "JSON and binary documents disagree"
    );
    if !json.reasons.iter().any(|r| r.starts_with("policy input is not valid: ")) {
        assert_eq!(json.reasons, binary.reasons, "JSON and binary documents disagree");
    }
    json
}

#[cfg(test)]
mod tests {
    use super::{document, example_input};
    use crate::{Input, Verdict, run};

    #[test]
    fn example_round_trips_through_a_document() {
        let input = example_input();
        let verdict = run(&document("null", &input), |_: &(), seen: &Input| {
            assert_eq!(seen, &input);
            Verdict::allow()
        });
        assert!(verdict.allow);
    }
}
