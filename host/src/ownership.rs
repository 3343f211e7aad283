//! Who owns what: channel → node, playback → call. (Bridges are cluster-wide and belong to
//! `conference.rs`.)
//!
//! Filled from two sources: the events nodes send (every event names its node) and the
//! resources the host creates itself (recorded before the request is sent, so an event for a
//! new channel can never arrive before its owner is known). Entries are forgotten when the
//! resource ends. The index never guesses: an id it does not hold is looked up on the nodes
//! by the router.

use std::collections::HashMap;

use parking_lot::RwLock;

/// Who started a playback, so its PlaybackFinished reaches that call even when it played
/// to a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackOwner {
    pub app: String,
    pub channel: String,
}

/// The ownership index. Cheap, synchronous, never awaited under a lock.
#[derive(Debug, Default)]
pub struct Ownership {
    channels: RwLock<HashMap<String, String>>,
    playbacks: RwLock<HashMap<String, PlaybackOwner>>,
}

impl Ownership {
    pub fn new() -> Ownership {
        Ownership::default()
    }

    pub fn record_channel(&self, channel: &str, node: &str) {
        // Most events repeat what is known: check under the shared lock first.
        if self.channels.read().get(channel).map(String::as_str) == Some(node) {
            return;
        }
        self.channels
            .write()
            .insert(channel.to_string(), node.to_string());
    }

    pub fn channel_node(&self, channel: &str) -> Option<String> {
        self.channels.read().get(channel).cloned()
    }

    pub fn forget_channel(&self, channel: &str) {
        self.channels.write().remove(channel);
    }

    /// Channels owned by `node`.
    pub fn channels_on(&self, node: &str) -> Vec<String> {
        self.channels
            .read()
            .iter()
            .filter(|(_, n)| n.as_str() == node)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Forgets everything a node owned (the node restarted: its ids are gone).
    pub fn forget_node(&self, node: &str) {
        self.channels.write().retain(|_, n| n != node);
    }

    pub fn record_playback(&self, playback: &str, owner: PlaybackOwner) {
        self.playbacks.write().insert(playback.to_string(), owner);
    }

    /// The owner of a playback, forgotten as it is read (a playback finishes once).
    pub fn take_playback(&self, playback: &str) -> Option<PlaybackOwner> {
        self.playbacks.write().remove(playback)
    }

    /// Forgets the playbacks a call started (the call ended before they finished).
    pub fn forget_playbacks_of(&self, channel: &str) {
        self.playbacks.write().retain(|_, o| o.channel != channel);
    }

    /// Sizes, for tests and metrics: (channels, playbacks).
    pub fn sizes(&self) -> (usize, usize) {
        (self.channels.read().len(), self.playbacks.read().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_recorded_and_forgotten() {
        let o = Ownership::new();
        o.record_channel("c1", "a");
        o.record_channel("c2", "b");
        assert_eq!(o.channel_node("c1").as_deref(), Some("a"));
        assert_eq!(o.channels_on("b"), vec!["c2".to_string()]);
        o.forget_channel("c1");
        assert_eq!(o.channel_node("c1"), None);
    }

    #[test]
    fn forgetting_a_node_drops_its_channels() {
        let o = Ownership::new();
        o.record_channel("c1", "a");
        o.record_channel("c2", "b");
        o.forget_node("a");
        assert_eq!(o.sizes(), (1, 0));
        assert_eq!(o.channel_node("c2").as_deref(), Some("b"));
    }

    #[test]
    fn playbacks_are_taken_once() {
        let o = Ownership::new();
        o.record_playback(
            "p1",
            PlaybackOwner {
                app: "conf".into(),
                channel: "c1".into(),
            },
        );
        o.record_playback(
            "p2",
            PlaybackOwner {
                app: "conf".into(),
                channel: "c2".into(),
            },
        );
        assert_eq!(o.take_playback("p1").unwrap().channel, "c1");
        assert_eq!(o.take_playback("p1"), None);
        o.forget_playbacks_of("c2");
        assert_eq!(o.sizes().1, 0);
    }
}
