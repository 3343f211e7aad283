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
use futures_util::stream::SplitStream;
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, error, info, warn};

use crate::cluster::{Cluster, Health, IdentifyError, Node};
use crate::config::RestTransport;
use crate::event::{Event, Incoming, Receipt};
use crate::rest_socket::{Outgoing, RestSocket};

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
    #[error("opening the event websocket took longer than {0:?}")]
    Timeout(Duration),
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
    // The last reason the node could not be reached: a new reason is a warning (an untrusted
    // certificate, wrong credentials), the same one again while retrying is not.
    let mut unreachable: Option<String> = None;
    loop {
        let names = apps.borrow_and_update().clone();
        match connect(&node, &cluster, &names).await {
            Ok(socket) => {
                delays = backoff.build();
                unreachable = None;
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
                let mut reason = e.to_string();
                if let Some(advice) = crate::tls::advice(&e) {
                    reason = format!("{reason} ({advice})");
                }
                if unreachable.as_ref() != Some(&reason) {
                    warn!(node = %node.name, error = %reason, "node not reachable");
                } else {
                    debug!(node = %node.name, error = %reason, "node not reachable yet");
                }
                unreachable = Some(reason);
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
    // The host's own trunk-leg app rides on the same socket as the apps, first: Asterisk
    // sends the answers to requests on the socket as events of its first app, through that
    // app's event filter, and only the trunk app's filter is always the host's own (a facade
    // client may set filters on its app names).
    let url = format!(
        "{ws_base}/events?app={},{}",
        crate::conference::TRUNK_APP,
        apps.join(",")
    );
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", node.client.auth().clone());
    // tungstenite zero-fills the free part of its read buffer before every read; events are
    // a few hundred bytes each, so its 128 KiB default cost more in memset than in parsing.
    // The buffer still grows for larger messages.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    // No Nagle: requests go out on this socket too, each a small frame that must not wait
    // for the node's delayed ACK.
    let tls = tokio_tungstenite::Connector::Rustls(node.client.tls().clone());
    // Bounded: a node that accepts the connection and then stalls (in the TLS handshake, say)
    // must not hold its intake forever.
    let limit = node.client.timeout();
    let open =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(tls));
    let (socket, _) = tokio::time::timeout(limit, open)
        .await
        .map_err(|_| ConnectError::Timeout(limit))??;
    Ok(socket)
}

/// One open event socket: read here, written by its writer task (see [`writer`]), which
/// requests sent over the socket reach through the node's [`RestSocket`]. Dropping it (the
/// connection ended, a newer socket took over, the host stopped) closes the socket.
struct Connection {
    stream: SplitStream<Socket>,
    out: mpsc::UnboundedSender<Outgoing>,
    generation: u64,
    rest: Arc<RestSocket>,
    close: Option<oneshot::Sender<()>>,
}

impl Connection {
    fn start(node: &Arc<Node>, socket: Socket) -> Connection {
        let (sink, stream) = socket.split();
        let (out, rx) = mpsc::unbounded_channel();
        let (close, closed) = oneshot::channel();
        let rest = node.client.socket().clone();
        let (generation, suspect) = rest.attach(out.clone());
        tokio::spawn(writer(sink, rx, closed, rest.clone()));
        if node.config.rest == RestTransport::Auto {
            tokio::spawn(probe(node.clone(), generation, suspect, out.clone()));
        }
        Connection {
            stream,
            out,
            generation,
            rest,
            close: Some(close),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // No new request goes to this socket; those written on it and not answered are lost,
        // those still queued are handed back unsent by the writer, which then closes.
        self.rest.detach(self.generation);
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

/// How long one write to a node may take before the socket counts as dead (a partition
/// leaves TCP retrying for minutes).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes a socket's frames in order, each batch of queued frames in one flush, until the
/// socket fails or its [`Connection`] is dropped. A request still queued then was never
/// sent, and is told so (it goes over HTTP).
async fn writer<S>(
    mut sink: S,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut closed: oneshot::Receiver<()>,
    rest: Arc<RestSocket>,
) where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut open = true;
    'socket: while open {
        let first = tokio::select! {
            biased;
            _ = &mut closed => {
                open = false;
                continue 'socket;
            }
            first = rx.recv() => first,
        };
        let Some(first) = first else { break };
        // Let every task already runnable (the calls woken by the frames just read) queue its
        // request first, so that one flush carries them all: one send instead of one each.
        // tokio resumes a yielded task once its worker's queue is empty, or at its next
        // maintenance (every 61 polls), whichever comes first: a request waits for at most
        // the tasks that were ready before it, as it would without tokio's LIFO slot.
        tokio::task::yield_now().await;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            let (message, id) = match out {
                Outgoing::Request { id, text } => (Message::text(text), Some(id)),
                Outgoing::Ping => (Message::Ping(Vec::new().into()), None),
            };
            if !write(&mut sink, Some(message)).await {
                if let Some(id) = id {
                    // Perhaps partly written: the node may act on it.
                    rest.written(id);
                }
                break 'socket;
            }
            if let Some(id) = id {
                rest.written(id);
            }
            next = rx.try_recv().ok();
        }
        if !write(&mut sink, None).await {
            break;
        }
    }
    rx.close();
    while let Ok(out) = rx.try_recv() {
        if let Outgoing::Request { id, .. } = out {
            rest.not_sent(id);
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Close(None))).await;
}

/// Feeds one frame (`None`: flushes); false when the socket failed or stalled.
async fn write<S>(sink: &mut S, message: Option<Message>) -> bool
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let done = async {
        match message {
            Some(m) => sink.feed(m).await,
            None => sink.flush().await,
        }
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, done).await, Ok(Ok(())))
}

