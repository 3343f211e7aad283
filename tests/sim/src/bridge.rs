//! Bridges: creation with a chosen id, membership (add/remove/move), destruction, and the
//! events a real node sends for them.
//!
//! Observed rules this module implements:
//! - no `BridgeCreated` for a bridge the app creates;
//! - an app is subscribed to a bridge while one of its channels is in it; a channel that leaves
//!   by `removeChannel`, by moving to another bridge or by the bridge's destruction unsubscribes
//!   its app, one that leaves because it hung up does not;
//! - so deleting a bridge that still holds channels sends `ChannelLeftBridge` per channel and no
//!   `BridgeDestroyed`, while deleting one emptied by hangups sends `BridgeDestroyed`;
//! - `addChannel` of a channel already in a bridge moves it (LeftBridge + EnteredBridge, even for
//!   the same bridge); a missing channel → 400 (nothing added), not in Stasis → 422.

use std::collections::VecDeque;

use serde::Serialize;

use crate::error::AriError;
use crate::params::Params;
use crate::state::{Id, NodeState, Val};

#[derive(Debug)]
pub(crate) struct Bridge {
    pub id: Id,
    pub bridge_type: String,
    pub name: String,
    pub channels: Vec<Id>,
    pub creationtime: String,
    /// Apps subscribed to this bridge's events.
    pub apps: Vec<Id>,
    pub playbacks: VecDeque<Id>,
    pub seq: u64,
    pub moh: bool,
}

#[derive(Serialize)]
struct BridgeJson<'a> {
    id: &'a str,
    technology: &'a str,
    bridge_type: &'a str,
    bridge_class: &'a str,
    creator: &'a str,
    name: &'a str,
    channels: Vec<&'a str>,
    creationtime: &'a str,
    video_mode: &'a str,
}

impl Bridge {
    pub(crate) fn json(&self) -> String {
        let technology = match self.bridge_type.as_str() {
            "holding" => "holding_bridge",
            _ if self.channels.len() > 2 => "softmix",
            _ => "simple_bridge",
        };
        serde_json::to_string(&BridgeJson {
            id: &self.id,
            technology,
            bridge_type: &self.bridge_type,
            bridge_class: "stasis",
            creator: "Stasis",
            name: &self.name,
            channels: self.channels.iter().map(|c| &**c).collect(),
            creationtime: &self.creationtime,
            video_mode: "talker",
        })
        .unwrap_or_default()
    }
}

impl NodeState {
    fn bridge(&self, id: &str) -> Result<&Bridge, AriError> {
        self.bridges
            .get(id)
            .ok_or_else(|| AriError::not_found("Bridge"))
    }

    /// `POST /bridges` and `POST /bridges/{bridgeId}` (an existing id → 409, no update).
    pub(crate) fn create_bridge(
        &mut self,
        p: &Params,
        path_id: Option<&str>,
    ) -> Result<String, AriError> {
        let id: String = match path_id.or(p.get("bridgeId")) {
            Some(id) => id.to_string(),
            None => self.new_bridge_uuid(),
        };
        if self.bridges.contains_key(id.as_str()) {
            return Err(AriError::msg(
                409,
                &format!("Bridge with id '{id}' already exists"),
            ));
        }
        let bridge_type = p
            .get("type")
            .and_then(|t| t.split(',').next())
            .unwrap_or("mixing")
            .to_string();
        self.seq += 1;
        let b = Bridge {
            id: id.as_str().into(),
            bridge_type,
            name: p.get("name").unwrap_or("").to_string(),
            channels: Vec::new(),
            creationtime: crate::time::now_ts(),
            apps: Vec::new(),
            playbacks: VecDeque::new(),
            seq: self.seq,
            moh: false,
        };
        let json = b.json();
        self.bridges.insert(id.as_str().into(), b);
        Ok(json)
    }

    fn new_bridge_uuid(&mut self) -> String {
        self.pb_seq += 1;
        uuid_like(self.epoch, self.pb_seq, 0xb)
    }

    pub(crate) fn get_bridge(&self, id: &str) -> Result<String, AriError> {
        Ok(self.bridge(id)?.json())
    }

    pub(crate) fn list_bridges(&self) -> String {
        let mut v: Vec<&Bridge> = self.bridges.values().collect();
        v.sort_by_key(|b| b.seq);
        let parts: Vec<String> = v.iter().map(|b| b.json()).collect();
        format!("[{}]", parts.join(","))
    }

    /// `POST /bridges/{id}/addChannel?channel=a,b`.
    pub(crate) fn add_channels_api(&mut self, bid: &str, p: &Params) -> Result<(), AriError> {
        self.bridge(bid)?;
        let list = p
            .get("channel")
            .ok_or_else(|| AriError::msg(400, "Missing parameter channel"))?;
        let ids: Vec<&str> = list.split(',').filter(|s| !s.is_empty()).collect();
        for id in &ids {
            if !self.channels.contains_key(*id) {
                return Err(AriError::msg(400, "Channel not found"));
            }
        }
        for id in &ids {
            if self.channels[*id].stasis.is_none() {
                return Err(AriError::msg(422, "Channel not in Stasis application"));
            }
        }
        for id in ids {
            if self.channels[id].bridge.is_some() {
                self.bridge_leave(id, false);
            }
            self.bridge_enter(bid, id);
        }
        Ok(())
    }

