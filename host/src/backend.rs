//! The ARI operations an app can ask for, and the trait that carries them out.
//!
//! The runtime turns each guest import into one [`Operation`] and hands it, after the
//! capability check, to an [`AriBackend`]. The backend owns everything past that point:
//! which node owns the resource, the HTTP request, cluster-wide bridges. Tests plug in a
//! backend that records operations; the host plugs in the router.
//!
//! Operations are typed rather than raw HTTP so that the router can give cluster-wide
//! meaning to some of them (a bridge id is one conference across nodes) and so that tests
//! can assert on exactly what an app asked for.

use std::future::Future;
use std::pin::Pin;

/// A typed failure of an ARI operation; mirrors the WIT `ari-error` variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum AriError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("denied: {0}")]
    Denied(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("timeout: {0}")]
    Timeout(String),
    #[error("failed: {0}")]
    Failed(String),
}

impl AriError {
    /// Classifies a non-2xx ARI response the way the guest sees it.
    pub fn from_status(status: u16, message: String) -> Self {
        match status {
            404 => AriError::NotFound(message),
            // Asterisk answers 400 both for a missing parameter and for "Channel not found"
            // on addChannel; only the latter is a not-found.
            400 if message.to_ascii_lowercase().contains("not found") => {
                AriError::NotFound(message)
            }
            400 => AriError::Invalid(message),
            401 | 403 => AriError::Denied(message),
            409 | 422 => AriError::Conflict(message),
            503 => AriError::Unavailable(message),
            504 | 408 => AriError::Timeout(message),
            _ => AriError::Failed(format!("HTTP {status}: {message}")),
        }
    }
}

/// Bridge mixing type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BridgeType {
    Mixing,
    Holding,
}

impl BridgeType {
    /// The value of ARI's `type` parameter.
    pub fn as_ari(self) -> &'static str {
        match self {
            BridgeType::Mixing => "mixing",
            BridgeType::Holding => "holding",
        }
    }
}

/// Audio direction for mute/unmute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteDirection {
    Both,
    In,
    Out,
}

impl MuteDirection {
    /// The value of ARI's `direction` parameter.
    pub fn as_ari(self) -> &'static str {
        match self {
            MuteDirection::Both => "both",
            MuteDirection::In => "in",
            MuteDirection::Out => "out",
        }
    }
}

/// A new call to place (originate or create+dial).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewCall {
    pub endpoint: String,
    pub caller_id: Option<String>,
    pub variables: Vec<(String, String)>,
    pub app_args: Vec<String>,
    pub timeout_secs: Option<u32>,
    /// The node (asterisk_id) to place the call on; `None` lets the backend choose.
    pub node: Option<String>,
    /// The channel id the host chose for the new channel (ARI `channelId`). The runtime
    /// picks it before the request so the capability is granted before any event of the
    /// new channel can arrive.
    pub channel_id: String,
}

/// Options of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub name: String,
    pub format: String,
    pub max_duration_secs: u32,
    pub max_silence_secs: u32,
    pub beep: bool,
    pub terminate_on: String,
}

/// One ARI operation, as an app asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Answer {
        channel: String,
    },
    Hangup {
        channel: String,
        reason: Option<String>,
    },
    Ring {
        channel: String,
    },
    Play {
        channel: String,
        media: Vec<String>,
        playback_id: String,
    },
    StopPlayback {
        playback: String,
    },
    GetOrCreateBridge {
        bridge: String,
        kind: BridgeType,
    },
    BridgeAdd {
        bridge: String,
        channel: String,
    },
    BridgeRemove {
        bridge: String,
        channel: String,
    },
    BridgeDestroy {
        bridge: String,
    },
    PlayOnBridge {
        bridge: String,
        media: Vec<String>,
        playback_id: String,
    },
    Originate(NewCall),
    Dial(NewCall),
    GetVariable {
        channel: String,
        name: String,
    },
    SetVariable {
        channel: String,
        name: String,
        value: String,
    },
    Continue {
        channel: String,
        context: Option<String>,
        exten: Option<String>,
        priority: Option<i32>,
    },
    StartMoh {
        channel: String,
        class: Option<String>,
    },
    StopMoh {
        channel: String,
    },
    Mute {
        channel: String,
        direction: MuteDirection,
    },
    Unmute {
        channel: String,
        direction: MuteDirection,
    },
    SendDtmf {
        channel: String,
        digits: String,
    },
    Record {
        channel: String,
        options: Recording,
    },
    /// The escape hatch: `path` is relative to `/ari`, e.g. `/channels/X/snoop`.
    Raw {
        method: String,
        path: String,
        query: Vec<(String, String)>,
        body: Option<String>,
    },
}

/// What a successful operation returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to return (204-style operations).
    Done,
    /// An id (bridge, channel, playback, recording name) or a variable's value.
    Value(String),
    /// The response of a raw request.
    Raw { status: u16, body: String },
}

/// Who is asking: the app and the call whose callback made the import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The app's name.
    pub app: String,
    /// The node (asterisk_id) of the calling instance's channel.
    pub node: String,
    /// The calling instance's channel id.
    pub channel: String,
}

/// A boxed future, so the backend can sit behind `Arc<dyn AriBackend>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries out ARI operations on behalf of apps. Implemented by the router (real nodes)
/// and by test doubles.
pub trait AriBackend: Send + Sync + 'static {
    /// Executes one operation. Called only after the capability check passed.
    fn execute<'a>(
        &'a self,
        origin: &'a Origin,
        op: Operation,
    ) -> BoxFuture<'a, Result<Outcome, AriError>>;
}
