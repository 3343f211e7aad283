//! End-to-end over RabbitMQ: simulated nodes publish their Stasis events to a real broker
//! (as Asterisk's `res_stasis_amqp` does), the host consumes them and answers over REST.
//! Needs the test broker that `scripts/test.sh` starts.

use std::sync::Arc;
use std::time::Duration;

use stasis_e2e::{
    InboundCall, Relay, amqp_host_config, amqp_url, app_requests, in_bridge, rabbitmqctl,
    route_trunk_legs, runtime_config, sim_config, unique, wait_for,
};
use stasis_host::gateway::Gateway;
use stasis_host::runtime::{App, AppSettings};
use stasis_sim::{AmqpConfig, AmqpFormat, NodeAmqpConfig};

/// Tests that restart the broker or drop connections hold it exclusively; the others share.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

struct AmqpRig {
    sim: stasis_sim::Cluster,
    host: Gateway,
}

impl AmqpRig {
    /// `nodes` simulated nodes publishing to a fresh exchange (node `b`, if any, in the bare
    /// event format, the others in the module's envelope), and a host consuming it as `url`.
    async fn start(nodes: usize, url: &str, apps: &[(&str, &str, AppSettings)]) -> AmqpRig {
        Self::start_with(nodes, url, apps, "").await
    }

    /// [`AmqpRig::start`] with `amqp` settings added to the host's `[amqp]` section.
    async fn start_with(
        nodes: usize,
        url: &str,
        apps: &[(&str, &str, AppSettings)],
        amqp: &str,
    ) -> AmqpRig {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let exchange = unique("stasis-test");
        let mut config = sim_config(nodes);
        config.amqp = Some(AmqpConfig::new(&amqp_url()).with_exchange(&exchange));
        for node in &mut config.nodes {
            if node.name == "b" {
                node.amqp = Some(NodeAmqpConfig {
                    format: Some(AmqpFormat::Raw),
                    ..NodeAmqpConfig::default()
                });
            }
        }
        let sim = stasis_sim::Cluster::start(config)
            .await
            .expect("simulated cluster");
        route_trunk_legs(&sim);
        let host_config = amqp_host_config(&sim, url, &exchange, &unique("events"), amqp);
        let host = Gateway::start(host_config, runtime_config())
            .await
            .expect("host starts");
        for (name, plugin, settings) in apps {
            let wasm = stasis_e2e::plugin(plugin);
            host.load_app(name, wasm, settings.clone())
                .await
                .expect("app loads");
        }
        let rig = AmqpRig { sim, host };
        rig.wait_registered().await;
        rig
    }

    /// Waits until every node is up in the host and has every app registered for AMQP.
    async fn wait_registered(&self) {
        let mut apps: Vec<String> = (self.host.catalog.all().iter())
            .map(|a| a.name().to_string())
            .collect();
        apps.push(stasis_host::conference::TRUNK_APP.to_string());
        // A real node's AMQP module connects at boot, before anyone registers apps; the
        // simulated one connects in the background.
        wait_for("nodes up with the apps registered for AMQP", || {
            self.host.cluster.nodes().all(|n| n.is_up())
                && (self.sim.nodes().iter())
                    .all(|n| n.amqp_status().state == stasis_sim::AmqpState::Connected)
                && (self.sim.nodes().iter()).all(|n| {
                    let registered = n.amqp_apps();
                    apps.iter().all(|a| registered.contains(a))
                })
        })
        .await;
    }

    fn app(&self, name: &str) -> Arc<App> {
        self.host.catalog.get(name).expect("app loaded")
    }

    fn call(&self, node: &str, caller: &str, exten: &str) -> String {
        place(&self.sim, node, caller, exten)
    }

    async fn stop(self) {
        self.host.shutdown();
        self.sim.shutdown().await;
    }
}

/// Injects a call from `caller` to `exten` on `node`.
fn place(sim: &stasis_sim::Cluster, node: &str, caller: &str, exten: &str) -> String {
    sim.node(node)
        .inject_call(InboundCall {
            caller_name: caller.into(),
            caller_number: "1000".into(),
            exten: exten.into(),
            ..Default::default()
        })
        .expect("call injected")
}

