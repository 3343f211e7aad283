//! End-to-end: the ARI facade in front of two simulated nodes. Existing ARI clients (here raw
//! HTTP + websockets, and Asterisk's own Node.js `ari-client`) see one Asterisk; every
//! assertion is on what the nodes received or what the client got back.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use stasis_e2e::{
    app_requests, host_config, route_trunk_legs, runtime_config, sim_config, wait_for,
};
use stasis_host::gateway::Gateway;
use tokio_tungstenite::tungstenite::Message;

const USER: &str = "ext-user";
const PASS: &str = "ext-pass";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Two simulated nodes, a host and its facade on an ephemeral loopback port. Extension 7000
/// enters `Stasis(ext)` on every node.
struct FacadeRig {
    sim: stasis_sim::Cluster,
    host: Gateway,
    /// `http://127.0.0.1:PORT`
    url: String,
    server: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl FacadeRig {
    async fn start() -> FacadeRig {
        let sim = stasis_sim::Cluster::start(sim_config(2))
            .await
            .expect("simulated cluster");
        route_trunk_legs(&sim);
        for node in sim.nodes() {
            node.set_route(
                "default",
                "7000",
                stasis_sim::Route::Stasis {
                    app: "ext".into(),
                    args: vec![],
                },
            );
            node.set_route(
                "default",
                "7100",
                stasis_sim::Route::Stasis {
                    app: "js-app".into(),
                    args: vec![],
                },
            );
        }
        let extra = format!("[facade]\nusername = \"{USER}\"\npassword = \"{PASS}\"\n");
        let host = Gateway::start(host_config(&sim, &extra), runtime_config())
            .await
            .expect("host starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind facade");
        let address = listener.local_addr().expect("facade address").to_string();
        let facade = stasis_host::facade::Facade::new(&host, &address).expect("facade");
        let server = tokio::spawn(async move {
            stasis_host::facade::serve(listener, facade)
                .await
                .expect("facade serves");
        });
        FacadeRig {
            sim,
            host,
            url: format!("http://{address}"),
            server,
            http: reqwest::Client::new(),
        }
    }

    fn node(&self, name: &str) -> stasis_sim::NodeHandle {
        self.sim.node(name)
    }

    async fn events(&self, apps: &str) -> Socket {
        let url = format!(
            "{}/ari/events?app={apps}&api_key={USER}:{PASS}",
            self.url.replace("http://", "ws://")
        );
        tokio_tungstenite::connect_async(url)
            .await
            .expect("facade websocket")
            .0
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> (u16, String) {
        self.request_with(method, path, None).await
    }

    async fn request_with(
        &self,
        method: reqwest::Method,
        path: &str,
        asterisk_id: Option<&str>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method, format!("{}/ari{path}", self.url))
            .basic_auth(USER, Some(PASS));
        if let Some(id) = asterisk_id {
            request = request.header("X-Asterisk-ID", id);
        }
        let response = request.send().await.expect("facade answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// What the node answers directly, for comparison; status 0 while the node is away (a
    /// restart resets pooled connections).
    async fn direct(&self, node: &str, path: &str) -> (u16, String) {
        let (user, pass) = self.sim.credentials();
        let Ok(response) = self
            .http
            .get(format!("{}{path}", self.node(node).ari_url()))
            .basic_auth(user, Some(pass))
            .send()
            .await
        else {
            return (0, String::new());
        };
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// `app`'s Application object as `node` has it (its filter, its subscriptions); Null
    /// while the node lacks the app or is away.
    async fn application_on(&self, node: &str, app: &str) -> serde_json::Value {
        let (_, body) = self.direct(node, &format!("/applications/{app}")).await;
        serde_json::from_str(&body).unwrap_or_default()
    }

    /// Polls [`FacadeRig::application_on`] until `ready` holds (5 s at most); returns the
    /// last object seen.
    async fn wait_application(
        &self,
        node: &str,
        app: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut got = self.application_on(node, app).await;
        for _ in 0..200 {
            if ready(&got) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            got = self.application_on(node, app).await;
        }
        got
    }

    async fn stop(self) {
        self.server.abort();
        self.host.shutdown();
        self.sim.shutdown().await;
    }
}

/// The next text message, as JSON.
async fn next_event(socket: &mut Socket) -> serde_json::Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an event in time")
            .expect("socket open")
            .expect("socket healthy");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("event JSON");
        }
    }
}

/// The next event of `kind`, skipping others.
async fn next_of(socket: &mut Socket, kind: &str) -> serde_json::Value {
    loop {
        let event = next_event(socket).await;
        if event["type"] == kind {
            return event;
        }
    }
}

/// Waits `for_ms` and returns the text messages that arrived.
async fn quiet(socket: &mut Socket, for_ms: u64) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
        if let Message::Text(text) = message {
            got.push(text.to_string());
        }
    }
    got
}

