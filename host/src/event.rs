//! ARI events as the host needs them: a typed view of the few kinds that drive calls,
//! with the node's original JSON kept for everything else.
//!
//! Nodes send many event types and new Asterisk versions add more; an unknown type must
//! pass through to the app untouched and never break a connection. So parsing is two-step:
//! the envelope (`type`, `asterisk_id`, `application`) always, then a typed body only for
//! the kinds the host acts on. Field names follow `ari-spec/events.json`.

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::rest_socket::RestResponse;

/// Why an event could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("event has no `type`")]
    NoType,
    #[error("{kind} event is malformed: {source}")]
    Malformed {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A party's caller id (`CallerID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CallerId {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub number: String,
}

/// Where a channel is in the dialplan (`DialplanCEP`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Dialplan {
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub exten: String,
    /// The dialplan application the channel is in: `Stasis` while it is in an ARI app.
    #[serde(default)]
    pub app_name: String,
    /// Its arguments: for `Stasis`, `app[,arg…]`.
    #[serde(default)]
    pub app_data: String,
}

impl Dialplan {
    /// The ARI app and arguments of a channel sitting in `Stasis(app,arg…)`, as a listing
    /// of `GET /channels` shows it. How reconciliation finds calls whose StasisStart it never
    /// received.
    pub fn stasis_app(&self) -> Option<(&str, Vec<String>)> {
        if self.app_name != "Stasis" {
            return None;
        }
        let mut fields = self.app_data.split(',');
        let app = fields.next().filter(|a| !a.is_empty())?;
        Some((app, fields.map(str::to_string).collect()))
    }
}

/// A channel as events carry it (`Channel`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Channel {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub caller: CallerId,
    #[serde(default)]
    pub connected: CallerId,
    #[serde(default)]
    pub dialplan: Dialplan,
}

/// A bridge as events carry it (`Bridge`). Its `channels` list is not parsed: it grows with
/// the bridge (every member's id, on every join and leave) and only an app that asked for
/// bridge events reads it, from the event's JSON (`Conferences::hide_legs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Bridge {
    pub id: String,
    /// Tells two bridges with the same id apart (one deleted, one made again).
    #[serde(default)]
    pub creationtime: String,
}

/// A playback as events carry it (`Playback`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Playback {
    pub id: String,
    #[serde(default)]
    pub media_uri: String,
    #[serde(default)]
    pub target_uri: String,
    #[serde(default)]
    pub state: String,
}

/// The event types the host itself acts on (every typed [`Kind`]): a node must always send
/// these, whatever the apps ask for (see `node_filter`).
pub const HOST_EVENTS: &[&str] = &[
    "StasisStart",
    "StasisEnd",
    "ChannelStateChange",
    "ChannelDtmfReceived",
    "ChannelDestroyed",
    "ChannelEnteredBridge",
    "ChannelLeftBridge",
    "BridgeDestroyed",
    "PlaybackFinished",
    "ApplicationReplaced",
];

/// The message type of an answer to a request sent on the event websocket. Like an event,
/// it passes the node's event filter of the socket's first app, so `node_filter` allows it.
pub const REST_RESPONSE: &str = "RESTResponse";

/// What a node writes on its event websocket.
#[derive(Debug)]
pub enum Incoming {
    Event(Box<Event>),
    RestResponse(RestResponse),
}

/// The kinds of event the host acts on; everything else is [`Kind::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    StasisStart {
        channel: Channel,
        args: Vec<String>,
    },
    StasisEnd {
        channel: Channel,
    },
    ChannelStateChange {
        channel: Channel,
    },
    ChannelDtmfReceived {
        channel: Channel,
        digit: String,
        duration_ms: u32,
    },
    ChannelDestroyed {
        channel: Channel,
    },
    ChannelEnteredBridge {
        bridge: Bridge,
        channel: Option<Channel>,
    },
    ChannelLeftBridge {
        bridge: Bridge,
        channel: Channel,
    },
    BridgeDestroyed {
        bridge: Bridge,
    },
    PlaybackFinished {
        playback: Playback,
    },
    ApplicationReplaced,
    /// Any other type; the app sees it through `on-event` when it names the call's channel.
    Other {
        channel: Option<Channel>,
    },
}

