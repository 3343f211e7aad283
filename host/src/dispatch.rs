//! Dispatch: turns the nodes' events into calls and callbacks.
//!
//! One task reads intake (every node's events, each node in its own order) and owns the
//! table of live calls: channel id → the app version and instance handling it. It never
//! waits on an app or a node: delivering to a call only queues the event for that call's own
//! task, so the events of one call are handled in order while different calls run
//! concurrently, and a slow app never delays another call.
//!
//! It also keeps the ownership index current from the events it sees, ends the calls of a
//! node that stays down past its grace period, and after a node returns reconciles the
//! calls it believed alive with the channels the node actually has.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use tokio::sync::mpsc;
use tracing::{debug, info, trace, warn};

use crate::backend::{AriBackend, Operation, Origin};
use crate::catalog::Catalog;
use crate::cluster::{Cluster, Node};
use crate::conference::{Conferences, Note, TRUNK_APP};
use crate::event::{self, Event, Kind, Receipt};
use crate::ingress::Intake;
use crate::ownership::Ownership;
use crate::recent::Recent;

/// How many channels that left Stasis dispatch remembers.
const RECENTLY_ENDED: usize = 8192;
use crate::runtime::{
    App, CallContext, CallEvent, CallHandle, CallerId, ChannelSnapshot, ChannelState, NodeEvent,
    NodeStatus, PlaybackInfo, PlaybackState, StartError,
};

/// A call in progress.
struct LiveCall {
    app: Arc<App>,
    handle: CallHandle,
    node: String,
    up: bool,
}

impl LiveCall {
    /// Delivers an `on-event` event (built by `event` only if needed), or just the channel
    /// snapshot when the app did not ask for this type: most of a call's events are bridge
    /// and variable updates that a typical app ignores, and not waking it is the cheapest
    /// way to handle them.
    fn deliver_other(
        &self,
        kind: &str,
        event: impl FnOnce() -> CallEvent,
        snapshot: Option<ChannelSnapshot>,
        receipt: Option<Receipt>,
    ) {
        if self.app.wants_event(kind) {
            self.handle.deliver_with(event(), snapshot, receipt);
        } else if let Some(snapshot) = snapshot {
            self.handle.update_snapshot(snapshot, receipt);
        }
    }
}

/// Messages dispatch sends itself from timers and background lookups.
enum Internal {
    GraceExpired {
        node: String,
    },
    Reconciled {
        node: String,
        /// The node's calls when the listing was asked for: only these may be ended for
        /// missing from it (a call that started since is simply newer than the listing).
        known: HashSet<String>,
        /// `GET /channels` of the node.
        channels: Vec<event::Channel>,
        /// Start calls for channels in our apps that the host never heard of.
        adopt: bool,
    },
    /// From [`DispatchControl::hang_up_app`]: hang up every live call of the app.
    HangUpApp {
        app: String,
        done: tokio::sync::oneshot::Sender<usize>,
    },
}

/// Requests to the running dispatcher from outside the event path (the admin API). Dispatch
/// owns the live-call table, so it is the one that can find an app's calls.
#[derive(Clone)]
pub struct DispatchControl(mpsc::UnboundedSender<Internal>);

