//! External apps: who holds which app name, and the raw events they receive.
//!
//! Asterisk has one owner per app name: the newest websocket for an app takes it and the
//! previous one gets `ApplicationReplaced` and stays open, receiving nothing. The facade
//! keeps the same rule cluster-wide in [`ExternalApps`]: one holder per name, across all
//! nodes. The host's own per-node sockets (ingress) subscribe the held names next to the
//! wasm apps' (one subscription mechanism: the gateway merges this registry's names with the
//! catalog's), and dispatch hands every event of a held app to [`ExternalApps::deliver`],
//! which queues the node's JSON as received (`asterisk_id` intact) to the holder.
//!
//! Names are one namespace: a name a wasm app serves cannot be held by an external client,
//! and the app store refuses uploads under a held name ([`ExternalApps::holds`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::filter::{ClientFilter, Entity};
use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::conference::TRUNK_APP;
use crate::event::Event;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Events queued per facade client before new ones are dropped (a client that stopped
/// reading must not grow the host's memory without bound).
const CLIENT_QUEUE: usize = 64 * 1024;

/// A facade client asked for a name it cannot have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("app name {0} is served by a wasm app on this host")]
    WasmApp(String),
    #[error("app name {0} is reserved by the host")]
    Reserved(String),
    #[error("invalid app name {0:?}")]
    InvalidName(String),
}

struct Holder {
    client: u64,
    tx: mpsc::Sender<Utf8Bytes>,
    /// The event filter the client set on the name (the nodes hold it widened, see
    /// [`super::filter`]). It belongs to the name, as on Asterisk: a takeover keeps it.
    filter: ClientFilter,
}

/// The registry of external app names; see the module docs.
pub struct ExternalApps {
    catalog: Arc<Catalog>,
    cluster: Arc<Cluster>,
    holders: RwLock<HashMap<String, Holder>>,
    names: watch::Sender<Vec<String>>,
    /// What the nodes must keep for held names, which `node_filter` sets again on a node
    /// that (re)connects: the client's own socket to the facade stays up while a node
    /// restarts, so the client never knows to.
    settings: watch::Sender<BTreeMap<String, ClientSettings>>,
    /// One change to a held name's settings at a time (the facade forwarding a client's
    /// change and remembering it; node_filter setting them again on a node).
    settings_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_client: AtomicU64,
}

impl std::fmt::Debug for ExternalApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalApps")
            .field("names", &*self.names.borrow())
            .finish()
    }
}

/// What a facade client set on a name it holds that every node must keep, across restarts
/// and for nodes that connect later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSettings {
    /// The event filter the nodes hold (the client's, widened by the host's kinds), once the
    /// client set one.
    pub filter: Option<serde_json::Value>,
    /// Its `endpoint:` and `deviceState:` subscriptions (`POST /applications/{app}/
    /// subscription`), each with how many unsubscribes it takes to end it: Asterisk counts
    /// endpoint subscriptions (`++forwards->interested`), not device ones (always 1).
    /// Channel and bridge ones are not kept: those live and die with their node's channels
    /// and bridges.
    pub sources: BTreeMap<String, u32>,
}

impl ClientSettings {
    /// An event source kept for the nodes (see [`ClientSettings::sources`]). Not one with an
    /// empty id ("every endpoint"), which Asterisk lists under an internal name.
    pub fn keeps(source: &str) -> bool {
        matches!(source.split_once(':'), Some(("endpoint" | "deviceState", id)) if !id.is_empty())
    }

    /// Whether Asterisk counts subscriptions to `source`.
    pub fn counted(source: &str) -> bool {
        source.starts_with("endpoint:")
    }

    /// Whether an Application object (`GET /applications/{app}`, or the answer to a change)
    /// lists `source` among its endpoint or device subscriptions.
    pub fn listed(application: &serde_json::Value, source: &str) -> bool {
        let (list, id) = match source.split_once(':') {
            Some(("endpoint", id)) => ("endpoint_ids", id),
            Some(("deviceState", id)) => ("device_names", id),
            _ => return false,
        };
        application[list]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|v| v == id))
    }
}

