//! AMQP intake: the Stasis events that nodes forward to RabbitMQ (Wazo's `res_stasis_amqp`),
//! for nodes configured with `intake = "amqp"`.
//!
//! Two kinds of task, both feeding dispatch through the same [`Intake`] queue as the
//! websockets:
//! - **the broker session** ([`run_broker`]): declares the nodes' exchange (a durable topic)
//!   and the host's durable event queue, binds `stasis.app.<app>` for every app, and consumes.
//!   The exchange is declared before any node is told to publish, because Asterisk's AMQP
//!   module silently drops every event, for good, once it has published to a missing
//!   exchange.
//! - **one task per AMQP node** ([`run_node`]): there is no socket to the node, so it
//!   identifies the node, registers the apps on it (`POST /ari/amqp/{app}`), and then polls
//!   `GET /asterisk/info` for health. A changed `startup_time` means the node restarted and
//!   lost its registrations: they are made again.
//!
//! Delivery is at least once, end to end. A message is acknowledged only when the host is
//! done with its event (a [`Receipt`] travels with the event to the call and is dropped after
//! the callback). What is not acknowledged when the connection drops is redelivered; the
//! session remembers the fingerprints of recent events, so a redelivered event that was
//! already handled is acknowledged and skipped rather than handled twice.
//!
//! The node side is lossy (events published while the broker is down are gone), so after
//! every gap the host reconciles with the nodes over REST: on (re)gaining the queue and when
//! a node restarts, dispatch compares its calls with each node's channels.
//!
//! The queue is single-active-consumer: several host replicas may consume it, RabbitMQ gives
//! every event to exactly one of them, in order, and moves the queue to another replica when
//! that one goes away. A replica learns it became the active one from its first delivery,
//! and only then reconciles (which takes over the calls the previous replica left).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use reqwest::Method;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::cluster::{Cluster, Health, IdentifyError, Node};
use crate::conference::TRUNK_APP;
use crate::config::{Amqp, Intake as IntakeMode};
use crate::event::{Event, Receipt};
use crate::ingress::{Intake, reconnect_backoff};
use crate::recent::Recent;
use crate::replicas::{Own, Sharing};

/// Why a broker session ended.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the host's consumer")]
    Cancelled,
    #[error("host shutting down")]
    Shutdown,
}

/// Header of the message a replica puts on the event queue after (re)connecting: the active
/// consumer reconciles when it arrives.
const MARKER: &str = "x-stasis-host";

/// After a gap, when the host reconciles again (after the first, immediate reconcile).
const SETTLE: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(7),
];

/// The routing key Asterisk's AMQP module publishes an app's events with.
pub fn routing_key(app: &str) -> String {
    format!("stasis.app.{}", app.to_lowercase())
}

/// What the broker session tells the node tasks: how many times the exchange and queue have
/// been declared (0: not yet; nodes must not publish before).
pub type Declared = watch::Receiver<u64>;

/// What the broker session listens to and reports to.
pub struct BrokerLinks {
    /// The app names whose routing keys to bind.
    pub apps: watch::Receiver<Vec<String>>,
    /// To dispatch: events, gaps.
    pub tx: mpsc::Sender<Intake>,
    /// To the AMQP node tasks: the exchange is declared.
    pub declared: watch::Sender<u64>,
    /// From the AMQP node tasks: nodes whose events may have been lost.
    pub gaps: mpsc::UnboundedReceiver<Arc<Node>>,
    /// Set when the replicas share calls.
    pub sharing: Option<Arc<Sharing>>,
}

