//! Channels: their JSON model, originate (Local pairs, trunk calls), answer/ring, the dialplan
//! runner, Stasis entry/exit and the hangup sequence.
//!
//! The event sequences follow the recordings per channel (see the conformance tests). The
//! important shapes:
//! - ARI `DELETE` of a channel in Stasis: `ChannelHangupRequest{cause:32,soft}` →
//!   (`PlaybackFinished` failed, `ChannelLeftBridge`) → `StasisEnd` → `ChannelVarset
//!   STASISSTATUS` → (`ChannelHangupRequest{16,soft}` if it entered Stasis from the dialplan) →
//!   `ChannelDestroyed{cause}`; the other Local half gets `ChannelHangupRequest{cause}`.
//! - Far end hangs up: `ChannelHangupRequest{cause}` (no `soft`; no cause at all for a trunk BYE
//!   from a dead node) → `StasisEnd` → ... → `ChannelDestroyed`.
//! - Node shutdown: `ChannelHangupRequest{cause:4,soft}` → `StasisEnd` → `ChannelDestroyed{0}`.
//! - PJSIP channels set the `RTPAUDIOQOS*` variables when they hang up.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::dialplan::{Step, TemplateCtx, stasis_data};
use crate::error::AriError;
use crate::params::Params;
use crate::state::{Action, Id, NodeState, TrunkOp, Val};

/// Caller id (`caller` / `connected` in the channel JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct CallerId {
    pub name: String,
    pub number: String,
}

impl CallerId {
    /// Parse ARI's `callerId`: `"Alice" <1001>`, `Alice <1001>` or `1001`.
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        if let (Some(lt), true) = (s.rfind('<'), s.ends_with('>')) {
            let number = s[lt + 1..s.len() - 1].trim().to_string();
            let name = s[..lt].trim().trim_matches('"').to_string();
            CallerId { name, number }
        } else {
            CallerId {
                name: String::new(),
                number: s.to_string(),
            }
        }
    }
}

/// Channel state as Asterisk names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChanState {
    Down,
    Ring,
    Ringing,
    Up,
}

impl ChanState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChanState::Down => "Down",
            ChanState::Ring => "Ring",
            ChanState::Ringing => "Ringing",
            ChanState::Up => "Up",
        }
    }
}

/// `channel.dialplan`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DpLoc {
    pub context: String,
    pub exten: String,
    pub priority: u32,
    pub app_name: String,
    pub app_data: String,
}

/// The other side of a call.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// The other half of a Local channel (same node).
    Local(Id),
    /// The other leg of a trunk call; `remote` is its channel id when we know it (the inbound
    /// side knows the outbound id; the outbound side addresses the inbound through the peer's
    /// trunk index).
    Trunk { node: Id, remote: Option<Id> },
}

/// What a dialed channel does once the far end answers.
#[derive(Clone, Debug)]
pub(crate) enum OnAnswer {
    Nothing,
    Stasis { app: String, args: Vec<String> },
    Dialplan { context: String, exten: String },
}

#[derive(Clone, Debug)]
pub(crate) struct StasisInfo {
    pub app: Id,
    /// Entered via `Stasis()` in the dialplan (so the dialplan continues afterwards).
    pub via_dialplan: bool,
}

#[derive(Debug)]
pub(crate) struct DpRun {
    pub steps: Vec<Step>,
    pub idx: usize,
}

/// How a channel is being hung up.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HangupHow {
    /// `DELETE /channels/{id}` with this Q.850 cause.
    Ari(u32),
    /// The dialplan ended / `Hangup()` / app missing.
    Dialplan(u32),
    /// The far end hung up (`None`: no cause in the request, e.g. BYE from a dying node).
    Remote(Option<u32>),
    /// The node is shutting down.
    Shutdown,
    /// An originate timed out (no answer).
    Timeout(u32),
}

#[derive(Debug)]
pub(crate) struct Channel {
    pub id: Id,
    pub name: String,
    pub state: ChanState,
    pub protocol_id: String,
    pub caller: CallerId,
    pub connected: CallerId,
    pub dp: DpLoc,
    pub creationtime: String,
    pub vars: HashMap<String, String>,
    pub peer: Option<Peer>,
    pub local_half: u8,
    pub is_pjsip: bool,
    pub stasis: Option<StasisInfo>,
    /// Explicit subscriptions (originate `app=`, `/applications/{app}/subscription`).
    pub apps: Vec<Id>,
    pub bridge: Option<Id>,
    pub playbacks: VecDeque<Id>,
    pub run: Option<DpRun>,
    pub generation: u64,
    pub on_answer: OnAnswer,
    /// Set on the dialed side (`;1`, trunk outbound): `dialstring` of its Dial events.
    pub dialstring: Option<String>,
    pub announce_callerid: bool,
    pub hanging: bool,
    pub seq: u64,
    pub moh: bool,
    pub muted: bool,
    pub held: bool,
}

#[derive(Serialize)]
struct ChannelJson<'a> {
    id: &'a str,
    name: &'a str,
    state: &'a str,
    protocol_id: &'a str,
    caller: &'a CallerId,
    connected: &'a CallerId,
    accountcode: &'a str,
    dialplan: &'a DpLoc,
    creationtime: &'a str,
    language: &'a str,
}

impl Channel {
    fn new(id: Id, name: String, state: ChanState, dp: DpLoc, caller: CallerId, seq: u64) -> Self {
        Channel {
            id,
            name,
            state,
            protocol_id: String::new(),
            connected: caller.clone(),
            caller,
            dp,
            creationtime: crate::time::now_ts(),
            vars: HashMap::new(),
            peer: None,
            local_half: 0,
            is_pjsip: false,
            stasis: None,
            apps: Vec::new(),
            bridge: None,
            playbacks: VecDeque::new(),
            run: None,
            generation: 0,
            on_answer: OnAnswer::Nothing,
            dialstring: None,
            announce_callerid: false,
            hanging: false,
            seq,
            moh: false,
            muted: false,
            held: false,
        }
    }

