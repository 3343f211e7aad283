//! Cluster configuration, deserializable from JSON or TOML so `stasis-host sim --config` and
//! tests share one format.
//!
//! Everything has a default: an empty config file gives two nodes `a` and `b` with the
//! recorded nodes' entity ids (`02:00:00:00:00:0a`, `02:00:00:00:00:0b`), channel id prefixes
//! `ast-a`/`ast-b`, ephemeral ports, credentials `asterisk`/`asterisk` and the default dialplan.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dialplan::Dialplan;
use crate::error::SimError;

/// The whole simulated cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The nodes; names must be unique (they name trunks: `PJSIP/<exten>@trunk-<name>`).
    pub nodes: Vec<NodeConfig>,
    /// ARI user name (basic auth or `api_key=user:pass`).
    pub username: String,
    /// ARI password.
    pub password: String,
    /// Address to bind (loopback by default).
    pub bind: String,
    /// Port of the cluster-level control server (`/_sim/nodes/...`); 0 = ephemeral.
    pub control_port: u16,
    /// Default length of a sound playback, in milliseconds (for sounds not in `sound_ms`).
    pub playback_ms: u64,
    /// Per-sound lengths in ms (`hello-world` → 1420, as recorded). `tone:` media never end.
    pub sound_ms: BTreeMap<String, u64>,
    /// How long `Wait(3600)`-style "forever" priorities last, in ms.
    pub wait_forever_ms: u64,
    /// Dialplan shared by all nodes (a node may override it).
    pub dialplan: Dialplan,
    /// Stasis events over AMQP (Wazo's `res_stasis_amqp`): where the nodes publish the events of
    /// apps registered with `POST /ari/amqp/{app}`. `None`: no broker configured (registrations
    /// still work, their events are dropped). A node may override it (`nodes[].amqp`).
    pub amqp: Option<AmqpConfig>,
}

/// The AMQP publishing settings of the nodes (`stasis_amqp.conf` + `amqp.conf` on a real node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// Broker URL, e.g. `amqp://guest:guest@127.0.0.1:5673/%2f`.
    pub url: String,
    /// The topic exchange events are published to (`stasis` by default). The node never declares
    /// it: if it is missing at the first publish, the broker closes the node's channel and the
    /// node drops every later event until it restarts (as the real module does).
    pub exchange: String,
    /// Message body: `envelope` (default, the module's current form) or `raw`.
    pub format: AmqpFormat,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: String::new(),
            exchange: "stasis".into(),
            format: AmqpFormat::Envelope,
        }
    }
}

impl AmqpConfig {
    /// Publish to `url`, exchange `stasis`, envelope bodies.
    pub fn new(url: &str) -> Self {
        AmqpConfig {
            url: url.to_string(),
            ..AmqpConfig::default()
        }
    }

    pub fn with_exchange(mut self, exchange: &str) -> Self {
        self.exchange = exchange.to_string();
        self
    }

    pub fn with_format(mut self, format: AmqpFormat) -> Self {
        self.format = format;
        self
    }
}

/// The body of a published event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmqpFormat {
    /// `{"name": <type>, "data": <the ARI event>, "application": <app>}` (recorded).
    #[default]
    Envelope,
    /// The ARI event JSON itself (with `asterisk_id` and `application`), the older experiment.
    Raw,
}

/// A node's own AMQP settings: each field present replaces the cluster's (`amqp`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeAmqpConfig {
    /// This node has no broker connection even if the cluster has one.
    pub disabled: bool,
    pub url: Option<String>,
    pub exchange: Option<String>,
    pub format: Option<AmqpFormat>,
}

/// One simulated Asterisk node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name (`a`, `b`, ...).
    pub name: String,
    /// Entity id, the `asterisk_id` of every event. Default: `02:00:00:00:00:<nn>`.
    pub asterisk_id: Option<String>,
    /// Prefix of generated channel ids (`<prefix>-<epoch>.<n>`). Default: `ast-<name>`.
    pub channel_prefix: Option<String>,
    /// HTTP port (0 = ephemeral; kept across kill/revive).
    pub port: u16,
    /// A dialplan for this node only (replaces the cluster one).
    pub dialplan: Option<Dialplan>,
    /// AMQP settings for this node only (field by field over the cluster's `amqp`).
    pub amqp: Option<NodeAmqpConfig>,
    /// Answers ARI requests written on its event websockets (`RESTRequest`, Asterisk 22.4,
    /// 21.9, 20.14 and later). `false`: ignores them, as older Asterisk does.
    pub rest_over_websocket: bool,
    /// Serve HTTPS and WSS with this certificate, as `http.conf` `tlsenable=yes` does.
    pub tls: Option<NodeTls>,
}

/// A node's TLS identity (`http.conf` `tlscertfile`, `tlsprivatekey`): PEM files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTls {
    /// The certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// Its private key.
    pub key_file: std::path::PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "a".into(),
            asterisk_id: None,
            channel_prefix: None,
            port: 0,
            dialplan: None,
            amqp: None,
            rest_over_websocket: true,
            tls: None,
        }
    }
}

