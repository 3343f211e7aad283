//! The assembled host: nodes, intake, dispatch, router and runtime wired together.
//!
//! Data flows one way: ingress (one task per node) → dispatch (one task) → call instances
//! (one task per call) → router → the owning node. Dispatch also feeds the conferences
//! (cluster-wide bridges) through one ordered queue. This module only builds that pipeline
//! and hands out the pieces a caller (the CLI, the demo, tests) needs to observe or feed it.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use crate::amqp;
use crate::backend::AriBackend;
use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::conference::Conferences;
use crate::config::{AppConfig, Config, Intake, OnFault};
use crate::dispatch::{Dispatch, DispatchControl};
use crate::facade::events::{ExternalApps, merged_names};
use crate::ingress;
use crate::node_filter;
use crate::ownership::Ownership;
use crate::replicas::Sharing;
use crate::router::Router;
use crate::runtime::{App, AppSettings, FaultPolicy, Runtime, RuntimeConfig, RuntimeError};

/// Why the host could not start or load an app.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("app {app}: cannot read {path}: {source}")]
    ReadApp {
        app: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Events queued between intake and dispatch before intake waits (backpressure onto the
/// node sockets rather than unbounded memory).
const INTAKE_QUEUE: usize = 16 * 1024;

/// A running host.
pub struct Gateway {
    pub config: Config,
    pub cluster: Arc<Cluster>,
    pub ownership: Arc<Ownership>,
    pub catalog: Arc<Catalog>,
    pub conferences: Arc<Conferences>,
    pub router: Arc<Router>,
    pub runtime: Arc<Runtime>,
    /// Requests to dispatch from outside the event path (e.g. hang up an app's calls).
    pub dispatch: DispatchControl,
    /// App names held by ARI facade clients, and their event fan-out (`facade/events.rs`).
    pub external: Arc<ExternalApps>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Starts intake for every node and dispatch, then loads the configured apps. Nodes that
    /// are not up yet are waited for in the background; start-up never fails on them.
    pub async fn start(config: Config, runtime: RuntimeConfig) -> Result<Gateway, GatewayError> {
        let runtime = Arc::new(Runtime::new(runtime)?);
        let cluster = Arc::new(Cluster::from_config(&config)?);
        let ownership = Arc::new(Ownership::new());
        let catalog = Arc::new(Catalog::new());
        let conferences = Conferences::new(cluster.clone(), ownership.clone());
        let retire_catalog = catalog.clone();
        conferences.on_retire(Arc::new(move |bridge: &str| {
            for app in retire_catalog.all() {
                app.revoke_bridge(bridge);
            }
        }));
        let router = Arc::new(Router::new(
            cluster.clone(),
            ownership.clone(),
            conferences.clone(),
        ));
        let external = ExternalApps::new(catalog.clone(), cluster.clone());
        let (tx, rx) = mpsc::channel(INTAKE_QUEUE);
        let (notes_tx, mut notes_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // Replicas sharing calls: the one consuming the event queue routes them and holds
        // the conferences (replicas.rs).
        let sharing = config
            .amqp
            .as_ref()
            .filter(|amqp| amqp.share_calls)
            .map(|amqp| {
                Sharing::new(
                    &amqp.queue,
                    conferences.clone(),
                    notes_tx.clone(),
                    catalog.clone(),
                    cluster.clone(),
                    config.limits.request_timeout(),
                )
            });
        let mut dispatch = Dispatch::new(
            catalog.clone(),
            cluster.clone(),
            ownership.clone(),
            router.clone() as Arc<dyn AriBackend>,
            conferences.clone(),
            notes_tx,
            config.limits.node_grace(),
        );
        if sharing.is_some() {
            dispatch = dispatch.without_conference_notes();
        }
        let notes_conferences = conferences.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(note) = notes_rx.recv().await {
                notes_conferences.handle(note).await;
            }
        }));
        let dispatch = dispatch.with_external(external.clone());
        let control = dispatch.control();
        tasks.push(tokio::spawn(dispatch.run(rx)));
        // One subscription set per node: the wasm apps' names and the facade clients'.
        let (names, merge_task) = merged_names(catalog.watch_names(), external.watch_names());
        tasks.push(merge_task);
        let max_reconnect = config.limits.max_reconnect();
        let (declared_tx, declared) = tokio::sync::watch::channel(0);
        let (gaps_tx, gaps) = mpsc::unbounded_channel();
        for node in cluster.nodes() {
            let amqp_intake = config.amqp.is_some() && node.config.intake == Intake::Amqp;
            // Event filters apply on the websocket only; facade clients' subscriptions on
            // every node (node_filter.rs).
            tasks.push(tokio::spawn(node_filter::run_node(
                node.clone(),
                catalog.clone(),
                runtime.watch_interests(),
                external.clone(),
                !amqp_intake,
            )));
            let task = match (&config.amqp, node.config.intake) {
                (Some(amqp), Intake::Amqp) => tokio::spawn(amqp::run_node(
                    node.clone(),
                    cluster.clone(),
                    amqp.clone(),
                    amqp::NodeLinks {
                        apps: names.clone(),
                        declared: declared.clone(),
                        tx: tx.clone(),
                        gaps: gaps_tx.clone(),
                    },
                    max_reconnect,
                )),
                _ => tokio::spawn(ingress::run_node(
                    node.clone(),
                    cluster.clone(),
                    names.clone(),
                    tx.clone(),
                    max_reconnect,
                )),
            };
            tasks.push(task);
        }
        let amqp_nodes = cluster.nodes().any(|n| n.config.intake == Intake::Amqp);
        if let Some(amqp) = config.amqp.as_ref().filter(|_| amqp_nodes) {
            // Not aborted at shutdown: it ends by itself once dispatch is gone, closing its
            // broker connection on the way (so the queue moves to another replica at once).
            drop(tokio::spawn(amqp::run_broker(
                amqp.clone(),
                cluster.clone(),
                amqp::BrokerLinks {
                    apps: names.clone(),
                    tx: tx.clone(),
                    declared: declared_tx,
                    gaps,
                    sharing,
                },
                max_reconnect,
            )));
        }
        let gateway = Gateway {
            config,
            cluster,
            ownership,
            catalog,
            conferences,
            router,
            runtime,
            dispatch: control,
            external,
            tasks,
        };
        for (name, app) in gateway.config.apps.clone() {
            let wasm =
                tokio::fs::read(&app.wasm)
                    .await
                    .map_err(|source| GatewayError::ReadApp {
                        app: name.clone(),
                        path: app.wasm.display().to_string(),
                        source,
                    })?;
            gateway.load_app(&name, wasm, settings(&app)).await?;
        }
        Ok(gateway)
    }

    /// Compiles `wasm` off the event path, loads it and makes it serve new calls of `name`.
    pub async fn load_app(
        &self,
        name: &str,
        wasm: Vec<u8>,
        settings: AppSettings,
    ) -> Result<Arc<App>, RuntimeError> {
        let started = std::time::Instant::now();
        let artifact = self.runtime.compile(wasm).await?;
        let app = self.runtime.load(
            name,
            &artifact,
            settings,
            self.router.clone() as Arc<dyn AriBackend>,
        )?;
        self.catalog.activate(name, app.clone());
        info!(
            app = name,
            compile_ms = started.elapsed().as_millis() as u64,
            "app loaded"
        );
        Ok(app)
    }

    /// Stops every task; calls in progress are dropped.
    pub fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Runtime settings of a configured app.
pub fn settings(app: &AppConfig) -> AppSettings {
    AppSettings {
        max_live_calls: app.max_live_calls,
        max_memory_bytes: app.memory_mb << 20,
        callback_deadline: std::time::Duration::from_millis(app.callback_deadline_ms),
        on_fault: match app.on_fault {
            OnFault::Hangup => FaultPolicy::Hangup,
            OnFault::Continue => FaultPolicy::Continue,
        },
        ..AppSettings::default()
    }
}
