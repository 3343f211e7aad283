//! The `stasis-host` command line: `serve` for real deployments, `demo` to see it work with
//! no PBX at all, `sim` to run the simulated cluster for local app development.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stasis_host::config::Config;
use stasis_host::gateway::Gateway;
use stasis_host::runtime::RuntimeConfig;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "stasis-host", version, about = "Asterisk ARI apps as sandboxed WebAssembly components, across a cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host against the nodes of a configuration file.
    Serve {
        /// The configuration (see deploy/stasis-host.toml); STASIS_* variables override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start two simulated nodes, the host and the conference app; place calls; show what
    /// happens; exit 0 when everything behaved.
    Demo(stasis_host::demo::DemoArgs),
    /// Run a simulated Asterisk cluster (no host) for local app development.
    Sim(stasis_sim::SimArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("STASIS_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_target(false)
        .init();
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Demo(args) => stasis_host::demo::run(args).await,
        Command::Sim(args) => stasis_sim::run(args).await,
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path).with_context(|| format!("configuration {}", path.display()))?;
    let gateway = Gateway::start(config, RuntimeConfig::default()).await.context("starting the host")?;
    tracing::info!(nodes = gateway.config.nodes.len(), apps = gateway.config.apps.len(), "stasis-host serving");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    gateway.shutdown();
    Ok(())
}
