//! ARI playbacks on channels and bridges: a per-target queue, items that finish after a
//! configured time, media lists, and the control operations.
//!
//! Recorded behaviour reproduced here: `PlaybackStarted` when an item starts; a media list emits
//! `PlaybackContinuing` between items (same playback id); `DELETE` gives `PlaybackFinished` with
//! state `done`; a hangup gives `failed`; a queued playback that is deleted finishes (`done`,
//! never started) only when the one before it ends; `pause`/`unpause` (a fresh
//! `PlaybackStarted`), 409s for controls on paused or queued media, and `tone:` media never end.

use crate::bridge::uuid_like;
use crate::error::AriError;
use crate::params::Params;
use crate::state::{Action, Id, NodeState, Val};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    Channel(Id),
    Bridge(Id),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum PbState {
    Queued,
    Playing,
    Paused,
}

#[derive(Debug)]
pub(crate) struct Playback {
    pub id: Id,
    pub media: Vec<String>,
    pub idx: usize,
    pub target: Target,
    pub language: String,
    pub state: PbState,
    pub generation: u64,
    /// Deleted while still queued: finishes (done) when its turn comes.
    pub cancelled: bool,
}

impl Playback {
    fn target_uri(&self) -> String {
        match &self.target {
            Target::Channel(c) => format!("channel:{c}"),
            Target::Bridge(b) => format!("bridge:{b}"),
        }
    }

    /// The ARI `Playback` model with an explicit state string.
    fn json_with(&self, state: &str) -> String {
        let mut s = String::with_capacity(200);
        s.push_str("{\"id\":");
        crate::state::push_json_str(&mut s, &self.id);
        s.push_str(",\"media_uri\":");
        crate::state::push_json_str(&mut s, &self.media[self.idx.min(self.media.len() - 1)]);
        if let Some(next) = self.media.get(self.idx + 1) {
            s.push_str(",\"next_media_uri\":");
            crate::state::push_json_str(&mut s, next);
        }
        s.push_str(",\"target_uri\":");
        crate::state::push_json_str(&mut s, &self.target_uri());
        s.push_str(",\"language\":");
        crate::state::push_json_str(&mut s, &self.language);
        s.push_str(",\"state\":");
        crate::state::push_json_str(&mut s, state);
        s.push('}');
        s
    }

    fn json(&self) -> String {
        self.json_with(match self.state {
            PbState::Queued => "queued",
            PbState::Playing => "playing",
            PbState::Paused => "paused",
        })
    }
}

impl NodeState {
    fn pb_targets(&self, target: &Target) -> Vec<Id> {
        match target {
            Target::Channel(c) => self
                .channels
                .get(c)
                .map(|c| self.chan_targets(c))
                .unwrap_or_default(),
            Target::Bridge(b) => {
                let mut v = self
                    .bridges
                    .get(b)
                    .map(|b| b.apps.clone())
                    .unwrap_or_default();
                self.add_subscribe_all(&mut v);
                v
            }
        }
    }

    fn emit_pb(&mut self, ty: &str, pb: &Id, state: &str) {
        let Some(p) = self.playbacks.get(pb) else {
            return;
        };
        let json = p.json_with(state);
        let targets = self.pb_targets(&p.target);
        self.emit_other(ty, &[("playback", Val::Raw(&json))], &targets);
    }

    /// `POST /channels/{id}/play[/{playbackId}]` and `POST /bridges/{id}/play[/{playbackId}]`.
    pub(crate) fn play_api(
        &mut self,
        target: Target,
        p: &Params,
        path_pb: Option<&str>,
    ) -> Result<String, AriError> {
        match &target {
            Target::Channel(c) => {
                let ch = self.chan(c)?;
                if ch.stasis.is_none() {
                    return Err(AriError::not_in_stasis());
                }
            }
            Target::Bridge(b) => {
                if !self.bridges.contains_key(b) {
                    return Err(AriError::not_found("Bridge"));
                }
            }
        }
        let media: Vec<String> = p
            .get("media")
            .ok_or_else(|| AriError::msg(400, "Missing parameter media"))?
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        if media.is_empty() {
            return Err(AriError::msg(400, "Missing parameter media"));
        }
        let id: Id = match path_pb.or(p.get("playbackId")) {
            Some(id) => id.into(),
            None => {
                self.pb_seq += 1;
                uuid_like(self.epoch, self.pb_seq, 0xa).into()
            }
        };
        if self.playbacks.contains_key(&id) {
            return Err(AriError::msg(409, "Playback with given id already exists"));
        }
        let pb = Playback {
            id: id.clone(),
            media,
            idx: 0,
            target: target.clone(),
            language: p.get("lang").unwrap_or("en").to_string(),
            state: PbState::Queued,
            generation: 0,
            cancelled: false,
        };
        let json = pb.json();
        self.playbacks.insert(id.clone(), pb);
        let first = match &target {
            Target::Channel(c) => {
                let q = &mut self.channels.get_mut(c).expect("checked").playbacks;
                q.push_back(id.clone());
                q.len() == 1
            }
            Target::Bridge(b) => {
                let q = &mut self.bridges.get_mut(b).expect("checked").playbacks;
                q.push_back(id.clone());
                q.len() == 1
            }
        };
        if first {
            self.start_item(&id);
        }
        Ok(json)
    }

