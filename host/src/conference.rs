//! Cluster-wide bridges: one conference, whichever nodes its callers landed on.
//!
//! A bridge id means the same conference on every node. The first node to create it is its
//! **home**; each other node with a participant holds a **part**: a local bridge with the
//! same id, linked to the home bridge by exactly one **trunk leg** per (node, conference),
//! not one per participant. The leg is a call the host originates from the part's node with
//! the node's trunk template (`PJSIP/{exten}@trunk-{node}`); it arrives at the home node,
//! enters the host's internal app [`TRUNK_APP`] with the conference id as Stasis argument,
//! and is answered and added to the home bridge. The originating half enters [`TRUNK_APP`]
//! when answered and is added to its local bridge. Legs never reach an app.
//!
//! While a part has participants but no working leg, its bridge plays music on hold, and the
//! leg is re-dialled with backoff: a caller is never left alone in silence. When a part is
//! left with no participant its leg is hung up and its bridge deleted; an empty home bridge
//! is deleted. When the home node dies a surviving part becomes home and the others re-dial.
//!
//! Each conference's state sits behind its own async lock, so joins to one conference are
//! serialised (one home, one leg per node, even when the first callers arrive on two nodes
//! at once) while different conferences proceed in parallel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::Method;
use tracing::{debug, info, warn};

use crate::backend::{AriError, BridgeType};
use crate::cluster::{Cluster, Node};
use crate::ownership::Ownership;

/// The ARI application trunk legs enter on every node. The host subscribes it on every node;
/// the nodes' `from-trunk` dialplan sends conference legs to it (see deploy/asterisk/).
pub const TRUNK_APP: &str = "stasis-trunk";

/// Prefix of the extension a trunk leg dials: `stasis-<conference id>`.
pub const TRUNK_EXTEN_PREFIX: &str = "stasis-";

/// How long a trunk leg may ring before Asterisk gives up; the host re-dials after that.
/// Short on purpose: a dead peer can otherwise hold an originate for 30 s.
const LEG_RING_SECS: u32 = 10;

/// Longest wait between two dial attempts of a leg.
const MAX_REDIAL: Duration = Duration::from_secs(5);

/// The link of a part to the home bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leg {
    /// No link (home part, or a part waiting for its next attempt).
    None,
    /// Originated, not answered yet.
    Dialing { channel: String },
    /// Answered and in the local bridge.
    Up { channel: String },
}

impl Leg {
    fn channel(&self) -> Option<&str> {
        match self {
            Leg::None => None,
            Leg::Dialing { channel } | Leg::Up { channel } => Some(channel),
        }
    }
}

/// One node's share of a conference.
#[derive(Debug)]
struct Part {
    /// Participant channels (the apps' channels) in this node's bridge.
    members: HashSet<String>,
    /// Calls on this node that got the conference (get-or-create) and have not joined yet:
    /// the conference waits for them rather than finishing under their feet.
    joining: HashSet<String>,
    /// For a non-home part: its link to the home bridge.
    leg: Leg,
    /// Failed dial attempts in a row (drives the backoff).
    attempts: u32,
    /// For the home part: the arriving legs from the other parts.
    inbound_legs: HashSet<String>,
    /// Music on hold is playing in this part's bridge.
    moh: bool,
    /// The local bridge's `creationtime`: a BridgeDestroyed for an older bridge with the same
    /// id (one the host deleted itself) must not take this one down.
    created: String,
}

impl Part {
    fn new(created: String) -> Part {
        Part {
            members: HashSet::new(),
            joining: HashSet::new(),
            leg: Leg::None,
            attempts: 0,
            inbound_legs: HashSet::new(),
            moh: false,
            created,
        }
    }
}

#[derive(Debug)]
struct Conference {
    id: String,
    kind: BridgeType,
    home: String,
    parts: BTreeMap<String, Part>,
    /// Set when the conference is torn down; a stale handle must not act any more.
    gone: bool,
}

/// What a channel is to the conferences.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Member {
        bridge: String,
        node: String,
    },
    /// A call that got the conference and has not joined it yet.
    Joining {
        bridge: String,
        node: String,
    },
    /// The originating half of a part's leg.
    LegOut {
        bridge: String,
        node: String,
    },
    /// The half that arrived at the home node.
    LegIn {
        bridge: String,
        node: String,
    },
}

type Shared = Arc<tokio::sync::Mutex<Conference>>;

/// What dispatch tells the conferences, in event order (see [`Conferences::handle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A channel entered [`TRUNK_APP`] on `node`.
    LegStarted {
        node: String,
        channel: String,
        args: Vec<String>,
    },
    /// A channel left Stasis or was destroyed.
    ChannelGone { channel: String },
    /// A channel left a bridge.
    LeftBridge { channel: String, bridge: String },
    /// A node's bridge was destroyed; `created` is its `creationtime`.
    BridgeDestroyed {
        node: String,
        bridge: String,
        created: String,
    },
    /// A node's event connection dropped.
    NodeDown { node: String },
}

