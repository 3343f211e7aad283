//! The facade's REST side: requests passed to the node that owns the resource, answers passed
//! back untouched (status, `Content-Type`, body bytes), list endpoints merged across nodes,
//! and `/ari/api-docs` for clients generated from the spec.
//!
//! The hot path does no JSON work: the body goes through as bytes, the node's answer comes
//! back as bytes, and only creations have their answer parsed (to index the new id). The
//! exceptions are an app's settings: a client's event filter and subscriptions on a name it
//! holds ([`set_client_filter`], [`set_client_subscription`]), and `GET /applications`
//! answers, which show the client's own filter rather than the widened one the nodes hold.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;

use super::Facade;
use super::filter::Entity;
use super::placement::{PlacementError, Target};
use super::upstream::RawResponse;
use crate::backend::AriError;

/// Largest request body passed on (ARI bodies are small JSON: variables, fields).
const MAX_BODY: usize = 1 << 20;

/// `/ari/*`: routes one request; see `placement.rs` for the policy.
pub async fn proxy(State(facade): State<Arc<Facade>>, request: Request) -> Response {
    // The request taken apart rather than extracted piecewise: no copy of the headers.
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let body = if headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
    {
        match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(body) => body,
            Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        }
    } else {
        Bytes::new()
    };
    let query = uri.query().unwrap_or("");
    if !facade.authorized(&headers, query) {
        return super::unauthorized();
    }
    let path = uri.path().strip_prefix("/ari").unwrap_or(uri.path());
    let query = strip_api_key(query);
    // A change to an app's subscriptions or event filter (a GET, most of the traffic, skips
    // this). Asterisk decodes every path segment before it matches a handler, so the check
    // does too: `%63onf` is `conf`, `%65ventFilter` is `eventFilter`.
    let segments: Vec<std::borrow::Cow<str>> = if method == Method::GET {
        Vec::new()
    } else {
        path.trim_matches('/')
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
            .collect()
    };
    let app_setting = match segments.as_slice() {
        [applications, app, what]
            if applications == "applications"
                && (what == "subscription" || what == "eventFilter") =>
        {
            Some((app.as_ref(), what.as_ref()))
        }
        _ => None,
    };
    if let Some((app, _)) = app_setting
        && let Some(why) = facade.external.host_owned(app)
    {
        return message(
            StatusCode::FORBIDDEN,
            &format!("{why}: its event filter and subscriptions are the host's"),
        );
    }
    let content_type = headers.get(header::CONTENT_TYPE).cloned();
    let path_and_query = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    if let Some((app, what)) = app_setting
        && facade.external.holds(app)
        && matches!(
            (&method, what),
            (&Method::PUT, "eventFilter") | (&Method::POST | &Method::DELETE, "subscription")
        )
    {
        let request = HeldAppRequest {
            app,
            method: method.clone(),
            path_and_query: &path_and_query,
            query: &query,
            content_type,
            body,
        };
        return if what == "eventFilter" {
            set_client_filter(&facade, request).await
        } else {
            set_client_subscription(&facade, request).await
        };
    }
    let asterisk_id = headers.get("x-asterisk-id").and_then(|v| v.to_str().ok());
    let target = match facade
        .placement
        .target(&method, path, &query, asterisk_id)
        .await
    {
        Ok(target) => target,
        Err(e) => return placement_error(e),
    };
    match target {
        Target::One { node, record } => {
            match facade
                .upstream
                .forward(&node, method.clone(), &path_and_query, content_type, body)
                .await
            {
                Ok(answer) => {
                    let ok = (200..300).contains(&answer.status);
                    if ok && let Some(kind) = record {
                        facade.placement.created(kind, &node.name, &answer.body);
                    }
                    if ok && method == Method::DELETE {
                        facade.placement.deleted(path);
                    }
                    if ok && method == Method::GET {
                        return pass_through(show_client_filters(&facade, path, answer));
                    }
                    pass_through(answer)
                }
                Err(e) => ari_error(e),
            }
        }
        Target::Merge | Target::All => {
            let Some((_, answers)) =
                forward_to_all(&facade, &method, &path_and_query, content_type, body).await
            else {
                return placement_error(PlacementError::NoNode);
            };
            if matches!(target, Target::All) {
                let accepted = accepted(&answers);
                return all_nodes_answer(answers, accepted).map_or_else(ari_error, pass_through);
            }
            merge(
                answers
                    .into_iter()
                    .map(|a| a.map(|r| show_client_filters(&facade, path, r)))
                    .collect(),
            )
        }
    }
}

