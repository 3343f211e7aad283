//! A facade client's event filter, and the filter the nodes get for its app.
//!
//! Asterisk filters an app's events on the node (`PUT /applications/{app}/eventFilter`). The
//! host reads the same events for its own bookkeeping: the ownership index forgets a channel
//! at `StasisEnd` or `ChannelDestroyed`, and the facade's routing depends on that index. A
//! client that filtered those out would leave the host blind to how its calls end. So the
//! nodes get the client's filter widened by the host's kinds ([`HOST_EVENTS`]), and the host
//! applies the client's own filter to what it delivers: the client sees the events Asterisk
//! would have sent it, the host sees what it needs, and the client reads its own filter back.
//!
//! The client's body keeps Asterisk's meaning (`resource_applications.c`, `res/stasis/app.c`):
//! only an `application/json` body is read; none, or `{}`, clears both lists; otherwise
//! `disallowed`, then `allowed`, each replaces its list if given, and an invalid list stops
//! there without undoing the first; a top-level array is both lists. The nodes get the same
//! body widened list by list, so they validate it and answer a bad one as they would have
//! answered the client's, and [`ClientFilter::after`] tells what they then hold.

use axum::http::HeaderValue;
use serde_json::{Value, json};

use crate::event::HOST_EVENTS;

/// The filter as the client set it: Asterisk's two lists of `{"type": …}` objects, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    allowed: Vec<Value>,
    disallowed: Vec<Value>,
}

/// A request's JSON entity as Asterisk's `ast_http_get_json` reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Entity {
    /// No body, or one not sent as `application/json`: the handler sees none.
    Absent,
    /// A JSON object or array.
    Json(Value),
    /// Not a JSON object or array: the node answers 400 and changes nothing.
    Unreadable,
}

impl Entity {
    pub fn read(content_type: Option<&HeaderValue>, body: &[u8]) -> Entity {
        // The type, parameters aside, case-insensitively.
        let is_json = content_type
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !is_json || body.is_empty() {
            return Entity::Absent;
        }
        match serde_json::from_slice(body) {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => Entity::Json(v),
            _ => Entity::Unreadable,
        }
    }

    /// The body the nodes get instead of this one: each valid list widened (see the module
    /// docs); `None` when the client's body goes as it is (it clears the filter, or the node
    /// refuses it whole).
    pub fn for_nodes(&self) -> Option<Value> {
        match self {
            Entity::Json(Value::Array(list)) if valid(list) => Some(json!({
                "disallowed": narrowed(list),
                "allowed": widened(list),
            })),
            Entity::Json(Value::Object(fields)) if !fields.is_empty() => {
                let mut fields = fields.clone();
                if let Some(Value::Array(list)) = fields.get("disallowed")
                    && valid(list)
                {
                    fields.insert("disallowed".into(), Value::Array(narrowed(list)));
                }
                if let Some(Value::Array(list)) = fields.get("allowed")
                    && valid(list)
                {
                    fields.insert("allowed".into(), Value::Array(widened(list)));
                }
                Some(Value::Object(fields))
            }
            _ => None,
        }
    }
}

impl ClientFilter {
    /// The filter after a `PUT eventFilter` with `entity`, as a node sets it, whether or not
    /// the node then refuses the request (see the module docs).
    pub fn after(&self, entity: &Entity) -> ClientFilter {
        let mut next = self.clone();
        match entity {
            Entity::Unreadable => {}
            Entity::Absent => next = ClientFilter::default(),
            Entity::Json(Value::Object(fields)) if fields.is_empty() => {
                next = ClientFilter::default()
            }
            Entity::Json(Value::Object(fields)) => {
                for (key, list) in [
                    ("disallowed", &mut next.disallowed),
                    ("allowed", &mut next.allowed),
                ] {
                    match fields.get(key) {
                        None => {}
                        Some(Value::Array(items)) if valid(items) => list.clone_from(items),
                        Some(_) => break,
                    }
                }
            }
            Entity::Json(Value::Array(items)) => {
                if valid(items) {
                    next.disallowed.clone_from(items);
                    next.allowed.clone_from(items);
                }
            }
            Entity::Json(_) => {}
        }
        next
    }

    /// Whether the client gets an event of type `kind` (`stasis_app_event_allowed`: not
    /// disallowed, and allowed when the allowed list is empty or lists it).
    pub fn allows(&self, kind: &str) -> bool {
        let listed = |list: &[Value]| list.iter().any(|f| f["type"] == kind);
        !listed(&self.disallowed) && (self.allowed.is_empty() || listed(&self.allowed))
    }

    /// The filter the nodes hold for the client's app: both lists, host kinds let through.
    pub fn for_nodes(&self) -> Value {
        json!({
            "allowed": widened(&self.allowed),
            "disallowed": narrowed(&self.disallowed),
        })
    }

    /// Shows this filter in an Application object (the nodes' answers show the widened one).
    pub fn show_in(&self, application: &mut Value) {
        if let Some(fields) = application.as_object_mut() {
            fields.insert("events_allowed".into(), Value::Array(self.allowed.clone()));
            fields.insert(
                "events_disallowed".into(),
                Value::Array(self.disallowed.clone()),
            );
        }
    }
}

/// A list Asterisk takes: objects, each with a non-empty string `type`.
fn valid(list: &[Value]) -> bool {
    list.iter()
        .all(|f| f["type"].as_str().is_some_and(|t| !t.is_empty()))
}