impl DispatchControl {
    /// Hangs up every call in progress of app `name` (any version): the nodes then end them
    /// with the usual StasisEnd. Returns how many calls were told; 0 if dispatch stopped.
    pub async fn hang_up_app(&self, name: &str) -> usize {
        let (done, rx) = tokio::sync::oneshot::channel();
        if self
            .0
            .send(Internal::HangUpApp {
                app: name.to_string(),
                done,
            })
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

/// The dispatcher; see the module docs.
pub struct Dispatch {
    catalog: Arc<Catalog>,
    cluster: Arc<Cluster>,
    ownership: Arc<Ownership>,
    backend: Arc<dyn AriBackend>,
    conferences: Arc<Conferences>,
    notes: mpsc::UnboundedSender<Note>,
    grace: Duration,
    calls: HashMap<String, LiveCall>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    /// Apps held by ARI facade clients: their events go there, never to a wasm app.
    external: Option<Arc<crate::facade::events::ExternalApps>>,
    /// Channels that recently left Stasis: a reconcile listing taken before they ended, or
    /// a StasisStart delivered again, must not bring them back as calls.
    ended: Recent<String>,
    /// Whether dispatch feeds the conferences (not where a router of shared calls does).
    conference_notes: bool,
}

impl Dispatch {
    pub fn new(
        catalog: Arc<Catalog>,
        cluster: Arc<Cluster>,
        ownership: Arc<Ownership>,
        backend: Arc<dyn AriBackend>,
        conferences: Arc<Conferences>,
        notes: mpsc::UnboundedSender<Note>,
        grace: Duration,
    ) -> Dispatch {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        Dispatch {
            catalog,
            cluster,
            ownership,
            backend,
            conferences,
            notes,
            grace,
            calls: HashMap::new(),
            internal_tx,
            internal_rx,
            external: None,
            ended: Recent::new(RECENTLY_ENDED),
            conference_notes: true,
        }
    }

    /// Hands the events of apps held by ARI facade clients to `external` (unchanged JSON),
    /// instead of treating them as calls for unknown apps.
    pub fn with_external(mut self, external: Arc<crate::facade::events::ExternalApps>) -> Dispatch {
        self.external = Some(external);
        self
    }

    /// Leaves feeding the conferences to the router of shared calls, which sees every event.
    pub fn without_conference_notes(mut self) -> Dispatch {
        self.conference_notes = false;
        self
    }

    /// A handle to send requests to this dispatcher once it runs.
    pub fn control(&self) -> DispatchControl {
        DispatchControl(self.internal_tx.clone())
    }

    /// Runs until intake closes.
    pub async fn run(mut self, mut intake: mpsc::Receiver<Intake>) {
        loop {
            tokio::select! {
                message = intake.recv() => match message {
                    Some(Intake::Event { node, event, receipt }) => self.on_event(&node, *event, receipt),
                    Some(Intake::NodeUp(node)) => self.on_node_up(&node),
                    Some(Intake::Gap { node, adopt }) => self.reconcile(&node, adopt),
                    Some(Intake::NodeDown(node)) => self.on_node_down(&node),
                    None => break,
                },
                Some(internal) = self.internal_rx.recv() => match internal {
                    Internal::GraceExpired { node } => self.on_grace_expired(&node),
                    Internal::Reconciled { node, known, channels, adopt } => {
                        self.on_reconciled(&node, &known, channels, adopt)
                    }
                    Internal::HangUpApp { app, done } => {
                        let _ = done.send(self.hang_up_app(&app));
                    }
                },
            }
        }
        for (_, call) in self.calls.drain() {
            call.handle.deliver(CallEvent::End, None);
        }
    }

    /// Handles one event. `receipt` goes with the event to the call that handles it (it is
    /// acknowledged after the callback); an event nobody handles is acknowledged on return.
    fn on_event(&mut self, node: &Arc<Node>, event: Event, receipt: Option<Receipt>) {
        let mut receipt = receipt;
        if let Some(channel) = event.channel() {
            // For the latency benchmark: an event reached dispatch (pairs with the router's).
            trace!(target: "stasis::latency", channel = %channel.id, "event");
        }
        debug!(node = %node.name, kind = %event.kind_name, channel = ?event.channel().map(|c| &c.id), "event");
        // Keep the index current first, so an app's request made while handling this very
        // event already routes right.
        self.track_ownership(node, &event);
        if self
            .external
            .as_ref()
            .is_some_and(|external| external.deliver(&event))
        {
            return;
        }
        self.note_conferences(node, &event);
        if event.application == TRUNK_APP {
            return; // trunk legs are the host's own, never an app's
        }
        match &event.kind {
            Kind::StasisStart { channel, args } => {
                // A channel may leave Stasis (continue) and come back under the same id.
                self.ended.remove(&channel.id);
                self.start(
                    node,
                    &event.application,
                    &event.asterisk_id,
                    channel,
                    args,
                    receipt.take(),
                )
            }
            Kind::StasisEnd { channel } => {
                if let Some(call) = self.calls.remove(&channel.id) {
                    call.handle.deliver_with(
                        CallEvent::End,
                        Some(snapshot(channel)),
                        receipt.take(),
                    );
                    self.ownership.forget_playbacks_of(&channel.id);
                }
            }
            Kind::ChannelStateChange { channel } => {
                if let Some(call) = self.calls.get_mut(&channel.id) {
                    if channel.state == "Up" && !call.up {
                        call.up = true;
                        call.handle.deliver_with(
                            CallEvent::Up,
                            Some(snapshot(channel)),
                            receipt.take(),
                        );
                    } else {
                        call.deliver_other(
                            &event.kind_name,
                            || other(&event),
                            Some(snapshot(channel)),
                            receipt.take(),
                        );
                    }
                }
            }
            Kind::ChannelDtmfReceived {
                channel,
                digit,
                duration_ms,
            } => {
                if let Some(call) = self.calls.get(&channel.id) {
                    let dtmf = CallEvent::Dtmf {
                        digit: digit.clone(),
                        duration_ms: *duration_ms,
                    };
                    call.handle
                        .deliver_with(dtmf, Some(snapshot(channel)), receipt.take());
                }
            }
            Kind::PlaybackFinished { playback } => {
                let owner = self
                    .ownership
                    .take_playback(&playback.id)
                    .map(|o| o.channel)
                    .or_else(|| {
                        playback
                            .target_uri
                            .strip_prefix("channel:")
                            .map(str::to_string)
                    });
                if let Some(call) = owner.and_then(|c| self.calls.get(&c)) {
                    call.handle.deliver_with(
                        CallEvent::PlaybackFinished(playback_info(playback)),
                        None,
                        receipt.take(),
                    );
                }
            }
            Kind::ChannelEnteredBridge { bridge, channel } => {
                if let Some(call) = channel.as_ref().and_then(|c| self.calls.get(&c.id)) {
                    // The call joined this bridge: its app may act on it.
                    call.app.grant_bridge(&bridge.id);
                    call.deliver_other(
                        &event.kind_name,
                        || bridge_event(&event, &self.conferences),
                        channel.as_ref().map(snapshot),
                        receipt.take(),
                    );
                }
            }
            // A conference made again under the same id (a late event for a bridge the host
            // deleted itself) keeps its apps' rights.
            Kind::BridgeDestroyed { bridge } if !self.conferences.exists(&bridge.id) => {
                for app in self.catalog.all() {
                    app.revoke_bridge(&bridge.id);
                }
                for call in self.calls.values() {
                    call.app.revoke_bridge(&bridge.id);
                }
            }
            Kind::ChannelDestroyed { channel } => {
                if let Some(call) = self.calls.get(&channel.id) {
                    call.deliver_other(
                        &event.kind_name,
                        || other(&event),
                        Some(snapshot(channel)),
                        receipt.take(),
                    );
                } else {
                    // An originated channel that never became a call: drop the app's grant.
                    if let Some(app) = self.catalog.get(&event.application) {
                        app.revoke_channel(&channel.id);
                    }
                }
            }
            Kind::BridgeDestroyed { .. } => {}
            Kind::ApplicationReplaced => {
                warn!(node = %node.name, app = %event.application,
                    "another ARI client took app {} on node {}: its events no longer reach this host",
                    event.application, node.name);
            }
            Kind::ChannelLeftBridge { channel, .. } => {
                if let Some(call) = self.calls.get(&channel.id) {
                    call.deliver_other(
                        &event.kind_name,
                        || bridge_event(&event, &self.conferences),
                        Some(snapshot(channel)),
                        receipt.take(),
                    );
                }
            }
            Kind::Other { channel } => {
                if let Some(call) = channel.as_ref().and_then(|c| self.calls.get(&c.id)) {
                    call.deliver_other(&event.kind_name, || other(&event), None, receipt.take());
                }
            }
        }
    }

    /// Tells the conferences what concerns them, in order, without waiting for them.
    fn note_conferences(&self, node: &Node, event: &Event) {
        if !self.conference_notes {
            return;
        }
        if let Some(note) = conference_note(&self.conferences, &node.name, event) {
            let _ = self.notes.send(note);
        }
    }

    fn track_ownership(&mut self, node: &Node, event: &Event) {
        match &event.kind {
            // After StasisEnd the app no longer hears about the channel, so ChannelDestroyed
            // may never come: forget it now; the router looks it up again if ever needed.
            Kind::ChannelDestroyed { channel } | Kind::StasisEnd { channel } => {
                self.ownership.forget_channel(&channel.id);
                if event.application != TRUNK_APP {
                    self.ended.insert(channel.id.clone());
                }
            }
            _ => {
                if let Some(channel) = event.channel() {
                    self.ownership.record_channel(&channel.id, &node.name);
                }
            }
        }
    }

    /// Starts a call of `application` for `channel` (a StasisStart, or a channel found in
    /// Stasis by reconciliation).
    fn start(
        &mut self,
        node: &Arc<Node>,
        application: &str,
        event_asterisk_id: &str,
        channel: &event::Channel,
        args: &[String],
        receipt: Option<Receipt>,
    ) {
        if self.calls.contains_key(&channel.id) {
            debug!(channel = %channel.id, "duplicate StasisStart ignored");
            return;
        }
        let asterisk_id = node
            .asterisk_id()
            .unwrap_or_else(|| event_asterisk_id.to_string());
        let Some(app) = self.catalog.get(application) else {
            // The app was removed while the node still routed a call to it: let the dialplan
            // carry on rather than leave the caller in silence.
            warn!(node = %node.name, app = %application, channel = %channel.id,
                "call for an app that is not loaded: continuing it in the dialplan");
            self.send_for(
                application,
                &asterisk_id,
                &channel.id,
                Operation::Continue {
                    channel: channel.id.clone(),
                    context: None,
                    exten: None,
                    priority: None,
                },
            );
            return;
        };
        let ctx = CallContext {
            app: application.to_string(),
            node: asterisk_id.clone(),
            channel: snapshot(channel),
            args: args.to_vec(),
        };
        match app.start_call_with(ctx, receipt) {
            Ok(handle) => {
                let up = channel.state == "Up";
                if up {
                    handle.deliver(CallEvent::Up, None);
                }
                self.calls.insert(
                    channel.id.clone(),
                    LiveCall {
                        app,
                        handle,
                        node: node.name.clone(),
                        up,
                    },
                );
            }
            Err(e) => {
                // A full app or runtime is congestion to the caller (a busy signal they can
                // retry); anything else is a plain hangup.
                let reason = matches!(
                    e,
                    StartError::AtCapacity { .. } | StartError::RuntimeFull { .. }
                )
                .then(|| "congestion".to_string());
                warn!(node = %node.name, app = %application, channel = %channel.id, error = %e,
                    ?reason, "cannot start the call: hanging up");
                self.send_for(
                    application,
                    &asterisk_id,
                    &channel.id,
                    Operation::Hangup {
                        channel: channel.id.clone(),
                        reason,
                    },
                );
            }
        }
    }

    /// Sends an operation on the host's own behalf (not an app's), off the dispatch loop.
    fn send_for(&self, app: &str, node: &str, channel: &str, op: Operation) {
        let backend = self.backend.clone();
        let origin = Origin {
            app: app.to_string(),
            node: node.to_string(),
            channel: channel.to_string(),
        };
        tokio::spawn(async move {
            if let Err(e) = backend.execute(&origin, op.clone()).await {
                warn!(channel = %origin.channel, error = %e, ?op, "host operation failed");
            }
        });
    }

    fn notify_node(&self, node: &Node, status: NodeStatus) {
        let event = NodeEvent {
            node: node.asterisk_id().unwrap_or_default(),
            name: node.name.clone(),
            status,
        };
        for call in self.calls.values() {
            call.handle.deliver(CallEvent::Node(event.clone()), None);
        }
    }

    fn on_node_up(&mut self, node: &Arc<Node>) {
        info!(node = %node.name, "node up");
        self.notify_node(node, NodeStatus::Up);
        // The node may have restarted, dropped calls or started some while we were away. An
        // AMQP node's calls are taken over only by the replica that consumes its events
        // (intake sends a gap when that is this one).
        let adopt = node.config.intake == crate::config::Intake::Websocket;
        self.reconcile(node, adopt);
    }

    /// After any gap in a node's events (its connection dropped, the broker restarted, the
    /// node restarted) the host cannot trust that it saw every event: it asks the node for
    /// its channels and compares. Calls whose channel vanished end; channels sitting in one
    /// of our apps that the host never heard start as calls.
    fn reconcile(&mut self, node: &Arc<Node>, adopt: bool) {
        let mut known: HashSet<String> = (self.calls.iter())
            .filter(|(_, c)| c.node == node.name)
            .map(|(id, _)| id.clone())
            .collect();
        // The conferences' members and trunk legs there too: a lost StasisEnd of one of
        // them would otherwise keep its conference (and the home bridge) alive for ever.
        known.extend(
            (self.ownership.channels_on(&node.name).into_iter())
                .filter(|c| self.conferences.involves(c)),
        );
        let (node, tx) = (node.clone(), self.internal_tx.clone());
        tokio::spawn(async move {
            match node.client.call(Method::GET, "/channels", &[], None).await {
                Ok(response) => match serde_json::from_value(response.json().clone()) {
                    Ok(channels) => {
                        let _ = tx.send(Internal::Reconciled {
                            node: node.name.clone(),
                            known,
                            channels,
                            adopt,
                        });
                    }
                    Err(e) => {
                        warn!(node = %node.name, error = %e, "cannot read the channel list to reconcile")
                    }
                },
                Err(e) => warn!(node = %node.name, error = %e, "cannot list channels to reconcile"),
            }
        });
    }

    fn on_node_down(&mut self, node: &Arc<Node>) {
        warn!(node = %node.name, grace = ?self.grace, "node down");
        self.notify_node(node, NodeStatus::Down);
        // The node may come back empty (restart): forget where its channels were (they are
        // looked up again if still alive) and re-home the conferences it held.
        self.ownership.forget_node(&node.name);
        let _ = self.notes.send(Note::NodeDown {
            node: node.name.clone(),
        });
        let (name, tx, grace) = (node.name.clone(), self.internal_tx.clone(), self.grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Internal::GraceExpired { node: name });
        });
    }

