//! `fleetforge-fake-upstream`: the e2e fake upstream as a standalone server, for benchmarks and
//! manual demos.
//!
//! Prints one JSON line, `{"addr":"127.0.0.1:PORT","ca":"/dir/test-ca.pem"}` (`"ca":null` with
//! `--plain`), once it is listening, then serves until SIGTERM or SIGINT. Requests are not
//! recorded or logged: it is the benchmark's upstream and must cost as little as possible.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use fleetforge_e2e::{TestCa, Upstream};
use tokio::signal::unix::{SignalKind, signal};

/// Fake OpenAI/Anthropic upstream for FleetForge benchmarks and demos.
#[derive(Debug, Parser)]
#[command(name = "fleetforge-fake-upstream")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Comma-separated DNS names / IP literals for the TLS leaf certificate.
    #[arg(long, value_delimiter = ',', default_value = "api.openai.com,api.llm.test,localhost,127.0.0.1")]
    names: Vec<String>,
    /// Directory to write the throwaway CA to (`test-ca.pem`); required unless --plain.
    #[arg(long, required_unless_present = "plain")]
    ca_dir: Option<PathBuf>,
    /// Serve plain HTTP (HTTP/1.1 or h2c) instead of HTTPS.
    #[arg(long)]
    plain: bool,
    /// Tokio worker threads.
    #[arg(long, default_value = "1")]
    threads: NonZeroUsize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.get())
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = Upstream::builder().listen(args.listen).record(false);
    let mut ca_path = None;
    if !args.plain {
        let dir = args.ca_dir.as_deref().context("--ca-dir is required unless --plain is given")?;
        let ca = TestCa::new(dir)?;
        let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
        builder = builder.tls(&ca, &names);
        let path = ca.pem_path().to_str().context("the CA path is not UTF-8")?;
        ca_path = Some(path.to_owned());
    }
    let upstream = builder.start().await?;

    let ready = serde_json::json!({"addr": upstream.addr().to_string(), "ca": ca_path});
    // `println!` flushes at the newline, so a parent reading our stdout sees the line at once.
    println!("{ready}");

    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
    }
    drop(upstream);
    Ok(())
}
