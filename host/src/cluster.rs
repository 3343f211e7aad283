//! The nodes of the cluster: their names, identities (`asterisk_id`) and health.
//!
//! A node is configured by name but speaks by entity id: every event carries the
//! `asterisk_id`, never the name. The mapping is learnt from `GET /asterisk/info` when the
//! host connects, and it must be one-to-one: two nodes claiming one entity id would send
//! requests for one node's channels to the other, so the second claim is refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::ari_client::AriClient;
use crate::backend::AriError;
use crate::config::{Config, NodeConfig};
use crate::tls::TlsError;

/// Whether the host can reach a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Never connected since start-up.
    Starting,
    /// The event connection is live.
    Up,
    /// The event connection dropped; the host is reconnecting.
    Down,
    /// The node claims an entity id another node already has; the host does not use it.
    Refused,
}

/// One Asterisk node.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub config: NodeConfig,
    pub client: AriClient,
    asterisk_id: RwLock<Option<String>>,
    health: watch::Sender<Health>,
}

impl Node {
    /// The node's entity id, once learnt.
    pub fn asterisk_id(&self) -> Option<String> {
        self.asterisk_id.read().clone()
    }

    pub fn health(&self) -> Health {
        *self.health.borrow()
    }

    /// Subscribes to health changes.
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    pub(crate) fn set_health(&self, health: Health) {
        self.health.send_replace(health);
    }

    pub fn is_up(&self) -> bool {
        self.health() == Health::Up
    }
}

/// Two nodes claimed one entity id.
/// Why a node could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    #[error("cannot identify node: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Duplicate(#[from] DuplicateIdentity),
}

#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "node {node} reports asterisk_id {asterisk_id}, which node {holder} already has: set a unique `entityid` in each node's asterisk.conf; node {node} is refused"
)]
pub struct DuplicateIdentity {
    pub node: String,
    pub holder: String,
    pub asterisk_id: String,
}

/// All configured nodes.
#[derive(Debug)]
pub struct Cluster {
    by_name: BTreeMap<String, Arc<Node>>,
    by_id: RwLock<HashMap<String, String>>,
    tls: Arc<rustls::ClientConfig>,
}

impl Cluster {
    /// Fails only when the TLS configuration cannot be built (see `tls`).
    pub fn from_config(config: &Config) -> Result<Cluster, TlsError> {
        let tls = crate::tls::client_config(config.tls.ca_file.as_deref())?;
        let by_name = config
            .nodes
            .iter()
            .map(|(name, node)| {
                let client = AriClient::new(
                    name,
                    &node.ari_base(),
                    &node.username,
                    &node.password,
                    config.limits.connect_timeout(),
                    config.limits.request_timeout(),
                    tls.clone(),
                );
                let node = Node {
                    name: name.clone(),
                    config: node.clone(),
                    client,
                    asterisk_id: RwLock::new(None),
                    health: watch::channel(Health::Starting).0,
                };
                (name.clone(), Arc::new(node))
            })
            .collect();
        Ok(Cluster {
            by_name,
            by_id: RwLock::new(HashMap::new()),
            tls,
        })
    }

    /// The TLS client configuration of every connection to a node, and to an `amqps://`
    /// broker.
    pub fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.by_name.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.by_name.values()
    }

    /// The node with this entity id, if one has claimed it.
    pub fn by_asterisk_id(&self, asterisk_id: &str) -> Option<&Arc<Node>> {
        let name = self.by_id.read().get(asterisk_id).cloned()?;
        self.by_name.get(&name)
    }

    /// Asks `node` who it is (`GET /asterisk/info`) and claims its entity id. Returns its
    /// start-up time, which changes when the node restarts.
    pub async fn identify(&self, node: &Node) -> Result<String, IdentifyError> {
        // Over HTTP: intake identifies a node while it is not reading the node's event socket
        // (opening the next one), so an answer on the socket would never be read.
        let info = node
            .client
            .call_http(
                reqwest::Method::GET,
                "/asterisk/info",
                &[("only".into(), "system,status".into())],
                None,
            )
            .await
            .map_err(|e| IdentifyError::Unreachable(e.to_string()))?
            .json();
        let entity_id = info["system"]["entity_id"].as_str().ok_or_else(|| {
            IdentifyError::Unreachable("GET /asterisk/info has no system.entity_id".into())
        })?;
        self.claim(node, entity_id)?;
        Ok(info["status"]["startup_time"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Records that `node` reported `asterisk_id`. A node may keep its id across reconnects
    /// or change it (re-provisioned); another node's id is refused.
    pub fn claim(&self, node: &Node, asterisk_id: &str) -> Result<(), DuplicateIdentity> {
        let mut by_id = self.by_id.write();
        if let Some(holder) = by_id.get(asterisk_id)
            && holder != &node.name
        {
            return Err(DuplicateIdentity {
                node: node.name.clone(),
                holder: holder.clone(),
                asterisk_id: asterisk_id.to_string(),
            });
        }
        let mut own = node.asterisk_id.write();
        if let Some(old) = own.as_ref()
            && old != asterisk_id
        {
            by_id.remove(old);
        }
        by_id.insert(asterisk_id.to_string(), node.name.clone());
        *own = Some(asterisk_id.to_string());
        Ok(())
    }

    /// The node `name`, if it is configured and up: where requests may be sent.
    pub fn usable(&self, name: &str) -> Result<Arc<Node>, AriError> {
        let node = self
            .node(name)
            .cloned()
            .ok_or_else(|| AriError::Unavailable(format!("node {name} is not configured")))?;
        if node.is_up() {
            Ok(node)
        } else {
            Err(AriError::Unavailable(format!("node {name} is down")))
        }
    }

    /// Nodes whose event connection is live.
    pub fn healthy(&self) -> Vec<Arc<Node>> {
        self.by_name
            .values()
            .filter(|n| n.is_up())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster::from_config(
            &Config::from_toml(
                r#"
                [nodes.a]
                ari_url = "http://127.0.0.1:1"
                username = "u"
                password = "p"
                [nodes.b]
                ari_url = "http://127.0.0.1:2"
                username = "u"
                password = "p"
            "#,
            )
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn second_node_with_the_same_id_is_refused() {
        let c = cluster();
        let (a, b) = (c.node("a").unwrap().clone(), c.node("b").unwrap().clone());
        c.claim(&a, "02:00:00:00:00:0a").unwrap();
        c.claim(&a, "02:00:00:00:00:0a").unwrap(); // reconnect: same claim again is fine
        let err = c.claim(&b, "02:00:00:00:00:0a").unwrap_err();
        assert_eq!(err.holder, "a");
        assert!(err.to_string().contains("entityid"));
        assert_eq!(c.by_asterisk_id("02:00:00:00:00:0a").unwrap().name, "a");
        assert_eq!(b.asterisk_id(), None);
    }

    #[test]
    fn a_node_that_changes_id_releases_the_old_one() {
        let c = cluster();
        let (a, b) = (c.node("a").unwrap().clone(), c.node("b").unwrap().clone());
        c.claim(&a, "old").unwrap();
        c.claim(&a, "new").unwrap();
        assert!(c.by_asterisk_id("old").is_none());
        c.claim(&b, "old").unwrap();
        assert_eq!(c.by_asterisk_id("old").unwrap().name, "b");
    }

    #[test]
    fn health_is_observable() {
        let c = cluster();
        let a = c.node("a").unwrap();
        let rx = a.watch_health();
        assert_eq!(a.health(), Health::Starting);
        a.set_health(Health::Up);
        assert!(rx.has_changed().unwrap());
        assert_eq!(c.healthy().len(), 1);
    }
}
