//! The call document in, the verdict out: [`run`] and [`run_binary`] on every target, the raw Wasm
//! exports on `wasm32`.
//!
//! Invariants:
//! - one read of the whole document into typed structs (a `serde_json` parse for [`run`]; the
//!   config's parse and a binary decode for [`run_binary`]), nothing else allocated before the
//!   pack's function runs;
//! - every failure to read the document becomes a deny verdict whose reason starts with
//!   `policy input is not valid: ` (never a trap);
//! - the only `unsafe` in the SDK is the one slice construction in [`wasm::evaluate`], which relies
//!   on the host contract stated there.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};

use crate::input::Input;
use crate::verdict::Verdict;

/// The input document version this SDK understands. Documents with another `version` are denied:
/// the version changes only when a field changes meaning, and a pack must not guess.
pub const INPUT_VERSION: u32 = 1;

/// Prefix of every reason given for a document the pack could not read.
const INVALID: &str = "policy input is not valid: ";

/// What the host writes: the pack's config next to the shared input document.
#[derive(Deserialize)]
#[serde(bound = "C: DeserializeOwned + Default")]
struct Document<C> {
    /// The `[config]` table of the pack's manifest; missing or `null` means `C::default()`.
    #[serde(default, deserialize_with = "null_as_default")]
    config: C,
    /// The input document.
    input: Input,
}

/// Reads `null` as `C::default()`, so a pack without a `[config]` table gets its defaults.
fn null_as_default<'de, D, C>(deserializer: D) -> Result<C, D::Error>
where
    D: Deserializer<'de>,
    C: Deserialize<'de> + Default,
{
    Ok(Option::<C>::deserialize(deserializer)?.unwrap_or_default())
}

/// Parses a call document and applies `decide` to it.
///
/// A document that does not parse (including a config that does not fit `C`) or that carries an
/// input `version` other than [`INPUT_VERSION`] gives a deny verdict with a reason starting
/// `policy input is not valid: `. This is what the `evaluate` export runs; call it from host tests
/// to exercise a pack end to end.
pub fn run<C, F>(document: &[u8], decide: F) -> Verdict
where
    C: DeserializeOwned + Default,
    F: FnOnce(&C, &Input) -> Verdict,
{
    // One UTF-8 check of the whole document, then a parse that does not re-check every string.
    let parsed = std::str::from_utf8(document)
        .map_err(|e| format!("the document is not UTF-8: {e}"))
        .and_then(|text| serde_json::from_str::<Document<C>>(text).map_err(|e| e.to_string()));
    match parsed {
        Ok(doc) if doc.input.version == INPUT_VERSION => decide(&doc.config, &doc.input),
        Ok(doc) => Verdict::deny(format!(
            "{INVALID}input version {} is not supported (this pack understands version {INPUT_VERSION})",
            doc.input.version
        )),
        Err(err) => Verdict::deny(format!("{INVALID}{err}")),
    }
}

/// Like [`run`], for the binary call document that the `evaluate_binary` export receives: a `u32`
/// (little-endian) byte length, the pack's config as JSON text of that length (`null` when it has
/// none), then the input in the binary layout ([`crate::binary`]). The same verdicts as [`run`]
/// on the same config and input; a document that does not decode is denied with a reason starting
/// `policy input is not valid: `. The input is read without parsing JSON, which was most of what a
/// verdict cost in the JSON form.
pub fn run_binary<C, F>(document: &[u8], decide: F) -> Verdict
where
    C: DeserializeOwned + Default,
    F: FnOnce(&C, &Input) -> Verdict,
{
    let parsed = split_binary(document).and_then(|(config, input)| {
        let config = std::str::from_utf8(config)
            .map_err(|e| format!("the config is not UTF-8: {e}"))
            .and_then(|text| serde_json::from_str::<Option<C>>(text).map_err(|e| format!("config: {e}")))?
            .unwrap_or_default();
        let input = crate::binary::decode(input).map_err(|e| e.to_string())?;
        Ok((config, input))
    });
    match parsed {
        Ok((config, input)) => decide(&config, &input),
        Err(err) => Verdict::deny(format!("{INVALID}{err}")),
    }
}

/// Splits a binary call document into its config JSON and its binary input.
fn split_binary(document: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (head, rest) = document
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("the document is {} bytes, too short for its config length", document.len()))?;
    let len = u32::from_le_bytes(*head) as usize;
    if len > rest.len() {
        return Err(format!("the config length {len} is past the end of the document ({} bytes)", document.len()));
    }
    Ok(rest.split_at(len))
}

/// [`run`], then the verdict as UTF-8 JSON: the bytes the `evaluate` export hands to the host.
pub fn run_to_json<C, F>(document: &[u8], decide: F) -> Vec<u8>
where
    C: DeserializeOwned + Default,
    F: FnOnce(&C, &Input) -> Verdict,
{
    run(document, decide).to_json()
}

/// [`run_binary`], then the verdict as UTF-8 JSON: what the `evaluate_binary` export hands back.
pub fn run_binary_to_json<C, F>(document: &[u8], decide: F) -> Vec<u8>
where
    C: DeserializeOwned + Default,
    F: FnOnce(&C, &Input) -> Verdict,
{
    run_binary(document, decide).to_json()
}

/// The raw exports behind [`policy!`](crate::policy); meaningful only where pointers are 32 bits.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // Reading the document the host wrote into linear memory needs one raw slice.
pub mod wasm {
    /// Reserves `len` zeroed bytes and returns their address; 0 if `len` is negative.
    ///
    /// The memory is never freed: each call gets a fresh instance, so leaking is cheaper than
    /// bookkeeping. Running out of memory traps, which the host treats as deny.
    pub fn alloc(len: i32) -> i32 {
        match usize::try_from(len) {
            Ok(len) => vec![0u8; len].leak().as_mut_ptr() as usize as i32,
            Err(_) => 0,
        }
    }

