//! `stasis-host demo`: the whole system on one machine with no PBX.
//!
//! Starts two simulated Asterisk nodes, the host, and the conference app; places calls on
//! both nodes; prints, as it happens, what each caller does and which ARI requests reached
//! which node; checks the outcome and exits non-zero if the system misbehaved. It is both
//! the first thing a new user runs and a smoke test of the full pipeline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stasis_sim::{ClusterConfig, InboundCall, NodeHandle};

use crate::cluster::Health;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::runtime::{AppSettings, RuntimeConfig};

/// Arguments of `stasis-host demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The conference component to run (default: the repository's plugins, built on demand).
    #[arg(long)]
    pub app: Option<PathBuf>,
}

/// Prints each node's new ARI requests since the last call.
struct RequestTail {
    nodes: Vec<(NodeHandle, usize)>,
}

impl RequestTail {
    fn new(nodes: Vec<NodeHandle>) -> Self {
        RequestTail {
            nodes: nodes.into_iter().map(|n| (n, 0)).collect(),
        }
    }

    fn print_new(&mut self) {
        for (node, seen) in &mut self.nodes {
            let log = node.request_log();
            for r in log.iter().skip(*seen) {
                // The host's own housekeeping (identify, websocket and its probe, event
                // filters) is not the app's doing.
                if r.path.ends_with("/asterisk/info")
                    || r.path.ends_with("/events")
                    || r.path.ends_with("/eventFilter")
                    || (r.over_websocket && r.path.ends_with("/asterisk/ping"))
                {
                    continue;
                }
                let query = if r.query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", r.query)
                };
                println!(
                    "      host → node {} ({}): {} {}{} → {}",
                    node.name(),
                    if r.over_websocket { "ws" } else { "http" },
                    r.method,
                    r.path,
                    query,
                    r.status
                );
            }
            *seen = log.len();
        }
    }
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn in_bridge(node: &NodeHandle, channel: &str, bridge: &str) -> bool {
    node.channel(channel)
        .is_some_and(|c| c.state == "Up" && c.bridge.as_deref() == Some(bridge))
}