/// Runs broker sessions for ever, reconnecting with backoff. `gaps` receives nodes whose
/// events may have been lost; they are reconciled while this replica is the active consumer.
pub async fn run_broker(
    config: Amqp,
    cluster: Arc<Cluster>,
    links: BrokerLinks,
    max_reconnect: Duration,
) {
    let BrokerLinks {
        mut apps,
        tx,
        declared,
        mut gaps,
        sharing,
    } = links;
    let backoff = reconnect_backoff(max_reconnect);
    let mut delays = backoff.build();
    let mut seen = Recent::new(SEEN);
    loop {
        let mut session = Session {
            config: &config,
            cluster: &cluster,
            tx: &tx,
            seen: &mut seen,
            active: false,
            consuming: false,
            sharing: sharing.as_ref(),
        };
        let result = session.run(&mut apps, &declared, &mut gaps).await;
        if let Some(sharing) = &sharing {
            sharing.disconnected();
        }
        if session.consuming {
            // The broker was there: start over from the shortest delay.
            delays = backoff.build();
        }
        match result {
            Err(AmqpError::Shutdown) => return,
            Err(e) => {
                // A refused certificate (amqps://) says what to do about it.
                let advice = crate::tls::advice(&e).unwrap_or_default();
                warn!(broker = %redact(&config.url), error = %e, advice, "AMQP intake lost; reconnecting")
            }
            Ok(()) => {}
        }
        let delay = delays.next().unwrap_or(max_reconnect);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Opens a connection to the broker at `url`, named `name` in the broker's connection list:
/// `amqp://`, or `amqps://` through `tls`, the same rustls client configuration (and so the
/// same trust: system roots plus `[tls] ca_file`) as connections to nodes.
pub async fn connect_broker(
    url: &str,
    name: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> lapin::Result<Connection> {
    use lapin::tcp::{AsyncTcpStream, RustlsConnector};
    use lapin::uri::{AMQPScheme, AMQPUri};
    let uri: AMQPUri = url
        .parse()
        .map_err(|e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connector = RustlsConnector::from(tls.clone());
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let host = uri.authority.host.clone();
            let addrs = runtime.to_socket_addrs((host.clone(), uri.authority.port));
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            Ok(match uri.scheme {
                AMQPScheme::AMQP => stream,
                AMQPScheme::AMQPS => stream.into_rustls(&connector, &host).await?,
            })
        },
        properties,
    )
    .await
}

/// One connection to the broker, from declaration to the first error.
struct Session<'a> {
    config: &'a Amqp,
    cluster: &'a Cluster,
    tx: &'a mpsc::Sender<Intake>,
    seen: &'a mut Recent<u64>,
    /// Whether this replica has received a delivery in this session, i.e. is the queue's
    /// active consumer.
    active: bool,
    /// Whether the session got as far as consuming.
    consuming: bool,
    /// Set when the replicas share calls (`amqp.share_calls`).
    sharing: Option<&'a Arc<Sharing>>,
}

impl Session<'_> {
    async fn run(
        &mut self,
        apps: &mut watch::Receiver<Vec<String>>,
        declared: &watch::Sender<u64>,
        gaps: &mut mpsc::UnboundedReceiver<Arc<Node>>,
    ) -> Result<(), AmqpError> {
        let connection =
            connect_broker(&self.config.url, "stasis-host intake", self.cluster.tls()).await?;
        let result = self.consume(&connection, apps, declared, gaps).await;
        if matches!(result, Err(AmqpError::Shutdown)) {
            // Close explicitly: lapin keeps a dropped connection open, and RabbitMQ moves the
            // queue to another replica only once this one's connection is gone.
            let _ = connection.close(200, "host shutting down".into()).await;
        }
        result
    }

    async fn consume(
        &mut self,
        connection: &Connection,
        apps: &mut watch::Receiver<Vec<String>>,
        declared: &watch::Sender<u64>,
        gaps: &mut mpsc::UnboundedReceiver<Arc<Node>>,
    ) -> Result<(), AmqpError> {
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        channel
            .queue_declare(
                self.config.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        let mut bound = HashSet::new();
        let names = apps.borrow_and_update().clone();
        self.bind(&channel, &mut bound, &names).await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut own = match self.sharing {
            Some(sharing) => {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let own = sharing.declare(&channel).await?;
                sharing.hello().await?;
                Some(own)
            }
            None => None,
        };
        let mut hello = tokio::time::interval(crate::replicas::HELLO_EVERY);
        declared.send_modify(|n| *n += 1);
        self.consuming = true;
        // Whichever replica consumes the queue must catch up with what happened while this
        // one was away; the marker reaches exactly that replica, after the backlog.
        channel
            .basic_publish(
                "".into(),
                self.config.queue.as_str().into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default().with_headers(header(MARKER, "reconcile")),
            )
            .await?;
        info!(broker = %redact(&self.config.url), exchange = %self.config.exchange,
            queue = %self.config.queue, "AMQP intake consuming");

        // Acks go out from one task, batched (see `Acks`).
        let (acks, to_ack) = mpsc::unbounded_channel::<(u64, lapin::Acker)>();
        let acks = Acks(acks);
        let acker = tokio::spawn(acknowledge(to_ack));
        let _stop_acker = AbortOnDrop(acker);

        loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => self.on_delivery(delivery, &acks).await?,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(AmqpError::Cancelled),
                },
                changed = apps.changed() => {
                    if changed.is_err() {
                        return Err(AmqpError::Shutdown);
                    }
                    let names = apps.borrow_and_update().clone();
                    self.bind(&channel, &mut bound, &names).await?;
                }
                Some(node) = gaps.recv() => {
                    if self.active {
                        self.reconcile(vec![node]);
                    }
                }
                delivery = next_own(&mut own) => match delivery {
                    Some(Ok(delivery)) => self.on_own(delivery, &acks).await?,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(AmqpError::Cancelled),
                },
                _ = hello.tick(), if self.sharing.is_some() => {
                    if let Some(sharing) = self.sharing {
                        sharing.hello().await?;
                        for gone in sharing.expired() {
                            if self.active {
                                let sharing = (*sharing).clone();
                                tokio::spawn(async move { sharing.take_over(&gone).await });
                            }
                        }
                    }
                }
                _ = self.tx.closed() => return Err(AmqpError::Shutdown),
            }
        }
    }

    /// Binds the routing keys of apps not bound yet. Keys are never unbound: a deleted app
    /// still drains its calls, and their StasisEnd must arrive.
    async fn bind(
        &self,
        channel: &lapin::Channel,
        bound: &mut HashSet<String>,
        names: &[String],
    ) -> Result<(), AmqpError> {
        for name in names.iter().map(String::as_str).chain([TRUNK_APP]) {
            let key = routing_key(name);
            if bound.contains(&key) {
                continue;
            }
            channel
                .queue_bind(
                    self.config.queue.as_str().into(),
                    self.config.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            debug!(key, "bound");
            bound.insert(key);
        }
        Ok(())
    }

    async fn on_delivery(
        &mut self,
        delivery: lapin::message::Delivery,
        acks: &Acks,
    ) -> Result<(), AmqpError> {
        let is_marker = has_header(&delivery, MARKER);
        if !self.active || is_marker {
            // The queue is ours now (the first replica, or the previous one went away), or
            // a replica has just (re)connected: catch up with whatever happened while
            // nobody, or somebody else, consumed.
            if !self.active {
                info!("this replica is the active consumer of the event queue");
                if let Some(sharing) = self.sharing {
                    sharing.routing();
                }
            }
            self.active = true;
            let nodes: Vec<Arc<Node>> = (self.cluster.nodes())
                .filter(|n| n.config.intake == IntakeMode::Amqp && n.is_up())
                .cloned()
                .collect();
            self.reconcile(nodes);
        }
        if is_marker {
            acks.done(&delivery);
            return Ok(());
        }
        if let Some(sharing) = self.sharing
            && has_header(&delivery, crate::replicas::RPC)
        {
            let ack = acks.later(&delivery);
            sharing.serve(delivery, ack);
            return Ok(());
        }
        let header_app = header_value(&delivery, "application_name");
        let Some((node, event)) =
            self.accept(&delivery, delivery.redelivered, header_app.as_deref(), acks)
        else {
            return Ok(());
        };
        if let Some(sharing) = self.sharing {
            let ack = acks.later(&delivery);
            return sharing.route(&node, event, &delivery, ack, self.tx).await;
        }
        let receipt = Receipt::new(acks.later(&delivery));
        self.send(Intake::Event {
            node,
            event: Box::new(event),
            receipt: Some(receipt),
        })
        .await
    }

    /// Has dispatch reconcile `nodes` now, and again as their publishers settle: each node
    /// reconnects to the broker at its own pace, dropping events until it has, and the host
    /// cannot see when.
    fn reconcile(&self, nodes: Vec<Arc<Node>>) {
        let (sharing, tx) = (self.sharing.map(|s| (*s).clone()), self.tx.clone());
        tokio::spawn(async move {
            for wait in [Duration::ZERO].into_iter().chain(SETTLE) {
                tokio::time::sleep(wait).await;
                for node in &nodes {
                    match &sharing {
                        // Every replica reconciles its own calls; the router adopts the
                        // unknown ones.
                        Some(sharing) => sharing.reconcile(node).await,
                        None => {
                            let gap = Intake::Gap {
                                node: node.clone(),
                                adopt: true,
                            };
                            if tx.send(gap).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
    }

    /// A message on this replica's own queue (shared calls).
    async fn on_own(
        &mut self,
        delivery: lapin::message::Delivery,
        acks: &Acks,
    ) -> Result<(), AmqpError> {
        let Some(sharing) = self.sharing else {
            return Ok(());
        };
        let redelivered = match sharing.own(&delivery) {
            Own::Done => {
                acks.done(&delivery);
                return Ok(());
            }
            Own::Gap(node) => {
                acks.done(&delivery);
                return self.send(Intake::Gap { node, adopt: false }).await;
            }
            Own::Event { redelivered } => redelivered,
        };
        let Some((node, event)) = self.accept(&delivery, redelivered, None, acks) else {
            return Ok(());
        };
        let receipt = Receipt::new(acks.later(&delivery));
        self.send(Intake::Event {
            node,
            event: Box::new(event),
            receipt: Some(receipt),
        })
        .await
    }

    /// The event in `delivery` and its node, unless it is a redelivery already handled,
    /// malformed, or from a node the host does not know: those are acknowledged and skipped.
    fn accept(
        &mut self,
        delivery: &lapin::message::Delivery,
        redelivered: bool,
        header_app: Option<&str>,
        acks: &Acks,
    ) -> Option<(Arc<Node>, Event)> {
        let fingerprint = fingerprint(&delivery.data);
        if redelivered && self.seen.contains(&fingerprint) {
            debug!("redelivered event already handled: acknowledged, skipped");
            acks.done(delivery);
            return None;
        }
        let event = match Event::parse_amqp(&delivery.data, header_app) {
            Ok(event) => event,
            Err(e) => {
                let sample: String = String::from_utf8_lossy(&delivery.data)
                    .chars()
                    .take(200)
                    .collect();
                warn!(routing_key = %delivery.routing_key, error = %e, event = %sample,
                    "skipping malformed AMQP event");
                acks.done(delivery);
                return None;
            }
        };
        let Some(node) = self.cluster.by_asterisk_id(&event.asterisk_id).cloned() else {
            warn!(asterisk_id = %event.asterisk_id, kind = %event.kind_name,
                "event from a node that is not configured (or not identified yet): skipped");
            acks.done(delivery);
            return None;
        };
        self.seen.insert(fingerprint);
        Some((node, event))
    }

    async fn send(&self, intake: Intake) -> Result<(), AmqpError> {
        self.tx.send(intake).await.map_err(|_| AmqpError::Shutdown)
    }
}

/// Sends the broker the acks of handled deliveries: `(delivery tag, acker)`, in whatever
/// order calls finish with their events.
#[derive(Clone)]
struct Acks(mpsc::UnboundedSender<(u64, lapin::Acker)>);

impl Acks {
    /// `delivery` is handled.
    fn done(&self, delivery: &lapin::message::Delivery) {
        let _ = self.0.send((delivery.delivery_tag, delivery.acker.clone()));
    }

    /// What marks `delivery` handled, for later.
    fn later(&self, delivery: &lapin::message::Delivery) -> impl FnOnce() + Send + Sync + 'static {
        let (acks, tag, acker) = (
            self.0.clone(),
            delivery.delivery_tag,
            delivery.acker.clone(),
        );
        move || {
            let _ = acks.send((tag, acker));
        }
    }
}

/// Handled deliveries that may wait for a lower tag before one `multiple` ack covers them;
/// beyond this many (a call busy with an older event), they are acked one by one so the
/// prefetch window never fills with handled events.
const ACK_WINDOW: usize = 32;

/// Acks handled deliveries. Delivery tags count up from 1 on the channel; every delivery is
/// handled exactly once, so once all tags below `floor` are handled one `multiple` ack covers
/// them: a burst of events costs one ack frame, not one each.
async fn acknowledge(mut handled: mpsc::UnboundedReceiver<(u64, lapin::Acker)>) {
    let mut floor: u64 = 1;
    // Handled tags at or above `floor`; `None` once acked one by one.
    let mut waiting: std::collections::BTreeMap<u64, Option<lapin::Acker>> = Default::default();
    while let Some((tag, acker)) = handled.recv().await {
        waiting.insert(tag, Some(acker));
        while let Ok((tag, acker)) = handled.try_recv() {
            waiting.insert(tag, Some(acker));
        }
        let mut covering = None;
        while let Some(entry) = waiting.remove(&floor) {
            if entry.is_some() {
                covering = entry;
            }
            floor += 1;
        }
        if let Some(acker) = covering {
            let multiple = BasicAckOptions { multiple: true };
            if let Err(e) = acker.ack(multiple).await {
                debug!(error = %e, "ack failed; the broker will redeliver");
            }
        }
        if waiting.values().filter(|a| a.is_some()).count() > ACK_WINDOW {
            for entry in waiting.values_mut() {
                if let Some(acker) = entry.take()
                    && let Err(e) = acker.ack(BasicAckOptions::default()).await
                {
                    debug!(error = %e, "ack failed; the broker will redeliver");
                }
            }
        }
    }
}

/// The next message on this replica's own queue; never, without shared calls.
async fn next_own(
    own: &mut Option<lapin::Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match own {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Headers with one string: how the host marks its own messages.
pub(crate) fn header(name: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(name.into(), AMQPValue::LongString(value.into()));
    table
}

/// Whether the delivery carries header `name`.
pub(crate) fn has_header(delivery: &lapin::message::Delivery, name: &str) -> bool {
    (delivery.properties.headers().as_ref()).is_some_and(|h| h.inner().contains_key(name))
}

/// Header `name` as a string, if it is one.
pub(crate) fn header_value(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn fingerprint(body: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}

/// Fingerprints of the events handed to dispatch that a redelivery is checked against:
/// enough to cover every delivery that can be in flight (the prefetch) when a connection
/// drops, many times over.
const SEEN: usize = 1 << 16;

/// The broker URL without its password, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparsable (a password with an unencoded `#`, say): drop all before the last `@`.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***@{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.to_string(),
        },
    }
}

/// What an AMQP node's task listens to and reports to.
pub struct NodeLinks {
    /// The app names to register.
    pub apps: watch::Receiver<Vec<String>>,
    /// From the broker session: the exchange exists.
    pub declared: Declared,
    /// To dispatch: node up and down.
    pub tx: mpsc::Sender<Intake>,
    /// To the broker session: the node's events may have been lost.
    pub gaps: mpsc::UnboundedSender<Arc<Node>>,
}

/// Runs one AMQP node for ever: identify, register the apps, poll health, re-register after
/// a restart. See the module docs.
pub async fn run_node(
    node: Arc<Node>,
    cluster: Arc<Cluster>,
    config: Amqp,
    links: NodeLinks,
    max_reconnect: Duration,
) {
    let NodeLinks {
        mut apps,
        mut declared,
        tx,
        gaps,
    } = links;
    let backoff = reconnect_backoff(max_reconnect);
    let mut delays = backoff.build();
    // Nodes publish only to a declared exchange (see the module docs).
    if declared.wait_for(|n| *n > 0).await.is_err() {
        return;
    }
    loop {
        match cluster.identify(&node).await.map_err(NodeError::from) {
            Ok(startup) => {
                let mut registered = HashSet::new();
                let names = apps.borrow_and_update().clone();
                match register(&node, &config, &mut registered, &names).await {
                    Ok(()) => {
                        delays = backoff.build();
                        info!(node = %node.name, apps = ?names, "AMQP node up, apps registered");
                        node.set_health(Health::Up);
                        if tx.send(Intake::NodeUp(node.clone())).await.is_err() {
                            return;
                        }
                        // Whatever the node published while it was unreachable (or before
                        // the host started) may be lost: the active replica reconciles.
                        let _ = gaps.send(node.clone());
                        let reason = watch_node(
                            &node,
                            &cluster,
                            &config,
                            &mut apps,
                            &mut registered,
                            &startup,
                        )
                        .await;
                        warn!(node = %node.name, %reason, "AMQP node lost");
                        node.set_health(Health::Down);
                        if tx.send(Intake::NodeDown(node.clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(node = %node.name, error = %e, "cannot register the apps for AMQP")
                    }
                }
            }
            Err(NodeError::Identify(IdentifyError::Duplicate(e))) => {
                error!(node = %node.name, "{e}");
                node.set_health(Health::Refused);
            }
            Err(e) => {
                debug!(node = %node.name, error = %e, "node not reachable yet");
                if node.health() == Health::Up {
                    node.set_health(Health::Down);
                }
            }
        }
        let delay = delays.next().unwrap_or(max_reconnect);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum NodeError {
    #[error(transparent)]
    Identify(#[from] IdentifyError),
    #[error("{0}")]
    Ari(#[from] crate::backend::AriError),
}

/// Polls the node until it stops answering; returns why.
async fn watch_node(
    node: &Arc<Node>,
    cluster: &Cluster,
    config: &Amqp,
    apps: &mut watch::Receiver<Vec<String>>,
    registered: &mut HashSet<String>,
    startup: &str,
) -> String {
    let mut poll = tokio::time::interval(config.poll());
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => match cluster.identify(node).await {
                // A restart quicker than the poll: the node lost its registrations, calls
                // and bridges all the same. Report it down and up again like any restart, so
                // its calls end and conferences homed there move.
                Ok(now) if now != startup => return "node restarted (new start-up time)".into(),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            },
            changed = apps.changed() => {
                if changed.is_err() {
                    return "host shutting down".into();
                }
                let names = apps.borrow_and_update().clone();
                if let Err(e) = register(node, config, registered, &names).await {
                    return format!("cannot register the new app set: {e}");
                }
            }
        }
    }
}

/// Registers the apps of `names` not registered yet (`POST /ari/amqp/{app}`) and unregisters
/// those gone from it (`DELETE`), so the node forwards exactly the host's apps.
async fn register(
    node: &Node,
    config: &Amqp,
    registered: &mut HashSet<String>,
    names: &[String],
) -> Result<(), NodeError> {
    if !config.register {
        return Ok(());
    }
    let wanted: HashSet<String> = names
        .iter()
        .cloned()
        .chain([TRUNK_APP.to_string()])
        .collect();
    for app in wanted.difference(registered).cloned().collect::<Vec<_>>() {
        node.client
            .call(Method::POST, &amqp_path(&app), &[], None)
            .await?;
        registered.insert(app);
    }
    for app in registered.difference(&wanted).cloned().collect::<Vec<_>>() {
        node.client
            .call(Method::DELETE, &amqp_path(&app), &[], None)
            .await?;
        registered.remove(&app);
    }
    Ok(())
}

/// What a path segment escapes: everything but RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn amqp_path(app: &str) -> String {
    format!(
        "/amqp/{}",
        percent_encoding::utf8_percent_encode(app, SEGMENT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_lowercased_app_names() {
        assert_eq!(routing_key("Conf"), "stasis.app.conf");
        assert_eq!(routing_key(TRUNK_APP), "stasis.app.stasis-trunk");
    }

    #[test]
    fn app_names_are_escaped_in_registration_paths() {
        assert_eq!(amqp_path("conf"), "/amqp/conf");
        assert_eq!(amqp_path(TRUNK_APP), "/amqp/stasis-trunk");
        assert_eq!(amqp_path("a b/c"), "/amqp/a%20b%2Fc");
    }

    #[test]
    fn broker_urls_are_logged_without_password() {
        assert_eq!(
            redact("amqp://user:secret@127.0.0.1:5673/%2f"),
            "amqp://user:***@127.0.0.1:5673/%2f"
        );
        // Not a URL (an unencoded `#` in the password): the credentials go all the same.
        let odd = redact("amqps://user:se#cret@rabbit:5671/%2f");
        assert!(
            !odd.contains("se#cret") && odd.ends_with("@rabbit:5671/%2f"),
            "{odd}"
        );
    }
}
