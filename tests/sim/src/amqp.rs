//! Stasis events over AMQP, as Wazo's `res_stasis_amqp` publishes them (recordings in
//! `fixtures/amqp/`): the events of every app registered with `POST /ari/amqp/{app}` go to a
//! topic exchange with routing key `stasis.app.<app lowercased>`, `content_type
//! application/json`, `delivery_mode 2`, headers `name` (event type), `category` (`stasis`),
//! `application_name`, and body `{"name", "data", "application"}` (or the bare event, `raw`).
//! The event JSON is exactly the string a websocket owner of the app would have received.
//!
//! Why one publisher task per node life, fed by an unbounded queue: the node core emits events
//! under its lock and must never wait for a broker. The task publishes in queue order and keeps
//! the node side as lossy as the real module:
//! - no broker configured: every event is dropped (the module logs "cannot publish to AMQP
//!   without configured connection" and drops it); registrations still work;
//! - broker unreachable or connection lost: events are dropped while the task reconnects in
//!   the background (backoff 200 ms doubling to 2 s); publishing resumes once connected;
//! - exchange missing at a publish: the broker closes the channel, and every later event is
//!   dropped, even once the exchange exists, until the node restarts (kill/revive) — or until
//!   the connection itself is lost and re-established, which opens a fresh channel.
//!
//! The task uses publisher confirms only to count: `published` is what the broker acked,
//! `dropped` everything lost (consumers see no difference; the real module does not wait).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use crate::config::{AmqpConfig, AmqpFormat};
use crate::state::{Id, push_json_str};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the task looks at its connection and channel while idle.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a stopping node waits for outstanding confirms before closing its connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a node's AMQP publisher is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmqpState {
    /// No broker configured for the node: events of AMQP apps are dropped.
    Unconfigured,
    /// Connecting (or reconnecting) to the broker.
    Connecting,
    /// Connected with an open channel: events are published.
    Connected,
    /// The broker closed the node's channel (missing exchange): events are dropped until the
    /// node restarts or the connection is re-established.
    ChannelClosed,
    /// The broker is unreachable or the connection dropped; a reconnect is scheduled.
    Disconnected,
    /// The node is down (killed).
    Stopped,
}

impl AmqpState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => AmqpState::Connecting,
            2 => AmqpState::Connected,
            3 => AmqpState::ChannelClosed,
            4 => AmqpState::Disconnected,
            5 => AmqpState::Stopped,
            _ => AmqpState::Unconfigured,
        }
    }
}

/// A node's AMQP publisher at a glance (`GET /_sim/nodes/{node}/amqp`,
/// [`crate::NodeHandle::amqp_status`]). Counters add up over the node's kills and revives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpStatus {
    pub state: AmqpState,
    /// Events the broker accepted (confirmed).
    pub published: u64,
    /// Events lost: no broker configured, broker unreachable, channel closed, refused.
    pub dropped: u64,
    /// Events handed to the publisher and neither published nor dropped yet.
    pub pending: u64,
    /// The exchange the node publishes to (`None` without a broker).
    pub exchange: Option<String>,
    /// The body format (`None` without a broker).
    pub format: Option<AmqpFormat>,
}

/// Per node, shared by its publisher tasks and the control API.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: Option<AmqpConfig>,
    node: Id,
    enqueued: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    state: AtomicU8,
    /// The current publisher task; older tasks (previous node lives) no longer set the state.
    generation: AtomicU64,
}

impl Shared {
    pub(crate) fn new(node: Id, cfg: Option<AmqpConfig>) -> Arc<Self> {
        let state = if cfg.is_some() {
            AmqpState::Stopped
        } else {
            AmqpState::Unconfigured
        };
        Arc::new(Shared {
            cfg,
            node,
            enqueued: AtomicU64::new(0),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            state: AtomicU8::new(state as u8),
            generation: AtomicU64::new(0),
        })
    }

    fn set_state(&self, generation: u64, s: AmqpState) {
        if self.generation.load(Ordering::Acquire) == generation {
            self.state.store(s as u8, Ordering::Release);
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::AcqRel);
    }

    fn confirmed(&self, r: lapin::Result<Confirmation>) {
        match r {
            Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => {
                self.published.fetch_add(1, Ordering::AcqRel);
            }
            Ok(Confirmation::Nack(_)) | Err(_) => self.drop_one(),
        }
    }

    /// The node died: its current publisher (if any) is retired.
    pub(crate) fn retire(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if self.cfg.is_some() {
            self.state
                .store(AmqpState::Stopped as u8, Ordering::Release);
        }
    }

    pub(crate) fn status(&self) -> AmqpStatus {
        // Read the outcomes before `enqueued` so `pending` never underflows.
        let published = self.published.load(Ordering::Acquire);
        let dropped = self.dropped.load(Ordering::Acquire);
        let enqueued = self.enqueued.load(Ordering::Acquire);
        AmqpStatus {
            state: AmqpState::from_u8(self.state.load(Ordering::Acquire)),
            published,
            dropped,
            pending: enqueued.saturating_sub(published + dropped),
            exchange: self.cfg.as_ref().map(|c| c.exchange.clone()),
            format: self.cfg.as_ref().map(|c| c.format),
        }
    }
}