    /// `POST /bridges/{id}/removeChannel?channel=`.
    pub(crate) fn remove_channels_api(&mut self, bid: &str, p: &Params) -> Result<(), AriError> {
        self.bridge(bid)?;
        let list = p
            .get("channel")
            .ok_or_else(|| AriError::msg(400, "Missing parameter channel"))?;
        let ids: Vec<&str> = list.split(',').filter(|s| !s.is_empty()).collect();
        for id in &ids {
            let Some(ch) = self.channels.get(*id) else {
                return Err(AriError::msg(400, "Channel not found"));
            };
            if ch.bridge.as_deref() != Some(bid) {
                return Err(AriError::msg(422, "Channel not in this bridge"));
            }
        }
        for id in ids {
            self.bridge_leave(id, false);
        }
        Ok(())
    }

    /// `DELETE /bridges/{id}`.
    pub(crate) fn destroy_bridge_api(&mut self, bid: &str) -> Result<(), AriError> {
        self.bridge(bid)?;
        let members = self.bridges[bid].channels.clone();
        for id in members {
            self.bridge_leave(&id, false);
        }
        let Some(b) = self.bridges.remove(bid) else {
            return Ok(());
        };
        for pb in &b.playbacks {
            self.playbacks.remove(pb);
        }
        let mut targets = b.apps.clone();
        self.add_subscribe_all(&mut targets);
        let json = b.json();
        self.emit_other("BridgeDestroyed", &[("bridge", Val::Raw(&json))], &targets);
        Ok(())
    }

    pub(crate) fn bridge_moh_api(&mut self, bid: &str, on: bool) -> Result<(), AriError> {
        self.bridge(bid)?;
        if let Some(b) = self.bridges.get_mut(bid) {
            b.moh = on;
        }
        Ok(())
    }

    /// Put channel `cid` (in Stasis, in no bridge) into bridge `bid`.
    pub(crate) fn bridge_enter(&mut self, bid: &str, cid: &str) {
        let Some(app) = self
            .channels
            .get(cid)
            .and_then(|c| c.stasis.as_ref().map(|s| s.app.clone()))
        else {
            return;
        };
        let Some(b) = self.bridges.get_mut(bid) else {
            return;
        };
        let bid_id = b.id.clone();
        b.channels.push(cid.into());
        if !b.apps.contains(&app) {
            b.apps.push(app);
        }
        let json = b.json();
        if let Some(ch) = self.channels.get_mut(cid) {
            ch.bridge = Some(bid_id);
        }
        self.emit_chan(
            cid,
            "ChannelEnteredBridge",
            &[],
            &[("bridge", Val::Raw(&json))],
        );
        self.update_bridgepeers(bid);
    }

    /// Take `cid` out of its bridge. `hangup`: the channel is going away (its app stays
    /// subscribed to the bridge); otherwise the app is unsubscribed if none of its channels
    /// remain.
    pub(crate) fn bridge_leave(&mut self, cid: &str, hangup: bool) {
        let Some(bid) = self.channels.get_mut(cid).and_then(|c| c.bridge.take()) else {
            return;
        };
        let app = self
            .channels
            .get(cid)
            .and_then(|c| c.stasis.as_ref().map(|s| s.app.clone()));
        let Some(b) = self.bridges.get_mut(&bid) else {
            return;
        };
        b.channels.retain(|c| &**c != cid);
        let json = b.json();
        // The event goes to the bridge's subscribers and the channel's.
        let ch_targets = self
            .channels
            .get(cid)
            .map(|c| self.chan_targets(c))
            .unwrap_or_default();
        let chan_json = self.channels.get(cid).map(|c| c.json()).unwrap_or_default();
        let mut targets = self.bridges[&bid].apps.clone();
        for t in ch_targets {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        self.emit_other(
            "ChannelLeftBridge",
            &[
                ("bridge", Val::Raw(&json)),
                ("channel", Val::Raw(&chan_json)),
            ],
            &targets,
        );
        if !hangup && let Some(app) = app {
            let still = self.bridges[&bid].channels.iter().any(|c| {
                self.channels
                    .get(c)
                    .and_then(|c| c.stasis.as_ref())
                    .is_some_and(|s| s.app == app)
            });
            if !still && let Some(b) = self.bridges.get_mut(&bid) {
                b.apps.retain(|a| *a != app);
            }
        }
        let had_peer = self
            .channels
            .get(cid)
            .and_then(|c| c.vars.get("BRIDGEPEER"))
            .is_some_and(|v| !v.is_empty());
        if had_peer {
            self.set_var(cid, "BRIDGEPEER", "");
        }
        if self.bridges[&bid].channels.len() >= 2 {
            self.update_bridgepeers(&bid);
        }
    }

    /// `BRIDGEPEER` = the names of the other members, set when it changes (2+ members).
    fn update_bridgepeers(&mut self, bid: &str) {
        let Some(b) = self.bridges.get(bid) else {
            return;
        };
        if b.channels.len() < 2 {
            return;
        }
        let members = b.channels.clone();
        let names: Vec<String> = members
            .iter()
            .map(|c| {
                self.channels
                    .get(c)
                    .map(|c| c.name.clone())
                    .unwrap_or_default()
            })
            .collect();
        for (i, m) in members.iter().enumerate() {
            let value: Vec<&str> = names
                .iter()
                .enumerate()
                .rev()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| n.as_str())
                .collect();
            let value = value.join(",");
            let current = self.channels.get(m).and_then(|c| c.vars.get("BRIDGEPEER"));
            if current.map(String::as_str) != Some(value.as_str()) {
                self.set_var(m, "BRIDGEPEER", &value);
            }
        }
    }
}

/// A uuid-shaped id (playback and bridge ids Asterisk generates are uuids).
pub(crate) fn uuid_like(a: u64, b: u64, kind: u8) -> String {
    let x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        (x >> 32) as u32,
        (x >> 16) as u16,
        (x & 0xfff) as u16,
        8 + (kind & 3),
        (b & 0xfff) as u16,
        b & 0xffff_ffff_ffff
    )
}
