//! The host side of the `ari`, `log` and `kv` imports.
//!
//! Every `ari` function becomes exactly one [`Operation`] for the app's [`AriBackend`], after a
//! capability check (see `capability.rs`). A denied import logs a warning tagged with app,
//! call and the resource, returns `ari-error::denied`, and sends nothing. Ids of resources the
//! app creates (originated/dialled channels, playbacks) are generated here and granted before
//! the request goes out, so no event about them can arrive before the grant.
//!
//! [`AriBackend`]: crate::backend::AriBackend

use crate::backend::{AriError, BridgeType, MuteDirection, NewCall, Operation, Outcome, Recording};

use super::bindings::{ari, kv, log, wit};
use super::call::{CallState, ImportCtx};
use super::capability::{Resource, fresh_id, plan_raw};

type WitResult<T> = Result<T, wit::AriError>;

impl ImportCtx {
    fn deny(&self, what: &str, why: String) -> wit::AriError {
        tracing::warn!(app = %self.tag.app, call = %self.tag.call, import = what,
            "import denied: {why}");
        wit::AriError::Denied(why)
    }

    /// Checks `resources`, then sends `op`.
    async fn exec(
        &self,
        what: &str,
        resources: &[Resource],
        op: Operation,
    ) -> Result<Outcome, wit::AriError> {
        if let Some(r) = self.app.shared.caps.first_denied(resources) {
            return Err(self.deny(what, format!("{r} does not belong to this app")));
        }
        self.send(op).await
    }

    async fn send(&self, op: Operation) -> Result<Outcome, wit::AriError> {
        self.waited.begin();
        let result = self.app.backend.execute(&self.origin, op).await;
        self.waited.end();
        result.map_err(wit::AriError::from)
    }

    async fn channel_op(&self, what: &str, channel: &str, op: Operation) -> WitResult<()> {
        self.exec(what, &[Resource::Channel(channel.to_owned())], op)
            .await
            .map(drop)
    }

    /// Originate or dial: the runtime picks the channel id and grants it first.
    async fn new_call(
        &self,
        what: &str,
        req: ari::OriginateRequest,
        dial: bool,
    ) -> WitResult<String> {
        let channel_id = fresh_id("c");
        let call = NewCall {
            endpoint: req.endpoint,
            caller_id: req.caller_id,
            variables: req.variables,
            app_args: req.app_args,
            timeout_secs: req.timeout_secs,
            node: req.node,
            channel_id: channel_id.clone(),
        };
        let grant = Resource::Channel(channel_id.clone());
        self.app.shared.caps.grant(&grant);
        let op = if dial {
            Operation::Dial(call)
        } else {
            Operation::Originate(call)
        };
        match self.send(op).await {
            Ok(outcome) => Ok(value_or(outcome, channel_id)),
            Err(e) => {
                self.app.shared.caps.revoke(&grant);
                tracing::debug!(app = %self.tag.app, call = %self.tag.call, import = what, "failed: {e:?}");
                Err(e)
            }
        }
    }

    /// Play on a channel or bridge: the runtime picks the playback id and grants it first.
    async fn play(
        &mut self,
        what: &str,
        target: Resource,
        media: Vec<String>,
    ) -> WitResult<String> {
        if !self.app.shared.caps.allows(&target) {
            return Err(self.deny(what, format!("{target} does not belong to this app")));
        }
        let playback_id = fresh_id("p");
        let grant = Resource::Playback(playback_id.clone());
        self.app.shared.caps.grant(&grant);
        let op = match target {
            Resource::Bridge(bridge) => Operation::PlayOnBridge {
                bridge,
                media,
                playback_id: playback_id.clone(),
            },
            Resource::Channel(channel) => Operation::Play {
                channel,
                media,
                playback_id: playback_id.clone(),
            },
            _ => unreachable!("play targets a channel or a bridge"),
        };
        match self.send(op).await {
            Ok(outcome) => {
                let id = value_or(outcome, playback_id.clone());
                if id != playback_id {
                    // The backend chose another id: the app may act on that one instead.
                    self.app.shared.caps.revoke(&grant);
                    self.app.shared.caps.grant(&Resource::Playback(id.clone()));
                }
                self.owned.push(Resource::Playback(id.clone()));
                Ok(id)
            }
            Err(e) => {
                self.app.shared.caps.revoke(&grant);
                Err(e)
            }
        }
    }
}

