//! Shared harness for the end-to-end tests: a simulated cluster on loopback, a host
//! connected to it over real HTTP and websockets, and helpers to wait on observable state.

use std::time::{Duration, Instant};

use stasis_host::cluster::Health;
use stasis_host::config::Config;
use stasis_host::gateway::Gateway;
use stasis_host::runtime::{AppSettings, RuntimeConfig};
pub use stasis_sim::{ClusterConfig, InboundCall, LoggedRequest, NodeHandle};

/// A running simulated cluster with a host in front of it.
pub struct Rig {
    pub sim: stasis_sim::Cluster,
    pub host: Gateway,
}

/// How long any wait in the tests may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A simulated cluster config with `nodes` nodes on ephemeral ports and short playbacks.
pub fn sim_config(nodes: usize) -> ClusterConfig {
    let mut config = ClusterConfig::with_nodes(nodes).with_playback_ms(100);
    config.control_port = 0;
    for node in &mut config.nodes {
        node.port = 0;
    }
    config
}

/// Host configuration pointing at every node of `sim`, with `extra` TOML appended.
pub fn host_config(sim: &stasis_sim::Cluster, extra: &str) -> Config {
    let (user, pass) = sim.credentials();
    let mut toml = String::new();
    for n in sim.nodes() {
        toml.push_str(&format!(
            "[nodes.{}]\nari_url = \"{}\"\nusername = \"{user}\"\npassword = \"{pass}\"\n",
            n.name(),
            n.ari_url()
        ));
    }
    toml.push_str(
        "[limits]\nnode_grace_ms = 300\nmax_reconnect_ms = 200\nrequest_timeout_ms = 2000\n",
    );
    toml.push_str(extra);
    Config::from_toml(&toml).expect("valid test config")
}

/// A runtime sized for tests (many test processes share the machine's address space).
pub fn runtime_config() -> RuntimeConfig {
    RuntimeConfig {
        max_instances: 500,
        ..RuntimeConfig::default()
    }
}

/// The compiled plugin `name` (plugins/build.sh runs once per test process).
pub fn plugin(name: &str) -> Vec<u8> {
    stasis_host::runtime::testing::plugin_wasm(name).expect("plugins build")
}

impl Rig {
    /// Starts `nodes` simulated nodes and a host running each `(app name, plugin)`; returns
    /// once every node is connected and has every app registered.
    pub async fn start(nodes: usize, apps: &[(&str, &str)]) -> Rig {
        Self::start_with(sim_config(nodes), apps).await
    }

    pub async fn start_with(sim_config: ClusterConfig, apps: &[(&str, &str)]) -> Rig {
        Self::start_configured(sim_config, "", apps).await
    }

    /// As [`Rig::start_with`], with `host_extra` TOML appended to the host's configuration.
    pub async fn start_configured(
        sim_config: ClusterConfig,
        host_extra: &str,
        apps: &[(&str, &str)],
    ) -> Rig {
        init_logging();
        let sim = stasis_sim::Cluster::start(sim_config)
            .await
            .expect("simulated cluster");
        route_trunk_legs(&sim);
        let host = Gateway::start(host_config(&sim, host_extra), runtime_config())
            .await
            .expect("host starts");
        for (name, plugin_name) in apps {
            load_plugin_cached(&host, name, plugin_name).await;
        }
        let rig = Rig { sim, host };
        rig.wait_connected().await;
        rig
    }

    /// Waits until every node is up in the host and has all loaded apps registered.
    pub async fn wait_connected(&self) {
        let apps: Vec<String> = self
            .host
            .catalog
            .all()
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        wait_for("nodes connected with apps registered", || {
            self.host.cluster.nodes().all(|n| n.health() == Health::Up)
                && self
                    .sim
                    .nodes()
                    .iter()
                    .all(|n| apps.iter().all(|a| n.apps().contains(a)))
        })
        .await;
    }

    pub fn node(&self, name: &str) -> NodeHandle {
        self.sim.node(name)
    }

    /// Injects a call from `caller` to `exten` on `node`; returns its channel id.
    pub fn call(&self, node: &str, caller: &str, exten: &str) -> String {
        self.node(node)
            .inject_call(InboundCall {
                caller_name: caller.into(),
                caller_number: format!("1{:03}", caller.len()),
                exten: exten.into(),
                ..Default::default()
            })
            .expect("call injected")
    }