/// One facade client's hold on its app names. Dropping it releases the names it still holds
/// (as closing the owning socket removes the app on Asterisk); names taken over by a newer
/// client stay with that client.
pub struct Subscription {
    registry: Arc<ExternalApps>,
    client: u64,
    apps: Vec<String>,
    /// The raw events of the held apps, then nothing once every name is replaced.
    pub events: mpsc::Receiver<Utf8Bytes>,
}

impl Subscription {
    pub fn apps(&self) -> &[String] {
        &self.apps
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.release(self.client, &self.apps);
    }
}

impl ExternalApps {
    pub fn new(catalog: Arc<Catalog>, cluster: Arc<Cluster>) -> Arc<ExternalApps> {
        Arc::new(ExternalApps {
            catalog,
            cluster,
            holders: RwLock::new(HashMap::new()),
            names: watch::channel(Vec::new()).0,
            settings: watch::channel(BTreeMap::new()).0,
            settings_locks: parking_lot::Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
        })
    }

    /// The held names, as they change (merged into what ingress subscribes on every node).
    pub fn watch_names(&self) -> watch::Receiver<Vec<String>> {
        self.names.subscribe()
    }

    /// Whether an external client holds `name` (the app store refuses such uploads).
    pub fn holds(&self, name: &str) -> bool {
        self.holders.read().contains_key(name)
    }

    /// The event filter a client set on `app`, if a client holds `app`.
    pub fn client_filter(&self, app: &str) -> Option<ClientFilter> {
        self.holders.read().get(app).map(|h| h.filter.clone())
    }

    /// The lock that orders changes to the settings of `app` (see [`ClientSettings`]):
    /// held across forwarding a change to the nodes and remembering it.
    pub fn settings_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.settings_locks
            .lock()
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    /// Remembers that a node took a client's `PUT eventFilter` with `entity` on `app`, if a
    /// client holds `app`: returns the client's filter now.
    pub fn remember_filter(&self, app: &str, entity: &Entity) -> Option<ClientFilter> {
        // Under the holders' lock, so a release cannot slip in between and leave a filter for
        // a name nobody holds.
        let mut holders = self.holders.write();
        let holder = holders.get_mut(app)?;
        holder.filter = holder.filter.after(entity);
        let for_nodes = Some(holder.filter.for_nodes());
        self.settings.send_if_modified(|settings| {
            let entry = settings.entry(app.to_string()).or_default();
            std::mem::replace(&mut entry.filter, for_nodes.clone()) != for_nodes
        });
        Some(holder.filter.clone())
    }

    /// Remembers what a client's subscription change on `app` left, if a client holds `app`.
    /// `application` is a node's Application object after the change, and `taken` whether
    /// that node took the whole request (else it refused it part-way). Each of `sources` the
    /// nodes must keep ([`ClientSettings::keeps`]) is kept while `application` lists it; a
    /// request taken whole counts an endpoint subscription up or down as Asterisk does.
    pub fn remember_subscription(
        &self,
        app: &str,
        sources: &[String],
        subscribe: bool,
        taken: bool,
        application: &serde_json::Value,
    ) {
        let holders = self.holders.read();
        if !holders.contains_key(app) {
            return;
        }
        self.settings.send_if_modified(|settings| {
            let entry = settings.entry(app.to_string()).or_default();
            let before = entry.sources.clone();
            for source in sources.iter().filter(|s| ClientSettings::keeps(s)) {
                if !ClientSettings::listed(application, source) {
                    entry.sources.remove(source);
                    continue;
                }
                let count = entry.sources.entry(source.clone()).or_insert(0);
                *count = match (taken && ClientSettings::counted(source), subscribe) {
                    (true, true) => *count + 1,
                    // Still listed: the node counted more than the host knew of.
                    (true, false) => count.saturating_sub(1).max(1),
                    (false, _) => (*count).max(1),
                };
            }
            entry.sources != before
        });
    }

    /// What the nodes must keep for the names clients hold, as it changes.
    pub fn watch_settings(&self) -> watch::Receiver<BTreeMap<String, ClientSettings>> {
        self.settings.subscribe()
    }

