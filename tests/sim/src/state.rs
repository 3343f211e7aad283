//! The simulated Asterisk core of one node: channels, bridges, playbacks, applications, and
//! the event fan-out to websockets.
//!
//! Why one plain struct behind one mutex per node: every ARI operation touches several of these
//! maps at once (a hangup ends playbacks, leaves a bridge, ends Stasis, wakes the other Local
//! half), and Asterisk itself serialises these per channel. A single short critical section per
//! request, never held across an `.await`, is simple and fast: events are serialized and pushed
//! into unbounded per-socket queues while the lock is held (so their order is the order of the
//! simulated facts) and written to sockets by each socket's own task.
//!
//! Anything that must happen *later* (dialplan `Wait`, a playback ending, DTMF digits, the other
//! node of a trunk call) is queued as an [`Effect`] and run by the cluster dispatcher after the
//! lock is released (see `cluster.rs`). Effects for this node carry the node's `life`, so timers
//! armed before a kill never fire into the revived node.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::bridge::Bridge;
use crate::channel::{CallerId, Channel};
use crate::dialplan::Dialplan;
use crate::playback::Playback;

/// Interned id (channel, bridge, playback, app, node).
pub(crate) type Id = Arc<str>;

/// Is node `name` alive? `None`: no such node in the cluster.
pub(crate) type PeerAlive = Arc<dyn Fn(&str) -> Option<bool> + Send + Sync>;

/// Static per-node settings the core needs.
#[derive(Debug)]
pub(crate) struct NodeCfg {
    pub name: Id,
    pub asterisk_id: Id,
    pub prefix: String,
    pub playback_ms: u64,
    pub sound_ms: std::collections::BTreeMap<String, u64>,
    pub wait_forever_ms: u64,
    /// See [`crate::config::NodeConfig::rest_over_websocket`].
    pub rest_over_websocket: bool,
    /// See [`crate::config::NodeConfig::tls`].
    pub tls: Option<crate::config::NodeTls>,
    /// AMQP publishing of this node (config, counters, state), shared across its lives.
    pub amqp: Arc<crate::amqp::Shared>,
}

/// One websocket connection that can own applications.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub id: u64,
    pub tx: UnboundedSender<String>,
}

/// Who receives an application's events.
#[derive(Clone, Debug)]
pub(crate) enum Owner {
    /// An event websocket (`GET /ari/events?app=...`).
    Ws(Conn),
    /// The AMQP module (`POST /ari/amqp/{app}`): events go to the node's publisher.
    Amqp,
}

/// A Stasis application registered on this node (exists while a websocket or an AMQP
/// registration owns it).
#[derive(Debug)]
pub(crate) struct App {
    pub owner: Owner,
    pub subscribe_all: bool,
    pub endpoints: Vec<String>,
    pub devices: Vec<String>,
    /// `PUT /applications/{app}/eventFilter` lists, the objects as sent (`{"type": ...}`);
    /// empty: no filter of that kind. See `apps.rs`.
    pub events_allowed: Vec<serde_json::Value>,
    pub events_disallowed: Vec<serde_json::Value>,
}

/// Something to do after the current critical section, possibly later, possibly on another node.
#[derive(Debug)]
pub(crate) struct Effect {
    pub node: Id,
    pub delay_ms: u64,
    /// `Some(life)`: only run if the target node is still in that life (timers).
    pub life: Option<u64>,
    pub action: Action,
}

