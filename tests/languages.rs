//! End-to-end: the conference app written in Rust (`conference`), Python (`conference-py`,
//! componentize-py) and JavaScript (`conference-js`, componentize-js), each run by the host in
//! front of a simulated node, with the same assertions for each language.
//!
//! - All three send the seed's request sequence (the same as `gateway.rs`'s
//!   `conference_on_one_node_sends_the_seed_sequence`).
//! - The Python and JavaScript apps add one feature: DTMF `*` toggles mute of the caller's
//!   audio into the conference (`POST` / `DELETE /channels/{id}/mute?direction=in`), with the
//!   state kept per call in the instance. The Rust app sends nothing on DTMF.
//!
//! Apps are loaded from compiled artifacts cached across test processes
//! (`stasis_e2e::load_plugin_cached`), and `plugins/build.sh` skips componentize when an app's
//! inputs are unchanged: only the first run after a change pays the 10–30 s compiles.

use stasis_e2e::{Rig, app_requests, in_bridge, wait_for};

fn conf(rig: &Rig) -> std::sync::Arc<stasis_host::runtime::App> {
    rig.host.catalog.get("conf").expect("conf loaded")
}

/// Three callers on one node: one bridge with all of them, and exactly the seed's requests.
async fn seed_sequence(plugin: &str) {
    let rig = Rig::start(1, &[("conf", plugin)]).await;
    let a = rig.node("a");
    let mut ids = Vec::new();
    for caller in ["Alice", "Bob", "Carol"] {
        let id = rig.call("a", caller, "8000");
        wait_for(&format!("{plugin}: {caller} bridged"), || {
            in_bridge(&a, &id, "conf")
        })
        .await;
        ids.push(id);
    }
    let bridges = a.bridges();
    assert_eq!(bridges.len(), 1, "{plugin}: {bridges:?}");
    assert_eq!(bridges[0].bridge_type, "mixing");
    let mut members = bridges[0].channels.clone();
    members.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(members, expected, "{plugin}: everyone hears everyone");

    let mut want = vec!["POST /ari/bridges/conf?type=mixing".to_string()];
    for id in &ids {
        want.push(format!("POST /ari/channels/{id}/answer"));
        want.push(format!("POST /ari/bridges/conf/addChannel?channel={id}"));
    }
    assert_eq!(app_requests(&a), want, "{plugin}: the seed's sequence");
    assert_eq!(conf(&rig).live_calls(), 3);

    for id in &ids {
        a.hangup_far_end(id, None).unwrap();
    }
    wait_for(&format!("{plugin}: every instance dropped"), || {
        conf(&rig).live_calls() == 0
    })
    .await;
    assert_eq!(
        rig.host.ownership.sizes().0,
        0,
        "{plugin}: ownership forgets ended channels"
    );
    rig.stop().await;
}

/// Two bridged callers; `*` toggles each one's mute independently, other keys do nothing.
/// `toggles` is false for the Rust app, which sends nothing on DTMF.
async fn star_toggles_mute(plugin: &str, toggles: bool) {
    let rig = Rig::start(1, &[("conf", plugin)]).await;
    let a = rig.node("a");
    let alice = rig.call("a", "Alice", "8000");
    let bob = rig.call("a", "Bob", "8000");
    wait_for(&format!("{plugin}: both bridged"), || {
        in_bridge(&a, &alice, "conf") && in_bridge(&a, &bob, "conf")
    })
    .await;
    a.clear_log();

    let mute = |id: &str| format!("POST /ari/channels/{id}/mute?direction=in");
    let unmute = |id: &str| format!("DELETE /ari/channels/{id}/mute?direction=in");
    // Each press is awaited before the next, so the log's order is the presses' order.
    let mut want: Vec<String> = Vec::new();
    for (who, key, request) in [
        (&alice, "*", Some(mute(&alice))),
        (&alice, "1", None),
        (&bob, "*", Some(mute(&bob))), // Bob's own state: muted now, not unmuted
        (&alice, "*", Some(unmute(&alice))),
        (&alice, "#", None),
        (&alice, "*", Some(mute(&alice))),
        (&bob, "*", Some(unmute(&bob))),
    ] {
        a.press_dtmf(who, key).unwrap();
        match request.filter(|_| toggles) {
            Some(r) => {
                want.push(r);
                wait_for(
                    &format!("{plugin}: {key} on {who} sent {}", want.last().unwrap()),
                    || app_requests(&a).len() >= want.len(),
                )
                .await;
            }
            // No request expected: give the event time to be delivered and handled.
            None => tokio::time::sleep(std::time::Duration::from_millis(150)).await,
        }
        assert_eq!(app_requests(&a), want, "{plugin}: after {key} on {who}");
    }
    assert!(
        in_bridge(&a, &alice, "conf") && in_bridge(&a, &bob, "conf"),
        "{plugin}: still in the conference"
    );
    assert_eq!(conf(&rig).live_calls(), 2, "{plugin}: no call faulted");
    rig.stop().await;
}

macro_rules! language {
    ($module:ident, $plugin:literal, toggles_mute = $toggles:literal) => {
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn conference_sends_the_seed_sequence() {
                super::seed_sequence($plugin).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn star_toggles_mute_per_call() {
                super::star_toggles_mute($plugin, $toggles).await;
            }
        }
    };
}

language!(rust, "conference", toggles_mute = false);
language!(python, "conference-py", toggles_mute = true);
language!(javascript, "conference-js", toggles_mute = true);
