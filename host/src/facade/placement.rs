//! Where a facade request goes: the owning node, a new resource's node, or every node.
//!
//! Policy (documented in the README's facade section):
//! - `X-Asterisk-ID: <entity id>` sends the request to that node, whatever it is (the seed's
//!   gateway rule); an unknown id is a 400.
//! - `/channels/{id}/…` goes to the channel's owner: the ownership index, else every healthy
//!   node asked in parallel (`Router::channel_node`). `/bridges/{id}`, `/playbacks/{id}`,
//!   `/recordings/live/{name}`: the facade's own index of what its clients created, then the
//!   conference home for the host's own bridges, else the same parallel lookup.
//! - Creations (`POST /channels`, `/channels/create`, `/channels/externalMedia`,
//!   `POST /channels/{new id}`, `POST /bridges`, `POST /bridges/{new id}`) go to the
//!   least-loaded healthy node: the fewest channels in the ownership index, ties to the first
//!   by name. Ids given in the request are recorded before it is sent, ids in the answer as
//!   soon as it arrives.
//! - `GET /channels`, `/bridges`, `/applications`, `/endpoints` merge every healthy node's
//!   arrays; `POST|DELETE /applications/{app}/subscription` and
//!   `PUT /applications/{app}/eventFilter` go to every healthy node. Changing either for an
//!   app the host owns (a wasm app, the trunk app) is refused with 403 before placement.
//! - Anything else (`/asterisk/…`, `/sounds`, `/deviceStates`, …) and ids no node has go to
//!   the healthy nodes in turn, so an unknown id gets the node's own error, exactly as
//!   Asterisk words it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::join_all;
use parking_lot::RwLock;
use reqwest::Method;

use crate::backend::AriError;
use crate::cluster::{Cluster, Health, Node};
use crate::conference::Conferences;
use crate::ownership::Ownership;
use crate::router::Router;

/// What kind of id a created resource has, to index it from the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Channel,
    Bridge,
    Playback,
    Recording,
}

/// Where to send one request.
#[derive(Debug)]
pub enum Target {
    /// One node; when `record` is set, index the `id` in a 2xx answer under that kind.
    One {
        node: Arc<Node>,
        record: Option<Kind>,
    },
    /// Every healthy node; the answers' arrays are concatenated.
    Merge,
    /// Every healthy node; the first node's answer is returned.
    All,
}

/// Why no node can take a request.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("no node is up")]
    NoNode,
    #[error("unknown X-Asterisk-ID {0}")]
    UnknownNode(String),
    #[error(transparent)]
    Ari(AriError),
}

/// Index of what facade clients created (bridges, playbacks, live recordings); channels live
/// in the host's ownership index.
pub struct Placement {
    cluster: Arc<Cluster>,
    ownership: Arc<Ownership>,
    conferences: Arc<Conferences>,
    router: Arc<Router>,
    resources: RwLock<std::collections::HashMap<String, String>>,
    turn: AtomicUsize,
}

fn key(kind: Kind, id: &str) -> String {
    let prefix = match kind {
        Kind::Channel => "channels",
        Kind::Bridge => "bridges",
        Kind::Playback => "playbacks",
        Kind::Recording => "recordings/live",
    };
    format!("{prefix}/{id}")
}

