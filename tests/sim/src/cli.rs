//! `stasis-host sim`: run a simulated cluster for local app development.
//!
//! The host binary embeds [`SimArgs`] as a clap subcommand and calls [`run`]:
//!
//! ```text
//! stasis-host sim                      # nodes a and b on 8088, 8089; control on 8099
//! stasis-host sim --nodes 3 --base-port 9000 --playback-ms 500
//! stasis-host sim --config sim.toml    # a ClusterConfig file (.toml or .json)
//! stasis-host sim --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --amqp-exchange wazo
//! ```

use std::path::PathBuf;

use crate::cluster::Cluster;
use crate::config::{AmqpFormat, ClusterConfig, NodeConfig, node_name};

/// Arguments of `stasis-host sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Number of nodes (named a, b, c, ...); ignored with --config.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// A ClusterConfig file (.toml or .json); flags below override it where given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Port of the first node; the next nodes take the following ports. 0 = ephemeral.
    #[arg(long, default_value_t = 8088)]
    pub base_port: u16,
    /// Port of the cluster control API (kill/revive live here). 0 = ephemeral.
    #[arg(long, default_value_t = 8099)]
    pub control_port: u16,
    /// Length of every sound playback in ms (default: the recorded lengths, 1 s otherwise).
    #[arg(long)]
    pub playback_ms: Option<u64>,
    /// ARI user name.
    #[arg(long, default_value = "asterisk")]
    pub username: String,
    /// ARI password.
    #[arg(long, default_value = "asterisk")]
    pub password: String,
    /// Publish the events of AMQP-registered apps (`POST /ari/amqp/{app}`) to this broker,
    /// e.g. amqp://guest:guest@127.0.0.1:5672/%2f (overrides the config file's `amqp.url`).
    #[arg(long)]
    pub amqp_url: Option<String>,
    /// Topic exchange for those events (default `stasis`; it must exist before nodes publish).
    #[arg(long)]
    pub amqp_exchange: Option<String>,
    /// Body format: envelope (default) or raw.
    #[arg(long, value_parser = ["envelope", "raw"])]
    pub amqp_format: Option<String>,
}

impl SimArgs {
    /// The cluster configuration these arguments describe.
    pub fn to_config(&self) -> anyhow::Result<ClusterConfig> {
        let mut cfg = match &self.config {
            Some(path) => ClusterConfig::from_file(path)?,
            None => {
                let mut c = ClusterConfig::with_nodes(self.nodes.max(1));
                for (i, n) in c.nodes.iter_mut().enumerate() {
                    *n = NodeConfig::named(&node_name(i));
                    n.port = if self.base_port == 0 {
                        0
                    } else {
                        self.base_port + i as u16
                    };
                }
                c.control_port = self.control_port;
                c.username = self.username.clone();
                c.password = self.password.clone();
                c
            }
        };
        if let Some(ms) = self.playback_ms {
            cfg = cfg.with_playback_ms(ms);
        }
        if self.amqp_url.is_some() || self.amqp_exchange.is_some() || self.amqp_format.is_some() {
            let mut amqp = cfg.amqp.clone().unwrap_or_default();
            if let Some(u) = &self.amqp_url {
                amqp.url = u.clone();
            }
            if let Some(e) = &self.amqp_exchange {
                amqp.exchange = e.clone();
            }
            if let Some(f) = &self.amqp_format {
                amqp.format = if f == "raw" {
                    AmqpFormat::Raw
                } else {
                    AmqpFormat::Envelope
                };
            }
            cfg.amqp = Some(amqp);
        }
        Ok(cfg)
    }
}

/// Start the cluster, print how to reach it, run until Ctrl-C.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let cluster = Cluster::start(cfg).await?;
    let (user, pass) = cluster.credentials();
    println!("simulated Asterisk cluster (ARI user {user:?}, password {pass:?})");
    for n in cluster.nodes() {
        println!(
            "  node {}  asterisk_id {}  ARI {}  events {}  control {}",
            n.name(),
            n.asterisk_id(),
            n.ari_url(),
            n.ws_url("<app>"),
            n.control_url()
        );
    }
    println!(
        "  cluster control {} (kill/revive: POST /_sim/nodes/<node>/kill|revive)",
        cluster.control_url()
    );
    for n in cluster.nodes() {
        if let Some(a) = n.amqp_config() {
            println!(
                "  node {} publishes AMQP-registered apps (POST /ari/amqp/<app>) to exchange {:?} ({:?}), routing key stasis.app.<app>",
                n.name(),
                a.exchange,
                a.format
            );
        }
    }
    println!("Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    cluster.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn amqp_flags_make_an_amqp_section() {
        let cli = Cli::parse_from([
            "sim",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "--amqp-format",
            "raw",
        ]);
        let cfg = cli.sim.to_config().unwrap();
        let amqp = cfg.amqp.clone().unwrap();
        assert_eq!(amqp.exchange, "stasis");
        assert_eq!(amqp.format, AmqpFormat::Raw);
        cfg.validate().unwrap();
        let plain = Cli::parse_from(["sim"]).sim.to_config().unwrap();
        assert_eq!(plain.amqp, None);
    }
}
