//! End-to-end: host replicas sharing their uploaded apps through the app stream, a durable
//! RabbitMQ stream (`[amqp] apps_stream`) on a real broker. Each replica fronts its own
//! simulated cluster, so "served by replica N" means a call on replica N's nodes reaches the
//! app and is bridged by it.
//!
//! Needs a broker: `scripts/test.sh` starts one and sets `STASIS_TEST_AMQP_URL`. Every test
//! uses its own stream (random name) and deletes it at the end.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use stasis_e2e::{AdminHost, InboundCall, PATIENCE, in_bridge, plugin, sim_config, wait_for};
use stasis_host::admin_client::{AdminClient, ClientError};
use stasis_host::app_stream::{AppStream, Op};
use stasis_host::apps::AppInfo;

/// Held for reading by every test, for writing by the one that restarts the broker.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn amqp_url() -> String {
    std::env::var("STASIS_TEST_AMQP_URL")
        .unwrap_or_else(|_| panic!("run through scripts/test.sh or set STASIS_TEST_AMQP_URL"))
}

/// A stream name no other test (or earlier run) uses.
fn unique_stream(test: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("stasis-test-apps-{test}-{:016x}", h.finish())
}

/// What a replica shows of an app: (version, sha256, uploaded_at) of every version, and
/// the active version.
type View = (Vec<(u32, String, u64)>, Option<u32>);

/// One host replica: its own simulated cluster, a host with the admin API, the shared stream.
struct Replica {
    sim: stasis_sim::Cluster,
    admin: AdminHost,
}

impl Replica {
    async fn start(url: &str, stream: &str, data_dir: Option<&Path>) -> Replica {
        // RUST_LOG=stasis_host=debug shows what the followers do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let sim = stasis_sim::Cluster::start(sim_config(1))
            .await
            .expect("simulated cluster");
        let mut extra = format!("[amqp]\nurl = \"{url}\"\napps_stream = \"{stream}\"\n");
        if let Some(dir) = data_dir {
            extra.push_str(&format!("[store]\ndata_dir = \"{}\"\n", dir.display()));
        }
        let admin = AdminHost::start(&sim, &extra, None).await;
        Replica { sim, admin }
    }

    fn client(&self) -> AdminClient {
        self.admin.client(None)
    }

    fn app(&self, name: &str) -> Option<AppInfo> {
        self.admin.apps.get(name).ok()
    }

    /// (version, sha256, uploaded_at) of every version, and the active one.
    fn view(&self, name: &str) -> Option<View> {
        self.app(name).map(|app| {
            let versions = app
                .versions
                .iter()
                .map(|v| {
                    (
                        v.record.version,
                        v.record.sha256.clone(),
                        v.record.uploaded_at,
                    )
                })
                .collect();
            (versions, app.active_version)
        })
    }

    /// Waits until `name`'s active version is `version` with component `sha256`, serving.
    async fn wait_active(&self, name: &str, version: u64, sha256: &Value) {
        let sha256 = sha256.as_str().unwrap().to_string();
        wait_for(&format!("{name} v{version} active"), || {
            self.app(name).is_some_and(|a| {
                a.active_version == Some(version as u32)
                    && a.sha256.as_deref() == Some(sha256.as_str())
                    && a.versions
                        .iter()
                        .any(|v| v.active && v.loaded && v.record.version == version as u32)
            })
        })
        .await;
    }

    async fn wait_registered(&self, app: &str, registered: bool) {
        wait_for(&format!("{app} registered = {registered}"), || {
            (self.sim.nodes().iter()).all(|n| n.apps().contains(&app.to_string()) == registered)
        })
        .await;
    }

    /// A call to 8000 (Stasis(conf)) on this replica's node, bridged by the app.
    async fn conf_call(&self, caller: &str) -> String {
        let node = self.sim.node("a");
        let id = node
            .inject_call(InboundCall {
                caller_name: caller.into(),
                caller_number: "1000".into(),
                exten: "8000".into(),
                ..Default::default()
            })
            .expect("call injected");
        wait_for(&format!("{caller} bridged"), || {
            in_bridge(&node, &id, "conf")
        })
        .await;
        id
    }

    async fn stop(self) {
        self.admin.stop();
        self.sim.shutdown().await;
    }
}

