//! Event intake: one ARI websocket per node, for every loaded app, kept alive for ever.
//!
//! Each node has one task that identifies the node (`GET /asterisk/info` → entity id, which
//! must be unique in the cluster), opens `/ari/events?app=…`, and forwards every event, in
//! the node's order, to dispatch. When the socket drops the node is reported down and the
//! task reconnects with exponential backoff and jitter, so a cluster that restarts all at
//! once is not hammered in lockstep; at start-up it simply waits for nodes that are not up
//! yet. When the set of apps changes, the new socket is opened before the old one is
//! dropped, so no event falls between them (Asterisk moves an app to its newest socket).
//!
//! A malformed or unknown event is logged and skipped; it never closes the connection.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, error, info, warn};

use crate::cluster::{Cluster, Health, IdentifyError, Node};
use crate::event::{Event, Receipt};

/// What intake tells dispatch, per node, in order.
#[derive(Debug)]
pub enum Intake {
    /// An event from a node, with what acknowledges it once handled (AMQP).
    Event {
        node: Arc<Node>,
        event: Box<Event>,
        receipt: Option<Receipt>,
    },
    /// The node's event connection is live (again).
    NodeUp(Arc<Node>),
    /// The node's event connection dropped.
    NodeDown(Arc<Node>),
    /// Some of the node's events may have been lost (broker restart, node restart) while
    /// the node itself stayed up: dispatch reconciles with it, and starts calls for channels
    /// in its apps it never heard of if `adopt` (not where a router of shared calls does).
    Gap { node: Arc<Node>, adopt: bool },
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How often the host pings a node; three silent intervals mean the node is gone even if
/// TCP has not noticed (a partition sends no RST).
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Read buffer of a node's websocket (see `connect`).
const READ_BUFFER: usize = 16 << 10;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Identify(#[from] IdentifyError),
    #[error("websocket: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("no app to subscribe")]
    NoApps,
}

/// Runs the intake of one node until `tx` closes.
pub async fn run_node(
    node: Arc<Node>,
    cluster: Arc<Cluster>,
    mut apps: watch::Receiver<Vec<String>>,
    tx: mpsc::Sender<Intake>,
    max_reconnect: Duration,
) {
    let backoff = reconnect_backoff(max_reconnect);
    let mut delays = backoff.build();
    loop {
        let names = apps.borrow_and_update().clone();
        match connect(&node, &cluster, &names).await {
            Ok(socket) => {
                delays = backoff.build();
                info!(node = %node.name, apps = ?names, "event connection up");
                node.set_health(Health::Up);
                if tx.send(Intake::NodeUp(node.clone())).await.is_err() {
                    return;
                }
                let reason = pump(&node, &cluster, socket, &mut apps, &tx).await;
                warn!(node = %node.name, %reason, "event connection lost");
                node.set_health(Health::Down);
                if tx.send(Intake::NodeDown(node.clone())).await.is_err() {
                    return;
                }
            }
            Err(ConnectError::NoApps) => {
                // Nothing to listen for: wait for the first app rather than polling.
                if apps.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Err(ConnectError::Identify(IdentifyError::Duplicate(e))) => {
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

/// Delays between reconnection attempts, to a node or to the broker: exponential from 100 ms
/// up to `max`, with jitter so a cluster that restarts at once is not hammered in lockstep.
pub(crate) fn reconnect_backoff(max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// Identifies the node and opens its event socket for `apps`.
async fn connect(node: &Node, cluster: &Cluster, apps: &[String]) -> Result<Socket, ConnectError> {
    if apps.is_empty() {
        return Err(ConnectError::NoApps);
    }
    cluster.identify(node).await?;
    open_socket(node, apps).await
}

/// The websocket URL for `apps`, credentials in the Authorization header (not the URL, which
/// ends up in logs).
async fn open_socket(node: &Node, apps: &[String]) -> Result<Socket, ConnectError> {
    let base = node.client.base();
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    // The host's own trunk-leg app rides on the same socket as the apps.
    let url = format!(
        "{ws_base}/events?app={},{}",
        apps.join(","),
        crate::conference::TRUNK_APP
    );
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", node.client.auth().clone());
    // tungstenite zero-fills the free part of its read buffer before every read; events are
    // a few hundred bytes each, so its 128 KiB default cost more in memset than in parsing.
    // The buffer still grows for larger messages.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false).await?;
    Ok(socket)
}

/// Reads one socket until it fails; swaps sockets when the app set changes. Returns why the
/// connection ended.
async fn pump(
    node: &Arc<Node>,
    cluster: &Cluster,
    mut socket: Socket,
    apps: &mut watch::Receiver<Vec<String>>,
    tx: &mpsc::Sender<Intake>,
) -> String {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            message = socket.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => match Event::parse(text.as_str()) {
                        Ok(event) => {
                            if tx.send(Intake::Event { node: node.clone(), event: Box::new(event), receipt: None }).await.is_err() {
                                return "host shutting down".into();
                            }
                        }
                        Err(e) => {
                            let sample: String = text.as_str().chars().take(200).collect();
                            warn!(node = %node.name, error = %e, event = %sample, "skipping malformed event");
                        }
                    },
                    Some(Ok(Message::Close(frame))) => return format!("closed by node ({frame:?})"),
                    Some(Ok(_)) => {} // pings, pongs, binary: nothing to dispatch
                    Some(Err(e)) => return e.to_string(),
                    None => return "connection closed".into(),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > PING_INTERVAL * 3 {
                    return "node silent for three ping intervals".into();
                }
                if let Err(e) = socket.send(Message::Ping(Vec::new().into())).await {
                    return e.to_string();
                }
            }
            changed = apps.changed() => {
                if changed.is_err() {
                    return "host shutting down".into();
                }
                let names = apps.borrow_and_update().clone();
                if names.is_empty() {
                    let _ = socket.close(None).await;
                    return "no apps left".into();
                }
                // Make before break: the new socket takes the apps, then the old one goes.
                match connect(node, cluster, &names).await {
                    Ok(new) => {
                        info!(node = %node.name, apps = ?names, "event connection moved to the new app set");
                        let mut old = std::mem::replace(&mut socket, new);
                        drain_then_close(node, &mut old, tx).await;
                    }
                    Err(e) => return format!("cannot subscribe to the new app set: {e}"),
                }
            }
        }
    }
}

/// Forwards what the old socket still had buffered, then closes it.
async fn drain_then_close(node: &Arc<Node>, old: &mut Socket, tx: &mpsc::Sender<Intake>) {
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(50), old.next()).await
    {
        if let Message::Text(text) = message
            && let Ok(event) = Event::parse(text.as_str())
            && !matches!(event.kind, crate::event::Kind::ApplicationReplaced)
        {
            let _ = tx
                .send(Intake::Event {
                    node: node.clone(),
                    event: Box::new(event),
                    receipt: None,
                })
                .await;
        }
    }
    let _ = old.close(None).await;
}
