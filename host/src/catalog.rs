//! The catalog: which loaded app version serves new calls for each app name.
//!
//! Dispatch reads it for every StasisStart; intake watches its names to know which apps to
//! subscribe on every node. Replacing an entry is a hot swap: calls in progress keep the
//! `Arc<App>` they started with, new calls get the new one.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::runtime::App;

/// App name → the version that takes new calls.
#[derive(Debug)]
pub struct Catalog {
    apps: RwLock<BTreeMap<String, Arc<App>>>,
    names: watch::Sender<Vec<String>>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { apps: RwLock::new(BTreeMap::new()), names: watch::channel(Vec::new()).0 }
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
        let mut apps = self.apps.write();
        let old = apps.insert(name.to_string(), app);
        if old.is_none() {
            self.names.send_replace(apps.keys().cloned().collect());
        }
        old
    }

    /// Stops taking new calls for `name`; calls in progress keep their version.
    pub fn remove(&self, name: &str) -> Option<Arc<App>> {
        let mut apps = self.apps.write();
        let old = apps.remove(name);
        if old.is_some() {
            self.names.send_replace(apps.keys().cloned().collect());
        }
        old
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