    /// Why `name` is the host's, not a facade client's: a wasm app's (or one draining), or the
    /// host's own trunk-leg app. Clients may neither hold such a name nor change its event
    /// filter or subscriptions, which the host's own calls depend on.
    pub fn host_owned(&self, name: &str) -> Option<ClaimError> {
        if name == TRUNK_APP {
            return Some(ClaimError::Reserved(name.to_string()));
        }
        (self.catalog.get(name).is_some() || self.catalog.is_draining(name))
            .then(|| ClaimError::WasmApp(name.to_string()))
    }

    /// Takes `apps` for a new client. A previous holder of a name gets `ApplicationReplaced`
    /// for it and no more of its events. Refused, taking nothing, if any name belongs to a
    /// wasm app or to the host. Returns the subscription and the names that are new to the
    /// cluster (the nodes must register them before the client is told it is connected).
    pub fn claim(
        self: &Arc<Self>,
        apps: &[String],
    ) -> Result<(Subscription, Vec<String>), ClaimError> {
        for name in apps {
            // `,` separates names in `app=`; `/ ? # %` would change the paths the host sets
            // the name's event filter with.
            if name.is_empty()
                || name.contains(|c: char| {
                    matches!(c, ',' | '/' | '?' | '#' | '%') || c.is_whitespace()
                })
            {
                return Err(ClaimError::InvalidName(name.clone()));
            }
            if let Some(e) = self.host_owned(name) {
                return Err(e);
            }
        }
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let mut fresh = Vec::new();
        let mut replaced = Vec::new();
        {
            let mut holders = self.holders.write();
            for name in apps {
                let filter = holders
                    .get(name)
                    .map(|old| old.filter.clone())
                    .unwrap_or_default();
                match holders.insert(
                    name.clone(),
                    Holder {
                        client,
                        tx: tx.clone(),
                        filter,
                    },
                ) {
                    // Asterisk filters this event too (by the name's filter, which stays).
                    Some(old) if old.filter.allows("ApplicationReplaced") => {
                        replaced.push((name.clone(), old.tx))
                    }
                    Some(_) => {}
                    None => fresh.push(name.clone()),
                }
            }
            if !fresh.is_empty() {
                self.publish(&holders);
            }
        }
        for (name, old) in replaced {
            let _ = old.try_send(self.application_replaced(&name).into());
        }
        Ok((
            Subscription {
                registry: self.clone(),
                client,
                apps: apps.to_vec(),
                events: rx,
            },
            fresh,
        ))
    }

    /// Queues `event` to the holder of its app. Returns whether the app is external (then
    /// the event is not a wasm app's business).
    pub fn deliver(&self, event: &Event) -> bool {
        if event.application.is_empty() {
            return false;
        }
        let holders = self.holders.read();
        let Some(holder) = holders.get(&event.application) else {
            return false;
        };
        // The nodes send the host's kinds whatever the client's filter says.
        if !holder.filter.allows(&event.kind_name) {
            return true;
        }
        // A copy: the frame's bytes share the read buffer they were cut from, which a queue
        // of a slow client would keep alive whole, one buffer per queued event.
        let text = Utf8Bytes::from(event.raw.as_str());
        if let Err(mpsc::error::TrySendError::Full(_)) = holder.tx.try_send(text) {
            warn!(app = %event.application, kind = %event.kind_name, "facade client not reading: event dropped");
        }
        true
    }

    fn release(&self, client: u64, apps: &[String]) {
        let mut holders = self.holders.write();
        let before = holders.len();
        for name in apps {
            if holders.get(name).is_some_and(|h| h.client == client) {
                holders.remove(name);
            }
        }
        if holders.len() != before {
            self.publish(&holders);
            // A released name's settings are forgotten (its filter cleared on the nodes by
            // node_filter).
            // (Not a lock in use: a new holder's change must wait for one still running.)
            self.settings_locks
                .lock()
                .retain(|name, lock| holders.contains_key(name) || Arc::strong_count(lock) > 1);
            self.settings.send_if_modified(|settings| {
                let before = settings.len();
                settings.retain(|name, _| holders.contains_key(name));
                settings.len() != before
            });
        }
    }