    fn on_grace_expired(&mut self, node: &str) {
        if self.cluster.node(node).is_some_and(|n| n.is_up()) {
            return;
        }
        let ended = self.end_calls(node, |_| true);
        if ended > 0 {
            warn!(
                node,
                calls = ended,
                "node stayed down past its grace period: its calls are ended"
            );
        }
        self.ownership.forget_node(node);
    }

    fn on_reconciled(
        &mut self,
        node: &str,
        known: &HashSet<String>,
        channels: Vec<event::Channel>,
        adopt: bool,
    ) {
        let alive: HashSet<&str> = channels.iter().map(|c| c.id.as_str()).collect();
        for gone in known.iter().filter(|c| !alive.contains(c.as_str())) {
            if self.conferences.involves(gone) {
                let _ = self.notes.send(Note::ChannelGone {
                    channel: gone.clone(),
                });
            }
        }
        let ended = self.end_calls(node, |channel| {
            known.contains(channel) && !alive.contains(channel)
        });
        // A lost ChannelStateChange: the call is up on the node but its app never heard.
        for channel in channels.iter().filter(|c| c.state == "Up") {
            if let Some(call) = self.calls.get_mut(&channel.id)
                && !call.up
            {
                info!(node, channel = %channel.id, "reconciled: the call is up");
                call.up = true;
                call.handle.deliver(CallEvent::Up, Some(snapshot(channel)));
            }
        }
        if ended > 0 {
            info!(
                node,
                calls = ended,
                "reconciled: calls whose channels vanished are ended"
            );
        }
        let Some(node) = self.cluster.node(node).cloned().filter(|_| adopt) else {
            return;
        };
        let mut adopted = 0;
        for channel in &channels {
            let Some((app, args)) = channel.dialplan.stasis_app() else {
                continue;
            };
            if app == TRUNK_APP
                || self.calls.contains_key(&channel.id)
                || self.ended.contains(&channel.id)
                || self.catalog.get(app).is_none()
            {
                continue;
            }
            self.ownership.record_channel(&channel.id, &node.name);
            info!(node = %node.name, app, channel = %channel.id,
                "reconciled: a call whose StasisStart never arrived starts now");
            let app = app.to_string();
            self.start(&node, &app, "", channel, &args, None);
            adopted += 1;
        }
        if adopted > 0 {
            info!(node = %node.name, calls = adopted, "reconciled: calls taken over");
        }
    }

