//! One simulated node: its HTTP server (REST + websocket + `/_sim` control), its lifecycle
//! (start, kill, revive), its request log, and [`NodeHandle`], the library API tests use.
//!
//! Kill follows the recording `node_stop_and_restart`: every channel is hung up at once
//! (`ChannelHangupRequest{cause:4, soft:true}` then `StasisEnd` for Stasis channels, trunk legs
//! hang up on the peer node), the websockets are dropped without a close frame, the listener
//! closes (connections are refused) and in-flight requests on old keep-alive connections get
//! the recorded 503 "Shutdown in progress". Revive binds the same port and starts empty: no
//! apps until a websocket connects, old ids 404.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::amqp::{AmqpState, AmqpStatus};
use crate::channel::CallerId;
use crate::cluster::{ClusterShared, dispatch};
use crate::config::AmqpConfig;
use crate::dialplan::{Dialplan, Route};
use crate::error::SimError;
use crate::state::{NodeCfg, NodeState, Owner};

/// One REST request as a node received it (see [`NodeHandle::request_log`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// `GET`, `POST`, `DELETE`, ...
    pub method: String,
    /// Path including `/ari`, e.g. `/ari/channels/abc/answer`.
    pub path: String,
    /// Raw query string (without `?`; empty if none).
    pub query: String,
    /// HTTP status sent (101 for a websocket upgrade); `status_code` of a `RESTResponse`.
    pub status: u16,
    /// Sent as a `RESTRequest` on an event websocket rather than over HTTP.
    #[serde(default)]
    pub over_websocket: bool,
}

/// An inbound call to inject on a node (as if a phone called it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InboundCall {
    pub caller_name: String,
    pub caller_number: String,
    /// Dialed extension.
    pub exten: String,
    /// Dialplan context; default `default`.
    pub context: Option<String>,
    /// PJSIP endpoint name the call comes from; default `anonymous` (channel
    /// `PJSIP/anonymous-0000000N`, as in the sipp recording).
    pub endpoint: Option<String>,
    /// Channel variables (like SIP headers mapped to variables).
    pub variables: BTreeMap<String, String>,
}

/// A channel as the simulator sees it (for assertions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub id: String,
    pub name: String,
    /// `Down`, `Ring`, `Ringing`, `Up`.
    pub state: String,
    pub caller: CallerId,
    /// The app the channel is in, if in Stasis.
    pub stasis_app: Option<String>,
    /// The bridge it is in.
    pub bridge: Option<String>,
    /// The id of the other Local half / the other trunk leg's channel (when known).
    pub peer: Option<String>,
    pub variables: BTreeMap<String, String>,
}

/// A bridge and who is in it (who hears whom).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BridgeInfo {
    pub id: String,
    pub bridge_type: String,
    pub channels: Vec<String>,
}

