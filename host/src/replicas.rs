//! Shared calls: several host replicas behind one RabbitMQ event queue, each handling a
//! share of the calls (`amqp.share_calls = true`).
//!
//! RabbitMQ gives the event queue to one replica at a time (single active consumer). That
//! replica, the *router*, does not handle every call itself: it assigns each new call
//! (StasisStart) to a replica and sends every later event of the call to that replica's own
//! queue, so each call is handled by exactly one replica and sees its events in order.
//! Everything here is RabbitMQ's: the single-active-consumer queue decides who routes, each
//! replica's durable queue (deleted by the broker once unused for a while, `x-expires`)
//! buffers its events across reconnects, a fanout exchange carries what every replica must
//! see, and request/reply messages carry conference operations.
//!
//! - **Membership.** Every replica announces its queue on the fanout every second; a replica
//!   not heard of for [`MEMBER_TIMEOUT`] is gone. New calls go to the live replica chosen by
//!   rendezvous hashing of the channel id, so a new router assigns the same way.
//! - **Takeover.** When a replica is gone, the router starts its calls again on the others:
//!   it reads each channel from its node and queues a StasisStart for it (marked adopted).
//! - **Conferences** (cross-node bridges, trunk legs) live with the router, which sees every
//!   event: it feeds them its notes and hides trunk legs in the bridge events it forwards.
//!   Other replicas send their calls' bridge operations to it as request messages on the event
//!   queue and wait for the reply on their own queue.
//! - **Gaps.** After a gap the router broadcasts a reconcile (every replica ends its calls
//!   whose channel vanished) and queues adopted StasisStarts for channels in Stasis that no
//!   replica was given (a replica that already has the call ignores the duplicate).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use parking_lot::Mutex;
use reqwest::Method;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::amqp::{has_header, header, header_value};
use crate::backend::AriError;
use crate::catalog::Catalog;
use crate::cluster::{Cluster, Node};
use crate::conference::{ConferenceOp, ConferenceReply, Conferences, Note, TRUNK_APP};
use crate::event::{Event, Kind, Receipt};
use crate::ingress::Intake;
use crate::recent::Recent;

/// How long a replica may stay silent before the router counts it gone.
pub const MEMBER_TIMEOUT: Duration = Duration::from_millis(3500);
/// How often a replica announces itself.
pub const HELLO_EVERY: Duration = Duration::from_secs(1);
/// How long the broker keeps a replica's queue once nothing consumes it.
const QUEUE_EXPIRES_MS: i32 = 10_000;

/// Headers that tell the host's own messages apart from the nodes' events.
pub const HELLO: &str = "x-stasis-hello";
pub const FORWARD: &str = "x-stasis-forward";
pub const RPC: &str = "x-stasis-rpc";
pub const REPLY: &str = "x-stasis-reply";
pub const GAP: &str = "x-stasis-gap";
pub const ADOPT: &str = "x-stasis-adopt";

/// What the router knows of a call it assigned.
#[derive(Clone, Debug)]
struct Route {
    member: String,
    node: String,
}

/// Where the router sends an event.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Member(String),
    Everyone,
}

/// One replica's part in sharing calls; lives across broker sessions.
pub struct Sharing {
    /// This replica's queue.
    pub me: String,
    /// The event queue (single active consumer).
    queue: String,
    /// Fanout exchange every replica's queue is bound to.
    fanout: String,
    members: Mutex<HashMap<String, Instant>>,
    routes: Mutex<HashMap<String, Route>>,
    ended: Mutex<Recent<String>>,
    pending: Mutex<HashMap<String, oneshot::Sender<ConferenceReply>>>,
    channel: Mutex<Option<lapin::Channel>>,
    conferences: Arc<Conferences>,
    notes: mpsc::UnboundedSender<Note>,
    catalog: Arc<Catalog>,
    cluster: Arc<Cluster>,
    request_timeout: Duration,
}

