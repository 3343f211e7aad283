//! End-to-end: one conference across three simulated nodes, linked by trunk legs.
//! Assertions are on what the nodes hold: bridges, their members, trunk channels, and the
//! requests each node received.

use std::collections::{BTreeMap, HashMap};

use stasis_e2e::{NodeHandle, Rig, app_requests, in_bridge, wait_for};

/// Trunk channels the host originated on `node` (its outgoing legs).
fn legs_out(node: &NodeHandle) -> Vec<String> {
    node.channels()
        .into_iter()
        .filter(|c| c.id.starts_with("trunk-"))
        .map(|c| c.id)
        .collect()
}

/// Channels on `node` that arrived over the trunk (incoming legs).
fn legs_in(node: &NodeHandle) -> Vec<String> {
    node.channels()
        .into_iter()
        .filter(|c| c.name.starts_with("PJSIP/trunk-") && !c.id.starts_with("trunk-"))
        .map(|c| c.id)
        .collect()
}

/// Whether every participant can hear every other: the graph of bridge memberships and
/// trunk links (each leg joined to its far end) is connected.
fn one_connected_conference(nodes: &[NodeHandle], participants: &[String]) -> bool {
    // Union-find over "node/channel" and "node/bridge:<id>".
    let mut parent: HashMap<String, String> = HashMap::new();
    fn find(p: &mut HashMap<String, String>, x: &str) -> String {
        let next = p.get(x).cloned().unwrap_or_else(|| x.to_string());
        if next == x {
            return next;
        }
        let root = find(p, &next);
        p.insert(x.to_string(), root.clone());
        root
    }
    let union = |p: &mut HashMap<String, String>, a: String, b: String| {
        let (ra, rb) = (find(p, &a), find(p, &b));
        if ra != rb {
            p.insert(ra, rb);
        }
    };
    for node in nodes {
        for bridge in node.bridges() {
            for channel in &bridge.channels {
                union(
                    &mut parent,
                    format!("bridge:{}:{}", node.name(), bridge.id),
                    format!("chan:{channel}"),
                );
            }
        }
        for channel in node.channels() {
            if let Some(peer) = channel.peer {
                union(
                    &mut parent,
                    format!("chan:{}", channel.id),
                    format!("chan:{peer}"),
                );
            }
        }
    }
    let roots: Vec<String> = participants
        .iter()
        .map(|c| find(&mut parent, &format!("chan:{c}")))
        .collect();
    roots.windows(2).all(|w| w[0] == w[1])
}