/// How long the node has to answer the probe on a new socket.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between probes of a socket that has not answered.
const PROBE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Asks the node, on socket `generation`, whether it takes requests there; until it answers,
/// requests use HTTP. Asked again with backoff while the socket lasts: an event filter left
/// by an earlier client can hide the answer until `node_filter` sets the host's own. Once
/// it answers, asked again whenever a request on the socket goes unanswered (`suspect`).
async fn probe(
    node: Arc<Node>,
    generation: u64,
    suspect: Arc<Notify>,
    out: mpsc::UnboundedSender<Outgoing>,
) {
    let rest = node.client.socket().clone();
    let mut told = false;
    loop {
        let mut pause = Duration::from_secs(1);
        loop {
            if rest.probe(generation, PROBE_WAIT).await {
                info!(node = %node.name, "ARI requests go over the event websocket");
                break;
            }
            if !rest.is_current(generation) {
                return; // a newer socket took over
            }
            if !told {
                info!(
                    node = %node.name,
                    "node does not answer requests on its event websocket (Asterisk before 22.4, 21.9 or 20.14, or an event filter without RESTResponse): using HTTP, asking again later"
                );
                told = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = out.closed() => return,
            }
            pause = (pause * 2).min(PROBE_RETRY_MAX);
        }
        tokio::select! {
            _ = suspect.notified() => {
                warn!(node = %node.name, "a request on the event websocket went unanswered: using HTTP until the node answers there again");
            }
            _ = out.closed() => return,
        }
    }
}

/// Handles one text message: an event goes to dispatch, an answer to its request. Returns
/// false once dispatch is gone.
async fn incoming(node: &Arc<Node>, text: &Utf8Bytes, tx: &mpsc::Sender<Intake>) -> bool {
    match Event::parse_incoming(text) {
        Ok(Incoming::Event(event)) => tx
            .send(Intake::Event {
                node: node.clone(),
                event,
                receipt: None,
            })
            .await
            .is_ok(),
        Ok(Incoming::RestResponse(response)) => {
            if !node.client.socket().answer(response) {
                debug!(node = %node.name, "answer to a request no longer waited for");
            }
            true
        }
        Err(e) => {
            let sample: String = text.chars().take(200).collect();
            warn!(node = %node.name, error = %e, event = %sample, "skipping malformed event");
            true
        }
    }
}