/// All conferences of the cluster; see the module docs.
pub struct Conferences {
    cluster: Arc<Cluster>,
    ownership: Arc<Ownership>,
    bridges: Mutex<HashMap<String, Shared>>,
    roles: Mutex<HashMap<String, Role>>,
    me: Weak<Conferences>,
    on_retire: Mutex<Option<RetireHook>>,
    /// Where conference operations go when this process does not hold the conferences
    /// (shared calls across replicas: only the replica consuming the event queue does).
    remote: Mutex<Option<Remote>>,
    /// Whether this process holds the conferences (always, without replicas).
    holding: std::sync::atomic::AtomicBool,
    /// Ids of finished conferences whose bridges are still being deleted: a new conference
    /// under the same id waits, or its bridge could be created just before the old one's
    /// DELETE reaches the node (which would then delete the new one).
    retiring: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a finished conference's bridges are deleted; see `Conferences::retiring`.
struct Retiring<'a> {
    conferences: &'a Conferences,
    id: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Retiring<'_> {
    fn drop(&mut self) {
        let mut retiring = self.conferences.retiring.lock();
        if retiring
            .get(&self.id)
            .is_some_and(|gate| Arc::ptr_eq(gate, &self.gate))
        {
            retiring.remove(&self.id);
        }
    }
}

/// A conference operation, as it travels from a replica handling a call to the replica
/// holding the conferences.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ConferenceOp {
    GetOrCreate {
        id: String,
        mixing: bool,
        node: String,
        channel: String,
    },
    Add {
        id: String,
        channel: String,
        node: String,
    },
    Remove {
        id: String,
        channel: String,
        node: String,
    },
    Destroy {
        id: String,
    },
    Play {
        id: String,
        media: String,
        playback_id: String,
        fallback: String,
    },
    Locate {
        id: String,
    },
}

/// What a conference operation returns: a node name for `Locate`, nothing otherwise.
pub type ConferenceReply = Result<Option<String>, AriError>;

/// Sends a conference operation to the replica holding the conferences.
pub type Remote = Arc<
    dyn Fn(
            ConferenceOp,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ConferenceReply> + Send>>
        + Send
        + Sync,
>;

impl std::fmt::Debug for Conferences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (conferences, legs) = self.sizes();
        f.debug_struct("Conferences")
            .field("conferences", &conferences)
            .field("legs", &legs)
            .finish()
    }
}

