//! Every committed fuzz seed (`fuzz/corpus/TARGET/`) and every input that once crashed a target
//! (`fuzz/regressions/TARGET/`, copied there by `scripts/fuzz`) runs through its target on each
//! `cargo test`, so a fixed crash stays fixed; and every target has seeds.

use std::path::{Path, PathBuf};

use fleetforge_proxy::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

#[test]
fn every_target_has_seeds_and_every_seed_folder_a_target() {
    for (name, _) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name));
        assert!(seeds.len() >= 3, "fuzz/corpus/{name}/ has {} seeds; give each target at least 3", seeds.len());
    }
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                assert!(
                    TARGETS.iter().any(|(n, _)| *n == name),
                    "fuzz/{kind}/{name}/ names no target in proxy/src/fuzz.rs"
                );
            }
        }
    }
}

#[test]
fn seeds_and_past_crashes_pass_their_targets() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in files(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&file).expect("read a fuzz input");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{} fails target {name}", file.display());
                ran += 1;
            }
        }
    }
    assert!(ran >= 3 * TARGETS.len(), "only {ran} inputs ran");
}
