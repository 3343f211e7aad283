//! Plain Rust types the rest of the host uses to talk to the runtime about calls.
//!
//! They mirror the WIT `types` interface but are independent of the `bindgen!` output, so
//! dispatch and ingress never import generated code and the generated types can change
//! without rippling through the host. Conversions into the generated types live in
//! `bindings.rs`.

/// ARI's channel states (`Channel.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChannelState {
    Down,
    Rsrved,
    OffHook,
    Dialing,
    Ring,
    Ringing,
    Up,
    Busy,
    DialingOffhook,
    PreRing,
    #[default]
    Unknown,
}

impl ChannelState {
    /// Parses ARI's `Channel.state` string ("Up", "Dialing Offhook", "Pre-ring", ...).
    /// Unknown strings map to [`ChannelState::Unknown`].
    pub fn from_ari(state: &str) -> Self {
        match state {
            "Down" => Self::Down,
            "Rsrved" => Self::Rsrved,
            "OffHook" => Self::OffHook,
            "Dialing" => Self::Dialing,
            "Ring" => Self::Ring,
            "Ringing" => Self::Ringing,
            "Up" => Self::Up,
            "Busy" => Self::Busy,
            "Dialing Offhook" => Self::DialingOffhook,
            "Pre-ring" => Self::PreRing,
            _ => Self::Unknown,
        }
    }
}

/// A party's caller id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallerId {
    pub name: String,
    pub number: String,
}

/// A snapshot of a call's channel, as of the latest event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelSnapshot {
    pub id: String,
    pub name: String,
    pub state: ChannelState,
    pub caller: CallerId,
    pub connected: CallerId,
    pub context: String,
    pub exten: String,
}

/// What a call starts with: the StasisStart of its channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallContext {
    /// The app's name (ARI application).
    pub app: String,
    /// The node (asterisk_id) the channel lives on.
    pub node: String,
    /// The call's channel.
    pub channel: ChannelSnapshot,
    /// Stasis arguments.
    pub args: Vec<String>,
}

/// The state a playback ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackState {
    Done,
    Failed,
}

/// A finished playback (`PlaybackFinished`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackInfo {
    pub id: String,
    pub media_uri: String,
    pub target_uri: String,
    pub state: PlaybackState,
}

/// Whether a node is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Up,
    Down,
}

/// A change in a node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// The node's asterisk_id.
    pub node: String,
    /// The node's configured name.
    pub name: String,
    pub status: NodeStatus,
}

/// An event for one call, turned into one guest callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// The channel became Up → `on-up`.
    Up,
    /// A DTMF digit ended → `on-dtmf`.
    Dtmf { digit: String, duration_ms: u32 },
    /// A playback started by this call finished → `on-playback-finished`.
    PlaybackFinished(PlaybackInfo),
    /// Any other ARI event about the call → `on-event`.
    /// `json` is shared with the event as the node sent it: no copy per delivery.
    Other {
        kind: String,
        json: std::sync::Arc<str>,
    },
    /// A node went down or came back → `on-node`.
    Node(NodeEvent),
    /// StasisEnd → `on-end`, then the instance is dropped.
    End,
}

impl CallEvent {
    /// The WIT name of the callback this event runs (for logs and reports).
    pub fn callback_name(&self) -> &'static str {
        match self {
            CallEvent::Up => "on-up",
            CallEvent::Dtmf { .. } => "on-dtmf",
            CallEvent::PlaybackFinished(_) => "on-playback-finished",
            CallEvent::Other { .. } => "on-event",
            CallEvent::Node(_) => "on-node",
            CallEvent::End => "on-end",
        }
    }
}