    /// Asks the owning nodes to hang up every call of `app`; the calls end when their
    /// StasisEnd arrives, like any hangup. Returns how many.
    fn hang_up_app(&self, app: &str) -> usize {
        let mut n = 0;
        for (channel, call) in self.calls.iter().filter(|(_, c)| c.app.name() == app) {
            let node = self
                .cluster
                .node(&call.node)
                .and_then(|n| n.asterisk_id())
                .unwrap_or_default();
            self.send_for(
                app,
                &node,
                channel,
                Operation::Hangup {
                    channel: channel.clone(),
                    reason: None,
                },
            );
            n += 1;
        }
        info!(app, calls = n, "hanging up the app's calls");
        n
    }

    /// Ends the calls on `node` whose channel matches; returns how many.
    fn end_calls(&mut self, node: &str, ends: impl Fn(&str) -> bool) -> usize {
        let gone: Vec<String> = self
            .calls
            .iter()
            .filter(|(id, c)| c.node == node && ends(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some(call) = self.calls.remove(id) {
                call.handle.deliver(CallEvent::End, None);
                self.ownership.forget_channel(id);
                self.ownership.forget_playbacks_of(id);
            }
        }
        gone.len()
    }
}

/// What `event` from `node` tells the conferences, if anything.
pub fn conference_note(conferences: &Conferences, node: &str, event: &Event) -> Option<Note> {
    match &event.kind {
        Kind::StasisStart { channel, args } if event.application == TRUNK_APP => {
            Some(Note::LegStarted {
                node: node.to_string(),
                channel: channel.id.clone(),
                args: args.clone(),
            })
        }
        Kind::StasisEnd { channel } | Kind::ChannelDestroyed { channel }
            if conferences.involves(&channel.id) =>
        {
            Some(Note::ChannelGone {
                channel: channel.id.clone(),
            })
        }
        Kind::ChannelLeftBridge { channel, bridge } if conferences.involves(&channel.id) => {
            Some(Note::LeftBridge {
                channel: channel.id.clone(),
                bridge: bridge.id.clone(),
            })
        }
        Kind::BridgeDestroyed { bridge } => Some(Note::BridgeDestroyed {
            node: node.to_string(),
            bridge: bridge.id.clone(),
            created: bridge.creationtime.clone(),
        }),
        _ => None,
    }
}

fn other(event: &Event) -> CallEvent {
    CallEvent::Other {
        kind: event.kind_name.clone(),
        json: event.raw.as_str().into(),
    }
}

/// A bridge event for an app, with the trunk legs taken out of the bridge's channel list.
fn bridge_event(event: &Event, conferences: &Conferences) -> CallEvent {
    match conferences.hide_legs(&event.raw) {
        Some(json) => CallEvent::Other {
            kind: event.kind_name.clone(),
            json: json.into(),
        },
        None => other(event),
    }
}

fn snapshot(channel: &event::Channel) -> ChannelSnapshot {
    ChannelSnapshot {
        id: channel.id.clone(),
        name: channel.name.clone(),
        state: ChannelState::from_ari(&channel.state),
        caller: CallerId {
            name: channel.caller.name.clone(),
            number: channel.caller.number.clone(),
        },
        connected: CallerId {
            name: channel.connected.name.clone(),
            number: channel.connected.number.clone(),
        },
        context: channel.dialplan.context.clone(),
        exten: channel.dialplan.exten.clone(),
    }
}

fn playback_info(playback: &event::Playback) -> PlaybackInfo {
    PlaybackInfo {
        id: playback.id.clone(),
        media_uri: playback.media_uri.clone(),
        target_uri: playback.target_uri.clone(),
        state: if playback.state == "failed" {
            PlaybackState::Failed
        } else {
            PlaybackState::Done
        },
    }
}