/// What an effect does when it runs (under the target node's lock).
#[derive(Debug)]
pub(crate) enum Action {
    /// Continue the dialplan of `chan` (if its generation still matches).
    Step { chan: Id, generation: u64 },
    /// A dialplan `Playback()` priority finished.
    PlaybackStepDone { chan: Id, generation: u64 },
    /// Start the `;2` half of an originated Local channel (Dial event, then its dialplan).
    LocalStart { chan: Id },
    /// Start an outbound trunk call (Dial event, then the inbound call on the peer node).
    TrunkStart { chan: Id },
    /// An ARI playback item finished.
    PlaybackDone { pb: Id, generation: u64 },
    /// A DTMF digit ends on `chan` (ChannelDtmfReceived).
    Dtmf {
        chan: Id,
        digit: char,
        duration: u32,
    },
    /// The originate timeout of a dialed channel.
    OriginateTimeout { chan: Id, generation: u64 },
    /// An inbound trunk call arrives from `from_node`.
    TrunkInbound {
        from_node: Id,
        from_chan: Id,
        exten: String,
        caller: CallerId,
        vars: Vec<(String, String)>,
    },
    /// A message from the outbound leg (`from_node`/`from_chan`) to its inbound leg here.
    ToInbound {
        from_node: Id,
        from_chan: Id,
        op: TrunkOp,
    },
    /// A message from the inbound leg to the outbound leg `chan` here.
    ToOutbound { chan: Id, op: TrunkOp },
}

/// What one leg of a trunk call tells the other.
#[derive(Debug, Clone)]
pub(crate) enum TrunkOp {
    Ring,
    Answer,
    /// The other leg hung up (`None`: its node died, the BYE carries no cause).
    Hangup(Option<u32>),
    Dtmf {
        digit: char,
        duration: u32,
    },
}

