//! libFuzzer entry of every fuzz target: `FLEETFORGE_FUZZ_TARGET` names the one this process
//! runs (`proxy/src/fuzz.rs` lists them). Run it with `scripts/fuzz`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn target() -> fn(&[u8]) {
    static TARGET: OnceLock<fn(&[u8])> = OnceLock::new();
    *TARGET.get_or_init(|| {
        let name = std::env::var("FLEETFORGE_FUZZ_TARGET").unwrap_or_default();
        fleetforge_proxy::fuzz::target(&name).unwrap_or_else(|| {
            let names: Vec<&str> = fleetforge_proxy::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            eprintln!("FLEETFORGE_FUZZ_TARGET={name:?} is not a fuzz target; one of: {}", names.join(", "));
            std::process::exit(2)
        })
    })
}

fuzz_target!(|data: &[u8]| target()(data));
