//! Stasis applications: created by a websocket or an AMQP registration (`POST /ari/amqp/{app}`,
//! Wazo's `res_ari_amqp`), replaced by a newer one, removed when their owning websocket closes
//! or by `DELETE /ari/amqp/{app}`; plus `/applications` REST and event subscriptions.
//!
//! Recorded rules: the newest websocket for an app wins and the older one receives
//! `ApplicationReplaced` but stays open (it simply gets nothing more); the new owner takes over
//! the events of calls already in the app; closing a replaced socket keeps the app, closing the
//! owner removes it (`GET /applications/{app}` → 404). AMQP registrations are listed like
//! websocket apps; `POST` answers 204 also when the app exists, `DELETE` 204 also when unknown.
//!
//! AMQP vs websocket, as Asterisk's `app_update` does it: the old owner is told
//! `ApplicationReplaced` only if it is a websocket (the AMQP module registers its handler without
//! data, so a websocket taking an AMQP app over publishes nothing). `DELETE /ari/amqp/{app}` is
//! `stasis_app_unregister`: it removes the app whoever owns it (a websocket owner stays open and
//! simply receives nothing more).
//!
//! Event filter, as Asterisk's `resource_applications.c` / `res/stasis/app.c` implement
//! `PUT /applications/{app}/eventFilter`: unknown app → 404 `Application not found`. The body
//! is read only when sent as `application/json` (`ast_http_get_json`; otherwise it counts as
//! absent) and must then be a JSON object or array (else 400 `Error parsing request body`). No
//! body or `{}` → both lists reset to empty. An object with keys: each of `disallowed`, then
//! `allowed`, if absent leaves its list unchanged, if present must be an array of objects with
//! a non-empty string `type` (else 400 `Invalid format definition`) and replaces its list.
//! `disallowed` is set first, so a bad `allowed` still leaves a good `disallowed` set (and a bad
//! `disallowed` changes nothing). A top-level array is taken as both lists. 200 → the
//! Application, whose `events_allowed` / `events_disallowed` (also in `GET /applications[/x]`)
//! are the objects as sent. Filtering (`stasis_app_event_allowed`): an event goes out iff its
//! `type` is in no `disallowed` object and (`allowed` is empty or lists it) — disallowed wins.
//! Like Asterisk, only the websocket path filters (`ApplicationReplaced` to the old socket
//! included); events published over AMQP are never filtered. The filter belongs to the app: it
//! survives takeovers (websocket or AMQP) and goes away with the app.

use serde::Serialize;
use serde_json::Value;

use crate::error::AriError;
use crate::params::Params;
use crate::state::{App, Conn, Ev, Id, NodeState, Owner, Val};

#[derive(Serialize)]
struct AppJson<'a> {
    name: &'a str,
    channel_ids: Vec<&'a str>,
    bridge_ids: Vec<&'a str>,
    endpoint_ids: &'a [&'a str],
    device_names: &'a [String],
    events_allowed: &'a [Value],
    events_disallowed: &'a [Value],
}

impl App {
    /// `stasis_app_event_allowed`: not disallowed, and allowed (an empty list allows all).
    pub(crate) fn event_allowed(&self, ty: &str) -> bool {
        let listed = |list: &[Value]| list.iter().any(|f| f["type"] == ty);
        !listed(&self.events_disallowed)
            && (self.events_allowed.is_empty() || listed(&self.events_allowed))
    }
}

/// `app_event_filter_set` for one list (`key` is `allowed` or `disallowed`).
fn set_filter(list: &mut Vec<Value>, body: Option<&Value>, key: &str) -> Result<(), AriError> {
    let filter = match body {
        Some(Value::Object(o)) if o.is_empty() => None,
        Some(Value::Object(o)) => match o.get(key) {
            // Another key is given, not this one: leave this list as it is.
            None => return Ok(()),
            some => some,
        },
        other => other,
    };
    match filter {
        None => list.clear(),
        Some(Value::Array(items))
            if items
                .iter()
                .all(|f| f["type"].as_str().is_some_and(|t| !t.is_empty())) =>
        {
            list.clone_from(items)
        }
        Some(_) => return Err(AriError::msg(400, "Invalid format definition")),
    }
    Ok(())
}