async fn push(client: &AdminClient, name: &str, wasm: Vec<u8>) -> Result<Value, ClientError> {
    client.push(name, wasm, &[], |_| {}).await
}

fn refused(result: Result<Value, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status.as_u16(), code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The app changes in the log, in order (the replicas' start-up barriers left out).
async fn logged_changes(url: &str, stream: &str) -> Vec<String> {
    let history = AppStream::new(url, stream, stasis_host::tls::client_config(None).unwrap())
        .unwrap()
        .history(Duration::from_millis(700))
        .await
        .expect("the stream reads");
    history
        .into_iter()
        .filter_map(|(_, record)| match record.op {
            Op::Upload { name, sha256, .. } => Some(format!("upload {name} {}", &sha256[..8])),
            Op::Rollback { name } => Some(format!("rollback {name}")),
            Op::Delete { name, force } => Some(format!("delete {name} force={force}")),
            Op::Sync => None,
        })
        .collect()
}

async fn delete_stream(url: &str, stream: &str) {
    AppStream::new(url, stream, stasis_host::tls::client_config(None).unwrap())
        .unwrap()
        .delete()
        .await
        .expect("the test stream is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_uploaded_to_any_replica_is_served_by_every_replica() {
    let _broker = BROKER.read().await;
    let url = amqp_url();
    let stream = unique_stream("serve");
    let data = tempfile::tempdir().unwrap();
    let one = Replica::start(&url, &stream, Some(data.path())).await;
    let two = Replica::start(&url, &stream, None).await;
    let conference = plugin("conference");
    let ivr = plugin("ivr");

    // Uploaded to replica 1: replica 2 serves it (a call on its node is bridged by it).
    let v1 = push(&one.client(), "conf", conference.clone())
        .await
        .expect("upload accepted");
    assert_eq!(
        (v1["version"].as_u64(), v1["replaced"].as_u64()),
        (Some(1), None)
    );
    two.wait_active("conf", 1, &v1["sha256"]).await;
    two.wait_registered("conf", true).await;
    let alice = two.conf_call("Alice").await;
    one.wait_registered("conf", true).await;
    one.conf_call("Bob").await;

    // An invalid upload is refused by the replica that received it, and never logged.
    let (status, code) = refused(push(&one.client(), "conf", b"(component)".to_vec()).await);
    assert_eq!((status, code.as_str()), (422, "wrong_world"));
    let (status, code) = refused(push(&two.client(), "conf", conference[..100].to_vec()).await);
    assert_eq!(status, 422, "{code}");

    // A new version uploaded to replica 2: both serve it.
    let v2 = push(&two.client(), "conf", ivr.clone())
        .await
        .expect("v2 accepted");
    assert_eq!(
        (v2["version"].as_u64(), v2["replaced"].as_u64()),
        (Some(2), Some(1))
    );
    // The answer comes after replica 2 applied its own record: no wait needed there.
    assert_eq!(two.app("conf").unwrap().active_version, Some(2));
    one.wait_active("conf", 2, &v2["sha256"]).await;
    assert_eq!(one.view("conf"), two.view("conf"));
    // Alice's call goes on, on the version it started with.
    assert!(in_bridge(&two.sim.node("a"), &alice, "conf"));

    // Rolled back on replica 1: both serve v1 again.
    let rolled = one.client().rollback("conf").await.expect("rollback");
    assert_eq!(
        (rolled["version"].as_u64(), rolled["replaced"].as_u64()),
        (Some(1), Some(2))
    );
    two.wait_active("conf", 1, &v1["sha256"]).await;
    assert_eq!(one.view("conf"), two.view("conf"));
    two.conf_call("Carol").await;

    // A replica started afterwards catches up before it serves: same versions, same numbers.
    let three = Replica::start(&url, &stream, None).await;
    assert_eq!(three.view("conf"), one.view("conf"));
    let (versions, active) = three.view("conf").unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(active, Some(1));
    let lazy = three.app("conf").unwrap();
    assert!(
        !lazy.versions[1].loaded,
        "v2 is compiled when it becomes active"
    );
    three.wait_active("conf", 1, &v1["sha256"]).await;
    three.wait_registered("conf", true).await;
    three.conf_call("Dave").await;

    // Replica 3 caught up without compiling v2 (not active); rolling back to it later does.
    let v3 = push(&three.client(), "conf", plugin("probe"))
        .await
        .expect("v3 accepted");
    assert_eq!(v3["version"], 3);
    one.wait_active("conf", 3, &v3["sha256"]).await;
    let rolled = one.client().rollback("conf").await.expect("rollback to 2");
    assert_eq!(rolled["version"], 2);
    for replica in [&one, &two, &three] {
        replica.wait_active("conf", 2, &v2["sha256"]).await;
    }
    two.client().rollback("conf").await.expect("rollback to 1");
    for replica in [&one, &two, &three] {
        replica.wait_active("conf", 1, &v1["sha256"]).await;
    }
    assert_eq!(one.view("conf"), three.view("conf"));
    assert_eq!(two.view("conf"), three.view("conf"));

    // The log holds exactly the accepted changes: nothing of the refused uploads.
    let sha = |v: &Value| v["sha256"].as_str().unwrap()[..8].to_string();
    assert_eq!(
        logged_changes(&url, &stream).await,
        vec![
            format!("upload conf {}", sha(&v1)),
            format!("upload conf {}", sha(&v2)),
            "rollback conf".to_string(),
            format!("upload conf {}", sha(&v3)),
            "rollback conf".to_string(),
            "rollback conf".to_string(),
        ]
    );

    // Replica 1 restarts with its data dir: it rebuilds the same state from the log (no
    // duplicated versions) and reuses its stored artifact instead of recompiling.
    let artifact = data
        .path()
        .join("apps/conf")
        .join(format!("{}.cwasm", v1["sha256"].as_str().unwrap()));
    let compiled_at = std::fs::metadata(&artifact)
        .expect("the artifact is stored")
        .modified()
        .unwrap();
    one.stop().await;
    let one = Replica::start(&url, &stream, Some(data.path())).await;
    assert_eq!(one.view("conf"), three.view("conf"));
    one.wait_active("conf", 1, &v1["sha256"]).await;
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().modified().unwrap(),
        compiled_at,
        "the stored artifact was reused"
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(data.path().join("apps/conf/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["versions"].as_array().unwrap().len(),
        3,
        "{manifest}"
    );
    assert_eq!(manifest["active"], 1);
    assert!(
        one.app("conf").unwrap().recent_errors.is_empty(),
        "{:?}",
        one.app("conf").unwrap().recent_errors
    );

    // Deleted on replica 2 (force: calls in progress are hung up): gone everywhere, from
    // the nodes and from replica 1's data dir.
    let deleted = two.client().delete("conf", true).await.expect("delete");
    assert_eq!(deleted["name"], "conf");
    for replica in [&one, &two, &three] {
        wait_for("conf deleted", || replica.app("conf").is_none()).await;
        replica.wait_registered("conf", false).await;
    }
    assert!(!data.path().join("apps/conf").exists());
    assert_eq!(refused(one.client().delete("conf", false).await).0, 404);

    // Uploaded again, the name starts over at version 1, on every replica.
    let again = push(&three.client(), "conf", conference.clone())
        .await
        .expect("upload after delete");
    assert_eq!(again["version"], 1);
    one.wait_active("conf", 1, &again["sha256"]).await;
    two.wait_active("conf", 1, &again["sha256"]).await;
    assert_eq!(one.view("conf").unwrap().0.len(), 1);

    for replica in [one, two, three] {
        replica.stop().await;
    }
    delete_stream(&url, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_on_two_replicas_get_the_same_numbers_everywhere() {
    let _broker = BROKER.read().await;
    let url = amqp_url();
    let stream = unique_stream("race");
    let one = Replica::start(&url, &stream, None).await;
    let two = Replica::start(&url, &stream, None).await;
    let (c1, c2) = (one.client(), two.client());
    let (a, b) = tokio::join!(
        push(&c1, "conf", plugin("conference")),
        push(&c2, "conf", plugin("ivr")),
    );
    let (a, b) = (a.expect("upload on 1"), b.expect("upload on 2"));
    let mut versions = [a["version"].as_u64(), b["version"].as_u64()];
    versions.sort();
    assert_eq!(versions, [Some(1), Some(2)], "{a} {b}");
    let last = if a["version"] == 2 { &a } else { &b };
    one.wait_active("conf", 2, &last["sha256"]).await;
    two.wait_active("conf", 2, &last["sha256"]).await;
    assert_eq!(one.view("conf"), two.view("conf"));

    // Refusals decided by the log come back to the replica that asked.
    assert_eq!(
        refused(c1.rollback("nope").await),
        (404, "not_found".into())
    );
    assert_eq!(
        refused(c2.delete("nope", false).await),
        (404, "not_found".into())
    );
    c1.rollback("conf").await.expect("rollback to 1");
    assert_eq!(
        refused(c2.rollback("conf").await),
        (409, "no_earlier_version".into())
    );
    for replica in [one, two] {
        replica.stop().await;
    }
    delete_stream(&url, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_refuses_changes_and_changes_nothing() {
    // Nothing listens on port 1: publishing fails at once and the request says why.
    let sim = stasis_sim::Cluster::start(sim_config(1))
        .await
        .expect("simulated cluster");
    let extra =
        "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\napps_stream = \"unreachable\"\n";
    let open = tokio::time::timeout(PATIENCE, AdminHost::start(&sim, extra, None))
        .await
        .expect("the host starts even without its broker");
    let (status, code) = refused(push(&open.client(None), "conf", plugin("conference")).await);
    assert_eq!((status, code.as_str()), (503, "stream_unavailable"));
    assert!(open.apps.get("conf").is_err());
    open.stop();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_stream_across_a_broker_restart() {
    let url = amqp_url();
    if std::env::var("STASIS_TEST_RABBITMQ_NODE")
        .unwrap_or_default()
        .is_empty()
    {
        eprintln!("skipped: the broker is not the private test node (STASIS_TEST_RABBITMQ_NODE)");
        return;
    }
    let _broker = BROKER.write().await;
    let stream = unique_stream("restart");
    let one = Replica::start(&url, &stream, None).await;
    let two = Replica::start(&url, &stream, None).await;
    let v1 = push(&one.client(), "conf", plugin("conference"))
        .await
        .expect("v1");
    two.wait_active("conf", 1, &v1["sha256"]).await;

    // Every client connection drops; the stream and its records survive.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq.sh");
    let restarted = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("restart-app")
        .status()
        .await
        .expect("scripts/rabbitmq.sh runs");
    assert!(restarted.success(), "restart-app failed");

    // Publishing reconnects (the broker may take a moment to serve the stream again).
    let deadline = std::time::Instant::now() + PATIENCE * 3;
    let v2 = loop {
        match push(&two.client(), "conf", plugin("ivr")).await {
            Ok(v2) => break v2,
            Err(ClientError::Api {
                status, message, ..
            }) if status.as_u16() == 503 && std::time::Instant::now() < deadline => {
                eprintln!("retrying: {message}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("upload after the restart: {e}"),
        }
    };
    assert_eq!(v2["version"], 2, "{v2}");
    // Both followers resumed where they were: v1 is not applied twice, v2 arrives.
    one.wait_active("conf", 2, &v2["sha256"]).await;
    assert_eq!(one.view("conf"), two.view("conf"));
    assert_eq!(one.view("conf").unwrap().0.len(), 2);
    for replica in [one, two] {
        replica.stop().await;
    }
    delete_stream(&url, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_tens_of_megabytes_travels_through_the_stream() {
    // The size of a componentize-py app; no compiling here, only the log.
    let _broker = BROKER.read().await;
    let url = amqp_url();
    let stream = unique_stream("large");
    let log = AppStream::new(
        &url,
        &stream,
        stasis_host::tls::client_config(None).unwrap(),
    )
    .unwrap();
    let body: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let record = stasis_host::app_stream::Record::new(Op::Upload {
        name: "big".into(),
        sha256: stasis_host::store::sha256_hex(&body),
        size: body.len() as u64,
        compile_ms: 0,
        uploaded_at: 0,
        limits: Default::default(),
        config: Default::default(),
    });
    log.publish(&record, &body).await.expect("published");
    // `history` decodes every record, checking the body against its SHA-256.
    let history = log.history(Duration::from_secs(3)).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].1, record);
    log.delete().await.unwrap();
}