/// Places a conference call from each `(node, caller)`; returns them once all are bridged.
async fn join(
    sim: &stasis_sim::Cluster,
    callers: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let calls: Vec<(&'static str, String)> = (callers.iter())
        .map(|(node, caller)| (*node, place(sim, node, caller, "8000")))
        .collect();
    for (node, id) in &calls {
        let handle = sim.node(node);
        wait_for(&format!("{id} bridged on {node}"), || {
            in_bridge(&handle, id, "conf")
        })
        .await;
    }
    calls
}

/// Hangs every call up from the far end.
fn hang_up(sim: &stasis_sim::Cluster, calls: &[(&'static str, String)]) {
    for (node, id) in calls {
        sim.node(node).hangup_far_end(id, None).unwrap();
    }
}

/// Waits until no node has a bridge left.
async fn nothing_left(sim: &stasis_sim::Cluster) {
    wait_for("the conference left nothing behind", || {
        sim.nodes().iter().all(|n| n.bridges().is_empty())
    })
    .await;
}

/// Another replica of `first`: same nodes, same exchange, same queue, the conference app.
async fn another_replica(first: &Gateway, settings: AppSettings) -> Gateway {
    let replica = Gateway::start(first.config.clone(), runtime_config())
        .await
        .expect("replica starts");
    replica
        .load_app("conf", stasis_e2e::plugin("conference"), settings)
        .await
        .expect("app loads");
    wait_for("the replica sees the nodes", || {
        replica.cluster.nodes().all(|n| n.is_up())
    })
    .await;
    replica
}

/// Asserts that every call's channel was answered exactly once.
fn answered_once(sim: &stasis_sim::Cluster, calls: &[(&'static str, String)]) {
    for (node, id) in calls {
        let answers = app_requests(&sim.node(node))
            .into_iter()
            .filter(|r| r == &format!("POST /ari/channels/{id}/answer"))
            .count();
        assert_eq!(answers, 1, "{id} answered once");
    }
}

/// The conference calls `replica` is handling.
fn live(replica: &Gateway) -> usize {
    (replica.catalog.get("conf")).map_or(0, |app| app.live_calls())
}

const FOUR: [(&str, &str); 4] = [("a", "Alice"), ("b", "Bob"), ("a", "Carol"), ("b", "Dave")];

fn conference() -> (&'static str, &'static str, AppSettings) {
    ("conf", "conference", AppSettings::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conference_over_amqp_spans_two_nodes_in_both_body_formats() {
    let _shared = BROKER.read().await;
    let rig = AmqpRig::start(2, &amqp_url(), &[conference()]).await;
    let (a, b) = (rig.sim.node("a"), rig.sim.node("b"));
    let calls = join(&rig.sim, &FOUR).await;
    assert_eq!(rig.app("conf").live_calls(), 4);
    for (node, handle) in [("a", &a), ("b", &b)] {
        let log = handle.request_log();
        let paths: Vec<String> = log
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        for wanted in ["POST /ari/amqp/conf", "POST /ari/amqp/stasis-trunk"] {
            assert!(
                paths.contains(&wanted.to_string()),
                "node {node}: {paths:?}"
            );
        }
        assert!(
            !paths.iter().any(|p| p.ends_with("/ari/events")),
            "node {node} has no event websocket: {paths:?}"
        );
        // Each call's requests went to its own node only.
        for (other, id) in &calls {
            if other != &node {
                let strays: Vec<_> = app_requests(handle)
                    .into_iter()
                    .filter(|r| r.contains(id.as_str()))
                    .collect();
                assert!(strays.is_empty(), "{id} reached node {node}: {strays:?}");
            }
        }
    }
    assert!(a.amqp_status().published > 0 && b.amqp_status().published > 0);

    hang_up(&rig.sim, &calls);
    wait_for("every call ended", || rig.app("conf").live_calls() == 0).await;
    nothing_left(&rig.sim).await;
    rig.stop().await;
}

/// `amqps://`: the intake reaches the broker over TLS, trusting its certificate through
/// `[tls] ca_file`; without that CA it refuses the broker and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_is_reached_over_tls_when_its_ca_is_trusted() {
    let _shared = BROKER.read().await;
    let (url, ca) = stasis_e2e::amqps();
    // Trusting the system's roots only, as a host without `[tls] ca_file` does.
    let system_roots = stasis_host::tls::client_config(None).unwrap();
    let untrusted = stasis_host::amqp::connect_broker(&url, "stasis-test probe", &system_roots)
        .await
        .map(drop)
        .unwrap_err();
    assert!(
        stasis_host::tls::advice(&untrusted).is_some_and(|a| a.contains("set [tls] ca_file")),
        "{untrusted}"
    );

    let tls = format!("\n[tls]\nca_file = {:?}\n", ca.display().to_string());
    let rig = AmqpRig::start_with(2, &url, &[conference()], &tls).await;
    let calls = join(&rig.sim, &FOUR).await;
    assert_eq!(rig.app("conf").live_calls(), 4);
    // The broker's own view: the host's intake connection is a TLS one.
    let connections = rabbitmqctl(&[
        "list_connections",
        "ssl",
        "client_properties",
        "--no-table-headers",
    ]);
    assert!(
        connections
            .lines()
            .any(|l| l.starts_with("true") && l.contains("stasis-host intake")),
        "{connections}"
    );
    hang_up(&rig.sim, &calls);
    wait_for("every call ended", || rig.app("conf").live_calls() == 0).await;
    nothing_left(&rig.sim).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_no_call() {
    let _exclusive = BROKER.write().await;
    let rig = AmqpRig::start(2, &amqp_url(), &[conference()]).await;
    let (a, b) = (rig.sim.node("a"), rig.sim.node("b"));
    let mut live = join(&rig.sim, &FOUR).await;

    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    // While the broker is down the nodes drop their events: a hangup (StasisEnd lost) and
    // two new callers (StasisStart lost).
    let (gone_node, gone) = live.remove(0);
    rig.sim.node(gone_node).hangup_far_end(&gone, None).unwrap();
    live.push(("a", rig.call("a", "Erin", "8000")));
    live.push(("b", rig.call("b", "Frank", "8000")));
    wait_for("the nodes dropped events while the broker was down", || {
        a.amqp_status().dropped > 0 && b.amqp_status().dropped > 0
    })
    .await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["start_app"]))
        .await
        .unwrap();

    // The host reconciles with the nodes: the lost StasisEnd ends its call, the lost
    // StasisStarts start theirs, and every caller ends up in the one conference.
    for (node, id) in &live {
        let handle = rig.sim.node(node);
        wait_for(&format!("{id} on {node} bridged after the restart"), || {
            in_bridge(&handle, id, "conf")
        })
        .await;
    }
    wait_for("the call hung up during the outage ended", || {
        rig.app("conf").live_calls() == live.len()
    })
    .await;
    let after = rig.call("b", "Grace", "8000");
    wait_for("a call after the restart bridged", || {
        in_bridge(&b, &after, "conf")
    })
    .await;
    live.push(("b", after));
    hang_up(&rig.sim, &live);
    wait_for("every call ended", || rig.app("conf").live_calls() == 0).await;
    nothing_left(&rig.sim).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_registered_again_and_its_lost_calls_end() {
    let _shared = BROKER.read().await;
    let rig = AmqpRig::start(2, &amqp_url(), &[conference()]).await;
    let (a, b) = (rig.sim.node("a"), rig.sim.node("b"));
    let on_a = rig.call("a", "Alice", "8000");
    let on_b = rig.call("b", "Bob", "8000");
    wait_for("both bridged", || {
        in_bridge(&a, &on_a, "conf") && in_bridge(&b, &on_b, "conf")
    })
    .await;

    // A restart faster than the host's health poll: only the new start-up time tells.
    a.kill().await;
    a.revive().await.unwrap();
    assert!(a.amqp_apps().is_empty(), "registrations die with the node");
    rig.wait_registered().await;
    wait_for("the restarted node's call ended", || {
        rig.app("conf").live_calls() == 1
    })
    .await;
    assert!(in_bridge(&b, &on_b, "conf"), "node b's call is untouched");
    let again = rig.call("a", "Carol", "8000");
    wait_for("a call on the restarted node bridged", || {
        in_bridge(&a, &again, "conf")
    })
    .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_not_handled_twice() {
    let _shared = BROKER.read().await;
    // The host reaches the broker through a relay the test can cut.
    let broker = amqp_url();
    let (credentials, address) = broker
        .trim_start_matches("amqp://")
        .split_once('@')
        .expect("the test broker URL has credentials");
    let address = address.split('/').next().unwrap_or(address);
    let relay = Relay::start(address).await;
    let url = format!("amqp://{credentials}@127.0.0.1:{}/%2f", relay.port);
    let slow = AppSettings {
        callback_deadline: Duration::from_secs(30),
        ..AppSettings::default()
    };
    let rig = AmqpRig::start(1, &url, &[("probe", "probe", slow)]).await;
    let a = rig.sim.node("a");
    a.set_route(
        "default",
        "7000",
        stasis_sim::Route::Stasis {
            app: "probe".into(),
            args: vec!["slow".into(), "3000".into()],
        },
    );
    // on-start busy-waits 3 s: the StasisStart and the digits pressed meanwhile are
    // delivered but not acknowledged when the host's connection drops.
    let id = rig.call("a", "Alice", "7000");
    wait_for("the call started", || rig.app("probe").live_calls() == 1).await;
    a.press_dtmf(&id, "123").unwrap();
    a.wait_amqp_flushed(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.cut();
    let trace_key = format!("trace:{id}");
    let so_far = rig.app("probe").kv_get(&trace_key).unwrap_or_default();
    assert_eq!(
        so_far.matches("on-dtmf").count(),
        0,
        "the connection dropped while on-start still ran (machine too slow?): {so_far}"
    );

    wait_for("the digits reached the app", || {
        rig.app("probe")
            .kv_get(&trace_key)
            .is_some_and(|t| t.matches("on-dtmf").count() >= 3)
    })
    .await;
    // Long enough for the redeliveries to have come and gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let trace = rig.app("probe").kv_get(&trace_key).unwrap_or_default();
    assert_eq!(trace.matches("on-start").count(), 1, "{trace}");
    assert_eq!(trace.matches("on-dtmf").count(), 3, "{trace}");
    let answers = app_requests(&a)
        .into_iter()
        .filter(|r| r.ends_with("/answer"))
        .count();
    assert_eq!(answers, 1, "one answer for one StasisStart");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_queue_each_call_has_one_and_a_stopped_ones_calls_go_to_the_other() {
    let _shared = BROKER.read().await;
    let AmqpRig { sim, host: first } = AmqpRig::start(2, &amqp_url(), &[conference()]).await;
    let second = another_replica(&first, AppSettings::default()).await;
    let replicas = [&first, &second];

    let calls = join(&sim, &FOUR).await;
    // Exactly one replica handles each call, and each call got exactly one answer.
    assert_eq!(live(replicas[0]) + live(replicas[1]), calls.len());
    answered_once(&sim, &calls);
    let active = if live(replicas[0]) > 0 { 0 } else { 1 };
    assert_eq!(live(replicas[active]), calls.len(), "one active replica");
    hang_up(&sim, &calls);
    wait_for("calls ended", || live(replicas[active]) == 0).await;
    nothing_left(&sim).await;

    // The active replica stops: new calls go to the other one.
    let (stopped, survivor) = if active == 0 {
        (first, second)
    } else {
        (second, first)
    };
    stopped.shutdown();
    let calls = join(&sim, &[("b", "Erin"), ("a", "Frank")]).await;
    assert_eq!(live(&survivor), calls.len());
    hang_up(&sim, &calls);
    wait_for("calls ended", || live(&survivor) == 0).await;
    survivor.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_calls_spread_over_replicas_in_one_conference_and_a_gone_replicas_calls_move() {
    let _shared = BROKER.read().await;
    let settings = AppSettings::default();
    let AmqpRig { sim, host: first } = AmqpRig::start_with(
        2,
        &amqp_url(),
        &[("conf", "conference", settings.clone())],
        "share_calls = true\n",
    )
    .await;
    let second = another_replica(&first, settings).await;
    // Replicas announce themselves every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (a, b) = (sim.node("a"), sim.node("b"));

    let names: Vec<String> = (0..12).map(|n| format!("caller{n}")).collect();
    let callers: Vec<(&str, &str)> = (names.iter().enumerate())
        .map(|(n, name)| (if n % 2 == 0 { "a" } else { "b" }, name.as_str()))
        .collect();
    let calls = join(&sim, &callers).await;
    let (on_first, on_second) = (live(&first), live(&second));
    assert_eq!(
        on_first + on_second,
        calls.len(),
        "each call on exactly one replica"
    );
    assert!(
        on_first > 0 && on_second > 0,
        "both replicas handle calls: {on_first} and {on_second}"
    );
    answered_once(&sim, &calls);
    // One conference: one bridge per node, linked by one trunk leg.
    assert_eq!(a.bridges().len(), 1, "{:?}", a.bridges());
    assert_eq!(b.bridges().len(), 1, "{:?}", b.bridges());

    // The second replica goes away: the first takes its calls over.
    second.shutdown();
    wait_for("the first replica has every call", || {
        live(&first) == calls.len()
    })
    .await;
    for (node, id) in &calls {
        let handle = sim.node(node);
        wait_for("still bridged", || in_bridge(&handle, id, "conf")).await;
    }
    hang_up(&sim, &calls);
    wait_for("every call ended", || live(&first) == 0).await;
    nothing_left(&sim).await;
    first.shutdown();
    sim.shutdown().await;
}
