//! The host's configuration: a TOML file, overridden by `STASIS_`-prefixed environment
//! variables, validated before anything starts.
//!
//! Nodes and apps are keyed tables (`[nodes.a]`, `[apps.conf]`) rather than arrays so that
//! every field has a stable environment name: `STASIS_NODES__A__PASSWORD=…` overrides
//! `nodes.a.password`, which is how deployments keep secrets out of the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// A configuration that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How the host hears a node's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Intake {
    /// One ARI websocket per node (`/ari/events`).
    #[default]
    Websocket,
    /// The node forwards Stasis events to RabbitMQ (Wazo's `res_stasis_amqp`); the host
    /// consumes them from the broker in `[amqp]` and registers its apps on the node with
    /// `POST /ari/amqp/{app}`.
    Amqp,
}

/// One Asterisk node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// ARI base URL, e.g. `http://10.0.0.11:8088/ari` (`/ari` is added when missing).
    pub ari_url: String,
    pub username: String,
    pub password: String,
    /// Endpoint template this node dials to reach another node, for conference trunk legs.
    /// `{exten}` is the extension, `{node}` the other node's name.
    #[serde(default = "default_trunk")]
    pub trunk: String,
    #[serde(default)]
    pub intake: Intake,
    #[serde(default)]
    pub rest: RestTransport,
}

fn default_trunk() -> String {
    "PJSIP/{exten}@trunk-{node}".to_string()
}

/// How the host sends ARI requests to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RestTransport {
    /// Over the node's event websocket once the node answers a request there (Asterisk
    /// 22.4, 21.9, 20.14 and later), over HTTP until then and for nodes that never do.
    #[default]
    Auto,
    /// Always over HTTP.
    Http,
}

/// What the host does with a call whose app faulted (trap, deadline, memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFault {
    /// Hang the call up.
    #[default]
    Hangup,
    /// Continue the call in the dialplan, where it entered Stasis.
    Continue,
}

/// One app to load at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Path of the compiled component (`.wasm`).
    pub wasm: PathBuf,
    #[serde(default = "default_app_calls")]
    pub max_live_calls: usize,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: usize,
    #[serde(default = "default_deadline_ms")]
    pub callback_deadline_ms: u64,
    #[serde(default)]
    pub on_fault: OnFault,
}

fn default_app_calls() -> usize {
    1000
}
fn default_memory_mb() -> usize {
    16
}
fn default_deadline_ms() -> u64 {
    1000
}

/// Timeouts and caps that apply to the whole host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Per ARI request.
    pub request_timeout_ms: u64,
    /// Per TCP connect to a node.
    pub connect_timeout_ms: u64,
    /// How long a node may stay unreachable before the host ends its calls.
    pub node_grace_ms: u64,
    /// Longest wait between reconnection attempts to a node.
    pub max_reconnect_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout_ms: 5000,
            connect_timeout_ms: 2000,
            node_grace_ms: 5000,
            max_reconnect_ms: 10_000,
        }
    }
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn node_grace(&self) -> Duration {
        Duration::from_millis(self.node_grace_ms)
    }
    pub fn max_reconnect(&self) -> Duration {
        Duration::from_millis(self.max_reconnect_ms)
    }
}

/// Addresses the host listens on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Admin HTTP API (health, apps). None: not served.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin API requires (`Authorization: Bearer …`). Required unless the
    /// admin address is loopback; set it from the environment (`STASIS_LISTEN__ADMIN_TOKEN`).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// The ARI facade (`/ari/*`, `/ari/events`, `/ari/api-docs`): existing ARI clients see the
    /// whole cluster as one Asterisk here. None: not served. Credentials in `[facade]`.
    #[serde(default)]
    pub facade: Option<SocketAddr>,
}

/// Credentials ARI clients use on the facade (basic auth or `api_key=user:pass`), distinct
/// from the nodes' own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Facade {
    pub username: String,
    pub password: String,
}

/// Where uploaded apps are kept, and how large an upload may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// Directory of uploaded apps and their compiled artifacts. None: uploads are kept in
    /// memory only and are lost at restart.
    pub data_dir: Option<PathBuf>,
    /// Largest accepted upload (`.wasm`), in bytes.
    pub max_upload_bytes: usize,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            data_dir: None,
            max_upload_bytes: 64 << 20,
        }
    }
}

