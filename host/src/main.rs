//! The `stasis-host` command line: `serve` for real deployments, `demo` to see it work with
//! no PBX at all, `sim` to run the simulated cluster for local app development.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stasis_host::config::Config;
use stasis_host::gateway::Gateway;
use stasis_host::runtime::RuntimeConfig;
use tracing_subscriber::EnvFilter;

/// Every event and request allocates a few dozen small strings; mimalloc serves them from
/// per-thread pages for less CPU than glibc's malloc (measured with the flow bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stasis-host",
    version,
    about = "Asterisk ARI apps as sandboxed WebAssembly components, across a cluster"
)]
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
    /// Manage the apps of a running host through its admin API.
    App {
        /// The host's admin API (`[listen] admin`).
        #[arg(
            long,
            env = "STASIS_ADMIN_URL",
            default_value = "http://127.0.0.1:8090",
            global = true
        )]
        host: String,
        /// Bearer token of the admin API (`[listen] admin_token`).
        #[arg(
            long,
            env = "STASIS_ADMIN_TOKEN",
            hide_env_values = true,
            global = true
        )]
        token: Option<String>,
        #[command(subcommand)]
        command: AppCommand,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// Upload a component as a new version of an app; new calls use it at once.
    Push {
        /// The compiled component (.wasm).
        file: PathBuf,
        /// The app name (what the dialplan's Stasis() names).
        #[arg(long, short)]
        name: String,
        #[arg(long)]
        max_live_calls: Option<usize>,
        #[arg(long)]
        memory_mb: Option<usize>,
        #[arg(long)]
        callback_deadline_ms: Option<u64>,
        /// `hangup` or `continue`.
        #[arg(long)]
        on_fault: Option<String>,
        /// A config value given to the app (kv key `config.KEY`); repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// List the apps.
    List,
    /// Show one app: versions, live calls, recent errors.
    Show { name: String },
    /// Delete an app: new calls stop, calls in progress finish (or are hung up with --force).
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Make the previous version serve new calls again.
    Rollback { name: String },
}

mod cli_app;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo(_) | Command::App { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STASIS_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_target(false)
        .init();
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Demo(args) => stasis_host::demo::run(args).await,
        Command::Sim(args) => stasis_sim::run(args).await,
        Command::App {
            host,
            token,
            command,
        } => cli_app::run(&host, token, command).await,
    }
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config =
        Config::load(&path).with_context(|| format!("configuration {}", path.display()))?;
    let gateway = Gateway::start(config, RuntimeConfig::default())
        .await
        .context("starting the host")?;
    let apps = stasis_host::apps::Apps::open(&gateway)
        .await
        .context("opening the app store")?;
    if let Some(addr) = gateway.config.listen.admin {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin API on {addr}"))?;
        let token = gateway.config.listen.admin_token.clone();
        if token.as_deref().is_none_or(str::is_empty) {
            tracing::warn!(%addr, "admin API without a token (loopback only): set listen.admin_token");
        }
        tracing::info!(%addr, "admin API listening");
        tokio::spawn(async move {
            if let Err(e) = stasis_host::admin::serve(listener, apps, token.as_deref()).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    if let Some(addr) = gateway.config.listen.facade {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the ARI facade on {addr}"))?;
        let facade = stasis_host::facade::Facade::new(&gateway, &addr.to_string())
            .context("starting the ARI facade")?;
        tokio::spawn(async move {
            if let Err(e) = stasis_host::facade::serve(listener, facade).await {
                tracing::error!(error = %e, "ARI facade stopped");
            }
        });
    }
    tracing::info!(
        nodes = gateway.config.nodes.len(),
        apps = gateway.catalog.all().len(),
        "stasis-host serving"
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    gateway.shutdown();
    Ok(())
}
