//! ARI REST over the event websocket: a `RESTRequest` text message is answered with a
//! `RESTResponse` on the same socket, as Asterisk 22.4 (21.9, 20.14) and later do
//! (`res/ari/ari_websocket_requests.c`, `ari_websockets.c`):
//!
//! - The request runs through the same handlers as over HTTP, without per-request
//!   authentication (the socket was authenticated), one at a time per socket.
//! - `uri` is relative to `/ari/` and is not percent-decoded; its query string, then
//!   `query_strings` (name/value pairs), then an `application/x-www-form-urlencoded`
//!   `message_body` give the parameters (first occurrence wins); an `application/json`
//!   `message_body` is the JSON entity.
//! - The answer has `type`, `transaction_id` and `request_id` (echoed, `""` when absent),
//!   `status_code`, `reason_phrase` (Asterisk's response text), `uri` (without the query),
//!   `content_type` and `message_body` (the compact JSON text) when there is a body, then
//!   `application` (the socket's first app), `timestamp` and `asterisk_id`.
//! - It is sent like an event of the socket's first app: that app's event filter applies.
//! - A text that is not JSON gets a 400 "Failed to parse request message JSON" with empty
//!   ids; a malformed request a 400 "Bad request" with `{"message": …}` saying what is wrong.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::node::{LoggedRequest, NodeInner};
use crate::params::Params;
use crate::rest::Ok2;
use crate::state::push_json_str;

/// The answer to one text message from a client, if the socket's first app may receive it.
pub(crate) fn answer(node: &Arc<NodeInner>, first_app: &str, text: &str) -> Option<String> {
    let response = respond(node, text);
    let allowed = node
        .state
        .lock()
        .apps
        .get(first_app)
        .is_some_and(|a| a.event_allowed("RESTResponse"));
    allowed.then(|| finish(node, response, first_app))
}

/// What `send_rest_response` packs.
struct Response {
    transaction_id: String,
    request_id: String,
    status: u16,
    reason: String,
    uri: String,
    body: Option<String>,
}

impl Response {
    fn bad(ids: (String, String), uri: String, message: &str) -> Response {
        Response {
            transaction_id: ids.0,
            request_id: ids.1,
            status: 400,
            reason: "Bad request".into(),
            uri,
            body: Some(serde_json::json!({ "message": message }).to_string()),
        }
    }
}