/// The id an id-returning operation produced, or the one the runtime chose.
fn value_or(outcome: Outcome, chosen: String) -> String {
    match outcome {
        Outcome::Value(v) if !v.is_empty() => v,
        _ => chosen,
    }
}

fn mute_direction(d: ari::MuteDirection) -> MuteDirection {
    match d {
        ari::MuteDirection::Both => MuteDirection::Both,
        ari::MuteDirection::Inbound => MuteDirection::In,
        ari::MuteDirection::Outbound => MuteDirection::Out,
    }
}

/// The `message` (or `error`) of an ARI error body, else the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.to_owned())
}

impl wit::Host for CallState {}

impl ari::Host for CallState {
    async fn answer(&mut self, channel_id: String) -> WitResult<()> {
        let op = Operation::Answer {
            channel: channel_id.clone(),
        };
        self.imports.channel_op("answer", &channel_id, op).await
    }

    async fn hangup(&mut self, channel_id: String, reason: Option<String>) -> WitResult<()> {
        let op = Operation::Hangup {
            channel: channel_id.clone(),
            reason,
        };
        self.imports.channel_op("hangup", &channel_id, op).await
    }

    async fn ring(&mut self, channel_id: String) -> WitResult<()> {
        let op = Operation::Ring {
            channel: channel_id.clone(),
        };
        self.imports.channel_op("ring", &channel_id, op).await
    }

    async fn play(&mut self, channel_id: String, media: Vec<String>) -> WitResult<String> {
        self.imports
            .play("play", Resource::Channel(channel_id), media)
            .await
    }

    async fn stop_playback(&mut self, playback_id: String) -> WitResult<()> {
        let r = Resource::Playback(playback_id.clone());
        let op = Operation::StopPlayback {
            playback: playback_id,
        };
        self.imports.exec("stop-playback", &[r], op).await.map(drop)
    }

    async fn get_or_create_bridge(
        &mut self,
        bridge_id: String,
        kind: ari::BridgeType,
    ) -> WitResult<String> {
        let imp = &self.imports;
        let app = &imp.app;
        // Bridge ids are cluster-wide and shared by all apps: one app's conference is not
        // another's to join.
        if let Err(owner) = app.runtime.claims.claim(&bridge_id, &app.shared.name) {
            return Err(imp.deny(
                "get-or-create-bridge",
                format!("bridge {bridge_id} belongs to app {owner}"),
            ));
        }
        let kind = match kind {
            ari::BridgeType::Mixing => BridgeType::Mixing,
            ari::BridgeType::Holding => BridgeType::Holding,
        };
        let op = Operation::GetOrCreateBridge {
            bridge: bridge_id.clone(),
            kind,
        };
        match imp.send(op).await {
            Ok(outcome) => {
                let id = value_or(outcome, bridge_id.clone());
                app.shared.caps.grant(&Resource::Bridge(bridge_id.clone()));
                if id != bridge_id {
                    app.shared.caps.grant(&Resource::Bridge(id.clone()));
                }
                Ok(id)
            }
            Err(e) => {
                // Keep the claim only if the app already held the bridge.
                if !app.shared.caps.allows(&Resource::Bridge(bridge_id.clone())) {
                    app.runtime.claims.release(&bridge_id, &app.shared.name);
                }
                Err(e)
            }
        }
    }

    async fn bridge_add(&mut self, bridge_id: String, channel_id: String) -> WitResult<()> {
        let rs = [
            Resource::Bridge(bridge_id.clone()),
            Resource::Channel(channel_id.clone()),
        ];
        let op = Operation::BridgeAdd {
            bridge: bridge_id,
            channel: channel_id,
        };
        self.imports.exec("bridge-add", &rs, op).await.map(drop)
    }

