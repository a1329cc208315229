//! Support code for FleetForge's end-to-end tests.
//!
//! The e2e tests start the real binaries and drive them with real clients (curl, Python, Node);
//! this crate provides what they talk to: an in-process fake upstream ([`Upstream`]) serving
//! OpenAI- and Anthropic-shaped APIs plus transport probes, and the throwaway CA ([`TestCa`]) it
//! and the clients trust. It deliberately does not depend on the proxy crate: it tests the proxy
//! from the outside.
#![forbid(unsafe_code)]

pub mod harness;
pub mod otlp;
pub mod upstream;

pub use harness::{Clients, ProxyProcess};
pub use upstream::{RecordedRequest, TestCa, Upstream, UpstreamBuilder, install_crypto_provider, pattern_bytes};