fn respond(node: &Arc<NodeInner>, text: &str) -> Response {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        return Response {
            transaction_id: String::new(),
            request_id: String::new(),
            status: 400,
            reason: "Failed to parse request message JSON".into(),
            uri: String::new(),
            body: None,
        };
    };
    // Valid JSON that is not an object has no `type` (`ast_json_object_get` finds nothing).
    let string = |key: &str| msg.get(key).and_then(Value::as_str).map(str::to_string);
    let ids = (
        string("transaction_id").unwrap_or_default(),
        string("request_id").unwrap_or_default(),
    );
    match string("type").as_deref() {
        None | Some("") => return Response::bad(ids, String::new(), "No 'type' property."),
        Some("RESTRequest") => {}
        Some(_) => return Response::bad(ids, String::new(), "Unknown request type."),
    }
    let Some(full_uri) = string("uri").filter(|u| !u.is_empty()) else {
        return Response::bad(ids, String::new(), "Empty or missing 'uri' property.");
    };
    let (uri, query) = match full_uri.split_once('?') {
        Some((uri, query)) => (uri.to_string(), Some(query.to_string())),
        None => (full_uri, None),
    };
    let mut pairs: Vec<(String, String)> = query
        .as_deref()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let method = match string("method").as_deref() {
        Some(m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS")) => {
            Method::from_bytes(m.as_bytes()).expect("a known method")
        }
        _ => return Response::bad(ids, uri, "Unknown or missing 'method' property."),
    };
    match msg.get("query_strings") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let pair = item.as_object().and_then(|o| {
                    Some((
                        o.get("name")?.as_str()?.to_string(),
                        o.get("value")?.as_str()?.to_string(),
                    ))
                });
                match pair {
                    Some(p) => pairs.push(p),
                    None => {
                        return Response::bad(ids, uri, "Unable to parse 'query_strings' array.");
                    }
                }
            }
        }
        Some(_) => return Response::bad(ids, uri, "Unable to parse 'query_strings' array."),
    }
    let mut json_body: Option<Vec<u8>> = None;
    if let Some(body) = string("message_body").filter(|b| !b.is_empty()) {
        match string("content_type").as_deref() {
            None | Some("") => {
                return Response::bad(ids, uri, "No 'content_type' for 'message_body'.");
            }
            Some("application/x-www-form-urlencoded") => {
                match serde_urlencoded::from_str::<Vec<(String, String)>>(&body) {
                    Ok(form) if !form.is_empty() => pairs.extend(form),
                    _ => {
                        return Response::bad(
                            ids,
                            uri,
                            "Unable to parse 'message_body' as 'application/x-www-form-urlencoded'.",
                        );
                    }
                }
            }
            Some("application/json") => {
                if serde_json::from_str::<Value>(&body).is_err() {
                    return Response::bad(
                        ids,
                        uri,
                        "Unable to parse 'message_body' as 'application/json'.",
                    );
                }
                json_body = Some(body.into_bytes());
            }
            Some(_) => return Response::bad(ids, uri, "Unknown content type."),
        }
    }

    // The same handlers as HTTP. The uri is not decoded on this path, so `%` and `+` stay as
    // they are (the handlers decode path segments as HTTP delivers them encoded).
    let path = format!("/ari/{}", uri.replace('%', "%25").replace('+', "%2B"));
    let query_text = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    let mut p = Params::parse(None, json_body.as_deref().unwrap_or_default());
    p.prepend(pairs);
    let outcome = crate::rest::handle(node, &method, &path, &p, json_body.as_deref());
    let (status, body) = match outcome {
        Ok(Ok2::Json(b)) => (200, Some(b)),
        Ok(Ok2::Created(b)) => (201, Some(b)),
        Ok(Ok2::NoContent) => (204, None),
        Err(e) => (e.status, Some(e.body)),
    };
    node.log_request(LoggedRequest {
        method: method.to_string(),
        path: format!("/ari/{uri}"),
        query: query_text,
        status,
        over_websocket: true,
    });
    Response {
        transaction_id: ids.0,
        request_id: ids.1,
        status,
        reason: reason(status).into(),
        uri,
        body: body.map(|b| compact(&b)),
    }
}

/// `response_text` as Asterisk's `ast_ari_response_*` functions and handlers set it.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        _ => StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error"),
    }
}

/// Asterisk re-encodes the body compactly (`AST_JSON_COMPACT`).
fn compact(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| body.to_string())
}

/// The JSON text, keys in the order Asterisk adds them.
fn finish(node: &NodeInner, r: Response, first_app: &str) -> String {
    let mut s = String::with_capacity(256 + r.body.as_ref().map_or(0, |b| b.len() * 2));
    let field = |s: &mut String, key: &str| {
        s.push(if s.is_empty() { '{' } else { ',' });
        push_json_str(s, key);
        s.push(':');
    };
    field(&mut s, "type");
    push_json_str(&mut s, "RESTResponse");
    field(&mut s, "transaction_id");
    push_json_str(&mut s, &r.transaction_id);
    field(&mut s, "request_id");
    push_json_str(&mut s, &r.request_id);
    field(&mut s, "status_code");
    s.push_str(&r.status.to_string());
    field(&mut s, "reason_phrase");
    push_json_str(&mut s, &r.reason);
    field(&mut s, "uri");
    push_json_str(&mut s, &r.uri);
    if let Some(body) = &r.body {
        field(&mut s, "content_type");
        push_json_str(&mut s, "application/json");
        field(&mut s, "message_body");
        push_json_str(&mut s, body);
    }
    field(&mut s, "application");
    push_json_str(&mut s, first_app);
    field(&mut s, "timestamp");
    push_json_str(&mut s, &crate::time::now_ts());
    field(&mut s, "asterisk_id");
    push_json_str(&mut s, &node.cfg.asterisk_id);
    s.push('}');
    s
}