    async fn bridge_remove(&mut self, bridge_id: String, channel_id: String) -> WitResult<()> {
        let rs = [
            Resource::Bridge(bridge_id.clone()),
            Resource::Channel(channel_id.clone()),
        ];
        let op = Operation::BridgeRemove {
            bridge: bridge_id,
            channel: channel_id,
        };
        self.imports.exec("bridge-remove", &rs, op).await.map(drop)
    }

    async fn bridge_destroy(&mut self, bridge_id: String) -> WitResult<()> {
        let r = Resource::Bridge(bridge_id.clone());
        let op = Operation::BridgeDestroy {
            bridge: bridge_id.clone(),
        };
        self.imports
            .exec("bridge-destroy", std::slice::from_ref(&r), op)
            .await?;
        let app = &self.imports.app;
        app.shared.caps.revoke(&r);
        app.runtime.claims.release(&bridge_id, &app.shared.name);
        Ok(())
    }

    async fn play_on_bridge(&mut self, bridge_id: String, media: Vec<String>) -> WitResult<String> {
        self.imports
            .play("play-on-bridge", Resource::Bridge(bridge_id), media)
            .await
    }

    async fn originate(&mut self, request: ari::OriginateRequest) -> WitResult<String> {
        self.imports.new_call("originate", request, false).await
    }

    async fn dial(&mut self, request: ari::OriginateRequest) -> WitResult<String> {
        self.imports.new_call("dial", request, true).await
    }

    async fn get_variable(&mut self, channel_id: String, name: String) -> WitResult<String> {
        let r = Resource::Channel(channel_id.clone());
        let op = Operation::GetVariable {
            channel: channel_id,
            name,
        };
        match self.imports.exec("get-variable", &[r], op).await? {
            Outcome::Value(v) => Ok(v),
            Outcome::Raw { body, .. } => Ok(body),
            Outcome::Done => Ok(String::new()),
        }
    }

    async fn set_variable(
        &mut self,
        channel_id: String,
        name: String,
        value: String,
    ) -> WitResult<()> {
        let op = Operation::SetVariable {
            channel: channel_id.clone(),
            name,
            value,
        };
        self.imports
            .channel_op("set-variable", &channel_id, op)
            .await
    }

    async fn continue_in_dialplan(
        &mut self,
        channel_id: String,
        context: Option<String>,
        exten: Option<String>,
        priority: Option<i32>,
    ) -> WitResult<()> {
        let op = Operation::Continue {
            channel: channel_id.clone(),
            context,
            exten,
            priority,
        };
        self.imports
            .channel_op("continue-in-dialplan", &channel_id, op)
            .await
    }

    async fn start_moh(&mut self, channel_id: String, moh_class: Option<String>) -> WitResult<()> {
        let op = Operation::StartMoh {
            channel: channel_id.clone(),
            class: moh_class,
        };
        self.imports.channel_op("start-moh", &channel_id, op).await
    }

    async fn stop_moh(&mut self, channel_id: String) -> WitResult<()> {
        let op = Operation::StopMoh {
            channel: channel_id.clone(),
        };
        self.imports.channel_op("stop-moh", &channel_id, op).await
    }

    async fn mute(&mut self, channel_id: String, direction: ari::MuteDirection) -> WitResult<()> {
        let op = Operation::Mute {
            channel: channel_id.clone(),
            direction: mute_direction(direction),
        };
        self.imports.channel_op("mute", &channel_id, op).await
    }

    async fn unmute(&mut self, channel_id: String, direction: ari::MuteDirection) -> WitResult<()> {
        let op = Operation::Unmute {
            channel: channel_id.clone(),
            direction: mute_direction(direction),
        };
        self.imports.channel_op("unmute", &channel_id, op).await
    }

    async fn send_dtmf(&mut self, channel_id: String, digits: String) -> WitResult<()> {
        let op = Operation::SendDtmf {
            channel: channel_id.clone(),
            digits,
        };
        self.imports.channel_op("send-dtmf", &channel_id, op).await
    }

