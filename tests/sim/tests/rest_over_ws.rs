//! ARI REST over the event websocket (`RESTRequest` / `RESTResponse`), as Asterisk 22.4 and
//! later answer it (`res/ari/ari_websocket_requests.c`).

mod common;

use std::time::{Duration, Instant};

use common::{Ari, Ws};
use serde_json::{Value, json};
use stasis_sim::{Cluster, ClusterConfig, InboundCall};

fn ari(c: &Cluster, node: &str) -> Ari {
    Ari::new(&c.node(node).ari_url().replace("/ari", ""))
}

/// A call from Alice in Stasis `conf` on node a; its channel id.
async fn call_in_stasis(c: &Cluster) -> String {
    let a = c.node("a");
    let id = a
        .inject_call(InboundCall {
            caller_name: "Alice".into(),
            caller_number: "1001".into(),
            exten: "8000".into(),
            ..Default::default()
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.channel(&id).and_then(|ch| ch.stasis_app).is_none() {
        assert!(Instant::now() < deadline, "{id} never entered Stasis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    id
}

fn request(id: &str, method: &str, uri: &str) -> Value {
    json!({
        "type": "RESTRequest",
        "transaction_id": "t-1",
        "request_id": id,
        "method": method,
        "uri": uri,
    })
}

/// The keys of a raw JSON object, in order.
fn keys(raw: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut de = serde_json::Deserializer::from_str(raw);
    struct Keys<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                self.0.push(k);
            }
            Ok(())
        }
    }
    serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).unwrap();
    keys
}

