//! ARI events as the host needs them: a typed view of the few kinds that drive calls,
//! with the node's original JSON kept for everything else.
//!
//! Nodes send many event types and new Asterisk versions add more; an unknown type must
//! pass through to the app untouched and never break a connection. So parsing is two-step:
//! the envelope (`type`, `asterisk_id`, `application`) always, then a typed body only for
//! the kinds the host acts on. Field names follow `ari-spec/events.json`.

use std::sync::Arc;

use serde::Deserialize;

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

/// A bridge as events carry it (`Bridge`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Bridge {
    pub id: String,
    #[serde(default)]
    pub channels: Vec<String>,
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
    /// The JSON exactly as the node sent it, for `on-event`.
    pub raw: Arc<str>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    asterisk_id: String,
    #[serde(default)]
    application: String,
}

fn body<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text)
}

#[derive(Deserialize)]
struct WithChannel {
    channel: Channel,
}

/// For event kinds the host does not act on, only the channel id matters (to find the
/// call); skipping the rest of the channel object keeps the many ChannelVarset events cheap.
#[derive(Deserialize)]
struct MaybeChannel {
    #[serde(default)]
    channel: Option<ChannelId>,
}

#[derive(Deserialize)]
struct ChannelId {
    id: String,
}

#[derive(Deserialize)]
struct StasisStartBody {
    channel: Channel,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize)]
struct DtmfBody {
    channel: Channel,
    digit: String,
    #[serde(default)]
    duration_ms: u32,
}

#[derive(Deserialize)]
struct BridgeBody {
    bridge: Bridge,
    #[serde(default)]
    channel: Option<Channel>,
}

#[derive(Deserialize)]
struct PlaybackBody {
    playback: Playback,
}

impl Event {
    /// Parses one websocket message (or AMQP `data` object).
    ///
    /// Straight from the text into small typed structs, never through `serde_json::Value`:
    /// this runs for every event of every call, and a `Value` tree costs an allocation per
    /// field of every channel object.
    pub fn parse(text: &str) -> Result<Event, EventError> {
        let envelope: Envelope = serde_json::from_str(text).map_err(EventError::NotJson)?;
        let kind_name = envelope.kind.ok_or(EventError::NoType)?;
        let malformed = |source| EventError::Malformed {
            kind: kind_name.clone(),
            source,
        };
        let kind = match kind_name.as_str() {
            "StasisStart" => {
                let b: StasisStartBody = serde_json::from_str(text).map_err(malformed)?;
                Kind::StasisStart {
                    channel: b.channel,
                    args: b.args,
                }
            }
            "StasisEnd" => Kind::StasisEnd {
                channel: body::<WithChannel>(text).map_err(malformed)?.channel,
            },
            "ChannelStateChange" => Kind::ChannelStateChange {
                channel: body::<WithChannel>(text).map_err(malformed)?.channel,
            },
            "ChannelDtmfReceived" => {
                let b: DtmfBody = body(text).map_err(malformed)?;
                Kind::ChannelDtmfReceived {
                    channel: b.channel,
                    digit: b.digit,
                    duration_ms: b.duration_ms,
                }
            }
            "ChannelDestroyed" => Kind::ChannelDestroyed {
                channel: body::<WithChannel>(text).map_err(malformed)?.channel,
            },
            "ChannelEnteredBridge" => {
                let b: BridgeBody = body(text).map_err(malformed)?;
                Kind::ChannelEnteredBridge {
                    bridge: b.bridge,
                    channel: b.channel,
                }
            }
            "ChannelLeftBridge" => {
                let b: BridgeBody = body(text).map_err(malformed)?;
                let channel = b
                    .channel
                    .ok_or_else(|| malformed(serde::de::Error::missing_field("channel")))?;
                Kind::ChannelLeftBridge {
                    bridge: b.bridge,
                    channel,
                }
            }
            "BridgeDestroyed" => Kind::BridgeDestroyed {
                bridge: body::<BridgeBody>(text).map_err(malformed)?.bridge,
            },
            "PlaybackFinished" => Kind::PlaybackFinished {
                playback: body::<PlaybackBody>(text).map_err(malformed)?.playback,
            },
            "ApplicationReplaced" => Kind::ApplicationReplaced,
            // Unknown or untyped kinds: keep the channel when there is one, so the event can
            // reach that channel's call; a channel field of an unexpected shape is ignored.
            _ => Kind::Other {
                channel: body::<MaybeChannel>(text)
                    .ok()
                    .and_then(|m| m.channel)
                    .map(|c| Channel {
                        id: c.id,
                        ..Channel::default()
                    }),
            },
        };
        Ok(Event {
            kind_name,
            asterisk_id: envelope.asterisk_id,
            application: envelope.application,
            kind,
            raw: text.into(),
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
}
