use crate::{
    BridgeType, CallContext, ChannelState, MuteDirection, NodeStatus, OriginateRequest,
    PlaybackState, RecordingOptions, Result, raw,
};

pub(crate) fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A channel by id: the call's own channel ([`CallContext::me`]), or one the app originated
/// or dialled ([`channel()`]). Every method is one ARI request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelRef<'a> {
    id: &'a str,
}

/// The channel `id`, e.g. the id [`OriginateRequest::originate`] returned.
pub fn channel(id: &str) -> ChannelRef<'_> {
    ChannelRef { id }
}

impl<'a> ChannelRef<'a> {
    /// The channel id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// Answer the channel.
    pub fn answer(&self) -> Result {
        raw::answer(self.id)
    }

    /// Hang up with reason `normal`.
    pub fn hangup(&self) -> Result {
        raw::hangup(self.id, None)
    }

    /// Hang up with an ARI hangup `reason` (`busy`, `congestion`, `no_answer`, …).
    pub fn hangup_with(&self, reason: &str) -> Result {
        raw::hangup(self.id, Some(reason))
    }

    /// Indicate ringing.
    pub fn ring(&self) -> Result {
        raw::ring(self.id)
    }

    /// Play `media` (`sound:…`, `tone:…`, `digits:…`). Returns the playback id.
    pub fn play(&self, media: &str) -> Result<String> {
        raw::play(self.id, &[media.to_string()])
    }

    /// Play several media URIs one after the other. Returns the playback id.
    pub fn play_all(&self, media: &[&str]) -> Result<String> {
        raw::play(self.id, &owned(media))
    }

    /// Add the channel to bridge `bridge_id` (moving it out of any other bridge).
    pub fn add_to_bridge(&self, bridge_id: &str) -> Result {
        raw::bridge_add(bridge_id, self.id)
    }

    /// Remove the channel from bridge `bridge_id`.
    pub fn remove_from_bridge(&self, bridge_id: &str) -> Result {
        raw::bridge_remove(bridge_id, self.id)
    }

    /// Leave the app and continue in the dialplan where the channel was.
    pub fn continue_in_dialplan(&self) -> Result {
        raw::continue_in_dialplan(self.id, None, None, None)
    }

    /// Leave the app and continue in the dialplan at `context`, `exten`, `priority`.
    pub fn continue_at(&self, context: &str, exten: &str, priority: i32) -> Result {
        raw::continue_in_dialplan(self.id, Some(context), Some(exten), Some(priority))
    }

    /// Read a channel variable or dialplan function, e.g. `CALLERID(num)`.
    pub fn get_var(&self, name: &str) -> Result<String> {
        raw::get_variable(self.id, name)
    }

    /// Set a channel variable.
    pub fn set_var(&self, name: &str, value: &str) -> Result {
        raw::set_variable(self.id, name, value)
    }

    /// Start music on hold, in `class` or the default class.
    pub fn start_moh(&self, class: Option<&str>) -> Result {
        raw::start_moh(self.id, class)
    }

    /// Stop music on hold.
    pub fn stop_moh(&self) -> Result {
        raw::stop_moh(self.id)
    }

    /// Mute the channel in `direction`.
    pub fn mute(&self, direction: MuteDirection) -> Result {
        raw::mute(self.id, direction)
    }

    /// Unmute the channel in `direction`.
    pub fn unmute(&self, direction: MuteDirection) -> Result {
        raw::unmute(self.id, direction)
    }

    /// Send DTMF `digits` to the channel.
    pub fn send_dtmf(&self, digits: &str) -> Result {
        raw::send_dtmf(self.id, digits)
    }

    /// Start recording the channel. Returns the recording name.
    pub fn record(&self, options: &RecordingOptions) -> Result<String> {
        raw::start_recording(self.id, options)
    }
}

/// The call's own channel, as a receiver for ARI operations. Each method is the
/// [`ChannelRef`] method of the same name on [`CallContext::me`].
impl CallContext {
    /// The call's channel id.
    pub fn channel_id(&self) -> &str {
        &self.channel.id
    }

    /// Stasis argument `i`, if present.
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }

    /// The call's own channel as a [`ChannelRef`], for the less common operations.
    pub fn me(&self) -> ChannelRef<'_> {
        channel(&self.channel.id)
    }

    /// Answer the call.
    pub fn answer(&self) -> Result {
        self.me().answer()
    }

    /// Hang the call up (reason `normal`).
    pub fn hangup(&self) -> Result {
        self.me().hangup()
    }

    /// Hang the call up with an ARI hangup `reason`.
    pub fn hangup_with(&self, reason: &str) -> Result {
        self.me().hangup_with(reason)
    }

    /// Indicate ringing to the caller.
    pub fn ring(&self) -> Result {
        self.me().ring()
    }

    /// Play `media` to the caller. Returns the playback id.
    pub fn play(&self, media: &str) -> Result<String> {
        self.me().play(media)
    }

    /// Play several media URIs one after the other. Returns the playback id.
    pub fn play_all(&self, media: &[&str]) -> Result<String> {
        self.me().play_all(media)
    }

    /// Add the call to bridge `bridge_id` (see [`bridge::get_or_create`](crate::bridge::get_or_create)).
    pub fn add_to_bridge(&self, bridge_id: &str) -> Result {
        self.me().add_to_bridge(bridge_id)
    }

    /// Remove the call from bridge `bridge_id`.
    pub fn remove_from_bridge(&self, bridge_id: &str) -> Result {
        self.me().remove_from_bridge(bridge_id)
    }

    /// Get-or-create bridge `bridge_id` of `kind` and add the call to it.
    pub fn join_bridge(&self, bridge_id: &str, kind: BridgeType) -> Result {
        crate::bridge::get_or_create(bridge_id, kind)?;
        self.add_to_bridge(bridge_id)
    }

    /// Leave the app and continue in the dialplan where the call was.
    pub fn continue_in_dialplan(&self) -> Result {
        self.me().continue_in_dialplan()
    }

    /// Leave the app and continue in the dialplan at `context`, `exten`, `priority`.
    pub fn continue_at(&self, context: &str, exten: &str, priority: i32) -> Result {
        self.me().continue_at(context, exten, priority)
    }

    /// Read a variable of the call's channel.
    pub fn get_var(&self, name: &str) -> Result<String> {
        self.me().get_var(name)
    }

    /// Set a variable on the call's channel.
    pub fn set_var(&self, name: &str, value: &str) -> Result {
        self.me().set_var(name, value)
    }

    /// Send DTMF `digits` to the caller.
    pub fn send_dtmf(&self, digits: &str) -> Result {
        self.me().send_dtmf(digits)
    }
}