#[tokio::test]
async fn requests_on_the_event_socket_are_answered_like_http() {
    let c = Cluster::start(ClusterConfig::default()).await.unwrap();
    let w = Ws::connect(&c.node("a").ws_url("conf,other")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let id = call_in_stasis(&c).await;

    // 204: no body, no content type; ids echoed; stamped as an event of the first app.
    w.send_text(&request("r1", "POST", &format!("channels/{id}/answer")).to_string());
    let (answer, raw) = w.wait_answer("r1", 2000).await.expect("answered");
    assert_eq!(
        keys(&raw),
        [
            "type",
            "transaction_id",
            "request_id",
            "status_code",
            "reason_phrase",
            "uri",
            "application",
            "timestamp",
            "asterisk_id"
        ]
    );
    assert_eq!(answer["transaction_id"], "t-1");
    assert_eq!(answer["status_code"], 204);
    assert_eq!(answer["reason_phrase"], "No Content");
    assert_eq!(answer["uri"], format!("channels/{id}/answer"));
    assert_eq!(answer["application"], "conf");
    assert_eq!(answer["asterisk_id"], c.node("a").asterisk_id());
    assert!(w.wait_chan("ChannelStateChange", &id, 1000).await.is_some());
    assert_eq!(c.node("a").channel(&id).unwrap().state, "Up");

    // 200: the body is the compact JSON text HTTP would have sent.
    w.send_text(&request("r2", "GET", &format!("channels/{id}")).to_string());
    let (answer, raw) = w.wait_answer("r2", 2000).await.expect("answered");
    assert_eq!(answer["status_code"], 200);
    assert_eq!(answer["reason_phrase"], "OK");
    assert_eq!(answer["content_type"], "application/json");
    assert_eq!(
        &keys(&raw)[5..8],
        ["uri", "content_type", "message_body"],
        "{raw}"
    );
    let body: Value = serde_json::from_str(answer["message_body"].as_str().unwrap()).unwrap();
    let (status, over_http) = api.ok("GET", &format!("/ari/channels/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, over_http);

    // Parameters: the uri's query string, then query_strings; the first occurrence wins.
    let mut set = request(
        "r3",
        "POST",
        &format!("channels/{id}/variable?variable=FOO"),
    );
    set["query_strings"] = json!([
        {"name": "value", "value": "a b&c"},
        {"name": "variable", "value": "IGNORED"}
    ]);
    w.send_text(&set.to_string());
    let (answer, _) = w.wait_answer("r3", 2000).await.expect("answered");
    assert_eq!(answer["status_code"], 204);
    assert_eq!(answer["uri"], format!("channels/{id}/variable"), "no query");
    let (_, var) = api
        .ok("GET", &format!("/ari/channels/{id}/variable?variable=FOO"))
        .await;
    assert_eq!(var["value"], "a b&c");
    // A form body adds parameters too.
    let mut set = request("r3b", "POST", &format!("channels/{id}/variable"));
    set["content_type"] = json!("application/x-www-form-urlencoded");
    set["message_body"] = json!("variable=BAR&value=2");
    w.send_text(&set.to_string());
    assert_eq!(
        w.wait_answer("r3b", 2000).await.unwrap().0["status_code"],
        204
    );
    let (_, var) = api
        .ok("GET", &format!("/ari/channels/{id}/variable?variable=BAR"))
        .await;
    assert_eq!(var["value"], "2");

    // A JSON entity in message_body.
    let mut filter = request("r4", "PUT", "applications/other/eventFilter");
    filter["content_type"] = json!("application/json");
    filter["message_body"] = json!(json!({"allowed": [{"type": "StasisStart"}]}).to_string());
    w.send_text(&filter.to_string());
    let (answer, _) = w.wait_answer("r4", 2000).await.expect("answered");
    assert_eq!(answer["status_code"], 200);
    let app: Value = serde_json::from_str(answer["message_body"].as_str().unwrap()).unwrap();
    assert_eq!(app["events_allowed"], json!([{"type": "StasisStart"}]));

    // Errors come back as HTTP would send them.
    w.send_text(&request("r5", "GET", "channels/nope").to_string());
    let (answer, _) = w.wait_answer("r5", 2000).await.expect("answered");
    assert_eq!(answer["status_code"], 404);
    assert_eq!(answer["reason_phrase"], "Not Found");
    assert_eq!(answer["message_body"], r#"{"message":"Channel not found"}"#);

    // No ids: empty strings in the answer.
    w.send_text(r#"{"type":"RESTRequest","method":"GET","uri":"asterisk/ping"}"#);
    let pong = w
        .wait_for(0, 2000, |e| {
            e["type"] == "RESTResponse" && e["uri"] == "asterisk/ping"
        })
        .await
        .expect("answered");
    assert_eq!(
        (&pong["transaction_id"], &pong["request_id"]),
        (&json!(""), &json!(""))
    );
    assert_eq!(pong["status_code"], 200);

    // The node's request log has them, marked as sent on the socket.
    let log = c.node("a").request_log();
    let answered = log
        .iter()
        .find(|r| r.path == format!("/ari/channels/{id}/answer"))
        .expect("logged");
    assert!(answered.over_websocket);
    assert_eq!((answered.method.as_str(), answered.status), ("POST", 204));
    let variable = log
        .iter()
        .find(|r| r.path == format!("/ari/channels/{id}/variable"))
        .unwrap();
    assert_eq!(
        variable.query,
        "variable=FOO&value=a+b%26c&variable=IGNORED"
    );
    // What came over HTTP is not marked.
    assert!(
        log.iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/variable") && !r.over_websocket)
    );
}

#[tokio::test]
async fn malformed_requests_get_bad_request_answers() {
    let c = Cluster::start(ClusterConfig::default()).await.unwrap();
    let w = Ws::connect(&c.node("a").ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;

    w.send_text("not json");
    let answer = w
        .wait_for(0, 2000, |e| e["type"] == "RESTResponse")
        .await
        .expect("answered");
    assert_eq!(answer["status_code"], 400);
    assert_eq!(
        answer["reason_phrase"],
        "Failed to parse request message JSON"
    );
    assert_eq!(
        (&answer["request_id"], &answer["uri"]),
        (&json!(""), &json!(""))
    );
    assert!(answer.get("message_body").is_none());

    let cases: Vec<(Value, &str, &str)> = vec![
        // Valid JSON but not an object: it has no type either.
        (json!(["RESTRequest"]), "No 'type' property.", ""),
        (
            json!({"request_id": "b1", "method": "GET", "uri": "channels"}),
            "No 'type' property.",
            "",
        ),
        (
            json!({"type": "Bogus", "request_id": "b2", "method": "GET", "uri": "channels"}),
            "Unknown request type.",
            "",
        ),
        (
            json!({"type": "RESTRequest", "request_id": "b3", "method": "GET"}),
            "Empty or missing 'uri' property.",
            "",
        ),
        (
            json!({"type": "RESTRequest", "request_id": "b4", "method": "FETCH", "uri": "channels?x=1"}),
            "Unknown or missing 'method' property.",
            "channels",
        ),
        (
            json!({"type": "RESTRequest", "request_id": "b5", "method": "GET", "uri": "channels", "query_strings": {"a": "b"}}),
            "Unable to parse 'query_strings' array.",
            "channels",
        ),
        (
            json!({"type": "RESTRequest", "request_id": "b6", "method": "POST", "uri": "channels", "message_body": "{}"}),
            "No 'content_type' for 'message_body'.",
            "channels",
        ),
        (
            json!({"type": "RESTRequest", "request_id": "b7", "method": "POST", "uri": "channels", "message_body": "{", "content_type": "application/json"}),
            "Unable to parse 'message_body' as 'application/json'.",
            "channels",
        ),
        (
            json!({"type": "RESTRequest", "request_id": "b8", "method": "POST", "uri": "channels", "message_body": "x", "content_type": "text/plain"}),
            "Unknown content type.",
            "channels",
        ),
    ];
    for (msg, why, uri) in cases {
        let id = msg["request_id"].as_str().unwrap_or_default().to_string();
        let from = w.count();
        w.send_text(&msg.to_string());
        let answer = w
            .wait_for(from, 2000, |e| {
                e["type"] == "RESTResponse" && e["request_id"] == id.as_str()
            })
            .await
            .expect("answered");
        assert_eq!(answer["status_code"], 400, "{msg}");
        assert_eq!(answer["reason_phrase"], "Bad request", "{msg}");
        assert_eq!(answer["uri"], uri, "{msg}");
        assert_eq!(answer["content_type"], "application/json", "{msg}");
        assert_eq!(
            answer["message_body"],
            json!({ "message": why }).to_string(),
            "{msg}"
        );
    }
    // None of them reached a handler.
    assert!(c.node("a").request_log().iter().all(|r| !r.over_websocket));
}

#[tokio::test]
async fn the_first_apps_event_filter_applies_to_answers() {
    let c = Cluster::start(ClusterConfig::default()).await.unwrap();
    let w = Ws::connect(&c.node("a").ws_url("conf,other")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let put = |app: &'static str, body: Value| {
        let api = api.clone();
        async move {
            api.http
                .put(format!("{}/ari/applications/{app}/eventFilter", api.base))
                .basic_auth("asterisk", Some("asterisk"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The second app's filter does not matter.
    assert_eq!(
        put("other", json!({"allowed": [{"type": "StasisStart"}]})).await,
        200
    );
    w.send_text(&request("f1", "GET", "asterisk/ping").to_string());
    assert!(w.wait_answer("f1", 2000).await.is_some());
    // The first app's does: the answer is dropped like an event it did not ask for.
    assert_eq!(
        put("conf", json!({"allowed": [{"type": "StasisStart"}]})).await,
        200
    );
    w.send_text(&request("f2", "GET", "asterisk/ping").to_string());
    assert!(w.wait_answer("f2", 300).await.is_none());
    // The request still ran.
    assert!(
        c.node("a")
            .request_log()
            .iter()
            .filter(|r| r.path == "/ari/asterisk/ping" && r.over_websocket)
            .count()
            == 2
    );
    assert_eq!(
        put(
            "conf",
            json!({"allowed": [{"type": "StasisStart"}, {"type": "RESTResponse"}]})
        )
        .await,
        200
    );
    w.send_text(&request("f3", "GET", "asterisk/ping").to_string());
    assert!(w.wait_answer("f3", 2000).await.is_some());
}

#[tokio::test]
async fn a_node_before_asterisk_22_4_ignores_requests_on_the_socket() {
    let mut cfg = ClusterConfig::default();
    cfg.nodes[0].rest_over_websocket = false;
    let c = Cluster::start(cfg).await.unwrap();
    let w = Ws::connect(&c.node("a").ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let id = call_in_stasis(&c).await;
    w.send_text(&request("o1", "POST", &format!("channels/{id}/answer")).to_string());
    assert!(w.wait_answer("o1", 300).await.is_none());
    assert_eq!(c.node("a").channel(&id).unwrap().state, "Ring");
    assert!(c.node("a").request_log().iter().all(|r| !r.over_websocket));
    assert!(w.closed.lock().is_none(), "the socket stays open");
}