/// One event for the publisher.
struct Msg {
    app: Id,
    ty: Box<str>,
    json: String,
}

/// A node life's handle on its publisher (lives in `NodeState`; dropping it ends the task once
/// the queue is drained).
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    tx: Option<UnboundedSender<Msg>>,
}

impl Publisher {
    /// No task: every event is dropped (no broker configured, or the node is not running).
    pub(crate) fn detached(shared: Arc<Shared>) -> Self {
        Publisher { shared, tx: None }
    }

    /// Start the publisher of a node life (connects at once, like the module at load time).
    /// Without a broker configured this is [`Publisher::detached`]. Needs a tokio runtime.
    pub(crate) fn start(shared: &Arc<Shared>) -> Self {
        let Some(cfg) = shared.cfg.clone() else {
            return Publisher::detached(shared.clone());
        };
        let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        shared.set_state(generation, AmqpState::Connecting);
        let (tx, rx) = unbounded_channel();
        tokio::spawn(run(shared.clone(), cfg, generation, rx));
        Publisher {
            shared: shared.clone(),
            tx: Some(tx),
        }
    }

    /// Queue an event of `app` (`ty`: its type; `json`: the event as a websocket would get it).
    pub(crate) fn publish(&self, app: &Id, ty: &str, json: String) {
        self.shared.enqueued.fetch_add(1, Ordering::AcqRel);
        let msg = Msg {
            app: app.clone(),
            ty: ty.into(),
            json,
        };
        match &self.tx {
            Some(tx) if tx.send(msg).is_ok() => {}
            _ => self.shared.drop_one(),
        }
    }
}

/// `stasis.app.<app>` with the app name lowercased (ASCII, like the module's `tolower`).
pub(crate) fn routing_key(app: &str) -> String {
    format!("stasis.app.{}", app.to_ascii_lowercase())
}

/// `{"name": <type>, "data": <event>, "application": <app>}`, compact, in the recorded order.
pub(crate) fn envelope(ty: &str, json: &str, app: &str) -> String {
    let mut s = String::with_capacity(json.len() + ty.len() + app.len() + 48);
    s.push_str("{\"name\":");
    push_json_str(&mut s, ty);
    s.push_str(",\"data\":");
    s.push_str(json);
    s.push_str(",\"application\":");
    push_json_str(&mut s, app);
    s.push('}');
    s
}

fn properties(ty: &str, app: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("name".into(), AMQPValue::LongString(LongString::from(ty)));
    headers.insert(
        "category".into(),
        AMQPValue::LongString(LongString::from("stasis")),
    );
    headers.insert(
        "application_name".into(),
        AMQPValue::LongString(LongString::from(app)),
    );
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

enum Link {
    Down,
    Up {
        conn: Connection,
        chan: Channel,
    },
    /// The broker closed our channel; the connection is still there.
    ChannelClosed {
        conn: Connection,
    },
}

type Connecting = Pin<Box<dyn Future<Output = Option<(Connection, Channel)>> + Send>>;

async fn connect(url: String, node: Id) -> Option<(Connection, Channel)> {
    let attempt = async {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("stasis-sim node {node}").into());
        let conn = Connection::connect(&url, props).await?;
        let chan = conn.create_channel().await?;
        chan.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, lapin::Error>((conn, chan))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(link)) => Some(link),
        Ok(Err(e)) => {
            tracing::debug!(node = %node, error = %e, "amqp: connect failed");
            None
        }
        Err(_) => {
            tracing::debug!(node = %node, "amqp: connect timed out");
            None
        }
    }
}

/// Is the link still what it claims? Moves `Up` to `ChannelClosed` or `Down`, and
/// `ChannelClosed` to `Down`, as the connection and channel statuses say.
fn recheck(link: Link) -> Link {
    match link {
        Link::Up { conn, chan } => {
            if !conn.status().connected() {
                Link::Down
            } else if !chan.status().connected() {
                Link::ChannelClosed { conn }
            } else {
                Link::Up { conn, chan }
            }
        }
        Link::ChannelClosed { conn } if !conn.status().connected() => Link::Down,
        other => other,
    }
}

fn state_of(link: &Link) -> AmqpState {
    match link {
        Link::Down => AmqpState::Disconnected,
        Link::Up { .. } => AmqpState::Connected,
        Link::ChannelClosed { .. } => AmqpState::ChannelClosed,
    }
}