/// An allowed list that also lets the host's kinds through (an empty one lets all through).
fn widened(list: &[Value]) -> Vec<Value> {
    let mut out = list.to_vec();
    if !out.is_empty() {
        for kind in HOST_EVENTS {
            if !out.iter().any(|f| f["type"] == *kind) {
                out.push(json!({ "type": kind }));
            }
        }
    }
    out
}

/// A disallowed list without the host's kinds.
fn narrowed(list: &[Value]) -> Vec<Value> {
    list.iter()
        .filter(|f| !HOST_EVENTS.iter().any(|kind| f["type"] == *kind))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| f["type"].as_str().unwrap())
            .collect()
    }

    fn json_entity(v: Value) -> Entity {
        Entity::read(
            Some(&HeaderValue::from_static("application/json; charset=utf-8")),
            v.to_string().as_bytes(),
        )
    }

    #[test]
    fn only_a_json_object_or_array_sent_as_json_is_read() {
        let json = HeaderValue::from_static("Application/JSON");
        let text = HeaderValue::from_static("text/plain");
        assert_eq!(Entity::read(Some(&text), b"{}"), Entity::Absent);
        assert_eq!(Entity::read(None, b"[]"), Entity::Absent);
        assert_eq!(Entity::read(Some(&json), b""), Entity::Absent);
        assert_eq!(Entity::read(Some(&json), b"\"x\""), Entity::Unreadable);
        assert_eq!(Entity::read(Some(&json), b"{"), Entity::Unreadable);
        assert_eq!(Entity::read(Some(&json), b"[]"), Entity::Json(json!([])));
    }

    #[test]
    fn the_nodes_let_the_hosts_kinds_through_whatever_the_client_asks() {
        let entity = json_entity(json!({
            "allowed": [{"type": "StasisStart"}, {"type": "ChannelVarset"}],
            "disallowed": [{"type": "StasisEnd"}, {"type": "ChannelHold"}],
        }));
        let body = entity.for_nodes().unwrap();
        let allowed = types(&body["allowed"]);
        for kind in HOST_EVENTS {
            assert!(allowed.contains(kind), "{kind} in {allowed:?}");
        }
        assert_eq!(allowed.iter().filter(|t| **t == "StasisStart").count(), 1);
        assert!(allowed.contains(&"ChannelVarset"));
        assert_eq!(types(&body["disallowed"]), ["ChannelHold"]);

        // The client still gets only what it asked for.
        let filter = ClientFilter::default().after(&entity);
        assert!(filter.allows("StasisStart") && filter.allows("ChannelVarset"));
        assert!(!filter.allows("StasisEnd") && !filter.allows("ChannelDestroyed"));
        assert!(!filter.allows("ChannelHold"));
        assert_eq!(filter.for_nodes(), body);

        // An empty allowed list lets everything through: nothing to add.
        let open = json_entity(json!({"allowed": []})).for_nodes().unwrap();
        assert_eq!(open["allowed"], json!([]));
    }

    #[test]
    fn a_body_changes_the_lists_as_asterisk_does() {
        let start = ClientFilter::default().after(&json_entity(json!({
            "allowed": [{"type": "StasisStart"}],
            "disallowed": [{"type": "ChannelHold"}],
        })));
        // One list given: the other stays.
        let only_allowed = start.after(&json_entity(json!({"allowed": [{"type": "Dial"}]})));
        assert!(only_allowed.allows("Dial") && !only_allowed.allows("StasisStart"));
        assert_eq!(only_allowed.disallowed, start.disallowed);
        // A bad allowed list after a good disallowed one: disallowed is set, allowed is not.
        let partial = start.after(&json_entity(json!({
            "disallowed": [{"type": "Dial"}],
            "allowed": [{"name": "x"}],
        })));
        assert_eq!(partial.allowed, start.allowed);
        assert_eq!(partial.disallowed, vec![json!({"type": "Dial"})]);
        // A bad disallowed list changes nothing.
        let bad = json_entity(json!({"disallowed": "Dial", "allowed": []}));
        assert_eq!(start.after(&bad), start);
        assert_eq!(bad.for_nodes().unwrap()["disallowed"], "Dial");
        // An array is both lists; no body or `{}` clears both; unreadable changes nothing.
        let both = start.after(&json_entity(json!([{"type": "Dial"}])));
        assert_eq!(both.allowed, both.disallowed);
        assert!(!both.allows("Dial") && !both.allows("StasisStart"));
        assert_eq!(start.after(&Entity::Absent), ClientFilter::default());
        assert_eq!(
            start.after(&json_entity(json!({}))),
            ClientFilter::default()
        );
        assert_eq!(start.after(&Entity::Unreadable), start);
        assert_eq!(json_entity(json!({})).for_nodes(), None);
    }

    #[test]
    fn an_application_shows_the_clients_filter() {
        let filter = ClientFilter::default().after(&json_entity(json!({
            "allowed": [{"type": "StasisStart"}],
        })));
        let mut app = json!({"name": "ext", "events_allowed": filter.for_nodes()["allowed"]});
        filter.show_in(&mut app);
        assert_eq!(app["events_allowed"], json!([{"type": "StasisStart"}]));
        assert_eq!(app["events_disallowed"], json!([]));
        assert_eq!(app["name"], "ext");
    }
}