    /// Start (or restart) the current item of `pb`.
    fn start_item(&mut self, pb: &Id) {
        let Some(p) = self.playbacks.get_mut(pb) else {
            return;
        };
        p.state = PbState::Playing;
        p.generation += 1;
        let generation = p.generation;
        let media = p.media[p.idx].clone();
        self.emit_pb("PlaybackStarted", pb, "playing");
        if let Some(ms) = self.media_ms(&media) {
            self.later(
                ms,
                Action::PlaybackDone {
                    pb: pb.clone(),
                    generation,
                },
            );
        }
    }

    /// Timer: the current item of `pb` ended.
    pub(crate) fn playback_done(&mut self, pb: &Id, generation: u64) {
        let Some(p) = self.playbacks.get_mut(pb) else {
            return;
        };
        if p.generation != generation || p.state != PbState::Playing {
            return;
        }
        if p.idx + 1 < p.media.len() {
            self.emit_pb("PlaybackContinuing", pb, "continuing");
            if let Some(p) = self.playbacks.get_mut(pb) {
                p.idx += 1;
            }
            self.start_item(pb);
        } else {
            self.finish_playback(pb, "done");
        }
    }

    /// PlaybackFinished, removal, and the next queued playback of the same target starts.
    fn finish_playback(&mut self, pb: &Id, state: &str) {
        self.emit_pb("PlaybackFinished", pb, state);
        let Some(p) = self.playbacks.remove(pb) else {
            return;
        };
        let queue = match &p.target {
            Target::Channel(c) => self.channels.get_mut(c).map(|c| &mut c.playbacks),
            Target::Bridge(b) => self.bridges.get_mut(b).map(|b| &mut b.playbacks),
        };
        let Some(queue) = queue else {
            return;
        };
        queue.retain(|x| x != pb);
        let next = queue.front().cloned();
        if let Some(next) = next {
            if self.playbacks.get(&next).is_some_and(|n| n.cancelled) {
                self.finish_playback(&next, "done");
            } else {
                self.start_item(&next);
            }
        }
    }

    /// A playback whose channel is going away (already removed from the channel's queue).
    pub(crate) fn finish_playback_dropped(&mut self, pb: &Id, state: &str) {
        let started = self
            .playbacks
            .get(pb)
            .is_some_and(|p| p.state != PbState::Queued || p.cancelled);
        if started {
            self.emit_pb("PlaybackFinished", pb, state);
        }
        self.playbacks.remove(pb);
    }

    fn pb(&self, id: &str) -> Result<&Playback, AriError> {
        self.playbacks
            .get(id)
            .filter(|p| !p.cancelled)
            .ok_or_else(|| AriError::not_found("Playback"))
    }

    pub(crate) fn get_playback(&self, id: &str) -> Result<String, AriError> {
        Ok(self.pb(id)?.json())
    }

    /// `DELETE /playbacks/{id}`.
    pub(crate) fn stop_playback(&mut self, id: &str) -> Result<(), AriError> {
        let p = self.pb(id)?;
        let pid = p.id.clone();
        if p.state == PbState::Queued {
            if let Some(p) = self.playbacks.get_mut(id) {
                p.cancelled = true;
            }
            return Ok(());
        }
        self.finish_playback(&pid, "done");
        Ok(())
    }

    /// `POST /playbacks/{id}/control?operation=`.
    pub(crate) fn control_playback(&mut self, id: &str, p: &Params) -> Result<(), AriError> {
        let pb = self.pb(id)?;
        let pid = pb.id.clone();
        let state = pb.state;
        let op = p
            .get("operation")
            .ok_or_else(|| AriError::msg(400, "Missing operation"))?;
        if !matches!(op, "pause" | "unpause" | "restart" | "forward" | "reverse") {
            return Err(AriError::msg(400, &format!("Invalid operation {op}")));
        }
        match (op, state) {
            (_, PbState::Queued) => Err(AriError::msg(
                409,
                &format!("Can only {op} while media is playing"),
            )),
            ("pause", PbState::Playing) => {
                let p = self.playbacks.get_mut(id).expect("checked");
                p.state = PbState::Paused;
                p.generation += 1;
                Ok(())
            }
            ("pause", PbState::Paused) | ("unpause", PbState::Playing) => Ok(()),
            ("unpause", PbState::Paused) => {
                self.start_item(&pid);
                Ok(())
            }
            (_, PbState::Paused) => Err(AriError::msg(
                409,
                &format!("Can only {op} while media is playing"),
            )),
            ("restart", _) => {
                // Restart the current item: re-arm its timer without a new event.
                let p = self.playbacks.get_mut(id).expect("checked");
                p.generation += 1;
                let generation = p.generation;
                let media = p.media[p.idx].clone();
                if let Some(ms) = self.media_ms(&media) {
                    self.later(
                        ms,
                        Action::PlaybackDone {
                            pb: pid,
                            generation,
                        },
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
