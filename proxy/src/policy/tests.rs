//! Loading packs (manifests, digests, reload) and the Wasm engine's limits and ABI checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::input::Document;
use super::manifest::sha256_hex;
use super::{Limits, Pack, PackSet, Policy, PolicyError, Reloaded};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn doc(host: &str, tool: Option<&str>, tools_called: &[&str]) -> Document {
    let mcp = tool
        .map_or("null".to_owned(), |t| format!(r#"{{"method":"tools/call","tool":"{t}","argument_keys":["path"]}}"#));
    let called = serde_json::to_string(tools_called).unwrap();
    Document::parse(&format!(
        r#"{{"version":1,"time":"2026-11-27T00:00:00.000Z","run":{{"id":"r","agent":null,"tenant":null,"step":1}},
        "request":{{"method":"POST","scheme":"https","host":"{host}","port":443,"path":"/","query":"","headers":{{}}}},
        "llm":null,"mcp":{mcp},
        "state":{{"calls":0,"tokens":0,"cost_micro_usd":0,"hosts":[],"tools":{called}}}}}"#
    ))
    .unwrap()
}

/// Writes `module` and a manifest for it into `dir`.
fn pack(dir: &Path, name: &str, module: &[u8], config: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("m.wasm"), module).unwrap();
    std::fs::write(
        p.join("pack.toml"),
        format!(
            "name = \"{name}\"\nversion = \"1\"\nkind = \"wasm\"\nmodule = \"m.wasm\"\nsha256 = \"{}\"\nsigner = \"t\"\nsource = \"t\"\n{config}",
            sha256_hex(module)
        ),
    )
    .unwrap();
    p
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

#[test]
fn the_example_packs_load_and_decide() {
    let limits = Limits::default();
    let mcp = Pack::load(&repo().join("policies/packs/mcp-tools")).unwrap();
    assert!(mcp.id.starts_with("mcp-tools@0.1.0/sha256:"), "{}", mcp.id);
    assert!(mcp.id.contains(";config=sha256:"), "the config is part of the id: {}", mcp.id);
    assert!(mcp.try_evaluate(&doc("tools.example", Some("read_file"), &[]), &limits).unwrap().allow);

    let flow = Pack::load(&repo().join("policies/packs/info-flow")).unwrap();
    assert!(flow.try_evaluate(&doc("pastebin.com", None, &[]), &limits).unwrap().allow);
    let tainted = flow.try_evaluate(&doc("pastebin.com", None, &["read_secret"]), &limits).unwrap();
    assert!(!tainted.allow);
    assert!(tainted.reasons.iter().any(|r| r.contains("read_secret")), "{tainted:?}");
}

#[test]
fn a_module_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let module = std::fs::read(repo().join("policies/packs/allowlist/allowlist.wasm")).unwrap();
    let p = pack(dir.path(), "a", &module, "");
    let mut tampered = module.clone();
    tampered[100] ^= 0x55;
    std::fs::write(p.join("m.wasm"), &tampered).unwrap();
    let err = Pack::load(&p).unwrap_err();
    assert!(matches!(err, PolicyError::Digest { .. }), "{err}");
    assert!(err.to_string().contains(&sha256_hex(&tampered)), "{err}");
}

#[test]
fn manifests_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad");
    std::fs::create_dir_all(&p).unwrap();
    for (manifest, expect) in [
        ("name = \"x\"\n", "missing field"),
        ("name=\"x\"\nversion=\"1\"\nkind=\"lua\"\nmodule=\"m\"\nsha256=\"00\"\n", "unknown variant"),
        ("name=\"x\"\nversion=\"1\"\nkind=\"wasm\"\nmodule=\"../m\"\nsha256=\"00\"\n", "beside the manifest"),
        ("name=\"x\"\nversion=\"1\"\nkind=\"wasm\"\nmodule=\"m\"\nsha256=\"00\"\n", "64 hex digits"),
        ("name=\"x\"\nversion=\"1\"\nkind=\"wasm\"\nmodule=\"m\"\nsha256=\"00\"\ncolour=1\n", "unknown field"),
    ] {
        std::fs::write(p.join("pack.toml"), manifest).unwrap();
        let err = Pack::load(&p).unwrap_err().to_string();
        assert!(err.contains(expect), "{manifest:?}: {err}");
    }
    std::fs::write(dir.path().join("policy.lua"), b"return true").unwrap();
    let err = Pack::load(&dir.path().join("policy.lua")).unwrap_err().to_string();
    assert!(err.contains("expected a pack directory"), "{err}");
    let err = Pack::load(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("cannot read policy file") && err.contains("missing"), "{err}");
}

