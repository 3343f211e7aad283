//! End-to-end: apps uploaded through the admin API to a running host in front of simulated
//! nodes: serving, refusing bad uploads, persistence across restarts, hot swap under load,
//! delete (drain and force), rollback, auth, and the upload-to-first-call time.

use std::time::{Duration, Instant};

use serde_json::Value;
use stasis_e2e::{AdminHost, PATIENCE, in_bridge, plugin, sim_config, wait_for};
use stasis_host::admin_client::{AdminClient, ClientError};

const TOKEN: &str = "test-token-0123456789";

async fn sim(nodes: usize) -> stasis_sim::Cluster {
    stasis_sim::Cluster::start(sim_config(nodes))
        .await
        .expect("simulated cluster")
}

async fn push(client: &AdminClient, name: &str, wasm: Vec<u8>) -> Result<Value, ClientError> {
    client.push(name, wasm, &[], |_| {}).await
}

/// The status and message of a refused request.
fn refused(result: Result<Value, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api {
            status, message, ..
        }) => (status.as_u16(), message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn wait_registered(sim: &stasis_sim::Cluster, app: &str, registered: bool) {
    wait_for(
        &format!("{app} registered = {registered} on every node"),
        || {
            sim.nodes()
                .iter()
                .all(|n| n.apps().contains(&app.to_string()) == registered)
        },
    )
    .await;
}

/// Injects a call to 8000 (Stasis(conf)) on `node`, waits until it is in bridge `conf`.
async fn conf_call(sim: &stasis_sim::Cluster, node: &str, caller: &str) -> String {
    let handle = sim.node(node);
    let id = handle
        .inject_call(stasis_e2e::InboundCall {
            caller_name: caller.into(),
            caller_number: "1000".into(),
            exten: "8000".into(),
            ..Default::default()
        })
        .expect("call injected");
    wait_for(&format!("{caller} bridged"), || {
        in_bridge(&handle, &id, "conf")
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_serves_calls_and_every_bad_upload_is_refused_while_the_previous_version_serves()
{
    let sim = sim(1).await;
    let conference = plugin("conference");
    let limit = conference.len() + 1024;
    let admin = AdminHost::start(
        &sim,
        &format!("[store]\nmax_upload_bytes = {limit}\n"),
        Some(TOKEN),
    )
    .await;
    let client = admin.client(Some(TOKEN));

    let uploaded = push(&client, "conf", conference.clone())
        .await
        .expect("upload accepted");
    assert_eq!(uploaded["version"], 1);
    assert_eq!(uploaded["size"], conference.len());
    wait_registered(&sim, "conf", true).await;
    conf_call(&sim, "a", "Alice").await;

    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let mut random = vec![0u8; 4096];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
    }
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        ("empty", Vec::new(), 400, "empty_upload", "empty"),
        (
            "random bytes",
            random,
            422,
            "not_wasm",
            "not a WebAssembly binary",
        ),
        (
            "core module",
            core_module,
            422,
            "core_module",
            "wasm32-wasip2",
        ),
        (
            "wrong world",
            b"(component)".to_vec(),
            422,
            "wrong_world",
            "missing export `stasis:app/callbacks@0.1.0`",
        ),
        ("oversize", vec![0u8; limit + 1], 413, "too_large", "limit"),
        (
            "truncated",
            conference[..conference.len() / 2].to_vec(),
            422,
            "compile_failed",
            "compilation failed",
        ),
    ];
    for (what, wasm, want_status, want_code, needle) in cases {
        match push(&client, "conf", wasm).await {
            Err(ClientError::Api {
                status,
                code,
                message,
            }) => {
                assert_eq!(
                    (status.as_u16(), code.as_str()),
                    (want_status, want_code),
                    "{what}: {message}"
                );
                assert!(
                    message.contains(needle),
                    "{what}: {message:?} should contain {needle:?}"
                );
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    // An import the host does not provide is named.
    let unknown_import = br#"(component (import "acme:evil/net" (instance)))"#.to_vec();
    let (status, message) = refused(push(&client, "conf", unknown_import).await);
    assert_eq!(status, 422);
    assert!(
        message.contains("unknown imports: acme:evil/net"),
        "{message}"
    );

    let app = client.get("conf").await.unwrap();
    assert_eq!(app["active_version"], 1, "{app}");
    assert_eq!(app["versions"].as_array().unwrap().len(), 1);
    assert_eq!(app["recent_errors"].as_array().unwrap().len(), 7, "{app}");
    assert!(
        app["recent_errors"][4]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{app}"
    );
    conf_call(&sim, "a", "Bob").await;
    assert_eq!(app["live_calls"], 1);

    // Limits and bad names are checked too.
    let bad = client
        .push(
            "conf",
            conference.clone(),
            &[("memory_mb".into(), "0".into())],
            |_| {},
        )
        .await;
    assert_eq!(refused(bad).0, 400);
    assert_eq!(
        refused(push(&client, "no.dots", conference.clone()).await).0,
        400
    );
    assert_eq!(refused(client.get("nope").await).0, 404);
    admin.stop();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_requires_the_bearer_token() {
    let sim = sim(1).await;
    let admin = AdminHost::start(&sim, "", Some(TOKEN)).await;
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/apps", admin.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(refused(admin.client(Some("wrong")).list().await).0, 401);
    assert_eq!(
        refused(admin.client(Some(&TOKEN[..TOKEN.len() - 1])).list().await).0,
        401
    );
    assert_eq!(
        refused(
            admin
                .client(None)
                .push("conf", b"(component)".to_vec(), &[], |_| {})
                .await
        )
        .0,
        401
    );
    assert!(admin.client(Some(TOKEN)).list().await.is_ok());
    // Health and the OpenAPI description are open.
    assert_eq!(
        http.get(format!("{}/health", admin.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let doc: Value = http
        .get(format!("{}/openapi.json", admin.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/apps/{name}/rollback"]["post"].is_object());
    // Unknown routes answer JSON too.
    let res = http
        .get(format!("{}/nope", admin.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    admin.stop();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_apps_and_damaged_files_are_skipped_or_rebuilt() {
    let sim = sim(1).await;
    let data = tempfile::tempdir().unwrap();
    let store = format!("[store]\ndata_dir = \"{}\"\n", data.path().display());
    let admin = AdminHost::start(&sim, &store, None).await;
    let client = admin.client(None);
    let conf = push(&client, "conf", plugin("conference")).await.unwrap();
    let options = [("config.greeting".to_string(), "hello".to_string())];
    let ivr = client
        .push("ivr", plugin("ivr"), &options, |_| {})
        .await
        .unwrap();
    push(&client, "probe", plugin("probe")).await.unwrap();
    wait_registered(&sim, "conf", true).await;
    assert_eq!(
        admin.apps.get("ivr").unwrap().versions[0].record.config["greeting"],
        "hello"
    );
    admin.stop();

    // Damage: conf's artifact (rebuilt from the component), ivr's component and artifact
    // (skipped), probe's manifest half-written (skipped); plus a stray temporary file.
    let dir = data.path().join("apps");
    let path = |app: &str, sha: &Value, ext: &str| {
        dir.join(app)
            .join(format!("{}.{ext}", sha.as_str().unwrap()))
    };
    std::fs::write(path("conf", &conf["sha256"], "cwasm"), b"garbage").unwrap();
    std::fs::write(path("ivr", &ivr["sha256"], "wasm"), b"\0asm").unwrap();
    std::fs::write(path("ivr", &ivr["sha256"], "cwasm"), b"\0asm").unwrap();
    let manifest = std::fs::read(dir.join("probe/manifest.json")).unwrap();
    std::fs::write(
        dir.join("probe/manifest.json"),
        &manifest[..manifest.len() / 2],
    )
    .unwrap();
    std::fs::write(dir.join("conf/.tmp-1-x.wasm"), b"half").unwrap();

    let admin = AdminHost::start(&sim, &store, None).await;
    let client = admin.client(None);
    let list = client.list().await.unwrap();
    let apps = list["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 3, "{list}");
    let conf = client.get("conf").await.unwrap();
    assert_eq!(conf["active_version"], 1);
    assert_eq!(conf["versions"][0]["loaded"], true, "{conf}");
    let ivr = client.get("ivr").await.unwrap();
    assert_eq!(ivr["versions"][0]["loaded"], false, "{ivr}");
    assert!(
        ivr["recent_errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("corrupt"),
        "{ivr}"
    );
    let probe = client.get("probe").await.unwrap();
    assert!(
        probe["recent_errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("manifest.json"),
        "{probe}"
    );
    assert!(admin.host.catalog.get("ivr").is_none() && admin.host.catalog.get("probe").is_none());
    assert!(!dir.join("conf/.tmp-1-x.wasm").exists());
    wait_registered(&sim, "conf", true).await;
    conf_call(&sim, "a", "Alice").await;
    assert_eq!(client.get("conf").await.unwrap()["live_calls"], 1);
    // The rebuilt artifact was stored: the next start loads it without compiling.
    admin.stop();
    let admin = AdminHost::start(&sim, &store, None).await;
    assert_eq!(admin.apps.get("conf").unwrap().recent_errors.len(), 0);
    admin.stop();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_while_200_calls_are_active_drops_none() {
    // One node: a conference spanning nodes adds trunk legs, which is not what this tests.
    let sim = sim(1).await;
    let admin = AdminHost::start(&sim, "", None).await;
    let client = admin.client(None);
    let conference = plugin("conference");
    // A generous callback deadline: the machine running the tests is shared and small, and a
    // deadline fault would hang a call up, which is what this test counts.
    let slow = [("callback_deadline_ms".to_string(), "10000".to_string())];
    client
        .push("conf", conference.clone(), &slow, |_| {})
        .await
        .unwrap();
    wait_registered(&sim, "conf", true).await;
    let old = admin.host.catalog.get("conf").unwrap();

    // Ramp up in batches: 200 simultaneous addChannel requests to one bridge on a small
    // shared machine can outlast the test's 2 s ARI timeout, which is not what this tests.
    let mut calls = Vec::new();
    for batch in 0..10 {
        let mut ids = Vec::new();
        for i in batch * 20..(batch + 1) * 20 {
            let call = stasis_e2e::InboundCall {
                caller_name: format!("c{i}"),
                caller_number: format!("{i}"),
                exten: "8000".into(),
                ..Default::default()
            };
            ids.push(("a", sim.node("a").inject_call(call).unwrap()));
        }
        let bridged = |ids: &[(&str, String)]| {
            ids.iter()
                .all(|(n, id)| in_bridge(&sim.node(n), id, "conf"))
        };
        wait_for(&format!("batch {batch} bridged"), || bridged(&ids)).await;
        calls.extend(ids);
    }
    assert_eq!(old.live_calls(), 200);

    // Swap while more calls keep arriving.
    let arrivals = {
        let a = sim.node("a");
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                let node = &a;
                let call = stasis_e2e::InboundCall {
                    caller_name: format!("n{i}"),
                    exten: "8000".into(),
                    ..Default::default()
                };
                ids.push((node.name().to_string(), node.inject_call(call).unwrap()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    let swapped = client
        .push(
            "conf",
            conference,
            &[slow[0].clone(), ("config.v".into(), "2".into())],
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(swapped["version"], 2);
    assert_eq!(swapped["replaced"], 1);
    let new = admin.host.catalog.get("conf").unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&old, &new),
        "new calls use the new version"
    );
    assert_eq!(new.kv_get("config.v").as_deref(), Some("2"));
    let arrived = arrivals.await.unwrap();
    wait_for("calls during the swap bridged", || {
        arrived
            .iter()
            .all(|(n, id)| in_bridge(&sim.node(n), id, "conf"))
    })
    .await;

    // None of the 200 was dropped; all still in their bridge, on the version they began on.
    for (node, id) in &calls {
        assert!(
            in_bridge(&sim.node(node), id, "conf"),
            "call {id} on {node} was dropped by the swap"
        );
    }
    assert_eq!(new.live_calls(), 240, "live calls counted across versions");
    for (node, id) in calls
        .iter()
        .map(|(n, id)| (n.to_string(), id))
        .chain(arrived.iter().map(|(n, id)| (n.clone(), id)))
    {
        sim.node(&node).hangup_far_end(id, None).unwrap();
    }
    wait_for("every call ended", || new.live_calls() == 0).await;
    admin.stop();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_drains_calls_in_progress_and_force_hangs_them_up() {
    let sim = sim(1).await;
    let admin = AdminHost::start(&sim, "", None).await;
    let client = admin.client(None);
    let a = sim.node("a");

    push(&client, "conf", plugin("conference")).await.unwrap();
    wait_registered(&sim, "conf", true).await;
    let first = conf_call(&sim, "a", "Alice").await;
    let deleted = client.delete("conf", false).await.unwrap();
    assert_eq!(deleted["live_calls"], 1);
    assert_eq!(refused(client.delete("conf", false).await).0, 404);
    // New calls stop (continued in the dialplan, which ends them); Alice's call goes on,
    // and the node keeps the app registered so her StasisEnd still arrives.
    let late = a
        .inject_call(stasis_e2e::InboundCall {
            caller_name: "Late".into(),
            exten: "8000".into(),
            ..Default::default()
        })
        .unwrap();
    wait_for("the late call ended", || a.channel(&late).is_none()).await;
    assert!(in_bridge(&a, &first, "conf"));
    assert!(a.apps().contains(&"conf".to_string()));
    a.hangup_far_end(&first, None).unwrap();
    wait_registered(&sim, "conf", false).await;

    // Again, with force: the calls in progress are hung up.
    push(&client, "conf", plugin("conference")).await.unwrap();
    wait_registered(&sim, "conf", true).await;
    let ids = [
        conf_call(&sim, "a", "Bob").await,
        conf_call(&sim, "a", "Carol").await,
    ];
    let deleted = client.delete("conf", true).await.unwrap();
    assert_eq!(deleted["hung_up"], 2, "{deleted}");
    wait_for("forced calls hung up", || {
        ids.iter().all(|id| a.channel(id).is_none())
    })
    .await;
    wait_registered(&sim, "conf", false).await;
    assert_eq!(
        client.list().await.unwrap()["apps"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    admin.stop();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_reactivates_the_previous_version() {
    let sim = sim(1).await;
    let data = tempfile::tempdir().unwrap();
    let store = format!("[store]\ndata_dir = \"{}\"\n", data.path().display());
    let admin = AdminHost::start(&sim, &store, None).await;
    let client = admin.client(None);
    assert_eq!(refused(client.rollback("conf").await).0, 404);
    push(&client, "conf", plugin("conference")).await.unwrap();
    assert_eq!(refused(client.rollback("conf").await).0, 409);
    push(&client, "conf", plugin("ivr")).await.unwrap();
    let v2 = admin.host.catalog.get("conf").unwrap();
    let rolled = client.rollback("conf").await.unwrap();
    assert_eq!(
        (rolled["version"].as_u64(), rolled["replaced"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(!std::sync::Arc::ptr_eq(
        &v2,
        &admin.host.catalog.get("conf").unwrap()
    ));
    wait_registered(&sim, "conf", true).await;
    conf_call(&sim, "a", "Alice").await;
    admin.stop();
    // The rollback is persisted.
    let admin = AdminHost::start(&sim, &store, None).await;
    assert_eq!(admin.apps.get("conf").unwrap().active_version, Some(1));
    admin.stop();
    sim.shutdown().await;
}

/// The benchmark of the issue: from the start of the upload of the Rust conference app to
/// its first call answered and bridged on a node. Goal: at most 200 ms.
///
/// Round 0 uploads to a host with no app yet (the node's event socket opens for it, so the
/// round includes registering the app on the node); later rounds upload new versions to the
/// host serving it (a hot swap: the first call after the upload must run on the new
/// version). All rounds use one app name because the plugin's bridge id `conf` belongs to
/// the app that created it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_to_first_call_time() {
    let sim = sim(1).await;
    let data = tempfile::tempdir().unwrap();
    let store = format!("[store]\ndata_dir = \"{}\"\n", data.path().display());
    let admin = AdminHost::start(&sim, &store, None).await;
    let client = admin.client(None);
    let conference = plugin("conference");
    let a = sim.node("a");
    let mut samples = Vec::new();
    for round in 0..8 {
        let started = Instant::now();
        let uploaded = push(&client, "conf", conference.clone()).await.unwrap();
        let upload = started.elapsed();
        let version = admin.host.catalog.get("conf").unwrap();
        while !a.apps().contains(&"conf".to_string()) {
            assert!(
                started.elapsed() < PATIENCE,
                "conf never registered: {:?}",
                a.apps()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let registered = started.elapsed();
        let call = stasis_e2e::InboundCall {
            caller_name: "Bench".into(),
            exten: "8000".into(),
            ..Default::default()
        };
        let id = a.inject_call(call).unwrap();
        while !in_bridge(&a, &id, "conf") {
            assert!(
                started.elapsed() < PATIENCE,
                "first call never bridged: {:?}",
                a.channel(&id)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let total = started.elapsed();
        assert_eq!(uploaded["version"], round + 1);
        assert_eq!(version.live_calls(), 1, "the first call is live");
        println!(
            "round {round} ({}): upload+validate+compile+store {} ms, registered {} ms, first call bridged {} ms",
            if round == 0 {
                "new app, host idle"
            } else {
                "new version, host serving"
            },
            upload.as_millis(),
            registered.as_millis(),
            total.as_millis()
        );
        samples.push(total);
        a.hangup_far_end(&id, None).unwrap();
        wait_for("the call ended", || version.live_calls() == 0).await;
    }
    samples.sort();
    println!(
        "upload-to-first-call ({} bytes, {} rounds): median {} ms, min {} ms, max {} ms",
        conference.len(),
        samples.len(),
        samples[samples.len() / 2].as_millis(),
        samples[0].as_millis(),
        samples[samples.len() - 1].as_millis()
    );
    assert!(
        samples[samples.len() / 2] < Duration::from_secs(5),
        "far beyond the goal"
    );
    admin.stop();
    sim.shutdown().await;
}