/// A value in an event field.
pub(crate) enum Val<'a> {
    S(&'a str),
    N(i64),
    B(bool),
    /// Already-serialized JSON.
    Raw(&'a str),
}

/// The simulated core of one node.
pub(crate) struct NodeState {
    pub cfg: Arc<NodeCfg>,
    pub dialplan: Dialplan,
    pub life: u64,
    pub epoch: u64,
    pub next_uid: u64,
    pub seq: u64,
    pub local_seq: u32,
    pub pjsip_seq: u32,
    pub pb_seq: u64,
    pub startup_ts: String,
    pub channels: HashMap<Id, Channel>,
    pub bridges: HashMap<Id, Bridge>,
    pub playbacks: HashMap<Id, Playback>,
    pub apps: HashMap<Id, App>,
    pub any_subscribe_all: bool,
    /// `(peer node, peer's outbound channel id)` → our inbound channel id.
    pub trunk_index: HashMap<(Id, Id), Id>,
    pub effects: Vec<Effect>,
    /// Is node `name` known to the cluster / alive? (`None`: unknown node).
    pub peer_alive: PeerAlive,
    /// Where events of AMQP-registered apps go (a task per node life, see `amqp.rs`).
    pub amqp: crate::amqp::Publisher,
}

impl NodeState {
    pub(crate) fn new(
        cfg: Arc<NodeCfg>,
        dialplan: Dialplan,
        life: u64,
        peer_alive: PeerAlive,
    ) -> Self {
        NodeState {
            dialplan,
            life,
            epoch: crate::time::epoch_secs(),
            next_uid: 0,
            seq: 0,
            local_seq: 0,
            pjsip_seq: 0,
            pb_seq: 0,
            startup_ts: crate::time::now_ts(),
            channels: HashMap::new(),
            bridges: HashMap::new(),
            playbacks: HashMap::new(),
            apps: HashMap::new(),
            any_subscribe_all: false,
            trunk_index: HashMap::new(),
            effects: Vec::new(),
            peer_alive,
            amqp: crate::amqp::Publisher::detached(cfg.amqp.clone()),
            cfg,
        }
    }

    /// A fresh unique id: `<prefix>-<epoch>.<n>` like Asterisk's uniqueid.
    pub(crate) fn new_uid(&mut self) -> String {
        let n = self.next_uid;
        self.next_uid += 1;
        format!("{}-{}.{}", self.cfg.prefix, self.epoch, n)
    }

    /// Run `action` on this node after `delay_ms`, unless the node dies first.
    pub(crate) fn later(&mut self, delay_ms: u64, action: Action) {
        self.effects.push(Effect {
            node: self.cfg.name.clone(),
            delay_ms,
            life: Some(self.life),
            action,
        });
    }

    /// Run `action` on another node (trunk signalling).
    pub(crate) fn remote(&mut self, node: Id, delay_ms: u64, action: Action) {
        self.effects.push(Effect {
            node,
            delay_ms,
            life: None,
            action,
        });
    }

    /// Length of one media item, in ms (`None`: never ends, e.g. `tone:`).
    pub(crate) fn media_ms(&self, media: &str) -> Option<u64> {
        let (scheme, rest) = media.split_once(':').unwrap_or(("sound", media));
        match scheme {
            "tone" => None,
            _ => Some(
                self.cfg
                    .sound_ms
                    .get(rest)
                    .copied()
                    .unwrap_or(self.cfg.playback_ms),
            ),
        }
    }

    // ----- event fan-out -----

    /// Apps that receive events about channel `ch`: its Stasis app, explicit subscriptions
    /// (originate `app=`, `POST /applications/{app}/subscription`), and subscribeAll apps.
    pub(crate) fn chan_targets(&self, ch: &Channel) -> Vec<Id> {
        let mut v: Vec<Id> = Vec::with_capacity(2);
        if let Some(s) = &ch.stasis {
            v.push(s.app.clone());
        }
        for a in &ch.apps {
            if !v.contains(a) {
                v.push(a.clone());
            }
        }
        self.add_subscribe_all(&mut v);
        v
    }

    pub(crate) fn add_subscribe_all(&self, v: &mut Vec<Id>) {
        if self.any_subscribe_all {
            for (name, app) in &self.apps {
                if app.subscribe_all && !v.contains(name) {
                    v.push(name.clone());
                }
            }
        }
    }

    /// Emit a channel event: `{<before>, type, timestamp, <after>, channel, asterisk_id,
    /// application}` (field order as recorded: ChannelVarset/ChannelHangupRequest put their own
    /// fields before `type`).
    pub(crate) fn emit_chan(
        &mut self,
        id: &str,
        ty: &str,
        before: &[(&str, Val)],
        after: &[(&str, Val)],
    ) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        let targets = self.chan_targets(ch);
        if targets.is_empty() {
            return;
        }
        let chan_json = ch.json();
        let mut ev = Ev::new();
        for (k, v) in before {
            ev.field(k, v);
        }
        ev.head(ty);
        for (k, v) in after {
            ev.field(k, v);
        }
        ev.field("channel", &Val::Raw(&chan_json));
        self.deliver(ev, &targets);
    }

    /// Emit a `Dial` event whose `peer` is the dialed channel `id`.
    pub(crate) fn emit_dial(&mut self, id: &str, dialstatus: &str) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        let targets = self.chan_targets(ch);
        if targets.is_empty() {
            return;
        }
        let dialstring = ch.dialstring.clone().unwrap_or_default();
        let chan_json = ch.json();
        let mut ev = Ev::new();
        ev.head("Dial");
        ev.field("dialstatus", &Val::S(dialstatus));
        ev.field("forward", &Val::S(""));
        ev.field("dialstring", &Val::S(&dialstring));
        ev.field("peer", &Val::Raw(&chan_json));
        self.deliver(ev, &targets);
    }

    /// Emit a non-channel event (playback, bridge) to `targets`.
    pub(crate) fn emit_other(&mut self, ty: &str, fields: &[(&str, Val)], targets: &[Id]) {
        if targets.is_empty() {
            return;
        }
        let mut ev = Ev::new();
        ev.head(ty);
        for (k, v) in fields {
            ev.field(k, v);
        }
        self.deliver(ev, targets);
    }

    /// Finish an event for each target app and queue it on the app's owning socket (or the
    /// node's AMQP publisher, for an AMQP-registered app: the same JSON text). The app's event
    /// filter applies to the socket only, as in Asterisk (`ari_websockets.c`); AMQP gets all.
    pub(crate) fn deliver(&self, ev: Ev, targets: &[Id]) {
        for app in targets {
            let Some(a) = self.apps.get(app) else {
                continue;
            };
            if matches!(a.owner, Owner::Ws(_)) && !a.event_allowed(&ev.ty) {
                continue;
            }
            let mut s = String::with_capacity(ev.buf.len() + 64 + app.len());
            s.push_str(&ev.buf);
            s.push_str("\"asterisk_id\":");
            push_json_str(&mut s, &self.cfg.asterisk_id);
            s.push_str(",\"application\":");
            push_json_str(&mut s, app);
            s.push('}');
            match &a.owner {
                // A closed socket just drops the event, like a dead TCP peer.
                Owner::Ws(conn) => {
                    let _ = conn.tx.send(s);
                }
                Owner::Amqp => self.amqp.publish(app, &ev.ty, s),
            }
        }
    }
}