impl Placement {
    pub fn new(
        cluster: Arc<Cluster>,
        ownership: Arc<Ownership>,
        conferences: Arc<Conferences>,
        router: Arc<Router>,
    ) -> Placement {
        Placement {
            cluster,
            ownership,
            conferences,
            router,
            resources: RwLock::default(),
            turn: AtomicUsize::new(0),
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Decides where `method path` goes. `path` is relative to `/ari`; `query` is raw.
    pub async fn target(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        asterisk_id: Option<&str>,
    ) -> Result<Target, PlacementError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let record = self.created_kind(method, &segments).await;
        if let Some(id) = asterisk_id {
            let node = self
                .cluster
                .by_asterisk_id(id)
                .ok_or_else(|| PlacementError::UnknownNode(id.to_string()))?;
            return Ok(Target::One {
                node: node.clone(),
                record,
            });
        }
        let get = method == Method::GET;
        let one = |node| Ok(Target::One { node, record });
        match segments.as_slice() {
            ["channels" | "bridges" | "applications" | "endpoints"] if get => Ok(Target::Merge),
            // An app hears every node, so what shapes its events applies on every node.
            ["applications", _, "subscription"] if !get => Ok(Target::All),
            ["applications", _, "eventFilter"] if method == Method::PUT => Ok(Target::All),
            _ if record.is_some() && is_creation(method, &segments) => {
                let node = self.least_loaded()?;
                for id in given_ids(&segments, query) {
                    match record {
                        Some(Kind::Channel) => self.ownership.record_channel(&id, &node.name),
                        Some(kind) => self.record(kind, &id, &node.name),
                        None => {}
                    }
                }
                one(node)
            }
            ["channels", id, ..] => match self.router.channel_node(id).await {
                Ok(node) => one(node),
                // On no node, or no node connected yet: the node's own answer.
                Err(AriError::NotFound(_) | AriError::Unavailable(_)) => one(self.any()?),
                Err(e) => Err(PlacementError::Ari(e)),
            },
            ["bridges", id, ..] => one(self.owner(Kind::Bridge, id).await?),
            ["playbacks", id, ..] => one(self.owner(Kind::Playback, id).await?),
            ["recordings", "live", id, ..] => one(self.owner(Kind::Recording, id).await?),
            _ => one(self.any()?),
        }
    }

    /// The kind of resource this request creates, if any (its answer's `id` is indexed).
    async fn created_kind(&self, method: &Method, segments: &[&str]) -> Option<Kind> {
        if method != Method::POST {
            return None;
        }
        match segments {
            ["channels"] | ["channels", "create" | "externalMedia"] => Some(Kind::Channel),
            ["channels", _, "snoop", ..] => Some(Kind::Channel),
            ["channels", _, "play", ..] | ["bridges", _, "play", ..] => Some(Kind::Playback),
            ["channels", _, "record"] | ["bridges", _, "record"] => Some(Kind::Recording),
            ["bridges"] => Some(Kind::Bridge),
            ["channels", id] => (!self.channel_exists(id).await).then_some(Kind::Channel),
            ["bridges", id] => self
                .find(Kind::Bridge, id)
                .await
                .is_none()
                .then_some(Kind::Bridge),
            _ => None,
        }
    }

    async fn channel_exists(&self, id: &str) -> bool {
        self.router.channel_node(id).await.is_ok()
    }

    /// Records what a creation's answer says was created.
    pub fn created(&self, kind: Kind, node: &str, body: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let id = match kind {
            Kind::Recording => value["name"].as_str(),
            _ => value["id"].as_str(),
        };
        if let Some(id) = id {
            match kind {
                Kind::Channel => self.ownership.record_channel(id, node),
                _ => self.record(kind, id, node),
            }
        }
    }

    /// Forgets a resource deleted through the facade.
    pub fn deleted(&self, path: &str) {
        let path = path.trim_matches('/');
        if path.starts_with("bridges/")
            || path.starts_with("playbacks/")
            || path.starts_with("recordings/live/")
        {
            self.resources.write().remove(path);
        }
    }

    fn record(&self, kind: Kind, id: &str, node: &str) {
        self.resources
            .write()
            .insert(key(kind, id), node.to_string());
    }

    async fn owner(&self, kind: Kind, id: &str) -> Result<Arc<Node>, PlacementError> {
        match self.find(kind, id).await {
            Some(node) => Ok(node),
            None => self.any(),
        }
    }

    /// The node holding `id`: the index, the conference home, else asked of every node.
    async fn find(&self, kind: Kind, id: &str) -> Option<Arc<Node>> {
        let key = key(kind, id);
        let known = self.resources.read().get(&key).cloned();
        let known = known.or_else(|| {
            (kind == Kind::Bridge)
                .then(|| self.conferences.home(id))
                .flatten()
        });
        if let Some(name) = known
            && let Some(node) = self.cluster.node(&name).filter(|n| n.is_up())
        {
            return Some(node.clone());
        }
        let nodes = self.usable();
        let path = format!("/{key}");
        let answers = join_all(
            nodes
                .iter()
                .map(|n| n.client.send(Method::GET, &path, &[], None)),
        )
        .await;
        let node = nodes
            .into_iter()
            .zip(answers)
            .find(|(_, a)| matches!(a, Ok(r) if r.status == 200))
            .map(|(n, _)| n)?;
        self.resources.write().insert(key, node.name.clone());
        Some(node)
    }

    /// The healthy node with the fewest channels in the ownership index (ties: first by name).
    pub fn least_loaded(&self) -> Result<Arc<Node>, PlacementError> {
        self.usable()
            .into_iter()
            .min_by_key(|n| self.ownership.channels_on(&n.name).len())
            .ok_or(PlacementError::NoNode)
    }

    /// The nodes requests may go to: those whose event connection is up; if none is, those
    /// never connected yet (with no app at all, ingress has no reason to connect, but REST
    /// through the facade must still work).
    pub fn usable(&self) -> Vec<Arc<Node>> {
        let up = self.cluster.healthy();
        if !up.is_empty() {
            return up;
        }
        self.cluster
            .nodes()
            .filter(|n| n.health() == Health::Starting)
            .cloned()
            .collect()
    }

    /// The usable nodes in turn.
    fn any(&self) -> Result<Arc<Node>, PlacementError> {
        let nodes = self.usable();
        if nodes.is_empty() {
            return Err(PlacementError::NoNode);
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Ok(nodes[turn % nodes.len()].clone())
    }
}

fn is_creation(method: &Method, segments: &[&str]) -> bool {
    method == Method::POST
        && matches!(
            segments,
            ["channels"]
                | ["channels", "create" | "externalMedia"]
                | ["channels", _]
                | ["bridges"]
                | ["bridges", _]
        )
}

/// Ids the client chose for what it creates (recorded before the request is sent).
fn given_ids(segments: &[&str], query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    if let ["channels" | "bridges", id] = segments
        && *id != "create"
        && *id != "externalMedia"
    {
        ids.push((*id).to_string());
    }
    for (k, v) in form_urlencoded(query) {
        if matches!(k.as_str(), "channelId" | "otherChannelId" | "bridgeId") {
            ids.push(v);
        }
    }
    ids
}

fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(query).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_ids_come_from_path_and_query() {
        assert_eq!(
            given_ids(&["channels", "c1"], "endpoint=x"),
            vec!["c1".to_string()]
        );
        assert_eq!(
            given_ids(&["channels"], "channelId=c2&otherChannelId=c3"),
            vec!["c2".to_string(), "c3".to_string()]
        );
        assert_eq!(
            given_ids(&["channels", "create"], "channelId=c4"),
            vec!["c4".to_string()]
        );
        assert_eq!(
            given_ids(&["bridges"], "bridgeId=b1&type=mixing"),
            vec!["b1".to_string()]
        );
    }

    #[test]
    fn creations_are_posts_to_collections_or_new_ids() {
        assert!(is_creation(&Method::POST, &["channels"]));
        assert!(is_creation(&Method::POST, &["bridges", "b1"]));
        assert!(!is_creation(&Method::GET, &["channels"]));
        assert!(!is_creation(&Method::POST, &["channels", "c1", "answer"]));
    }
}