/// One event from one node.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event `type`, e.g. `StasisStart`.
    pub kind_name: String,
    /// The node's entity id (`asterisk_id`); empty when the node did not send one.
    pub asterisk_id: String,
    /// The application the event is for; empty for events outside an app.
    pub application: String,
    pub kind: Kind,
    /// The JSON exactly as the node sent it, for `on-event` and facade clients: the text of
    /// the websocket frame it came in, shared rather than copied (most events are never
    /// read again, and a bridge event carries every member's id).
    pub raw: Utf8Bytes,
}

/// One pass over the text of an event: the envelope and scalar fields, and the objects the
/// host may need (`channel`, `bridge`, `playback`) held as `C`, `B`, `P`. Events are the
/// host's hottest input (every event of every call, and an unfiltered node sends one
/// ChannelVarset per bridge member on every join), so no `serde_json::Value` tree is built.
/// Two passes use it:
/// - [`Typed`], for the kinds the host acts on (chosen by the event's leading `type`, which
///   Asterisk writes first): their sub-objects are always needed, so they are parsed as they
///   are met rather than delimited and walked again;
/// - [`Wire`], for anything else and for any error of the first pass: the sub-objects are
///   only delimited, then parsed on demand, and errors are classified.
#[derive(Deserialize)]
#[serde(bound(deserialize = "C: Deserialize<'de>, B: Deserialize<'de>, P: Deserialize<'de>"))]
struct Envelope<C, B, P> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    asterisk_id: String,
    #[serde(default)]
    application: String,
    #[serde(default)]
    channel: Option<C>,
    #[serde(default)]
    bridge: Option<B>,
    #[serde(default)]
    playback: Option<P>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    digit: Option<String>,
    #[serde(default)]
    duration_ms: Option<u32>,
}

type Wire<'a> = Envelope<&'a RawValue, &'a RawValue, &'a RawValue>;
type Typed = Envelope<Channel, Bridge, Playback>;

/// A sub-object as a parse pass left it.
enum Sub<'a, T> {
    Typed(T),
    Raw(&'a RawValue),
    Absent,
}

/// How a parse pass holds a sub-object: parsed, or only delimited.
trait Held<'a, T> {
    fn held(self) -> Sub<'a, T>;
}

impl<'a, T> Held<'a, T> for &'a RawValue {
    fn held(self) -> Sub<'a, T> {
        Sub::Raw(self)
    }
}

impl<'a> Held<'a, Channel> for Channel {
    fn held(self) -> Sub<'a, Channel> {
        Sub::Typed(self)
    }
}

impl<'a> Held<'a, Bridge> for Bridge {
    fn held(self) -> Sub<'a, Bridge> {
        Sub::Typed(self)
    }
}

impl<'a> Held<'a, Playback> for Playback {
    fn held(self) -> Sub<'a, Playback> {
        Sub::Typed(self)
    }
}

impl<'a, T: serde::de::DeserializeOwned> Sub<'a, T> {
    fn of(value: Option<impl Held<'a, T>>) -> Self {
        value.map_or(Sub::Absent, Held::held)
    }

    fn is_present(&self) -> bool {
        !matches!(self, Sub::Absent)
    }

    /// The sub-object an event kind requires.
    fn required(self, field: &'static str) -> Result<T, serde_json::Error> {
        match self {
            Sub::Typed(value) => Ok(value),
            Sub::Raw(raw) => serde_json::from_str(raw.get()),
            Sub::Absent => Err(missing(field)),
        }
    }
}

impl Sub<'_, Channel> {
    /// For kinds the host does not act on only the channel's id matters (to find the call);
    /// a channel of an unexpected shape is ignored.
    fn id_only(self) -> Option<Channel> {
        let id = match self {
            Sub::Typed(channel) => channel.id,
            Sub::Raw(raw) => serde_json::from_str::<ChannelId>(raw.get()).ok()?.id,
            Sub::Absent => return None,
        };
        Some(Channel {
            id,
            ..Channel::default()
        })
    }
}

/// What either pass hands to [`Event::from_parts`].
struct Parts<'a> {
    kind: Option<String>,
    asterisk_id: String,
    application: String,
    channel: Sub<'a, Channel>,
    bridge: Sub<'a, Bridge>,
    playback: Sub<'a, Playback>,
    args: Option<Vec<String>>,
    digit: Option<String>,
    duration_ms: Option<u32>,
}

