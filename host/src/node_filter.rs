//! Which events each node sends for each app: ARI's per-application event filter
//! (`PUT /applications/{app}/eventFilter`, Asterisk 22).
//!
//! Asterisk sends an app every event of its channels and bridges. Most of a conference
//! call's twenty-odd events are of types that neither the host acts on nor the app asked for
//! (a caller joining a conference of N sets `BRIDGEPEER` on all N members, hanging up sets
//! the RTP statistics variables, ...). An app that declares what it wants through `on-event`
//! (WIT `interest`) lets the node leave the rest out: the node does less, the network
//! carries less, and the host parses less — the host's intake was the largest share of its
//! CPU per call.
//!
//! The filter of an app name is an allowed list: the host's own kinds
//! ([`HOST_EVENTS`], and [`REST_RESPONSE`] for requests sent on the socket) plus every type
//! declared by the app's versions in use (the active one and those with calls in progress). One version that wants every type, or whose
//! declaration is not known yet (it is asked in the version's first call), leaves the app
//! unfiltered: a hot swap widens the filter at activation and narrows it once the new
//! version has been asked. The host's trunk-leg app gets the host's kinds only. A name an ARI
//! facade client holds gets the filter that client set, widened by the host's kinds (the
//! facade forwards it to every node and remembers it; see `facade::filter`). Filters are set
//! on each node after every (re)connect, since a restarted node has forgotten them (and a
//! facade client, whose own socket stays up, cannot know to set its filter again), again
//! whenever the apps, their declarations or the clients' filters change, and cleared for a
//! name the host drops.
//!
//! Filters are set on websocket nodes only: Asterisk checks the filter when it writes an
//! event to an ARI websocket, not on the AMQP path. Dispatch filters again by the app's
//! declaration anyway, so a node that ignores the filter (an older Asterisk answers 404 to
//! the request) costs CPU, never correctness.
//!
//! The other half of what a node sends an app is its subscriptions. A facade client's
//! `endpoint:` and `deviceState:` subscriptions (`POST /applications/{app}/subscription`)
//! outlive calls, so they are kept like its filter and checked on every node after each
//! (re)connect and each change (a node may have missed the facade's forward: it was still
//! connecting, or the request to it failed), subscribing where the node lacks one. What the
//! node has is read first (`GET /applications/{app}`): a node that only reconnected keeps its
//! subscriptions, and Asterisk counts endpoint subscriptions, so sending one again would take
//! the client one more unsubscribe to end it. A restarted node is subscribed as many times
//! as the client subscribed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::backend::AriError;
use crate::catalog::Catalog;
use crate::cluster::{Health, Node};
use crate::conference::TRUNK_APP;
use crate::event::{HOST_EVENTS, REST_RESPONSE};
use crate::facade::events::{ClientSettings, ExternalApps};
use crate::runtime::{App, EventInterest};

/// How soon a filter the node refused (typically: the app is not registered there yet, the
/// event socket is moving to a new app set) is tried again; doubled after each refusal up to
/// `MAX_RETRY`, so a node that never accepts (an Asterisk without event filters) is asked
/// rarely.
const RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What a node is told to send for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeFilter {
    /// Every event (no filter).
    All,
    /// Only events of these types.
    Allowed(BTreeSet<String>),
    /// What an ARI facade client set for an app it holds, widened by the host's kinds: the
    /// request body that sets it.
    Client(serde_json::Value),
}

impl NodeFilter {
    /// The filter an app name needs for `versions` (see the module docs).
    pub fn for_versions(versions: &[Arc<App>]) -> NodeFilter {
        // Answers to requests on the event socket pass the filter of its first app as events
        // do: every filter lets them through.
        let mut allowed: BTreeSet<String> = HOST_EVENTS
            .iter()
            .chain([&REST_RESPONSE])
            .map(|k| k.to_string())
            .collect();
        for version in versions {
            match version.event_interest() {
                Some(EventInterest::Only(types)) => {
                    allowed.extend(types.iter().map(|t| t.to_string()))
                }
                Some(EventInterest::All) | None => return NodeFilter::All,
            }
        }
        NodeFilter::Allowed(allowed)
    }