/// Concatenates the JSON arrays of every node that answered 200, byte for byte. If none did,
/// the first node's answer (or failure) is returned as is.
fn merge(answers: Vec<Result<RawResponse, AriError>>) -> Response {
    let mut out = BytesMut::with_capacity(
        answers
            .iter()
            .map(|a| a.as_ref().map_or(0, |r| r.body.len()))
            .sum::<usize>()
            + 2,
    );
    out.extend_from_slice(b"[");
    let (mut arrays, mut items, mut first_other) = (0, 0, None);
    for answer in answers {
        if let Ok(r) = &answer
            && r.status == 200
            && let Some(inner) = r
                .body
                .trim_ascii()
                .strip_prefix(b"[")
                .and_then(|t| t.strip_suffix(b"]"))
        {
            arrays += 1;
            let inner = inner.trim_ascii();
            if !inner.is_empty() {
                if items > 0 {
                    out.extend_from_slice(b",");
                }
                out.extend_from_slice(inner);
                items += 1;
            }
            continue;
        }
        first_other.get_or_insert(answer);
    }
    out.extend_from_slice(b"]");
    match first_other {
        Some(other) if arrays == 0 => other.map_or_else(ari_error, pass_through),
        _ => json(StatusCode::OK, out.freeze()),
    }
}

/// A change to the event filter or subscriptions of an app name a facade client holds.
struct HeldAppRequest<'a> {
    app: &'a str,
    method: Method,
    path_and_query: &'a str,
    query: &'a str,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

/// The usable nodes and, in the same order, their answers to one request.
type NodeAnswers = (
    Vec<Arc<crate::cluster::Node>>,
    Vec<Result<RawResponse, AriError>>,
);