    /// The ARI `Channel` model, fields in Asterisk's order.
    pub(crate) fn json(&self) -> String {
        serde_json::to_string(&ChannelJson {
            id: &self.id,
            name: &self.name,
            state: self.state.as_str(),
            protocol_id: &self.protocol_id,
            caller: &self.caller,
            connected: &self.connected,
            accountcode: "",
            dialplan: &self.dp,
            creationtime: &self.creationtime,
            language: "en",
        })
        .unwrap_or_default()
    }
}

fn dp(context: &str, exten: &str, priority: u32, app: &str, data: &str) -> DpLoc {
    DpLoc {
        context: context.to_string(),
        exten: exten.to_string(),
        priority,
        app_name: app.to_string(),
        app_data: data.to_string(),
    }
}

/// Q.850 cause text, as in `ChannelDestroyed.cause_txt`.
pub(crate) fn cause_txt(cause: u32) -> &'static str {
    match cause {
        0 => "Unknown",
        1 => "Unallocated (unassigned) number",
        3 => "No route to destination",
        16 => "Normal Clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "User alerting, no answer",
        21 => "Call Rejected",
        26 => "Answered elsewhere",
        27 => "Destination out of order",
        28 => "Invalid number format (incomplete number)",
        31 => "Normal, unspecified",
        34 => "Circuit/channel congestion",
        38 => "Network out of order",
        58 => "Bearer capability not available",
        127 => "Interworking, unspecified",
        _ => "Unknown",
    }
}

/// `DELETE /channels/{id}?reason=` names → Q.850 causes.
fn reason_cause(reason: &str) -> Option<u32> {
    Some(match reason {
        "normal" => 16,
        "busy" => 17,
        "congestion" => 34,
        "no_answer" => 19,
        "timeout" => 19,
        "rejected" => 21,
        "unallocated" => 1,
        "normal_unspecified" => 31,
        "number_incomplete" => 28,
        "codec_mismatch" => 58,
        "interworking" => 127,
        "failure" => 38,
        "answered_elsewhere" => 26,
        _ => return None,
    })
}

fn dial_status(cause: u32) -> &'static str {
    match cause {
        17 => "BUSY",
        34 | 38 => "CONGESTION",
        19 | 18 => "NOANSWER",
        3 | 1 => "CHANUNAVAIL",
        _ => "CANCEL",
    }
}

const QOS_VARS: [(&str, &str); 5] = [
    (
        "RTPAUDIOQOS",
        "ssrc=0;themssrc=0;lp=0;rxjitter=0.000000;rxcount=0;txjitter=0.000000;txcount=0;rlp=0;rtt=0.000000;rxmes=0.000000;txmes=0.000000",
    ),
    (
        "RTPAUDIOQOSJITTER",
        "minrxjitter=000.000000;maxrxjitter=000.000000;avgrxjitter=000.000000;stdevrxjitter=000.000000;mintxjitter=000.000000;maxtxjitter=000.000000;avgtxjitter=000.000000;stdevtxjitter=000.000000;",
    ),
    (
        "RTPAUDIOQOSLOSS",
        "  minrxlost=000.000000;  maxrxlost=000.000000;  avgrxlost=000.000000;  stdevrxlost=000.000000;  mintxlost=000.000000;  maxtxlost=000.000000;  avgtxlost=000.000000;  stdevtxlost=000.000000;",
    ),
    (
        "RTPAUDIOQOSRTT",
        "     minrtt=000.000000;     maxrtt=000.000000;     avgrtt=000.000000;     stdevrtt=000.000000;",
    ),
    (
        "RTPAUDIOQOSMES",
        "   minrxmes=000.000000;   maxrxmes=000.000000;   avgrxmes=000.000000;   stdevrxmes=000.000000;   mintxmes=000.000000;   maxtxmes=000.000000;   avgtxmes=000.000000;   stdevtxmes=000.000000;",
    ),
];

/// Valid DTMF digits; others are silently dropped (as recorded).
pub(crate) fn valid_digit(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D' | 'a'..='d')
}

impl NodeState {
    // ----- lookups and checks -----

    pub(crate) fn chan(&self, id: &str) -> Result<&Channel, AriError> {
        self.channels
            .get(id)
            .ok_or_else(|| AriError::not_found("Channel"))
    }

    fn chan_in_stasis(&self, id: &str) -> Result<&Channel, AriError> {
        let ch = self.chan(id)?;
        if ch.stasis.is_none() {
            return Err(AriError::not_in_stasis());
        }
        Ok(ch)
    }

