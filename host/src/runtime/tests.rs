//! Runtime tests against the real plugins (`plugins/probe`, `plugins/conference`), built by
//! `plugins/build.sh` once per test process.
//!
//! Each test uses its own app name(s), so tests can share one [`Runtime`] and run in
//! parallel without seeing each other's kv, capabilities or caps.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::testing::{RecordingBackend, plugin_wasm};
use super::*;
use crate::backend::{BridgeType, MuteDirection, NewCall, Operation, Origin, Outcome, Recording};

const WAIT: Duration = Duration::from_secs(10);

fn test_config() -> RuntimeConfig {
    RuntimeConfig {
        max_instances: 256,
        ..RuntimeConfig::default()
    }
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(test_config()).expect("runtime"))
}

/// The compiled artifact of a plugin, compiled once per process.
fn artifact(plugin: &str) -> Artifact {
    static CACHE: OnceLock<Mutex<HashMap<String, Artifact>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(a) = cache.lock().get(plugin) {
        return a.clone();
    }
    let wasm = plugin_wasm(plugin).unwrap_or_else(|e| panic!("plugin {plugin}: {e}"));
    let a = runtime().compile_blocking(&wasm).expect("compile");
    cache.lock().insert(plugin.to_owned(), a.clone());
    a
}

fn load_with(plugin: &str, name: &str, settings: AppSettings) -> (Arc<App>, Arc<RecordingBackend>) {
    let backend = RecordingBackend::new();
    let app = runtime()
        .load(name, artifact(plugin), settings, backend.clone())
        .expect("load");
    (app, backend)
}

fn load(plugin: &str, name: &str) -> (Arc<App>, Arc<RecordingBackend>) {
    load_with(plugin, name, AppSettings::default())
}

fn snapshot(id: &str, state: ChannelState) -> ChannelSnapshot {
    ChannelSnapshot {
        id: id.into(),
        name: format!("PJSIP/alice-{id}"),
        state,
        caller: CallerId {
            name: "Alice".into(),
            number: "1001".into(),
        },
        connected: CallerId::default(),
        context: "default".into(),
        exten: "8000".into(),
    }
}

