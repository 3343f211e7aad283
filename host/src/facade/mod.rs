//! The ARI facade: existing ARI clients see the whole cluster as one Asterisk.
//!
//! Many ARI apps already exist, written against ARI client libraries. The facade lets them
//! run unchanged next to the wasm apps: it serves the ARI surface on its own address
//! (`[listen] facade`) with its own credentials (`[facade] username/password`, basic auth
//! or `api_key=user:pass`, checked in constant time) and
//! - `/ari/*` (REST): each request goes to the node that owns its resource, a new resource
//!   to the least-loaded healthy node (policy in [`placement`]); the node's status,
//!   `Content-Type` and body come back untouched, so errors read exactly as Asterisk's;
//! - `/ari/events?app=…` (websocket): the events of every node for those apps, merged, each
//!   message the node's JSON as sent (`asterisk_id` intact). The host's existing per-node
//!   sockets carry them (no second connection per node): the app names join what ingress
//!   subscribes, dispatch hands their events to [`events::ExternalApps`], which keeps
//!   Asterisk's one-owner rule cluster-wide (`ApplicationReplaced`);
//! - `/ari/api-docs/*`: Asterisk 22's spec with `basePath` pointing here, for clients that
//!   generate themselves from it (e.g. Asterisk's own `ari-client` for Node.js).
//!
//! App names are one namespace: a facade client cannot take a wasm app's name (409), and the
//! app store refuses an upload under a name a facade client holds.

pub mod events;
pub mod filter;
pub mod placement;
pub mod rest;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{State, ws::rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use reqwest::Method;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::cluster::Health;
use crate::gateway::Gateway;
use events::{ExternalApps, Subscription};
use placement::Placement;

/// Why the facade could not serve.
#[derive(Debug, thiserror::Error)]
pub enum FacadeError {
    #[error("the ARI facade requires [facade] username and password")]
    NoCredentials,
    #[error("ARI facade server: {0}")]
    Serve(#[from] std::io::Error),
}

/// How long a new app name may take to be registered on every healthy node before the
/// client's websocket is accepted anyway.
const REGISTER_PATIENCE: Duration = Duration::from_secs(5);

/// The facade's shared state.
pub struct Facade {
    placement: Arc<Placement>,
    upstream: upstream::Upstream,
    external: Arc<ExternalApps>,
    basic: String,
    api_key: String,
    /// `host:port` the facade listens on (the spec's `basePath` when a request has no Host).
    address: String,
    timeouts: (Duration, Duration),
}

impl Facade {
    /// The facade for `gateway`, answering as `address` (`host:port`).
    pub fn new(gateway: &Gateway, address: &str) -> Result<Arc<Facade>, FacadeError> {
        let credentials = &gateway.config.facade;
        if credentials.username.is_empty() || credentials.password.is_empty() {
            return Err(FacadeError::NoCredentials);
        }
        let api_key = format!("{}:{}", credentials.username, credentials.password);
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &api_key)
        );
        Ok(Arc::new(Facade {
            placement: Arc::new(Placement::new(
                gateway.cluster.clone(),
                gateway.ownership.clone(),
                gateway.conferences.clone(),
                gateway.router.clone(),
            )),
            upstream: upstream::Upstream::new(
                &gateway.cluster,
                gateway.config.limits.connect_timeout(),
                gateway.config.limits.request_timeout(),
            ),
            external: gateway.external.clone(),
            basic,
            api_key,
            address: address.to_string(),
            timeouts: (
                gateway.config.limits.connect_timeout(),
                gateway.config.limits.request_timeout(),
            ),
        }))
    }

    /// The same facade with its own upstream pools, for one serving thread: connections
    /// then live on the thread that uses them.
    fn for_thread(&self) -> Arc<Facade> {
        Arc::new(Facade {
            placement: self.placement.clone(),
            upstream: upstream::Upstream::new(
                self.placement.cluster(),
                self.timeouts.0,
                self.timeouts.1,
            ),
            external: self.external.clone(),
            basic: self.basic.clone(),
            api_key: self.api_key.clone(),
            address: self.address.clone(),
            timeouts: self.timeouts,
        })
    }

    /// Basic auth, else `api_key=user:pass` in the query.
    fn authorized(&self, headers: &HeaderMap, query: &str) -> bool {
        if let Some(given) = headers.get(header::AUTHORIZATION) {
            return bool::from(given.as_bytes().trim_ascii().ct_eq(self.basic.as_bytes()));
        }
        if query.contains("api_key") {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_str(query).unwrap_or_default();
            if let Some((_, key)) = pairs.iter().find(|(k, _)| k == "api_key") {
                return bool::from(key.as_bytes().ct_eq(self.api_key.as_bytes()));
            }
        }
        false
    }

