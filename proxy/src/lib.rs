//! FleetForge egress proxy.
//!
//! Sits between AI agents and the LLM and tool endpoints they call. Agents use it unmodified, as
//! `HTTPS_PROXY` (forward listener, with TLS interception for the hosts in the intercept set) or as
//! a base URL (sidecar listener bound to one upstream). Every call runs the same pipeline — start
//! reading at [`flow`], which calls the phases in order:
//!
//! identify → authorize → meter → seal + forward → settle → record
//!
//! Phases are the verb-named modules ([`identify`], [`authorize`], [`meter`], [`forward`],
//! [`settle`], [`record`]); the machinery they use are the noun modules ([`tls`], [`upstream`],
//! [`listener`], [`metrics`], [`facts`], [`runs`], [`body`]). The call's facts live in
//! [`context`], the shared state in [`state`], start-up in [`start`].
//!
//! Layers, each importing only those below it (`scripts/module-cycles` checks there is no
//! circle): listeners and start-up → [`flow`] → phases → shared state, context and machinery.
#![forbid(unsafe_code)]

pub mod authorize;
pub mod body;
pub mod budget;
pub mod capability;
pub mod config;
pub mod context;
pub mod error;
pub mod estimate;
pub mod facts;
pub mod flow;
pub mod forward;
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
pub mod headers;
pub mod identify;
pub mod io;
pub mod lease;
pub mod listener;
pub mod meter;
pub mod metrics;
pub mod outbound;
pub mod pattern;
pub mod phase;
pub mod policy;
pub mod prices;
pub mod rate;
pub mod record;
pub mod replay;
pub mod runs;
pub mod seal;
pub mod settle;
pub mod ship;
pub mod shutdown;
pub mod spool;
pub mod start;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod usage;

pub use config::Config;
pub use start::{Running, StartError};
pub use state::Proxy;