/// The RabbitMQ broker: where `intake = "amqp"` nodes publish their Stasis events, and what
/// host replicas share (the event queue, the stream of app versions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp {
    /// `amqp://user:password@host:port/vhost` (vhost `/` is `%2f`). Keep the password in
    /// the environment: `STASIS_AMQP__URL`.
    pub url: String,
    /// The topic exchange the nodes publish to (`exchange` in the nodes' `amqp.conf` /
    /// `stasis_amqp.conf`). The host declares it durable before any node publishes.
    pub exchange: String,
    /// The durable queue the host consumes events from. Every replica consumes the same
    /// queue; RabbitMQ's single-active-consumer gives the events to one replica at a time.
    pub queue: String,
    /// Events in flight (delivered, not yet handled and acknowledged) per replica.
    pub prefetch: u16,
    /// Register the apps on AMQP nodes with `POST /ari/amqp/{app}` (and again whenever a
    /// node restarts). Turn off where something else registers them (Wazo's Consul keys).
    pub register: bool,
    /// How often the host checks an AMQP node's health (it has no socket to the node).
    pub poll_ms: u64,
    /// Replicas share the calls: the one consuming the event queue routes each call to one
    /// replica (see `replicas.rs`). Off: that one replica handles every call, the others
    /// stand by.
    pub share_calls: bool,
    /// Durable RabbitMQ stream that carries every uploaded app version to every replica.
    /// Empty: uploads stay on the replica that received them.
    pub apps_stream: String,
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "stasis".into(),
            queue: "stasis-host.events".into(),
            prefetch: 256,
            register: true,
            poll_ms: 1000,
            share_calls: false,
            apps_stream: String::new(),
        }
    }
}

impl Amqp {
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nodes: BTreeMap<String, NodeConfig>,
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub store: Store,
    #[serde(default)]
    pub facade: Facade,
    /// RabbitMQ; required when a node has `intake = "amqp"` or apps are replicated.
    #[serde(default)]
    pub amqp: Option<Amqp>,
    #[serde(default)]
    pub tls: Tls,
}

/// TLS to nodes with `https://` ARI URLs (see `tls`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of the CA certificate(s) the nodes' certificates chain to, trusted besides
    /// the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The sections environment variables may override. Other `STASIS_*` variables (`STASIS_LOG`,
/// the test suite's `STASIS_TEST_*`) are not configuration.
const SECTIONS: [&str; 8] = [
    "nodes__", "apps__", "limits__", "listen__", "store__", "facade__", "amqp__", "tls__",
];

