//! The control API over HTTP, for tests and tools that are not Rust (see `README.md`).
//!
//! Two mounts of the same operations:
//! - on each node's own port under `/_sim/...` (no auth, not in the request log);
//! - on the cluster control server under `/_sim/nodes/{node}/...`, which also offers `kill`
//!   and `revive` — a killed node refuses connections, so it cannot be revived through itself.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::cluster::ClusterShared;
use crate::dialplan::Route;
use crate::error::SimError;
use crate::node::{InboundCall, NodeHandle, NodeInner};

#[derive(Deserialize, Default)]
#[serde(default)]
struct DtmfBody {
    digits: String,
    interval_ms: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HangupBody {
    cause: Option<u32>,
}

fn err(e: SimError) -> Response {
    let status = match e {
        SimError::UnknownNode(_) | SimError::ChannelNotFound(_) | SimError::NoRoute { .. } => {
            StatusCode::NOT_FOUND
        }
        SimError::NodeDown(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

fn no_content(r: Result<(), SimError>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => err(e),
    }
}

// ----- operations shared by both mounts -----

fn op_call(n: &NodeHandle, call: InboundCall) -> Response {
    match n.inject_call(call) {
        Ok(id) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "channel_id": id })),
        )
            .into_response(),
        Err(e) => err(e),
    }
}

fn op_info(n: &NodeHandle) -> serde_json::Value {
    serde_json::json!({
        "name": n.name(),
        "asterisk_id": n.asterisk_id(),
        "ari_url": n.ari_url(),
        "control_url": n.control_url(),
        "alive": n.is_alive(),
        "port": n.port(),
    })
}

// ----- node mount: /_sim/... on the node's port -----