struct Server {
    shutdown: oneshot::Sender<()>,
    kill: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub(crate) struct NodeInner {
    pub cfg: Arc<NodeCfg>,
    pub state: Mutex<NodeState>,
    pub alive: AtomicBool,
    pub port: AtomicU16,
    pub bind: String,
    username: String,
    password: String,
    basic: String,
    log: Mutex<Vec<LoggedRequest>>,
    server: Mutex<Option<Server>>,
    pub cluster: Weak<ClusterShared>,
    pub conn_seq: AtomicU64,
}

impl NodeInner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: Arc<NodeCfg>,
        dialplan: Dialplan,
        port: u16,
        bind: String,
        username: String,
        password: String,
        cluster: Weak<ClusterShared>,
    ) -> Self {
        let peer_alive = peer_alive_fn(cluster.clone());
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        NodeInner {
            state: Mutex::new(NodeState::new(cfg.clone(), dialplan, 0, peer_alive)),
            cfg,
            alive: AtomicBool::new(false),
            port: AtomicU16::new(port),
            bind,
            username,
            password,
            basic,
            log: Mutex::new(Vec::new()),
            server: Mutex::new(None),
            cluster,
            conn_seq: AtomicU64::new(1),
        }
    }

    pub(crate) fn log_request(&self, r: LoggedRequest) {
        self.log.lock().push(r);
    }

    /// HTTP basic auth or `api_key=user:pass`.
    pub(crate) fn auth_ok(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        if let Some(h) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
        {
            if h == self.basic {
                return true;
            }
            if let Some(b64) = h.strip_prefix("Basic ")
                && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim())
            {
                return raw == format!("{}:{}", self.username, self.password).as_bytes();
            }
            return false;
        }
        if let Some(q) = query
            && q.contains("api_key")
        {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap_or_default();
            if let Some((_, key)) = pairs.iter().find(|(k, _)| k == "api_key") {
                return key.split_once(':')
                    == Some((self.username.as_str(), self.password.as_str()));
            }
        }
        false
    }

    /// `https` when the node serves TLS, else `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub(crate) fn kill_signal(&self) -> Option<watch::Receiver<bool>> {
        self.server.lock().as_ref().map(|s| s.kill.subscribe())
    }

    /// Bind (the configured or previously used port) and serve.
    pub(crate) async fn start_server(self: &Arc<Self>) -> Result<(), SimError> {
        let port = self.port.load(Ordering::Acquire);
        let addr = format!("{}:{}", self.bind, port);
        let mut last_err = None;
        let mut listener = None;
        // A revived node rebinds its old port; retry briefly in case the OS is slow to free it.
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let listener = match listener {
            Some(l) => l,
            None => return Err(SimError::Io(last_err.expect("bind failed"))),
        };
        self.port
            .store(listener.local_addr()?.port(), Ordering::Release);
        let router = crate::rest::router(self.clone());
        let (shutdown, rx) = oneshot::channel::<()>();
        let (kill, _) = watch::channel(false);
        let stopped = async move {
            let _ = rx.await;
        };
        let task = match &self.cfg.tls {
            Some(tls) => {
                let listener = crate::tls::TlsListener {
                    tcp: listener,
                    acceptor: crate::tls::server_config(tls)?.into(),
                };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await;
                })
            }
            None => {
                // Asterisk's HTTP server sets TCP_NODELAY on every connection
                // (`httpd_helper_thread`): websocket frames and answers go out as written.
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await;
                })
            }
        };
        *self.server.lock() = Some(Server {
            shutdown,
            kill,
            task,
        });
        // A fresh AMQP publisher per node life (connects now, like res_amqp at module load).
        self.state.lock().amqp = crate::amqp::Publisher::start(&self.cfg.amqp);
        self.alive.store(true, Ordering::Release);
        Ok(())
    }

    /// Stop the node (see the module docs).
    pub(crate) async fn kill(self: &Arc<Self>) {
        if !self.alive.swap(false, Ordering::AcqRel) {
            return;
        }
        let effects = {
            let mut st = self.state.lock();
            st.shutdown();
            let effects = std::mem::take(&mut st.effects);
            let dialplan = st.dialplan.clone();
            let life = st.life + 1;
            let peer_alive = st.peer_alive.clone();
            // Dropping the old state ends its AMQP publisher once it has sent what the shutdown
            // produced (like the module at unload); AMQP registrations are gone with the apps.
            *st = NodeState::new(self.cfg.clone(), dialplan, life, peer_alive);
            self.cfg.amqp.retire();
            effects
        };
        // Only the trunk hangups towards other nodes matter; our own timers are stale.
        let remote: Vec<_> = effects
            .into_iter()
            .filter(|e| e.node != self.cfg.name)
            .collect();
        if let Some(c) = self.cluster.upgrade() {
            dispatch(&c, remote);
        }
        let server = self.server.lock().take();
        if let Some(s) = server {
            let _ = s.kill.send(true);
            let _ = s.shutdown.send(());
            let mut task = s.task;
            if tokio::time::timeout(Duration::from_millis(300), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }

    pub(crate) async fn revive(self: &Arc<Self>) -> Result<(), SimError> {
        if self.alive.load(Ordering::Acquire) {
            return Ok(());
        }
        self.start_server().await
    }
}

fn peer_alive_fn(cluster: Weak<ClusterShared>) -> crate::state::PeerAlive {
    Arc::new(move |name: &str| {
        let c = cluster.upgrade()?;
        c.by_name.get(name).map(|n| n.alive.load(Ordering::Acquire))
    })
}

/// A handle on one node of a running [`crate::Cluster`]. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("name", &self.name())
            .field("ari_url", &self.ari_url())
            .finish()
    }
}

impl NodeHandle {
    /// Node name (`a`, `b`, ...).
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// Entity id: the `asterisk_id` of its events.
    pub fn asterisk_id(&self) -> &str {
        &self.inner.cfg.asterisk_id
    }

    /// Port it listens on (stable across kill/revive).
    pub fn port(&self) -> u16 {
        self.inner.port.load(Ordering::Acquire)
    }

    /// `http://127.0.0.1:<port>/ari` (`https://` with TLS).
    pub fn ari_url(&self) -> String {
        format!(
            "{}://{}:{}/ari",
            self.inner.scheme(),
            self.inner.bind,
            self.port()
        )
    }