impl NodeConfig {
    /// A node with defaults derived from its name.
    pub fn named(name: &str) -> Self {
        NodeConfig {
            name: name.to_string(),
            ..NodeConfig::default()
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig::with_nodes(2)
    }
}

/// Lengths of the stock sounds used in the recordings (ms).
fn default_sounds() -> BTreeMap<String, u64> {
    [
        ("hello-world", 1420),
        ("beep", 440),
        ("demo-congrats", 10_000),
        ("demo-instruct", 73_000),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl ClusterConfig {
    /// `n` nodes named `a`, `b`, `c`, ... with default settings.
    pub fn with_nodes(n: usize) -> Self {
        ClusterConfig {
            nodes: (0..n).map(|i| NodeConfig::named(&node_name(i))).collect(),
            username: "asterisk".into(),
            password: "asterisk".into(),
            bind: "127.0.0.1".into(),
            control_port: 0,
            playback_ms: 1000,
            sound_ms: default_sounds(),
            wait_forever_ms: 3_600_000,
            dialplan: Dialplan::default(),
            amqp: None,
        }
    }

    /// Every node publishes AMQP-registered apps' events with these settings.
    pub fn with_amqp(mut self, amqp: AmqpConfig) -> Self {
        self.amqp = Some(amqp);
        self
    }

    /// The AMQP settings node `i` runs with (`None`: no broker configured for it).
    pub fn node_amqp(&self, i: usize) -> Option<AmqpConfig> {
        let node = self.nodes[i].amqp.as_ref();
        if node.is_some_and(|n| n.disabled) {
            return None;
        }
        let mut c = self.amqp.clone().unwrap_or_default();
        if let Some(n) = node {
            if let Some(u) = &n.url {
                c.url = u.clone();
            }
            if let Some(e) = &n.exchange {
                c.exchange = e.clone();
            }
            if let Some(f) = n.format {
                c.format = f;
            }
        }
        (!c.url.is_empty()).then_some(c)
    }

    /// Read a config from a `.json` or `.toml` file.
    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SimError::Config(format!("{}: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| SimError::Config(e.to_string()))
        } else {
            serde_json::from_str(&text).map_err(|e| SimError::Config(e.to_string()))
        }
    }

    /// Every sound plays for `ms` (handy in tests: short, predictable playbacks).
    pub fn with_playback_ms(mut self, ms: u64) -> Self {
        self.playback_ms = ms;
        self.sound_ms.clear();
        self
    }

    pub(crate) fn validate(&self) -> Result<(), SimError> {
        if self.nodes.is_empty() {
            return Err(SimError::Config("no nodes".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if n.name.is_empty() || !seen.insert(n.name.clone()) {
                return Err(SimError::Config(format!(
                    "node names must be unique and non-empty: {:?}",
                    n.name
                )));
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(a) = self.node_amqp(i) {
                // No TLS support is compiled into lapin here: plain amqp:// only.
                if !a.url.starts_with("amqp://") {
                    return Err(SimError::Config(format!(
                        "amqp.url of node {} must start with amqp:// (got {:?})",
                        self.nodes[i].name, a.url
                    )));
                }
                if a.exchange.is_empty() || a.exchange.len() > 255 {
                    return Err(SimError::Config(format!(
                        "amqp.exchange of node {} must be 1 to 255 bytes",
                        self.nodes[i].name
                    )));
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !ids.insert(self.asterisk_id(i)) {
                return Err(SimError::Config(format!(
                    "duplicate asterisk_id for node {}",
                    n.name
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn asterisk_id(&self, i: usize) -> String {
        self.nodes[i].asterisk_id.clone().unwrap_or_else(|| {
            // a -> 0a, b -> 0b (as recorded); otherwise by index.
            let name = &self.nodes[i].name;
            let n = if name.len() == 1 && name.as_bytes()[0].is_ascii_lowercase() {
                10 + (name.as_bytes()[0] - b'a') as usize
            } else {
                0x40 + i
            };
            format!("02:00:00:00:00:{:02x}", n & 0xff)
        })
    }
}

/// `a`, `b`, ..., `z`, `n26`, ...
pub fn node_name(i: usize) -> String {
    if i < 26 {
        ((b'a' + i as u8) as char).to_string()
    } else {
        format!("n{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_recorded_nodes() {
        let c = ClusterConfig::default();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.asterisk_id(0), "02:00:00:00:00:0a");
        assert_eq!(c.asterisk_id(1), "02:00:00:00:00:0b");
        c.validate().unwrap();
    }

    #[test]
    fn parses_toml_and_json() {
        let t: ClusterConfig = toml::from_str(
            r#"
            playback_ms = 50
            [[nodes]]
            name = "x"
            channel_prefix = "px"
            [dialplan.default]
            "7000" = { stasis = { app = "ivr", args = ["${EXTEN}"] } }
            "#,
        )
        .unwrap();
        assert_eq!(t.nodes[0].name, "x");
        assert_eq!(t.playback_ms, 50);
        assert!(t.dialplan.lookup("default", "7000").is_some());
        let j: ClusterConfig =
            serde_json::from_str(r#"{"nodes":[{"name":"a"},{"name":"a"}]}"#).unwrap();
        assert!(j.validate().is_err());
    }

    #[test]
    fn amqp_section_and_node_overrides() {
        let t: ClusterConfig = toml::from_str(
            r#"
            [amqp]
            url = "amqp://guest:guest@127.0.0.1:5673/%2f"
            exchange = "wazo"
            [[nodes]]
            name = "a"
            [[nodes]]
            name = "b"
            amqp = { format = "raw" }
            [[nodes]]
            name = "c"
            amqp = { disabled = true }
            "#,
        )
        .unwrap();
        t.validate().unwrap();
        let a = t.node_amqp(0).unwrap();
        assert_eq!(
            (a.exchange.as_str(), a.format),
            ("wazo", AmqpFormat::Envelope)
        );
        assert_eq!(t.node_amqp(1).unwrap().format, AmqpFormat::Raw);
        assert_eq!(t.node_amqp(2), None);
        assert_eq!(ClusterConfig::default().node_amqp(0), None);
        let d: AmqpConfig = serde_json::from_str(r#"{"url":"amqp://h"}"#).unwrap();
        assert_eq!(d.exchange, "stasis");
        let bad = ClusterConfig::default().with_amqp(AmqpConfig::new("http://x"));
        assert!(bad.validate().is_err());
    }
}