fn nothing_left(nodes: &[NodeHandle]) -> bool {
    nodes
        .iter()
        .all(|n| n.bridges().is_empty() && n.channels().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_by_n_participants_make_one_conference_then_leave_nothing() {
    const N: usize = 3;
    let rig = Rig::start(3, &[("conf", "conference")]).await;
    let nodes: Vec<NodeHandle> = ["a", "b", "c"].iter().map(|n| rig.node(n)).collect();
    // Callers arrive on all nodes at once.
    let mut calls: Vec<(NodeHandle, String)> = Vec::new();
    for i in 0..N {
        for node in &nodes {
            let id = rig.call(node.name(), &format!("caller{i}{}", node.name()), "8000");
            calls.push((node.clone(), id));
        }
    }
    wait_for("every caller bridged", || {
        calls.iter().all(|(n, id)| in_bridge(n, id, "conf"))
    })
    .await;
    wait_for("every part linked", || {
        let outgoing: usize = nodes.iter().map(|n| legs_out(n).len()).sum();
        let incoming: usize = nodes.iter().map(|n| legs_in(n).len()).sum();
        outgoing == 2 && incoming == 2
    })
    .await;
    let participants: Vec<String> = calls.iter().map(|(_, id)| id.clone()).collect();
    wait_for("everyone hears everyone", || {
        one_connected_conference(&nodes, &participants)
    })
    .await;

    // Exactly one home: the node the two other nodes' legs arrive at; each other node has one
    // leg to it, whatever the number of its participants.
    let homes: Vec<&NodeHandle> = nodes.iter().filter(|n| legs_in(n).len() == 2).collect();
    assert_eq!(homes.len(), 1, "one home node");
    for node in nodes.iter().filter(|n| n.name() != homes[0].name()) {
        assert_eq!(
            legs_out(node).len(),
            1,
            "one leg from node {} to home",
            node.name()
        );
        assert_eq!(node.bridges().len(), 1);
        assert_eq!(
            node.bridges()[0].channels.len(),
            N + 1,
            "N participants and the leg"
        );
    }
    // Apps never see the legs: the conference app had exactly one call per caller.
    assert_eq!(rig.host.catalog.get("conf").unwrap().live_calls(), 3 * N);

    for (node, id) in &calls {
        node.hangup_far_end(id, None).unwrap();
    }
    wait_for("zero bridges and zero channels on every node", || {
        nothing_left(&nodes)
    })
    .await;
    assert_eq!(
        rig.host.conferences.sizes(),
        (0, 0),
        "the host forgot the conference and its legs"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_callers_on_two_nodes_at_once_still_get_one_home() {
    let rig = Rig::start(2, &[("conf", "conference")]).await;
    let nodes = vec![rig.node("a"), rig.node("b")];
    for round in 0..5 {
        let on_a = rig.call("a", &format!("a{round}"), "8000");
        let on_b = rig.call("b", &format!("b{round}"), "8000");
        wait_for("both linked", || {
            in_bridge(&nodes[0], &on_a, "conf")
                && in_bridge(&nodes[1], &on_b, "conf")
                && one_connected_conference(&nodes, &[on_a.clone(), on_b.clone()])
        })
        .await;
        let outgoing: Vec<usize> = nodes.iter().map(|n| legs_out(n).len()).collect();
        assert_eq!(
            outgoing.iter().sum::<usize>(),
            1,
            "round {round}: one leg, one home: {outgoing:?}"
        );
        nodes[0].hangup_far_end(&on_a, None).unwrap();
        nodes[1].hangup_far_end(&on_b, None).unwrap();
        wait_for("round torn down", || nothing_left(&nodes)).await;
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_leg_is_retried_with_music_on_hold_meanwhile() {
    let rig = Rig::start(2, &[("conf", "conference")]).await;
    let (a, b) = (rig.node("a"), rig.node("b"));
    // Node a rejects trunk calls (busy) until we fix its dialplan.
    a.set_route("from-trunk", "_.", stasis_sim::Route::Hangup { cause: 17 });
    let home_caller = rig.call("a", "Alice", "8000");
    wait_for("Alice bridged at home", || {
        in_bridge(&a, &home_caller, "conf")
    })
    .await;
    let remote = rig.call("b", "Bob", "8000");
    wait_for("Bob bridged locally", || in_bridge(&b, &remote, "conf")).await;
    wait_for("at least two failed attempts", || {
        app_requests(&b)
            .iter()
            .filter(|r| r.starts_with("POST /ari/channels?endpoint=PJSIP"))
            .count()
            >= 2
    })
    .await;
    let log = app_requests(&b);
    assert!(
        log.contains(&"POST /ari/bridges/conf/moh".to_string()),
        "Bob hears music while alone: {log:?}"
    );
    assert!(
        !log.contains(&"DELETE /ari/bridges/conf/moh".to_string()),
        "music keeps playing: {log:?}"
    );

    stasis_e2e::route_trunk_legs(&rig.sim);
    wait_for("the leg finally links the two parts", || {
        one_connected_conference(
            &[a.clone(), b.clone()],
            &[home_caller.clone(), remote.clone()],
        )
    })
    .await;
    wait_for("music stops once linked", || {
        app_requests(&b).contains(&"DELETE /ari/bridges/conf/moh".to_string())
    })
    .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_home_node_dies_the_survivors_stay_in_one_conference() {
    let rig = Rig::start(3, &[("conf", "conference")]).await;
    let nodes: BTreeMap<&str, NodeHandle> =
        ["a", "b", "c"].iter().map(|n| (*n, rig.node(n))).collect();
    // The first caller makes node a the home.
    let first = rig.call("a", "Alice", "8000");
    wait_for("home made", || in_bridge(&nodes["a"], &first, "conf")).await;
    let on_b = rig.call("b", "Bob", "8000");
    let on_c = rig.call("c", "Carol", "8000");
    let all: Vec<NodeHandle> = nodes.values().cloned().collect();
    wait_for("three-node conference", || {
        one_connected_conference(&all, &[first.clone(), on_b.clone(), on_c.clone()])
    })
    .await;

    nodes["a"].kill().await;
    let survivors = vec![nodes["b"].clone(), nodes["c"].clone()];
    wait_for("b and c in one conference again", || {
        in_bridge(&survivors[0], &on_b, "conf")
            && in_bridge(&survivors[1], &on_c, "conf")
            && one_connected_conference(&survivors, &[on_b.clone(), on_c.clone()])
    })
    .await;
    let legs: Vec<usize> = survivors.iter().map(|n| legs_out(n).len()).collect();
    assert_eq!(
        legs.iter().sum::<usize>(),
        1,
        "one leg between the survivors: {legs:?}"
    );

    for (node, id) in [(&survivors[0], &on_b), (&survivors[1], &on_c)] {
        node.hangup_far_end(id, None).unwrap();
    }
    wait_for("survivors left clean", || nothing_left(&survivors)).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_the_bridge_removes_every_part_and_leg_and_play_reaches_the_home() {
    use stasis_host::backend::{AriBackend, Operation, Origin, Outcome};
    let rig = Rig::start(2, &[("conf", "conference")]).await;
    let nodes = vec![rig.node("a"), rig.node("b")];
    let on_a = rig.call("a", "Alice", "8000");
    wait_for("home on a", || in_bridge(&nodes[0], &on_a, "conf")).await;
    let on_b = rig.call("b", "Bob", "8000");
    wait_for("linked", || {
        one_connected_conference(&nodes, &[on_a.clone(), on_b.clone()])
    })
    .await;
    let origin = Origin {
        app: "conf".into(),
        node: nodes[1].asterisk_id().into(),
        channel: on_b.clone(),
    };

    // A playback to the bridge is played once, in the home bridge (parts hear it via legs).
    let played = rig
        .host
        .router
        .execute(
            &origin,
            Operation::PlayOnBridge {
                bridge: "conf".into(),
                media: vec!["sound:beep".into()],
                playback_id: "pb-1".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(played, Outcome::Value("pb-1".into()));
    assert!(
        app_requests(&nodes[0])
            .iter()
            .any(|r| r.starts_with("POST /ari/bridges/conf/play?"))
    );
    assert!(
        !app_requests(&nodes[1])
            .iter()
            .any(|r| r.starts_with("POST /ari/bridges/conf/play"))
    );

    rig.host
        .router
        .execute(
            &origin,
            Operation::BridgeDestroy {
                bridge: "conf".into(),
            },
        )
        .await
        .unwrap();
    wait_for("no bridge and no leg anywhere", || {
        nodes
            .iter()
            .all(|n| n.bridges().is_empty() && legs_out(n).is_empty() && legs_in(n).is_empty())
    })
    .await;
    // The callers themselves stay up (ARI semantics: destroying a bridge keeps its channels).
    assert!(nodes[0].channel(&on_a).is_some() && nodes[1].channel(&on_b).is_some());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_conference_frees_its_bridge_id_for_another_app() {
    let rig = Rig::start(1, &[("conf", "conference"), ("other", "conference")]).await;
    let a = rig.node("a");
    a.set_route(
        "default",
        "8100",
        stasis_sim::Route::Stasis {
            app: "other".into(),
            args: vec![],
        },
    );
    let first = rig.call("a", "Alice", "8000");
    wait_for("conf's caller bridged", || in_bridge(&a, &first, "conf")).await;
    // While conf holds bridge "conf", the other app may not take it.
    let refused = rig.call("a", "Mallory", "8100");
    let other = rig.host.catalog.get("other").unwrap();
    wait_for("the other app's call started", || other.live_calls() == 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!in_bridge(&a, &refused, "conf"));
    assert!(
        !app_requests(&a).iter().any(|r| r.contains(&refused)),
        "get-or-create was denied, so the app sent nothing for its caller"
    );
    a.hangup_far_end(&refused, None).unwrap();
    a.hangup_far_end(&first, None).unwrap();
    wait_for("conference finished", || {
        a.bridges().is_empty() && rig.host.conferences.sizes().0 == 0
    })
    .await;
    // The id is free again: the other app's caller gets the conference.
    let second = rig.call("a", "Bob", "8100");
    wait_for("other app's caller bridged in a new conf", || {
        in_bridge(&a, &second, "conf")
    })
    .await;
    rig.stop().await;
}