impl Sharing {
    /// Sets up sharing for a replica consuming `queue`; conference operations of this
    /// replica's calls go to the router from now on, until this replica routes itself.
    pub fn new(
        queue: &str,
        conferences: Arc<Conferences>,
        notes: mpsc::UnboundedSender<Note>,
        catalog: Arc<Catalog>,
        cluster: Arc<Cluster>,
        request_timeout: Duration,
    ) -> Arc<Sharing> {
        let id: u64 = rand::random();
        let sharing = Arc::new(Sharing {
            me: format!("{queue}.replica.{id:016x}"),
            queue: queue.to_string(),
            fanout: format!("{queue}.replicas"),
            members: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            ended: Mutex::new(Recent::new(8192)),
            pending: Mutex::new(HashMap::new()),
            channel: Mutex::new(None),
            conferences: conferences.clone(),
            notes,
            catalog,
            cluster,
            request_timeout,
        });
        let weak = Arc::downgrade(&sharing);
        conferences.set_holding(false);
        conferences.set_remote(Arc::new(move |op| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(sharing) => sharing.request(op).await,
                    None => Err(AriError::Unavailable("host shutting down".into())),
                }
            })
        }));
        sharing
    }

    /// Declares this replica's queue and the fanout, and starts consuming the queue.
    pub async fn declare(&self, channel: &lapin::Channel) -> Result<lapin::Consumer, lapin::Error> {
        channel
            .exchange_declare(
                self.fanout.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(QUEUE_EXPIRES_MS));
        channel
            .queue_declare(
                self.me.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                self.me.as_str().into(),
                self.fanout.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                self.me.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        *self.channel.lock() = Some(channel.clone());
        Ok(consumer)
    }

    /// The broker connection is gone: requests fail fast until the next session.
    pub fn disconnected(&self) {
        *self.channel.lock() = None;
        self.conferences.set_holding(false);
        for (_, waiter) in self.pending.lock().drain() {
            let _ = waiter.send(Err(AriError::Unavailable(
                "the broker connection dropped".into(),
            )));
        }
    }

    /// This replica consumes the event queue: it routes, and holds the conferences.
    pub fn routing(&self) {
        self.conferences.set_holding(true);
    }

    /// Announces this replica to every replica.
    pub async fn hello(&self) -> Result<(), lapin::Error> {
        self.publish(
            &self.fanout,
            "",
            header(HELLO, &self.me),
            BasicProperties::default(),
            b"",
        )
        .await
        .map(drop)
    }

    /// Replicas not heard of in time; forgotten here.
    pub fn expired(&self) -> Vec<String> {
        let mut members = self.members.lock();
        let gone: Vec<String> = (members.iter())
            .filter(|(_, seen)| seen.elapsed() > MEMBER_TIMEOUT)
            .map(|(m, _)| m.clone())
            .collect();
        for member in &gone {
            members.remove(member);
        }
        gone
    }

    /// The router starts the calls of replica `member` (gone) again on the others.
    pub async fn take_over(&self, member: &str) {
        let theirs: Vec<(String, Route)> = {
            let mut routes = self.routes.lock();
            let ids: Vec<String> = (routes.iter())
                .filter(|(_, r)| r.member == member)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| routes.remove(&id).map(|r| (id, r)))
                .collect()
        };
        if theirs.is_empty() {
            return;
        }
        warn!(
            replica = member,
            calls = theirs.len(),
            "replica gone: its calls start again on the others"
        );
        for (channel, route) in theirs {
            let Some(node) = self.cluster.node(&route.node).cloned() else {
                continue;
            };
            let path = format!("/channels/{channel}");
            match node.client.call(Method::GET, &path, &[], None).await {
                Ok(response) => {
                    if let Ok(found) = serde_json::from_value(response.json()) {
                        self.adopt(&node, &found).await;
                    }
                }
                Err(e) => debug!(channel, error = %e, "channel of a gone replica not found"),
            }
        }
    }

    /// After a gap on `node`: every replica reconciles its own calls; channels in Stasis of
    /// one of our apps are queued as adopted StasisStarts (ignored where already handled).
    pub async fn reconcile(&self, node: &Arc<Node>) {
        if let Err(e) = self
            .publish(
                &self.fanout,
                "",
                header(GAP, &node.name),
                BasicProperties::default(),
                b"",
            )
            .await
        {
            warn!(node = %node.name, error = %e, "cannot ask the replicas to reconcile");
        }
        let channels: Vec<crate::event::Channel> =
            match node.client.call(Method::GET, "/channels", &[], None).await {
                Ok(response) => serde_json::from_value(response.json()).unwrap_or_default(),
                Err(e) => {
                    warn!(node = %node.name, error = %e, "cannot list channels to reconcile");
                    return;
                }
            };
        for channel in &channels {
            self.adopt(node, channel).await;
        }
    }

    /// Queues a StasisStart for `channel` if it sits in one of our apps.
    async fn adopt(&self, node: &Node, channel: &crate::event::Channel) {
        let Some((app, args)) = channel.dialplan.stasis_app() else {
            return;
        };
        if app == TRUNK_APP || self.catalog.get(app).is_none() {
            return;
        }
        let Some(asterisk_id) = node.asterisk_id() else {
            return;
        };
        let start = serde_json::json!({
            "type": "StasisStart",
            "asterisk_id": asterisk_id,
            "application": app,
            "args": args,
            "channel": channel_json(channel),
        });
        let body = start.to_string();
        let queue = self.queue.clone();
        if let Err(e) = self
            .publish(
                "",
                &queue,
                header(ADOPT, "1"),
                BasicProperties::default(),
                body.as_bytes(),
            )
            .await
        {
            warn!(channel = %channel.id, error = %e, "cannot queue the call to take over");
        }
    }

    /// The router's decision for one node event. Returns the event to deliver here, or
    /// `None` when it went elsewhere (acknowledged once the broker has it).
    pub async fn route(
        &self,
        node: &Arc<Node>,
        mut event: Event,
        delivery: &lapin::message::Delivery,
        acker: impl FnOnce() + Send + Sync + 'static,
        tx: &mpsc::Sender<Intake>,
    ) -> Result<(), crate::amqp::AmqpError> {
        if let Some(note) = crate::dispatch::conference_note(&self.conferences, &node.name, &event)
        {
            let _ = self.notes.send(note);
        }
        let channel = routing_channel(&event);
        if has_header(delivery, ADOPT)
            && let Some(id) = &channel
        {
            let handled = self.routes.lock().contains_key(id) || self.ended.lock().contains(id);
            if handled {
                acker();
                return Ok(());
            }
        }
        let target = if event.application == TRUNK_APP {
            // The conferences' own legs: only the router (which holds them) needs them.
            Target::Member(self.me.clone())
        } else if self.catalog.get(&event.application).is_none() {
            // Not a wasm app (an ARI facade client's, or gone): every replica decides.
            Target::Everyone
        } else {
            match (&channel, &event.kind) {
                // A late BridgeDestroyed of an older bridge under the id of a live conference:
                // only the router, which holds it, can tell; the replicas would revoke their
                // apps' rights to the live one.
                (None, Kind::BridgeDestroyed { bridge }) if self.conferences.exists(&bridge.id) => {
                    Target::Member(self.me.clone())
                }
                (None, _) => Target::Everyone,
                (Some(id), _) => Target::Member(self.assign(id, node, &event)),
            }
        };
        if let Some(id) = &channel
            && matches!(
                event.kind,
                Kind::StasisEnd { .. } | Kind::ChannelDestroyed { .. }
            )
        {
            self.routes.lock().remove(id);
            self.ended.lock().insert(id.clone());
        }
        if let Kind::ChannelEnteredBridge { .. } | Kind::ChannelLeftBridge { .. } = &event.kind
            && let Some(json) = self.conferences.hide_legs(&event.raw)
        {
            event.raw = json.into();
        }
        match target {
            Target::Member(member) if member == self.me => {
                let receipt = Receipt::new(acker);
                tx.send(Intake::Event {
                    node: node.clone(),
                    event: Box::new(event),
                    receipt: Some(receipt),
                })
                .await
                .map_err(|_| crate::amqp::AmqpError::Shutdown)
            }
            target => {
                let (exchange, key) = match &target {
                    Target::Member(member) => (String::new(), member.clone()),
                    Target::Everyone => (self.fanout.clone(), String::new()),
                };
                let redelivered = if delivery.redelivered { "1" } else { "0" };
                let confirm = self
                    .publish(
                        &exchange,
                        &key,
                        header(FORWARD, redelivered),
                        BasicProperties::default(),
                        event.raw.as_bytes(),
                    )
                    .await?;
                // Acknowledged only once the replica's queue has it.
                tokio::spawn(async move {
                    if confirm.await.is_ok() {
                        acker();
                    }
                });
                Ok(())
            }
        }
    }

    /// The replica for the call on `channel`: its route, else a fresh assignment.
    fn assign(&self, channel: &str, node: &Node, event: &Event) -> String {
        if let Some(route) = self.routes.lock().get(channel) {
            return route.member.clone();
        }
        let member = {
            let members = self.members.lock();
            rendezvous(channel, members.keys()).unwrap_or_else(|| self.me.clone())
        };
        if matches!(event.kind, Kind::StasisStart { .. }) {
            self.ended.lock().remove(channel);
            self.routes.lock().insert(
                channel.to_string(),
                Route {
                    member: member.clone(),
                    node: node.name.clone(),
                },
            );
        }
        member
    }

    /// A message on this replica's own queue: an announcement, a reply, a reconcile, or an
    /// event the router sent here. Returns the event to deliver, if any.
    pub fn own(&self, delivery: &lapin::message::Delivery) -> Own {
        if let Some(member) = header_value(delivery, HELLO) {
            self.members.lock().insert(member, Instant::now());
            return Own::Done;
        }
        if has_header(delivery, REPLY) {
            let id = (delivery.properties.correlation_id().as_ref()).map(|c| c.to_string());
            let reply: ConferenceReply =
                serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
                    Err(AriError::Failed(format!(
                        "unreadable conference reply: {e}"
                    )))
                });
            if let Some(waiter) = id.and_then(|id| self.pending.lock().remove(&id)) {
                let _ = waiter.send(reply);
            }
            return Own::Done;
        }
        if let Some(node) = header_value(delivery, GAP) {
            return match self.cluster.node(&node) {
                Some(node) => Own::Gap(node.clone()),
                None => Own::Done,
            };
        }
        Own::Event {
            redelivered: delivery.redelivered
                || header_value(delivery, FORWARD).as_deref() == Some("1"),
        }
    }

    /// Serves a conference request from another replica (the router only).
    pub fn serve(
        self: &Arc<Self>,
        delivery: lapin::message::Delivery,
        acker: impl FnOnce() + Send + 'static,
    ) {
        let sharing = self.clone();
        tokio::spawn(async move {
            let reply: ConferenceReply =
                match serde_json::from_slice::<ConferenceOp>(&delivery.data) {
                    Ok(op) => sharing.conferences.execute(op).await,
                    Err(e) => Err(AriError::Invalid(format!(
                        "unreadable conference request: {e}"
                    ))),
                };
            let to = delivery
                .properties
                .reply_to()
                .as_ref()
                .map(|r| r.to_string());
            let id = delivery.properties.correlation_id().clone();
            if let (Some(to), Some(id)) = (to, id) {
                let body = serde_json::to_vec(&reply).unwrap_or_default();
                let properties = BasicProperties::default().with_correlation_id(id);
                if let Err(e) = sharing
                    .publish("", &to, header(REPLY, "1"), properties, &body)
                    .await
                {
                    warn!(error = %e, "cannot reply to a conference request");
                }
            }
            acker();
        });
    }

    /// Sends a conference operation to the router and waits for its reply.
    async fn request(&self, op: ConferenceOp) -> ConferenceReply {
        let id = format!("{:032x}", rand::random::<u128>());
        let (waiter, reply) = oneshot::channel();
        self.pending.lock().insert(id.clone(), waiter);
        let body = serde_json::to_vec(&op).map_err(|e| AriError::Failed(e.to_string()))?;
        let op = format!("{op:?}");
        let properties = BasicProperties::default()
            .with_correlation_id(id.as_str().into())
            .with_reply_to(self.me.as_str().into());
        let queue = self.queue.clone();
        if let Err(e) = self
            .publish("", &queue, header(RPC, "1"), properties, &body)
            .await
        {
            self.pending.lock().remove(&id);
            return Err(AriError::Unavailable(format!(
                "cannot reach the replica holding the conferences: {e}"
            )));
        }
        let started = Instant::now();
        match tokio::time::timeout(self.request_timeout, reply).await {
            Ok(Ok(reply)) => {
                if started.elapsed() > Duration::from_millis(100) {
                    warn!(?op, took = ?started.elapsed(), "slow conference request");
                }
                reply
            }
            Ok(Err(_)) => Err(AriError::Unavailable(
                "the broker connection dropped".into(),
            )),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(AriError::Timeout(
                    "the replica holding the conferences did not answer".into(),
                ))
            }
        }
    }

    async fn publish(
        &self,
        exchange: &str,
        key: &str,
        headers: FieldTable,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<lapin::PublisherConfirm, lapin::Error> {
        let channel = self.channel.lock().clone();
        let Some(channel) = channel else {
            return Err(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            ));
        };
        channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                properties.with_headers(headers),
            )
            .await
    }
}