impl Config {
    /// Reads `path`, applies `STASIS_*` environment overrides, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::from_figment(
            Figment::from(Toml::file_exact(path)).merge(
                Env::prefixed("STASIS_")
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        SECTIONS.iter().any(|s| key.starts_with(s))
                    })
                    .split("__"),
            ),
        )
    }

    /// Parses a TOML document (no environment), validates. For tests and embedded configs.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: names, URLs, templates, ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "at least one node is required ([nodes.NAME] with ari_url, username, password)",
            ));
        }
        for (name, node) in &self.nodes {
            let field = |f: &str| format!("nodes.{name}.{f}");
            if !valid_name(name) {
                return Err(invalid(
                    format!("nodes.{name}"),
                    "node names use letters, digits, '-' and '_'",
                ));
            }
            let url = reqwest::Url::parse(&node.ari_url)
                .map_err(|e| invalid(field("ari_url"), e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(invalid(
                    field("ari_url"),
                    "must be an http:// or https:// URL with a host",
                ));
            }
            if node.username.is_empty() {
                return Err(invalid(field("username"), "must not be empty"));
            }
            if !node.trunk.contains("{exten}") {
                return Err(invalid(
                    field("trunk"),
                    "must contain {exten}, e.g. PJSIP/{exten}@trunk-{node}",
                ));
            }
        }
        if let Some(path) = &self.tls.ca_file {
            crate::tls::read_ca_file(path).map_err(|e| invalid("tls.ca_file", e.to_string()))?;
        }
        for (name, app) in &self.apps {
            let field = |f: &str| format!("apps.{name}.{f}");
            if !valid_name(name) {
                return Err(invalid(
                    format!("apps.{name}"),
                    "app names use letters, digits, '-' and '_'",
                ));
            }
            if app.max_live_calls == 0 {
                return Err(invalid(field("max_live_calls"), "must be at least 1"));
            }
            if !(1..=4096).contains(&app.memory_mb) {
                return Err(invalid(field("memory_mb"), "must be between 1 and 4096"));
            }
            if app.callback_deadline_ms == 0 {
                return Err(invalid(field("callback_deadline_ms"), "must be at least 1"));
            }
        }
        if self.limits.request_timeout_ms == 0 || self.limits.connect_timeout_ms == 0 {
            return Err(invalid("limits", "timeouts must be at least 1 ms"));
        }
        // An admin API reachable from other machines uploads code that runs in the host:
        // never serve it there without a token.
        if let Some(admin) = self.listen.admin
            && !admin.ip().is_loopback()
            && self.listen.admin_token.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "listen.admin_token",
                format!(
                    "the admin API on the non-loopback address {admin} requires a token (set STASIS_LISTEN__ADMIN_TOKEN)"
                ),
            ));
        }
        if self.listen.facade.is_some()
            && (self.facade.username.is_empty() || self.facade.password.is_empty())
        {
            return Err(invalid(
                "facade.username",
                "the ARI facade (listen.facade) requires facade.username and facade.password (STASIS_FACADE__PASSWORD)",
            ));
        }
        let amqp_nodes: Vec<&String> = (self.nodes.iter())
            .filter(|(_, n)| n.intake == Intake::Amqp)
            .map(|(name, _)| name)
            .collect();
        match &self.amqp {
            None if !amqp_nodes.is_empty() => {
                return Err(invalid(
                    format!("nodes.{}.intake", amqp_nodes[0]),
                    "intake = \"amqp\" requires an [amqp] section with the broker's url",
                ));
            }
            None => {}
            Some(amqp) => {
                amqp.url
                    .parse::<lapin::uri::AMQPUri>()
                    .map_err(|e| invalid("amqp.url", e))?;
                if amqp.exchange.is_empty() || amqp.queue.is_empty() {
                    return Err(invalid("amqp", "exchange and queue must not be empty"));
                }
                if amqp.prefetch == 0 {
                    return Err(invalid("amqp.prefetch", "must be at least 1"));
                }
                if amqp.poll_ms == 0 {
                    return Err(invalid("amqp.poll_ms", "must be at least 1"));
                }
            }
        }
        if self.store.max_upload_bytes == 0 {
            return Err(invalid("store.max_upload_bytes", "must be at least 1"));
        }
        Ok(())
    }
}

impl NodeConfig {
    /// The ARI base URL, always ending in `/ari` without a trailing slash.
    pub fn ari_base(&self) -> String {
        let trimmed = self.ari_url.trim_end_matches('/');
        if trimmed.ends_with("/ari") {
            trimmed.to_string()
        } else {
            format!("{trimmed}/ari")
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [nodes.a]
        ari_url = "http://127.0.0.1:8088"
        username = "asterisk"
        password = "secret"

        [nodes.b]
        ari_url = "http://127.0.0.1:8089/ari/"
        username = "asterisk"
        password = "secret"
        trunk = "PJSIP/{exten}@to-{node}"

        [apps.conf]
        wasm = "conference.wasm"
        on_fault = "continue"

        [limits]
        request_timeout_ms = 300
    "#;

    #[test]
    fn parses_nodes_apps_and_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes["a"].ari_base(), "http://127.0.0.1:8088/ari");
        assert_eq!(c.nodes["b"].ari_base(), "http://127.0.0.1:8089/ari");
        assert_eq!(c.nodes["a"].trunk, "PJSIP/{exten}@trunk-{node}");
        assert_eq!(c.apps["conf"].on_fault, OnFault::Continue);
        assert_eq!(c.apps["conf"].max_live_calls, 1000);
        assert_eq!(c.limits.request_timeout_ms, 300);
        assert_eq!(c.limits.node_grace_ms, 5000);
    }

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn clear_errors_name_the_field() {
        assert!(err("").contains("nodes"), "{}", err(""));
        let bad_url = r#"[nodes.a]
            ari_url = "ftp://x"
            username = "u"
            password = "p""#;
        assert!(err(bad_url).contains("nodes.a.ari_url"), "{}", err(bad_url));
        let unknown = r#"[nodes.a]
            ari_url = "http://x:1"
            username = "u"
            password = "p"
            pasword = "typo""#;
        assert!(err(unknown).contains("pasword"), "{}", err(unknown));
        let trunk = r#"[nodes.a]
            ari_url = "http://x:1"
            username = "u"
            password = "p"
            trunk = "PJSIP/trunk""#;
        assert!(err(trunk).contains("nodes.a.trunk"), "{}", err(trunk));
        let app = format!("{GOOD}\n[apps.x]\nwasm = \"x.wasm\"\nmax_live_calls = 0\n");
        assert!(err(&app).contains("apps.x.max_live_calls"), "{}", err(&app));
        let ca = format!("{GOOD}\n[tls]\nca_file = \"/nonexistent/ca.pem\"\n");
        assert!(
            err(&ca).contains("tls.ca_file") && err(&ca).contains("/nonexistent/ca.pem"),
            "{}",
            err(&ca)
        );
    }