    /// Waits until every healthy node has `apps` registered (Asterisk creates the app when
    /// the socket connects; a client may originate into it right after).
    async fn wait_registered(&self, apps: &[String]) {
        let deadline = tokio::time::Instant::now() + REGISTER_PATIENCE;
        // Nodes not yet connected count too: with no app before this one, ingress had
        // nothing to subscribe and only now connects them.
        let nodes = self
            .placement
            .cluster()
            .nodes()
            .filter(|n| matches!(n.health(), Health::Up | Health::Starting));
        for node in nodes {
            for app in apps {
                let path = format!("/applications/{app}");
                loop {
                    if node.is_up()
                        && matches!(node.client.send(Method::GET, &path, &[], None).await, Ok(r) if r.status == 200)
                    {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        warn!(node = %node.name, app, "app not registered on the node in time");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// What Asterisk answers without valid credentials.
fn unauthorized() -> Response {
    let mut response = rest::message(StatusCode::UNAUTHORIZED, "Authentication required");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Asterisk REST Interface\""),
    );
    response
}

/// The facade's HTTP routes.
pub fn routes(facade: Arc<Facade>) -> axum::Router {
    axum::Router::new()
        .route("/ari/events", get(events_socket))
        .route("/ari/api-docs/{file}", get(rest::api_docs))
        .route("/ari/{*path}", any(rest::proxy))
        .with_state(facade)
}

/// Serves the facade on `listener` until the server fails or this future is dropped.
///
/// Like nginx's worker processes, the facade runs one single-threaded event loop per core
/// (threads `ari-facade-N`), all accepting on the one listening socket, each with its own
/// upstream pools: a proxied request is then handled start to end on one thread, with no
/// hand-off between threads. Shared state (ownership, the facade's index, external apps)
/// is behind short synchronous locks, never held across an await.
pub async fn serve(
    listener: tokio::net::TcpListener,
    facade: Arc<Facade>,
) -> Result<(), FacadeError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let listener = listener.into_std()?;
    // Dropped with this future: every serving thread then stops.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..threads {
        let listener = listener.try_clone()?;
        let facade = facade.for_thread();
        let mut stopped = stopped.clone();
        let failed_tx = failed_tx.clone();
        std::thread::Builder::new()
            .name(format!("ari-facade-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            axum::serve(listener, routes(facade))
                                .with_graceful_shutdown(async move {
                                    let _ = stopped.changed().await;
                                })
                                .await
                        })
                    });
                let _ = failed_tx.send(result);
            })?;
    }
    drop(failed_tx);
    info!(address = %facade.address, threads, "ARI facade listening");
    let result = failed.recv().await.unwrap_or(Ok(()));
    drop(stop);
    result?;
    Ok(())
}

/// `/ari/events?app=a,b`: takes the apps (newest client wins, as on Asterisk) and streams
/// their events from every node.
async fn events_socket(
    State(facade): State<Arc<Facade>>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = uri.query().unwrap_or("");
    if !facade.authorized(&headers, query) {
        return unauthorized();
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let apps: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "app")
        .flat_map(|(_, v)| v.split(','))
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if apps.is_empty() {
        return rest::message(StatusCode::BAD_REQUEST, "Missing parameter app");
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let (subscription, fresh) = match facade.external.claim(&apps) {
        Ok(claimed) => claimed,
        Err(e) => return rest::message(StatusCode::CONFLICT, &e.to_string()),
    };
    if !fresh.is_empty() {
        facade.wait_registered(&fresh).await;
    }
    info!(apps = ?subscription.apps(), "facade client connected");
    ws.on_upgrade(move |socket| pump(socket, subscription))
}

/// Forwards the subscription's events until the client goes. A replaced client stays open
/// and receives nothing, as on Asterisk.
async fn pump(mut socket: WebSocket, mut subscription: Subscription) {
    let mut holding = true;
    loop {
        tokio::select! {
            event = subscription.events.recv(), if holding => match event {
                Some(raw) => {
                    // The node's frame, passed on without a copy.
                    let Ok(text) = axum::extract::ws::Utf8Bytes::try_from(bytes::Bytes::from(raw))
                    else {
                        continue;
                    };
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                None => holding = false,
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    info!(apps = ?subscription.apps(), "facade client gone");
}