/// Runs the demo; `Ok` means every step behaved.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let wasm = match &args.app {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            println!("building the example plugins (plugins/build.sh)…");
            crate::runtime::testing::plugin_wasm("conference").map_err(anyhow::Error::msg)?
        }
    };

    let mut sim_config = ClusterConfig::with_nodes(2);
    sim_config.control_port = 0;
    for node in &mut sim_config.nodes {
        node.port = 0;
    }
    let sim = stasis_sim::Cluster::start(sim_config)
        .await
        .context("starting the simulated nodes")?;
    let (a, b) = (sim.node("a"), sim.node("b"));
    // Trunk calls between the nodes are conference legs (deploy/asterisk/extensions.conf).
    for n in [&a, &b] {
        n.set_route(
            "from-trunk",
            "_.",
            stasis_sim::Route::Stasis {
                app: crate::conference::TRUNK_APP.into(),
                args: vec!["${EXTEN}".into()],
            },
        );
    }
    let (user, pass) = sim.credentials();
    println!("\n▶ two simulated Asterisk 22 nodes");
    for n in [&a, &b] {
        println!(
            "    node {}  asterisk_id {}  ARI {}",
            n.name(),
            n.asterisk_id(),
            n.ari_url()
        );
    }

    let mut toml = String::new();
    for n in [&a, &b] {
        toml.push_str(&format!(
            "[nodes.{}]\nari_url = \"{}\"\nusername = \"{user}\"\npassword = \"{pass}\"\n",
            n.name(),
            n.ari_url()
        ));
    }
    let config = Config::from_toml(&toml)?;
    let gateway = Gateway::start(config, RuntimeConfig::default()).await?;
    let app = gateway
        .load_app("conf", wasm.clone(), AppSettings::default())
        .await?;
    println!(
        "▶ stasis-host running app \"conf\" (conference.wasm, {} KiB), one sandboxed instance per call",
        wasm.len() / 1024
    );
    // Asterisk creates the app just after the websocket upgrade: wait until both nodes have it.
    wait_for("both nodes to connect", Duration::from_secs(10), || {
        gateway.cluster.nodes().all(|n| n.health() == Health::Up)
            && [&a, &b]
                .iter()
                .all(|n| n.apps().iter().any(|app| app == "conf"))
    })
    .await?;
    println!("▶ host connected to both nodes (one ARI websocket each)\n");

    let mut tail = RequestTail::new(vec![a.clone(), b.clone()]);
    tail.print_new();
    let callers = [
        ("Alice", "1001", &a),
        ("Bob", "1002", &b),
        ("Carol", "1003", &a),
    ];
    let mut channels = Vec::new();
    for (name, number, node) in callers {
        println!(
            "☎  {name} ({number}) dials 8000 and lands on node {}",
            node.name()
        );
        let id = node.inject_call(InboundCall {
            caller_name: name.into(),
            caller_number: number.into(),
            exten: "8000".into(),
            ..Default::default()
        })?;
        wait_for(
            &format!("{name} to be answered and bridged"),
            Duration::from_secs(5),
            || in_bridge(node, &id, "conf"),
        )
        .await?;
        tail.print_new();
        println!(
            "    {name} is up and in the conference bridge on node {}\n",
            node.name()
        );
        channels.push((name, id, node));
    }

    println!("▶ bridges as the nodes see them:");
    for n in [&a, &b] {
        for bridge in n.bridges() {
            let members: Vec<String> = bridge
                .channels
                .iter()
                .filter_map(|c| n.channel(c))
                .map(|c| format!("{} ({})", c.caller.name, c.name))
                .collect();
            println!(
                "    node {} bridge {} [{}]: {}",
                n.name(),
                bridge.id,
                bridge.bridge_type,
                members.join(", ")
            );
        }
    }
    println!("    (PJSIP/trunk-… is the host's link between the nodes; apps never see it)");
    for n in [&a, &b] {
        for bridge in n.bridges() {
            let _ = bridge;
        }
    }
    println!("    live calls in the host: {}\n", app.live_calls());
    if app.live_calls() != channels.len() {
        bail!(
            "expected {} live calls, the host has {}",
            channels.len(),
            app.live_calls()
        );
    }

    for (name, id, node) in &channels {
        println!("☎  {name} hangs up");
        node.hangup_far_end(id, None)?;
        wait_for(
            &format!("{name}'s channel to go"),
            Duration::from_secs(5),
            || node.channel(id).is_none(),
        )
        .await?;
        tail.print_new();
    }
    wait_for("every call instance to end", Duration::from_secs(5), || {
        app.live_calls() == 0
    })
    .await?;
    // The host tears the conference down: trunk legs hung up, empty bridges deleted.
    wait_for(
        "every bridge and channel to be gone",
        Duration::from_secs(5),
        || {
            [&a, &b]
                .iter()
                .all(|n| n.bridges().is_empty() && n.channels().is_empty())
        },
    )
    .await?;
    tail.print_new();

    // Every request must have gone to the node that owns the channel it names.
    for (_, id, node) in &channels {
        for other in [&a, &b].into_iter().filter(|n| n.name() != node.name()) {
            if other
                .request_log()
                .iter()
                .any(|r| r.path.contains(id.as_str()))
            {
                bail!(
                    "a request for {id} reached node {} instead of node {}",
                    other.name(),
                    node.name()
                );
            }
        }
    }
    println!(
        "\n✔ demo finished: 3 callers on 2 nodes in one conference (one trunk leg between the nodes); \
         every request reached the node owning its channel; no call, bridge or channel left"
    );
    gateway.shutdown();
    sim.shutdown().await;
    Ok(())
}
