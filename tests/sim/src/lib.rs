//! # stasis-sim — a simulated Asterisk 22 ARI cluster
//!
//! Several simulated nodes, each serving real HTTP and websockets on loopback (axum): ARI REST
//! under `/ari`, events on `/ari/events`, a control API under `/_sim`. Behaviour follows the
//! recordings of two real Asterisk 22.10.1 nodes (`tests/sim/fixtures/`); where the simulator
//! and the recordings differ, the recordings win and the conformance tests
//! (`tests/conformance.rs`) check it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stasis_sim::SimError> {
//! use stasis_sim::{Cluster, ClusterConfig, InboundCall};
//! let cluster = Cluster::start(ClusterConfig::default()).await?;
//! let a = cluster.node("a");
//! println!("ARI at {} ({})", a.ari_url(), a.asterisk_id());
//! // ... connect a websocket for app `conf` to a.ws_url("conf") ...
//! let chan = a.inject_call(InboundCall {
//!     caller_name: "Alice".into(),
//!     caller_number: "1001".into(),
//!     exten: "8000".into(), // default dialplan: Stasis(conf)
//!     ..Default::default()
//! })?;
//! a.press_dtmf(&chan, "12#")?;
//! a.hangup_far_end(&chan, Some(16))?;
//! a.kill().await;   // sockets drop (1006), connections refused
//! a.revive().await?; // back, empty
//! for r in a.request_log() { println!("{} {} -> {}", r.method, r.path, r.status); }
//! # Ok(()) }
//! ```
//!
//! Module map (one concept each):
//! - [`config`] / [`dialplan`]: what the cluster looks like (serde, TOML/JSON);
//! - `state`: one node's core (maps, event fan-out, effects); `channel`, `bridge`, `playback`,
//!   `apps`: the ARI resources as `impl` blocks on that core;
//! - `rest`, `ws`: the ARI HTTP surface; `control`: the `/_sim` control API;
//! - `amqp`: Stasis events over AMQP (Wazo's `res_stasis_amqp`), one publisher task per node;
//! - `node`: server lifecycle and [`NodeHandle`]; `cluster`: [`Cluster`] and the dispatcher for
//!   timers and trunk signalling; [`cli`]: `stasis-host sim`.
//!
//! The control HTTP API and the default dialplan are documented in `tests/sim/README.md`.

mod amqp;
mod apps;
mod bridge;
mod channel;
pub mod cli;
mod cluster;
pub mod config;
mod control;
pub mod dialplan;
mod error;
mod node;
mod params;
mod playback;
mod rest;
mod rest_ws;
mod state;
pub mod time;
mod tls;
mod ws;

pub use amqp::{AmqpState, AmqpStatus};
pub use channel::CallerId;
pub use cli::{SimArgs, run};
pub use cluster::Cluster;
pub use config::{AmqpConfig, AmqpFormat, ClusterConfig, NodeAmqpConfig, NodeConfig};
pub use dialplan::{Dialplan, Route};
pub use error::{AriError, SimError};
pub use node::{BridgeInfo, ChannelInfo, InboundCall, LoggedRequest, NodeHandle};