    async fn start_recording(
        &mut self,
        channel_id: String,
        options: ari::RecordingOptions,
    ) -> WitResult<String> {
        let r = Resource::Channel(channel_id.clone());
        let name = options.name.clone();
        let op = Operation::Record {
            channel: channel_id,
            options: Recording {
                name: options.name,
                format: options.format,
                max_duration_secs: options.max_duration_secs,
                max_silence_secs: options.max_silence_secs,
                beep: options.beep,
                terminate_on: options.terminate_on,
            },
        };
        let outcome = self.imports.exec("start-recording", &[r], op).await?;
        let name = value_or(outcome, name);
        let rec = Resource::Recording(name.clone());
        self.imports.app.shared.caps.grant(&rec);
        self.imports.owned.push(rec);
        Ok(name)
    }

    async fn request(
        &mut self,
        method: String,
        path: String,
        mut query: Vec<(String, String)>,
        body: Option<String>,
    ) -> WitResult<ari::RawResponse> {
        let imp = &mut self.imports;
        let app = imp.app.clone();
        let plan = match plan_raw(&app.shared.name, &method, &path, &query, body.as_deref()) {
            Ok(plan) => plan,
            Err(why) => return Err(imp.deny("request", why)),
        };
        if let Some(r) = app.shared.caps.first_denied(&plan.check) {
            return Err(imp.deny(
                "request",
                format!("{method} {path}: {r} does not belong to this app"),
            ));
        }
        let mut claimed: Vec<String> = Vec::new();
        for b in &plan.claim_bridges {
            let held = app.shared.caps.allows(&Resource::Bridge(b.clone()));
            if let Err(owner) = app.runtime.claims.claim(b, &app.shared.name) {
                for c in &claimed {
                    app.runtime.claims.release(c, &app.shared.name);
                }
                return Err(imp.deny("request", format!("bridge {b} belongs to app {owner}")));
            }
            if !held {
                claimed.push(b.clone());
            }
        }
        query.extend(plan.add_query);
        let op = Operation::Raw {
            method: method.to_ascii_uppercase(),
            path,
            query,
            body,
        };
        let (status, body) = match imp.send(op).await {
            Ok(Outcome::Raw { status, body }) => (status, body),
            Ok(Outcome::Done) => (204, String::new()),
            Ok(Outcome::Value(v)) => (200, v),
            Err(e) => {
                for c in &claimed {
                    app.runtime.claims.release(c, &app.shared.name);
                }
                return Err(e);
            }
        };
        if !(200..300).contains(&status) {
            for c in &claimed {
                app.runtime.claims.release(c, &app.shared.name);
            }
            return Err(AriError::from_status(status, error_message(&body)).into());
        }
        for r in plan.grant {
            app.shared.caps.grant(&r);
            if matches!(r, Resource::Playback(_) | Resource::Recording(_)) {
                imp.owned.push(r);
            }
        }
        Ok(ari::RawResponse { status, body })
    }
}

impl log::Host for CallState {
    async fn log(&mut self, level: log::Level, message: String) {
        let (app, call) = (&self.imports.tag.app, &self.imports.tag.call);
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "guest", app = %app, call = %call, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "guest", app = %app, call = %call, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "guest", app = %app, call = %call, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "guest", app = %app, call = %call, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "guest", app = %app, call = %call, "{message}")
            }
        }
    }
}

impl kv::Host for CallState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.imports.app.shared.kv.get(&key)
    }

    async fn set(&mut self, key: String, value: String) {
        if let Err(e) = self.imports.app.shared.kv.set(&key, value) {
            let t = &self.imports.tag;
            tracing::warn!(app = %t.app, call = %t.call, key, "kv set dropped: {e}");
        }
    }

    async fn delete(&mut self, key: String) {
        self.imports.app.shared.kv.delete(&key);
    }

    /// On a refused write (key too long, store full) the value is unchanged; the guest
    /// gets the current value (0 when absent).
    async fn increment(&mut self, key: String, delta: i64) -> i64 {
        let kv = &self.imports.app.shared.kv;
        match kv.increment(&key, delta) {
            Ok(v) => v,
            Err(e) => {
                let t = &self.imports.tag;
                tracing::warn!(app = %t.app, call = %t.call, key, "kv increment dropped: {e}");
                kv.get(&key).and_then(|v| v.parse().ok()).unwrap_or(0)
            }
        }
    }
}