    pub async fn stop(self) {
        self.host.shutdown();
        self.sim.shutdown().await;
    }
}

/// Loads plugin `plugin` into `host` as app `name` from its compiled artifact, cached across
/// test processes (`runtime::testing::plugin_artifact`): a Python or JavaScript component
/// costs 10–30 s of Cranelift the first time, about a millisecond after that.
pub async fn load_plugin_cached(
    host: &Gateway,
    name: &str,
    plugin: &str,
) -> std::sync::Arc<stasis_host::runtime::App> {
    let (runtime, which) = ((*host.runtime).clone(), plugin.to_string());
    let artifact = tokio::task::spawn_blocking(move || {
        stasis_host::runtime::testing::plugin_artifact(&runtime, &which)
    })
    .await
    .expect("compile task")
    .unwrap_or_else(|e| panic!("plugin {plugin}: {e}"));
    let backend = host.router.clone() as std::sync::Arc<dyn stasis_host::backend::AriBackend>;
    let app = host
        .runtime
        .load(name, &artifact, AppSettings::default(), backend)
        .expect("app loads");
    host.catalog.activate(name, app.clone());
    app
}

/// Every node sends calls arriving over the trunk to the host's trunk-leg app with the dialled
/// extension as argument, as `deploy/asterisk/extensions.conf` does on real nodes.
pub fn route_trunk_legs(sim: &stasis_sim::Cluster) {
    for node in sim.nodes() {
        node.set_route(
            "from-trunk",
            "_.",
            stasis_sim::Route::Stasis {
                app: stasis_host::conference::TRUNK_APP.into(),
                args: vec!["${EXTEN}".into()],
            },
        );
    }
}

/// Logs to the test output, filtered by `RUST_LOG` (nothing by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `ready` until it holds; panics with `what` after [`PATIENCE`].
pub async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The requests `node` received (over HTTP or on an event websocket), as
/// `"METHOD /path?query"`, without the host's own housekeeping (identification, the event
/// websocket or its probe, AMQP registrations, event filters,
/// and the channel listing it reconciles with whenever it (re)connects).
pub fn app_requests(node: &NodeHandle) -> Vec<String> {
    node.request_log()
        .into_iter()
        .filter(|r| {
            let housekeeping = r.path.ends_with("/asterisk/info")
                || r.path.ends_with("/events")
                || r.path.starts_with("/ari/amqp/")
                || r.path.ends_with("/eventFilter")
                // The probe of a new event socket (does the node take requests there?).
                || (r.over_websocket && r.path == "/ari/asterisk/ping")
                || (r.method == "GET" && r.path == "/ari/channels" && r.query.is_empty());
            !housekeeping
        })
        .map(|r| {
            if r.query.is_empty() {
                format!("{} {}", r.method, r.path)
            } else {
                format!("{} {}?{}", r.method, r.path, r.query)
            }
        })
        .collect()
}

/// Whether `channel` on `node` is up and in `bridge`.
pub fn in_bridge(node: &NodeHandle, channel: &str, bridge: &str) -> bool {
    node.channel(channel)
        .is_some_and(|c| c.state == "Up" && c.bridge.as_deref() == Some(bridge))
}

/// A host with its admin API served on an ephemeral loopback port, in front of `sim`.
pub struct AdminHost {
    pub host: Gateway,
    pub apps: std::sync::Arc<stasis_host::apps::Apps>,
    /// e.g. `http://127.0.0.1:PORT`
    pub url: String,
    server: tokio::task::JoinHandle<()>,
}

