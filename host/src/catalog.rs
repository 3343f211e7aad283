//! The catalog: which loaded app version serves new calls for each app name.
//!
//! Dispatch reads it for every StasisStart; intake watches its names to know which apps to
//! subscribe on every node. Replacing an entry is a hot swap: calls in progress keep the
//! `Arc<App>` they started with, new calls get the new one.
//!
//! A removed app can be *retired* rather than removed: it takes no new calls, but its name
//! stays subscribed on the nodes until [`Catalog::release`], because a node stops sending
//! an unregistered app's events — including the StasisEnd its calls in progress need to
//! finish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::runtime::App;

/// App name → the version that takes new calls.
#[derive(Debug)]
pub struct Catalog {
    apps: RwLock<BTreeMap<String, Arc<App>>>,
    /// Retired names still subscribed on the nodes while their calls finish. Only changed
    /// with `apps` write-locked, so the published names are always consistent.
    draining: parking_lot::Mutex<BTreeSet<String>>,
    names: watch::Sender<Vec<String>>,
    /// Every version activated under each name, while anything still holds it; see
    /// [`Catalog::versions`].
    versions: parking_lot::Mutex<BTreeMap<String, Vec<Weak<App>>>>,
    /// Bumped on every change: activation (a hot swap too), removal, retirement, release.
    changes: watch::Sender<u64>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            apps: RwLock::new(BTreeMap::new()),
            draining: parking_lot::Mutex::new(BTreeSet::new()),
            names: watch::channel(Vec::new()).0,
            versions: parking_lot::Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
        }
    }
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// The version serving new calls of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<App>> {
        self.apps.read().get(name).cloned()
    }

    /// Makes `app` the version for new calls of `name`; returns the one it replaces.
    pub fn activate(&self, name: &str, app: Arc<App>) -> Option<Arc<App>> {
        {
            let mut versions = self.versions.lock();
            let known = versions.entry(name.to_string()).or_default();
            if !known
                .iter()
                .any(|v| std::ptr::eq(v.as_ptr(), Arc::as_ptr(&app)))
            {
                known.push(Arc::downgrade(&app));
            }
        }
        let mut apps = self.apps.write();
        let old = apps.insert(name.to_string(), app);
        if old.is_none() && !self.draining.lock().contains(name) {
            self.names.send_replace(self.published(&apps));
        }
        drop(apps);
        self.changed();
        old
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Changes whenever any app is activated (hot swaps included), removed, retired or
    /// released.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Stops taking new calls for `name`; calls in progress keep their version.
    pub fn remove(&self, name: &str) -> Option<Arc<App>> {
        let mut apps = self.apps.write();
        let old = apps.remove(name);
        if old.is_some() && !self.draining.lock().contains(name) {
            self.names.send_replace(self.published(&apps));
        }
        drop(apps);
        self.changed();
        old
    }

    /// The names the nodes must have registered: active and draining apps.
    fn published(&self, apps: &BTreeMap<String, Arc<App>>) -> Vec<String> {
        let names: BTreeSet<String> = apps
            .keys()
            .cloned()
            .chain(self.draining.lock().iter().cloned())
            .collect();
        names.into_iter().collect()
    }

    /// Stops taking new calls for `name` but keeps it subscribed on the nodes, so its calls
    /// in progress still hear their events, until [`Catalog::release`].
    pub fn retire(&self, name: &str) -> Option<Arc<App>> {
        let mut apps = self.apps.write();
        let old = apps.remove(name);
        if old.is_some() {
            self.draining.lock().insert(name.to_string());
        }
        drop(apps);
        self.changed();
        old
    }

    /// Ends the retirement of `name`: unless it was activated again meanwhile, the nodes
    /// are told to unregister it.
    pub fn release(&self, name: &str) {
        let apps = self.apps.write();
        if self.draining.lock().remove(name) && !apps.contains_key(name) {
            self.names.send_replace(self.published(&apps));
        }
        drop(apps);
        self.changed();
    }

    /// Whether `name` is retired and still draining its calls.
    pub fn is_draining(&self, name: &str) -> bool {
        self.draining.lock().contains(name)
    }

    /// The versions of `name` in use: the one taking new calls and those with calls in
    /// progress (versions only kept for a rollback are not).
    pub fn versions(&self, name: &str) -> Vec<Arc<App>> {
        let active = self.get(name);
        let mut versions = self.versions.lock();
        let Some(weak) = versions.get_mut(name) else {
            return Vec::new();
        };
        weak.retain(|v| v.strong_count() > 0);
        weak.iter()
            .filter_map(Weak::upgrade)
            .filter(|v| v.version_calls() > 0 || active.as_ref().is_some_and(|a| Arc::ptr_eq(a, v)))
            .collect()
    }

    /// The names the nodes must have registered right now.
    pub fn names(&self) -> Vec<String> {
        self.names.borrow().clone()
    }

    /// Every app version taking new calls.
    pub fn all(&self) -> Vec<Arc<App>> {
        self.apps.read().values().cloned().collect()
    }

    /// The app names, as they change (what every node must be subscribed to).
    pub fn watch_names(&self) -> watch::Receiver<Vec<String>> {
        self.names.subscribe()
    }
}