pub(crate) fn node_router() -> Router<Arc<NodeInner>> {
    Router::new()
        .route(
            "/_sim",
            get(|State(n): State<Arc<NodeInner>>| async move { Json(op_info(&h(n))) }),
        )
        .route(
            "/_sim/calls",
            post(
                |State(n): State<Arc<NodeInner>>, Json(c): Json<InboundCall>| async move {
                    op_call(&h(n), c)
                },
            ),
        )
        .route(
            "/_sim/channels",
            get(|State(n): State<Arc<NodeInner>>| async move { Json(h(n).channels()) }),
        )
        .route(
            "/_sim/bridges",
            get(|State(n): State<Arc<NodeInner>>| async move { Json(h(n).bridges()) }),
        )
        .route(
            "/_sim/channels/{id}/dtmf",
            post(
                |State(n): State<Arc<NodeInner>>,
                 Path(id): Path<String>,
                 Json(b): Json<DtmfBody>| async move {
                    no_content(h(n).press_dtmf_spaced(&id, &b.digits, b.interval_ms))
                },
            ),
        )
        .route(
            "/_sim/channels/{id}/hangup",
            post(
                |State(n): State<Arc<NodeInner>>,
                 Path(id): Path<String>,
                 b: Option<Json<HangupBody>>| async move {
                    no_content(h(n).hangup_far_end(&id, b.and_then(|b| b.0.cause)))
                },
            ),
        )
        .route(
            "/_sim/requests",
            get(|State(n): State<Arc<NodeInner>>| async move { Json(h(n).request_log()) }).delete(
                |State(n): State<Arc<NodeInner>>| async move {
                    h(n).clear_log();
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_sim/amqp",
            get(|State(n): State<Arc<NodeInner>>| async move { Json(h(n).amqp_status()) }),
        )
        .route(
            "/_sim/dialplan/{context}/{exten}",
            put(
                |State(n): State<Arc<NodeInner>>,
                 Path((c, e)): Path<(String, String)>,
                 Json(r): Json<Route>| async move {
                    h(n).set_route(&c, &e, r);
                    StatusCode::NO_CONTENT
                },
            ),
        )
}

fn h(inner: Arc<NodeInner>) -> NodeHandle {
    NodeHandle { inner }
}

// ----- cluster mount: /_sim/nodes/{node}/... -----

type Cs = Arc<ClusterShared>;

fn node_of(c: &Cs, name: &str) -> Result<NodeHandle, Box<Response>> {
    c.by_name
        .get(name)
        .map(|inner| NodeHandle {
            inner: inner.clone(),
        })
        .ok_or_else(|| Box::new(err(SimError::UnknownNode(name.to_string()))))
}

fn cluster_router(shared: Cs) -> Router {
    Router::new()
        .route(
            "/_sim/nodes",
            get(|State(c): State<Cs>| async move {
                let v: Vec<_> = c
                    .nodes
                    .iter()
                    .map(|n| op_info(&NodeHandle { inner: n.clone() }))
                    .collect();
                Json(v)
            }),
        )
        .route(
            "/_sim/nodes/{node}",
            get(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => Json(op_info(&n)).into_response(),
                    Err(r) => *r,
                }
            }),
        )
        .route(
            "/_sim/nodes/{node}/calls",
            post(
                |State(c): State<Cs>, Path(node): Path<String>, Json(call): Json<InboundCall>| async move {
                    match node_of(&c, &node) {
                        Ok(n) => op_call(&n, call),
                        Err(r) => *r,
                    }
                },
            ),
        )
        .route(
            "/_sim/nodes/{node}/channels",
            get(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => Json(n.channels()).into_response(),
                    Err(r) => *r,
                }
            }),
        )
        .route(
            "/_sim/nodes/{node}/bridges",
            get(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => Json(n.bridges()).into_response(),
                    Err(r) => *r,
                }
            }),
        )
        .route(
            "/_sim/nodes/{node}/channels/{id}/dtmf",
            post(
                |State(c): State<Cs>, Path((node, id)): Path<(String, String)>, Json(b): Json<DtmfBody>| async move {
                    match node_of(&c, &node) {
                        Ok(n) => no_content(n.press_dtmf_spaced(&id, &b.digits, b.interval_ms)),
                        Err(r) => *r,
                    }
                },
            ),
        )
        .route(
            "/_sim/nodes/{node}/channels/{id}/hangup",
            post(
                |State(c): State<Cs>, Path((node, id)): Path<(String, String)>, b: Option<Json<HangupBody>>| async move {
                    match node_of(&c, &node) {
                        Ok(n) => no_content(n.hangup_far_end(&id, b.and_then(|b| b.0.cause))),
                        Err(r) => *r,
                    }
                },
            ),
        )
        .route(
            "/_sim/nodes/{node}/amqp",
            get(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => Json(n.amqp_status()).into_response(),
                    Err(r) => *r,
                }
            }),
        )
        .route(
            "/_sim/nodes/{node}/kill",
            post(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => {
                        n.kill().await;
                        StatusCode::NO_CONTENT.into_response()
                    }
                    Err(r) => *r,
                }
            }),
        )
        .route(
            "/_sim/nodes/{node}/revive",
            post(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => no_content(n.revive().await),
                    Err(r) => *r,
                }
            }),
        )
        .route(
            "/_sim/nodes/{node}/requests",
            get(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => Json(n.request_log()).into_response(),
                    Err(r) => *r,
                }
            })
            .delete(|State(c): State<Cs>, Path(node): Path<String>| async move {
                match node_of(&c, &node) {
                    Ok(n) => {
                        n.clear_log();
                        StatusCode::NO_CONTENT.into_response()
                    }
                    Err(r) => *r,
                }
            }),
        )
        .route(
            "/_sim/nodes/{node}/dialplan/{context}/{exten}",
            put(
                |State(c): State<Cs>,
                 Path((node, ctx, exten)): Path<(String, String, String)>,
                 Json(r): Json<Route>| async move {
                    match node_of(&c, &node) {
                        Ok(n) => {
                            n.set_route(&ctx, &exten, r);
                            StatusCode::NO_CONTENT.into_response()
                        }
                        Err(resp) => *resp,
                    }
                },
            ),
        )
        .with_state(shared)
}

/// The cluster-level control server.
pub(crate) struct ControlServer {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    pub(crate) async fn start(shared: Cs) -> Result<Self, SimError> {
        let addr = format!("{}:{}", shared.cfg.bind, shared.cfg.control_port);
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = oneshot::channel::<()>();
        let router = cluster_router(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(ControlServer {
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/_sim", self.addr)
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), &mut self.task).await;
        self.task.abort();
    }
}