fn ctx(app: &str, id: &str, args: &[&str]) -> CallContext {
    CallContext {
        app: app.into(),
        node: "02:00:00:00:00:0a".into(),
        channel: snapshot(id, ChannelState::Ring),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The probe's trace of a channel: (callback name, JSON).
fn trace(app: &App, id: &str) -> Vec<(String, serde_json::Value)> {
    app.kv_get(&format!("trace:{id}"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (name, json) = l.split_once(' ').expect("trace line");
            (
                name.to_owned(),
                serde_json::from_str(json).expect("trace json"),
            )
        })
        .collect()
}

/// The probe's result lines of a channel.
fn results(app: &App, id: &str) -> Vec<String> {
    app.kv_get(&format!("results:{id}"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn finished(h: &CallHandle) -> CallReport {
    tokio::time::timeout(WAIT, h.finished())
        .await
        .expect("call did not finish in time")
}

fn origin(app: &str, id: &str) -> Origin {
    Origin {
        app: app.into(),
        node: "02:00:00:00:00:0a".into(),
        channel: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_fire_in_order_with_context() {
    let (app, backend) = load("probe", "rt-order");
    let h = app
        .start_call(ctx("rt-order", "ch-1", &["answer", "x y"]))
        .unwrap();
    h.deliver(CallEvent::Up, Some(snapshot("ch-1", ChannelState::Up)));
    h.deliver(
        CallEvent::Dtmf {
            digit: "5".into(),
            duration_ms: 120,
        },
        None,
    );
    h.deliver(
        CallEvent::PlaybackFinished(PlaybackInfo {
            id: "pb-1".into(),
            media_uri: "sound:hello-world".into(),
            target_uri: "channel:ch-1".into(),
            state: PlaybackState::Failed,
        }),
        None,
    );
    h.deliver(
        CallEvent::Other {
            kind: "ChannelVarset".into(),
            json: r#"{"type":"ChannelVarset","variable":"X"}"#.into(),
        },
        None,
    );
    h.deliver(
        CallEvent::Node(NodeEvent {
            node: "02:00:00:00:00:0b".into(),
            name: "b".into(),
            status: NodeStatus::Down,
        }),
        None,
    );
    h.deliver(CallEvent::End, None);
    let report = finished(&h).await;
    assert_eq!(report.fault, None);
    assert_eq!(report.callbacks_run, 7);
    assert!(report.ended);

    let t = trace(&app, "ch-1");
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "on-start",
            "on-up",
            "on-dtmf",
            "on-playback-finished",
            "on-event",
            "on-node",
            "on-end"
        ]
    );
    let start = &t[0].1;
    assert_eq!(start["app"], "rt-order");
    assert_eq!(start["node"], "02:00:00:00:00:0a");
    assert_eq!(start["args"], serde_json::json!(["answer", "x y"]));
    assert_eq!(start["channel"]["id"], "ch-1");
    assert_eq!(start["channel"]["name"], "PJSIP/alice-ch-1");
    assert_eq!(start["channel"]["state"], "ring");
    assert_eq!(start["channel"]["caller"]["name"], "Alice");
    assert_eq!(start["channel"]["caller"]["number"], "1001");
    assert_eq!(start["channel"]["context"], "default");
    assert_eq!(start["channel"]["exten"], "8000");
    // The snapshot delivered with Up is what later callbacks see.
    for (_, j) in &t[1..] {
        assert_eq!(j["channel"]["state"], "up");
    }
    assert_eq!(t[2].1["digit"], "5");
    assert_eq!(t[2].1["duration_ms"], 120);
    assert_eq!(
        t[3].1["playback"],
        serde_json::json!({"id":"pb-1","media_uri":"sound:hello-world","target_uri":"channel:ch-1","state":"failed"})
    );
    assert_eq!(t[4].1["kind"], "ChannelVarset");
    assert_eq!(t[4].1["json"], r#"{"type":"ChannelVarset","variable":"X"}"#);
    assert_eq!(
        t[5].1["event"],
        serde_json::json!({"node":"02:00:00:00:00:0b","name":"b","status":"down"})
    );
    assert_eq!(
        backend.operations(),
        vec![(
            origin("rt-order", "ch-1"),
            Operation::Answer {
                channel: "ch-1".into()
            }
        )]
    );
    // The call's channel is revoked when the call ends, and the slot released.
    assert!(!app.may_act_on_channel("ch-1"));
    assert_eq!(app.live_calls(), 0);
    // Events after the end are discarded quietly.
    h.deliver(CallEvent::Up, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_only_update_runs_no_callback_but_moves_the_context() {
    let (app, _) = load("probe", "rt-snapshot");
    let h = app.start_call(ctx("rt-snapshot", "ch-s", &[])).unwrap();
    // What dispatch sends for an event the app did not ask for: no on-event, new state.
    h.update_snapshot(snapshot("ch-s", ChannelState::Ringing), None);
    h.deliver(
        CallEvent::Dtmf {
            digit: "1".into(),
            duration_ms: 80,
        },
        None,
    );
    h.deliver(CallEvent::End, None);
    let report = finished(&h).await;
    assert_eq!(report.callbacks_run, 3);
    let t = trace(&app, "ch-s");
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["on-start", "on-dtmf", "on-end"]);
    assert_eq!(t[0].1["channel"]["state"], "ring");
    assert_eq!(t[1].1["channel"]["state"], "ringing");
    // The probe is built with the SDK's default declaration: every type.
    assert_eq!(app.event_interest(), Some(&EventInterest::All));
}

#[test]
fn event_interest_matches_declared_types_or_star() {
    let only = EventInterest::from_types(vec!["ChannelHangupRequest".into()]);
    assert!(only.wants("ChannelHangupRequest"));
    assert!(!only.wants("ChannelVarset"));
    assert!(!EventInterest::from_types(vec![]).wants("ChannelVarset"));
    assert_eq!(
        EventInterest::from_types(vec!["ChannelVarset".into(), "*".into()]),
        EventInterest::All
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_import_produces_the_right_backend_call() {
    let (app, backend) = load("probe", "rt-exercise");
    let me = "ch-ex";
    let h = app
        .start_call(ctx("rt-exercise", me, &["exercise"]))
        .unwrap();
    h.deliver(CallEvent::End, None);
    let report = finished(&h).await;
    assert_eq!(report.fault, None);

    let res = results(&app, me);
    assert_eq!(res.len(), 22, "{res:#?}");
    for line in &res {
        assert!(line.contains(" ok"), "import failed: {line}");
    }
    let value = |import: &str| -> String {
        res.iter()
            .find_map(|l| l.strip_prefix(&format!("{import} ok ")))
            .unwrap_or_else(|| panic!("no result for {import}"))
            .to_owned()
    };
    let playback = value("play");
    let bridge_playback = value("play-on-bridge");
    let originated = value("originate");
    let dialled = value("dial");
    assert!(playback.starts_with("shp-") && bridge_playback.starts_with("shp-"));
    assert!(originated.starts_with("shc-") && dialled.starts_with("shc-"));
    assert_ne!(originated, dialled);
    assert_eq!(value("get-variable"), "value-of-PROBE");
    assert_eq!(value("request"), "200");
    let b = format!("probe-{me}");
    assert_eq!(value("get-or-create-bridge"), b);
    assert_eq!(value("start-recording"), b);

    let child = |id: &str| NewCall {
        endpoint: "Local/9001@default".into(),
        caller_id: None,
        variables: vec![],
        app_args: vec!["child".into()],
        timeout_secs: None,
        node: None,
        channel_id: id.into(),
    };
    let c = || me.to_owned();
    let expected = vec![
        Operation::Answer { channel: c() },
        Operation::Ring { channel: c() },
        Operation::Play {
            channel: c(),
            media: vec!["sound:hello-world".into()],
            playback_id: playback.clone(),
        },
        Operation::StopPlayback {
            playback: playback.clone(),
        },
        Operation::GetOrCreateBridge {
            bridge: b.clone(),
            kind: BridgeType::Mixing,
        },
        Operation::BridgeAdd {
            bridge: b.clone(),
            channel: c(),
        },
        Operation::BridgeRemove {
            bridge: b.clone(),
            channel: c(),
        },
        Operation::PlayOnBridge {
            bridge: b.clone(),
            media: vec!["sound:beep".into()],
            playback_id: bridge_playback.clone(),
        },
        Operation::BridgeDestroy { bridge: b.clone() },
        Operation::Originate(child(&originated)),
        Operation::Dial(child(&dialled)),
        Operation::GetVariable {
            channel: c(),
            name: "PROBE".into(),
        },
        Operation::SetVariable {
            channel: c(),
            name: "PROBE".into(),
            value: "probe".into(),
        },
        Operation::StartMoh {
            channel: c(),
            class: None,
        },
        Operation::StopMoh { channel: c() },
        Operation::Mute {
            channel: c(),
            direction: MuteDirection::Both,
        },
        Operation::Unmute {
            channel: c(),
            direction: MuteDirection::Both,
        },
        Operation::SendDtmf {
            channel: c(),
            digits: "12#".into(),
        },
        Operation::Record {
            channel: c(),
            options: Recording {
                name: b.clone(),
                format: "wav".into(),
                max_duration_secs: 0,
                max_silence_secs: 0,
                beep: false,
                terminate_on: "none".into(),
            },
        },
        Operation::Raw {
            method: "GET".into(),
            path: format!("/channels/{me}"),
            query: vec![],
            body: None,
        },
        Operation::Continue {
            channel: c(),
            context: Some("default".into()),
            exten: Some("9001".into()),
            priority: Some(1),
        },
        Operation::Hangup {
            channel: c(),
            reason: None,
        },
    ];
    let ops = backend.operations();
    assert!(ops.iter().all(|(o, _)| *o == origin("rt-exercise", me)));
    let ops: Vec<Operation> = ops.into_iter().map(|(_, op)| op).collect();
    assert_eq!(ops, expected);

    // kv and capabilities after the call: originated channels stay granted until they are
    // destroyed; the call's channel, playbacks and recording went with the call; the
    // destroyed bridge is gone.
    assert_eq!(app.kv_get("calls").as_deref(), Some("1"));
    assert!(app.may_act_on_channel(&originated) && app.may_act_on_channel(&dialled));
    assert!(!app.may_act_on_channel(me));
    assert!(!app.may_act_on_bridge(&b));
    assert_eq!(runtime().bridge_owner(&b), None);
    assert_eq!(app.shared().capability_counts(), (2, 0, 0, 0));
    app.revoke_channel(&originated);
    app.revoke_channel(&dialled);
    assert_eq!(app.shared().capability_counts(), (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conference_performs_exactly_the_seed_sequence() {
    let (app, backend) = load("conference", "rt-conf");
    let calls: Vec<_> = ["conf-a", "conf-b"]
        .iter()
        .map(|id| {
            let h = app.start_call(ctx("rt-conf", id, &[])).unwrap();
            h.deliver(CallEvent::Up, Some(snapshot(id, ChannelState::Up)));
            h.deliver(CallEvent::End, None);
            h
        })
        .collect();
    for h in &calls {
        let r = finished(h).await;
        assert_eq!(r.fault, None);
        assert_eq!(r.callbacks_run, 3);
    }
    for id in ["conf-a", "conf-b"] {
        assert_eq!(
            backend.operations_of(id),
            vec![
                Operation::GetOrCreateBridge {
                    bridge: "conf".into(),
                    kind: BridgeType::Mixing
                },
                Operation::Answer { channel: id.into() },
                Operation::BridgeAdd {
                    bridge: "conf".into(),
                    channel: id.into()
                },
            ]
        );
    }
    assert_eq!(backend.len(), 6);
    assert_eq!(runtime().bridge_owner("conf").as_deref(), Some("rt-conf"));
    assert!(app.may_act_on_bridge("conf"));
    app.revoke_bridge("conf");
    assert_eq!(runtime().bridge_owner("conf"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_contained_and_reported() {
    let (app, backend) = load("probe", "rt-panic");
    let healthy = app
        .start_call(ctx("rt-panic", "ok-1", &["answer"]))
        .unwrap();
    let bad = app
        .start_call(ctx("rt-panic", "bad-1", &["panic"]))
        .unwrap();
    let report = finished(&bad).await;
    match &report.fault {
        Some(Fault::Trap { guest_stderr, .. }) => {
            let s = guest_stderr.as_deref().unwrap_or_default();
            assert!(s.contains("probe panic on purpose"), "stderr: {s:?}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(report.fault_callback, Some("on-start"));
    assert_eq!(report.fault_action, Some(Ok(())));
    assert_eq!(report.callbacks_run, 0);
    assert_eq!(
        backend.operations_of("bad-1"),
        vec![Operation::Hangup {
            channel: "bad-1".into(),
            reason: None
        }]
    );
    // Later events of the faulted call go nowhere.
    bad.deliver(CallEvent::Up, None);
    assert!(bad.is_finished());

    // The healthy call carries on.
    healthy.deliver(CallEvent::Up, None);
    healthy.deliver(CallEvent::End, None);
    let ok = finished(&healthy).await;
    assert_eq!(ok.fault, None);
    assert_eq!(ok.callbacks_run, 3);
    assert_eq!(app.live_calls(), 0);

    // A panic in a later callback (probe: DTMF 9) is a fault of that callback.
    let h = app.start_call(ctx("rt-panic", "bad-2", &[])).unwrap();
    h.deliver(
        CallEvent::Dtmf {
            digit: "9".into(),
            duration_ms: 100,
        },
        None,
    );
    h.deliver(CallEvent::Up, None);
    h.deliver(CallEvent::End, None);
    let r = finished(&h).await;
    assert!(matches!(r.fault, Some(Fault::Trap { .. })), "{r:?}");
    assert_eq!(r.fault_callback, Some("on-dtmf"));
    assert_eq!(r.callbacks_run, 1);
    // Up and End were queued behind the DTMF or arrived after the fault: dropped either way.
    assert!(r.discarded_events <= 2);
    let names: Vec<String> = trace(&app, "bad-2").into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["on-start", "on-dtmf"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_deadline_and_others_keep_running() {
    let deadline = Duration::from_millis(500);
    let settings = AppSettings {
        callback_deadline: deadline,
        on_fault: FaultPolicy::Continue,
        ..AppSettings::default()
    };
    let (app, backend) = load_with("probe", "rt-loop", settings);
    let started = Instant::now();
    let looping = app.start_call(ctx("rt-loop", "loop-1", &["loop"])).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // While the loop spins, a healthy call of the same app runs its whole life.
    let healthy = app.start_call(ctx("rt-loop", "ok-2", &["answer"])).unwrap();
    healthy.deliver(CallEvent::Up, None);
    healthy.deliver(CallEvent::End, None);
    let ok = finished(&healthy).await;
    assert_eq!(ok.fault, None);
    assert!(
        !looping.is_finished(),
        "the healthy call should finish while the loop is still running"
    );

    let report = finished(&looping).await;
    let elapsed = started.elapsed();
    assert_eq!(report.fault, Some(Fault::Deadline(deadline)));
    assert!(elapsed >= deadline && elapsed < deadline * 3, "{elapsed:?}");
    assert_eq!(
        backend.operations_of("loop-1"),
        vec![Operation::Continue {
            channel: "loop-1".into(),
            context: None,
            exten: None,
            priority: None
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_out_of_memory() {
    let settings = AppSettings {
        max_memory_bytes: 8 << 20,
        ..AppSettings::default()
    };
    let (app, backend) = load_with("probe", "rt-alloc", settings);
    let healthy = app
        .start_call(ctx("rt-alloc", "ok-3", &["answer"]))
        .unwrap();
    let bad = app
        .start_call(ctx("rt-alloc", "alloc-1", &["alloc"]))
        .unwrap();
    let report = finished(&bad).await;
    assert_eq!(report.fault, Some(Fault::OutOfMemory { limit: 8 << 20 }));
    assert_eq!(
        backend.operations_of("alloc-1"),
        vec![Operation::Hangup {
            channel: "alloc-1".into(),
            reason: None
        }]
    );
    healthy.deliver(CallEvent::End, None);
    assert_eq!(finished(&healthy).await.fault, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_below_the_initial_memory_fails_at_instantiation() {
    let settings = AppSettings {
        max_memory_bytes: 64 << 10,
        ..AppSettings::default()
    };
    let (app, backend) = load_with("probe", "rt-tiny", settings);
    let h = app.start_call(ctx("rt-tiny", "tiny-1", &[])).unwrap();
    let r = finished(&h).await;
    assert_eq!(r.fault, Some(Fault::OutOfMemory { limit: 64 << 10 }));
    assert_eq!(r.fault_callback, Some("instantiate"));
    assert_eq!(r.callbacks_run, 0);
    assert_eq!(
        backend.operations_of("tiny-1"),
        vec![Operation::Hangup {
            channel: "tiny-1".into(),
            reason: None
        }]
    );
    assert_eq!(app.live_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_host_call_is_bounded_by_the_deadline_plus_the_host_wait_cap() {
    let deadline = Duration::from_millis(200);
    let settings = AppSettings {
        callback_deadline: deadline,
        max_host_wait: Duration::from_millis(300),
        ..AppSettings::default()
    };
    let (app, backend) = load_with("probe", "rt-stuck", settings);
    backend.delay_where(Duration::from_secs(3), |op| {
        matches!(op, Operation::Answer { .. })
    });
    let started = Instant::now();
    let h = app
        .start_call(ctx("rt-stuck", "stuck-1", &["answer"]))
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(2), h.finished())
        .await
        .expect("the deadline and the host-wait cap must bound a callback awaiting the host");
    assert_eq!(report.fault, Some(Fault::Deadline(deadline)));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        backend.operations_of("stuck-1"),
        vec![
            Operation::Answer {
                channel: "stuck-1".into()
            },
            Operation::Hangup {
                channel: "stuck-1".into(),
                reason: None
            }
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_waiting_on_ari_does_not_count_against_the_deadline() {
    // 150 ms of guest work and a 400 ms answer: 550 ms in all, well past the 300 ms
    // deadline, but the guest itself used only half of it.
    let deadline = Duration::from_millis(300);
    let settings = AppSettings {
        callback_deadline: deadline,
        ..AppSettings::default()
    };
    let (app, backend) = load_with("probe", "rt-slow-node", settings);
    backend.delay_where(Duration::from_millis(400), |op| {
        matches!(op, Operation::Answer { .. })
    });
    let h = app
        .start_call(ctx("rt-slow-node", "slow-node-1", &["slow", "150"]))
        .unwrap();
    h.deliver(CallEvent::End, None);
    let report = h.finished().await;
    assert_eq!(report.fault, None, "{report:?}");
    assert_eq!(
        backend.operations_of("slow-node-1"),
        vec![Operation::Answer {
            channel: "slow-node-1".into()
        }]
    );
    // Guest time alone still hits it.
    let (app, _) = load_with(
        "probe",
        "rt-slow-guest",
        AppSettings {
            callback_deadline: deadline,
            ..AppSettings::default()
        },
    );
    let h = app
        .start_call(ctx("rt-slow-guest", "slow-guest-1", &["slow", "600"]))
        .unwrap();
    assert_eq!(h.finished().await.fault, Some(Fault::Deadline(deadline)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_resources_are_denied_and_nothing_is_sent() {
    // A call of another app owns `other-1`.
    let (other_app, other_backend) = load("probe", "rt-other");
    let other = other_app
        .start_call(ctx("rt-other", "other-1", &[]))
        .unwrap();

    let (app, backend) = load("probe", "rt-foreign");
    let healthy = app
        .start_call(ctx("rt-foreign", "ok-4", &["answer"]))
        .unwrap();
    let h = app
        .start_call(ctx("rt-foreign", "me-1", &["foreign", "other-1"]))
        .unwrap();
    h.deliver(CallEvent::End, None);
    let report = finished(&h).await;
    assert_eq!(
        report.fault, None,
        "a denial is an error for the guest, not a fault"
    );
    let res = results(&app, "me-1");
    let names: Vec<&str> = res.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["answer", "hangup", "bridge-add", "request"]);
    for line in &res {
        assert!(line.contains(" err denied "), "{line}");
    }
    assert!(
        backend.operations_of("me-1").is_empty(),
        "nothing may be sent"
    );

    // Neither the healthy call of this app nor the other app's call is affected.
    healthy.deliver(CallEvent::End, None);
    assert_eq!(finished(&healthy).await.fault, None);
    assert_eq!(
        backend.operations_of("ok-4"),
        vec![Operation::Answer {
            channel: "ok-4".into()
        }]
    );
    other.deliver(CallEvent::End, None);
    assert_eq!(finished(&other).await.fault, None);
    assert_eq!(other_backend.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_app_instance_cap_holds() {
    let settings = AppSettings {
        max_live_calls: 3,
        ..AppSettings::default()
    };
    let (app, _backend) = load_with("probe", "rt-cap", settings);
    let live: Vec<_> = (0..3)
        .map(|i| {
            app.start_call(ctx("rt-cap", &format!("cap-{i}"), &[]))
                .unwrap()
        })
        .collect();
    assert_eq!(app.live_calls(), 3);
    let started = Instant::now();
    for i in 3..10 {
        let err = app
            .start_call(ctx("rt-cap", &format!("cap-{i}"), &[]))
            .unwrap_err();
        assert_eq!(
            err,
            StartError::AtCapacity {
                app: "rt-cap".into(),
                limit: 3
            }
        );
        assert!(!app.may_act_on_channel(&format!("cap-{i}")));
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refusal must not wait"
    );
    assert_eq!(app.live_calls(), 3);
    // Another app is not limited by this one's cap.
    let (other, _) = load("probe", "rt-cap-other");
    let o = other
        .start_call(ctx("rt-cap-other", "capo-1", &[]))
        .unwrap();

    // A slot frees when a call ends.
    live[0].deliver(CallEvent::End, None);
    finished(&live[0]).await;
    assert_eq!(app.live_calls(), 2);
    let again = app.start_call(ctx("rt-cap", "cap-again", &[])).unwrap();
    assert!(app.start_call(ctx("rt-cap", "cap-x", &[])).is_err());
    for h in live[1..].iter().chain([&again, &o]) {
        h.deliver(CallEvent::End, None);
        assert_eq!(finished(h).await.fault, None);
    }
    assert_eq!(app.live_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_wide_instance_cap_holds() {
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 2,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let backend = RecordingBackend::new();
    let app = rt
        .load(
            "rt-full",
            artifact("probe"),
            AppSettings::default(),
            backend,
        )
        .unwrap();
    let a = app.start_call(ctx("rt-full", "f-1", &[])).unwrap();
    let b = app.start_call(ctx("rt-full", "f-2", &[])).unwrap();
    assert_eq!(
        app.start_call(ctx("rt-full", "f-3", &[])).unwrap_err(),
        StartError::RuntimeFull { limit: 2 }
    );
    assert_eq!(
        app.live_calls(),
        2,
        "the refused call must not hold an app slot"
    );
    for h in [&a, &b] {
        h.deliver(CallEvent::End, None);
        assert_eq!(finished(h).await.fault, None);
    }
    assert_eq!(rt.live_instances(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_shares_kv_capabilities_and_cap() {
    let settings = AppSettings {
        max_live_calls: 1,
        ..AppSettings::default()
    };
    let (v1, _) = load_with("probe", "rt-swap", settings.clone());
    let h1 = v1.start_call(ctx("rt-swap", "sw-1", &[])).unwrap();
    let v2 = runtime()
        .load_version(
            v1.shared(),
            artifact("probe"),
            settings,
            RecordingBackend::new(),
        )
        .unwrap();
    assert!(v2.may_act_on_channel("sw-1"));
    assert!(matches!(
        v2.start_call(ctx("rt-swap", "sw-2", &[])),
        Err(StartError::AtCapacity { .. })
    ));
    h1.deliver(CallEvent::End, None);
    finished(&h1).await;
    let h2 = v2.start_call(ctx("rt-swap", "sw-2", &[])).unwrap();
    h2.deliver(CallEvent::End, None);
    finished(&h2).await;
    assert!(
        v1.kv_get("trace:sw-2").is_some(),
        "versions share the kv store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_rejects_bad_uploads_with_typed_errors() {
    let rt = runtime();
    assert!(matches!(
        rt.compile(b"\0asm\x01\0\0\0".to_vec()).await,
        Err(RuntimeError::CoreModule)
    ));
    let msg = RuntimeError::CoreModule.to_string();
    assert!(msg.contains("wasm-tools component new") && msg.contains("wasm32-wasip2"));
    assert!(matches!(
        rt.compile(b"hello".to_vec()).await,
        Err(RuntimeError::NotWasm)
    ));
    match rt.compile(b"(component)".to_vec()).await {
        Err(RuntimeError::WrongWorld(m)) => assert!(m.contains(CALLBACKS_EXPORT), "{m}"),
        other => panic!("{other:?}"),
    }
    let unknown = br#"(component (import "acme:evil/net@1.0.0" (instance)))"#;
    match rt.compile(unknown.to_vec()).await {
        Err(RuntimeError::WrongWorld(m)) => assert!(m.contains("acme:evil/net@1.0.0"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The optional interest export must have its contract type.
    let wrong_interest = br#"(component
        (core module $m (func (export "f") (result i32) i32.const 0))
        (core instance $i (instantiate $m))
        (func $f (result u32) (canon lift (core func $i "f")))
        (instance $iface (export "on-event-types" (func $f)))
        (export "stasis:app/interest@0.1.0" (instance $iface)))"#;
    match rt.compile(wrong_interest.to_vec()).await {
        Err(RuntimeError::WrongWorld(m)) => assert!(
            m.contains(INTEREST_EXPORT) && m.contains("func() -> list<string>"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rt.compile(b"(component (".to_vec()).await,
        Err(RuntimeError::Compile(_))
    ));
    // An artifact is not an upload, and garbage is not an artifact.
    let a = artifact("probe");
    assert!(matches!(
        rt.compile(a.bytes.clone()).await,
        Err(RuntimeError::Precompiled)
    ));
    assert!(matches!(
        rt.load(
            "x",
            b"garbage",
            AppSettings::default(),
            RecordingBackend::new()
        ),
        Err(RuntimeError::Artifact(_))
    ));
    assert!(matches!(
        rt.load(
            "x",
            &a,
            AppSettings {
                max_memory_bytes: 1 << 30,
                ..AppSettings::default()
            },
            RecordingBackend::new()
        ),
        Err(RuntimeError::Settings(_))
    ));
    assert_eq!(a.source_sha256.len(), 64);
    assert!(a.imports.iter().any(|i| i == "stasis:app/ari@0.1.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_are_checked_by_path() {
    let (app, backend) = load("probe", "rt-raw");
    // Script nothing: the probe's exercise does GET /channels/<own>; here we check a
    // creation through the policy and the backend's answer mapping.
    backend.respond_with(|_, op| match op {
        Operation::Raw { path, .. } if path == "/channels/ch-raw" => Some(Ok(Outcome::Raw {
            status: 404,
            body: r#"{"message":"Channel not found"}"#.into(),
        })),
        _ => None,
    });
    let h = app
        .start_call(ctx("rt-raw", "ch-raw", &["exercise"]))
        .unwrap();
    h.deliver(CallEvent::End, None);
    finished(&h).await;
    let res = results(&app, "ch-raw");
    assert!(
        res.iter()
            .any(|l| l == "request err not-found Channel not found"),
        "{res:#?}"
    );
}

/// The import implementations driven directly (no guest), for paths the probe does not take.
mod host_imports {
    use super::*;
    use crate::runtime::bindings::{ari, wit};
    use crate::runtime::call::CallState;
    use ari::Host as _;

    #[tokio::test]
    async fn raw_creation_gets_a_host_chosen_id_granted_after_success() {
        let (app, backend) = load("probe", "rt-raw-create");
        let mut st = CallState::for_test(&app, "rc-1");
        let resp = st
            .request(
                "post".into(),
                "/channels".into(),
                vec![("endpoint".into(), "PJSIP/bob".into())],
                None,
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        let ops = backend.operations_of("rc-1");
        let Operation::Raw { method, query, .. } = &ops[0] else {
            panic!("{ops:?}")
        };
        assert_eq!(method, "POST");
        let id = &query.iter().find(|(k, _)| k == "channelId").unwrap().1;
        assert!(id.starts_with("shc-"));
        assert!(app.may_act_on_channel(id));

        // A failed creation grants nothing, and a 4xx maps to the typed error.
        backend.respond_with(|_, op| {
            matches!(op, Operation::Raw { .. }).then(|| {
                Ok(Outcome::Raw {
                    status: 409,
                    body: r#"{"message":"Bridge already exists"}"#.into(),
                })
            })
        });
        let before = app.shared().capability_counts();
        let err = st
            .request("POST".into(), "/bridges".into(), vec![], None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, wit::AriError::Conflict(m) if m == "Bridge already exists"),
            "{err:?}"
        );
        assert_eq!(app.shared().capability_counts(), before);

        // Denied: nothing sent.
        let n = backend.len();
        let err = st
            .request("GET".into(), "/channels".into(), vec![], None)
            .await
            .unwrap_err();
        assert!(matches!(err, wit::AriError::Denied(_)));
        assert_eq!(backend.len(), n);
    }

    #[tokio::test]
    async fn a_bridge_created_by_one_app_is_denied_to_another() {
        let (a, backend_a) = load("probe", "rt-claim-a");
        let (b, backend_b) = load("probe", "rt-claim-b");
        let mut sa = CallState::for_test(&a, "cl-a");
        let mut sb = CallState::for_test(&b, "cl-b");
        let id = sa
            .get_or_create_bridge("shared-conf".into(), ari::BridgeType::Mixing)
            .await
            .unwrap();
        assert_eq!(id, "shared-conf");
        assert!(a.may_act_on_bridge("shared-conf"));
        let err = sb
            .get_or_create_bridge("shared-conf".into(), ari::BridgeType::Mixing)
            .await
            .unwrap_err();
        assert!(matches!(err, wit::AriError::Denied(_)));
        assert!(backend_b.is_empty());
        assert_eq!(backend_a.len(), 1);
        // Once it is destroyed the id is free again.
        a.revoke_bridge("shared-conf");
        sb.get_or_create_bridge("shared-conf".into(), ari::BridgeType::Holding)
            .await
            .unwrap();
        assert_eq!(
            runtime().bridge_owner("shared-conf").as_deref(),
            Some("rt-claim-b")
        );
    }

    #[tokio::test]
    async fn failed_originate_revokes_the_pregranted_channel() {
        let (app, backend) = load("probe", "rt-orig-fail");
        backend.respond_with(|_, op| {
            matches!(op, Operation::Originate(_))
                .then(|| Err(crate::backend::AriError::Failed("Allocation failed".into())))
        });
        let mut st = CallState::for_test(&app, "of-1");
        let req = ari::OriginateRequest {
            endpoint: "Bogus/x".into(),
            caller_id: None,
            variables: vec![],
            app_args: vec![],
            timeout_secs: None,
            node: None,
        };
        let err = st.originate(req).await.unwrap_err();
        assert!(matches!(err, wit::AriError::Failed(_)));
        let Operation::Originate(call) = &backend.operations_of("of-1")[0] else {
            panic!()
        };
        assert!(!app.may_act_on_channel(&call.channel_id));
        assert_eq!(app.shared().capability_counts(), (0, 0, 0, 0));
    }
}
