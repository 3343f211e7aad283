//! Stasis events over AMQP against a real RabbitMQ (`STASIS_TEST_AMQP_URL`; `scripts/test.sh`
//! starts a private broker): message format (routing key, properties, headers, both body
//! formats) checked against the recordings in `fixtures/amqp/`, the same events as a websocket
//! gets, the lossy node side (missing exchange, no broker), and websocket ↔ AMQP takeover.
//! Broker restarts are in `amqp_restart.rs` (its own binary: a restart would disturb the
//! parallel tests here).

mod broker;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use broker::{Broker, Received, unique};
use common::{Ari, Ws, shape};
use serde_json::{Value, json};
use stasis_sim::{
    AmqpConfig, AmqpFormat, AmqpState, Cluster, ClusterConfig, InboundCall, NodeHandle, Route,
};

const SECS5: Duration = Duration::from_secs(5);

fn load(file: &str) -> Value {
    let path = format!("{}/fixtures/amqp/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

fn ari(n: &NodeHandle) -> Ari {
    Ari::new(&n.ari_url().replace("/ari", ""))
}

fn call(exten: &str) -> InboundCall {
    InboundCall {
        caller_name: "Alice".into(),
        caller_number: "1001".into(),
        exten: exten.into(),
        ..Default::default()
    }
}

fn stasis(app: &str, args: &[&str]) -> Route {
    Route::Stasis {
        app: app.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// A cluster publishing to `exchange` on the test broker, once node `a` is connected.
async fn cluster(exchange: &str, format: AmqpFormat, cfg: ClusterConfig) -> Cluster {
    let amqp = AmqpConfig::new(&broker::amqp_url())
        .with_exchange(exchange)
        .with_format(format);
    let c = Cluster::start(cfg.with_amqp(amqp)).await.unwrap();
    for n in c.nodes() {
        assert!(
            n.wait_amqp_state(AmqpState::Connected, SECS5).await,
            "node {} not connected to the broker: {:?}",
            n.name(),
            n.amqp_status()
        );
    }
    c
}

/// Wait until channel `id` is in Stasis app `app` (the dialplan runs right after the inject).
async fn wait_in_stasis(n: &NodeHandle, id: &str, app: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if n.channel(id).and_then(|c| c.stasis_app).as_deref() == Some(app) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "channel {id} never entered Stasis({app}): {:?}",
            n.channel(id)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `ChannelVarset(FOO)`-style descriptor (as the websocket conformance compares).
fn descriptor(e: &Value) -> String {
    let ty = e["type"].as_str().unwrap_or("?");
    match ty {
        "ChannelVarset" => format!("{ty}({})", e["variable"].as_str().unwrap_or("")),
        _ => ty.to_string(),
    }
}

/// Routing key, properties and headers as the recordings show them.
fn assert_amqp_envelope_meta(m: &Received, exchange: &str, app: &str) {
    assert_eq!(m.exchange, exchange);
    assert_eq!(m.routing_key, format!("stasis.app.{}", app.to_lowercase()));
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.delivery_mode, Some(2));
    let want: BTreeMap<String, String> = [
        ("name", m.ty()),
        ("category", "stasis".to_string()),
        ("application_name", app.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(m.headers, want, "headers of {}", m.text);
    assert!(m.header_kinds.values().all(|k| k == "LongString"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_events_are_the_websocket_events() {
    let exchange = unique("sim-envelope");
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.#"]).await;
    let c = cluster(
        &exchange,
        AmqpFormat::Envelope,
        ClusterConfig::default().with_playback_ms(100),
    )
    .await;
    let (a, b) = (c.node("a"), c.node("b"));
    // The same app on a over AMQP and on b over a websocket; the same call on both.
    let app = "AmqpApp";
    let (s, v) = ari(&a).ok("POST", &format!("/ari/amqp/{app}")).await;
    assert_eq!((s, v), (204, Value::Null));
    let ws = Ws::connect(&b.ws_url(app)).await;
    for n in [&a, &b] {
        n.set_route("default", "8100", stasis(app, &["x"]));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let amqp_chan = a.inject_call(call("8100")).unwrap();
    sub.wait_event("StasisStart", Some(&amqp_chan), 3000).await;
    let ws_chan = b.inject_call(call("8100")).unwrap();
    ws.wait_chan("StasisStart", &ws_chan, 3000).await.unwrap();
    for (n, chan) in [(&a, &amqp_chan), (&b, &ws_chan)] {
        let api = ari(n);
        assert_eq!(
            api.ok("POST", &format!("/ari/channels/{chan}/answer"))
                .await
                .0,
            204
        );
        let (s, _) = api
            .ok(
                "POST",
                &format!("/ari/channels/{chan}/variable?variable=FOO&value=bar"),
            )
            .await;
        assert_eq!(s, 204);
        let (s, _) = api
            .ok(
                "POST",
                &format!("/ari/channels/{chan}/play?media=sound:hello-world&playbackId=pb-{chan}"),
            )
            .await;
        assert_eq!(s, 201);
    }
    sub.wait_event("PlaybackFinished", None, 3000).await;
    ws.wait_for(0, 3000, |e| e["type"] == "PlaybackFinished")
        .await
        .unwrap();
    for (n, chan) in [(&a, &amqp_chan), (&b, &ws_chan)] {
        assert_eq!(
            ari(n)
                .ok("DELETE", &format!("/ari/channels/{chan}"))
                .await
                .0,
            204
        );
    }
    sub.wait_event("StasisEnd", Some(&amqp_chan), 3000).await;
    ws.wait_chan("StasisEnd", &ws_chan, 3000).await.unwrap();
    let msgs = sub.settle(300, 3000).await;
    let status = a.wait_amqp_flushed(SECS5).await;

    for m in &msgs {
        assert_amqp_envelope_meta(m, &exchange, app);
        // Body: {"name", "data", "application"} in that order, compact, asterisk_id in data only.
        let ty = m.ty();
        assert!(
            m.text
                .starts_with(&format!("{{\"name\":\"{ty}\",\"data\":{{")),
            "{}",
            m.text
        );
        assert!(m.text.ends_with(&format!(",\"application\":\"{app}\"}}")));
        assert_eq!(m.body.as_object().unwrap().len(), 3);
        assert_eq!(m.body["name"], m.event()["type"]);
        assert_eq!(m.body["application"], app);
        assert_eq!(m.event()["asterisk_id"], a.asterisk_id());
        assert_eq!(m.event()["application"], app);
        assert!(m.body.get("asterisk_id").is_none());
    }
    // Exactly the websocket's events, in the same order and with the same shapes.
    let amqp_events: Vec<Value> = msgs.iter().map(|m| m.event().clone()).collect();
    let ws_events = ws.events();
    let d = |v: &[Value]| v.iter().map(descriptor).collect::<Vec<_>>();
    assert_eq!(d(&amqp_events), d(&ws_events));
    for (x, y) in amqp_events.iter().zip(&ws_events) {
        assert_eq!(shape(x), shape(y), "{x} vs {y}");
    }
    let want = [
        "StasisStart",
        "ChannelStateChange",
        "ChannelVarset(FOO)",
        "PlaybackStarted",
        "PlaybackFinished",
        "ChannelHangupRequest",
        "StasisEnd",
    ];
    let got = d(&amqp_events);
    let mut it = got.iter();
    for w in want {
        assert!(it.any(|g| g == w), "{w} missing or out of order in {got:?}");
    }
    assert_eq!(amqp_events[0]["args"], json!(["x"]));
    assert_eq!(
        (status.published, status.dropped, status.pending),
        (msgs.len() as u64, 0, 0)
    );
    assert_eq!(status.state, AmqpState::Connected);
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_format_body_is_the_event() {
    let exchange = unique("sim-raw");
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.rawapp"]).await;
    let c = cluster(&exchange, AmqpFormat::Raw, ClusterConfig::default()).await;
    let b = c.node("b");
    let (s, _) = ari(&b).ok("POST", "/ari/amqp/rawapp").await;
    assert_eq!(s, 204);
    b.set_route("default", "8100", stasis("rawapp", &[]));
    let chan = b.inject_call(call("8100")).unwrap();
    sub.wait_event("StasisStart", Some(&chan), 3000).await;
    b.hangup_far_end(&chan, Some(16)).unwrap();
    sub.wait_event("StasisEnd", Some(&chan), 3000).await;
    let msgs = sub.settle(200, 2000).await;
    assert!(msgs.len() >= 3, "{:?}", sub.types());
    for m in &msgs {
        assert_amqp_envelope_meta(m, &exchange, "rawapp");
        assert!(m.body.get("data").is_none() && m.body.get("name").is_none());
        assert!(
            m.text.starts_with('{') && m.body["type"].is_string(),
            "{}",
            m.text
        );
        assert!(
            m.text.ends_with(&format!(
                ",\"asterisk_id\":\"{}\",\"application\":\"rawapp\"}}",
                b.asterisk_id()
            )),
            "{}",
            m.text
        );
    }
    assert_eq!(msgs[0].ty(), "StasisStart");
    assert_eq!(b.amqp_config().unwrap().format, AmqpFormat::Raw);
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}

/// `app_local_a.json`, re-enacted: the recorded REST requests, then every message compared
/// with the recorded one (routing key, properties, headers, body keys, event shape, order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_app_local_a() {
    let rec = load("app_local_a.json");
    let exchange = unique("sim-rec-local");
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.#"]).await;
    // The recorded sound lengths (hello-world 1420 ms).
    let c = cluster(&exchange, AmqpFormat::Envelope, ClusterConfig::default()).await;
    let a = c.node("a");
    a.set_route("default", "8100", stasis("amqpapp", &[]));
    let api = ari(&a);
    let mut statuses = vec![];
    statuses.push(api.ok("POST", "/ari/amqp/amqpapp").await.0);
    statuses.push(
        api.ok(
            "POST",
            "/ari/channels?endpoint=Local/8100@default&context=default&extension=9001&channelId=amqp-local-1",
        )
        .await
        .0,
    );
    sub.wait_event("StasisStart", Some("amqp-local-1;2"), 3000)
        .await;
    statuses.push(
        api.ok("POST", "/ari/channels/amqp-local-1;2/answer")
            .await
            .0,
    );
    statuses.push(
        api.ok(
            "POST",
            "/ari/channels/amqp-local-1;2/variable?variable=FOO&value=bar",
        )
        .await
        .0,
    );
    statuses.push(
        api.ok(
            "POST",
            "/ari/channels/amqp-local-1;2/play?media=sound:hello-world&playbackId=amqp-pb-1",
        )
        .await
        .0,
    );
    sub.wait_event("PlaybackFinished", None, 4000).await;
    statuses.push(api.ok("DELETE", "/ari/channels/amqp-local-1;2").await.0);
    sub.wait_event("StasisEnd", Some("amqp-local-1;2"), 3000)
        .await;
    let msgs = sub.settle(300, 3000).await;
    statuses.push(api.ok("DELETE", "/ari/amqp/amqpapp").await.0);
    statuses.push(api.ok("DELETE", "/ari/channels/amqp-local-1").await.0);
    let rec_statuses: Vec<u16> = rec["rest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(statuses, rec_statuses);
    compare_messages(&rec["messages"], &msgs, &exchange, "wazo");
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}

/// `app_sip_a_to_b.json`, re-enacted: both nodes publish to one queue; per node, the recorded
/// event sequence (types, varset names, shapes), routing keys, headers and properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_app_sip_a_to_b() {
    let rec = load("app_sip_a_to_b.json");
    let exchange = unique("sim-rec-sip");
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.amqpapp"]).await;
    let c = cluster(&exchange, AmqpFormat::Envelope, ClusterConfig::default()).await;
    let (a, b) = (c.node("a"), c.node("b"));
    b.set_route("default", "8100", stasis("amqpapp", &[]));
    assert_eq!(ari(&a).ok("POST", "/ari/amqp/amqpapp").await.0, 204);
    assert_eq!(ari(&b).ok("POST", "/ari/amqp/amqpapp").await.0, 204);
    let (s, _) = ari(&a)
        .ok(
            "POST",
            "/ari/channels?endpoint=PJSIP/8100@trunk-b&app=amqpapp&channelId=amqp-sip-a-1&callerId=AMQP%20test%20%3C3001%3E",
        )
        .await;
    assert_eq!(s, 200);
    let b_start = sub
        .wait_for(3000, |m| {
            m.ty() == "StasisStart" && m.event()["asterisk_id"] == b.asterisk_id()
        })
        .await
        .expect("StasisStart on b");
    let b_chan = b_start.event()["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ari(&b)
            .ok("POST", &format!("/ari/channels/{b_chan}/answer"))
            .await
            .0,
        204
    );
    sub.wait_event("StasisStart", Some("amqp-sip-a-1"), 3000)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ari(&a).ok("DELETE", "/ari/channels/amqp-sip-a-1").await.0,
        204
    );
    sub.wait_event("StasisEnd", Some(&b_chan), 3000).await;
    let msgs = sub.settle(300, 3000).await;
    for (inst, node) in [("a", &a), ("b", &b)] {
        let recorded: Vec<Value> = rec["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["_from_instance"] == inst)
            .cloned()
            .collect();
        let mine: Vec<Received> = msgs
            .iter()
            .filter(|m| m.event()["asterisk_id"] == node.asterisk_id())
            .cloned()
            .collect();
        compare_messages(&Value::Array(recorded), &mine, &exchange, "wazo");
    }
    assert_eq!(ari(&a).ok("DELETE", "/ari/amqp/amqpapp").await.0, 204);
    assert_eq!(ari(&b).ok("DELETE", "/ari/amqp/amqpapp").await.0, 204);
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}

/// Recorded vs received, message by message (exchange names differ: ours is per test).
fn compare_messages(recorded: &Value, got: &[Received], exchange: &str, rec_exchange: &str) {
    let recorded = recorded.as_array().unwrap();
    let rd: Vec<String> = recorded
        .iter()
        .map(|m| descriptor(&m["body"]["data"]))
        .collect();
    let gd: Vec<String> = got.iter().map(|m| descriptor(m.event())).collect();
    assert_eq!(gd, rd, "event sequence");
    for (r, g) in recorded.iter().zip(got) {
        assert_eq!(r["exchange"], rec_exchange);
        assert_eq!(g.exchange, exchange);
        assert_eq!(g.routing_key, r["routing_key"].as_str().unwrap());
        assert_eq!(
            g.content_type.as_deref(),
            r["properties"]["content_type"].as_str()
        );
        assert_eq!(
            g.delivery_mode.map(u64::from),
            r["properties"]["delivery_mode"].as_u64()
        );
        let rh: BTreeMap<String, String> = r["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(g.headers, rh);
        assert_eq!(
            shape(&g.body),
            shape(&r["body"]),
            "{}",
            descriptor(g.event())
        );
        assert_eq!(g.body["application"], r["body"]["application"]);
        assert_eq!(g.event()["asterisk_id"], r["body"]["data"]["asterisk_id"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_drops_until_the_node_restarts() {
    // The exchange does not exist yet when the node first publishes.
    let exchange = unique("sim-missing");
    let broker = Broker::connect().await;
    let c = cluster(&exchange, AmqpFormat::Envelope, ClusterConfig::default()).await;
    let a = c.node("a");
    a.set_route("default", "8100", stasis("lossy", &[]));
    assert_eq!(ari(&a).ok("POST", "/ari/amqp/lossy").await.0, 204);
    let first = a.inject_call(call("8100")).unwrap();
    // The call is in the app even though nobody gets its events.
    wait_in_stasis(&a, &first, "lossy").await;
    a.hangup_far_end(&first, Some(16)).unwrap();
    assert!(
        a.wait_amqp_state(AmqpState::ChannelClosed, SECS5).await,
        "{:?}",
        a.amqp_status()
    );
    let s1 = a.wait_amqp_flushed(SECS5).await;
    assert_eq!(s1.published, 0);
    assert!(s1.dropped >= 3, "{s1:?}");

    // Declaring the exchange afterwards does not help: the node's channel is gone.
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.lossy"]).await;
    let second = a.inject_call(call("8100")).unwrap();
    wait_in_stasis(&a, &second, "lossy").await;
    a.hangup_far_end(&second, Some(16)).unwrap();
    let s2 = a.wait_amqp_flushed(SECS5).await;
    assert!(s2.dropped >= s1.dropped + 3, "{s2:?}");
    assert_eq!(s2.published, 0);
    assert_eq!(s2.state, AmqpState::ChannelClosed);
    assert!(sub.settle(300, 1000).await.is_empty());

    // A restart (kill/revive) reconnects with a fresh channel; the registration is gone and
    // must be made again.
    a.kill().await;
    assert_eq!(a.amqp_status().state, AmqpState::Stopped);
    a.revive().await.unwrap();
    assert!(a.amqp_apps().is_empty());
    let (s, v) = ari(&a).ok("GET", "/ari/applications").await;
    assert_eq!((s, v), (200, json!([])));
    assert!(a.wait_amqp_state(AmqpState::Connected, SECS5).await);
    assert_eq!(ari(&a).ok("POST", "/ari/amqp/lossy").await.0, 204);
    let third = a.inject_call(call("8100")).unwrap();
    sub.wait_event("StasisStart", Some(&third), 3000).await;
    a.hangup_far_end(&third, Some(16)).unwrap();
    sub.wait_event("StasisEnd", Some(&third), 3000).await;
    let s3 = a.wait_amqp_flushed(SECS5).await;
    assert_eq!(s3.published, sub.settle(200, 2000).await.len() as u64);
    assert_eq!(s3.dropped, s2.dropped);
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_and_websocket_take_an_app_from_each_other() {
    let exchange = unique("sim-takeover");
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.tk"]).await;
    let c = cluster(&exchange, AmqpFormat::Envelope, ClusterConfig::default()).await;
    let a = c.node("a");
    let api = ari(&a);
    a.set_route("default", "8100", stasis("tk", &[]));
    let ws1 = Ws::connect(&a.ws_url("tk")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.apps(), vec!["tk".to_string()]);

    // AMQP takes the app: the websocket owner is told, exactly as by a newer websocket.
    assert_eq!(api.ok("POST", "/ari/amqp/tk").await.0, 204);
    let ev = ws1
        .wait_for(0, 2000, |e| e["type"] == "ApplicationReplaced")
        .await
        .expect("ApplicationReplaced");
    assert_eq!(ev["application"], "tk");
    assert_eq!(ev["asterisk_id"], a.asterisk_id());
    assert_eq!(a.amqp_apps(), vec!["tk".to_string()]);
    let (_, apps) = api.ok("GET", "/ari/applications").await;
    assert_eq!(apps.as_array().unwrap().len(), 1);
    assert_eq!(apps[0]["name"], "tk");
    let one = a.inject_call(call("8100")).unwrap();
    sub.wait_event("StasisStart", Some(&one), 3000).await;
    let (_, app) = api.ok("GET", "/ari/applications/tk").await;
    assert_eq!(app["channel_ids"], json!([one]));
    a.hangup_far_end(&one, Some(16)).unwrap();
    sub.wait_event("StasisEnd", Some(&one), 3000).await;
    assert_eq!(ws1.count(), 1, "the replaced socket gets nothing more");
    assert_eq!(ws1.closed.lock().clone(), None, "and stays open");

    // A websocket takes it back; the AMQP side is told nothing (no ApplicationReplaced).
    let before = sub.settle(200, 2000).await.len();
    let ws2 = Ws::connect(&a.ws_url("tk")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(a.amqp_apps().is_empty());
    let two = a.inject_call(call("8100")).unwrap();
    ws2.wait_chan("StasisStart", &two, 3000).await.unwrap();
    a.hangup_far_end(&two, Some(16)).unwrap();
    ws2.wait_chan("StasisEnd", &two, 3000).await.unwrap();
    assert_eq!(sub.settle(300, 2000).await.len(), before);
    assert!(sub.types().iter().all(|t| t != "ApplicationReplaced"));

    // Registering again replaces the websocket again; DELETE removes the app whoever owns it.
    assert_eq!(api.ok("POST", "/ari/amqp/tk").await.0, 204);
    ws2.wait_for(0, 2000, |e| e["type"] == "ApplicationReplaced")
        .await
        .expect("ApplicationReplaced on the second socket");
    assert_eq!(
        api.ok("POST", "/ari/amqp/tk").await.0,
        204,
        "again: still 204"
    );
    assert_eq!(api.ok("DELETE", "/ari/amqp/tk").await.0, 204);
    assert_eq!(api.ok("GET", "/ari/applications/tk").await.0, 404);
    assert_eq!(
        api.ok("DELETE", "/ari/amqp/tk").await.0,
        204,
        "unknown: 204"
    );
    let (s, v) = api.ok("GET", "/ari/amqp/tk").await;
    assert_eq!((s, v), (405, json!({"message": "Invalid method"})));
    // A websocket can still get it back after the DELETE.
    let ws3 = Ws::connect(&a.ws_url("tk")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.apps(), vec!["tk".to_string()]);
    let three = a.inject_call(call("8100")).unwrap();
    ws3.wait_chan("StasisStart", &three, 3000).await.unwrap();
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}

/// Without a broker configured (no `amqp` section) registrations work and calls enter the app,
/// but every event is dropped — what `res_stasis_amqp` does without a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_configured_registers_and_drops() {
    let c = Cluster::start(ClusterConfig::default()).await.unwrap();
    let a = c.node("a");
    let api = ari(&a);
    assert_eq!(api.ok("POST", "/ari/amqp/quiet").await.0, 204);
    let (_, apps) = api.ok("GET", "/ari/applications").await;
    assert_eq!(apps[0]["name"], "quiet");
    a.set_route("default", "8100", stasis("quiet", &[]));
    let id = a.inject_call(call("8100")).unwrap();
    wait_in_stasis(&a, &id, "quiet").await;
    let st = a.amqp_status();
    assert_eq!(st.state, AmqpState::Unconfigured);
    assert!(
        st.dropped >= 1 && st.published == 0 && st.pending == 0,
        "{st:?}"
    );
    assert_eq!(a.amqp_config(), None);
    // The control API shows the same.
    let http = reqwest::Client::new();
    let v: Value = http
        .get(format!("{}/nodes/a/amqp", c.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "unconfigured");
    assert_eq!(v["published"], 0);
    assert!(v["dropped"].as_u64().unwrap() >= 1);
    assert_eq!(v["exchange"], Value::Null);
    let v: Value = http
        .get(format!("{}/amqp", a.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "unconfigured");
    c.shutdown().await;
}

/// The node-port and cluster control endpoints for a configured node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_reports_the_publisher() {
    let exchange = unique("sim-control");
    let c = cluster(&exchange, AmqpFormat::Raw, ClusterConfig::with_nodes(1)).await;
    let http = reqwest::Client::new();
    let v: Value = http
        .get(format!("{}/nodes/a/amqp", c.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"state": "connected", "published": 0, "dropped": 0, "pending": 0,
               "exchange": exchange, "format": "raw"})
    );
    let r = http
        .get(format!("{}/nodes/zz/amqp", c.control_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    c.node("a").kill().await;
    let v: Value = http
        .get(format!("{}/nodes/a/amqp", c.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "stopped");
    c.shutdown().await;
}

/// The app's event filter (`PUT /applications/{app}/eventFilter`) is applied by Asterisk on
/// the websocket path only: an AMQP-registered app still publishes every event. The filter
/// stays with the app when a websocket takes it over, and then applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_filter_applies_to_the_websocket_only() {
    let exchange = unique("sim-filter");
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.flt"]).await;
    let c = cluster(&exchange, AmqpFormat::Envelope, ClusterConfig::default()).await;
    let a = c.node("a");
    let api = ari(&a);
    a.set_route("default", "8100", stasis("flt", &[]));
    assert_eq!(api.ok("POST", "/ari/amqp/flt").await.0, 204);
    let allowed = json!([{"type": "StasisStart"}]);
    let r = api
        .http
        .put(format!("{}/applications/flt/eventFilter", a.ari_url()))
        .basic_auth("asterisk", Some("asterisk"))
        .json(&json!({ "allowed": allowed }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let app: Value = r.json().await.unwrap();
    assert_eq!(app["events_allowed"], allowed);

    let one = a.inject_call(call("8100")).unwrap();
    sub.wait_event("StasisStart", Some(&one), 3000).await;
    assert_eq!(
        api.ok("POST", &format!("/ari/channels/{one}/answer"))
            .await
            .0,
        204
    );
    a.hangup_far_end(&one, Some(16)).unwrap();
    sub.wait_event("StasisEnd", Some(&one), 3000).await;
    let types: Vec<String> = sub
        .settle(200, 2000)
        .await
        .iter()
        .map(Received::ty)
        .collect();
    for t in ["ChannelStateChange", "ChannelHangupRequest", "StasisEnd"] {
        assert!(types.iter().any(|x| x == t), "{t} published: {types:?}");
    }

    // A websocket takes the app over: same filter, now applied.
    let ws = Ws::connect(&a.ws_url("flt")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, app) = api.ok("GET", "/ari/applications/flt").await;
    assert_eq!(app["events_allowed"], allowed);
    let two = a.inject_call(call("8100")).unwrap();
    ws.wait_chan("StasisStart", &two, 3000).await.unwrap();
    a.hangup_far_end(&two, Some(16)).unwrap();
    for _ in 0..400 {
        if a.channel(&two).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(a.channel(&two).is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ws.types(), ["StasisStart"]);
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}