    #[test]
    fn requests_go_on_the_event_socket_unless_a_node_says_http() {
        let node = |extra: &str| {
            format!(
                "[nodes.a]\nari_url = \"http://x:1\"\nusername = \"u\"\npassword = \"p\"\n{extra}"
            )
        };
        let c = Config::from_toml(&node("")).unwrap();
        assert_eq!(c.nodes["a"].rest, RestTransport::Auto);
        let c = Config::from_toml(&node("rest = \"http\"")).unwrap();
        assert_eq!(c.nodes["a"].rest, RestTransport::Http);
        let bad = node("rest = \"carrier-pigeon\"");
        assert!(err(&bad).contains("carrier-pigeon"), "{}", err(&bad));
    }

    #[test]
    fn amqp_intake_needs_a_broker_and_takes_its_defaults() {
        let amqp_node = r#"[nodes.a]
            ari_url = "http://x:1"
            username = "u"
            password = "p"
            intake = "amqp""#;
        assert!(
            err(amqp_node).contains("nodes.a.intake"),
            "{}",
            err(amqp_node)
        );
        let bad_url = format!("{amqp_node}\n[amqp]\nurl = \"http://x\"\n");
        assert!(err(&bad_url).contains("amqp.url"), "{}", err(&bad_url));
        let good = format!(
            "{amqp_node}\n[amqp]\nurl = \"amqp://u:p@127.0.0.1:5673/%2f\"\nshare_calls = true\n"
        );
        let c = Config::from_toml(&good).unwrap();
        let amqp = c.amqp.unwrap();
        assert_eq!(c.nodes["a"].intake, Intake::Amqp);
        assert_eq!(amqp.exchange, "stasis");
        assert_eq!(amqp.queue, "stasis-host.events");
        assert!(amqp.register && amqp.share_calls);
        assert_eq!(amqp.poll(), Duration::from_secs(1));
    }

    #[test]
    fn admin_off_loopback_requires_a_token() {
        let open = format!("{GOOD}\n[listen]\nadmin = \"0.0.0.0:8090\"\n");
        assert!(err(&open).contains("listen.admin_token"), "{}", err(&open));
        let empty = format!("{GOOD}\n[listen]\nadmin = \"0.0.0.0:8090\"\nadmin_token = \"\"\n");
        assert!(
            err(&empty).contains("listen.admin_token"),
            "{}",
            err(&empty)
        );
        let with_token =
            format!("{GOOD}\n[listen]\nadmin = \"0.0.0.0:8090\"\nadmin_token = \"s3cret\"\n");
        assert!(Config::from_toml(&with_token).is_ok());
        let local = format!(
            "{GOOD}\n[listen]\nadmin = \"127.0.0.1:8090\"\n[store]\ndata_dir = \"/tmp/x\"\n"
        );
        let c = Config::from_toml(&local).unwrap();
        assert_eq!(c.store.max_upload_bytes, 64 << 20);
        assert_eq!(c.store.data_dir.as_deref(), Some(Path::new("/tmp/x")));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("stasis-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.toml");
        std::fs::write(&path, GOOD).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("STASIS_NODES__A__PASSWORD", "from-env");
            jail.set_env("STASIS_LOG", "debug");
            jail.set_env("STASIS_TEST_AMQP_URL", "amqp://elsewhere");
            let c = Config::load(&path).map_err(|e| e.to_string())?;
            assert_eq!(c.nodes["a"].password, "from-env");
            assert_eq!(c.nodes["b"].password, "secret");
            Ok(())
        });
        assert!(
            Config::load(&dir.join("missing.toml"))
                .unwrap_err()
                .to_string()
                .contains("missing.toml")
        );
    }
}
