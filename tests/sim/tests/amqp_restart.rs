//! A broker restart (`bash scripts/rabbitmq.sh restart-app`: every client connection drops,
//! durable exchanges survive): the nodes drop events while the broker is away, reconnect in the
//! background and publish again. Its own test binary because it restarts the shared test broker
//! (cargo runs test binaries one after the other, the tests inside one binary in parallel).
//! Needs the private test node (`STASIS_TEST_RABBITMQ_NODE`, set by `scripts/test.sh`); with
//! only `STASIS_TEST_AMQP_URL` (somebody else's broker) it is skipped.

mod broker;
mod common;

use std::time::Duration;

use broker::{Broker, unique};
use common::Ari;
use stasis_sim::{AmqpConfig, AmqpState, Cluster, ClusterConfig, InboundCall, Route};

fn call() -> InboundCall {
    InboundCall {
        caller_name: "Bob".into(),
        caller_number: "1002".into(),
        exten: "8100".into(),
        ..Default::default()
    }
}

async fn restart_app() -> std::process::Output {
    let script = format!("{}/../../scripts/rabbitmq.sh", env!("CARGO_MANIFEST_DIR"));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(&script)
            .arg("restart-app")
            // Any cwd works: the script finds the repository from its own path.
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run scripts/rabbitmq.sh")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_after_a_broker_restart() {
    let url = broker::amqp_url();
    if std::env::var("STASIS_TEST_RABBITMQ_NODE").map_or(true, |n| n.is_empty()) {
        eprintln!("skipped: STASIS_TEST_RABBITMQ_NODE is not set (not our private broker)");
        return;
    }
    let exchange = unique("sim-restart");
    let broker = Broker::connect().await;
    broker.declare_exchange(&exchange).await;
    let sub = broker.subscribe(&exchange, &["stasis.app.bounce"]).await;
    let c = Cluster::start(
        ClusterConfig::with_nodes(1).with_amqp(AmqpConfig::new(&url).with_exchange(&exchange)),
    )
    .await
    .unwrap();
    let a = c.node("a");
    assert!(
        a.wait_amqp_state(AmqpState::Connected, Duration::from_secs(5))
            .await
    );
    a.set_route(
        "default",
        "8100",
        Route::Stasis {
            app: "bounce".into(),
            args: vec![],
        },
    );
    let api = Ari::new(&a.ari_url().replace("/ari", ""));
    assert_eq!(api.ok("POST", "/ari/amqp/bounce").await.0, 204);
    let first = a.inject_call(call()).unwrap();
    sub.wait_event("StasisStart", Some(&first), 3000).await;

    // Restart the broker in the background; while the node sees it gone, a call's events drop.
    let restart = tokio::spawn(restart_app());
    let lost = a
        .wait_amqp_state(AmqpState::Disconnected, Duration::from_secs(15))
        .await
        || a.amqp_status().state == AmqpState::Connecting;
    assert!(lost, "the node never noticed the broker going away");
    let before = a.amqp_status();
    a.hangup_far_end(&first, Some(16)).unwrap();
    let out = restart.await.unwrap();
    assert!(
        out.status.success(),
        "restart-app failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        a.wait_amqp_state(AmqpState::Connected, Duration::from_secs(10))
            .await,
        "not reconnected: {:?}",
        a.amqp_status()
    );
    let after = a.wait_amqp_flushed(Duration::from_secs(5)).await;
    assert!(after.dropped > before.dropped, "{before:?} -> {after:?}");

    // The durable exchange survived; our temporary queue did not (its connection dropped).
    let broker = Broker::connect().await;
    let sub = broker.subscribe(&exchange, &["stasis.app.bounce"]).await;
    let second = a.inject_call(call()).unwrap();
    sub.wait_event("StasisStart", Some(&second), 3000).await;
    a.hangup_far_end(&second, Some(16)).unwrap();
    sub.wait_event("StasisEnd", Some(&second), 3000).await;
    broker.delete_exchange(&exchange).await;
    c.shutdown().await;
}
