//! Generated bindings for the `stasis:app` world, and conversions from the host's plain
//! types.
//!
//! Imports and exports are generated `async`: an import awaits the ARI backend (a network
//! round trip) without blocking a thread, and exports are driven with the `call_*` async
//! APIs so that the epoch callback can yield and many calls share a few threads.

wasmtime::component::bindgen!({
    world: "app",
    path: "../wit/stasis-app.wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::stasis::app::{ari, kv, log, types as wit};

use super::types::{
    CallContext, CallerId, ChannelSnapshot, ChannelState, NodeEvent, NodeStatus, PlaybackInfo,
    PlaybackState,
};

impl From<ChannelState> for wit::ChannelState {
    fn from(s: ChannelState) -> Self {
        match s {
            ChannelState::Down => Self::Down,
            ChannelState::Rsrved => Self::Rsrved,
            ChannelState::OffHook => Self::OffHook,
            ChannelState::Dialing => Self::Dialing,
            ChannelState::Ring => Self::Ring,
            ChannelState::Ringing => Self::Ringing,
            ChannelState::Up => Self::Up,
            ChannelState::Busy => Self::Busy,
            ChannelState::DialingOffhook => Self::DialingOffhook,
            ChannelState::PreRing => Self::PreRing,
            ChannelState::Unknown => Self::Unknown,
        }
    }
}

impl From<CallerId> for wit::CallerId {
    fn from(c: CallerId) -> Self {
        Self {
            name: c.name,
            number: c.number,
        }
    }
}

impl From<ChannelSnapshot> for wit::Channel {
    fn from(c: ChannelSnapshot) -> Self {
        Self {
            id: c.id,
            name: c.name,
            state: c.state.into(),
            caller: c.caller.into(),
            connected: c.connected.into(),
            context: c.context,
            exten: c.exten,
        }
    }
}

impl From<CallContext> for wit::CallContext {
    fn from(c: CallContext) -> Self {
        Self {
            app: c.app,
            node: c.node,
            channel: c.channel.into(),
            args: c.args,
        }
    }
}

impl From<PlaybackInfo> for wit::Playback {
    fn from(p: PlaybackInfo) -> Self {
        Self {
            id: p.id,
            media_uri: p.media_uri,
            target_uri: p.target_uri,
            state: match p.state {
                PlaybackState::Done => wit::PlaybackState::Done,
                PlaybackState::Failed => wit::PlaybackState::Failed,
            },
        }
    }
}

impl From<NodeEvent> for wit::NodeEvent {
    fn from(n: NodeEvent) -> Self {
        Self {
            node: n.node,
            name: n.name,
            status: match n.status {
                NodeStatus::Up => wit::NodeStatus::Up,
                NodeStatus::Down => wit::NodeStatus::Down,
            },
        }
    }
}

impl From<crate::backend::AriError> for wit::AriError {
    fn from(e: crate::backend::AriError) -> Self {
        use crate::backend::AriError as E;
        match e {
            E::NotFound(m) => Self::NotFound(m),
            E::Denied(m) => Self::Denied(m),
            E::Conflict(m) => Self::Conflict(m),
            E::Invalid(m) => Self::Invalid(m),
            E::Unavailable(m) => Self::Unavailable(m),
            E::Timeout(m) => Self::Timeout(m),
            E::Failed(m) => Self::Failed(m),
        }
    }
}