impl NodeState {
    /// A websocket connected for `names`. Older websocket owners get ApplicationReplaced.
    pub(crate) fn register_ws(&mut self, names: &[String], subscribe_all: bool, conn: &Conn) {
        for name in names {
            let same = matches!(
                self.apps.get(name.as_str()).map(|a| &a.owner),
                Some(Owner::Ws(c)) if c.id == conn.id
            );
            if !same {
                self.take_app(name, Owner::Ws(conn.clone()), subscribe_all);
            }
        }
        self.any_subscribe_all = self.apps.values().any(|a| a.subscribe_all);
    }

    /// `POST /ari/amqp/{app}`: the AMQP module owns `name` from now on (204 in every case).
    pub(crate) fn register_amqp(&mut self, name: &str) {
        if !matches!(self.apps.get(name).map(|a| &a.owner), Some(Owner::Amqp)) {
            self.take_app(name, Owner::Amqp, false);
        }
        self.any_subscribe_all = self.apps.values().any(|a| a.subscribe_all);
    }

    /// `DELETE /ari/amqp/{app}`: the app goes away, whoever owns it (204 even if unknown).
    pub(crate) fn unregister_amqp(&mut self, name: &str) {
        self.apps.remove(name);
        self.any_subscribe_all = self.apps.values().any(|a| a.subscribe_all);
    }

    /// Create `name` for `owner`, or hand it over to `owner` (a websocket owner that loses it
    /// gets ApplicationReplaced; an AMQP owner is told nothing).
    fn take_app(&mut self, name: &str, owner: Owner, subscribe_all: bool) {
        if let Some(app) = self.apps.get_mut(name) {
            let old = std::mem::replace(&mut app.owner, owner);
            app.subscribe_all = subscribe_all;
            // An app message like any other: the (kept) event filter applies to it.
            if let Owner::Ws(old) = old
                && app.event_allowed("ApplicationReplaced")
            {
                let mut ev = Ev::new();
                ev.head("ApplicationReplaced");
                ev.field("application", &Val::S(name));
                ev.buf.push_str("\"asterisk_id\":");
                crate::state::push_json_str(&mut ev.buf, &self.cfg.asterisk_id);
                ev.buf.push('}');
                let _ = old.tx.send(ev.buf);
            }
        } else {
            self.apps.insert(
                name.into(),
                App {
                    owner,
                    subscribe_all,
                    endpoints: Vec::new(),
                    devices: Vec::new(),
                    events_allowed: Vec::new(),
                    events_disallowed: Vec::new(),
                },
            );
        }
    }

    /// A websocket closed: the apps it still owns disappear.
    pub(crate) fn unregister_conn(&mut self, conn_id: u64) {
        self.apps
            .retain(|_, a| !matches!(&a.owner, Owner::Ws(c) if c.id == conn_id));
        self.any_subscribe_all = self.apps.values().any(|a| a.subscribe_all);
    }

    fn app_json(&self, name: &str) -> Option<String> {
        let app = self.apps.get(name)?;
        let mut channel_ids: Vec<&str> = self
            .channels
            .values()
            .filter(|c| {
                c.stasis.as_ref().is_some_and(|s| &*s.app == name)
                    || c.apps.iter().any(|a| &**a == name)
            })
            .map(|c| &*c.id)
            .collect();
        channel_ids.sort_unstable();
        let mut bridge_ids: Vec<&str> = self
            .bridges
            .values()
            .filter(|b| b.apps.iter().any(|a| &**a == name))
            .map(|b| &*b.id)
            .collect();
        bridge_ids.sort_unstable();
        // One entry per endpoint, however many times it was subscribed.
        let mut endpoint_ids: Vec<&str> = Vec::new();
        for e in &app.endpoints {
            if !endpoint_ids.contains(&e.as_str()) {
                endpoint_ids.push(e);
            }
        }
        serde_json::to_string(&AppJson {
            name,
            channel_ids,
            bridge_ids,
            endpoint_ids: &endpoint_ids,
            device_names: &app.devices,
            events_allowed: &app.events_allowed,
            events_disallowed: &app.events_disallowed,
        })
        .ok()
    }

    pub(crate) fn list_apps(&self) -> String {
        let mut names: Vec<&Id> = self.apps.keys().collect();
        names.sort();
        let parts: Vec<String> = names.iter().filter_map(|n| self.app_json(n)).collect();
        format!("[{}]", parts.join(","))
    }

    pub(crate) fn get_app(&self, name: &str) -> Result<String, AriError> {
        self.app_json(name)
            .ok_or_else(|| AriError::not_found("Application"))
    }