impl<'a, C, B, P> From<Envelope<C, B, P>> for Parts<'a>
where
    C: Held<'a, Channel>,
    B: Held<'a, Bridge>,
    P: Held<'a, Playback>,
{
    fn from(e: Envelope<C, B, P>) -> Self {
        Parts {
            kind: e.kind,
            asterisk_id: e.asterisk_id,
            application: e.application,
            channel: Sub::of(e.channel),
            bridge: Sub::of(e.bridge),
            playback: Sub::of(e.playback),
            args: e.args,
            digit: e.digit,
            duration_ms: e.duration_ms,
        }
    }
}

/// The `type` of an event that starts with it, as Asterisk writes events, compact or pretty
/// (`ari.conf` `format`): a cheap look that picks the parse; `None` when the text starts
/// otherwise.
fn leading_type(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"type\"")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let kind = &rest[..rest.find('"')?];
    (!kind.contains('\\')).then_some(kind)
}

/// For event kinds the host does not act on, only the channel id matters (to find the call).
#[derive(Deserialize)]
struct ChannelId {
    id: String,
}

fn missing(field: &'static str) -> serde_json::Error {
    serde::de::Error::missing_field(field)
}

/// The body of a message from Asterisk's AMQP module: either the module's envelope
/// `{"name", "data": <event>, "application"}` or the bare event (an older form).
#[derive(Deserialize)]
struct AmqpBody<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    application: Option<String>,
}

impl Event {
    /// Parses the body of an AMQP message in either of the two forms Asterisk's AMQP
    /// modules publish (see `ARI-NOTES.md`). `application` comes from the envelope or the
    /// `application_name` header when the event itself lacks it.
    pub fn parse_amqp(body: &[u8], header_app: Option<&str>) -> Result<Event, EventError> {
        let text = std::str::from_utf8(body).map_err(|e| {
            EventError::NotJson(serde::de::Error::custom(format!("body is not UTF-8: {e}")))
        })?;
        let envelope: AmqpBody = serde_json::from_str(text).map_err(EventError::NotJson)?;
        let mut event = match envelope.data {
            Some(data) => Event::parse(data.get())?,
            None => Event::parse(text)?,
        };
        if event.application.is_empty() {
            event.application = envelope
                .application
                .or_else(|| header_app.map(str::to_string))
                .unwrap_or_default();
        }
        Ok(event)
    }

    /// Parses one event (a websocket message or an AMQP `data` object); `raw` keeps a copy
    /// of `text`.
    pub fn parse(text: &str) -> Result<Event, EventError> {
        Event::parse_with(text, || text.into())
    }

    /// Parses one event; `raw` shares `text`.
    pub fn parse_shared(text: &Utf8Bytes) -> Result<Event, EventError> {
        Event::parse_with(text, || text.clone())
    }

    fn parse_with(text: &str, raw: impl FnOnce() -> Utf8Bytes) -> Result<Event, EventError> {
        if leading_type(text).is_some_and(|kind| HOST_EVENTS.contains(&kind))
            && let Ok(typed) = serde_json::from_str::<Typed>(text)
        {
            return Event::from_parts(typed.into(), raw);
        }
        let wire: Wire = serde_json::from_str(text).map_err(EventError::NotJson)?;
        Event::from_parts(wire.into(), raw)
    }

    /// Parses what a node writes on its event websocket: an event, or the answer to a
    /// request sent on the socket (`rest_socket`). An event's `raw` shares `text`.
    pub fn parse_incoming(text: &Utf8Bytes) -> Result<Incoming, EventError> {
        let is_answer = match leading_type(text) {
            Some(kind) => kind == REST_RESPONSE,
            None => {
                let wire: Wire = serde_json::from_str(text).map_err(EventError::NotJson)?;
                wire.kind.as_deref() == Some(REST_RESPONSE)
            }
        };
        if is_answer {
            return RestResponse::parse(text)
                .map(Incoming::RestResponse)
                .map_err(|source| EventError::Malformed {
                    kind: REST_RESPONSE.into(),
                    source,
                });
        }
        Event::parse_shared(text).map(|e| Incoming::Event(Box::new(e)))
    }

