//! The FleetForge policy SDK: write a policy pack as one plain Rust function.
//!
//! A pack is a core Wasm module (`wasm32-unknown-unknown`, no imports) that the proxy runs once per
//! call in a fresh instance. The proxy writes the call document into the module's memory — the
//! pack's manifest config as JSON and the input document in the binary layout of [`binary`]
//! (through the `evaluate_binary` export), or `{"config": …, "input": …}` as JSON (through
//! `evaluate`, for hosts that only speak JSON) — and reads back a JSON [`Verdict`]. This crate
//! owns both ends of that exchange so a pack author only writes the decision:
//!
//! ```
//! use fleetforge_policy_sdk::{Input, Verdict, glob};
//!
//! /// The pack's `[config]` table from `pack.toml`.
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! pub struct Config {
//!     /// Hosts that calls may go to.
//!     pub hosts: Vec<String>,
//! }
//!
//! /// Deny hosts outside the list.
//! pub fn decide(config: &Config, input: &Input) -> Verdict {
//!     if glob::any_host(&config.hosts, &input.request.host) {
//!         Verdict::allow()
//!     } else {
//!         Verdict::deny(format!("host {} is not allowed", input.request.host))
//!     }
//! }
//!
//! fleetforge_policy_sdk::policy!(decide);
//! # fn main() {}
//! ```
//!
//! Invariants the SDK keeps:
//! - the document is read once, straight into typed structs (no `serde_json::Value` tree); both
//!   entry points give the same [`Input`] and the same verdicts;
//! - a document that does not parse, or an input version this SDK does not understand, yields a
//!   deny verdict whose reason starts with `policy input is not valid: ` — a pack never traps on
//!   bad input (a panic in pack logic still traps, which the host treats as deny);
//! - the Wasm exports exist only on `wasm32`; on the host the same logic runs through [`run`], so
//!   packs are unit-tested with plain `cargo test`.

mod abi;
pub mod binary;
#[cfg(target_arch = "wasm32")]
mod bump;
pub mod glob;
mod input;
pub mod testing;
mod verdict;

pub use crate::abi::{INPUT_VERSION, run, run_binary, run_binary_to_json, run_to_json};
pub use crate::input::{Input, Llm, Mcp, Request, Run, State};
pub use crate::verdict::{Obligations, Verdict};

#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub use crate::abi::wasm as __wasm;

/// Packs allocate with a bump allocator: each call runs in a fresh instance, so nothing is reused.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

/// Turns a policy function into a pack: generates the Wasm exports `alloc` and `evaluate`.
///
/// `policy!(decide)` takes a function `fn decide(config: &C, input: &Input) -> Verdict` where `C`
/// is the pack's config type (`serde::de::DeserializeOwned + Default`; a missing or `null` config
/// deserializes to `C::default()`). The exports follow the ABI in `docs/reference/policy-input.md`:
///
/// - `alloc(len: i32) -> i32` returns a pointer to `len` writable bytes (0 if `len` is negative);
/// - `evaluate(ptr: i32, len: i32) -> i64` parses the document at `ptr..ptr+len`, calls `decide`,
///   and returns `(out_ptr << 32) | out_len` of the UTF-8 JSON verdict;
/// - `evaluate_binary(ptr: i32, len: i32) -> i64` does the same for the binary call document
///   ([`run_binary`]), which the proxy prefers when a module exports it.
///
/// The exports are generated only when compiling for `wasm32`, so a pack crate also builds and
/// tests on the host. Invoke the macro once per crate, at its root.
#[macro_export]
macro_rules! policy {
    ($decide:path) => {
        #[doc(hidden)]
        #[cfg(target_arch = "wasm32")]
        // `#[unsafe(no_mangle)]` counts as unsafe code; the exports are thin wrappers around
        // `fleetforge_policy_sdk`'s audited ABI functions, which hold the only `unsafe` block.
        #[allow(unsafe_code)]
        mod __fleetforge_policy_exports {
            /// Wasm export: reserves `len` bytes for the host to write the call document into.
            #[unsafe(no_mangle)]
            pub extern "C" fn alloc(len: i32) -> i32 {
                $crate::__wasm::alloc(len)
            }

            /// Wasm export: evaluates the call document and returns `(ptr << 32) | len` of the verdict.
            #[unsafe(no_mangle)]
            pub extern "C" fn evaluate(ptr: i32, len: i32) -> i64 {
                // SAFETY: the host contract (see `fleetforge_policy_sdk::__wasm::evaluate`): `ptr` was
                // returned by `alloc(len)` in this instance and the host wrote `len` bytes there.
                unsafe { $crate::__wasm::evaluate(ptr, len, super::__fleetforge_policy_entry) }
            }

            /// Wasm export: `evaluate` for the binary call document (config JSON, binary input).
            #[unsafe(no_mangle)]
            pub extern "C" fn evaluate_binary(ptr: i32, len: i32) -> i64 {
                // SAFETY: as for `evaluate`.
                unsafe { $crate::__wasm::evaluate(ptr, len, super::__fleetforge_policy_entry_binary) }
            }
        }

        #[doc(hidden)]
        #[cfg(target_arch = "wasm32")]
        fn __fleetforge_policy_entry(document: &[u8]) -> ::std::vec::Vec<u8> {
            $crate::run_to_json(document, $decide)
        }

        #[doc(hidden)]
        #[cfg(target_arch = "wasm32")]
        fn __fleetforge_policy_entry_binary(document: &[u8]) -> ::std::vec::Vec<u8> {
            $crate::run_binary_to_json(document, $decide)
        }
    };
}