impl AdminHost {
    /// Starts a host for `sim` with `extra` TOML (e.g. `[store]` settings) and serves its
    /// admin API, requiring `token` if given.
    pub async fn start(sim: &stasis_sim::Cluster, extra: &str, token: Option<&str>) -> AdminHost {
        let host = Gateway::start(host_config(sim, extra), runtime_config())
            .await
            .expect("host starts");
        let apps = stasis_host::apps::Apps::open(&host)
            .await
            .expect("app store opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let url = format!("http://{}", listener.local_addr().expect("admin address"));
        let (served, token) = (apps.clone(), token.map(str::to_string));
        let server = tokio::spawn(async move {
            stasis_host::admin::serve(listener, served, token.as_deref())
                .await
                .expect("admin API serves");
        });
        AdminHost {
            host,
            apps,
            url,
            server,
        }
    }

    /// A client of this host's admin API.
    pub fn client(&self, token: Option<&str>) -> stasis_host::admin_client::AdminClient {
        stasis_host::admin_client::AdminClient::new(&self.url, token.map(str::to_string))
    }

    pub fn stop(self) {
        self.server.abort();
        self.host.shutdown();
    }
}

/// The RabbitMQ broker the AMQP tests use: `scripts/test.sh` starts one on loopback and
/// exports its URL.
pub fn amqp_url() -> String {
    std::env::var("STASIS_TEST_AMQP_URL").expect(
        "the AMQP tests need RabbitMQ: run them through scripts/test.sh, or set STASIS_TEST_AMQP_URL",
    )
}

/// The test broker's TLS listener (`amqps://` URL) and the CA file that signed its
/// certificate: `scripts/test.sh` exports both.
pub fn amqps() -> (String, std::path::PathBuf) {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                panic!("the amqps test needs {name}: run it through scripts/test.sh, or set it")
            })
    };
    (
        var("STASIS_TEST_AMQPS_URL"),
        var("STASIS_TEST_AMQPS_CA").into(),
    )
}

/// A name (exchange, queue) no other test, in this or another test process, uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Runs `rabbitmqctl` against the test broker's node (`scripts/rabbitmq.sh ctl`, which knows
/// its cookie and ports); panics if it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = rabbitmqctl_output(args);
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`rabbitmqctl`] without the check, for commands that may fail harmlessly.
pub fn rabbitmqctl_output(args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq.sh");
    std::process::Command::new("bash")
        .arg(script)
        .arg("ctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("scripts/rabbitmq.sh runs")
}

/// Host configuration with every node of `sim` on AMQP intake through `exchange`, consumed
/// from `queue`, with `extra` TOML appended.
pub fn amqp_host_config(
    sim: &stasis_sim::Cluster,
    url: &str,
    exchange: &str,
    queue: &str,
    extra: &str,
) -> Config {
    let (user, pass) = sim.credentials();
    let mut toml = String::new();
    for n in sim.nodes() {
        toml.push_str(&format!(
            "[nodes.{}]\nari_url = \"{}\"\nusername = \"{user}\"\npassword = \"{pass}\"\nintake = \"amqp\"\n",
            n.name(),
            n.ari_url()
        ));
    }
    toml.push_str(
        "[limits]\nnode_grace_ms = 300\nmax_reconnect_ms = 200\nrequest_timeout_ms = 2000\n",
    );
    toml.push_str(&format!(
        "[amqp]\nurl = \"{url}\"\nexchange = \"{exchange}\"\nqueue = \"{queue}\"\npoll_ms = 100\n"
    ));
    toml.push_str(extra);
    Config::from_toml(&toml).expect("valid test config")
}

/// A loopback TCP relay to `target` whose connections a test can cut at once, as a network
/// failure would (new connections are accepted again right after).
pub struct Relay {
    pub port: u16,
    cuts: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay binds");
        let port = listener.local_addr().expect("relay address").port();
        let cuts = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let (target, relay_cuts) = (target.to_string(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (target, mut cut) = (target.clone(), relay_cuts.subscribe());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { port, cuts }
    }

    /// Drops every connection open through the relay.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// A private CA named `name` and a certificate it signed for `127.0.0.1` and `localhost`
/// (subjectAltName), as PEM files in `dir`: returns the CA's file (for the host's
/// `[tls] ca_file`) and the node's identity (for the simulator).
pub fn tls_files(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, stasis_sim::config::NodeTls) {
    tls_files_naming(dir, name, &["127.0.0.1", "localhost"])
}

/// As [`tls_files`], with the node's certificate naming `names` in its subjectAltName; none:
/// a certificate with a CN only, as Asterisk's `ast_tls_cert` script makes.
pub fn tls_files_naming(
    dir: &std::path::Path,
    name: &str,
    names: &[&str],
) -> (std::path::PathBuf, stasis_sim::config::NodeTls) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("node key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = CertificateParams::new(names).expect("node params");
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let leaf = leaf
        .signed_by(&key, &ca, &ca_key)
        .expect("node certificate");
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("asterisk.crt"), leaf.pem()).unwrap();
    std::fs::write(path("asterisk.key"), key.serialize_pem()).unwrap();
    (
        path("ca.pem"),
        stasis_sim::config::NodeTls {
            cert_file: path("asterisk.crt"),
            key_file: path("asterisk.key"),
        },
    )
}