    /// `ws://127.0.0.1:<port>/ari/events?app=<apps>&api_key=<user>:<pass>` (`wss://` with
    /// TLS).
    pub fn ws_url(&self, apps: &str) -> String {
        let ws = if self.inner.cfg.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!(
            "{ws}://{}:{}/ari/events?app={}&api_key={}:{}",
            self.inner.bind,
            self.port(),
            apps,
            self.inner.username,
            self.inner.password
        )
    }

    /// `http://127.0.0.1:<port>/_sim` (control API on the node's own port; `https://` with
    /// TLS).
    pub fn control_url(&self) -> String {
        format!(
            "{}://{}:{}/_sim",
            self.inner.scheme(),
            self.inner.bind,
            self.port()
        )
    }

    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    fn check_alive(&self) -> Result<(), SimError> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(SimError::NodeDown(self.name().to_string()))
        }
    }

    fn flush(&self, effects: Vec<crate::state::Effect>) {
        if !effects.is_empty()
            && let Some(c) = self.inner.cluster.upgrade()
        {
            dispatch(&c, effects);
        }
    }

    /// Inject an inbound call; returns the new channel id. It runs the node's dialplan at
    /// `context`/`exten` (so e.g. exten 8000 → `Stasis(conf)` → StasisStart, state Ring).
    pub fn inject_call(&self, call: InboundCall) -> Result<String, SimError> {
        self.check_alive()?;
        let context = call.context.clone().unwrap_or_else(|| "default".into());
        let endpoint = call.endpoint.clone().unwrap_or_else(|| "anonymous".into());
        let (id, effects) = {
            let mut st = self.inner.state.lock();
            if st.dialplan.lookup(&context, &call.exten).is_none() {
                return Err(SimError::NoRoute {
                    context,
                    exten: call.exten,
                });
            }
            let id = st.inject_inbound(
                &endpoint,
                &context,
                &call.exten,
                CallerId {
                    name: call.caller_name,
                    number: call.caller_number,
                },
                call.variables.into_iter().collect(),
            );
            (id, std::mem::take(&mut st.effects))
        };
        self.flush(effects);
        Ok(id.to_string())
    }

    /// The caller presses `digits` on `channel` (ChannelDtmfReceived per valid digit, in order,
    /// `interval_ms` apart; each event when its digit ends, duration 100 ms).
    pub fn press_dtmf(&self, channel: &str, digits: &str) -> Result<(), SimError> {
        self.press_dtmf_spaced(channel, digits, 0)
    }

    /// [`Self::press_dtmf`] with a gap between digits.
    pub fn press_dtmf_spaced(
        &self,
        channel: &str,
        digits: &str,
        interval_ms: u64,
    ) -> Result<(), SimError> {
        self.check_alive()?;
        let effects = {
            let mut st = self.inner.state.lock();
            if !st.channels.contains_key(channel) {
                return Err(SimError::ChannelNotFound(channel.to_string()));
            }
            let chan: crate::state::Id = channel.into();
            for (i, d) in digits
                .chars()
                .filter(|c| crate::channel::valid_digit(*c))
                .enumerate()
            {
                st.later(
                    i as u64 * interval_ms,
                    crate::state::Action::Dtmf {
                        chan: chan.clone(),
                        digit: d,
                        duration: 100,
                    },
                );
            }
            std::mem::take(&mut st.effects)
        };
        self.flush(effects);
        Ok(())
    }

    /// The far end hangs up `channel` (a BYE): `ChannelHangupRequest{cause}` (no `cause` field if
    /// `None`), StasisEnd, ChannelDestroyed; the rest of the call follows.
    pub fn hangup_far_end(&self, channel: &str, cause: Option<u32>) -> Result<(), SimError> {
        self.check_alive()?;
        let effects = {
            let mut st = self.inner.state.lock();
            if !st.channels.contains_key(channel) {
                return Err(SimError::ChannelNotFound(channel.to_string()));
            }
            st.hangup(channel, crate::channel::HangupHow::Remote(cause));
            std::mem::take(&mut st.effects)
        };
        self.flush(effects);
        Ok(())
    }

    /// Stop the node like `core stop now` (see the module docs). Idempotent.
    pub async fn kill(&self) {
        self.inner.kill().await
    }

    /// Start a killed node again, empty, on the same port.
    pub async fn revive(&self) -> Result<(), SimError> {
        self.inner.revive().await
    }

    /// Every REST request (and websocket upgrade) this node received, in order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner.log.lock().clone()
    }

    pub fn clear_log(&self) {
        self.inner.log.lock().clear()
    }

    /// Channels on the node, in creation order.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let st = self.inner.state.lock();
        let mut v: Vec<_> = st.channels.values().collect();
        v.sort_by_key(|c| c.seq);
        v.into_iter()
            .map(|c| ChannelInfo {
                id: c.id.to_string(),
                name: c.name.clone(),
                state: c.state.as_str().to_string(),
                caller: c.caller.clone(),
                stasis_app: c.stasis.as_ref().map(|s| s.app.to_string()),
                bridge: c.bridge.as_ref().map(|b| b.to_string()),
                peer: match &c.peer {
                    Some(crate::channel::Peer::Local(p)) => Some(p.to_string()),
                    Some(crate::channel::Peer::Trunk { remote, .. }) => {
                        remote.as_ref().map(|r| r.to_string())
                    }
                    None => None,
                },
                variables: c.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
            .collect()
    }

    /// One channel by id.
    pub fn channel(&self, id: &str) -> Option<ChannelInfo> {
        self.channels().into_iter().find(|c| c.id == id)
    }

    /// Bridges and their members.
    pub fn bridges(&self) -> Vec<BridgeInfo> {
        let st = self.inner.state.lock();
        let mut v: Vec<_> = st.bridges.values().collect();
        v.sort_by_key(|b| b.seq);
        v.into_iter()
            .map(|b| BridgeInfo {
                id: b.id.to_string(),
                bridge_type: b.bridge_type.clone(),
                channels: b.channels.iter().map(|c| c.to_string()).collect(),
            })
            .collect()
    }

    /// Names of the Stasis applications currently registered.
    pub fn apps(&self) -> Vec<String> {
        let st = self.inner.state.lock();
        let mut v: Vec<String> = st.apps.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// Add or replace a dialplan extension on this node (kept across kill/revive).
    pub fn set_route(&self, context: &str, exten: &str, route: Route) {
        self.inner.state.lock().dialplan.set(context, exten, route);
    }

    /// Fault injection: send `text` verbatim on the event socket that owns `app`, as a buggy
    /// node or a newer Asterisk with unknown event types would. For an AMQP-registered app it is
    /// published instead (as `data` of the envelope, its `type`, if any, in the `name` header).
    /// The app's event filter (`PUT /applications/{app}/eventFilter`) does not apply. False
    /// when `app` does not exist (or its socket is gone).
    pub fn send_raw_event(&self, app: &str, text: &str) -> bool {
        let st = self.inner.state.lock();
        let Some((key, a)) = st.apps.get_key_value(app) else {
            return false;
        };
        match &a.owner {
            Owner::Ws(conn) => conn.tx.send(text.to_string()).is_ok(),
            Owner::Amqp => {
                let ty = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default();
                st.amqp.publish(key, &ty, text.to_string());
                true
            }
        }
    }

    /// Names of the applications registered over AMQP (`POST /ari/amqp/{app}`), sorted.
    pub fn amqp_apps(&self) -> Vec<String> {
        let st = self.inner.state.lock();
        let mut v: Vec<String> = st
            .apps
            .iter()
            .filter(|(_, a)| matches!(a.owner, Owner::Amqp))
            .map(|(k, _)| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// Register `app` for AMQP forwarding, as `POST /ari/amqp/{app}` does (takes the app over
    /// from a websocket, which gets ApplicationReplaced).
    pub fn register_amqp_app(&self, app: &str) -> Result<(), SimError> {
        self.check_alive()?;
        self.inner.state.lock().register_amqp(app);
        Ok(())
    }

    /// Remove `app`, as `DELETE /ari/amqp/{app}` does (whoever owns it; no error if unknown).
    pub fn unregister_amqp_app(&self, app: &str) -> Result<(), SimError> {
        self.check_alive()?;
        self.inner.state.lock().unregister_amqp(app);
        Ok(())
    }

    /// The node's AMQP publisher: state and counters (see [`AmqpStatus`]).
    pub fn amqp_status(&self) -> AmqpStatus {
        self.inner.cfg.amqp.status()
    }

    /// The AMQP settings this node publishes with (`None`: no broker configured).
    pub fn amqp_config(&self) -> Option<AmqpConfig> {
        self.inner.cfg.amqp.cfg.clone()
    }

    /// Wait until the publisher is in `state` (polling every 10 ms); false on timeout.
    pub async fn wait_amqp_state(&self, state: AmqpState, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.amqp_status().state == state {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until every event handed to the publisher is published or dropped (`pending` 0);
    /// returns the status then, or the last one seen at the timeout.
    pub async fn wait_amqp_flushed(&self, timeout: Duration) -> AmqpStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.amqp_status();
            if s.pending == 0 || tokio::time::Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
