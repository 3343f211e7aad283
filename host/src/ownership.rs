//! Who owns what: channel → node, bridge → nodes, playback → call.
//!
//! Filled from two sources: the events nodes send (every event names its node) and the
//! resources the host creates itself (recorded before the request is sent, so an event for a
//! new channel can never arrive before its owner is known). Entries are forgotten when the
//! resource ends. The index never guesses: an id it does not hold is looked up on the nodes
//! by the router.
//!
//! A bridge id is cluster-wide (one conference), so a bridge maps to every node that holds a
//! part of it, in the order the parts were created; the first is the bridge's home.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::backend::BridgeType;

/// Where a cluster-wide bridge lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeParts {
    pub kind: BridgeType,
    /// Node names holding a local bridge with this id; the first is the home.
    pub nodes: Vec<String>,
}

impl BridgeParts {
    pub fn home(&self) -> &str {
        &self.nodes[0]
    }
}

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
    bridges: RwLock<HashMap<String, BridgeParts>>,
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
        self.channels.write().insert(channel.to_string(), node.to_string());
    }

    pub fn channel_node(&self, channel: &str) -> Option<String> {
        self.channels.read().get(channel).cloned()
    }

    pub fn forget_channel(&self, channel: &str) {
        self.channels.write().remove(channel);
    }

    /// Channels owned by `node`.
    pub fn channels_on(&self, node: &str) -> Vec<String> {
        self.channels.read().iter().filter(|(_, n)| n.as_str() == node).map(|(c, _)| c.clone()).collect()
    }

    /// Records that `node` holds a part of bridge `bridge`; the first node recorded is home.
    pub fn record_bridge(&self, bridge: &str, kind: BridgeType, node: &str) {
        let mut bridges = self.bridges.write();
        let parts = bridges.entry(bridge.to_string()).or_insert_with(|| BridgeParts { kind, nodes: Vec::new() });
        if !parts.nodes.iter().any(|n| n == node) {
            parts.nodes.push(node.to_string());
        }
    }

    pub fn bridge(&self, bridge: &str) -> Option<BridgeParts> {
        self.bridges.read().get(bridge).cloned()
    }

    /// Forgets one node's part of a bridge (BridgeDestroyed from that node); the bridge is
    /// forgotten with its last part.
    pub fn forget_bridge_part(&self, bridge: &str, node: &str) {
        let mut bridges = self.bridges.write();
        if let Some(parts) = bridges.get_mut(bridge) {
            parts.nodes.retain(|n| n != node);
            if parts.nodes.is_empty() {
                bridges.remove(bridge);
            }
        }
    }

    pub fn forget_bridge(&self, bridge: &str) {
        self.bridges.write().remove(bridge);
    }

    /// Forgets everything a node owned (the node restarted: its ids are gone).
    pub fn forget_node(&self, node: &str) {
        self.channels.write().retain(|_, n| n != node);
        let mut bridges = self.bridges.write();
        bridges.values_mut().for_each(|p| p.nodes.retain(|n| n != node));
        bridges.retain(|_, p| !p.nodes.is_empty());
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

    /// Sizes, for tests and metrics: (channels, bridges, playbacks).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.channels.read().len(), self.bridges.read().len(), self.playbacks.read().len())
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
    fn bridge_home_is_the_first_part_and_survives_until_the_last() {
        let o = Ownership::new();
        o.record_bridge("conf", BridgeType::Mixing, "b");
        o.record_bridge("conf", BridgeType::Mixing, "a");
        o.record_bridge("conf", BridgeType::Mixing, "b");
        let parts = o.bridge("conf").unwrap();
        assert_eq!(parts.home(), "b");
        assert_eq!(parts.nodes, vec!["b", "a"]);
        o.forget_bridge_part("conf", "b");
        assert_eq!(o.bridge("conf").unwrap().home(), "a");
        o.forget_bridge_part("conf", "a");
        assert!(o.bridge("conf").is_none());
    }

    #[test]
    fn forgetting_a_node_drops_its_channels_and_bridge_parts() {
        let o = Ownership::new();
        o.record_channel("c1", "a");
        o.record_channel("c2", "b");
        o.record_bridge("x", BridgeType::Holding, "a");
        o.record_bridge("y", BridgeType::Mixing, "a");
        o.record_bridge("y", BridgeType::Mixing, "b");
        o.forget_node("a");
        assert_eq!(o.sizes(), (1, 1, 0));
        assert_eq!(o.bridge("y").unwrap().nodes, vec!["b"]);
    }

    #[test]
    fn playbacks_are_taken_once() {
        let o = Ownership::new();
        o.record_playback("p1", PlaybackOwner { app: "conf".into(), channel: "c1".into() });
        o.record_playback("p2", PlaybackOwner { app: "conf".into(), channel: "c2".into() });
        assert_eq!(o.take_playback("p1").unwrap().channel, "c1");
        assert_eq!(o.take_playback("p1"), None);
        o.forget_playbacks_of("c2");
        assert_eq!(o.sizes().2, 0);
    }
}