    /// `PUT /applications/{app}/eventFilter` (`body`: the JSON body, `None` if there is none).
    pub(crate) fn event_filter_api(
        &mut self,
        name: &str,
        body: Option<&Value>,
    ) -> Result<String, AriError> {
        let app = self
            .apps
            .get_mut(name)
            .ok_or_else(|| AriError::not_found("Application"))?;
        // `disallowed` first, as `stasis_app_event_filter_set` does (no rollback on error).
        set_filter(&mut app.events_disallowed, body, "disallowed")?;
        set_filter(&mut app.events_allowed, body, "allowed")?;
        self.get_app(name)
    }

    /// `POST|DELETE /applications/{app}/subscription?eventSource=channel:x,bridge:y,...`,
    /// as `app_handle_subscriptions` does it: the sources one by one, in order, stopping at
    /// the first that fails (those before it stay done). A scheme other than `channel:`,
    /// `bridge:`, `endpoint:` or `deviceState:` → 400; a channel, bridge or endpoint that does
    /// not exist (`endpoint_exists`) → 422 `Event source does not exist`; unsubscribing from a
    /// source the app is not subscribed to → 422 `Event source was not subscribed to`. An endpoint subscription is counted
    /// (`++forwards->interested`): subscribed twice, it takes two unsubscribes. A device's is
    /// not (`subscribe_device_state` does nothing when subscribed already). Asterisk counts
    /// channel and bridge subscriptions too (a channel in Stasis counts once for its app);
    /// here those are a set, and unsubscribing an app from its own Stasis channel changes
    /// nothing.
    pub(crate) fn subscribe_api(
        &mut self,
        name: &str,
        p: &Params,
        subscribe: bool,
        endpoint_exists: impl Fn(&str) -> bool,
    ) -> Result<String, AriError> {
        let Some((key, _)) = self.apps.get_key_value(name) else {
            return Err(AriError::not_found("Application"));
        };
        let key = key.clone();
        let sources = p
            .get("eventSource")
            .ok_or_else(|| AriError::msg(400, "Missing parameter eventSource"))?
            .to_string();
        let missing = || AriError::msg(422, "Event source does not exist");
        let not_subscribed = || AriError::msg(422, "Event source was not subscribed to");
        for src in sources.split(',') {
            let Some((kind, id)) = src.split_once(':') else {
                return Err(AriError::msg(400, "Invalid event source URI scheme"));
            };
            match kind {
                "channel" => {
                    let Some(ch) = self.channels.get_mut(id) else {
                        return Err(if subscribe {
                            missing()
                        } else {
                            not_subscribed()
                        });
                    };
                    let subscribed =
                        ch.apps.contains(&key) || ch.stasis.as_ref().is_some_and(|s| s.app == key);
                    if subscribe {
                        if !ch.apps.contains(&key) {
                            ch.apps.push(key.clone());
                        }
                    } else if subscribed {
                        ch.apps.retain(|a| *a != key);
                    } else {
                        return Err(not_subscribed());
                    }
                }
                "bridge" => {
                    let Some(b) = self.bridges.get_mut(id) else {
                        return Err(if subscribe {
                            missing()
                        } else {
                            not_subscribed()
                        });
                    };
                    if subscribe {
                        if !b.apps.contains(&key) {
                            b.apps.push(key.clone());
                        }
                    } else if b.apps.contains(&key) {
                        b.apps.retain(|a| *a != key);
                    } else {
                        return Err(not_subscribed());
                    }
                }
                "endpoint" => {
                    let app = self.apps.get_mut(&key).expect("checked");
                    if subscribe {
                        if !endpoint_exists(id) {
                            return Err(missing());
                        }
                        app.endpoints.push(id.to_string());
                    } else {
                        let at = app.endpoints.iter().position(|e| e == id);
                        app.endpoints.remove(at.ok_or_else(not_subscribed)?);
                    }
                }
                "deviceState" => {
                    let app = self.apps.get_mut(&key).expect("checked");
                    let at = app.devices.iter().position(|d| d == id);
                    match (subscribe, at) {
                        (true, None) => app.devices.push(id.to_string()),
                        (true, Some(_)) => {}
                        (false, Some(at)) => {
                            app.devices.remove(at);
                        }
                        (false, None) => return Err(not_subscribed()),
                    }
                }
                _ => return Err(AriError::msg(400, "Invalid event source URI scheme")),
            }
        }
        self.get_app(name)
    }
}