    /// The request body: both lists are set, so the node's filter is exactly this one.
    pub fn body(&self) -> serde_json::Value {
        let allowed: Vec<serde_json::Value> = match self {
            NodeFilter::All => Vec::new(),
            NodeFilter::Allowed(types) => types.iter().map(|t| json!({ "type": t })).collect(),
            NodeFilter::Client(body) => return body.clone(),
        };
        json!({ "allowed": allowed, "disallowed": [] })
    }
}

/// The filter every subscribed app name needs now: the wasm apps', the trunk app's, and those
/// facade clients set on the names they hold (`clients`). Names with no version in use
/// (nothing loaded yet) and held names with no filter set are left alone.
pub fn desired(
    catalog: &Catalog,
    clients: &BTreeMap<String, ClientSettings>,
) -> BTreeMap<String, NodeFilter> {
    let mut filters: BTreeMap<String, NodeFilter> = catalog
        .names()
        .into_iter()
        .filter_map(|name| {
            let versions = catalog.versions(&name);
            (!versions.is_empty()).then(|| (name, NodeFilter::for_versions(&versions)))
        })
        .collect();
    filters.insert(TRUNK_APP.to_string(), NodeFilter::for_versions(&[]));
    for (name, settings) in clients {
        if let Some(body) = &settings.filter {
            filters
                .entry(name.clone())
                .or_insert_with(|| NodeFilter::Client(body.clone()));
        }
    }
    filters
}

/// Keeps one node's filters as [`desired`] says (websocket nodes: `sets_filters`), and the
/// facade clients' subscriptions there, until the host shuts down.
pub async fn run_node(
    node: Arc<Node>,
    catalog: Arc<Catalog>,
    mut interests: watch::Receiver<u64>,
    external: Arc<ExternalApps>,
    sets_filters: bool,
) {
    let mut clients = external.watch_settings();
    let mut health = node.watch_health();
    let mut changes = catalog.watch_changes();
    loop {
        while *health.borrow_and_update() != Health::Up {
            if health.changed().await.is_err() {
                return;
            }
        }
        // Set on this connection of the node (a reconnect may be a restarted node).
        let mut applied: HashMap<String, NodeFilter> = HashMap::new();
        // Held names' subscriptions as last checked on this connection. A change is checked
        // again (the facade forwards it to every node, but a node may have missed it: it was
        // connecting, or the request to it failed).
        let mut checked: HashMap<String, BTreeMap<String, u32>> = HashMap::new();
        let mut retry_in = RETRY;
        loop {
            let settings = clients.borrow_and_update().clone();
            let want = if sets_filters {
                desired(&catalog, &settings)
            } else {
                BTreeMap::new()
            };
            // A name no longer ours: clear its filter, since on Asterisk the filter belongs to
            // the app object, which can outlive our subscription and be taken by another
            // client (a facade client, say). The node may have dropped the app already.
            let gone: Vec<String> = applied
                .keys()
                .filter(|name| !want.contains_key(*name))
                .cloned()
                .collect();
            for name in gone {
                applied.remove(&name);
                let path = format!("/applications/{name}/eventFilter");
                let _ = node
                    .client
                    .call(Method::PUT, &path, &[], Some(NodeFilter::All.body()))
                    .await;
            }
            let mut refused = false;
            for (name, filter) in &want {
                if applied.get(name) == Some(filter) {
                    continue;
                }
                let path = format!("/applications/{name}/eventFilter");
                match node
                    .client
                    .call(Method::PUT, &path, &[], Some(filter.body()))
                    .await
                {
                    Ok(_) => {
                        info!(node = %node.name, app = %name, filter = ?filter, "event filter set");
                        applied.insert(name.clone(), filter.clone());
                    }
                    Err(e) => {
                        debug!(node = %node.name, app = %name, error = %e, "event filter not set yet");
                        refused = true;
                    }
                }
            }
            // Facade clients' subscriptions, where this connection of the node lacks them.
            checked.retain(|name, _| settings.contains_key(name));
            for (name, client) in &settings {
                if checked.get(name) == Some(&client.sources) {
                    continue;
                }
                match subscribe_missing(&node, &external, name).await {
                    Ok(sources) => {
                        checked.insert(name.clone(), sources);
                    }
                    Err(e) => {
                        debug!(node = %node.name, app = %name, error = %e, "subscriptions not set yet");
                        refused = true;
                    }
                }
            }
            let retry = async {
                if refused {
                    tokio::time::sleep(retry_in).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *health.borrow_and_update() != Health::Up {
                        break;
                    }
                    // Reconnected: set everything again.
                    applied.clear();
                    checked.clear();
                    retry_in = RETRY;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    changes.borrow_and_update();
                    retry_in = RETRY;
                }
                changed = interests.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    interests.borrow_and_update();
                    retry_in = RETRY;
                }
                changed = clients.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    retry_in = RETRY;
                }
                _ = retry => retry_in = (retry_in * 2).min(MAX_RETRY),
            }
        }
    }
}