async fn run(
    shared: Arc<Shared>,
    cfg: AmqpConfig,
    generation: u64,
    mut rx: UnboundedReceiver<Msg>,
) {
    let node = shared.node.clone();
    let exchange = ShortString::from(cfg.exchange.as_str());
    let mut link = Link::Down;
    let mut backoff = MIN_BACKOFF;
    let mut retry_at = Instant::now();
    let mut connecting: Option<Connecting> = None;
    let mut confirms: FuturesOrdered<PublisherConfirm> = FuturesOrdered::new();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if matches!(link, Link::Down) && connecting.is_none() && Instant::now() >= retry_at {
            connecting = Some(Box::pin(connect(cfg.url.clone(), node.clone())));
            shared.set_state(generation, AmqpState::Connecting);
        }
        let down_waiting = matches!(link, Link::Down) && connecting.is_none();
        tokio::select! {
            Some(r) = confirms.next(), if !confirms.is_empty() => shared.confirmed(r),
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let attempt = match &link {
                    Link::Up { chan, .. } => Some(publish(chan, &exchange, cfg.format, msg).await),
                    _ => None,
                };
                match attempt {
                    Some(Ok(Some(confirm))) => confirms.push_back(confirm),
                    Some(Ok(None)) => shared.drop_one(),
                    Some(Err(e)) => {
                        shared.drop_one();
                        tracing::debug!(node = %node, error = %e, "amqp: publish failed");
                        link = recheck(link);
                        if let Link::Up { conn, .. } = link {
                            // The publish failed on a live channel: treat the channel as gone.
                            link = Link::ChannelClosed { conn };
                        }
                        if matches!(link, Link::Down) {
                            backoff = MIN_BACKOFF;
                            retry_at = Instant::now() + backoff;
                        }
                        shared.set_state(generation, state_of(&link));
                    }
                    None => shared.drop_one(),
                }
            }
            up = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match up {
                    Some((conn, chan)) => {
                        tracing::debug!(node = %node, "amqp: connected");
                        link = Link::Up { conn, chan };
                        backoff = MIN_BACKOFF;
                    }
                    None => {
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                shared.set_state(generation, state_of(&link));
            }
            _ = tokio::time::sleep_until(retry_at), if down_waiting => {}
            _ = check.tick() => {
                let was = state_of(&link);
                link = recheck(link);
                let now = state_of(&link);
                if now != was {
                    tracing::debug!(node = %node, state = ?now, "amqp: link changed");
                    if now == AmqpState::Disconnected {
                        backoff = MIN_BACKOFF;
                        retry_at = Instant::now() + backoff;
                    }
                    shared.set_state(generation, now);
                }
            }
        }
    }
    // The node stopped: wait (briefly) for outstanding confirms, then close the connection.
    let drain = async {
        while let Some(r) = confirms.next().await {
            shared.confirmed(r);
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    for _ in 0..confirms.len() {
        shared.drop_one();
    }
    let conn = match link {
        Link::Up { conn, .. } | Link::ChannelClosed { conn } => Some(conn),
        Link::Down => None,
    };
    if let Some(conn) = conn
        && conn.status().connected()
    {
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            conn.close(200, "node stopped".into()),
        )
        .await;
    }
    shared.set_state(generation, AmqpState::Stopped);
}

/// Publish one event. `Ok(None)`: not publishable (routing key too long), dropped.
async fn publish(
    chan: &Channel,
    exchange: &ShortString,
    format: AmqpFormat,
    msg: Msg,
) -> lapin::Result<Option<PublisherConfirm>> {
    let Ok(key) = ShortString::try_new(routing_key(&msg.app)) else {
        return Ok(None);
    };
    let body = match format {
        AmqpFormat::Envelope => envelope(&msg.ty, &msg.json, &msg.app),
        AmqpFormat::Raw => msg.json,
    };
    chan.basic_publish(
        exchange.clone(),
        key,
        BasicPublishOptions::default(),
        body.as_bytes(),
        properties(&msg.ty, &msg.app),
    )
    .await
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_lowercases_ascii() {
        assert_eq!(routing_key("AmqpApp"), "stasis.app.amqpapp");
    }

    #[test]
    fn envelope_is_the_recorded_form() {
        let data = r#"{"type":"StasisEnd","timestamp":"t","asterisk_id":"02:00:00:00:00:0a","application":"amqpapp"}"#;
        let body = envelope("StasisEnd", data, "amqpapp");
        assert_eq!(
            body,
            format!(r#"{{"name":"StasisEnd","data":{data},"application":"amqpapp"}}"#)
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["data"]["asterisk_id"], "02:00:00:00:00:0a");
    }

    #[test]
    fn status_counts_and_states() {
        let s = Shared::new("a".into(), None);
        let p = Publisher::detached(s.clone());
        p.publish(&Id::from("x"), "StasisStart", "{}".into());
        let st = s.status();
        assert_eq!(st.state, AmqpState::Unconfigured);
        assert_eq!((st.published, st.dropped, st.pending), (0, 1, 0));
        assert_eq!(st.exchange, None);
        let c = Shared::new("b".into(), Some(AmqpConfig::new("amqp://127.0.0.1:1/%2f")));
        assert_eq!(c.status().state, AmqpState::Stopped);
        assert_eq!(c.status().exchange.as_deref(), Some("stasis"));
    }
}