    fn publish(&self, holders: &HashMap<String, Holder>) {
        let mut names: Vec<String> = holders.keys().cloned().collect();
        names.sort();
        self.names.send_replace(names);
    }

    /// The event Asterisk sends the replaced socket (see `ari-traces/application_replaced`).
    fn application_replaced(&self, app: &str) -> String {
        let asterisk_id = self
            .cluster
            .nodes()
            .find_map(|n| n.asterisk_id())
            .unwrap_or_default();
        serde_json::json!({
            "type": "ApplicationReplaced",
            "timestamp": stasis_sim::time::now_ts(),
            "application": app,
            "asterisk_id": asterisk_id,
        })
        .to_string()
    }
}

/// Merges the wasm apps' names and the external apps' names into the one set ingress
/// subscribes on every node. Runs until both sources close.
pub fn merged_names(
    mut wasm: watch::Receiver<Vec<String>>,
    mut external: watch::Receiver<Vec<String>>,
) -> (watch::Receiver<Vec<String>>, tokio::task::JoinHandle<()>) {
    let union = |a: &[String], b: &[String]| {
        let mut all: Vec<String> = a.iter().chain(b).cloned().collect();
        all.sort();
        all.dedup();
        all
    };
    let (tx, rx) = watch::channel(union(
        &wasm.borrow_and_update(),
        &external.borrow_and_update(),
    ));
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = wasm.changed() => if changed.is_err() { break },
                changed = external.changed() => if changed.is_err() { break },
            }
            let all = union(&wasm.borrow_and_update(), &external.borrow_and_update());
            tx.send_if_modified(|current| {
                if *current == all {
                    false
                } else {
                    *current = all;
                    true
                }
            });
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn registry() -> Arc<ExternalApps> {
        let config = Config::from_toml(
            "[nodes.a]\nari_url = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        ExternalApps::new(
            Arc::new(Catalog::new()),
            Arc::new(Cluster::from_config(&config).unwrap()),
        )
    }

    fn event(app: &str) -> Event {
        Event::parse(&format!(
            r#"{{"type":"StasisStart","application":"{app}","asterisk_id":"x","timestamp":"t","args":[],"channel":{{"id":"c1","name":"n","state":"Ring","caller":{{"name":"","number":""}},"connected":{{"name":"","number":""}},"accountcode":"","dialplan":{{"context":"default","exten":"1","priority":1}},"creationtime":"t","language":"en"}}}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn newest_client_takes_the_app_and_the_old_one_hears_replaced() {
        let r = registry();
        let names = r.watch_names();
        let (mut first, fresh) = r.claim(&["ext".into()]).unwrap();
        assert_eq!(fresh, vec!["ext".to_string()]);
        assert_eq!(*names.borrow(), vec!["ext".to_string()]);
        assert!(r.deliver(&event("ext")));
        assert!(first.events.recv().await.unwrap().contains("StasisStart"));
        let (mut second, fresh) = r.claim(&["ext".into()]).unwrap();
        assert!(fresh.is_empty());
        assert!(
            first
                .events
                .recv()
                .await
                .unwrap()
                .contains("ApplicationReplaced")
        );
        assert!(r.deliver(&event("ext")));
        assert!(second.events.recv().await.is_some());
        assert!(first.events.try_recv().is_err());
        drop(first); // the replaced one leaving keeps the app
        assert!(r.holds("ext"));
        drop(second); // the owner leaving removes it
        assert!(!r.holds("ext"));
        assert!(names.borrow().is_empty());
        assert!(!r.deliver(&event("ext")));
    }

    #[test]
    fn reserved_and_invalid_names_are_refused() {
        let r = registry();
        assert!(matches!(
            r.claim(&[TRUNK_APP.into()]),
            Err(ClaimError::Reserved(_))
        ));
        assert!(matches!(
            r.claim(&["a b".into()]),
            Err(ClaimError::InvalidName(_))
        ));
        assert!(!r.holds("a b"));
    }
}