/// Subscribes `app` on `node` to those of its client's sources the node lacks (a restarted
/// node has none, a reconnected one may have them all), as many times as the client did
/// (Asterisk counts endpoint subscriptions); one the node has is not sent again. A source
/// the node refuses (422: an endpoint configured on other nodes only; 400) is left out until
/// the sources change or the node reconnects; anything else is an error, to retry. Takes
/// the name's settings lock, across the node's requests: a change the client makes
/// meanwhile waits, so a source it just removed is never set again. Returns the sources it
/// checked.
async fn subscribe_missing(
    node: &Node,
    external: &ExternalApps,
    app: &str,
) -> Result<BTreeMap<String, u32>, AriError> {
    let lock = external.settings_lock(app);
    let _turn = lock.lock().await;
    let sources = external
        .watch_settings()
        .borrow()
        .get(app)
        .map(|s| s.sources.clone())
        .unwrap_or_default();
    if sources.is_empty() {
        return Ok(sources);
    }
    let path = format!("/applications/{app}");
    let application = node.client.call(Method::GET, &path, &[], None).await?;
    let application: serde_json::Value = serde_json::from_str(&application.body)
        .map_err(|e| AriError::Failed(format!("GET {path}: {e}")))?;
    let path = format!("{path}/subscription");
    for (source, times) in sources
        .iter()
        .filter(|(s, _)| !ClientSettings::listed(&application, s))
    {
        let query = [("eventSource".to_string(), source.clone())];
        for _ in 0..*times {
            let response = node.client.send(Method::POST, &path, &query, None).await?;
            match response.status {
                200..=299 => {
                    info!(node = %node.name, %app, %source, "facade client's subscription set again")
                }
                400 | 422 => {
                    debug!(node = %node.name, %app, %source, status = response.status, "subscription not taken by this node");
                    break;
                }
                status => {
                    return Err(AriError::from_status(status, response.body));
                }
            }
        }
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_or_unfiltered_versions_leave_the_node_unfiltered() {
        assert_eq!(
            NodeFilter::All.body(),
            json!({ "allowed": [], "disallowed": [] })
        );
        let trunk = NodeFilter::for_versions(&[]);
        let NodeFilter::Allowed(types) = &trunk else {
            panic!("the trunk app is filtered: {trunk:?}");
        };
        assert!(types.contains("StasisStart") && types.contains("ChannelLeftBridge"));
        assert!(!types.contains("ChannelVarset"));
        assert!(types.contains("RESTResponse"), "answers on the socket pass");
        assert_eq!(
            trunk.body()["allowed"][0],
            json!({ "type": "ApplicationReplaced" })
        );
    }
}