/// Reads one socket until it fails; swaps sockets when the app set changes. Returns why the
/// connection ended.
async fn pump(
    node: &Arc<Node>,
    cluster: &Cluster,
    socket: Socket,
    apps: &mut watch::Receiver<Vec<String>>,
    tx: &mpsc::Sender<Intake>,
) -> String {
    let mut conn = Connection::start(node, socket);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let reason = loop {
        tokio::select! {
            message = conn.stream.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        if !incoming(node, &text, tx).await {
                            break "host shutting down".to_string();
                        }
                    }
                    Some(Ok(Message::Close(frame))) => break format!("closed by node ({frame:?})"),
                    Some(Ok(_)) => {} // pings, pongs, binary: nothing to dispatch
                    Some(Err(e)) => break e.to_string(),
                    None => break "connection closed".into(),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > PING_INTERVAL * 3 {
                    break "node silent for three ping intervals".into();
                }
                if conn.out.send(Outgoing::Ping).is_err() {
                    break "cannot write to the node".into();
                }
            }
            changed = apps.changed() => {
                if changed.is_err() {
                    break "host shutting down".into();
                }
                let names = apps.borrow_and_update().clone();
                if names.is_empty() {
                    break "no apps left".into();
                }
                // Make before break: the new socket takes the apps, then the old one goes.
                match connect(node, cluster, &names).await {
                    Ok(new) => {
                        info!(node = %node.name, apps = ?names, "event connection moved to the new app set");
                        let old = std::mem::replace(&mut conn, Connection::start(node, new));
                        drain_then_close(node, old, tx).await;
                    }
                    Err(e) => break format!("cannot subscribe to the new app set: {e}"),
                }
            }
        }
    };
    drop(conn);
    reason
}

/// Forwards what the old socket still had buffered (events, and answers to requests still
/// waited for, which the node sends on the socket that carried them), then closes it.
async fn drain_then_close(node: &Arc<Node>, mut old: Connection, tx: &mpsc::Sender<Intake>) {
    let deadline = Instant::now() + node.client.timeout();
    loop {
        let quiet = Duration::from_millis(50);
        let message = match tokio::time::timeout(quiet, old.stream.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => break, // the socket ended
            // Quiet: done, unless requests on it still wait for their answers.
            Err(_) if old.rest.waiting_on(old.generation) && Instant::now() < deadline => {
                continue;
            }
            Err(_) => break,
        };
        if let Message::Text(text) = message {
            // The node told the old socket its apps moved; the new socket has them.
            let replaced = matches!(
                Event::parse_shared(&text),
                Ok(e) if matches!(e.kind, crate::event::Kind::ApplicationReplaced)
            );
            if !replaced {
                incoming(node, &text, tx).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A socket that records each frame it is given and each flush (one send on a real one).
    #[derive(Clone, Default)]
    struct Recorder(Arc<parking_lot::Mutex<Vec<String>>>);

    impl Sink<Message> for Recorder {
        type Error = tungstenite::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.0
                .lock()
                .push(item.into_text().map(|t| t.to_string()).unwrap_or_default());
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.lock().push("flush".into());
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One worker, as in the flow benchmark: a task woken by another runs right after it
    /// (tokio's LIFO slot), so without the writer's yield the first call's request would be
    /// sent alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn requests_of_calls_woken_together_leave_in_one_send() {
        let socket = Recorder::default();
        let (out, rx) = mpsc::unbounded_channel();
        let (_close, closed) = oneshot::channel();
        let rest = Arc::new(RestSocket::default());
        let log = socket.0.clone();
        let calls = out.clone();
        tokio::spawn(async move {
            tokio::spawn(writer(socket, rx, closed, rest));
            tokio::task::yield_now().await;
            // Three calls whose events came in one read, each queueing its next request.
            for id in 0..3 {
                let out = calls.clone();
                tokio::spawn(async move {
                    let text = format!("request {id}");
                    out.send(Outgoing::Request { id, text }).unwrap();
                });
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log.lock().iter().any(|l| l == "flush") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut sent = log.lock().clone();
        assert_eq!(sent.pop().as_deref(), Some("flush"), "{sent:?}");
        sent.sort();
        assert_eq!(
            sent,
            ["request 0", "request 1", "request 2"],
            "one send for the three"
        );
        drop(out);
    }
}