    fn from_parts(parts: Parts, raw: impl FnOnce() -> Utf8Bytes) -> Result<Event, EventError> {
        let kind_name = parts.kind.ok_or(EventError::NoType)?;
        let malformed = |source| EventError::Malformed {
            kind: kind_name.clone(),
            source,
        };
        let channel = parts.channel;
        let kind = match kind_name.as_str() {
            "StasisStart" => Kind::StasisStart {
                channel: channel.required("channel").map_err(malformed)?,
                args: parts.args.unwrap_or_default(),
            },
            "StasisEnd" => Kind::StasisEnd {
                channel: channel.required("channel").map_err(malformed)?,
            },
            "ChannelStateChange" => Kind::ChannelStateChange {
                channel: channel.required("channel").map_err(malformed)?,
            },
            "ChannelDtmfReceived" => Kind::ChannelDtmfReceived {
                channel: channel.required("channel").map_err(malformed)?,
                digit: parts.digit.ok_or_else(|| malformed(missing("digit")))?,
                duration_ms: parts.duration_ms.unwrap_or_default(),
            },
            "ChannelDestroyed" => Kind::ChannelDestroyed {
                channel: channel.required("channel").map_err(malformed)?,
            },
            "ChannelEnteredBridge" => Kind::ChannelEnteredBridge {
                bridge: parts.bridge.required("bridge").map_err(malformed)?,
                channel: if channel.is_present() {
                    Some(channel.required("channel").map_err(malformed)?)
                } else {
                    None
                },
            },
            "ChannelLeftBridge" => Kind::ChannelLeftBridge {
                bridge: parts.bridge.required("bridge").map_err(malformed)?,
                channel: channel.required("channel").map_err(malformed)?,
            },
            "BridgeDestroyed" => Kind::BridgeDestroyed {
                bridge: parts.bridge.required("bridge").map_err(malformed)?,
            },
            "PlaybackFinished" => Kind::PlaybackFinished {
                playback: parts.playback.required("playback").map_err(malformed)?,
            },
            "ApplicationReplaced" => Kind::ApplicationReplaced,
            // Unknown or untyped kinds: keep the channel's id when there is one, so the event
            // can reach that channel's call.
            _ => Kind::Other {
                channel: channel.id_only(),
            },
        };
        Ok(Event {
            kind_name,
            asterisk_id: parts.asterisk_id,
            application: parts.application,
            kind,
            raw: raw(),
        })
    }

    /// The channel the event is about, if any.
    pub fn channel(&self) -> Option<&Channel> {
        match &self.kind {
            Kind::StasisStart { channel, .. }
            | Kind::StasisEnd { channel }
            | Kind::ChannelStateChange { channel }
            | Kind::ChannelDtmfReceived { channel, .. }
            | Kind::ChannelDestroyed { channel }
            | Kind::ChannelLeftBridge { channel, .. } => Some(channel),
            Kind::ChannelEnteredBridge { channel, .. } | Kind::Other { channel } => {
                channel.as_ref()
            }
            Kind::BridgeDestroyed { .. }
            | Kind::PlaybackFinished { .. }
            | Kind::ApplicationReplaced => None,
        }
    }
}

