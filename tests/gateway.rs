//! End-to-end: the host in front of simulated nodes over loopback HTTP and websockets.
//! Every assertion is on what the nodes observably received or hold.

use stasis_e2e::{Rig, app_requests, in_bridge, wait_for};
use stasis_host::backend::{AriBackend, AriError, Operation, Origin, Outcome};

fn conf(rig: &Rig) -> std::sync::Arc<stasis_host::runtime::App> {
    rig.host.catalog.get("conf").expect("conf loaded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conference_on_one_node_sends_the_seed_sequence() {
    let rig = Rig::start(1, &[("conf", "conference")]).await;
    let a = rig.node("a");
    let mut ids = Vec::new();
    for caller in ["Alice", "Bob", "Carol"] {
        let id = rig.call("a", caller, "8000");
        wait_for(&format!("{caller} bridged"), || in_bridge(&a, &id, "conf")).await;
        ids.push(id);
    }
    let bridges = a.bridges();
    assert_eq!(bridges.len(), 1, "{bridges:?}");
    assert_eq!(bridges[0].bridge_type, "mixing");
    let mut members = bridges[0].channels.clone();
    members.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(members, expected, "everyone hears everyone");

    // The seed's sequence: create the bridge once, then per call answer and, once up, add.
    let mut want = vec!["POST /ari/bridges/conf?type=mixing".to_string()];
    for id in &ids {
        want.push(format!("POST /ari/channels/{id}/answer"));
        want.push(format!("POST /ari/bridges/conf/addChannel?channel={id}"));
    }
    assert_eq!(app_requests(&a), want);
    assert_eq!(conf(&rig).live_calls(), 3);

    for id in &ids {
        a.hangup_far_end(id, None).unwrap();
    }
    wait_for("every instance dropped", || conf(&rig).live_calls() == 0).await;
    assert_eq!(
        rig.host.ownership.sizes().0,
        0,
        "ownership forgets ended channels"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_two_nodes_are_each_handled_on_their_own_node() {
    let rig = Rig::start(2, &[("conf", "conference")]).await;
    let (a, b) = (rig.node("a"), rig.node("b"));
    let mut calls = Vec::new();
    for (node, caller) in [("a", "Alice"), ("b", "Bob"), ("a", "Carol"), ("b", "Dave")] {
        let id = rig.call(node, caller, "8000");
        calls.push((node, id));
    }
    for (node, id) in &calls {
        let handle = rig.node(node);
        wait_for(&format!("{id} bridged on {node}"), || {
            in_bridge(&handle, id, "conf")
        })
        .await;
    }
    for (node, id) in &calls {
        let (own, other) = if *node == "a" { (&a, &b) } else { (&b, &a) };
        let own_log = app_requests(own);
        assert!(
            own_log.contains(&format!("POST /ari/channels/{id}/answer")),
            "{own_log:?}"
        );
        assert!(
            own_log.contains(&format!("POST /ari/bridges/conf/addChannel?channel={id}")),
            "{own_log:?}"
        );
        let strays: Vec<String> = app_requests(other)
            .into_iter()
            .filter(|r| r.contains(id.as_str()))
            .collect();
        assert!(
            strays.is_empty(),
            "requests for {id} reached the wrong node: {strays:?}"
        );
    }
    // Each node made its own local part of the conference.
    assert_eq!(
        app_requests(&a)
            .iter()
            .filter(|r| r.starts_with("POST /ari/bridges/conf?"))
            .count(),
        1
    );
    assert_eq!(
        app_requests(&b)
            .iter()
            .filter(|r| r.starts_with("POST /ari/bridges/conf?"))
            .count(),
        1
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_ends_its_calls_others_go_on_and_its_return_is_picked_up() {
    let rig = Rig::start(2, &[("conf", "conference")]).await;
    let (a, b) = (rig.node("a"), rig.node("b"));
    let on_a = rig.call("a", "Alice", "8000");
    let on_b = rig.call("b", "Bob", "8000");
    wait_for("both bridged", || {
        in_bridge(&a, &on_a, "conf") && in_bridge(&b, &on_b, "conf")
    })
    .await;
    assert_eq!(conf(&rig).live_calls(), 2);

    a.kill().await;
    wait_for("node a seen down", || {
        !rig.host.cluster.node("a").unwrap().is_up()
    })
    .await;
    wait_for("node a's call ended", || conf(&rig).live_calls() == 1).await;
    assert!(in_bridge(&b, &on_b, "conf"), "node b's call is untouched");

    // Node b keeps taking calls while a is down.
    let second_b = rig.call("b", "Carol", "8000");
    wait_for("new call on b bridged", || in_bridge(&b, &second_b, "conf")).await;

    a.revive().await.unwrap();
    rig.wait_connected().await;
    let back_on_a = rig.call("a", "Dave", "8000");
    wait_for("call on the revived node bridged", || {
        in_bridge(&a, &back_on_a, "conf")
    })
    .await;
    assert_eq!(conf(&rig).live_calls(), 3);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_is_looked_up_on_every_node_once_then_cached() {
    let rig = Rig::start(2, &[("conf", "conference")]).await;
    let (a, b) = (rig.node("a"), rig.node("b"));
    // A channel the host never heard of: in the dialplan on b (Answer + Wait), not in Stasis.
    let stranger = rig.call("b", "Eve", "9001");
    a.clear_log();
    b.clear_log();
    let origin = Origin {
        app: "conf".into(),
        node: b.asterisk_id().into(),
        channel: "nobody".into(),
    };
    let get = |id: &str| Operation::Raw {
        method: "GET".into(),
        path: format!("/channels/{id}"),
        query: vec![],
        body: None,
    };

    let first = rig
        .host
        .router
        .execute(&origin, get(&stranger))
        .await
        .unwrap();
    assert!(
        matches!(first, Outcome::Raw { status: 200, ref body } if body.contains(&stranger)),
        "{first:?}"
    );
    let path = format!("GET /ari/channels/{stranger}");
    assert_eq!(
        app_requests(&a),
        vec![path.clone()],
        "a was asked once and said 404"
    );
    assert_eq!(
        app_requests(&b),
        vec![path.clone(), path.clone()],
        "b answered the lookup, then the request"
    );

    rig.host
        .router
        .execute(&origin, get(&stranger))
        .await
        .unwrap();
    assert_eq!(app_requests(&a).len(), 1, "cached: a is not asked again");
    assert_eq!(app_requests(&b).len(), 3);

    // An id no node has: not found, never guessed.
    let missing = rig
        .host
        .router
        .execute(&origin, get("no-such-channel"))
        .await
        .unwrap_err();
    assert!(matches!(missing, AriError::NotFound(_)), "{missing:?}");
    assert_eq!(
        app_requests(&a).last().unwrap(),
        "GET /ari/channels/no-such-channel"
    );
    assert_eq!(
        app_requests(&b).last().unwrap(),
        "GET /ari/channels/no-such-channel"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_the_same_asterisk_id_is_refused() {
    use stasis_host::cluster::Health;
    // Two one-node clusters whose nodes share the default entity id of node "a": a
    // misconfigured pair of Asterisk boxes cloned from one image.
    let first = stasis_sim::Cluster::start(stasis_e2e::sim_config(1))
        .await
        .unwrap();
    let second = stasis_sim::Cluster::start(stasis_e2e::sim_config(1))
        .await
        .unwrap();
    let (x, y) = (first.node("a"), second.node("a"));
    assert_eq!(x.asterisk_id(), y.asterisk_id());
    let (user, pass) = first.credentials();
    let config = stasis_host::config::Config::from_toml(&format!(
        "[nodes.x]\nari_url = \"{}\"\nusername = \"{user}\"\npassword = \"{pass}\"\n\
         [nodes.y]\nari_url = \"{}\"\nusername = \"{user}\"\npassword = \"{pass}\"\n\
         [limits]\nmax_reconnect_ms = 200\n",
        x.ari_url(),
        y.ari_url()
    ))
    .unwrap();
    let host = stasis_host::gateway::Gateway::start(config, stasis_e2e::runtime_config())
        .await
        .unwrap();
    host.load_app("conf", stasis_e2e::plugin("conference"), Default::default())
        .await
        .unwrap();
    wait_for("one node up, the other refused", || {
        let healths: Vec<Health> = host.cluster.nodes().map(|n| n.health()).collect();
        healths.contains(&Health::Up) && healths.contains(&Health::Refused)
    })
    .await;
    // The refused node never got an event socket: only identification requests.
    let refused = host
        .cluster
        .nodes()
        .find(|n| n.health() == Health::Refused)
        .unwrap()
        .name
        .clone();
    let log = if refused == "x" {
        x.request_log()
    } else {
        y.request_log()
    };
    assert!(
        !log.is_empty() && log.iter().all(|r| r.path == "/ari/asterisk/info"),
        "{log:?}"
    );
    host.shutdown();
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_apps_share_the_host_and_an_originated_channel_comes_back_to_its_app() {
    let rig = Rig::start(1, &[("conf", "conference"), ("probe", "probe")]).await;
    let a = rig.node("a");
    a.set_route(
        "default",
        "7100",
        stasis_sim::Route::Stasis {
            app: "probe".into(),
            args: vec!["exercise".into()],
        },
    );
    let conf_call = rig.call("a", "Alice", "8000");
    let probe_call = rig.call("a", "Bob", "7100");
    wait_for("conference caller bridged", || {
        in_bridge(&a, &conf_call, "conf")
    })
    .await;
    let probe = rig.host.catalog.get("probe").unwrap();
    wait_for("probe exercised its imports", || {
        probe
            .kv_get(&format!("results:{probe_call}"))
            .is_some_and(|r| r.contains("request "))
    })
    .await;
    // The probe originated Local/9001@default with app-args "child": the answered channel
    // enters Stasis for the probe app (not conf) and starts a call of its own there.
    wait_for("the originated channel came back to the probe app", || {
        a.channels()
            .iter()
            .any(|c| c.stasis_app.as_deref() == Some("probe") && c.id != probe_call)
    })
    .await;
    let results = probe.kv_get(&format!("results:{probe_call}")).unwrap();
    let originated = results
        .lines()
        .find_map(|l| l.strip_prefix("originate ok "))
        .unwrap_or_else(|| panic!("originate result missing: {results}"))
        .trim()
        .to_string();
    wait_for("the child's on-start ran in the probe app", || {
        probe
            .kv_get(&format!("trace:{originated}"))
            .is_some_and(|t| t.starts_with("on-start ") && t.contains("\"child\""))
    })
    .await;
    assert_eq!(
        conf(&rig).live_calls(),
        1,
        "the conference app only has its own caller"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_events_are_skipped_and_the_connection_stays_up() {
    let rig = Rig::start(1, &[("conf", "conference")]).await;
    let a = rig.node("a");
    let before = rig.call("a", "Alice", "8000");
    wait_for("Alice bridged", || in_bridge(&a, &before, "conf")).await;
    let sockets_before = a
        .request_log()
        .iter()
        .filter(|r| r.path == "/ari/events")
        .count();
    for garbage in [
        "{not json",
        "[]",
        r#"{"no_type": true}"#,
        r#"{"type":"StasisStart","channel":"not an object","application":"conf"}"#,
        r#"{"type":"ChannelDtmfReceived","application":"conf","channel":{"id":"x"}}"#,
        r#"{"type":"SomethingFromAsterisk99","application":"conf","asterisk_id":"02:00:00:00:00:0a","weird":[1,2,3]}"#,
        "",
    ] {
        assert!(a.send_raw_event("conf", garbage), "the app has a socket");
    }
    // The same socket still carries events: a new call is handled normally.
    let after = rig.call("a", "Bob", "8000");
    wait_for("Bob bridged after the garbage", || {
        in_bridge(&a, &after, "conf")
    })
    .await;
    let sockets_after = a
        .request_log()
        .iter()
        .filter(|r| r.path == "/ari/events")
        .count();
    assert_eq!(sockets_before, sockets_after, "no reconnection was needed");
    assert!(rig.host.cluster.node("a").unwrap().is_up());
    assert_eq!(conf(&rig).live_calls(), 2, "Alice's call was not disturbed");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_starts_before_a_node_and_waits_for_it() {
    let sim = stasis_sim::Cluster::start(stasis_e2e::sim_config(2))
        .await
        .unwrap();
    stasis_e2e::route_trunk_legs(&sim);
    let (a, b) = (sim.node("a"), sim.node("b"));
    a.kill().await; // node a is still booting when the host starts
    let host = stasis_host::gateway::Gateway::start(
        stasis_e2e::host_config(&sim, ""),
        stasis_e2e::runtime_config(),
    )
    .await
    .expect("start-up does not fail on a missing node");
    host.load_app("conf", stasis_e2e::plugin("conference"), Default::default())
        .await
        .unwrap();
    wait_for("node b up", || host.cluster.node("b").unwrap().is_up()).await;
    assert!(!host.cluster.node("a").unwrap().is_up());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    a.revive().await.unwrap();
    wait_for("node a picked up once it answers", || {
        host.cluster.node("a").unwrap().is_up() && a.apps().contains(&"conf".to_string())
    })
    .await;
    let id = a
        .inject_call(stasis_e2e::InboundCall {
            caller_name: "Late".into(),
            exten: "8000".into(),
            ..Default::default()
        })
        .unwrap();
    wait_for("call on the late node bridged", || {
        in_bridge(&a, &id, "conf")
    })
    .await;
    assert!(b.request_log().iter().all(|r| !r.path.contains(&id)));
    host.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_beyond_the_apps_cap_is_rejected_with_congestion() {
    let sim = stasis_sim::Cluster::start(stasis_e2e::sim_config(1))
        .await
        .unwrap();
    let host = stasis_host::gateway::Gateway::start(
        stasis_e2e::host_config(&sim, ""),
        stasis_e2e::runtime_config(),
    )
    .await
    .unwrap();
    let settings = stasis_host::runtime::AppSettings {
        max_live_calls: 1,
        ..Default::default()
    };
    host.load_app("conf", stasis_e2e::plugin("conference"), settings)
        .await
        .unwrap();
    let a = sim.node("a");
    wait_for("connected", || {
        host.cluster.node("a").unwrap().is_up() && a.apps().contains(&"conf".to_string())
    })
    .await;
    let call = |name: &str| {
        a.inject_call(stasis_e2e::InboundCall {
            caller_name: name.into(),
            exten: "8000".into(),
            ..Default::default()
        })
        .unwrap()
    };
    let first = call("First");
    wait_for("first bridged", || in_bridge(&a, &first, "conf")).await;
    let second = call("Second");
    wait_for("second rejected", || a.channel(&second).is_none()).await;
    assert!(
        app_requests(&a).contains(&format!("DELETE /ari/channels/{second}?reason=congestion")),
        "{:?}",
        app_requests(&a)
    );
    assert!(
        in_bridge(&a, &first, "conf"),
        "the call in progress is untouched"
    );
    host.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_gets_on_event_only_for_the_event_types_it_declared() {
    use stasis_host::runtime::EventInterest;
    let rig = Rig::start(1, &[("causes", "hangup-cause"), ("probe", "probe")]).await;
    let a = rig.node("a");
    for (exten, app) in [("7200", "causes"), ("7100", "probe")] {
        a.set_route(
            "default",
            exten,
            stasis_sim::Route::Stasis {
                app: app.into(),
                args: vec!["answer".into()],
            },
        );
    }
    let causes = rig.host.catalog.get("causes").unwrap();
    let probe = rig.host.catalog.get("probe").unwrap();
    let mut calls = Vec::new();
    for (caller, exten) in [("Alice", "7200"), ("Bob", "7100"), ("Carol", "7200")] {
        let id = rig.call("a", caller, exten);
        wait_for(&format!("{caller} answered"), || {
            a.channel(&id).is_some_and(|c| c.state == "Up")
        })
        .await;
        calls.push(id);
    }
    for (id, cause) in calls.iter().zip([17, 16, 21]) {
        a.hangup_far_end(id, Some(cause)).unwrap();
    }
    wait_for("every call ended", || {
        causes.live_calls() == 0 && probe.live_calls() == 0
    })
    .await;

    // The declaration was asked and kept; the probe (the SDK's default) wants everything.
    assert_eq!(
        causes.event_interest(),
        Some(&EventInterest::Only(
            vec!["ChannelHangupRequest".into()].into()
        ))
    );
    assert_eq!(probe.event_interest(), Some(&EventInterest::All));
    // The same node sent the probe's call other events through on-event (state changes,
    // variables); the hangup-cause app was woken only for the hangup requests.
    let probe_trace = probe.kv_get(&format!("trace:{}", calls[1])).unwrap();
    let probe_kinds: Vec<&str> = probe_trace
        .lines()
        .filter_map(|l| l.split("\"kind\":\"").nth(1))
        .filter_map(|k| k.split('"').next())
        .collect();
    assert!(
        probe_kinds.iter().any(|k| *k != "ChannelHangupRequest"),
        "the probe saw other kinds: {probe_kinds:?}"
    );
    for (id, cause) in [(&calls[0], "17"), (&calls[2], "21")] {
        assert_eq!(
            causes.kv_get(&format!("events:{id}")).as_deref(),
            Some("ChannelHangupRequest "),
            "{id}"
        );
        assert_eq!(
            causes.kv_get(&format!("cause:{id}")).as_deref(),
            Some(cause)
        );
    }
    assert_eq!(causes.kv_get("causes:17").as_deref(), Some("1"));
    rig.stop().await;
}

/// The node's event filter for `app`: (allowed types, sorted; disallowed types).
async fn node_filter(rig: &Rig, node: &str, app: &str) -> Option<(Vec<String>, Vec<String>)> {
    let (user, pass) = rig.sim.credentials();
    let response = reqwest::Client::new()
        .get(format!("{}/applications/{app}", rig.node(node).ari_url()))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .ok()?;
    let json: serde_json::Value = response.json().await.ok()?;
    let types = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = json[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["type"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    Some((types("events_allowed"), types("events_disallowed")))
}

/// Waits until `app`'s filter on `node` allows exactly `kinds` (and disallows nothing).
async fn wait_until_filter(rig: &Rig, node: &str, app: &str, kinds: &[String]) {
    let mut last = None;
    for _ in 0..200 {
        last = node_filter(rig, node, app).await;
        if last.as_ref().is_some_and(|(allowed, _)| allowed == kinds) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(last, Some((kinds.to_vec(), vec![])), "{app} on {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_send_only_the_events_the_host_and_the_apps_use_and_get_told_again_after_a_restart() {
    use stasis_host::event::{HOST_EVENTS, REST_RESPONSE};
    let rig = Rig::start(2, &[("conf", "conference"), ("causes", "hangup-cause")]).await;
    let a = rig.node("a");
    a.set_route(
        "default",
        "7200",
        stasis_sim::Route::Stasis {
            app: "causes".into(),
            args: vec![],
        },
    );
    // The host's own kinds, and the answers to requests it sends on the socket.
    let mut host_kinds: Vec<String> = HOST_EVENTS
        .iter()
        .chain([&REST_RESPONSE])
        .map(|k| k.to_string())
        .collect();
    host_kinds.sort();
    let mut causes_kinds = host_kinds.clone();
    causes_kinds.push("ChannelHangupRequest".into());
    causes_kinds.sort();

    // The host's own trunk-leg app is filtered from the start; an app only once its first
    // call has told the host what it wants (until then the node sends it everything).
    for node in ["a", "b"] {
        wait_until_filter(&rig, node, "stasis-trunk", &host_kinds).await;
        assert_eq!(
            node_filter(&rig, node, "conf").await,
            Some((vec![], vec![])),
            "conf unfiltered before its first call"
        );
    }
    let alice = rig.call("a", "Alice", "8000");
    let bob = rig.call("a", "Bob", "7200");
    wait_for("Alice bridged", || in_bridge(&a, &alice, "conf")).await;
    let expected = [
        ("conf", host_kinds.clone()),
        ("causes", causes_kinds.clone()),
        ("stasis-trunk", host_kinds.clone()),
    ];
    for node in ["a", "b"] {
        for (app, kinds) in &expected {
            wait_until_filter(&rig, node, app, kinds).await;
        }
    }
    // Calls go on as before with the filters in place, including the hangup cause.
    let carol = rig.call("a", "Carol", "8000");
    wait_for("Carol bridged", || in_bridge(&a, &carol, "conf")).await;
    a.hangup_far_end(&bob, Some(17)).unwrap();
    let causes = rig.host.catalog.get("causes").unwrap();
    wait_for("Bob's cause recorded", || {
        causes.kv_get(&format!("cause:{bob}")).as_deref() == Some("17")
    })
    .await;

    // A restarted node has forgotten its filters: they are set again once it is back.
    a.kill().await;
    wait_for("node a seen down", || {
        !rig.host.cluster.node("a").unwrap().is_up()
    })
    .await;
    a.revive().await.unwrap();
    rig.wait_connected().await;
    wait_until_filter(&rig, "a", "conf", &host_kinds).await;
    let dave = rig.call("a", "Dave", "8000");
    wait_for("a call on the restarted node bridged", || {
        in_bridge(&a, &dave, "conf")
    })
    .await;

    // A hot swap to a version not asked yet widens the filter at once: its first call may
    // want anything (this one, the probe, wants every type).
    rig.host
        .load_app(
            "conf",
            stasis_e2e::plugin("probe"),
            stasis_host::runtime::AppSettings::default(),
        )
        .await
        .unwrap();
    wait_until_filter(&rig, "a", "conf", &[]).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_the_event_websocket_where_the_node_takes_them_there_and_over_http_elsewhere()
 {
    // a: Asterisk 22.4+; b: an older Asterisk that ignores requests on the socket; c: takes
    // them, but the host is configured to use HTTP there.
    let mut sim_config = stasis_e2e::sim_config(3);
    sim_config.nodes[1].rest_over_websocket = false;
    stasis_e2e::init_logging();
    let sim = stasis_sim::Cluster::start(sim_config).await.unwrap();
    stasis_e2e::route_trunk_legs(&sim);
    let mut config = stasis_e2e::host_config(&sim, "");
    config.nodes.get_mut("c").unwrap().rest = stasis_host::config::RestTransport::Http;
    let host = stasis_host::gateway::Gateway::start(config, stasis_e2e::runtime_config())
        .await
        .unwrap();
    stasis_e2e::load_plugin_cached(&host, "conf", "conference").await;
    let rig = Rig { sim, host };
    rig.wait_connected().await;
    let socket_ready = |node: &str| {
        rig.host
            .cluster
            .node(node)
            .unwrap()
            .client
            .socket()
            .is_ready()
    };
    wait_for("node a takes requests on its socket", || socket_ready("a")).await;

    let mut calls = Vec::new();
    for node in ["a", "b", "c"] {
        let id = rig.call(node, "Alice", "8000");
        wait_for(&format!("{node}: bridged"), || {
            in_bridge(&rig.node(node), &id, "conf")
        })
        .await;
        calls.push((node, id));
    }
    // How each node got each request of its call, as its log says.
    let transports = |node: &str, id: &str| -> Vec<(String, bool)> {
        rig.node(node)
            .request_log()
            .into_iter()
            .filter(|r| r.path.contains(id) || r.query.contains(id))
            .map(|r| (format!("{} {}", r.method, r.path), r.over_websocket))
            .collect()
    };
    for (node, id) in &calls {
        let over_socket = *node == "a";
        assert_eq!(
            transports(node, id),
            [
                (format!("POST /ari/channels/{id}/answer"), over_socket),
                ("POST /ari/bridges/conf/addChannel".to_string(), over_socket),
            ],
            "node {node}"
        );
    }
    assert!(!socket_ready("b") && !socket_ready("c"));
    // b was asked (and did not answer); c never was.
    let probes = |node: &str| {
        rig.node(node)
            .request_log()
            .iter()
            .filter(|r| r.path == "/ari/asterisk/ping")
            .count()
    };
    assert!(probes("a") >= 1);
    assert_eq!(probes("c"), 0);

    // A new app set moves the node to a new socket without a hitch: the host identifies the
    // node over HTTP meanwhile (the old socket's answers are not read then), and the node
    // never goes down.
    let mut health = rig.host.cluster.node("a").unwrap().watch_health();
    health.borrow_and_update();
    let moved = std::time::Instant::now();
    stasis_e2e::load_plugin_cached(&rig.host, "late", "probe").await;
    wait_for("node a has the new app", || {
        rig.node("a").apps().contains(&"late".to_string())
    })
    .await;
    assert!(
        moved.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        moved.elapsed()
    );
    assert!(!health.has_changed().unwrap(), "node a stayed up");
    wait_for("node a takes requests on its new socket", || {
        socket_ready("a")
    })
    .await;
    assert!(
        rig.node("a")
            .request_log()
            .iter()
            .filter(|r| r.path == "/ari/asterisk/info")
            .all(|r| !r.over_websocket),
        "identification goes over HTTP"
    );

    // A restarted node gets a new socket, probed again before requests use it.
    let a = rig.node("a");
    a.kill().await;
    wait_for("node a down", || {
        !rig.host.cluster.node("a").unwrap().is_up()
    })
    .await;
    assert!(!socket_ready("a"), "no socket, no requests on it");
    a.revive().await.unwrap();
    rig.wait_connected().await;
    wait_for("node a takes requests on its new socket", || {
        socket_ready("a")
    })
    .await;
    let again = rig.call("a", "Bob", "8000");
    wait_for("bridged after the restart", || {
        in_bridge(&a, &again, "conf")
    })
    .await;
    assert!(
        transports("a", &again).iter().all(|(_, socket)| *socket),
        "{:?}",
        transports("a", &again)
    );

    // A host that stops closes its sockets: the nodes drop its apps.
    let Rig { sim, host } = rig;
    host.shutdown();
    wait_for("node a dropped the host's apps", || {
        sim.node("a").apps().is_empty()
    })
    .await;
    sim.shutdown().await;
}

/// Sets the event filter of `app` on `node` directly (as another ARI client could).
async fn set_filter(rig: &Rig, node: &str, app: &str, allowed: &[&str]) {
    let (user, pass) = rig.sim.credentials();
    let allowed: Vec<serde_json::Value> = allowed
        .iter()
        .map(|t| serde_json::json!({ "type": t }))
        .collect();
    let status = reqwest::Client::new()
        .put(format!(
            "{}/applications/{app}/eventFilter",
            rig.node(node).ari_url()
        ))
        .basic_auth(user, Some(pass))
        .json(&serde_json::json!({ "allowed": allowed }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hidden_by_an_event_filter_send_requests_back_to_http_until_they_pass_again() {
    use stasis_host::event::{HOST_EVENTS, REST_RESPONSE};
    let rig = Rig::start(1, &[("conf", "conference")]).await;
    let a = rig.node("a");
    let client = rig.host.cluster.node("a").unwrap().client.clone();
    let over = |id: &str| -> Vec<bool> {
        a.request_log()
            .iter()
            .filter(|r| r.path.contains(id) || r.query.contains(id))
            .map(|r| r.over_websocket)
            .collect()
    };
    let mut host_kinds: Vec<String> = HOST_EVENTS.iter().map(|k| k.to_string()).collect();

    // The host sets its own filters once conf's first call has told what conf wants; only
    // after that do the filters below stay as this test sets them.
    wait_for("node a takes requests on its socket", || {
        client.socket().is_ready()
    })
    .await;
    let first = rig.call("a", "Alice", "8000");
    wait_for("bridged", || in_bridge(&a, &first, "conf")).await;
    let mut hosts = host_kinds.clone();
    hosts.push(REST_RESPONSE.to_string());
    hosts.sort();
    wait_until_filter(&rig, "a", "stasis-trunk", &hosts).await;
    wait_until_filter(&rig, "a", "conf", &hosts).await;

    // Another client's filter on the app leaves answers out: they still arrive, since they
    // come as events of the socket's first app, the host's own trunk app.
    let host_refs: Vec<&str> = host_kinds.iter().map(String::as_str).collect();
    set_filter(&rig, "a", "conf", &host_refs).await;
    let second = rig.call("a", "Bob", "8000");
    wait_for("bridged", || in_bridge(&a, &second, "conf")).await;
    assert_eq!(over(&second), [true, true]);
    assert!(client.socket().is_ready());

    // Hiding them on the trunk app too: the next request waits in vain, then requests go over
    // HTTP while the node does not answer on the socket. (Once every earlier answer is in:
    // a request left waiting would send the probe to HTTP as a backed-up socket does.)
    wait_for("every answer in", || client.socket().in_flight() == 0).await;
    set_filter(&rig, "a", "stasis-trunk", &host_refs).await;
    let lost = client
        .call(reqwest::Method::GET, "/asterisk/ping", &[], None)
        .await
        .unwrap_err();
    assert!(matches!(lost, AriError::Timeout(_)), "{lost:?}");
    assert!(!client.socket().is_ready());
    let third = rig.call("a", "Carol", "8000");
    wait_for("bridged over HTTP", || in_bridge(&a, &third, "conf")).await;
    assert_eq!(over(&third), [false, false]);

    // Once answers pass again, a probe finds it and requests return to the socket.
    host_kinds.push(REST_RESPONSE.to_string());
    let host_refs: Vec<&str> = host_kinds.iter().map(String::as_str).collect();
    set_filter(&rig, "a", "stasis-trunk", &host_refs).await;
    wait_for("node a takes requests on its socket again", || {
        client.socket().is_ready()
    })
    .await;
    let fourth = rig.call("a", "Dave", "8000");
    wait_for("bridged", || in_bridge(&a, &fourth, "conf")).await;
    assert_eq!(over(&fourth), [true, true]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_node_is_reached_over_tls_for_requests_and_events() {
    // a serves HTTPS and WSS with a certificate from a private CA the host is told to trust;
    // b is plain HTTP. One conference spans both.
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, tls) = stasis_e2e::tls_files(dir.path(), "cluster");
    let mut sim_config = stasis_e2e::sim_config(2);
    sim_config.nodes[0].tls = Some(tls);
    let host_extra = format!("[tls]\nca_file = {:?}\n", ca_file.display().to_string());
    let rig = Rig::start_configured(sim_config, &host_extra, &[("conf", "conference")]).await;
    let (a, b) = (rig.node("a"), rig.node("b"));
    assert!(a.ari_url().starts_with("https://"), "{}", a.ari_url());
    assert!(b.ari_url().starts_with("http://"), "{}", b.ari_url());
    wait_for("node a takes requests on its wss socket", || {
        rig.host
            .cluster
            .node("a")
            .unwrap()
            .client
            .socket()
            .is_ready()
    })
    .await;

    let on_a = rig.call("a", "Alice", "8000");
    let on_b = rig.call("b", "Bob", "8000");
    wait_for("both bridged", || {
        in_bridge(&a, &on_a, "conf") && in_bridge(&b, &on_b, "conf")
    })
    .await;
    wait_for(
        "one conference across the nodes (trunk legs bridged)",
        || {
            a.bridges()
                .iter()
                .any(|br| br.id == "conf" && br.channels.len() == 2)
                && b.bridges()
                    .iter()
                    .any(|br| br.id == "conf" && br.channels.len() == 2)
        },
    )
    .await;
    let log = a.request_log();
    // Identification went over HTTPS, the call's requests over the WSS event socket.
    assert!(
        log.iter()
            .any(|r| r.path == "/ari/asterisk/info" && !r.over_websocket),
        "{log:?}"
    );
    let call: Vec<(String, bool)> = log
        .iter()
        .filter(|r| r.path.contains(&on_a) || r.query.contains(&on_a))
        .map(|r| (format!("{} {}", r.method, r.path), r.over_websocket))
        .collect();
    assert_eq!(
        call,
        [
            (format!("POST /ari/channels/{on_a}/answer"), true),
            ("POST /ari/bridges/conf/addChannel".to_string(), true),
        ]
    );

    // Events keep flowing over TLS: the far end hangs up and the instance goes.
    a.hangup_far_end(&on_a, None).unwrap();
    wait_for("a's call ended", || conf(&rig).live_calls() == 1).await;
    rig.stop().await;
}

/// Starts a one-node simulator serving `tls` and a host trusting `ca_file`; returns the
/// host's error for `GET /asterisk/info` once intake has had time to retry, after checking
/// that the node was never used.
async fn refused_certificate(
    tls: stasis_sim::config::NodeTls,
    ca_file: &std::path::Path,
) -> AriError {
    let mut sim_config = stasis_e2e::sim_config(1);
    sim_config.nodes[0].tls = Some(tls);
    stasis_e2e::init_logging();
    let sim = stasis_sim::Cluster::start(sim_config).await.unwrap();
    let host_extra = format!("[tls]\nca_file = {:?}\n", ca_file.display().to_string());
    let host = stasis_host::gateway::Gateway::start(
        stasis_e2e::host_config(&sim, &host_extra),
        stasis_e2e::runtime_config(),
    )
    .await
    .unwrap();
    stasis_e2e::load_plugin_cached(&host, "conf", "conference").await;
    let node = host.cluster.node("a").unwrap().clone();
    let err = node
        .client
        .call(reqwest::Method::GET, "/asterisk/info", &[], None)
        .await
        .unwrap_err();
    // Intake keeps retrying, and never gets through.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(!node.is_up());
    let sim_node = sim.node("a");
    assert!(
        sim_node.request_log().is_empty(),
        "{:?}",
        sim_node.request_log()
    );
    assert!(sim_node.apps().is_empty());
    host.shutdown();
    sim.shutdown().await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_is_not_trusted_is_never_used_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tls) = stasis_e2e::tls_files(dir.path(), "node");
    let (other_ca, _) = stasis_e2e::tls_files(dir.path(), "other");
    let err = refused_certificate(tls, &other_ca).await;
    assert!(
        matches!(&err, AriError::Unavailable(m)
            if m.contains("UnknownIssuer") && m.contains("set [tls] ca_file")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_nodes_address_in_its_subject_alt_name_is_refused_and_says_why() {
    // What Asterisk's ast_tls_cert makes: a CN naming the host, no subjectAltName. Trusted
    // CA, but TLS clients match names against subjectAltName only.
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = stasis_e2e::tls_files_naming(dir.path(), "cn-only", &[]);
    let err = refused_certificate(tls, &ca).await;
    assert!(
        matches!(&err, AriError::Unavailable(m)
            if m.contains("not valid for name") && m.contains("a CN alone")),
        "{err:?}"
    );
}
