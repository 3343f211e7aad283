//! The cluster: nodes, the effect dispatcher that runs timers and trunk signalling, and the
//! [`Cluster`] handle tests and the host use.
//!
//! Why a dispatcher instead of nodes calling each other: a trunk call touches two nodes, and
//! taking node B's lock while holding node A's invites deadlocks (B answers A while A hangs up
//! B). Every cross-node or delayed thing is an [`Effect`] queued under one lock and run after it
//! is released, one node lock at a time, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::ClusterConfig;
use crate::error::SimError;
use crate::node::{NodeHandle, NodeInner};
use crate::state::{Effect, NodeCfg};

pub(crate) struct ClusterShared {
    pub nodes: Vec<Arc<NodeInner>>,
    pub by_name: HashMap<String, Arc<NodeInner>>,
    pub cfg: ClusterConfig,
}

/// Run effects: immediate ones in order on a spawned task (after the current request's
/// response), delayed ones each on its own timer.
pub(crate) fn dispatch(cluster: &Arc<ClusterShared>, effects: Vec<Effect>) {
    let mut now = VecDeque::new();
    for e in effects {
        if e.delay_ms == 0 {
            now.push_back(e);
        } else {
            spawn_delayed(cluster.clone(), e);
        }
    }
    if !now.is_empty() {
        let c = cluster.clone();
        tokio::spawn(async move { run_queue(&c, now) });
    }
}

fn spawn_delayed(cluster: Arc<ClusterShared>, e: Effect) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(e.delay_ms)).await;
        run_queue(&cluster, VecDeque::from([e]));
    });
}

fn run_queue(cluster: &Arc<ClusterShared>, mut queue: VecDeque<Effect>) {
    while let Some(e) = queue.pop_front() {
        let Some(node) = cluster.by_name.get(&*e.node) else {
            continue;
        };
        // A dead node receives nothing (a trunk INVITE to it goes unanswered).
        if !node.alive.load(Ordering::Acquire) {
            continue;
        }
        let produced = {
            let mut st = node.state.lock();
            if e.life.is_some_and(|l| l != st.life) {
                continue;
            }
            st.apply(e.action);
            std::mem::take(&mut st.effects)
        };
        for p in produced {
            if p.delay_ms == 0 {
                queue.push_back(p);
            } else {
                spawn_delayed(cluster.clone(), p);
            }
        }
    }
}

/// A running simulated cluster. Dropping it stops nothing by itself; call
/// [`Cluster::shutdown`] (or let the runtime end).
pub struct Cluster {
    shared: Arc<ClusterShared>,
    control: Option<crate::control::ControlServer>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes())
            .finish()
    }
}

impl Cluster {
    /// Start every node (each binds its port) and the cluster control server. Must be called
    /// inside a tokio runtime; the nodes run on that runtime.
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster, SimError> {
        cfg.validate()?;
        let shared = Arc::new_cyclic(|weak| {
            let mut nodes = Vec::new();
            let mut by_name = HashMap::new();
            for (i, n) in cfg.nodes.iter().enumerate() {
                let node_cfg = Arc::new(NodeCfg {
                    name: n.name.as_str().into(),
                    asterisk_id: cfg.asterisk_id(i).into(),
                    prefix: n
                        .channel_prefix
                        .clone()
                        .unwrap_or_else(|| format!("ast-{}", n.name)),
                    playback_ms: cfg.playback_ms,
                    sound_ms: cfg.sound_ms.clone(),
                    wait_forever_ms: cfg.wait_forever_ms,
                    rest_over_websocket: n.rest_over_websocket,
                    tls: n.tls.clone(),
                    amqp: crate::amqp::Shared::new(n.name.as_str().into(), cfg.node_amqp(i)),
                });
                let inner = Arc::new(NodeInner::new(
                    node_cfg,
                    n.dialplan.clone().unwrap_or_else(|| cfg.dialplan.clone()),
                    n.port,
                    cfg.bind.clone(),
                    cfg.username.clone(),
                    cfg.password.clone(),
                    weak.clone(),
                ));
                by_name.insert(n.name.clone(), inner.clone());
                nodes.push(inner);
            }
            ClusterShared {
                nodes,
                by_name,
                cfg: cfg.clone(),
            }
        });
        for n in &shared.nodes {
            n.start_server().await?;
        }
        let control = crate::control::ControlServer::start(shared.clone()).await?;
        Ok(Cluster {
            shared,
            control: Some(control),
        })
    }

    /// The node named `name`. Panics if there is none (tests name their nodes).
    pub fn node(&self, name: &str) -> NodeHandle {
        self.try_node(name)
            .unwrap_or_else(|| panic!("no simulated node named {name:?}"))
    }

    pub fn try_node(&self, name: &str) -> Option<NodeHandle> {
        self.shared.by_name.get(name).map(|inner| NodeHandle {
            inner: inner.clone(),
        })
    }

    /// All nodes, in configuration order.
    pub fn nodes(&self) -> Vec<NodeHandle> {
        self.shared
            .nodes
            .iter()
            .map(|inner| NodeHandle {
                inner: inner.clone(),
            })
            .collect()
    }

    /// Base URL of the cluster control API (`http://127.0.0.1:<port>/_sim`), which also works
    /// while a node is killed.
    pub fn control_url(&self) -> String {
        self.control.as_ref().map(|c| c.url()).unwrap_or_default()
    }

    /// `(username, password)` for ARI.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.shared.cfg.username, &self.shared.cfg.password)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.shared.cfg
    }

    /// Kill every node and stop the control server.
    pub async fn shutdown(mut self) {
        for n in &self.shared.nodes {
            n.kill().await;
        }
        if let Some(c) = self.control.take() {
            c.stop().await;
        }
    }
}