/// Told the id of every conference the host finishes (apps lose their right to the id).
pub type RetireHook = Arc<dyn Fn(&str) + Send + Sync>;

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Conference ids travel in SIP URIs and dialplan arguments.
fn check_id(id: &str) -> Result<(), AriError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(AriError::Invalid(format!(
            "bridge id {id:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Conferences {
    pub fn new(cluster: Arc<Cluster>, ownership: Arc<Ownership>) -> Arc<Conferences> {
        Arc::new_cyclic(|me| Conferences {
            cluster,
            ownership,
            bridges: Mutex::new(HashMap::new()),
            roles: Mutex::new(HashMap::new()),
            me: me.clone(),
            remote: Mutex::new(None),
            holding: std::sync::atomic::AtomicBool::new(true),
            retiring: Mutex::new(HashMap::new()),
            on_retire: Mutex::new(None),
        })
    }

    /// Sets what to do when a conference is finished: the gateway revokes the apps' rights to
    /// its bridge id, so the id is free for any app again. (A node sends no BridgeDestroyed
    /// for a bridge deleted with channels in it, so events alone cannot be relied on.)
    pub fn on_retire(&self, hook: RetireHook) {
        *self.on_retire.lock() = Some(hook);
    }

    fn retired(&self, id: &str) {
        let hook = self.on_retire.lock().clone();
        if let Some(hook) = hook {
            hook(id);
        }
    }

    fn node(&self, name: &str) -> Result<Arc<Node>, AriError> {
        self.cluster.usable(name)
    }

    fn existing(&self, id: &str) -> Option<Shared> {
        self.bridges.lock().get(id).cloned()
    }

    /// The conference `id`, created with `node` as home if it does not exist yet. The map
    /// lock makes "first one wins" atomic: concurrent first callers agree on one home.
    fn entry(&self, id: &str, kind: BridgeType, node: &str) -> Shared {
        self.bridges
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| {
                info!(bridge = id, home = node, "new conference");
                Arc::new(tokio::sync::Mutex::new(Conference {
                    id: id.to_string(),
                    kind,
                    home: node.to_string(),
                    parts: BTreeMap::new(),
                    gone: false,
                }))
            })
            .clone()
    }

    /// Whether a conference with this bridge id is alive.
    pub fn exists(&self, id: &str) -> bool {
        self.bridges.lock().contains_key(id)
    }

    /// Whether `channel` is a trunk leg (legs are hidden from apps).
    pub fn is_leg(&self, channel: &str) -> bool {
        matches!(
            self.roles.lock().get(channel),
            Some(Role::LegOut { .. } | Role::LegIn { .. })
        )
    }

    /// Whether the conferences care about `channel` at all (cheap, for dispatch).
    pub fn involves(&self, channel: &str) -> bool {
        self.roles.lock().contains_key(channel)
    }

    /// Drops legs from the `channels` list of a bridge in event JSON, so apps only ever see
    /// participants. `None` when nothing had to change.
    pub fn hide_legs(&self, json: &str) -> Option<String> {
        // Most bridge events involve no leg: look at the list alone first, borrowing from the
        // text; only an event that names a leg is rewritten.
        #[derive(serde::Deserialize)]
        struct Members<'a> {
            #[serde(borrow, default)]
            channels: Vec<std::borrow::Cow<'a, str>>,
        }
        #[derive(serde::Deserialize)]
        struct BridgeEvent<'a> {
            #[serde(borrow)]
            bridge: Members<'a>,
        }
        let members: BridgeEvent = serde_json::from_str(json).ok()?;
        if !members.bridge.channels.iter().any(|c| self.is_leg(c)) {
            return None;
        }
        let mut value: serde_json::Value = serde_json::from_str(json).ok()?;
        let channels = value
            .get_mut("bridge")?
            .get_mut("channels")?
            .as_array_mut()?;
        let before = channels.len();
        channels.retain(|c| c.as_str().is_none_or(|id| !self.is_leg(id)));
        (channels.len() != before).then(|| value.to_string())
    }

    /// Sends conference operations to `remote` whenever this process does not hold the
    /// conferences (see [`Conferences::set_holding`]).
    pub fn set_remote(&self, remote: Remote) {
        *self.remote.lock() = Some(remote);
    }

    /// Whether this process holds the conferences (the replica consuming the event queue).
    pub fn set_holding(&self, holding: bool) {
        self.holding
            .store(holding, std::sync::atomic::Ordering::SeqCst);
    }

    fn forward(&self) -> Option<Remote> {
        if self.holding.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        self.remote.lock().clone()
    }

    /// Runs `op` here, whoever holds the conferences: for operations other replicas send.
    pub async fn execute(&self, op: ConferenceOp) -> ConferenceReply {
        match op {
            ConferenceOp::GetOrCreate {
                id,
                mixing,
                node,
                channel,
            } => {
                let kind = if mixing {
                    BridgeType::Mixing
                } else {
                    BridgeType::Holding
                };
                self.get_or_create_here(&id, kind, &node, &channel)
                    .await
                    .map(|_| None)
            }
            ConferenceOp::Add { id, channel, node } => {
                self.add_here(&id, &channel, &node).await.map(|_| None)
            }
            ConferenceOp::Remove { id, channel, node } => {
                self.remove_here(&id, &channel, &node).await.map(|_| None)
            }
            ConferenceOp::Destroy { id } => self.destroy_here(&id).await.map(|_| None),
            ConferenceOp::Play {
                id,
                media,
                playback_id,
                fallback,
            } => self
                .play_here(&id, &media, &playback_id, &fallback)
                .await
                .map(|_| None),
            ConferenceOp::Locate { id } => self.locate_here(&id).await.map(Some),
        }
    }

    /// Runs `op` here, or on the replica holding the conferences when that is another one.
    async fn run(&self, op: ConferenceOp) -> ConferenceReply {
        match self.forward() {
            Some(remote) => remote(op).await,
            None => self.execute(op).await,
        }
    }

    /// `get-or-create-bridge` from call `channel` on `node` (empty: not a call's).
    pub async fn get_or_create(
        &self,
        id: &str,
        kind: BridgeType,
        node: &str,
        channel: &str,
    ) -> Result<(), AriError> {
        self.run(ConferenceOp::GetOrCreate {
            id: id.into(),
            mixing: kind == BridgeType::Mixing,
            node: node.into(),
            channel: channel.into(),
        })
        .await
        .map(drop)
    }

    /// `bridge-add`: `channel` on `node` joins conference `id`.
    pub async fn add(&self, id: &str, channel: &str, node: &str) -> Result<(), AriError> {
        self.run(ConferenceOp::Add {
            id: id.into(),
            channel: channel.into(),
            node: node.into(),
        })
        .await
        .map(drop)
    }

    /// `bridge-remove`: `channel` on `node` leaves conference `id`.
    pub async fn remove(&self, id: &str, channel: &str, node: &str) -> Result<(), AriError> {
        self.run(ConferenceOp::Remove {
            id: id.into(),
            channel: channel.into(),
            node: node.into(),
        })
        .await
        .map(drop)
    }

    /// `bridge-destroy`: every part and every leg of conference `id` goes.
    pub async fn destroy(&self, id: &str) -> Result<(), AriError> {
        self.run(ConferenceOp::Destroy { id: id.into() })
            .await
            .map(drop)
    }

    /// `play-on-bridge`: plays in the home bridge (every part hears it through its leg).
    pub async fn play(
        &self,
        id: &str,
        media: &str,
        playback_id: &str,
        fallback: &str,
    ) -> Result<(), AriError> {
        self.run(ConferenceOp::Play {
            id: id.into(),
            media: media.into(),
            playback_id: playback_id.into(),
            fallback: fallback.into(),
        })
        .await
        .map(drop)
    }

    /// The node to send a request about bridge `id` to: its home, else whichever node has it.
    pub async fn locate(&self, id: &str) -> Result<String, AriError> {
        self.run(ConferenceOp::Locate { id: id.into() })
            .await?
            .ok_or_else(|| AriError::Failed("no node in the locate reply".into()))
    }

    /// The node holding the home bridge of `id`.
    pub fn home(&self, id: &str) -> Option<String> {
        let shared = self.existing(id)?;
        let conf = shared.try_lock().ok()?;
        Some(conf.home.clone())
    }

    /// [`Conferences::get_or_create`], done by this process.
    async fn get_or_create_here(
        &self,
        id: &str,
        kind: BridgeType,
        node: &str,
        channel: &str,
    ) -> Result<(), AriError> {
        check_id(id)?;
        self.wait_retired(id).await;
        let shared = self.entry(id, kind, node);
        let mut conf = shared.lock().await;
        if conf.gone {
            drop(conf);
            return Box::pin(self.get_or_create_here(id, kind, node, channel)).await;
        }
        self.ensure_part(&mut conf, node).await?;
        if !channel.is_empty() {
            let mut roles = self.roles.lock();
            if !roles.contains_key(channel) {
                roles.insert(
                    channel.to_string(),
                    Role::Joining {
                        bridge: id.to_string(),
                        node: node.to_string(),
                    },
                );
                if let Some(part) = conf.parts.get_mut(node) {
                    part.joining.insert(channel.to_string());
                }
            }
        }
        Ok(())
    }

    /// [`Conferences::add`], done by this process.
    async fn add_here(&self, id: &str, channel: &str, node: &str) -> Result<(), AriError> {
        check_id(id)?;
        self.wait_retired(id).await;
        let shared = match self.existing(id) {
            Some(shared) => shared,
            None => {
                // A bridge the host did not create (made before a restart, or by another
                // client): adopt it where it is, never invent it.
                let found = self.find_bridge(id).await?;
                let kind = BridgeType::Mixing;
                let shared = self.entry(id, kind, &found);
                shared
                    .lock()
                    .await
                    .parts
                    .entry(found)
                    .or_insert_with(|| Part::new(String::new()));
                shared
            }
        };
        {
            // Part creation is the only step of a join that must be serialised.
            let mut conf = shared.lock().await;
            if conf.gone {
                return Err(AriError::NotFound(format!("bridge {id} was destroyed")));
            }
            self.ensure_part(&mut conf, node).await?;
        }
        // The request itself runs unlocked: a large conference's joins proceed in parallel.
        let target = self.node(node)?;
        let path = format!("/bridges/{id}/addChannel");
        target
            .client
            .call(Method::POST, &path, &q(&[("channel", channel)]), None)
            .await?;
        let mut conf = shared.lock().await;
        if !conf.parts.contains_key(node) {
            // The part was torn down while we were adding (its last member left): rebuild it.
            self.ensure_part(&mut conf, node).await?;
            target
                .client
                .call(Method::POST, &path, &q(&[("channel", channel)]), None)
                .await?;
        }
        // A channel moves out of any other conference it was in.
        let previous = self.roles.lock().insert(
            channel.to_string(),
            Role::Member {
                bridge: id.to_string(),
                node: node.to_string(),
            },
        );
        let part = conf.parts.get_mut(node).expect("part ensured");
        part.members.insert(channel.to_string());
        part.joining.remove(channel);
        if node != conf.home {
            self.link(&mut conf, node).await;
        }
        drop(conf);
        match previous {
            Some(Role::Member { bridge, node } | Role::Joining { bridge, node })
                if bridge != id =>
            {
                self.member_left(&bridge, &node, channel).await;
            }
            Some(Role::Joining {
                node: joined_on, ..
            }) if joined_on != node => {
                // Got the conference on one node, joined from another: the first part no
                // longer waits for it.
                self.member_left(id, &joined_on, channel).await;
            }
            _ => {}
        }
        Ok(())
    }

    /// [`Conferences::remove`], done by this process.
    async fn remove_here(&self, id: &str, channel: &str, node: &str) -> Result<(), AriError> {
        let target = self.node(node)?;
        target
            .client
            .call(
                Method::POST,
                &format!("/bridges/{id}/removeChannel"),
                &q(&[("channel", channel)]),
                None,
            )
            .await?;
        let was_member = {
            let mut roles = self.roles.lock();
            match roles.get(channel) {
                Some(Role::Member { bridge, .. }) if bridge == id => {
                    roles.remove(channel).is_some()
                }
                _ => false,
            }
        };
        if was_member {
            self.member_left(id, node, channel).await;
        }
        Ok(())
    }

    /// [`Conferences::destroy`], done by this process.
    async fn destroy_here(&self, id: &str) -> Result<(), AriError> {
        let Some(shared) = self.bridges.lock().remove(id) else {
            let node = self.find_bridge(id).await?;
            let node = self.node(&node)?;
            node.client
                .call(Method::DELETE, &format!("/bridges/{id}"), &[], None)
                .await?;
            return Ok(());
        };
        let _retiring = self.gate(id);
        let mut conf = shared.lock().await;
        conf.gone = true;
        self.retired(id);
        let mut first_error = None;
        let parts: Vec<String> = conf.parts.keys().cloned().collect();
        for node in parts {
            let part = conf.parts.remove(&node).expect("listed");
            if let Err(e) = self.drop_part(&conf.id, &node, part).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`Conferences::play`], done by this process.
    async fn play_here(
        &self,
        id: &str,
        media: &str,
        playback_id: &str,
        fallback: &str,
    ) -> Result<(), AriError> {
        let node = match self.home(id) {
            Some(home) => home,
            None => match self.existing(id) {
                Some(shared) => shared.lock().await.home.clone(),
                None => self
                    .find_bridge(id)
                    .await
                    .unwrap_or_else(|_| fallback.to_string()),
            },
        };
        let node = self.node(&node)?;
        let query = q(&[("media", media), ("playbackId", playback_id)]);
        node.client
            .call(Method::POST, &format!("/bridges/{id}/play"), &query, None)
            .await?;
        Ok(())
    }

    /// [`Conferences::locate`], done by this process.
    async fn locate_here(&self, id: &str) -> Result<String, AriError> {
        match self.existing(id) {
            Some(shared) => Ok(shared.lock().await.home.clone()),
            None => self.find_bridge(id).await,
        }
    }

    /// Which node has a bridge the host does not know: ask every healthy node.
    async fn find_bridge(&self, id: &str) -> Result<String, AriError> {
        let nodes = self.cluster.healthy();
        let path = format!("/bridges/{id}");
        let answers = futures_util::future::join_all(
            nodes
                .iter()
                .map(|n| n.client.send(Method::GET, &path, &[], None)),
        )
        .await;
        nodes
            .iter()
            .zip(answers)
            .find(|(_, a)| matches!(a, Ok(r) if r.status == 200))
            .map(|(n, _)| n.name.clone())
            .ok_or_else(|| AriError::NotFound(format!("bridge {id} is on no node")))
    }

    /// Makes sure `node` holds its local bridge of the conference.
    async fn ensure_part(&self, conf: &mut Conference, node: &str) -> Result<(), AriError> {
        if conf.parts.contains_key(node) {
            return Ok(());
        }
        let target = self.node(node)?;
        let path = format!("/bridges/{}", conf.id);
        let bridge = match target
            .client
            .call(
                Method::POST,
                &path,
                &q(&[("type", conf.kind.as_ari())]),
                None,
            )
            .await
        {
            Ok(created) => created,
            // Already there (left over from before a host restart): use it.
            Err(AriError::Conflict(_)) => target.client.call(Method::GET, &path, &[], None).await?,
            Err(e) => return Err(e),
        };
        let created = bridge.json()["creationtime"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        conf.parts.insert(node.to_string(), Part::new(created));
        Ok(())
    }

    /// Makes sure the part on `node` is linked to home, or dialling, or waiting with music.
    async fn link(&self, conf: &mut Conference, node: &str) {
        let (id, home) = (conf.id.clone(), conf.home.clone());
        let Some(part) = conf.parts.get_mut(node) else {
            return;
        };
        if part.members.is_empty() {
            return;
        }
        if !matches!(part.leg, Leg::Up { .. }) && !part.moh {
            // Nobody is left alone in silence while the link is being made.
            if let Ok(n) = self.node(node)
                && n.client
                    .call(Method::POST, &format!("/bridges/{id}/moh"), &[], None)
                    .await
                    .is_ok()
            {
                part.moh = true;
            }
        }
        if part.leg != Leg::None {
            return;
        }
        let channel = format!("trunk-{:016x}", rand::random::<u64>());
        let Ok(origin) = self.node(node) else { return };
        let endpoint = origin
            .config
            .trunk
            .replace("{exten}", &format!("{TRUNK_EXTEN_PREFIX}{id}"))
            .replace("{node}", &home);
        self.roles.lock().insert(
            channel.clone(),
            Role::LegOut {
                bridge: id.clone(),
                node: node.to_string(),
            },
        );
        self.ownership.record_channel(&channel, node);
        part.leg = Leg::Dialing {
            channel: channel.clone(),
        };
        let query = q(&[
            ("endpoint", &endpoint),
            ("app", TRUNK_APP),
            ("appArgs", &format!("out,{id}")),
            ("channelId", &channel),
            ("timeout", &LEG_RING_SECS.to_string()),
        ]);
        debug!(bridge = %id, from = node, to = %home, %endpoint, leg = %channel, "dialling trunk leg");
        if let Err(e) = origin
            .client
            .call(Method::POST, "/channels", &query, None)
            .await
        {
            warn!(bridge = %id, from = node, to = %home, error = %e, "trunk leg could not be placed");
            self.roles.lock().remove(&channel);
            self.ownership.forget_channel(&channel);
            part.leg = Leg::None;
            part.attempts += 1;
            self.redial_later(&id, node, part.attempts);
        }
    }

    /// Schedules another attempt at linking `node`'s part, with exponential backoff.
    fn redial_later(&self, id: &str, node: &str, attempts: u32) {
        let delay = (Duration::from_millis(100) * 2u32.pow(attempts.min(6))).min(MAX_REDIAL);
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        let (me, id, node) = (self.me.clone(), id.to_string(), node.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay + jitter).await;
            let Some(me) = me.upgrade() else { return };
            let Some(shared) = me.existing(&id) else {
                return;
            };
            let mut conf = shared.lock().await;
            if !conf.gone && conf.home != node {
                me.link(&mut conf, &node).await;
            }
        });
    }

    /// Applies one note. Dispatch sends notes through one queue so they are applied in the
    /// order the nodes sent their events.
    pub async fn handle(&self, note: Note) {
        match note {
            Note::LegStarted {
                node,
                channel,
                args,
            } => self.leg_started(&node, &channel, &args).await,
            Note::ChannelGone { channel } => self.channel_gone(&channel).await,
            Note::LeftBridge { channel, bridge } => {
                let member_here = matches!(self.roles.lock().get(&channel), Some(Role::Member { bridge: b, .. }) if *b == bridge);
                if member_here {
                    self.channel_gone(&channel).await;
                }
            }
            Note::BridgeDestroyed {
                node,
                bridge,
                created,
            } => self.bridge_destroyed(&bridge, &node, &created).await,
            Note::NodeDown { node } => self.node_down(&node).await,
        }
    }

    /// A trunk leg entered [`TRUNK_APP`] on `node` (it was answered).
    pub async fn leg_started(&self, node: &str, channel: &str, args: &[String]) {
        let role = self.roles.lock().get(channel).cloned();
        match role {
            Some(Role::LegOut {
                bridge,
                node: part_node,
            }) => self.leg_answered(&bridge, &part_node, channel).await,
            _ => {
                let id = args
                    .last()
                    .map(|a| a.trim_start_matches(TRUNK_EXTEN_PREFIX).to_string())
                    .unwrap_or_default();
                self.leg_arrived(&id, node, channel).await
            }
        }
    }

    /// The originating half of a leg answered: put it in its local bridge, stop the music.
    async fn leg_answered(&self, id: &str, node: &str, channel: &str) {
        let Some(shared) = self.existing(id) else {
            return self.hang_up(node, channel).await;
        };
        let mut conf = shared.lock().await;
        let Some(part) = conf
            .parts
            .get_mut(node)
            .filter(|p| p.leg.channel() == Some(channel))
        else {
            drop(conf);
            return self.hang_up(node, channel).await;
        };
        let Ok(n) = self.node(node) else { return };
        let added = n
            .client
            .call(
                Method::POST,
                &format!("/bridges/{id}/addChannel"),
                &q(&[("channel", channel)]),
                None,
            )
            .await;
        match added {
            Ok(_) => {
                info!(bridge = id, node, leg = channel, "trunk leg up");
                part.leg = Leg::Up {
                    channel: channel.to_string(),
                };
                part.attempts = 0;
                if part.moh
                    && n.client
                        .call(Method::DELETE, &format!("/bridges/{id}/moh"), &[], None)
                        .await
                        .is_ok()
                {
                    part.moh = false;
                }
            }
            Err(e) => {
                warn!(bridge = id, node, leg = channel, error = %e, "cannot bridge the trunk leg");
                drop(conf);
                self.hang_up(node, channel).await;
            }
        }
    }

    /// A leg from another node arrived at `node`: answer it into the home bridge, or refuse it
    /// when `node` is not (or no longer) the conference's home.
    async fn leg_arrived(&self, id: &str, node: &str, channel: &str) {
        let shared = self.existing(id);
        let mut conf = match &shared {
            Some(shared) => shared.lock().await,
            None => {
                warn!(
                    bridge = id,
                    node,
                    leg = channel,
                    "trunk leg for an unknown conference: hanging up"
                );
                return self.hang_up(node, channel).await;
            }
        };
        if conf.gone || conf.home != node {
            drop(conf);
            return self.hang_up(node, channel).await;
        }
        self.roles.lock().insert(
            channel.to_string(),
            Role::LegIn {
                bridge: id.to_string(),
                node: node.to_string(),
            },
        );
        let Ok(n) = self.node(node) else { return };
        let joined = async {
            self.ensure_part(&mut conf, node).await?;
            n.client
                .call(
                    Method::POST,
                    &format!("/channels/{channel}/answer"),
                    &[],
                    None,
                )
                .await?;
            n.client
                .call(
                    Method::POST,
                    &format!("/bridges/{id}/addChannel"),
                    &q(&[("channel", channel)]),
                    None,
                )
                .await
        }
        .await;
        match joined {
            Ok(_) => {
                conf.parts
                    .get_mut(node)
                    .expect("home part")
                    .inbound_legs
                    .insert(channel.to_string());
            }
            Err(e) => {
                warn!(bridge = id, node, leg = channel, error = %e, "cannot take the trunk leg into the home bridge");
                self.roles.lock().remove(channel);
                drop(conf);
                self.hang_up(node, channel).await;
            }
        }
    }

    /// A channel the conferences know ended or left its bridge.
    pub async fn channel_gone(&self, channel: &str) {
        let Some(role) = self.roles.lock().remove(channel) else {
            return;
        };
        match role {
            Role::Member { bridge, node } | Role::Joining { bridge, node } => {
                self.member_left(&bridge, &node, channel).await
            }
            Role::LegOut { bridge, node } => {
                let Some(shared) = self.existing(&bridge) else {
                    return;
                };
                let mut conf = shared.lock().await;
                let gone = conf.gone;
                let Some(part) = conf
                    .parts
                    .get_mut(&node)
                    .filter(|p| p.leg.channel() == Some(channel))
                else {
                    return;
                };
                let was_up = matches!(part.leg, Leg::Up { .. });
                part.leg = Leg::None;
                if !was_up {
                    part.attempts += 1;
                }
                if part.members.is_empty() || gone {
                    return;
                }
                warn!(bridge = %bridge, node = %node, leg = channel, "trunk leg lost: re-dialling");
                let attempts = part.attempts;
                if attempts == 0 {
                    self.link(&mut conf, &node).await;
                } else {
                    // Make sure the music plays while we wait to retry.
                    self.link_music_only(&mut conf, &node).await;
                    self.redial_later(&bridge, &node, attempts);
                }
            }
            Role::LegIn { bridge, node } => {
                let Some(shared) = self.existing(&bridge) else {
                    return;
                };
                let mut conf = shared.lock().await;
                if let Some(part) = conf.parts.get_mut(&node) {
                    part.inbound_legs.remove(channel);
                }
                self.teardown_home_if_idle(&mut conf).await;
            }
        }
    }

    async fn link_music_only(&self, conf: &mut Conference, node: &str) {
        let id = conf.id.clone();
        let Some(part) = conf.parts.get_mut(node) else {
            return;
        };
        if !part.moh
            && let Ok(n) = self.node(node)
            && n.client
                .call(Method::POST, &format!("/bridges/{id}/moh"), &[], None)
                .await
                .is_ok()
        {
            part.moh = true;
        }
    }

    /// A participant left: tear down what is no longer needed.
    async fn member_left(&self, id: &str, node: &str, channel: &str) {
        let Some(shared) = self.existing(id) else {
            return;
        };
        let mut conf = shared.lock().await;
        let Some(part) = conf.parts.get_mut(node) else {
            return;
        };
        part.members.remove(channel);
        part.joining.remove(channel);
        if part.members.is_empty() && part.joining.is_empty() && node != conf.home {
            // Only the trunk leg is left in this part: hang it up and delete the bridge.
            let part = conf.parts.remove(node).expect("present");
            if let Err(e) = self.drop_part(id, node, part).await {
                debug!(bridge = id, node, error = %e, "tearing down a part");
            }
        }
        self.teardown_home_if_idle(&mut conf).await;
    }

    /// Marks a conference finished and forgets its id at once, before any request about its
    /// bridges goes out: the node's BridgeDestroyed for it must find the id free, and a new
    /// get-or-create of the same id must start a new conference. Called with the
    /// conference's lock held, so the map entry is this conference.
    fn retire(&self, conf: &mut Conference) -> Option<Retiring<'_>> {
        if conf.gone {
            return None;
        }
        conf.gone = true;
        let gate = self.gate(&conf.id);
        self.bridges.lock().remove(&conf.id);
        self.retired(&conf.id);
        Some(gate)
    }

    /// Closes the id to new conferences until the returned guard drops.
    fn gate(&self, id: &str) -> Retiring<'_> {
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let held = gate.clone().try_lock_owned().expect("a new mutex is free");
        self.retiring.lock().insert(id.to_string(), gate.clone());
        Retiring {
            conferences: self,
            id: id.to_string(),
            gate,
            _held: held,
        }
    }

    /// Waits until the bridges of a finished conference with this id are deleted.
    async fn wait_retired(&self, id: &str) {
        let gate = self.retiring.lock().get(id).cloned();
        if let Some(gate) = gate {
            let _ = gate.lock().await;
        }
    }

    /// Deletes the home bridge once nobody is in the conference any more.
    async fn teardown_home_if_idle(&self, conf: &mut Conference) {
        let home = conf.home.clone();
        let idle = conf.parts.iter().all(|(node, part)| {
            node == &home && part.members.is_empty() && part.joining.is_empty()
        }) && conf
            .parts
            .get(&home)
            .is_none_or(|p| p.inbound_legs.is_empty());
        if !idle || conf.gone {
            return;
        }
        let _retiring = self.retire(conf);
        if let Some(part) = conf.parts.remove(&home) {
            let _ = self.drop_part(&conf.id, &home, part).await;
        }
        info!(bridge = %conf.id, "conference empty: deleted");
    }

    /// Hangs up a part's legs and deletes its local bridge.
    async fn drop_part(&self, id: &str, node: &str, part: Part) -> Result<(), AriError> {
        let legs: Vec<String> = part
            .leg
            .channel()
            .map(str::to_string)
            .into_iter()
            .chain(part.inbound_legs)
            .collect();
        {
            let mut roles = self.roles.lock();
            for channel in part.members.iter().chain(legs.iter()) {
                roles.remove(channel);
            }
        }
        for leg in &legs {
            self.hang_up(node, leg).await;
        }
        let n = self.node(node)?;
        match n
            .client
            .call(Method::DELETE, &format!("/bridges/{id}"), &[], None)
            .await
        {
            Ok(_) | Err(AriError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn hang_up(&self, node: &str, channel: &str) {
        self.roles.lock().remove(channel);
        if let Ok(n) = self.node(node) {
            let _ = n
                .client
                .call(Method::DELETE, &format!("/channels/{channel}"), &[], None)
                .await;
        }
    }

    /// A node's bridge went away on its own (deleted by someone else, or the node restarted).
    pub async fn bridge_destroyed(&self, id: &str, node: &str, created: &str) {
        let Some(shared) = self.existing(id) else {
            return;
        };
        let mut conf = shared.lock().await;
        let same_bridge = conf
            .parts
            .get(node)
            .is_some_and(|p| created.is_empty() || p.created.is_empty() || p.created == created);
        if same_bridge && conf.parts.remove(node).is_some() && conf.parts.is_empty() {
            let _ = self.retire(&mut conf);
        }
    }

    /// A node went down: its parts are gone; conferences it was home to move to a survivor,
    /// whose parts re-dial the new home.
    pub async fn node_down(&self, node: &str) {
        let all: Vec<Shared> = self.bridges.lock().values().cloned().collect();
        for shared in all {
            let mut conf = shared.lock().await;
            let Some(lost) = conf.parts.remove(node) else {
                continue;
            };
            {
                let mut roles = self.roles.lock();
                for channel in lost
                    .members
                    .iter()
                    .chain(lost.inbound_legs.iter())
                    .chain(lost.leg.channel().map(String::from).iter())
                {
                    roles.remove(channel);
                }
            }
            if conf.home != node {
                continue;
            }
            // Elect the surviving part with the most participants as the new home.
            let Some(new_home) = conf
                .parts
                .iter()
                .filter(|(_, p)| !p.members.is_empty())
                .max_by_key(|(_, p)| p.members.len())
                .map(|(n, _)| n.clone())
            else {
                let _ = self.retire(&mut conf);
                continue;
            };
            warn!(bridge = %conf.id, old = node, new = %new_home, "home node lost: conference re-homed");
            conf.home = new_home.clone();
            let id = conf.id.clone();
            let parts: Vec<String> = conf.parts.keys().cloned().collect();
            for part_node in parts {
                let part = conf.parts.get_mut(&part_node).expect("listed");
                // Every old leg pointed at the dead home.
                if let Some(leg) = part.leg.channel().map(str::to_string) {
                    part.leg = Leg::None;
                    part.attempts = 0;
                    self.hang_up(&part_node, &leg).await;
                }
                if part_node == new_home {
                    if let Some(part) = conf.parts.get_mut(&part_node)
                        && part.moh
                        && let Ok(n) = self.node(&part_node)
                        && n.client
                            .call(Method::DELETE, &format!("/bridges/{id}/moh"), &[], None)
                            .await
                            .is_ok()
                    {
                        part.moh = false;
                    }
                } else {
                    self.link(&mut conf, &part_node).await;
                }
            }
        }
    }

    /// (conferences, legs) for tests and metrics.
    pub fn sizes(&self) -> (usize, usize) {
        let legs = self
            .roles
            .lock()
            .values()
            .filter(|r| matches!(r, Role::LegOut { .. } | Role::LegIn { .. }))
            .count();
        (self.bridges.lock().len(), legs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn conferences() -> Arc<Conferences> {
        let config = Config::from_toml(
            "[nodes.a]\nari_url = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        Conferences::new(
            Arc::new(Cluster::from_config(&config).unwrap()),
            Arc::new(Ownership::new()),
        )
    }

    #[test]
    fn legs_are_hidden_from_bridge_events() {
        let c = conferences();
        c.roles.lock().insert(
            "trunk-1".into(),
            Role::LegOut {
                bridge: "conf".into(),
                node: "a".into(),
            },
        );
        c.roles.lock().insert(
            "alice".into(),
            Role::Member {
                bridge: "conf".into(),
                node: "a".into(),
            },
        );
        let json = r#"{"type":"ChannelEnteredBridge","bridge":{"id":"conf","channels":["alice","trunk-1"]},"channel":{"id":"alice"}}"#;
        let hidden = c.hide_legs(json).expect("rewritten");
        let value: serde_json::Value = serde_json::from_str(&hidden).unwrap();
        assert_eq!(value["bridge"]["channels"], serde_json::json!(["alice"]));
        assert_eq!(value["channel"]["id"], "alice");
        assert!(c.is_leg("trunk-1") && !c.is_leg("alice"));
        // No leg in the list: the event passes untouched (no rewrite).
        let no_leg = r#"{"type":"ChannelEnteredBridge","bridge":{"id":"conf","channels":["alice"]},"channel":{"id":"alice"}}"#;
        assert_eq!(c.hide_legs(no_leg), None);
    }

    #[test]
    fn conference_ids_must_fit_in_a_sip_uri() {
        assert!(check_id("conf-1_a.b").is_ok());
        for bad in ["", "a b", "x@y", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(check_id(bad), Err(AriError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn first_get_or_create_wins_the_home() {
        let c = conferences();
        let first = c.entry("conf", BridgeType::Mixing, "a");
        let second = c.entry("conf", BridgeType::Mixing, "b");
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(first.lock().await.home, "a");
    }
}