/// Sends one request to every usable node at once; `None` when no node is usable.
async fn forward_to_all(
    facade: &Facade,
    method: &Method,
    path_and_query: &str,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Option<NodeAnswers> {
    let nodes = facade.placement.usable();
    if nodes.is_empty() {
        return None;
    }
    let answers = join_all(nodes.iter().map(|n| {
        facade.upstream.forward(
            n,
            method.clone(),
            path_and_query,
            content_type.clone(),
            body.clone(),
        )
    }))
    .await;
    Some((nodes, answers))
}

/// The first node that took a request sent to every node, if any did.
fn accepted(answers: &[Result<RawResponse, AriError>]) -> Option<usize> {
    answers
        .iter()
        .position(|a| matches!(a, Ok(r) if (200..300).contains(&r.status)))
}

/// The answer to a request sent to every node: applied where any node took it (a node that
/// refused, say one that has not registered the app yet, gets it from node_filter later),
/// that node's answer; otherwise the first node's.
fn all_nodes_answer(
    answers: Vec<Result<RawResponse, AriError>>,
    accepted: Option<usize>,
) -> Result<RawResponse, AriError> {
    answers
        .into_iter()
        .nth(accepted.unwrap_or(0))
        .unwrap_or_else(|| Err(AriError::Unavailable("no node answered".into())))
}

/// `PUT /applications/{app}/eventFilter` for a held name: the nodes get the client's filter
/// widened by the host's kinds, whose events the host needs whatever the client wants to
/// hear (see `filter`); the host remembers the client's own, which it delivers by and shows.
async fn set_client_filter(facade: &Facade, request: HeldAppRequest<'_>) -> Response {
    // One change to a name's settings at a time: what is remembered follows the order in
    // which the nodes took the changes (and node_filter never interleaves with one).
    let lock = facade.external.settings_lock(request.app);
    let _turn = lock.lock().await;
    let entity = Entity::read(request.content_type.as_ref(), &request.body);
    let (content_type, body) = match entity.for_nodes() {
        Some(for_nodes) => (
            Some(HeaderValue::from_static("application/json")),
            Bytes::from(for_nodes.to_string()),
        ),
        None => (request.content_type.clone(), request.body.clone()),
    };
    let Some((_, answers)) = forward_to_all(
        facade,
        &request.method,
        request.path_and_query,
        content_type,
        body,
    )
    .await
    else {
        return placement_error(PlacementError::NoNode);
    };
    let accepted = accepted(&answers);
    let mut answer = all_nodes_answer(answers, accepted);
    // What the nodes now hold (a body may change one list only, or one before it is
    // refused with 400), set again on nodes that (re)connect later (node_filter). Nothing
    // changed where every node lacks the app.
    let taken = matches!(&answer, Ok(r) if accepted.is_some() || r.status == 400);
    if taken
        && let Some(now) = facade.external.remember_filter(request.app, &entity)
        && accepted.is_some()
        && let Ok(r) = &mut answer
        && let Ok(mut application) = serde_json::from_slice::<serde_json::Value>(&r.body)
    {
        now.show_in(&mut application);
        r.body = Bytes::from(application.to_string());
    }
    answer.map_or_else(ari_error, pass_through)
}

/// `POST|DELETE /applications/{app}/subscription` for a held name: forwarded to every node;
/// the `endpoint:` and `deviceState:` sources the app is then subscribed to are remembered
/// for nodes that (re)connect later (node_filter), as a node that took the request (or,
/// when none did, one that refused it part-way) lists them: Asterisk takes a request's
/// sources one by one and keeps those before a failure, and counts endpoint subscriptions.
async fn set_client_subscription(facade: &Facade, request: HeldAppRequest<'_>) -> Response {
    let lock = facade.external.settings_lock(request.app);
    let _turn = lock.lock().await;
    let Some((nodes, answers)) = forward_to_all(
        facade,
        &request.method,
        request.path_and_query,
        request.content_type.clone(),
        request.body.clone(),
    )
    .await
    else {
        return placement_error(PlacementError::NoNode);
    };
    let accepted = accepted(&answers);
    let refused_at = answers
        .iter()
        .position(|a| matches!(a, Ok(r) if r.status == 400 || r.status == 422));
    let mut answer = all_nodes_answer(answers, accepted);
    let application = match (accepted, refused_at, &answer) {
        (Some(_), _, Ok(r)) => serde_json::from_slice::<serde_json::Value>(&r.body).ok(),
        (None, Some(i), _) => facade
            .upstream
            .forward(
                &nodes[i],
                Method::GET,
                &format!("/applications/{}", request.app),
                None,
                Bytes::new(),
            )
            .await
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_slice(&r.body).ok()),
        _ => None,
    };
    if let Some(application) = application {
        let sources = event_sources(request.query, request.content_type.as_ref(), &request.body);
        facade.external.remember_subscription(
            request.app,
            &sources,
            request.method == Method::POST,
            accepted.is_some(),
            &application,
        );
    }
    // The answer shows the client's own filter, not the widened one the nodes hold.
    if accepted.is_some()
        && let Ok(r) = &mut answer
    {
        *r = show_client_filters(facade, &format!("/applications/{}", request.app), r.clone());
    }
    answer.map_or_else(ari_error, pass_through)
}