    /// Asterisk refuses a new id that equals, or is a case-insensitive prefix of, an existing
    /// channel id (it compares with `strncasecmp(existing, new, strlen(new))`).
    pub(crate) fn check_id_free(&self, new: &str) -> Result<(), AriError> {
        let clash = self.channels.keys().any(|id| {
            id.len() >= new.len() && id.as_bytes()[..new.len()].eq_ignore_ascii_case(new.as_bytes())
        });
        if clash {
            return Err(AriError::msg(
                409,
                "Channel with given unique ID already exists",
            ));
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn set_var(&mut self, id: &str, name: &str, value: &str) {
        if let Some(ch) = self.channels.get_mut(id) {
            ch.vars.insert(name.to_string(), value.to_string());
        }
        self.emit_chan(
            id,
            "ChannelVarset",
            &[("variable", Val::S(name)), ("value", Val::S(value))],
            &[],
        );
    }

    fn set_state(&mut self, id: &str, state: ChanState) {
        let Some(ch) = self.channels.get_mut(id) else {
            return;
        };
        if ch.state == state {
            return;
        }
        ch.state = state;
        self.emit_chan(id, "ChannelStateChange", &[], &[]);
    }

    fn hangup_request(&mut self, id: &str, cause: Option<u32>, soft: bool) {
        let mut before: Vec<(&str, Val)> = Vec::with_capacity(2);
        if let Some(c) = cause {
            before.push(("cause", Val::N(c as i64)));
        }
        if soft {
            before.push(("soft", Val::B(true)));
        }
        self.emit_chan(id, "ChannelHangupRequest", &before, &[]);
    }

    // ----- originate / create / dial -----

    /// `POST /channels` and `POST /channels/{channelId}`.
    pub(crate) fn originate(
        &mut self,
        p: &Params,
        path_id: Option<&str>,
    ) -> Result<String, AriError> {
        let endpoint = p
            .get("endpoint")
            .ok_or_else(|| AriError::msg(400, "Endpoint must be specified"))?;
        let app = p.get("app");
        let exten = p.get("extension");
        if app.is_none() && exten.is_none() {
            return Err(AriError::msg(
                400,
                "Application or extension must be specified",
            ));
        }
        let on_answer = match app {
            Some(a) => OnAnswer::Stasis {
                app: a.to_string(),
                args: split_args(p.get("appArgs")),
            },
            None => OnAnswer::Dialplan {
                context: p.get("context").unwrap_or("default").to_string(),
                exten: exten.unwrap_or("s").to_string(),
            },
        };
        let timeout_s = p.get_u64("timeout").unwrap_or(30);
        let id = self.dialed_channel(p, path_id, endpoint, app, on_answer)?;
        {
            let ch = self.channels.get_mut(id.as_str()).expect("just created");
            ch.generation += 1;
        }
        let (generation, is_local, peer) = {
            let ch = &self.channels[id.as_str()];
            (ch.generation, ch.local_half == 1, ch.peer.clone())
        };
        let idc: Id = id.as_str().into();
        if is_local {
            if let Some(Peer::Local(two)) = peer {
                self.later(0, Action::LocalStart { chan: two });
            }
        } else {
            self.later(0, Action::TrunkStart { chan: idc.clone() });
        }
        if timeout_s > 0 {
            self.later(
                timeout_s * 1000,
                Action::OriginateTimeout {
                    chan: idc,
                    generation,
                },
            );
        }
        Ok(self.channels[id.as_str()].json())
    }

    /// `POST /channels/create`: the channel enters Stasis at once (state Down) and dials only
    /// on `POST /channels/{id}/dial`.
    pub(crate) fn create(&mut self, p: &Params) -> Result<String, AriError> {
        let endpoint = p
            .get("endpoint")
            .ok_or_else(|| AriError::msg(400, "Endpoint must be specified"))?;
        let app = p
            .get("app")
            .ok_or_else(|| AriError::msg(400, "Application must be specified"))?
            .to_string();
        let args = split_args(p.get("appArgs"));
        let id = self.dialed_channel(p, None, endpoint, None, OnAnswer::Nothing)?;
        // The app follows the created channel (not its Local ;2 half) for its whole life.
        if let (Some(ch), Some((app_id, _))) = (
            self.channels.get_mut(id.as_str()),
            self.apps.get_key_value(app.as_str()),
        ) {
            ch.apps.push(app_id.clone());
        }
        // A created channel is not "originated": its dialplan location is blank until it
        // enters Stasis.
        if let Some(ch) = self.channels.get_mut(id.as_str()) {
            ch.dp.app_name.clear();
            ch.dp.app_data.clear();
        }
        let json = self.channels[id.as_str()].json();
        let idc: Id = id.as_str().into();
        // Enter Stasis right away (like the recording: ChannelDialplan, Varset, StasisStart).
        if let Some(ch) = self.channels.get_mut(id.as_str()) {
            ch.dp.app_name = "Stasis".into();
            ch.dp.app_data = stasis_data(&app, &args);
        }
        let (an, ad) = ("Stasis".to_string(), stasis_data(&app, &args));
        self.emit_chan(
            &idc,
            "ChannelDialplan",
            &[],
            &[
                ("dialplan_app", Val::S(&an)),
                ("dialplan_app_data", Val::S(&ad)),
            ],
        );
        if !self.enter_stasis(&idc, &app, &args, false) {
            self.hangup(&idc, HangupHow::Dialplan(16));
        }
        Ok(json)
    }

    /// `POST /channels/{id}/dial`.
    pub(crate) fn dial_api(&mut self, id: &str, p: &Params) -> Result<(), AriError> {
        let ch = self.chan_in_stasis(id)?;
        let idc = ch.id.clone();
        let peer = ch.peer.clone();
        let timeout = p.get_u64("timeout").unwrap_or(0);
        match peer {
            Some(Peer::Local(two)) => self.later(0, Action::LocalStart { chan: two }),
            Some(Peer::Trunk { .. }) => self.later(0, Action::TrunkStart { chan: idc.clone() }),
            None => return Err(AriError::msg(409, "Channel is not dialable")),
        }
        if timeout > 0 {
            let generation = self.channels[id].generation;
            self.later(
                timeout * 1000,
                Action::OriginateTimeout {
                    chan: idc,
                    generation,
                },
            );
        }
        Ok(())
    }

    /// Allocate the dialed channel for `endpoint` (and its Local `;2` half). Returns its id.
    fn dialed_channel(
        &mut self,
        p: &Params,
        path_id: Option<&str>,
        endpoint: &str,
        app: Option<&str>,
        on_answer: OnAnswer,
    ) -> Result<String, AriError> {
        let chan_id = path_id.or(p.get("channelId"));
        let other_id = p.get("otherChannelId");
        if let Some(c) = chan_id {
            self.check_id_free(c)?;
        }
        if let Some(o) = other_id {
            self.check_id_free(o)?;
            if chan_id.is_some_and(|c| c.eq_ignore_ascii_case(o)) {
                return Err(AriError::msg(
                    409,
                    "Channel with given unique ID already exists",
                ));
            }
        }
        let caller = p.get("callerId").map(CallerId::parse);
        let (tech, resource) = endpoint
            .split_once('/')
            .ok_or_else(AriError::allocation_failed)?;
        let app_id: Option<Id> = app.map(Id::from);
        if tech.eq_ignore_ascii_case("Local") {
            let (exten, context) = resource.split_once('@').unwrap_or((resource, "default"));
            let context = context.split('/').next().unwrap_or(context).to_string();
            let exten = exten.to_string();
            let n = self.local_seq;
            self.local_seq += 1;
            let id1: String = match chan_id {
                Some(c) => c.to_string(),
                None => self.new_uid(),
            };
            let id2: String = match (other_id, chan_id) {
                (Some(o), _) => o.to_string(),
                (None, Some(c)) => format!("{c};2"),
                (None, None) => self.new_uid(),
            };
            let base = format!("Local/{exten}@{context}-{n:08x}");
            let caller_v = caller.clone().unwrap_or_default();
            let id1a: Id = id1.as_str().into();
            let id2a: Id = id2.as_str().into();
            let seq1 = self.next_seq();
            let mut c1 = Channel::new(
                id1a.clone(),
                format!("{base};1"),
                ChanState::Down,
                dp(&context, &exten, 1, "AppDial2", "(Outgoing Line)"),
                caller_v.clone(),
                seq1,
            );
            c1.local_half = 1;
            c1.peer = Some(Peer::Local(id2a.clone()));
            c1.on_answer = on_answer;
            c1.dialstring = Some(format!("{exten}@{context}"));
            c1.vars = p.variables.clone().into_iter().collect();
            let seq2 = self.next_seq();
            let mut c2 = Channel::new(
                id2a.clone(),
                format!("{base};2"),
                ChanState::Ring,
                dp(&context, &exten, 1, "", ""),
                caller_v,
                seq2,
            );
            c2.local_half = 2;
            c2.peer = Some(Peer::Local(id1a.clone()));
            c2.announce_callerid = caller.is_some();
            if let Some(a) = &app_id {
                c1.apps.push(a.clone());
                c2.apps.push(a.clone());
            }
            self.channels.insert(id1a, c1);
            self.channels.insert(id2a, c2);
            return Ok(id1);
        }
        if tech.eq_ignore_ascii_case("PJSIP") {
            let (exten, host) = resource
                .split_once('@')
                .ok_or_else(AriError::allocation_failed)?;
            let node = host
                .strip_prefix("trunk-")
                .ok_or_else(AriError::allocation_failed)?;
            if (self.peer_alive)(node).is_none() {
                return Err(AriError::allocation_failed());
            }
            let id1: String = match chan_id {
                Some(c) => c.to_string(),
                None => self.new_uid(),
            };
            let n = self.pjsip_seq;
            self.pjsip_seq += 1;
            let ida: Id = id1.as_str().into();
            let seq = self.next_seq();
            let mut c = Channel::new(
                ida.clone(),
                format!("PJSIP/trunk-{node}-{n:08x}"),
                ChanState::Down,
                dp("from-trunk", "s", 1, "AppDial2", "(Outgoing Line)"),
                caller.unwrap_or_default(),
                seq,
            );
            c.is_pjsip = true;
            c.peer = Some(Peer::Trunk {
                node: node.into(),
                remote: None,
            });
            c.on_answer = on_answer;
            c.dialstring = Some(format!("{exten}@trunk-{node}"));
            c.vars = p.variables.clone().into_iter().collect();
            if let Some(a) = app_id {
                c.apps.push(a);
            }
            self.channels.insert(ida, c);
            return Ok(id1);
        }
        Err(AriError::allocation_failed())
    }

    /// An inbound call that did not come from another node (control API: `inject_call`).
    pub(crate) fn inject_inbound(
        &mut self,
        endpoint: &str,
        context: &str,
        exten: &str,
        caller: CallerId,
        vars: Vec<(String, String)>,
    ) -> Id {
        let id: Id = self.new_uid().into();
        let n = self.pjsip_seq;
        self.pjsip_seq += 1;
        let seq = self.next_seq();
        let mut c = Channel::new(
            id.clone(),
            format!("PJSIP/{endpoint}-{n:08x}"),
            ChanState::Ring,
            dp(context, exten, 1, "", ""),
            caller,
            seq,
        );
        c.is_pjsip = true;
        c.vars = vars.into_iter().collect();
        self.channels.insert(id.clone(), c);
        self.start_route(&id, context, exten);
        let generation = self.channels[&id].generation;
        self.later(
            0,
            Action::Step {
                chan: id.clone(),
                generation,
            },
        );
        id
    }

    /// Run a trunk call arriving from `from_node`.
    pub(crate) fn trunk_inbound(
        &mut self,
        from_node: Id,
        from_chan: Id,
        exten: &str,
        caller: CallerId,
        vars: Vec<(String, String)>,
    ) {
        let id: Id = self.new_uid().into();
        let n = self.pjsip_seq;
        self.pjsip_seq += 1;
        let seq = self.next_seq();
        let mut c = Channel::new(
            id.clone(),
            format!("PJSIP/trunk-{from_node}-{n:08x}"),
            ChanState::Ring,
            dp("from-trunk", exten, 1, "", ""),
            caller,
            seq,
        );
        c.is_pjsip = true;
        c.protocol_id = format!("{}-{}", self.cfg.name, id);
        c.vars = vars.into_iter().collect();
        c.peer = Some(Peer::Trunk {
            node: from_node.clone(),
            remote: Some(from_chan.clone()),
        });
        self.channels.insert(id.clone(), c);
        self.trunk_index.insert((from_node, from_chan), id.clone());
        self.start_route(&id, "from-trunk", exten);
        self.run_steps(&id);
    }

    /// Point the channel's dialplan at `context`/`exten` (priority 1). Returns false if no
    /// such extension exists.
    pub(crate) fn start_route(&mut self, id: &str, context: &str, exten: &str) -> bool {
        let Some(ch) = self.channels.get(id) else {
            return false;
        };
        let steps = {
            let tctx = TemplateCtx {
                context,
                exten,
                caller_name: &ch.caller.name,
                caller_number: &ch.caller.number,
                vars: &ch.vars,
            };
            self.dialplan
                .lookup(context, exten)
                .map(|r| r.steps(&tctx, self.cfg.wait_forever_ms))
        };
        let ch = self.channels.get_mut(id).expect("checked");
        ch.generation += 1;
        ch.dp.context = context.to_string();
        ch.dp.exten = exten.to_string();
        match steps {
            Some(steps) => {
                ch.run = Some(DpRun { steps, idx: 0 });
                true
            }
            None => {
                ch.run = Some(DpRun {
                    steps: Vec::new(),
                    idx: 0,
                });
                false
            }
        }
    }

    /// `Action::LocalStart`: the `;2` half starts (caller id events, Dial, dialplan).
    pub(crate) fn local_start(&mut self, two: &str) {
        let Some(ch) = self.channels.get(two) else {
            return;
        };
        let Some(Peer::Local(one)) = ch.peer.clone() else {
            return;
        };
        let (context, exten, announce) = (
            ch.dp.context.clone(),
            ch.dp.exten.clone(),
            ch.announce_callerid,
        );
        if announce {
            self.emit_chan(
                two,
                "ChannelCallerId",
                &[],
                &[
                    ("caller_presentation", Val::N(0)),
                    (
                        "caller_presentation_txt",
                        Val::S("Presentation Allowed, Not Screened"),
                    ),
                ],
            );
            self.emit_chan(two, "ChannelConnectedLine", &[], &[]);
        }
        self.emit_dial(&one, "");
        if self.start_route(two, &context, &exten) {
            self.run_steps(two);
        } else {
            // No such extension: the dialed half fails at once.
            self.hangup(two, HangupHow::Dialplan(1));
        }
    }

    /// `Action::TrunkStart`: Dial event, then the call appears on the peer node.
    pub(crate) fn trunk_start(&mut self, id: &str) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        let Some(Peer::Trunk { node, .. }) = ch.peer.clone() else {
            return;
        };
        let exten = ch
            .dialstring
            .as_deref()
            .and_then(|d| d.split_once('@'))
            .map(|(e, _)| e.to_string())
            .unwrap_or_default();
        let caller = ch.caller.clone();
        let vars: Vec<(String, String)> = ch
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.emit_dial(id, "");
        let from_node = self.cfg.name.clone();
        self.remote(
            node,
            0,
            Action::TrunkInbound {
                from_node,
                from_chan: id.into(),
                exten,
                caller,
                vars,
            },
        );
    }

    // ----- answer / ring -----

    /// Answer `id` (the app's `POST answer`, or the dialplan's `Answer()`), and tell the other
    /// side of the call.
    pub(crate) fn answer(&mut self, id: &str) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        if ch.state == ChanState::Up {
            return;
        }
        let peer = ch.peer.clone();
        let half = ch.local_half;
        match (&peer, half) {
            // The dialed ;1 is answered when its ;2 answers; recorded order: ;1 Up first.
            (Some(Peer::Local(one)), 2) => {
                let one = one.clone();
                if self
                    .channels
                    .get(&one)
                    .is_some_and(|c| c.state != ChanState::Up)
                {
                    if let Some(c) = self.channels.get_mut(&one) {
                        c.state = ChanState::Up;
                    }
                    self.emit_chan(&one, "ChannelStateChange", &[], &[]);
                    self.set_state(id, ChanState::Up);
                    self.after_answer(&one);
                    return;
                }
                self.set_state(id, ChanState::Up);
            }
            (
                Some(Peer::Trunk {
                    node,
                    remote: Some(remote),
                }),
                _,
            ) => {
                let (node, remote) = (node.clone(), remote.clone());
                self.set_state(id, ChanState::Up);
                self.remote(
                    node,
                    2,
                    Action::ToOutbound {
                        chan: remote,
                        op: TrunkOp::Answer,
                    },
                );
            }
            _ => self.set_state(id, ChanState::Up),
        }
    }