impl OriginateRequest {
    /// A call to `endpoint` (e.g. `PJSIP/alice`, `Local/8000@default`) with ARI's defaults.
    pub fn new(endpoint: &str) -> Self {
        OriginateRequest {
            endpoint: endpoint.to_string(),
            caller_id: None,
            variables: Vec::new(),
            app_args: Vec::new(),
            timeout_secs: None,
            node: None,
        }
    }

    /// Caller id to present, e.g. `"Alice" <1001>`.
    pub fn caller_id(mut self, caller_id: &str) -> Self {
        self.caller_id = Some(caller_id.to_string());
        self
    }

    /// Set channel variable `name` on the new channel.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.variables.push((name.to_string(), value.to_string()));
        self
    }

    /// Stasis arguments the new channel enters the app with.
    pub fn app_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.app_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Seconds to wait for an answer.
    pub fn timeout_secs(mut self, secs: u32) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    /// The node (its `asterisk_id`) to place the call on.
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// Place the call (`POST /channels`); the answered channel starts a new call of this app.
    /// Returns the new channel id.
    pub fn originate(&self) -> Result<String> {
        raw::originate(self)
    }

    /// Create the channel in this app, then dial it. Returns the new channel id.
    pub fn dial(&self) -> Result<String> {
        raw::dial(self)
    }
}

impl RecordingOptions {
    /// Record into `name` (no extension) in `format` (e.g. `wav`): no limits, no beep, no
    /// terminating key.
    pub fn new(name: &str, format: &str) -> Self {
        RecordingOptions {
            name: name.to_string(),
            format: format.to_string(),
            max_duration_secs: 0,
            max_silence_secs: 0,
            beep: false,
            terminate_on: "none".to_string(),
        }
    }
}

impl ChannelState {
    /// The WIT case name, e.g. `ring`, `up`, `dialing-offhook`.
    pub fn name(self) -> &'static str {
        match self {
            ChannelState::Down => "down",
            ChannelState::Rsrved => "rsrved",
            ChannelState::OffHook => "off-hook",
            ChannelState::Dialing => "dialing",
            ChannelState::Ring => "ring",
            ChannelState::Ringing => "ringing",
            ChannelState::Up => "up",
            ChannelState::Busy => "busy",
            ChannelState::DialingOffhook => "dialing-offhook",
            ChannelState::PreRing => "pre-ring",
            ChannelState::Unknown => "unknown",
        }
    }
}

impl PlaybackState {
    /// The WIT case name: `done` or `failed`.
    pub fn name(self) -> &'static str {
        match self {
            PlaybackState::Done => "done",
            PlaybackState::Failed => "failed",
        }
    }
}

impl NodeStatus {
    /// The WIT case name: `up` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
        }
    }
}

impl BridgeType {
    /// The WIT case name: `mixing` or `holding`.
    pub fn name(self) -> &'static str {
        match self {
            BridgeType::Mixing => "mixing",
            BridgeType::Holding => "holding",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originate_builder() {
        let r = OriginateRequest::new("Local/9001@default")
            .caller_id("\"A\" <1>")
            .var("X", "1")
            .app_args(["child"])
            .timeout_secs(5)
            .node("02:00:00:00:00:0a");
        assert_eq!(r.endpoint, "Local/9001@default");
        assert_eq!(r.caller_id.as_deref(), Some("\"A\" <1>"));
        assert_eq!(r.variables, vec![("X".to_string(), "1".to_string())]);
        assert_eq!(r.app_args, vec!["child".to_string()]);
        assert_eq!(r.timeout_secs, Some(5));
        assert_eq!(r.node.as_deref(), Some("02:00:00:00:00:0a"));
    }

    #[test]
    fn recording_defaults() {
        let o = RecordingOptions::new("x", "wav");
        assert_eq!((o.max_duration_secs, o.beep), (0, false));
        assert_eq!(o.terminate_on, "none");
    }

    #[test]
    fn wit_names() {
        assert_eq!(ChannelState::DialingOffhook.name(), "dialing-offhook");
        assert_eq!(ChannelState::PreRing.name(), "pre-ring");
        assert_eq!(PlaybackState::Failed.name(), "failed");
        assert_eq!(NodeStatus::Down.name(), "down");
        assert_eq!(BridgeType::Mixing.name(), "mixing");
    }
}