    /// Reads the document at `ptr..ptr + len`, runs `entry` on it and returns
    /// `(out_ptr << 32) | out_len` of the leaked verdict bytes (read the `i64` as unsigned bits).
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be memory this instance handed out through [`alloc`] (or otherwise
    /// owns), fully written by the host, and not mutated while `evaluate` runs. A null `ptr` or
    /// a negative `len` is rejected without being read.
    pub unsafe fn evaluate(ptr: i32, len: i32, entry: fn(&[u8]) -> Vec<u8>) -> i64 {
        let document: &[u8] = match usize::try_from(len) {
            Ok(0) => &[],
            Ok(len) if ptr != 0 => {
                // SAFETY: `ptr` is non-null and, per this function's contract, points at `len`
                // initialized bytes inside linear memory that nothing mutates during the call.
                unsafe { core::slice::from_raw_parts(ptr as u32 as usize as *const u8, len) }
            }
            _ => &[],
        };
        let out = entry(document).leak();
        let (out_ptr, out_len) = (out.as_ptr() as usize as u64, out.len() as u64);
        ((out_ptr << 32) | out_len) as i64
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::{INPUT_VERSION, run, run_binary, run_to_json};
    use crate::input::Input;
    use crate::testing::{binary_document, example_input};
    use crate::verdict::Verdict;

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        limit: u64,
    }

    fn by_step(config: &Config, input: &Input) -> Verdict {
        if input.run.step > config.limit { Verdict::deny("too many steps") } else { Verdict::allow() }
    }

    const INPUT: &str = r#"{"version":1,"time":"2026-11-26T18:00:00.123Z","run":{"id":"r","step":3},
        "request":{"method":"GET","scheme":"https","host":"h","port":443,"path":"/","query":""},
        "state":{"calls":0,"tokens":0,"cost_micro_usd":0,"hosts":[],"tools":[]}}"#;

    fn doc(config: &str, input: &str) -> Vec<u8> {
        format!(r#"{{"config":{config},"input":{input}}}"#).into_bytes()
    }

    #[test]
    fn config_reaches_the_policy() {
        assert!(run(&doc(r#"{"limit":5}"#, INPUT), by_step).allow);
        assert!(!run(&doc(r#"{"limit":2}"#, INPUT), by_step).allow);
    }

    #[test]
    fn null_or_missing_config_is_the_default() {
        assert!(!run(&doc("null", INPUT), by_step).allow);
        let missing = format!(r#"{{"input":{INPUT}}}"#);
        assert!(!run(missing.as_bytes(), by_step).allow);
    }

    #[test]
    fn field_order_does_not_matter() {
        let swapped = format!(r#"{{"input":{INPUT},"config":{{"limit":9}}}}"#);
        assert!(run(swapped.as_bytes(), by_step).allow);
    }

    #[test]
    fn bad_documents_are_denied_with_a_reason() {
        for bad in [
            b"".to_vec(),
            b"not json".to_vec(),
            b"{}".to_vec(),
            b"\xff\xfe".to_vec(),
            doc(r#"{"limt":5}"#, INPUT),
            doc("{}", r#"{"version":1}"#),
        ] {
            let verdict = run(&bad, by_step);
            assert!(!verdict.allow);
            assert_eq!(verdict.reasons.len(), 1);
            assert!(verdict.reasons[0].starts_with("policy input is not valid: "), "{:?}", verdict.reasons);
        }
    }

    #[test]
    fn other_input_versions_are_denied() {
        let v2 = INPUT.replace(r#""version":1"#, r#""version":2"#);
        let verdict = run(&doc("{}", &v2), by_step);
        assert!(!verdict.allow);
        assert!(verdict.reasons[0].contains("input version 2 is not supported"));
        assert_eq!(INPUT_VERSION, 1);
    }

    #[test]
    fn run_to_json_emits_the_verdict() {
        let out = run_to_json(&doc(r#"{"limit":5}"#, INPUT), by_step);
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#"{"allow":true,"reasons":[],"obligations":{}}"#);
    }

    #[test]
    fn the_binary_document_gives_the_same_verdicts() {
        let input: Input = serde_json::from_str(INPUT).unwrap();
        for config in [r#"{"limit":5}"#, r#"{"limit":2}"#, "null"] {
            assert_eq!(
                run_binary(&binary_document(config, &input), by_step),
                run(&doc(config, INPUT), by_step),
                "{config}"
            );
        }
        // A config that does not fit is denied on both paths, naming the field (positions differ).
        let bad = run_binary(&binary_document(r#"{"limt":5}"#, &input), by_step);
        assert!(!bad.allow);
        assert!(bad.reasons[0].starts_with("policy input is not valid: config: unknown field `limt`"), "{bad:?}");
        let mut v2 = example_input();
        v2.version = 2;
        assert_eq!(
            run_binary(&binary_document("null", &v2), by_step),
            run(&doc("null", &serde_json::to_string(&v2).unwrap()), by_step)
        );
    }

    #[test]
    fn bad_binary_documents_are_denied_with_a_reason() {
        let good = binary_document(r#"{"limit":5}"#, &example_input());
        for bad in [vec![], vec![1, 0], vec![200, 0, 0, 0, b'{'], good[..good.len() - 1].to_vec(), {
            let mut b = good.clone();
            b[4] = 0xff;
            b
        }] {
            let verdict = run_binary(&bad, by_step);
            assert!(!verdict.allow);
            assert!(verdict.reasons[0].starts_with("policy input is not valid: "), "{:?}", verdict.reasons);
        }
        assert!(run_binary(&good, by_step).allow);
    }
}