    /// The far end of dialed channel `id` answered.
    pub(crate) fn answer_outbound(&mut self, id: &str) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        if ch.state == ChanState::Up {
            return;
        }
        self.set_state(id, ChanState::Up);
        self.after_answer(id);
    }

    /// Dial ANSWER, then what the originate asked for (Stasis or a dialplan location).
    fn after_answer(&mut self, id: &str) {
        self.emit_dial(id, "ANSWER");
        let Some(ch) = self.channels.get_mut(id) else {
            return;
        };
        let on_answer = std::mem::replace(&mut ch.on_answer, OnAnswer::Nothing);
        match on_answer {
            OnAnswer::Nothing => {}
            OnAnswer::Stasis { app, args } => {
                ch.dp.app_name = "Stasis".into();
                ch.dp.app_data = stasis_data(&app, &args);
                if !self.enter_stasis(id, &app, &args, false) {
                    // Originate app= with no websocket: 200, then the channel dies on answer.
                    self.hangup(id, HangupHow::Dialplan(16));
                }
            }
            OnAnswer::Dialplan { context, exten } => {
                self.start_route(id, &context, &exten);
                self.run_steps(id);
            }
        }
    }

    /// The far end of dialed channel `id` is ringing.
    pub(crate) fn ring_outbound(&mut self, id: &str) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        if ch.state != ChanState::Down {
            return;
        }
        let local = ch.local_half == 1;
        // Recorded orders differ: a Local ;1 reports its state first, a PJSIP leg the Dial.
        if local {
            self.set_state(id, ChanState::Ringing);
            self.emit_dial(id, "RINGING");
        } else {
            self.emit_dial(id, "RINGING");
            self.set_state(id, ChanState::Ringing);
        }
    }

    /// Indicate ringing on `id` (`POST ring`, `Ringing()`): the caller side hears it.
    fn indicate_ringing(&mut self, id: &str) {
        let Some(ch) = self.channels.get(id) else {
            return;
        };
        match ch.peer.clone() {
            Some(Peer::Local(one)) if ch.local_half == 2 => self.ring_outbound(&one),
            Some(Peer::Trunk {
                node,
                remote: Some(remote),
            }) => self.remote(
                node,
                2,
                Action::ToOutbound {
                    chan: remote,
                    op: TrunkOp::Ring,
                },
            ),
            _ => {}
        }
    }

    pub(crate) fn answer_api(&mut self, id: &str) -> Result<(), AriError> {
        self.chan_in_stasis(id)?;
        self.answer(id);
        Ok(())
    }

    pub(crate) fn ring_api(&mut self, id: &str, start: bool) -> Result<(), AriError> {
        self.chan_in_stasis(id)?;
        if start {
            self.indicate_ringing(id);
        }
        Ok(())
    }

    // ----- Stasis -----

    /// Put `id` into application `app`. False if the app does not exist on this node.
    pub(crate) fn enter_stasis(
        &mut self,
        id: &str,
        app: &str,
        args: &[String],
        via_dialplan: bool,
    ) -> bool {
        let Some((app_id, _)) = self.apps.get_key_value(app) else {
            return false;
        };
        let app_id = app_id.clone();
        self.set_var(id, "STASISSTATUS", "");
        let Some(ch) = self.channels.get_mut(id) else {
            return false;
        };
        ch.stasis = Some(StasisInfo {
            app: app_id,
            via_dialplan,
        });
        let mut args_json = String::from("[");
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                args_json.push(',');
            }
            crate::state::push_json_str(&mut args_json, a);
        }
        args_json.push(']');
        self.emit_chan(id, "StasisStart", &[], &[("args", Val::Raw(&args_json))]);
        true
    }

    /// Leave Stasis (hangup or `continue`): playbacks fail, the bridge is left, StasisEnd.
    pub(crate) fn leave_stasis(&mut self, id: &str, hangup: bool) {
        let Some(ch) = self.channels.get_mut(id) else {
            return;
        };
        if ch.stasis.is_none() {
            return;
        }
        let pbs: Vec<Id> = ch.playbacks.drain(..).collect();
        for pb in pbs {
            self.finish_playback_dropped(&pb, if hangup { "failed" } else { "done" });
        }
        if self.channels.get(id).is_some_and(|c| c.bridge.is_some()) {
            self.bridge_leave(id, hangup);
        }
        self.emit_chan(id, "StasisEnd", &[], &[]);
        if let Some(ch) = self.channels.get_mut(id) {
            ch.stasis = None;
        }
        self.set_var(id, "STASISSTATUS", "SUCCESS");
    }

    pub(crate) fn continue_api(&mut self, id: &str, p: &Params) -> Result<(), AriError> {
        self.chan_in_stasis(id)?;
        self.leave_stasis(id, false);
        let ch = &self.channels[id];
        let context = p.get("context").map(str::to_string);
        let exten = p.get("extension").map(str::to_string);
        if context.is_some() || exten.is_some() {
            let c = context.unwrap_or_else(|| ch.dp.context.clone());
            let e = exten.unwrap_or_else(|| ch.dp.exten.clone());
            self.start_route(id, &c, &e);
        } else if ch.run.is_none() {
            self.hangup(id, HangupHow::Dialplan(16));
            return Ok(());
        }
        let generation = self.channels.get(id).map(|c| c.generation).unwrap_or(0);
        self.later(
            0,
            Action::Step {
                chan: id.into(),
                generation,
            },
        );
        Ok(())
    }

    // ----- the dialplan runner -----

    /// Execute priorities of `id` until one has to wait.
    pub(crate) fn run_steps(&mut self, id: &str) {
        loop {
            let Some(ch) = self.channels.get_mut(id) else {
                return;
            };
            if ch.hanging || ch.stasis.is_some() {
                return;
            }
            let Some(run) = ch.run.as_mut() else {
                return;
            };
            if run.idx >= run.steps.len() {
                ch.run = None;
                self.hangup(id, HangupHow::Dialplan(16));
                return;
            }
            let step = run.steps[run.idx].clone();
            run.idx += 1;
            let (app_name, app_data) = step.app();
            ch.dp.priority = run.idx as u32;
            ch.dp.app_name = app_name.to_string();
            ch.dp.app_data = app_data.clone();
            let generation = ch.generation;
            if !matches!(step, Step::Goto { .. }) {
                self.emit_chan(
                    id,
                    "ChannelDialplan",
                    &[],
                    &[
                        ("dialplan_app", Val::S(app_name)),
                        ("dialplan_app_data", Val::S(&app_data)),
                    ],
                );
            }
            let chan: Id = id.into();
            match step {
                Step::NoOp(_) => {}
                Step::Answer => self.answer(id),
                Step::Ringing => self.indicate_ringing(id),
                Step::Wait(ms) => {
                    self.later(ms, Action::Step { chan, generation });
                    return;
                }
                Step::Echo => return,
                Step::Playback(sound) => {
                    let ms = self.media_ms(&format!("sound:{sound}")).unwrap_or(0);
                    self.later(ms, Action::PlaybackStepDone { chan, generation });
                    return;
                }
                Step::Hangup(cause) => {
                    if let Some(ch) = self.channels.get_mut(id) {
                        ch.run = None;
                    }
                    self.hangup(id, HangupHow::Dialplan(cause));
                    return;
                }
                Step::Stasis { app, args } => {
                    if self.enter_stasis(id, &app, &args, true) {
                        return;
                    }
                    // No such app: Asterisk logs "Stasis app ... doesn't exist" and continues.
                    self.set_var(id, "STASISSTATUS", "FAILED");
                }
                Step::SendDtmf(digits) => {
                    let peer = self.channels.get(id).and_then(|c| c.peer.clone());
                    let mut t = 0;
                    for d in digits.chars().filter(|c| valid_digit(*c)) {
                        t += 350;
                        self.send_digit(id, &peer, d, 100, t - 150);
                    }
                    // SendDTMF returns a while after the last digit ends (the recorded next
                    // priority came well after the last ChannelDtmfReceived).
                    self.later(t + 600, Action::Step { chan, generation });
                    return;
                }
                Step::Goto { context, exten } => {
                    if !self.start_route(id, &context, &exten) {
                        self.hangup(id, HangupHow::Dialplan(1));
                        return;
                    }
                }
            }
        }
    }

    /// Timer: continue the dialplan if nothing replaced it meanwhile.
    pub(crate) fn step_timer(&mut self, id: &str, generation: u64) {
        if self
            .channels
            .get(id)
            .is_some_and(|c| c.generation == generation)
        {
            self.run_steps(id);
        }
    }

    pub(crate) fn playback_step_done(&mut self, id: &str, generation: u64) {
        if self
            .channels
            .get(id)
            .is_some_and(|c| c.generation == generation && c.stasis.is_none())
        {
            self.set_var(id, "PLAYBACKSTATUS", "SUCCESS");
            self.run_steps(id);
        }
    }

    pub(crate) fn originate_timeout(&mut self, id: &str, generation: u64) {
        if self.channels.get(id).is_some_and(|c| {
            c.generation == generation && c.state != ChanState::Up && c.dialstring.is_some()
        }) {
            self.emit_dial(id, "NOANSWER");
            self.hangup(id, HangupHow::Timeout(19));
        }
    }

    // ----- DTMF -----

    /// Send one digit from `from` to the other side of its call, ending `at_ms` from now.
    fn send_digit(
        &mut self,
        from: &str,
        peer: &Option<Peer>,
        digit: char,
        duration: u32,
        at_ms: u64,
    ) {
        match peer {
            Some(Peer::Local(other)) => self.later(
                at_ms,
                Action::Dtmf {
                    chan: other.clone(),
                    digit,
                    duration,
                },
            ),
            Some(Peer::Trunk { node, remote }) => {
                let op = TrunkOp::Dtmf { digit, duration };
                // The inbound leg knows the outbound id; the outbound leg is known to the
                // inbound node by (our node, our channel id).
                let action = match remote {
                    Some(r) => Action::ToOutbound {
                        chan: r.clone(),
                        op,
                    },
                    None => Action::ToInbound {
                        from_node: self.cfg.name.clone(),
                        from_chan: Id::from(from),
                        op,
                    },
                };
                self.remote(node.clone(), at_ms, action);
            }
            None => {}
        }
    }

    /// `POST /channels/{id}/dtmf`: digits reach the *other* side of the call.
    pub(crate) fn dtmf_api(&mut self, id: &str, p: &Params) -> Result<(), AriError> {
        let ch = self.chan_in_stasis(id)?;
        let digits = p
            .get("dtmf")
            .ok_or_else(|| AriError::msg(400, "DTMF is required"))?
            .to_string();
        let before = p.get_u64("before").unwrap_or(0);
        let between = p.get_u64("between").unwrap_or(100);
        let duration = p.get_u64("duration").unwrap_or(100);
        let peer = ch.peer.clone();
        for (i, d) in digits.chars().filter(|c| valid_digit(*c)).enumerate() {
            let at = before + (i as u64 + 1) * (duration + between);
            self.send_digit(id, &peer, d, duration as u32, at);
        }
        Ok(())
    }

    pub(crate) fn dtmf_event(&mut self, id: &str, digit: char, duration: u32) {
        let mut buf = [0u8; 4];
        let d = digit.encode_utf8(&mut buf);
        self.emit_chan(
            id,
            "ChannelDtmfReceived",
            &[],
            &[
                ("digit", Val::S(d)),
                ("duration_ms", Val::N(duration as i64)),
            ],
        );
    }

    // ----- trunk signalling -----

    pub(crate) fn trunk_op(&mut self, chan: &str, op: TrunkOp) {
        match op {
            TrunkOp::Ring => self.ring_outbound(chan),
            TrunkOp::Answer => self.answer_outbound(chan),
            TrunkOp::Dtmf { digit, duration } => self.dtmf_event(chan, digit, duration),
            TrunkOp::Hangup(cause) => {
                if let Some(ch) = self.channels.get_mut(chan) {
                    ch.peer = None;
                }
                self.hangup(chan, HangupHow::Remote(cause));
            }
        }
    }

    pub(crate) fn route_to_inbound(&mut self, from_node: Id, from_chan: Id, op: TrunkOp) {
        if let Some(id) = self.trunk_index.get(&(from_node, from_chan)).cloned() {
            self.trunk_op(&id, op);
        }
    }

    // ----- hangup -----

    /// `DELETE /channels/{id}`.
    pub(crate) fn hangup_api(&mut self, id: &str, p: &Params) -> Result<(), AriError> {
        self.chan(id)?;
        let reason = p.get("reason");
        let code = p.get("reason_code");
        let cause = match (reason, code) {
            (Some(_), Some(_)) => {
                return Err(AriError::msg(
                    400,
                    "The reason and reason_code can't both be specified",
                ));
            }
            (Some(r), None) => reason_cause(r)
                .ok_or_else(|| AriError::msg(400, "Invalid reason for hangup reason provided"))?,
            (None, Some(c)) => c.parse::<u32>().map_err(|_| {
                AriError::msg(400, "Invalid reason for hangup reason code provided")
            })?,
            (None, None) => 16,
        };
        self.hangup(id, HangupHow::Ari(cause));
        Ok(())
    }

    /// Hang up `id` and, through its peer, the rest of the call.
    pub(crate) fn hangup(&mut self, id: &str, how: HangupHow) {
        let Some(ch) = self.channels.get_mut(id) else {
            return;
        };
        if ch.hanging {
            return;
        }
        ch.hanging = true;
        ch.generation += 1;
        let via_dialplan = ch.stasis.as_ref().is_some_and(|s| s.via_dialplan);
        let is_pjsip = ch.is_pjsip;
        let peer = ch.peer.take();
        let cause = match how {
            HangupHow::Ari(c) | HangupHow::Dialplan(c) | HangupHow::Timeout(c) => c,
            HangupHow::Remote(c) => c.unwrap_or(16),
            HangupHow::Shutdown => 0,
        };
        let shutdown = matches!(how, HangupHow::Shutdown);
        if is_pjsip && !shutdown && !matches!(how, HangupHow::Timeout(_)) {
            self.qos_vars(id);
        }
        match how {
            HangupHow::Ari(_) => self.hangup_request(id, Some(32), true),
            HangupHow::Dialplan(_) => self.hangup_request(id, Some(16), true),
            HangupHow::Remote(c) => self.hangup_request(id, c, false),
            HangupHow::Shutdown => self.hangup_request(id, Some(4), true),
            HangupHow::Timeout(_) => {}
        }
        self.leave_stasis(id, true);
        if shutdown && is_pjsip {
            self.qos_vars(id);
        }
        if via_dialplan && matches!(how, HangupHow::Ari(_)) {
            self.hangup_request(id, Some(16), true);
        }
        match peer {
            // On shutdown every channel is hung up on its own (cause 4 flag each).
            Some(Peer::Local(_)) if shutdown => {}
            Some(Peer::Local(other)) => self.peer_hangup(&other, cause),
            Some(Peer::Trunk { node, remote }) => {
                let op = TrunkOp::Hangup(if shutdown { None } else { Some(cause) });
                let action = match remote {
                    Some(r) => Action::ToOutbound { chan: r, op },
                    None => Action::ToInbound {
                        from_node: self.cfg.name.clone(),
                        from_chan: id.into(),
                        op,
                    },
                };
                self.remote(node, 3, action);
            }
            None => {}
        }
        self.destroy(id, cause);
    }

    /// The other half of a Local channel went away with `cause`.
    fn peer_hangup(&mut self, id: &str, cause: u32) {
        let Some(ch) = self.channels.get_mut(id) else {
            return;
        };
        if ch.hanging {
            return;
        }
        ch.hanging = true;
        ch.generation += 1;
        ch.peer = None;
        let in_stasis = ch.stasis.is_some();
        let running = ch.run.is_some() && ch.state == ChanState::Up;
        let unanswered_dialed = ch.dialstring.is_some() && ch.state != ChanState::Up;
        self.hangup_request(id, Some(cause), false);
        if in_stasis {
            self.leave_stasis(id, true);
        } else if running {
            self.hangup_request(id, Some(16), true);
        }
        if unanswered_dialed {
            self.emit_dial(id, dial_status(cause));
        }
        self.destroy(id, cause);
    }

    fn qos_vars(&mut self, id: &str) {
        if self
            .channels
            .get(id)
            .is_some_and(|c| c.state == ChanState::Up)
        {
            for (k, v) in QOS_VARS {
                self.set_var(id, k, v);
            }
        }
    }

    /// ChannelDestroyed and removal from every index.
    fn destroy(&mut self, id: &str, cause: u32) {
        if let Some(ch) = self.channels.get_mut(id) {
            if ch.dialstring.is_some() {
                ch.dp.app_name = "AppDial2".into();
                ch.dp.app_data = "(Outgoing Line)".into();
            } else if ch.stasis.is_none() {
                ch.dp.app_name.clear();
                ch.dp.app_data.clear();
            }
        }
        self.emit_chan(
            id,
            "ChannelDestroyed",
            &[],
            &[
                ("cause", Val::N(cause as i64)),
                ("cause_txt", Val::S(cause_txt(cause))),
            ],
        );
        if self.channels.get(id).is_some_and(|c| c.bridge.is_some()) {
            self.bridge_leave(id, true);
        }
        if let Some(ch) = self.channels.remove(id) {
            for pb in ch.playbacks {
                self.playbacks.remove(&pb);
            }
            if let Some(Peer::Trunk {
                node,
                remote: Some(r),
            }) = ch.peer
            {
                self.trunk_index.remove(&(node, r));
            }
        }
        // Inbound trunk legs lose their peer link on hangup; drop stale index entries.
        if !self.trunk_index.is_empty() {
            self.trunk_index.retain(|_, v| &**v != id);
        }
    }

    /// Node stop: every channel goes, Stasis ones with `ChannelHangupRequest{cause:4, soft}`.
    pub(crate) fn shutdown(&mut self) {
        let mut ids: Vec<(u64, Id)> = self
            .channels
            .values()
            .map(|c| (c.seq, c.id.clone()))
            .collect();
        ids.sort();
        for (_, id) in ids {
            self.hangup(&id, HangupHow::Shutdown);
        }
    }

    // ----- misc channel operations -----

    pub(crate) fn get_var_api(&self, id: &str, p: &Params) -> Result<String, AriError> {
        let ch = self.chan(id)?;
        let name = p
            .get("variable")
            .ok_or_else(|| AriError::msg(400, "Variable name is required"))?;
        let value = match name {
            "CHANNEL(name)" => ch.name.clone(),
            "CHANNEL(state)" => ch.state.as_str().to_string(),
            "CALLERID(num)" => ch.caller.number.clone(),
            "CALLERID(name)" => ch.caller.name.clone(),
            "UNIQUEID" => ch.id.to_string(),
            "EXTEN" => ch.dp.exten.clone(),
            "CONTEXT" => ch.dp.context.clone(),
            other => match ch.vars.get(other) {
                Some(v) => v.clone(),
                None => return Err(AriError::msg(404, "Provided variable was not found")),
            },
        };
        Ok(serde_json::json!({ "value": value }).to_string())
    }

    pub(crate) fn set_var_api(&mut self, id: &str, p: &Params) -> Result<(), AriError> {
        self.chan(id)?;
        let name = p
            .get("variable")
            .ok_or_else(|| AriError::msg(400, "Variable name is required"))?
            .to_string();
        let value = p.get("value").unwrap_or("").to_string();
        // Dialplan functions (TALK_DETECT(set), ...) are accepted without an event.
        if name.contains('(') {
            return Ok(());
        }
        self.set_var(id, &name, &value);
        Ok(())
    }

    /// moh / mute / hold / silence: accepted, no events (as recorded for a channel in a bridge).
    pub(crate) fn flag_api(&mut self, id: &str, what: &str, on: bool) -> Result<(), AriError> {
        self.chan_in_stasis(id)?;
        let ch = self.channels.get_mut(id).expect("checked");
        match what {
            "moh" => ch.moh = on,
            "mute" => ch.muted = on,
            "hold" => ch.held = on,
            _ => {}
        }
        Ok(())
    }

    /// `POST /channels/{id}/record`: a minimal LiveRecording, never written anywhere.
    pub(crate) fn record_api(&mut self, id: &str, p: &Params) -> Result<String, AriError> {
        self.chan_in_stasis(id)?;
        let name = p
            .get("name")
            .ok_or_else(|| AriError::msg(400, "Recording name is required"))?;
        let format = p
            .get("format")
            .ok_or_else(|| AriError::msg(400, "Recording format is required"))?;
        Ok(serde_json::json!({
            "name": name,
            "format": format,
            "state": "queued",
            "target_uri": format!("channel:{id}"),
        })
        .to_string())
    }

    pub(crate) fn list_channels(&self) -> String {
        let mut v: Vec<&Channel> = self.channels.values().collect();
        v.sort_by_key(|c| c.seq);
        let mut s = String::from("[");
        for (i, c) in v.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&c.json());
        }
        s.push(']');
        s
    }
}

fn split_args(s: Option<&str>) -> Vec<String> {
    match s {
        Some(a) if !a.is_empty() => a.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_id_parsing() {
        assert_eq!(
            CallerId::parse("\"Alice\" <1001>"),
            CallerId {
                name: "Alice".into(),
                number: "1001".into()
            }
        );
        assert_eq!(CallerId::parse("2000").number, "2000");
        assert_eq!(CallerId::parse("Bob <7>").name, "Bob");
    }

    #[test]
    fn causes() {
        assert_eq!(reason_cause("busy"), Some(17));
        assert_eq!(reason_cause("congestion"), Some(34));
        assert_eq!(cause_txt(21), "Call Rejected");
        assert_eq!(dial_status(17), "BUSY");
    }
}
