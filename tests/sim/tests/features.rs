//! Behaviour tests of the simulator beyond the recorded scenarios: auth, application
//! replacement, kill/revive, trunks (args templating, variables, dead peer), Local halves,
//! playback timing, DTMF, request log, control HTTP API.

mod common;

use std::time::{Duration, Instant};

use common::{Ari, Closed, Ws};
use serde_json::{Value, json};
use stasis_sim::{Cluster, ClusterConfig, InboundCall, Route};

async fn cluster() -> Cluster {
    Cluster::start(ClusterConfig::default().with_playback_ms(200))
        .await
        .unwrap()
}

fn ari(c: &Cluster, node: &str) -> Ari {
    Ari::new(&c.node(node).ari_url().replace("/ari", ""))
}

fn call(exten: &str) -> InboundCall {
    InboundCall {
        caller_name: "Alice".into(),
        caller_number: "1001".into(),
        exten: exten.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn auth_basic_api_key_and_401() {
    let c = cluster().await;
    let a = c.node("a");
    let http = reqwest::Client::new();
    let url = format!("{}/asterisk/ping", a.ari_url());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"Asterisk REST Interface\""
    );
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Authentication required"})
    );
    let r = http
        .get(&url)
        .basic_auth("asterisk", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&url)
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["asterisk_id"], "02:00:00:00:00:0a");
    let r = http
        .get(format!("{url}?api_key=asterisk:asterisk"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{}/api-docs/resources.json", a.ari_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A websocket with bad credentials is refused before the upgrade.
    let bad = a
        .ws_url("conf")
        .replace("asterisk:asterisk", "asterisk:nope");
    assert!(Ws::try_connect(&bad).await.is_err());
    // The log shows what reached the node.
    let log = a.request_log();
    assert_eq!(log.iter().filter(|r| r.status == 401).count(), 4);
    assert_eq!(log[0].path, "/ari/asterisk/ping");
}

#[tokio::test]
async fn application_replaced_keeps_old_socket_open() {
    let c = cluster().await;
    let a = c.node("a");
    let first = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = Ws::connect(&a.ws_url("conf")).await;
    let ev = first
        .wait_for(0, 2000, |e| e["type"] == "ApplicationReplaced")
        .await
        .expect("ApplicationReplaced");
    assert_eq!(ev["application"], "conf");
    assert_eq!(ev["asterisk_id"], "02:00:00:00:00:0a");
    let id = a.inject_call(call("8000")).unwrap();
    second
        .wait_chan("StasisStart", &id, 2000)
        .await
        .expect("new owner gets StasisStart");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(first.count(), 1, "replaced socket gets nothing more");
    assert_eq!(
        first.closed.lock().clone(),
        None,
        "replaced socket stays open"
    );
    // Closing the replaced socket keeps the app; closing the owner removes it.
    first.close();
    first.wait_closed(1000).await;
    assert_eq!(a.apps(), vec!["conf".to_string()]);
    second.close();
    assert_eq!(second.wait_closed(1000).await, Some(Closed::Frame(1000)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(a.apps().is_empty());
    let (s, v) = ari(&c, "a").ok("GET", "/ari/applications/conf").await;
    assert_eq!((s, v), (404, json!({"message": "Application not found"})));
}

#[tokio::test]
async fn kill_and_revive() {
    let c = cluster().await;
    let (a, b) = (c.node("a"), c.node("b"));
    let wa = Ws::connect(&a.ws_url("conf")).await;
    let wb = Ws::connect(&b.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    // A local call in Stasis and a trunk call a -> b.
    let inbound = a.inject_call(call("8000")).unwrap();
    wa.wait_chan("StasisStart", &inbound, 2000).await.unwrap();
    let (s, _) = api
        .ok(
            "POST",
            "/ari/channels?endpoint=PJSIP/8000@trunk-b&app=conf&channelId=k-sip",
        )
        .await;
    assert_eq!(s, 200);
    let b_leg = wb
        .wait_for(0, 2000, |e| e["type"] == "StasisStart")
        .await
        .unwrap();
    let b_id = b_leg["channel"]["id"].as_str().unwrap().to_string();
    ari(&c, "b")
        .ok("POST", &format!("/ari/channels/{b_id}/answer"))
        .await;
    wa.wait_chan("StasisStart", "k-sip", 2000).await.unwrap();

    a.kill().await;
    // Stasis channels: HangupRequest{cause 4, soft} then StasisEnd; then 1006.
    let hr = wa
        .wait_chan("ChannelHangupRequest", &inbound, 2000)
        .await
        .unwrap();
    assert_eq!(
        (hr["cause"].clone(), hr["soft"].clone()),
        (json!(4), json!(true))
    );
    wa.wait_chan("StasisEnd", &inbound, 2000).await.unwrap();
    assert_eq!(wa.wait_closed(2000).await, Some(Closed::Abnormal));
    // The trunk leg on b sees a BYE without a cause.
    let hr = wb
        .wait_chan("ChannelHangupRequest", &b_id, 2000)
        .await
        .unwrap();
    assert!(hr.get("cause").is_none());
    wb.wait_chan("StasisEnd", &b_id, 2000).await.unwrap();
    assert!(b.channels().is_empty());
    // Connections are refused.
    assert!(api.call("GET", "/ari/asterisk/ping").await.is_err());
    assert!(Ws::try_connect(&a.ws_url("conf")).await.is_err());
    assert!(a.inject_call(call("8000")).is_err());

    a.revive().await.unwrap();
    let (s, v) = api.ok("GET", "/ari/applications").await;
    assert_eq!((s, v), (200, json!([])));
    let (s, _) = api.ok("GET", &format!("/ari/channels/{inbound}")).await;
    assert_eq!(s, 404);
    // Without an app, Stasis(conf) continues and the call ends; no app => nothing delivered.
    let lone = a.inject_call(call("8000")).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.channel(&lone).is_none());
    // Originate app=conf without a socket: 200, the channel dies right after answer.
    let (s, _) = api
        .ok(
            "POST",
            "/ari/channels?endpoint=Local/9001@default&app=conf&channelId=noapp",
        )
        .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.channel("noapp").is_none());
    // A reconnected app works again; no event on connect.
    let wa2 = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(wa2.count(), 0);
    let again = a.inject_call(call("8000")).unwrap();
    let ss = wa2.wait_chan("StasisStart", &again, 2000).await.unwrap();
    assert_eq!(ss["channel"]["state"], "Ring");
}

#[tokio::test]
async fn trunk_args_templating_and_variables() {
    let c = cluster().await;
    let (a, b) = (c.node("a"), c.node("b"));
    // b routes trunk calls for any exten into Stasis(bridge-app, <exten>, <var>).
    b.set_route(
        "from-trunk",
        "_.",
        Route::Stasis {
            app: "bridge-app".into(),
            args: vec!["${EXTEN}".into(), "${X_CONF}".into()],
        },
    );
    let wa = Ws::connect(&a.ws_url("conf")).await;
    let wb = Ws::connect(&b.ws_url("bridge-app")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let r = api
        .http
        .post(format!("{}/channels", a.ari_url()))
        .basic_auth("asterisk", Some("asterisk"))
        .query(&[
            ("endpoint", "PJSIP/conf-42@trunk-b"),
            ("app", "conf"),
            ("channelId", "t-1"),
            ("callerId", "\"A\" <3001>"),
        ])
        .json(&json!({"variables": {"X_CONF": "room-9"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ss = wb
        .wait_for(0, 2000, |e| e["type"] == "StasisStart")
        .await
        .unwrap();
    assert_eq!(ss["args"], json!(["conf-42", "room-9"]));
    assert_eq!(ss["channel"]["state"], "Ring");
    assert_eq!(
        ss["channel"]["caller"],
        json!({"name": "A", "number": "3001"})
    );
    assert!(
        ss["channel"]["name"]
            .as_str()
            .unwrap()
            .starts_with("PJSIP/trunk-a-")
    );
    let b_id = ss["channel"]["id"].as_str().unwrap().to_string();
    assert!(b_id.starts_with("ast-b-"));
    let bapi = ari(&c, "b");
    bapi.ok("POST", &format!("/ari/channels/{b_id}/ring")).await;
    wa.wait_for(0, 2000, |e| {
        e["type"] == "Dial" && e["dialstatus"] == "RINGING"
    })
    .await
    .unwrap();
    bapi.ok("POST", &format!("/ari/channels/{b_id}/answer"))
        .await;
    let ss_a = wa.wait_chan("StasisStart", "t-1", 2000).await.unwrap();
    assert_eq!(ss_a["channel"]["state"], "Up");
    // DTMF sent on a reaches b's leg.
    api.ok(
        "POST",
        "/ari/channels/t-1/dtmf?dtmf=1*&between=10&duration=10",
    )
    .await;
    let d = wb
        .wait_for(0, 2000, |e| {
            e["type"] == "ChannelDtmfReceived" && e["digit"] == "*"
        })
        .await;
    assert!(d.is_some());
    // b hangs up: a's leg gets HangupRequest{cause 16} without soft.
    bapi.ok("DELETE", &format!("/ari/channels/{b_id}")).await;
    let hr = wa
        .wait_chan("ChannelHangupRequest", "t-1", 2000)
        .await
        .unwrap();
    assert_eq!(hr["cause"], 16);
    assert!(hr.get("soft").is_none());
    wa.wait_chan("ChannelDestroyed", "t-1", 2000).await.unwrap();
}

#[tokio::test]
async fn trunk_to_dead_node_times_out() {
    let c = cluster().await;
    let a = c.node("a");
    c.node("b").kill().await;
    let wa = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let (s, v) = api
        .ok(
            "POST",
            "/ari/channels?endpoint=PJSIP/8000@trunk-b&app=conf&channelId=td&timeout=1",
        )
        .await;
    assert_eq!((s, v["state"].clone()), (200, json!("Down")));
    let d = wa.wait_chan("ChannelDestroyed", "td", 3000).await.unwrap();
    assert_eq!(d["cause"], 19);
    // Unknown trunk / technology: 500 Allocation failed.
    for ep in ["PJSIP/8000@trunk-zz", "Bogus/x"] {
        let (s, v) = api
            .ok("POST", &format!("/ari/channels?endpoint={ep}&app=conf"))
            .await;
        assert_eq!((s, v), (500, json!({"error": "Allocation failed"})));
    }
}

#[tokio::test]
async fn local_halves_are_separate_channels() {
    let c = cluster().await;
    let a = c.node("a");
    let w = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let (s, one) = api
        .ok("POST", "/ari/channels?endpoint=Local/8000@default&extension=9001&context=default&channelId=far-x&otherChannelId=x-in")
        .await;
    assert_eq!(s, 200);
    assert!(one["name"].as_str().unwrap().ends_with(";1"));
    let ss = w.wait_chan("StasisStart", "x-in", 2000).await.unwrap();
    assert!(ss["channel"]["name"].as_str().unwrap().ends_with(";2"));
    assert_eq!(ss["channel"]["state"], "Ring");
    assert_eq!(ss["channel"]["dialplan"]["priority"], 2);
    // The ;1 half is not in Stasis: 409 for answer, 422 for addChannel.
    let (s, _) = api.ok("POST", "/ari/channels/far-x/answer").await;
    assert_eq!(s, 409);
    api.ok("POST", "/ari/bridges/br?type=mixing").await;
    let (s, _) = api
        .ok("POST", "/ari/bridges/br/addChannel?channel=far-x")
        .await;
    assert_eq!(s, 422);
    let (s, _) = api
        .ok("POST", "/ari/bridges/br/addChannel?channel=nope")
        .await;
    assert_eq!(s, 400);
    let (s, _) = api
        .ok("POST", "/ari/bridges/nobr/addChannel?channel=x-in")
        .await;
    assert_eq!(s, 404);
    // Prefix collision.
    let (s, _) = api
        .ok(
            "POST",
            "/ari/channels?endpoint=Local/9001@default&app=conf&channelId=X-I",
        )
        .await;
    assert_eq!(s, 409);
    // Answer ;2: ;1 goes Up and runs default/9001 (Wait).
    api.ok("POST", "/ari/channels/x-in/answer").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let far = a.channel("far-x").unwrap();
    assert_eq!(far.state, "Up");
    assert_eq!(far.peer.as_deref(), Some("x-in"));
    // Bridge membership is visible to tests.
    api.ok("POST", "/ari/bridges/br/addChannel?channel=x-in")
        .await;
    assert_eq!(a.bridges()[0].channels, vec!["x-in".to_string()]);
    // Hangup with reason busy: the other half sees cause 17.
    api.ok("DELETE", "/ari/channels/x-in?reason=busy").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(a.channels().is_empty());
    assert!(a.bridges()[0].channels.is_empty());
}

#[tokio::test]
async fn playback_finishes_after_configured_time_and_dtmf() {
    let c = cluster().await; // playbacks last 200 ms
    let a = c.node("a");
    let w = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let id = a.inject_call(call("8000")).unwrap();
    w.wait_chan("StasisStart", &id, 2000).await.unwrap();
    api.ok("POST", &format!("/ari/channels/{id}/answer")).await;
    let t0 = Instant::now();
    let (s, pb) = api
        .ok(
            "POST",
            &format!("/ari/channels/{id}/play?media=sound:x,sound:y"),
        )
        .await;
    assert_eq!(s, 201);
    let pid = pb["id"].as_str().unwrap().to_string();
    let fin = w
        .wait_for(0, 3000, |e| {
            e["type"] == "PlaybackFinished" && e["playback"]["id"] == pid.as_str()
        })
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(fin["playback"]["state"], "done");
    let types: Vec<String> = w
        .events()
        .iter()
        .filter(|e| e["playback"]["id"] == pid.as_str())
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "PlaybackStarted",
            "PlaybackContinuing",
            "PlaybackStarted",
            "PlaybackFinished"
        ]
    );
    // The caller presses digits.
    a.press_dtmf(&id, "4x2#").unwrap();
    let digits: Vec<Value> = {
        w.wait_for(0, 2000, |e| {
            e["type"] == "ChannelDtmfReceived" && e["digit"] == "#"
        })
        .await
        .unwrap();
        w.events()
            .into_iter()
            .filter(|e| e["type"] == "ChannelDtmfReceived")
            .map(|e| e["digit"].clone())
            .collect()
    };
    assert_eq!(digits, vec![json!("4"), json!("2"), json!("#")]);
    // A tone never ends; hangup during it gives 'failed'.
    let (_, tone) = api
        .ok("POST", &format!("/ari/channels/{id}/play?media=tone:ring"))
        .await;
    let tid = tone["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, v) = api.ok("GET", &format!("/ari/playbacks/{tid}")).await;
    assert_eq!((s, v["state"].clone()), (200, json!("playing")));
    a.hangup_far_end(&id, Some(16)).unwrap();
    let f = w
        .wait_for(0, 2000, |e| {
            e["type"] == "PlaybackFinished" && e["playback"]["id"] == tid.as_str()
        })
        .await
        .unwrap();
    assert_eq!(f["playback"]["state"], "failed");
    let hr = w
        .wait_chan("ChannelHangupRequest", &id, 2000)
        .await
        .unwrap();
    assert_eq!(hr["cause"], 16);
}

#[tokio::test]
async fn subscribe_all_sees_other_apps_channels() {
    let c = cluster().await;
    let a = c.node("a");
    let conf = Ws::connect(&a.ws_url("conf")).await;
    let all = Ws::connect(&format!("{}&subscribeAll=true", a.ws_url("monitor"))).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let id = a.inject_call(call("8000")).unwrap();
    conf.wait_chan("StasisStart", &id, 2000).await.unwrap();
    let seen = all.wait_chan("StasisStart", &id, 2000).await.unwrap();
    assert_eq!(seen["application"], "monitor");
}

#[tokio::test]
async fn control_http_api() {
    let c = cluster().await;
    let a = c.node("a");
    let w = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let http = reqwest::Client::new();
    let ctl = c.control_url();
    let nodes: Value = http
        .get(format!("{ctl}/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    assert_eq!(nodes[0]["asterisk_id"], "02:00:00:00:00:0a");
    // Inject through the node's own /_sim.
    let r = http
        .post(format!("{}/calls", a.control_url()))
        .json(&json!({"caller_number": "555", "exten": "8000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["channel_id"]
        .as_str()
        .unwrap()
        .to_string();
    w.wait_chan("StasisStart", &id, 2000).await.unwrap();
    let r = http
        .post(format!("{ctl}/nodes/a/channels/{id}/dtmf"))
        .json(&json!({"digits": "7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    w.wait_chan("ChannelDtmfReceived", &id, 2000).await.unwrap();
    let r = http
        .post(format!("{ctl}/nodes/a/channels/{id}/hangup"))
        .json(&json!({"cause": 17}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A channel that entered Stasis from the dialplan is only followed until StasisEnd.
    let hr = w
        .wait_chan("ChannelHangupRequest", &id, 2000)
        .await
        .unwrap();
    assert_eq!(hr["cause"], 17);
    w.wait_chan("StasisEnd", &id, 2000).await.unwrap();
    assert!(a.channel(&id).is_none());
    ari(&c, "a").ok("GET", "/ari/channels").await;
    let log: Value = http
        .get(format!("{ctl}/nodes/a/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/ari/events", "/ari/channels"]);
    assert_eq!(log[0]["status"], 101);
    // Kill and revive through the cluster control server.
    assert_eq!(
        http.post(format!("{ctl}/nodes/a/kill"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(!a.is_alive());
    assert!(
        http.get(format!("{}/channels", a.control_url()))
            .send()
            .await
            .is_err()
    );
    assert_eq!(
        http.post(format!("{ctl}/nodes/a/revive"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let (s, _) = ari(&c, "a").ok("GET", "/ari/asterisk/ping").await;
    assert_eq!(s, 200);
    assert_eq!(
        http.delete(format!("{ctl}/nodes/a/requests"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(a.request_log().is_empty());
}

/// Top-level field order of events, as recorded (serde_json::Value would hide it).
#[tokio::test]
async fn event_field_order_matches_recordings() {
    let c = cluster().await;
    let a = c.node("a");
    let w = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let id = a.inject_call(call("8000")).unwrap();
    w.wait_chan("StasisStart", &id, 2000).await.unwrap();
    ari(&c, "a")
        .ok("DELETE", &format!("/ari/channels/{id}"))
        .await;
    w.wait_chan("StasisEnd", &id, 2000).await.unwrap();
    let raw = w.raw.lock().clone();
    let order = |text: &str, keys: &[&str]| {
        let pos: Vec<usize> = keys
            .iter()
            .map(|k| {
                text.find(&format!("\"{k}\":"))
                    .unwrap_or_else(|| panic!("{k} in {text}"))
            })
            .collect();
        assert!(
            pos.windows(2).all(|p| p[0] < p[1]),
            "order {keys:?} in {text}"
        );
    };
    let start = raw.iter().find(|t| t.contains("\"StasisStart\"")).unwrap();
    order(
        start,
        &[
            "type",
            "timestamp",
            "args",
            "channel",
            "asterisk_id",
            "application",
        ],
    );
    order(
        start,
        &[
            "id",
            "name",
            "state",
            "protocol_id",
            "caller",
            "connected",
            "accountcode",
            "dialplan",
            "creationtime",
            "language",
        ],
    );
    let hr = raw
        .iter()
        .find(|t| t.contains("\"ChannelHangupRequest\""))
        .unwrap();
    order(
        hr,
        &[
            "cause",
            "soft",
            "type",
            "timestamp",
            "channel",
            "asterisk_id",
            "application",
        ],
    );
    assert!(start.contains("\"timestamp\":\"20") && start.contains("+0000\""));
}

/// `PUT /ari/applications/{app}/eventFilter`, the body sent as `application/json` (`None`: no
/// body at all).
async fn put_filter(api: &Ari, app: &str, body: Option<Value>) -> (u16, Value) {
    let r = api
        .http
        .put(format!("{}/ari/applications/{app}/eventFilter", api.base))
        .basic_auth("asterisk", Some("asterisk"));
    let r = match body {
        Some(b) => r.json(&b),
        None => r,
    };
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The same body as raw text with a given content type.
async fn put_filter_raw(api: &Ari, app: &str, content_type: &str, body: &str) -> (u16, Value) {
    let r = api
        .http
        .put(format!("{}/ari/applications/{app}/eventFilter", api.base))
        .basic_auth("asterisk", Some("asterisk"))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One call into `conf` (answer, set a variable, hang up) and the types of the events `w`
/// got for it, once quiet after StasisEnd (or after the hangup, if StasisEnd is filtered).
async fn call_event_types(c: &Cluster, w: &Ws) -> Vec<String> {
    let (a, api) = (c.node("a"), ari(c, "a"));
    let from = w.count();
    let id = a.inject_call(call("8000")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.channel(&id).and_then(|ch| ch.stasis_app).is_none() {
        assert!(Instant::now() < deadline, "{id} never entered Stasis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        api.ok("POST", &format!("/ari/channels/{id}/answer"))
            .await
            .0,
        204
    );
    let (s, _) = api
        .ok(
            "POST",
            &format!("/ari/channels/{id}/variable?variable=FOO&value=bar"),
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        api.ok("DELETE", &format!("/ari/channels/{id}")).await.0,
        204
    );
    while a.channel(&id).is_some() {
        assert!(Instant::now() < deadline, "{id} never went away");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.events()[from..]
        .iter()
        .map(|e| {
            assert_eq!(e["channel"]["id"], id.as_str(), "{e}");
            e["type"].as_str().unwrap().to_string()
        })
        .collect()
}

fn only(types: &[String], keep: &[&str]) -> Vec<String> {
    types
        .iter()
        .filter(|t| keep.contains(&t.as_str()))
        .cloned()
        .collect()
}

#[tokio::test]
async fn event_filter_allowed_list_on_the_websocket() {
    let c = cluster().await;
    let w = Ws::connect(&c.node("a").ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let unfiltered = call_event_types(&c, &w).await;
    for t in [
        "StasisStart",
        "ChannelStateChange",
        "ChannelVarset",
        "ChannelHangupRequest",
        "StasisEnd",
    ] {
        assert!(unfiltered.iter().any(|u| u == t), "{t} in {unfiltered:?}");
    }
    let allowed = json!([{"type": "StasisStart"}, {"type": "StasisEnd"}]);
    let (s, app) = put_filter(&api, "conf", Some(json!({ "allowed": allowed }))).await;
    assert_eq!(s, 200);
    assert_eq!(app["name"], "conf");
    assert_eq!(app["events_allowed"], allowed);
    assert_eq!(app["events_disallowed"], json!([]));
    let filtered = call_event_types(&c, &w).await;
    assert_eq!(filtered, ["StasisStart", "StasisEnd"]);
    assert_eq!(filtered, only(&unfiltered, &["StasisStart", "StasisEnd"]));
}

#[tokio::test]
async fn event_filter_rules_and_application_json() {
    let c = cluster().await;
    let w = Ws::connect(&c.node("a").ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let unfiltered = call_event_types(&c, &w).await;
    let shows = |allowed: Value, disallowed: Value| {
        let api = api.clone();
        async move {
            let (s, one) = api.ok("GET", "/ari/applications/conf").await;
            assert_eq!(s, 200);
            assert_eq!(
                (&one["events_allowed"], &one["events_disallowed"]),
                (&allowed, &disallowed)
            );
            let (_, all) = api.ok("GET", "/ari/applications").await;
            assert_eq!(all, json!([one]));
        }
    };
    shows(json!([]), json!([])).await;

    // Disallowed wins over allowed; extra fields of the objects are kept as sent.
    let allowed = json!([{"type": "StasisStart"}, {"type": "ChannelVarset", "note": 1}]);
    let disallowed = json!([{"type": "ChannelVarset"}]);
    let (s, app) = put_filter(
        &api,
        "conf",
        Some(json!({"allowed": allowed, "disallowed": disallowed})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&allowed, &disallowed)
    );
    shows(allowed.clone(), disallowed.clone()).await;
    assert_eq!(call_event_types(&c, &w).await, ["StasisStart"]);

    // A key left out leaves that list unchanged.
    let (s, app) = put_filter(&api, "conf", Some(json!({"disallowed": []}))).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&allowed, &json!([]))
    );
    assert_eq!(
        call_event_types(&c, &w).await,
        only(&unfiltered, &["StasisStart", "ChannelVarset"])
    );
    let only_end = json!([{"type": "StasisEnd"}]);
    let (s, app) = put_filter(&api, "conf", Some(json!({"disallowed": only_end}))).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&allowed, &only_end)
    );
    // Only a disallowed list: everything else goes out.
    let (s, _) = put_filter(&api, "conf", Some(json!({"allowed": []}))).await;
    assert_eq!(s, 200);
    shows(json!([]), only_end.clone()).await;
    let got = call_event_types(&c, &w).await;
    let mut want = unfiltered.clone();
    want.retain(|t| t != "StasisEnd");
    assert_eq!(got, want);

    // An empty object resets both lists; so does no body at all.
    put_filter(&api, "conf", Some(json!({"allowed": allowed}))).await;
    let (s, app) = put_filter(&api, "conf", Some(json!({}))).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&json!([]), &json!([]))
    );
    put_filter(&api, "conf", Some(json!({"allowed": allowed}))).await;
    let (s, app) = put_filter(&api, "conf", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&json!([]), &json!([]))
    );
    assert_eq!(call_event_types(&c, &w).await, unfiltered);

    // A body not sent as application/json is not read: it resets too.
    put_filter(&api, "conf", Some(json!({"allowed": allowed}))).await;
    let text = json!({"allowed": allowed}).to_string();
    let (s, app) = put_filter_raw(&api, "conf", "text/plain", &text).await;
    assert_eq!(s, 200);
    assert_eq!(app["events_allowed"], json!([]));
    let (s, app) = put_filter_raw(&api, "conf", "Application/JSON; charset=utf-8", &text).await;
    assert_eq!(s, 200);
    assert_eq!(app["events_allowed"], allowed);
    // A top-level array is taken as both lists.
    let (s, app) = put_filter(&api, "conf", Some(only_end.clone())).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&only_end, &only_end)
    );
}

#[tokio::test]
async fn event_filter_errors() {
    let c = cluster().await;
    let _w = Ws::connect(&c.node("a").ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let api = ari(&c, "a");
    let bad_format = json!({"message": "Invalid format definition"});
    let (s, v) = put_filter(&api, "nope", Some(json!({}))).await;
    assert_eq!((s, v), (404, json!({"message": "Application not found"})));
    let (s, v) = put_filter(&api, "nope", None).await;
    assert_eq!((s, v), (404, json!({"message": "Application not found"})));
    for body in [
        json!({"allowed": {"type": "x"}}),
        json!({"allowed": [{"nottype": "x"}]}),
        json!({"allowed": [{"type": ""}]}),
        json!({"allowed": [{"type": 1}]}),
        json!({"allowed": ["StasisStart"]}),
        json!({"allowed": null}),
        json!({"disallowed": "StasisStart"}),
        json!([{"type": "StasisStart"}, {}]),
    ] {
        let (s, v) = put_filter(&api, "conf", Some(body.clone())).await;
        assert_eq!((s, v), (400, bad_format.clone()), "{body}");
    }
    // Not JSON (or a bare scalar): rejected before the handler, even for an unknown app.
    for text in [r#"{"allowed":"#, r#""StasisStart""#, "3"] {
        for app in ["conf", "nope"] {
            let (s, v) = put_filter_raw(&api, app, "application/json", text).await;
            assert_eq!(
                (s, v),
                (400, json!({"message": "Error parsing request body"})),
                "{text}"
            );
        }
    }
    let (_, app) = api.ok("GET", "/ari/applications/conf").await;
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&json!([]), &json!([]))
    );

    // `disallowed` is set before `allowed` is checked, and nothing is rolled back.
    let a1 = json!([{"type": "StasisStart"}]);
    let d1 = json!([{"type": "ChannelVarset"}]);
    put_filter(&api, "conf", Some(json!({"allowed": a1}))).await;
    let (s, v) = put_filter(
        &api,
        "conf",
        Some(json!({"disallowed": d1, "allowed": {"type": "x"}})),
    )
    .await;
    assert_eq!((s, v), (400, bad_format.clone()));
    let (_, app) = api.ok("GET", "/ari/applications/conf").await;
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&a1, &d1)
    );
    // A bad `disallowed` changes nothing, not even a good `allowed`.
    let (s, v) = put_filter(
        &api,
        "conf",
        Some(json!({"allowed": [{"type": "StasisEnd"}], "disallowed": [{"x": 1}]})),
    )
    .await;
    assert_eq!((s, v), (400, bad_format));
    let (_, app) = api.ok("GET", "/ari/applications/conf").await;
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&a1, &d1)
    );
}

#[tokio::test]
async fn event_filter_belongs_to_the_app() {
    let c = cluster().await;
    let a = c.node("a");
    let api = ari(&c, "a");
    let first = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let allowed = json!([{"type": "StasisStart"}]);
    let (s, _) = put_filter(&api, "conf", Some(json!({ "allowed": allowed }))).await;
    assert_eq!(s, 200);
    // ApplicationReplaced is an app message too: filtered out here.
    let second = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(first.count(), 0, "{:?}", first.types());
    // The filter stays with the app under its new owner.
    let (_, app) = api.ok("GET", "/ari/applications/conf").await;
    assert_eq!(app["events_allowed"], allowed);
    assert_eq!(call_event_types(&c, &second).await, ["StasisStart"]);
    assert_eq!(first.count(), 0);
    // Allowed, it reaches the replaced socket.
    let (s, _) = put_filter(
        &api,
        "conf",
        Some(json!({"allowed": [{"type": "ApplicationReplaced"}]})),
    )
    .await;
    assert_eq!(s, 200);
    let third = Ws::connect(&a.ws_url("conf")).await;
    second
        .wait_for(0, 2000, |e| e["type"] == "ApplicationReplaced")
        .await
        .expect("ApplicationReplaced allowed");
    // The owner closes: the app and its filter are gone; a new socket starts unfiltered.
    third.close();
    third.wait_closed(1000).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(a.apps().is_empty());
    let fourth = Ws::connect(&a.ws_url("conf")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (_, app) = api.ok("GET", "/ari/applications/conf").await;
    assert_eq!(
        (&app["events_allowed"], &app["events_disallowed"]),
        (&json!([]), &json!([]))
    );
    let types = call_event_types(&c, &fourth).await;
    assert!(types.len() > 2 && types.iter().any(|t| t == "ChannelVarset"));
}

/// `POST|DELETE /applications/{app}/subscription` as `app_handle_subscriptions` does it
/// (`rest_basics` records an endpoint subscription and its removal): sources in order,
/// stopping at the first failure; endpoint subscriptions counted, device ones not.
#[tokio::test]
async fn subscriptions_go_source_by_source_and_endpoints_are_counted() {
    let c = cluster().await;
    let a = c.node("a");
    let _ws = Ws::connect(&a.ws_url("conf")).await;
    let api = ari(&c, "a");
    let path = |sources: &str| format!("/ari/applications/conf/subscription?eventSource={sources}");
    let subscribed = |v: &Value| (v["endpoint_ids"].clone(), v["device_names"].clone());

    let (s, v) = api
        .ok(
            "POST",
            &path("endpoint:PJSIP/trunk-b,deviceState:Custom:desk"),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        subscribed(&v),
        (json!(["PJSIP/trunk-b"]), json!(["Custom:desk"]))
    );

    // An unknown endpoint stops the request there; what came before it is done.
    let (s, v) = api
        .ok(
            "POST",
            &path("deviceState:Custom:door,endpoint:PJSIP/nobody"),
        )
        .await;
    assert_eq!(
        (s, v),
        (422, json!({"message": "Event source does not exist"}))
    );
    let (s, v) = api.ok("POST", &path("channel")).await;
    assert_eq!(
        (s, v),
        (400, json!({"message": "Invalid event source URI scheme"}))
    );
    let (_, v) = api.ok("GET", "/ari/applications/conf").await;
    assert_eq!(
        subscribed(&v),
        (
            json!(["PJSIP/trunk-b"]),
            json!(["Custom:desk", "Custom:door"])
        )
    );

    // Twice on the endpoint takes two unsubscribes; once on a device is enough.
    let (s, _) = api
        .ok(
            "POST",
            &path("endpoint:PJSIP/trunk-b,deviceState:Custom:desk"),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .ok(
            "DELETE",
            &path("endpoint:PJSIP/trunk-b,deviceState:Custom:desk"),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        subscribed(&v),
        (json!(["PJSIP/trunk-b"]), json!(["Custom:door"]))
    );
    let (s, v) = api.ok("DELETE", &path("endpoint:PJSIP/trunk-b")).await;
    assert_eq!(s, 200);
    assert_eq!(subscribed(&v), (json!([]), json!(["Custom:door"])));
    // Not subscribed: 422.
    let (s, v) = api.ok("DELETE", &path("endpoint:PJSIP/trunk-b")).await;
    assert_eq!(
        (s, v),
        (
            422,
            json!({"message": "Event source was not subscribed to"})
        )
    );
    c.shutdown().await;
}