/// The event sources of a subscription request, as Asterisk's generated
/// `ast_ari_applications_subscribe_parse_body` reads them: a JSON body's `eventSource` (an
/// array of sources, or one source) overrides the query's, whose last `eventSource` is a
/// comma-separated list.
fn event_sources(query: &str, content_type: Option<&HeaderValue>, body: &[u8]) -> Vec<String> {
    if let Entity::Json(json) = Entity::read(content_type, body) {
        match &json["eventSource"] {
            serde_json::Value::String(source) => return vec![source.clone()],
            serde_json::Value::Array(items) => {
                return items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
            }
            _ => {}
        }
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .find_map(|(k, v)| (k == "eventSource").then_some(v))
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A node's answer to `GET /applications[/{app}]` shows the filters the nodes hold; a
/// client reads back the filter it set on a name it holds instead (see `filter`).
fn show_client_filters(facade: &Facade, path: &str, mut answer: RawResponse) -> RawResponse {
    let is_applications = path.strip_prefix("/applications").is_some_and(|rest| {
        rest.is_empty() || rest.strip_prefix('/').is_some_and(|app| !app.contains('/'))
    });
    if !is_applications || answer.status != 200 {
        return answer;
    }
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
        return answer;
    };
    let mut changed = false;
    let mut show = |application: &mut serde_json::Value| {
        if let Some(filter) = application["name"]
            .as_str()
            .and_then(|name| facade.external.client_filter(name))
        {
            filter.show_in(application);
            changed = true;
        }
    };
    match &mut json {
        serde_json::Value::Array(applications) => applications.iter_mut().for_each(&mut show),
        application => show(application),
    }
    if changed {
        answer.body = Bytes::from(json.to_string());
    }
    answer
}

fn json(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn pass_through(answer: RawResponse) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(content_type) = answer.content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

/// A failure of the facade itself (no node answered), in Asterisk's error shape.
fn ari_error(e: AriError) -> Response {
    let status = match e {
        AriError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    message(status, &e.to_string())
}

fn placement_error(e: PlacementError) -> Response {
    match e {
        PlacementError::UnknownNode(_) => message(StatusCode::BAD_REQUEST, &e.to_string()),
        PlacementError::NoNode => message(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        PlacementError::Ari(e) => ari_error(e),
    }
}

pub(super) fn message(status: StatusCode, text: &str) -> Response {
    json(
        status,
        Bytes::from(serde_json::json!({ "message": text }).to_string()),
    )
}

/// The query without the facade's `api_key` (the node gets its own credentials).
fn strip_api_key(query: &str) -> std::borrow::Cow<'_, str> {
    if !query.contains("api_key") {
        return query.into();
    }
    query
        .split('&')
        .filter(|kv| !kv.starts_with("api_key=") && *kv != "api_key")
        .collect::<Vec<_>>()
        .join("&")
        .into()
}

/// The spec files, as shipped with Asterisk 22.10.1 (`api-docs/`).
const SPEC: &[(&str, &str)] = &[
    ("resources.json", include_str!("api-docs/resources.json")),
    (
        "applications.json",
        include_str!("api-docs/applications.json"),
    ),
    ("asterisk.json", include_str!("api-docs/asterisk.json")),
    ("bridges.json", include_str!("api-docs/bridges.json")),
    ("channels.json", include_str!("api-docs/channels.json")),
    (
        "deviceStates.json",
        include_str!("api-docs/deviceStates.json"),
    ),
    ("endpoints.json", include_str!("api-docs/endpoints.json")),
    ("events.json", include_str!("api-docs/events.json")),
    ("mailboxes.json", include_str!("api-docs/mailboxes.json")),
    ("playbacks.json", include_str!("api-docs/playbacks.json")),
    ("recordings.json", include_str!("api-docs/recordings.json")),
    ("sounds.json", include_str!("api-docs/sounds.json")),
];

const SPEC_BASE: &str = "\"basePath\": \"http://localhost:8088/ari\"";

/// `/ari/api-docs/{file}`: the spec with `basePath` pointing at this facade (from the
/// request's `Host`), so generated clients send everything here.
pub async fn api_docs(
    State(facade): State<Arc<Facade>>,
    Path(file): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !facade.authorized(&headers, uri.query().unwrap_or("")) {
        return super::unauthorized();
    }
    let Some((_, text)) = SPEC.iter().find(|(name, _)| *name == file) else {
        return message(StatusCode::NOT_FOUND, "Resource not found");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| facade.address.clone());
    let body = text.replacen(
        SPEC_BASE,
        &format!("\"basePath\": \"http://{host}/ari\""),
        1,
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_is_not_passed_on() {
        assert_eq!(strip_api_key("app=x&api_key=u:p&b=1"), "app=x&b=1");
        assert_eq!(strip_api_key("app=x"), "app=x");
    }

    #[test]
    fn every_spec_file_has_the_base_path_to_rewrite() {
        for (name, text) in SPEC {
            assert!(text.contains(SPEC_BASE), "{name}");
        }
    }

    #[tokio::test]
    async fn lists_are_concatenated_without_reparsing() {
        let ok = |b: &'static str| {
            Ok(RawResponse {
                status: 200,
                content_type: None,
                body: Bytes::from_static(b.as_bytes()),
            })
        };
        let r = merge(vec![
            ok("[{\"id\":\"a\"}]"),
            ok("[]"),
            ok(" [{\"id\":\"b\"}] "),
        ]);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert_eq!(&body[..], b"[{\"id\":\"a\"},{\"id\":\"b\"}]");
        let r = merge(vec![ok("[]"), ok("[]")]);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert_eq!(&body[..], b"[]");
    }
}