fn inject(rig: &FacadeRig, node: &str, exten: &str) -> String {
    rig.node(node)
        .inject_call(stasis_sim::InboundCall {
            caller_name: "Alice".into(),
            caller_number: "1001".into(),
            exten: exten.into(),
            ..Default::default()
        })
        .expect("call injected")
}

fn logged(node: &stasis_sim::NodeHandle, request: &str) -> bool {
    app_requests(node).iter().any(|r| r == request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_merge_and_rest_routes_to_the_owner_or_the_least_loaded_node() {
    let rig = FacadeRig::start().await;
    let (a, b) = (rig.node("a"), rig.node("b"));
    let mut socket = rig.events("ext").await;
    assert!(
        a.apps().contains(&"ext".to_string()) && b.apps().contains(&"ext".to_string()),
        "registered on both"
    );

    // Calls on both nodes reach the one socket, JSON as the node sent it.
    let on_b = inject(&rig, "b", "7000");
    let start = next_of(&mut socket, "StasisStart").await;
    assert_eq!(start["channel"]["id"], on_b.as_str());
    assert_eq!(start["asterisk_id"], b.asterisk_id(), "asterisk_id intact");
    assert_eq!(start["application"], "ext");
    let on_a = inject(&rig, "a", "7000");
    let start = next_of(&mut socket, "StasisStart").await;
    assert_eq!(start["channel"]["id"], on_a.as_str());
    assert_eq!(start["asterisk_id"], a.asterisk_id());

    // Requests on a channel go to its node only.
    let (status, _) = rig
        .request(reqwest::Method::POST, &format!("/channels/{on_b}/answer"))
        .await;
    assert_eq!(status, 204);
    assert!(
        logged(&b, &format!("POST /ari/channels/{on_b}/answer")),
        "{:?}",
        app_requests(&b)
    );
    assert!(
        !app_requests(&a).iter().any(|r| r.contains(&on_b)),
        "{:?}",
        app_requests(&a)
    );
    let changed = next_of(&mut socket, "ChannelStateChange").await;
    assert_eq!(changed["channel"]["state"], "Up");
    let (status, body) = rig
        .request(reqwest::Method::GET, &format!("/channels/{on_a}"))
        .await;
    assert_eq!(status, 200);
    assert!(body.contains(&on_a));
    assert!(logged(&a, &format!("GET /ari/channels/{on_a}")));

    // Lists merge every node's arrays.
    let (status, body) = rig.request(reqwest::Method::GET, "/channels").await;
    assert_eq!(status, 200);
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a JSON array");
    let ids: Vec<&str> = list.iter().filter_map(|c| c["id"].as_str()).collect();
    assert!(
        ids.contains(&on_a.as_str()) && ids.contains(&on_b.as_str()),
        "{ids:?}"
    );

    // Errors come back exactly as the node words them.
    let via_facade = rig
        .request(reqwest::Method::GET, "/channels/no-such-channel")
        .await;
    let direct = rig.direct("a", "/channels/no-such-channel").await;
    assert_eq!(via_facade, direct);
    assert_eq!(via_facade.0, 404);

    // A new channel goes to the least-loaded node: hang up a's call so b has more.
    a.hangup_far_end(&on_a, None).unwrap();
    next_of(&mut socket, "StasisEnd").await;
    wait_for("a's channel forgotten", || {
        rig.host.ownership.channel_node(&on_a).is_none()
    })
    .await;
    let (status, body) = rig
        .request(
            reqwest::Method::POST,
            "/channels?endpoint=Local/9001@default&app=ext&channelId=orig-1",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        app_requests(&a)
            .iter()
            .any(|r| r.starts_with("POST /ari/channels?") && r.contains("orig-1")),
        "{:?}",
        app_requests(&a)
    );
    assert!(!app_requests(&b).iter().any(|r| r.contains("orig-1")));
    assert_eq!(
        rig.host.ownership.channel_node("orig-1").as_deref(),
        Some("a")
    );
    let start = next_of(&mut socket, "StasisStart").await;
    assert_eq!(start["channel"]["id"], "orig-1");
    assert_eq!(start["asterisk_id"], a.asterisk_id());

    // A bridge created with X-Asterisk-ID lands on that node (next to orig-1), and later
    // requests for it find it there without the header.
    let (status, body) = rig
        .request_with(
            reqwest::Method::POST,
            "/bridges?type=mixing&bridgeId=br-1",
            Some(a.asterisk_id()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(a.bridges().iter().any(|x| x.id == "br-1"));
    let (status, _) = rig
        .request(
            reqwest::Method::POST,
            "/bridges/br-1/addChannel?channel=orig-1",
        )
        .await;
    assert_eq!(status, 204);
    assert!(logged(
        &a,
        "POST /ari/bridges/br-1/addChannel?channel=orig-1"
    ));
    // One placed without the header goes to the least-loaded node.
    let (status, body) = rig
        .request(reqwest::Method::POST, "/bridges/br-2?type=mixing")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = rig.request(reqwest::Method::GET, "/bridges").await;
    assert_eq!(status, 200);
    assert!(body.contains("br-1") && body.contains("br-2"), "{body}");
    let home = if a.bridges().iter().any(|x| x.id == "br-2") {
        &a
    } else {
        &b
    };
    let (status, _) = rig.request(reqwest::Method::DELETE, "/bridges/br-2").await;
    assert_eq!(status, 204);
    assert!(logged(home, "DELETE /ari/bridges/br-2"));

    // X-Asterisk-ID picks the node, whatever the request.
    a.clear_log();
    b.clear_log();
    let (status, _) = rig
        .request_with(
            reqwest::Method::GET,
            "/asterisk/info",
            Some(b.asterisk_id()),
        )
        .await;
    assert_eq!(status, 200);
    // (app_requests hides /asterisk/info, the host's own identification: read the raw logs)
    let info = |n: &stasis_sim::NodeHandle| {
        n.request_log()
            .iter()
            .filter(|r| r.path == "/ari/asterisk/info" && r.query.is_empty())
            .count()
    };
    assert_eq!((info(&a), info(&b)), (0, 1));
    let (status, body) = rig
        .request_with(reqwest::Method::GET, "/asterisk/info", Some("02:ff"))
        .await;
    assert_eq!((status, body.contains("02:ff")), (400, true));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_the_facades_own() {
    let rig = FacadeRig::start().await;
    let (user, pass) = rig.sim.credentials();
    let url = format!("{}/ari/asterisk/info", rig.url);
    let none = rig.http.get(&url).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert!(
        none.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let node_creds = rig
        .http
        .get(&url)
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap();
    assert_eq!(
        node_creds.status().as_u16(),
        401,
        "the nodes' credentials are not the facade's"
    );
    // With no app at all the host has not connected the nodes: REST still works.
    let ok = rig
        .http
        .get(&url)
        .basic_auth(USER, Some(PASS))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let docs = rig
        .http
        .get(format!("{}/ari/api-docs/resources.json", rig.url))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status().as_u16(), 401);
    // api_key works, and api-docs point clients at the facade.
    let docs = rig
        .http
        .get(format!(
            "{}/ari/api-docs/channels.json?api_key={USER}:{PASS}",
            rig.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    let spec: serde_json::Value = docs.json().await.unwrap();
    assert_eq!(spec["basePath"], format!("{}/ari", rig.url));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_client_takes_the_app_and_names_do_not_collide_with_wasm_apps() {
    let rig = FacadeRig::start().await;
    let mut first = rig.events("ext").await;
    let mut second = rig.events("ext").await;
    let replaced = next_event(&mut first).await;
    assert_eq!(replaced["type"], "ApplicationReplaced");
    assert_eq!(replaced["application"], "ext");
    let on_a = inject(&rig, "a", "7000");
    let start = next_of(&mut second, "StasisStart").await;
    assert_eq!(start["channel"]["id"], on_a.as_str());
    assert!(
        quiet(&mut first, 300).await.is_empty(),
        "the replaced client hears nothing"
    );
    // The replaced client is still open: closing it keeps the app.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rig.host.external.holds("ext"));

    // A wasm app's name cannot be taken by a facade client...
    rig.host
        .load_app("conf", stasis_e2e::plugin("conference"), Default::default())
        .await
        .expect("wasm app loads");
    let url = format!(
        "{}/ari/events?app=conf&api_key={USER}:{PASS}",
        rig.url.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 409)
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // ... and an upload cannot take an external client's name.
    let apps = stasis_host::apps::Apps::open(&rig.host)
        .await
        .expect("app store");
    let refused = apps
        .upload("ext", stasis_e2e::plugin("conference"), Default::default())
        .await;
    assert!(
        matches!(refused, Err(stasis_host::apps::AppsError::NameTaken(_))),
        "{:?}",
        refused.map(|_| ())
    );

    // The owner leaving removes the app from the nodes, as on Asterisk.
    drop(second);
    wait_for("ext unregistered", || {
        rig.sim
            .nodes()
            .iter()
            .all(|n| !n.apps().contains(&"ext".to_string()))
    })
    .await;
    assert!(!rig.host.external.holds("ext"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_filters_apply_on_every_node_and_the_hosts_apps_are_not_the_clients_to_change() {
    let rig = FacadeRig::start().await;
    rig.host
        .load_app("conf", stasis_e2e::plugin("conference"), Default::default())
        .await
        .expect("wasm app loads");
    let mut socket = rig.events("ext").await;
    let filter_on = |node: &'static str, app: &'static str| {
        let rig = &rig;
        async move { rig.application_on(node, app).await["events_allowed"].clone() }
    };
    let put_filter = |app: &str| {
        rig.http
            .put(format!("{}/ari/applications/{app}/eventFilter", rig.url))
            .basic_auth(USER, Some(PASS))
            .json(&serde_json::json!({"allowed": [{"type": "StasisStart"}]}))
            .send()
    };

    // The client's filter on its app reaches both nodes, with the kinds the host itself needs
    // (a call's end, for one) let through; the client reads back the filter it set.
    let answer = put_filter("ext").await.expect("facade answers");
    assert_eq!(answer.status().as_u16(), 200);
    let application: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        application["events_allowed"],
        serde_json::json!([{"type": "StasisStart"}])
    );
    let (status, read_back) = rig.request(reqwest::Method::GET, "/applications/ext").await;
    assert_eq!(status, 200);
    let read_back: serde_json::Value = serde_json::from_str(&read_back).unwrap();
    assert_eq!(read_back["events_allowed"], application["events_allowed"]);
    let on_nodes = |allowed: &serde_json::Value| -> Vec<String> {
        let mut types: Vec<String> = allowed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["type"].as_str().map(str::to_string))
            .collect();
        types.sort();
        types
    };
    let mut widened: Vec<String> = stasis_host::event::HOST_EVENTS
        .iter()
        .map(|k| k.to_string())
        .collect();
    widened.sort();
    for node in ["a", "b"] {
        assert_eq!(
            on_nodes(&filter_on(node, "ext").await),
            widened,
            "node {node}"
        );
    }
    // Calls on either node are filtered alike: the client hears StasisStart only, and the
    // host still hears the call end and forgets its channel.
    let on_b = inject(&rig, "b", "7000");
    let start = next_of(&mut socket, "StasisStart").await;
    assert_eq!(start["channel"]["id"], on_b.as_str());
    assert_eq!(rig.host.ownership.channel_node(&on_b).as_deref(), Some("b"));
    rig.node("b").hangup_far_end(&on_b, None).unwrap();
    wait_for("b's channel forgotten", || {
        rig.host.ownership.channel_node(&on_b).is_none()
    })
    .await;
    let heard = quiet(&mut socket, 300).await;
    assert!(heard.is_empty(), "the client's filter holds: {heard:?}");
    let on_a = inject(&rig, "a", "7000");
    let start = next_of(&mut socket, "StasisStart").await;
    assert_eq!(start["channel"]["id"], on_a.as_str());

    // A restarted node has forgotten the filter, and the client, whose socket to the facade
    // stayed up, cannot know: the host sets it again.
    let b = rig.node("b");
    b.kill().await;
    b.revive().await.expect("node b back");
    let after = rig
        .wait_application("b", "ext", |app| {
            on_nodes(&app["events_allowed"]) == widened
        })
        .await;
    assert_eq!(on_nodes(&after["events_allowed"]), widened);

    // The host's apps are not the client's: a wasm app's filter and subscriptions, and the
    // trunk app's, stay as the host set them, on every node.
    // conf as both nodes have it (registered, and unfiltered until its first call tells the
    // host which events it wants): a client's filter would show in its lists.
    let registered = |app: &serde_json::Value| app["events_allowed"].is_array();
    let conf_before = (
        rig.wait_application("a", "conf", registered).await["events_allowed"].clone(),
        rig.wait_application("b", "conf", registered).await["events_allowed"].clone(),
    );
    assert!(
        conf_before.0.is_array() && conf_before.1.is_array(),
        "conf registered on both nodes: {conf_before:?}"
    );
    for app in ["conf", "%63onf", "stasis-trunk"] {
        let answer = put_filter(app).await.expect("facade answers");
        assert_eq!(answer.status().as_u16(), 403, "{app}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("host")),
            "{body}"
        );
    }
    // Asterisk decodes every segment of the path before matching: so does the check.
    for path in [
        "/applications/stasis-trunk/%65ventFilter",
        "/%61pplications/conf/eventFilter",
    ] {
        let answer = rig
            .http
            .put(format!("{}/ari{path}", rig.url))
            .basic_auth(USER, Some(PASS))
            .json(&serde_json::json!({"allowed": [{"type": "StasisStart"}]}))
            .send()
            .await
            .expect("facade answers");
        assert_eq!(answer.status().as_u16(), 403, "{path}");
    }
    for path in [
        "/applications/conf/subscription?eventSource=endpoint:PJSIP",
        "/applications/conf/%73ubscription?eventSource=endpoint:PJSIP",
    ] {
        let (status, _) = rig.request(reqwest::Method::POST, path).await;
        assert_eq!(status, 403, "{path}");
    }
    assert_eq!(
        (filter_on("a", "conf").await, filter_on("b", "conf").await),
        conf_before
    );
    for node in ["a", "b"] {
        let subscribed: Vec<String> = rig
            .node(node)
            .request_log()
            .into_iter()
            .filter(|r| r.path.ends_with("/subscription"))
            .map(|r| r.path)
            .collect();
        assert!(subscribed.is_empty(), "node {node}: {subscribed:?}");
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_and_device_subscriptions_are_set_again_on_a_node_that_restarts() {
    let rig = FacadeRig::start().await;
    let _socket = rig.events("ext").await;
    let subscriptions =
        |app: &serde_json::Value| (app["endpoint_ids"].clone(), app["device_names"].clone());
    let on_node = |node: &'static str| {
        let rig = &rig;
        async move { subscriptions(&rig.application_on(node, "ext").await) }
    };
    let wait_on = |node: &'static str, want: (serde_json::Value, serde_json::Value)| {
        let rig = &rig;
        async move {
            let got = rig
                .wait_application(node, "ext", |app| subscriptions(app) == want)
                .await;
            assert_eq!(subscriptions(&got), want, "node {node}");
        }
    };
    let subscription = |method: reqwest::Method, sources: &str| {
        let path = format!("/applications/ext/subscription?eventSource={sources}");
        let rig = &rig;
        async move { rig.request(method, &path).await }
    };
    let both = (
        serde_json::json!(["PJSIP/anonymous"]),
        serde_json::json!(["Custom:desk"]),
    );

    let (status, body) = subscription(
        reqwest::Method::POST,
        "endpoint:PJSIP/anonymous,deviceState:Custom:desk",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for node in ["a", "b"] {
        assert_eq!(on_node(node).await, both, "node {node}");
    }

    // A restarted node has forgotten them; the client's socket to the facade stayed up, so
    // the host subscribes the app again there (once: Asterisk counts endpoint subscriptions).
    let b = rig.node("b");
    b.kill().await;
    b.revive().await.expect("node b back");
    wait_on("b", both.clone()).await;
    // One unsubscribe removes the endpoint everywhere: a node that kept it was not
    // subscribed twice.
    let (status, body) = subscription(reqwest::Method::DELETE, "endpoint:PJSIP/anonymous").await;
    assert_eq!(status, 200, "{body}");
    let device_only = (serde_json::json!([]), serde_json::json!(["Custom:desk"]));
    for node in ["a", "b"] {
        assert_eq!(on_node(node).await, device_only, "node {node}");
    }
    // What the client removed is not set again after the next restart.
    b.kill().await;
    b.revive().await.expect("node b back");
    wait_on("b", device_only.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(on_node("b").await, device_only);

    // Subscribed three times, unsubscribed once: Asterisk counts, and still sends the
    // endpoint's events, so a node that restarts gets it again, twice. A request every node
    // refuses part-way (the unknown endpoint) still subscribed the app to the device before it.
    for _ in 0..3 {
        let (status, body) = subscription(reqwest::Method::POST, "endpoint:PJSIP/anonymous").await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = subscription(reqwest::Method::DELETE, "endpoint:PJSIP/anonymous").await;
    assert_eq!(status, 200);
    let (status, body) = subscription(
        reqwest::Method::POST,
        "deviceState:Custom:door,endpoint:PJSIP/nobody",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let kept = (
        serde_json::json!(["PJSIP/anonymous"]),
        serde_json::json!(["Custom:desk", "Custom:door"]),
    );
    assert_eq!(on_node("a").await, kept);
    b.kill().await;
    b.revive().await.expect("node b back");
    wait_on("b", kept.clone()).await;
    // Two more unsubscribes end it on both nodes; a third is refused, as nothing is left.
    for _ in 0..2 {
        let (status, _) = subscription(reqwest::Method::DELETE, "endpoint:PJSIP/anonymous").await;
        assert_eq!(status, 200);
    }
    let devices = (serde_json::json!([]), kept.1.clone());
    for node in ["a", "b"] {
        assert_eq!(on_node(node).await, devices, "node {node}");
    }
    let (status, _) = subscription(reqwest::Method::DELETE, "endpoint:PJSIP/anonymous").await;
    assert_eq!(status, 422);
    rig.stop().await;
}

/// Asterisk's own Node.js ARI client (`ari-client`, pinned in
/// `tests/facade-client/package-lock.json`) runs a scenario through the facade: it loads the
/// spec from `/ari/api-docs`, starts its app, answers an inbound call on node b and a call it
/// originates (placed on a), plays to both and hangs up after PlaybackFinished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_node_ari_client_runs_against_the_facade() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("facade-client");
    if Command::new("node").arg("--version").output().is_err() {
        panic!("node is required for this test (Node.js 18+)");
    }
    // Idempotent: installs the pinned versions into the gitignored node_modules once.
    if !dir.join("node_modules/ari-client/package.json").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci failed");
    }
    let rig = FacadeRig::start().await;
    let script = dir.join("scenario.js");
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .env("FACADE_URL", &rig.url)
        .env("FACADE_USER", USER)
        .env("FACADE_PASS", PASS)
        .env("SIM_CONTROL", rig.sim.control_url())
        .env("INBOUND_NODE", "b")
        .env("APP", "js-app")
        .env("EXTEN", "7100")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("script ends")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scenario failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("summary JSON");
    let inbound = summary["inbound"].as_str().expect("inbound id");
    let originated = summary["originated"].as_str().expect("originated id");
    let (a, b) = (rig.node("a"), rig.node("b"));
    assert_eq!(summary["asterisk_ids"][inbound], b.asterisk_id());
    assert_eq!(
        summary["asterisk_ids"][originated],
        a.asterisk_id(),
        "originate placed on the least-loaded node"
    );
    assert_eq!(
        summary["played"].as_array().map(Vec::len),
        Some(2),
        "{summary}"
    );
    for (node, id) in [(&b, inbound), (&a, originated)] {
        let log = app_requests(node);
        assert!(
            log.contains(&format!("POST /ari/channels/{id}/answer")),
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|r| r.starts_with(&format!("POST /ari/channels/{id}/play"))),
            "{log:?}"
        );
        assert!(
            log.contains(&format!("DELETE /ari/channels/{id}")),
            "{log:?}"
        );
    }
    assert!(
        !app_requests(&a).iter().any(|r| r.contains(inbound)),
        "inbound call's requests stayed on b"
    );
    assert!(
        summary["not_found"]
            .as_str()
            .is_some_and(|m| m.contains("Channel not found")),
        "{summary}"
    );
    rig.stop().await;
}