/// Acknowledges an event to its source when dropped, that is once the host is done with it:
/// after the call's callback ran, or as soon as dispatch finds nothing to deliver it to.
/// An AMQP delivery is acked this way, so an event the host never finished handling (the
/// process died, the broker connection dropped) is redelivered. Websocket events have none.
pub struct Receipt(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Receipt {
    pub fn new(on_handled: impl FnOnce() + Send + Sync + 'static) -> Receipt {
        Receipt(Some(Box::new(on_handled)))
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(on_handled) = self.0.take() {
            on_handled();
        }
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"type":"StasisStart","timestamp":"2026-11-28T15:34:40.287+0000","args":["a","b"],
        "channel":{"id":"ast-a-1.1","name":"Local/8000@default-00000000;2","state":"Ring","protocol_id":"",
        "caller":{"name":"Alice","number":"1001"},"connected":{"name":"","number":""},"accountcode":"",
        "dialplan":{"context":"default","exten":"8000","priority":2,"app_name":"Stasis","app_data":"conf"},
        "creationtime":"2026-11-28T15:34:40.286+0000","language":"en"},
        "asterisk_id":"02:00:00:00:00:0a","application":"conf"}"#;

    #[test]
    fn host_events_are_exactly_the_typed_kinds() {
        let channel = r#"{"id":"c"}"#;
        let bridge = r#"{"id":"b"}"#;
        let playback = r#"{"id":"p"}"#;
        for kind in HOST_EVENTS {
            let text = format!(
                r#"{{"type":"{kind}","channel":{channel},"bridge":{bridge},"playback":{playback},"digit":"1"}}"#
            );
            let event = Event::parse(&text).unwrap();
            assert!(!matches!(event.kind, Kind::Other { .. }), "{kind} is typed");
        }
        let varset = Event::parse(r#"{"type":"ChannelVarset","channel":{"id":"c"}}"#).unwrap();
        assert!(matches!(varset.kind, Kind::Other { .. }));
    }

    #[test]
    fn parses_stasis_start_with_args_and_channel() {
        let e = Event::parse(START).unwrap();
        assert_eq!(e.kind_name, "StasisStart");
        assert_eq!(e.asterisk_id, "02:00:00:00:00:0a");
        assert_eq!(e.application, "conf");
        let Kind::StasisStart { channel, args } = &e.kind else {
            panic!("wrong kind {:?}", e.kind)
        };
        assert_eq!(args, &["a", "b"]);
        assert_eq!(channel.id, "ast-a-1.1");
        assert_eq!(channel.state, "Ring");
        assert_eq!(channel.caller.name, "Alice");
        assert_eq!(channel.dialplan.exten, "8000");
        assert_eq!(&*e.raw, START);
    }

    #[test]
    fn the_one_pass_and_the_delimiting_pass_agree() {
        // Asterisk writes `type` first: the kinds the host acts on take the one-pass parse.
        // The same event with `type` elsewhere takes the delimiting pass.
        let later = START.replacen(r#""type":"StasisStart","#, "", 1).replacen(
            r#""application":"conf"}"#,
            r#""application":"conf","type":"StasisStart"}"#,
            1,
        );
        assert_eq!(leading_type(START), Some("StasisStart"));
        assert_eq!(
            leading_type("{\n  \"type\" : \"StasisEnd\",\n"),
            Some("StasisEnd")
        );
        assert_eq!(leading_type(&later), None);
        let (one, two) = (Event::parse(START).unwrap(), Event::parse(&later).unwrap());
        assert_eq!(one.kind, two.kind);
        assert_eq!(
            (one.asterisk_id, one.application),
            (two.asterisk_id, two.application)
        );
        let bridge = r#"{"type":"ChannelEnteredBridge","bridge":{"id":"conf","creationtime":"t","channels":["a","b"]},"channel":{"id":"a","state":"Up"}}"#;
        let moved = r#"{"bridge":{"id":"conf","creationtime":"t","channels":["a","b"]},"channel":{"id":"a","state":"Up"},"type":"ChannelEnteredBridge"}"#;
        assert_eq!(
            Event::parse(bridge).unwrap().kind,
            Event::parse(moved).unwrap().kind
        );
        // Answers to requests are told apart wherever their `type` is.
        let answer = r#"{"request_id":"3","status_code":204,"type":"RESTResponse"}"#;
        assert!(matches!(
            Event::parse_incoming(&answer.into()),
            Ok(Incoming::RestResponse(r)) if r.request_id == "3"
        ));
    }

    #[test]
    fn an_event_from_a_frame_shares_its_text() {
        let frame = Utf8Bytes::from(START);
        let Ok(Incoming::Event(e)) = Event::parse_incoming(&frame) else {
            panic!("an event");
        };
        assert_eq!(&*e.raw, START);
        assert_eq!(
            e.raw.as_ptr(),
            frame.as_ptr(),
            "the frame's bytes, not a copy"
        );
    }

    #[test]
    fn unknown_type_passes_through_with_its_channel() {
        let e = Event::parse(
            r#"{"type":"ChannelTalkingStarted","channel":{"id":"c1","state":"Up"},"asterisk_id":"x","application":"conf"}"#,
        )
        .unwrap();
        assert_eq!(e.kind_name, "ChannelTalkingStarted");
        assert_eq!(e.channel().map(|c| c.id.as_str()), Some("c1"));
    }

    #[test]
    fn rejects_garbage_missing_type_and_malformed_known_kinds() {
        assert!(matches!(
            Event::parse("{not json"),
            Err(EventError::NotJson(_))
        ));
        assert!(matches!(
            Event::parse(r#"{"asterisk_id":"x"}"#),
            Err(EventError::NoType)
        ));
        assert!(matches!(
            Event::parse(r#"{"type":"StasisStart","channel":"nope"}"#),
            Err(EventError::Malformed { .. })
        ));
        assert!(matches!(
            Event::parse(r#"{"type":"ChannelDtmfReceived","channel":{"id":"c"}}"#),
            Err(EventError::Malformed { .. })
        ));
    }

    #[test]
    fn dtmf_and_playback_and_bridge_events() {
        let d = Event::parse(
            r#"{"type":"ChannelDtmfReceived","digit":"5","duration_ms":120,"channel":{"id":"c"}}"#,
        )
        .unwrap();
        assert_eq!(
            d.kind,
            Kind::ChannelDtmfReceived {
                channel: d.channel().unwrap().clone(),
                digit: "5".into(),
                duration_ms: 120
            }
        );
        let p = Event::parse(r#"{"type":"PlaybackFinished","playback":{"id":"p1","media_uri":"sound:x","target_uri":"channel:c","state":"done"}}"#).unwrap();
        let Kind::PlaybackFinished { playback } = p.kind else {
            panic!()
        };
        assert_eq!(
            (playback.id.as_str(), playback.target_uri.as_str()),
            ("p1", "channel:c")
        );
        let b = Event::parse(r#"{"type":"BridgeDestroyed","bridge":{"id":"conf","channels":[]}}"#)
            .unwrap();
        assert!(matches!(b.kind, Kind::BridgeDestroyed { ref bridge } if bridge.id == "conf"));
    }

    #[test]
    fn amqp_envelope_and_bare_bodies_give_the_same_event() {
        let envelope = format!(r#"{{"name":"StasisStart","data":{START},"application":"conf"}}"#);
        let a = Event::parse_amqp(envelope.as_bytes(), Some("conf")).unwrap();
        let b = Event::parse_amqp(START.as_bytes(), None).unwrap();
        assert_eq!(a.kind, b.kind);
        assert_eq!(
            &*a.raw, START,
            "the event JSON is the `data` object, unchanged"
        );
        assert_eq!(a.asterisk_id, "02:00:00:00:00:0a");
        // An event without `application` takes the envelope's, then the header's.
        let bare = r#"{"type":"ChannelVarset","variable":"X","value":"1","asterisk_id":"i"}"#;
        let wrapped = format!(r#"{{"name":"ChannelVarset","data":{bare},"application":"ivr"}}"#);
        assert_eq!(
            Event::parse_amqp(wrapped.as_bytes(), None)
                .unwrap()
                .application,
            "ivr"
        );
        assert_eq!(
            Event::parse_amqp(bare.as_bytes(), Some("conf"))
                .unwrap()
                .application,
            "conf"
        );
        assert!(Event::parse_amqp(b"\xff\xfe", None).is_err());
        assert!(Event::parse_amqp(br#"{"name":"x","data":{}}"#, None).is_err());
    }

    #[test]
    fn stasis_app_reads_app_and_args_from_the_dialplan() {
        let e = Event::parse(START).unwrap();
        let channel = e.channel().unwrap();
        assert_eq!(channel.dialplan.stasis_app(), Some(("conf", vec![])));
        let d = Dialplan {
            app_name: "Stasis".into(),
            app_data: "conf,outbound,1".into(),
            ..Dialplan::default()
        };
        assert_eq!(
            d.stasis_app(),
            Some(("conf", vec!["outbound".to_string(), "1".to_string()]))
        );
        let dialing = Dialplan {
            app_name: "AppDial2".into(),
            app_data: "(Outgoing Line)".into(),
            ..Dialplan::default()
        };
        assert_eq!(dialing.stasis_app(), None);
    }
}