#[test]
fn modules_without_the_abi_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, expect) in [
        ("imports", r#"(module (import "env" "f" (func)) (memory (export "memory") 1))"#, "imports env::f"),
        ("nomem", r#"(module (func (export "alloc") (param i32) (result i32) (i32.const 0)))"#, "memory"),
        (
            "badsig",
            r#"(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 0))
                (func (export "evaluate") (param i32 i32) (result i32) (i32.const 0)))"#,
            "wrong signature",
        ),
        (
            "badbin",
            r#"(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 0))
                (func (export "evaluate") (param i32 i32) (result i64) (i64.const 0))
                (func (export "evaluate_binary") (param i32) (result i64) (i64.const 0)))"#,
            "export evaluate_binary has the wrong signature",
        ),
    ] {
        let err = Pack::load(&pack(dir.path(), name, &wat(text), "")).unwrap_err().to_string();
        assert!(err.contains(expect), "{name}: {err}");
    }
    std::fs::write(dir.path().join("junk.wasm"), b"\0asm junk").unwrap();
    let err = Pack::load(&dir.path().join("junk.wasm")).unwrap_err().to_string();
    assert!(err.contains("not a valid Wasm module"), "{err}");
}

/// A module whose `evaluate` runs `body` and returns what it leaves on the stack.
fn module(body: &str) -> Vec<u8> {
    wat(&format!(
        r#"(module (memory (export "memory") 1)
            (data (i32.const 64) "{{\"allow\":true}}")
            (data (i32.const 128) "not json")
            (func (export "alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "evaluate") (param i32 i32) (result i64) {body}))"#
    ))
}

#[test]
fn every_failure_of_a_wasm_pack_denies_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { fuel: 1_000_000, timeout: Duration::from_secs(5), memory: 1 << 20 };
    let d = doc("h", None, &[]);
    let ok = Pack::load(&pack(dir.path(), "ok", &module("(i64.const 274877906958)"), "")).unwrap(); // 64 << 32 | 14
    assert!(ok.try_evaluate(&d, &limits).unwrap().allow);
    for (name, body, expect) in [
        ("loop", "(loop $l (br $l)) (i64.const 0)", "ran out of fuel"),
        ("trap", "unreachable", "trapped"),
        ("oob", "(i64.const 0x7fff_0000_0000_0010)", "outside the module's memory"),
        ("json", "(i64.const 549755813896)", "not valid JSON"), // 128 << 32 | 8
        ("grow", "(drop (memory.grow (i32.const 100))) (i64.const 0)", "past 1048576 bytes"),
    ] {
        let p = Pack::load(&pack(dir.path(), name, &module(body), "")).unwrap();
        let err = p.try_evaluate(&d, &limits).unwrap_err().to_string();
        assert!(err.contains(expect), "{name}: {err}");
        let verdict = p.evaluate(&d, &limits);
        assert!(!verdict.allow, "{name} fails closed");
        assert!(verdict.reasons[0].contains(&format!("policy pack {name} failed")), "{verdict:?}");
    }
}

/// A module with both entry points gets the binary document through `evaluate_binary`: the
/// config's length and JSON, then the input starting with its version.
#[test]
fn modules_with_evaluate_binary_get_the_binary_document() {
    let (allow, json, other) = (
        r#"{\"allow\":true}"#,
        r#"{\"allow\":false,\"reasons\":[\"json\"]}"#,
        r#"{\"allow\":false,\"reasons\":[\"layout\"]}"#,
    );
    let packed = |at: u64, text: &str| (at << 32) | text.replace('\\', "").len() as u64;
    let text = format!(
        r#"(module (memory (export "memory") 1)
            (data (i32.const 64) "{allow}") (data (i32.const 128) "{json}") (data (i32.const 192) "{other}")
            (func (export "alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "evaluate") (param i32 i32) (result i64) (i64.const {}))
            (func (export "evaluate_binary") (param $p i32) (param $n i32) (result i64)
              (if (result i64)
                (i32.and (i32.eq (i32.load (local.get $p)) (i32.const 4))
                         (i32.and (i32.eq (i32.load (i32.add (local.get $p) (i32.const 4))) (i32.const 0x6c6c756e))
                                  (i32.eq (i32.load (i32.add (local.get $p) (i32.const 8))) (i32.const 1))))
                (then (i64.const {})) (else (i64.const {})))))"#,
        packed(128, json),
        packed(64, allow),
        packed(192, other)
    );
    let dir = tempfile::tempdir().unwrap();
    let p = Pack::load(&pack(dir.path(), "both", &wat(&text), "")).unwrap();
    let verdict = p.try_evaluate(&doc("h", None, &[]), &Limits::default()).unwrap();
    assert!(verdict.allow, "{verdict:?}");
}

/// The Wasm packs of a call share one store, but each runs in its own instance with the whole
/// fuel budget: twelve packs that each burn 80% of it all allow (so fuel is reset per pack, and
/// the ninth starts a second store), and one that loops denies alone.
#[test]
fn wasm_packs_sharing_a_call_store_each_get_their_own_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { fuel: 1_000_000, timeout: Duration::from_secs(5), memory: 1 << 20 };
    let burn = module(
        "(local $i i32) (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $l (i32.lt_u (local.get $i) (i32.const 100000)))) (i64.const 274877906958)",
    );
    let burner = |i: usize| Arc::new(Pack::load(&pack(dir.path(), &format!("burn{i}"), &burn, "")).unwrap());
    let d = doc("h", None, &[]);
    assert!(burner(99).try_evaluate(&d, &Limits { fuel: 500_000, ..limits }).unwrap_err().to_string().contains("fuel"));

    let mut packs: Vec<_> = (0..12).map(burner).collect();
    let verdict = PackSet { packs: packs.clone() }.evaluate(&d, &limits);
    assert!(verdict.allow, "{verdict:?}");

    let looping = module("(loop $l (br $l)) (i64.const 0)");
    packs.insert(3, Arc::new(Pack::load(&pack(dir.path(), "loop", &looping, "")).unwrap()));
    let verdict = PackSet { packs }.evaluate(&d, &limits);
    assert!(!verdict.allow);
    assert_eq!(verdict.reasons.len(), 1, "{verdict:?}");
    assert!(
        verdict.reasons[0].contains("policy pack loop failed") && verdict.reasons[0].contains("fuel"),
        "{verdict:?}"
    );
}

#[test]
fn the_epoch_deadline_stops_a_pack_with_fuel_to_spare() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { fuel: u64::MAX, timeout: Duration::from_millis(20), memory: 1 << 20 };
    let p = Pack::load(&pack(dir.path(), "spin", &module("(loop $l (br $l)) (i64.const 0)"), "")).unwrap();
    let started = std::time::Instant::now();
    let err = p.try_evaluate(&doc("h", None, &[]), &limits).unwrap_err().to_string();
    assert!(err.contains("past its deadline"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn reload_swaps_changed_packs_and_keeps_the_previous_version_of_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let allow = module("(i64.const 274877906958)");
    let a = pack(dir.path(), "a", &allow, "");
    let policy = Policy::load(std::slice::from_ref(&a), Limits::default()).unwrap();
    let first = policy.current().packs[0].id.clone();
    assert!(policy.reload(false).is_empty(), "nothing changed");

    let deny =
        wat(r#"(module (memory (export "memory") 1) (data (i32.const 64) "{\"allow\":false,\"reasons\":[\"v2\"]}")
           (func (export "alloc") (param i32) (result i32) (i32.const 1024))
           (func (export "evaluate") (param i32 i32) (result i64) (i64.const 274877906976)))"#); // 64 << 32 | 32
    pack(dir.path(), "a", &deny, "");
    let events = policy.reload(false);
    assert!(matches!(events.as_slice(), [Reloaded::Updated(id)] if *id != first), "{events:?}");
    let verdict = policy.current().evaluate(&doc("h", None, &[]), &policy.limits);
    assert_eq!(verdict.reasons, vec!["v2"]);

    let in_flight = policy.current();
    std::fs::write(a.join("m.wasm"), b"tampered").unwrap();
    let events = policy.reload(false);
    assert!(matches!(events.as_slice(), [Reloaded::Kept(PolicyError::Digest { .. })]), "{events:?}");
    assert_eq!(policy.current().packs[0].id, in_flight.packs[0].id, "the previous version stays in force");
}
