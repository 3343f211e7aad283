//! ARI REST under `/ari`, routed by hand from path segments.
//!
//! Why not one axum route per operation: every request needs the same prologue (shutdown
//! check, auth, request log, parameter parsing from query *and* JSON body) and the same
//! epilogue (run queued effects after the node lock is released), and matching segment slices
//! keeps the whole ARI surface readable in one `match`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use crate::cluster::dispatch;
use crate::error::AriError;
use crate::node::{LoggedRequest, NodeInner};
use crate::params::Params;
use crate::playback::Target;

/// The router of one node: `/ari/events` (websocket), `/_sim/...` (control), the rest of `/ari`.
pub(crate) fn router(node: Arc<NodeInner>) -> Router {
    Router::new()
        .route("/ari/events", get(crate::ws::events_handler))
        .merge(crate::control::node_router())
        .fallback(ari_handler)
        .with_state(node)
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn unauthorized() -> Response {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        r#"{"message":"Authentication required"}"#.to_string(),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Asterisk REST Interface\""),
    );
    r
}

/// What Asterisk answers while it shuts down.
pub(crate) fn shutdown_response() -> Response {
    let mut r = Response::new(Body::from(
        "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\r\n<html><head>\r\n<title>503 Service Unavailable</title>\r\n</head><body>\r\n<h1>Service Unavailable</h1>\r\n<p>Shutdown in progress</p>\r\n<hr />\r\n</body></html>\r\n",
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

/// `GET /ari/api-docs/amqp.json` as the recorded nodes answer it (`{basePath}` is the node's).
const AMQP_API_DOCS: &str = include_str!("api-docs-amqp.json");

/// A successful ARI answer.
pub(crate) enum Ok2 {
    Json(String),
    Created(String),
    NoContent,
}

async fn ari_handler(State(node): State<Arc<NodeInner>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let authed = node.auth_ok(req.headers(), query.as_deref());
    // `ast_http_get_json` reads a body only if its type (parameters aside) is
    // `application/json`, case-insensitively.
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"));
    let body = axum::body::to_bytes(req.into_body(), 4 << 20)
        .await
        .unwrap_or_default();
    let response = if !node.alive.load(Ordering::Acquire) {
        shutdown_response()
    } else if !path.starts_with("/ari/") {
        json_response(
            StatusCode::NOT_FOUND,
            r#"{"message":"Resource not found"}"#.into(),
        )
    } else if !authed {
        unauthorized()
    } else {
        let p = Params::parse(query.as_deref(), &body);
        let json_body = (is_json && !body.is_empty()).then_some(&body[..]);
        match handle(&node, &method, &path, &p, json_body) {
            Ok(Ok2::Json(b)) => json_response(StatusCode::OK, b),
            Ok(Ok2::Created(b)) => json_response(StatusCode::CREATED, b),
            Ok(Ok2::NoContent) => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            Err(e) => json_response(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                e.body,
            ),
        }
    };
    node.log_request(LoggedRequest {
        method: method.to_string(),
        path,
        query: query.unwrap_or_default(),
        status: response.status().as_u16(),
        over_websocket: false,
    });
    response
}

/// Decodes one path segment as Asterisk's HTTP server does (`ast_uri_decode` with
/// `ast_uri_http_legacy`): `%XX` escapes, and `+` is a space.
fn decode(seg: &str) -> String {
    if !seg.contains(['%', '+']) {
        return seg.to_string();
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&seg[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's JSON entity as `ast_http_get_json` gives it to a handler: `None` without one;
/// 400 when it does not parse as a JSON object or array (Asterisk's decoder takes no scalars).
fn json_entity(body: Option<&[u8]>) -> Result<Option<serde_json::Value>, AriError> {
    let Some(body) = body else {
        return Ok(None);
    };
    match serde_json::from_slice(body) {
        Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => Ok(Some(v)),
        _ => Err(AriError::msg(400, "Error parsing request body")),
    }
}

/// `json_body`: the raw body if it was sent as `application/json` (only handlers that take a
/// whole JSON entity look at it; the others read [`Params`]).
pub(crate) fn handle(
    node: &Arc<NodeInner>,
    method: &Method,
    path: &str,
    p: &Params,
    json_body: Option<&[u8]>,
) -> Result<Ok2, AriError> {
    let segs: Vec<String> = path["/ari/".len()..]
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = method.as_str();

    // Requests that need no node state.
    match (m, segs.as_slice()) {
        ("GET", ["asterisk", "ping"]) => {
            return Ok(Ok2::Json(
                serde_json::json!({
                    "ping": "pong",
                    "timestamp": crate::time::now_ts(),
                    "asterisk_id": &*node.cfg.asterisk_id,
                })
                .to_string(),
            ));
        }
        ("GET", ["api-docs", "amqp.json"]) => {
            // Wazo's res_ari_amqp resource, as recorded (fixtures/amqp/register.json).
            let base = format!(
                "{}://{}:{}/ari",
                node.scheme(),
                node.bind,
                node.port.load(Ordering::Acquire)
            );
            return Ok(Ok2::Json(AMQP_API_DOCS.replace("{basePath}", &base)));
        }
        ("GET", ["api-docs", file]) => {
            return Ok(Ok2::Json(
                serde_json::json!({
                    "_copyright": "simulated",
                    "apiVersion": "10.0.0",
                    "swaggerVersion": "1.1",
                    "basePath": format!("{}://{}:{}/ari", node.scheme(), node.bind, node.port.load(Ordering::Acquire)),
                    "resourcePath": format!("/api-docs/{file}"),
                    "apis": [],
                })
                .to_string(),
            ));
        }
        ("GET", ["endpoints", rest @ ..]) => return endpoints(node, rest),
        ("GET", ["recordings", "stored"]) | ("GET", ["deviceStates"]) | ("GET", ["sounds"]) => {
            return Ok(Ok2::Json("[]".into()));
        }
        _ => {}
    }

    let mut st = node.state.lock();
    let r = match (m, segs.as_slice()) {
        ("GET", ["asterisk", "info"]) => Ok(Ok2::Json(info(&st, p.get("only")))),
        ("GET", ["asterisk", "variable"]) => Ok(Ok2::Json(r#"{"value":""}"#.into())),

        ("GET", ["channels"]) => Ok(Ok2::Json(st.list_channels())),
        ("POST", ["channels"]) => st.originate(p, None).map(Ok2::Json),
        ("POST", ["channels", "create"]) => st.create(p).map(Ok2::Json),
        ("GET", ["channels", id]) => st.chan(id).map(|c| Ok2::Json(c.json())),
        ("POST", ["channels", id]) => st.originate(p, Some(id)).map(Ok2::Json),
        ("DELETE", ["channels", id]) => st.hangup_api(id, p).map(|_| Ok2::NoContent),
        ("POST", ["channels", id, "answer"]) => st.answer_api(id).map(|_| Ok2::NoContent),
        ("POST", ["channels", id, "ring"]) => st.ring_api(id, true).map(|_| Ok2::NoContent),
        ("DELETE", ["channels", id, "ring"]) => st.ring_api(id, false).map(|_| Ok2::NoContent),
        ("POST", ["channels", id, "play"]) => st
            .play_api(Target::Channel((*id).into()), p, None)
            .map(Ok2::Created),
        ("POST", ["channels", id, "play", pb]) => st
            .play_api(Target::Channel((*id).into()), p, Some(pb))
            .map(Ok2::Created),
        ("GET", ["channels", id, "variable"]) => st.get_var_api(id, p).map(Ok2::Json),
        ("POST", ["channels", id, "variable"]) => st.set_var_api(id, p).map(|_| Ok2::NoContent),
        ("POST", ["channels", id, "continue"]) => st.continue_api(id, p).map(|_| Ok2::NoContent),
        ("POST", ["channels", id, "dtmf"]) => st.dtmf_api(id, p).map(|_| Ok2::NoContent),
        ("POST", ["channels", id, "dial"]) => st.dial_api(id, p).map(|_| Ok2::NoContent),
        ("POST", ["channels", id, "record"]) => st.record_api(id, p).map(Ok2::Created),
        ("POST", ["channels", id, what @ ("moh" | "mute" | "hold" | "silence")]) => {
            st.flag_api(id, what, true).map(|_| Ok2::NoContent)
        }
        ("DELETE", ["channels", id, what @ ("moh" | "mute" | "hold" | "silence")]) => {
            st.flag_api(id, what, false).map(|_| Ok2::NoContent)
        }
        ("GET", ["channels", id, "rtp_statistics"]) => st.chan(id).map(|c| {
            Ok2::Json(
                serde_json::json!({
                    "txcount": 0, "rxcount": 0, "txploss": 0, "rxploss": 0,
                    "local_ssrc": 0, "remote_ssrc": 0, "txoctetcount": 0, "rxoctetcount": 0,
                    "channel_uniqueid": &*c.id,
                })
                .to_string(),
            )
        }),

        ("GET", ["bridges"]) => Ok(Ok2::Json(st.list_bridges())),
        ("POST", ["bridges"]) => st.create_bridge(p, None).map(Ok2::Json),
        ("GET", ["bridges", id]) => st.get_bridge(id).map(Ok2::Json),
        ("POST", ["bridges", id]) => st.create_bridge(p, Some(id)).map(Ok2::Json),
        ("DELETE", ["bridges", id]) => st.destroy_bridge_api(id).map(|_| Ok2::NoContent),
        ("POST", ["bridges", id, "addChannel"]) => {
            st.add_channels_api(id, p).map(|_| Ok2::NoContent)
        }
        ("POST", ["bridges", id, "removeChannel"]) => {
            st.remove_channels_api(id, p).map(|_| Ok2::NoContent)
        }
        ("POST", ["bridges", id, "play"]) => st
            .play_api(Target::Bridge((*id).into()), p, None)
            .map(Ok2::Created),
        ("POST", ["bridges", id, "play", pb]) => st
            .play_api(Target::Bridge((*id).into()), p, Some(pb))
            .map(Ok2::Created),
        ("POST", ["bridges", id, "moh"]) => st.bridge_moh_api(id, true).map(|_| Ok2::NoContent),
        ("DELETE", ["bridges", id, "moh"]) => st.bridge_moh_api(id, false).map(|_| Ok2::NoContent),

        ("GET", ["playbacks", id]) => st.get_playback(id).map(Ok2::Json),
        ("DELETE", ["playbacks", id]) => st.stop_playback(id).map(|_| Ok2::NoContent),
        ("POST", ["playbacks", id, "control"]) => {
            st.control_playback(id, p).map(|_| Ok2::NoContent)
        }

        ("GET", ["applications"]) => Ok(Ok2::Json(st.list_apps())),
        ("GET", ["applications", app]) => st.get_app(app).map(Ok2::Json),
        ("POST" | "DELETE", ["applications", app, "subscription"]) => {
            let known = endpoint_list(node);
            let exists = |id: &str| match id.split_once('/') {
                None => id == "PJSIP",
                Some((tech, resource)) => {
                    tech == "PJSIP" && known.iter().any(|e| e["resource"] == resource)
                }
            };
            st.subscribe_api(app, p, m == "POST", exists).map(Ok2::Json)
        }
        ("PUT", ["applications", app, "eventFilter"]) => json_entity(json_body)
            .and_then(|f| st.event_filter_api(app, f.as_ref()))
            .map(Ok2::Json),

        // Wazo's res_ari_amqp: 204 also when already registered / when unknown (recorded).
        ("POST", ["amqp", app]) => {
            st.register_amqp(app);
            Ok(Ok2::NoContent)
        }
        ("DELETE", ["amqp", app]) => {
            st.unregister_amqp(app);
            Ok(Ok2::NoContent)
        }
        (_, ["amqp", _]) => Err(AriError::msg(405, "Invalid method")),
        _ => Err(AriError::msg(404, "Resource not found")),
    };
    let effects = std::mem::take(&mut st.effects);
    drop(st);
    if !effects.is_empty()
        && let Some(c) = node.cluster.upgrade()
    {
        dispatch(&c, effects);
    }
    r
}

fn info(st: &crate::state::NodeState, only: Option<&str>) -> String {
    let all = serde_json::json!({
        "build": {"os": "Linux", "kernel": "sim", "machine": "x86_64", "options": "OPTIONAL_API",
                  "date": st.startup_ts.clone(), "user": "sim"},
        "system": {"version": "22.10.1", "entity_id": &*st.cfg.asterisk_id},
        "config": {"name": format!("ast-{}", st.cfg.name), "default_language": "en",
                   "setid": {"user": "", "group": ""}},
        "status": {"startup_time": st.startup_ts.clone(), "last_reload_time": st.startup_ts.clone()},
    });
    match only {
        None => all.to_string(),
        Some(list) => {
            let mut out = serde_json::Map::new();
            for key in ["build", "system", "config", "status"] {
                if list.split(',').any(|k| k == key) {
                    out.insert(key.to_string(), all[key].clone());
                }
            }
            serde_json::Value::Object(out).to_string()
        }
    }
}

/// `GET /endpoints[/PJSIP[/res]]`: see [`endpoint_list`].
fn endpoints(node: &Arc<NodeInner>, rest: &[&str]) -> Result<Ok2, AriError> {
    let list = endpoint_list(node);
    match rest {
        [] => Ok(Ok2::Json(serde_json::Value::Array(list).to_string())),
        ["PJSIP"] => Ok(Ok2::Json(serde_json::Value::Array(list).to_string())),
        ["PJSIP", res] => list
            .into_iter()
            .find(|e| e["resource"] == *res)
            .map(|e| Ok2::Json(e.to_string()))
            .ok_or_else(|| AriError::msg(404, "Endpoint not found")),
        _ => Err(AriError::msg(404, "Endpoint not found")),
    }
}

/// The node's PJSIP endpoints: one `trunk-<node>` per other node, plus `anonymous`.
fn endpoint_list(node: &Arc<NodeInner>) -> Vec<serde_json::Value> {
    let Some(cluster) = node.cluster.upgrade() else {
        return Vec::new();
    };
    let mut list = Vec::new();
    for other in &cluster.nodes {
        if other.cfg.name == node.cfg.name {
            continue;
        }
        let alive = other.alive.load(Ordering::Acquire);
        list.push(serde_json::json!({
            "technology": "PJSIP",
            "resource": format!("trunk-{}", other.cfg.name),
            "state": if alive { "online" } else { "offline" },
            "channel_ids": [],
        }));
    }
    list.push(serde_json::json!({"technology": "PJSIP", "resource": "anonymous", "state": "offline", "channel_ids": []}));
    list
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(decode("orig-1%3B2"), "orig-1;2");
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode("bad%zz"), "bad%zz");
        assert_eq!(decode("end%4"), "end%4");
        // Asterisk's legacy HTTP decoding: `+` is a space, `%2B` a plus.
        assert_eq!(decode("a+b%2Bc"), "a b+c");
    }
}