/// What a message on a replica's own queue was.
pub enum Own {
    /// Handled (announcement, reply): acknowledge.
    Done,
    /// The router asks every replica to reconcile its calls on this node.
    Gap(Arc<Node>),
    /// An event the router sent to this replica.
    Event { redelivered: bool },
}

/// The channel whose call an event belongs to.
fn routing_channel(event: &Event) -> Option<String> {
    if let Some(channel) = event.channel() {
        return Some(channel.id.clone());
    }
    match &event.kind {
        Kind::PlaybackFinished { playback } => playback
            .target_uri
            .strip_prefix("channel:")
            .map(str::to_string),
        _ => None,
    }
}

/// The member with the highest hash of (key, member): every router picks the same one for
/// the same members, and a member's departure moves only its own keys.
fn rendezvous<'a>(key: &str, members: impl Iterator<Item = &'a String>) -> Option<String> {
    members
        .max_by_key(|m| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (key, m.as_str()).hash(&mut hasher);
            hasher.finish()
        })
        .cloned()
}

/// The parts of a channel a StasisStart carries, from what `GET /channels` gave.
fn channel_json(channel: &crate::event::Channel) -> serde_json::Value {
    serde_json::json!({
        "id": channel.id,
        "name": channel.name,
        "state": channel.state,
        "caller": {"name": channel.caller.name, "number": channel.caller.number},
        "connected": {"name": channel.connected.name, "number": channel.connected.number},
        "dialplan": {
            "context": channel.dialplan.context,
            "exten": channel.dialplan.exten,
            "app_name": channel.dialplan.app_name,
            "app_data": channel.dialplan.app_data,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_gone_members_keys() {
        let three: Vec<String> = ["r1", "r2", "r3"].map(String::from).to_vec();
        let two: Vec<String> = ["r1", "r3"].map(String::from).to_vec();
        let mut moved = 0;
        for n in 0..1000 {
            let key = format!("ast-a-{n}");
            let before = rendezvous(&key, three.iter()).unwrap();
            assert_eq!(
                before,
                rendezvous(&key, three.iter().rev()).unwrap(),
                "order-free"
            );
            let after = rendezvous(&key, two.iter()).unwrap();
            if before != "r2" {
                assert_eq!(before, after, "keys of the remaining members stay");
            } else {
                moved += 1;
            }
        }
        assert!(
            (250..420).contains(&moved),
            "about a third on each member: {moved}"
        );
        assert_eq!(rendezvous("x", std::iter::empty()), None);
    }

    #[test]
    fn events_follow_their_channel_or_playback_target() {
        let end = Event::parse(r#"{"type":"StasisEnd","channel":{"id":"c1"}}"#).unwrap();
        assert_eq!(routing_channel(&end).as_deref(), Some("c1"));
        let played = Event::parse(
            r#"{"type":"PlaybackFinished","playback":{"id":"p","media_uri":"sound:x","target_uri":"channel:c2","state":"done"}}"#,
        )
        .unwrap();
        assert_eq!(routing_channel(&played).as_deref(), Some("c2"));
        let gone = Event::parse(r#"{"type":"BridgeDestroyed","bridge":{"id":"b"}}"#).unwrap();
        assert_eq!(routing_channel(&gone), None);
    }
}
