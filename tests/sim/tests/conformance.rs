//! Conformance: replay each recorded scenario (fixtures/, recorded on two real Asterisk 22.10.1
//! nodes) against the simulator and compare REST statuses and body shapes and per-channel event
//! sequences, ids and timestamps aside. Documented differences are filtered explicitly per
//! scenario (see README.md, "Conformance").

mod common;
mod replay;

use replay::{Hook, Options, recorded_cfg, run};
use serde_json::Value;

fn assert_clean(name: &str, rp: &replay::Replay) {
    eprintln!("{}", rp.report.summary(name));
    for m in &rp.report.mismatches {
        eprintln!("  MISMATCH {m}");
    }
    assert!(
        rp.report.mismatches.is_empty(),
        "{name}: {} mismatches",
        rp.report.mismatches.len()
    );
    assert!(rp.report.rest_total > 0 || rp.report.channels_total > 0);
}

/// BRIDGEPEER/BRIDGEPVTCALLID change whenever Asterisk's internal announcer channels join a
/// bridge (playback, MOH); the simulator has no announcer channels.
fn bridgepeer(e: &Value) -> bool {
    e["type"] == "ChannelVarset"
        && matches!(
            e["variable"].as_str(),
            Some("BRIDGEPEER") | Some("BRIDGEPVTCALLID")
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_inbound_local() {
    let rp = run(Options::new("call_inbound_local.json"), recorded_cfg()).await;
    assert_clean("call_inbound_local", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_originate_app() {
    let rp = run(Options::new("call_originate_app.json"), recorded_cfg()).await;
    assert_clean("call_originate_app", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mixing() {
    let mut o = Options::new("bridge_mixing.json");
    o.ignore_event = bridgepeer;
    let rp = run(o, recorded_cfg()).await;
    assert_clean("bridge_mixing", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_create_dial() {
    let rp = run(Options::new("channel_create_dial.json"), recorded_cfg()).await;
    assert_clean("channel_create_dial", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_trunk_a_to_b() {
    let mut o = Options::new("sip_trunk_a_to_b.json");
    // rtp_statistics: the simulator has no RTP; it answers a reduced object.
    o.skip_shape = |p| p.ends_with("/rtp_statistics");
    let rp = run(o, recorded_cfg()).await;
    assert_clean("sip_trunk_a_to_b", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_causes_and_errors() {
    let mut o = Options::new("hangup_causes_and_errors.json");
    o.ignore_event = bridgepeer;
    let rp = run(o, recorded_cfg()).await;
    assert_clean("hangup_causes_and_errors", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_and_playback_control() {
    let rp = run(
        Options::new("dtmf_and_playback_control.json"),
        recorded_cfg(),
    )
    .await;
    assert_clean("dtmf_and_playback_control", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_conference_3party() {
    let mut o = Options::new("bridge_conference_3party.json");
    // TALK_DETECT needs audio; caller-id/connected-line updates come from real media paths.
    o.ignore_event = |e| {
        bridgepeer(e)
            || matches!(
                e["type"].as_str(),
                Some("ChannelTalkingStarted")
                    | Some("ChannelTalkingFinished")
                    | Some("ChannelConnectedLine")
                    | Some("ChannelCallerId")
            )
    };
    let rp = run(o, recorded_cfg()).await;
    assert_clean("bridge_conference_3party", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_anonymous_inbound() {
    let mut o = Options::new("sipp_anonymous_inbound.json");
    // sipp is replaced by the control API: an inbound call to stasis/4242, BYE after 4 s.
    o.hooks = vec![
        (
            0.1,
            Hook::Inject {
                node: "a",
                context: "stasis",
                exten: "4242",
            },
        ),
        (
            4.12,
            Hook::FarHangup {
                label: "a",
                nth: 0,
                cause: None,
            },
        ),
    ];
    let rp = run(o, recorded_cfg()).await;
    assert_clean("sipp_anonymous_inbound", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_basics() {
    let mut o = Options::new("rest_basics.json");
    // Asterisk internals the simulator does not model (modules, logging, config, sound files,
    // the swagger documents themselves): statuses are compared, bodies are not.
    o.skip_shape = |p| {
        p.starts_with("/ari/asterisk/modules")
            || p.starts_with("/ari/asterisk/logging")
            || p.starts_with("/ari/asterisk/config")
            || p.starts_with("/ari/sounds")
            || p.starts_with("/ari/api-docs")
    };
    o.skip_request = |r| {
        let p = r["path"].as_str().unwrap_or("");
        p.starts_with("/ari/asterisk/modules")
            || p.starts_with("/ari/asterisk/logging")
            || p.starts_with("/ari/asterisk/config")
            || p.starts_with("/ari/sounds/")
    };
    let rp = run(o, recorded_cfg()).await;
    assert_clean("rest_basics", &rp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stop_and_restart() {
    let mut o = Options::new("node_stop_and_restart.json");
    o.hooks = vec![
        (0.575, Hook::Kill("a")),
        (5.3, Hook::Revive("a")),
        // Recorded reconnect of the app websocket after the restart.
        (9.2, Hook::Connect("a_reconnect")),
    ];
    // The real node answered 503 "Shutdown in progress" for ~1.2 s before refusing
    // connections; the simulated kill is instantaneous, so those requests are refused.
    o.skip_request = |r| r["status"] == 503;
    let rp = run(o, recorded_cfg()).await;
    assert_clean("node_stop_and_restart", &rp);
    // The killed node's socket ended without a close frame (1006), as recorded.
    assert_eq!(
        rp.ws["a"].closed.lock().clone(),
        Some(common::Closed::Abnormal)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_replaced() {
    let mut o = Options::new("application_replaced.json");
    o.initial_ws = vec![];
    o.hooks = vec![
        (0.2, Hook::Connect("client1")),
        (0.544, Hook::Connect("client2")),
        (6.367, Hook::Connect("client1_again")),
        (9.0, Hook::Close("client2")),
        (9.5, Hook::Close("client1_again")),
    ];
    let rp = run(o, recorded_cfg()).await;
    assert_clean("application_replaced", &rp);
    // The replaced sockets were never closed by the server.
    assert_eq!(rp.ws["client1"].closed.lock().clone(), None);
}

/// `fixtures/amqp/register.json` (Wazo's res_ari_amqp on both nodes): `POST|DELETE
/// /ari/amqp/{app}` statuses, their effect on `/ari/applications` (node a also has the
/// websocket app `conf` holding one call, as recorded), 405 for other methods, and the
/// `amqp.json` api-docs. No broker needed: registration works without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_register() {
    let path = format!("{}/fixtures/amqp/register.json", env!("CARGO_MANIFEST_DIR"));
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cluster = stasis_sim::Cluster::start(recorded_cfg()).await.unwrap();
    let a = cluster.node("a");
    let conf = common::Ws::connect(&a.ws_url("conf")).await;
    let chan = a
        .inject_call(stasis_sim::InboundCall {
            exten: "8000".into(),
            ..Default::default()
        })
        .unwrap();
    conf.wait_chan("StasisStart", &chan, 2000).await.unwrap();
    let mut mismatches = vec![];
    for r in rec["rest"].as_array().unwrap() {
        let node = cluster.node(r["instance"].as_str().unwrap());
        let api = common::Ari::new(&node.ari_url().replace("/ari", ""));
        let method = r["method"].as_str().unwrap();
        let p = r["path"].as_str().unwrap();
        let (status, body) = api.ok(method, &format!("/ari{p}")).await;
        let what = format!("{} {method} {p}", node.name());
        if status as u64 != r["status"].as_u64().unwrap() {
            mismatches.push(format!("{what}: status {status}, recorded {}", r["status"]));
        }
        let rec_body = &r["response"];
        if p == "/api-docs/amqp.json" {
            // The document itself, basePath being the node's own URL.
            let mut want = rec_body.clone();
            want["basePath"] = Value::String(node.ari_url());
            if body != want {
                mismatches.push(format!("{what}: api-docs differ: {body}"));
            }
        } else if p == "/applications" {
            let names = |v: &Value| -> Vec<(String, usize)> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        (
                            a["name"].as_str().unwrap().to_string(),
                            a["channel_ids"].as_array().unwrap().len(),
                        )
                    })
                    .collect()
            };
            if names(&body) != names(rec_body) || common::shape(&body) != common::shape(rec_body) {
                mismatches.push(format!("{what}: {body} vs recorded {rec_body}"));
            }
        } else if common::shape(&body) != common::shape(rec_body) {
            mismatches.push(format!("{what}: body {body} vs recorded {rec_body}"));
        }
    }
    for m in &mismatches {
        eprintln!("  MISMATCH {m}");
    }
    assert!(mismatches.is_empty(), "{} mismatches", mismatches.len());
    cluster.shutdown().await;
}