/// A JSON object under construction, written in the recorded field order.
pub(crate) struct Ev {
    pub buf: String,
    /// The event type (set by [`Ev::head`]); AMQP headers and envelopes carry it.
    pub ty: String,
}

impl Ev {
    pub(crate) fn new() -> Self {
        let mut buf = String::with_capacity(640);
        buf.push('{');
        Ev {
            buf,
            ty: String::new(),
        }
    }

    /// `"type": ty, "timestamp": now`.
    pub(crate) fn head(&mut self, ty: &str) {
        self.ty.clear();
        self.ty.push_str(ty);
        self.field("type", &Val::S(ty));
        let ts = crate::time::now_ts();
        self.field("timestamp", &Val::S(&ts));
    }

    pub(crate) fn field(&mut self, k: &str, v: &Val) {
        push_json_str(&mut self.buf, k);
        self.buf.push(':');
        match v {
            Val::S(s) => push_json_str(&mut self.buf, s),
            Val::N(n) => self.buf.push_str(&n.to_string()),
            Val::B(b) => self.buf.push_str(if *b { "true" } else { "false" }),
            Val::Raw(r) => self.buf.push_str(r),
        }
        self.buf.push(',');
    }
}

/// Append `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl NodeState {
    /// Run a queued [`Action`] (under this node's lock).
    pub(crate) fn apply(&mut self, action: Action) {
        match action {
            Action::Step { chan, generation } => self.step_timer(&chan, generation),
            Action::PlaybackStepDone { chan, generation } => {
                self.playback_step_done(&chan, generation)
            }
            Action::LocalStart { chan } => self.local_start(&chan),
            Action::TrunkStart { chan } => self.trunk_start(&chan),
            Action::PlaybackDone { pb, generation } => self.playback_done(&pb, generation),
            Action::Dtmf {
                chan,
                digit,
                duration,
            } => self.dtmf_event(&chan, digit, duration),
            Action::OriginateTimeout { chan, generation } => {
                self.originate_timeout(&chan, generation)
            }
            Action::TrunkInbound {
                from_node,
                from_chan,
                exten,
                caller,
                vars,
            } => self.trunk_inbound(from_node, from_chan, &exten, caller, vars),
            Action::ToInbound {
                from_node,
                from_chan,
                op,
            } => self.route_to_inbound(from_node, from_chan, op),
            Action::ToOutbound { chan, op } => self.trunk_op(&chan, op),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\n\u{1}");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}");
    }

    #[test]
    fn event_builder_keeps_order() {
        let mut ev = Ev::new();
        ev.field("variable", &Val::S("X"));
        ev.head("ChannelVarset");
        ev.field("n", &Val::N(3));
        ev.buf.push_str("\"asterisk_id\":\"id\"}");
        let v: serde_json::Value = serde_json::from_str(&ev.buf).unwrap();
        assert_eq!(v["type"], "ChannelVarset");
        assert!(ev.buf.starts_with("{\"variable\""));
    }
}
