//! FleetForge control plane and operator CLI.
//!
//! Today this crate holds the operator commands that work without the control service — `up`,
//! which runs the proxy in-process with the embedded defaults and prints the lines to paste into an
//! agent's shell. The control service itself (receipts on Postgres or SQLite, the API, the web
//! page) lands here with the evidence path.
#![forbid(unsafe_code)]

pub mod up;
