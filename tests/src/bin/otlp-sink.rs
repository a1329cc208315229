//! `fleetforge-otlp-sink`: the e2e OTLP receiver as a standalone server, for benchmarks.
//!
//! Accepts OTLP trace exports over HTTP/protobuf and gRPC, decodes each with `opentelemetry-proto`
//! and counts its spans without keeping them. Prints one JSON line, `{"addr":"127.0.0.1:PORT"}`,
//! once it is listening; on SIGTERM or SIGINT prints `{"spans":N}` and exits.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use fleetforge_e2e::otlp::OtlpReceiver;
use tokio::signal::unix::{SignalKind, signal};

/// OTLP trace sink for FleetForge benchmarks.
#[derive(Debug, Parser)]
#[command(name = "fleetforge-otlp-sink")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the tokio runtime")?.block_on(
        async move {
            let sink = OtlpReceiver::start_on(args.listen, false).await?;
            println!("{}", serde_json::json!({ "addr": sink.addr().to_string() }));
            let mut term = signal(SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            println!("{}", serde_json::json!({ "spans": sink.counted() }));
            Ok(())
        },
    )
}
