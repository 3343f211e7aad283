//! Uploaded apps: validate, compile, persist, version, activate, roll back, delete.
//!
//! The admin API (admin.rs) is a thin HTTP skin over [`Apps`]; this module owns the rules:
//! - **Nothing changes before validation passes.** An upload is size-checked, compiled and
//!   checked against the `stasis:app` world (the runtime's bounded compile worker, off the
//!   executor), loaded, and persisted; only then does the catalog switch new calls to it.
//!   Any failure leaves the serving version as it was.
//! - **Hot swap.** Every version of a name shares one [`AppShared`] (kv store, capabilities,
//!   live-call count), so state and caps carry over; calls in progress keep the `Arc<App>`
//!   they started with.
//! - **Delete drains.** A deleted app takes no new calls but stays registered on the nodes
//!   until its last call ends (a node stops sending an unregistered app's events, StasisEnd
//!   included); `force` hangs those calls up.
//! - **Start-up never fails on the store.** A damaged manifest, component or artifact is
//!   logged, kept in the app's recent errors and skipped; an artifact from another wasmtime
//!   build is recompiled from the stored component.
//!
//! Mutations are serialized by one async lock (version numbers and manifests stay
//! consistent); reads never take it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::backend::AriBackend;
use crate::catalog::Catalog;
use crate::config::OnFault;
use crate::dispatch::DispatchControl;
use crate::gateway::Gateway;
use crate::runtime::{App, AppSettings, AppShared, FaultPolicy, Runtime, RuntimeError};
use crate::store::{AppLimits, Manifest, Store, StoreError, VersionRecord, sha256_hex};

/// Recent errors kept per app.
const RECENT_ERRORS: usize = 10;

/// Why an app operation was refused or failed. Each maps to one HTTP status in admin.rs.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    #[error("app names use letters, digits, '-' and '_' (got {0:?})")]
    BadName(String),
    #[error("the upload is empty: send the .wasm component as the request body")]
    Empty,
    #[error("the upload is {size} bytes; the limit is {limit} bytes (store.max_upload_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid limits: {0}")]
    BadLimits(String),
    #[error(transparent)]
    Invalid(RuntimeError),
    #[error("no app named {0:?}")]
    NotFound(String),
    #[error("app name {0:?} is held by an ARI client connected through the facade")]
    NameTaken(String),
    #[error("app {0:?} has no version older than the active one to roll back to")]
    NoEarlierVersion(String),
    #[error("cannot persist the upload: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Optional metadata of an upload: limits (defaults as for `[apps.*]`) and config values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadOptions {
    pub max_live_calls: Option<usize>,
    pub memory_mb: Option<usize>,
    pub callback_deadline_ms: Option<u64>,
    pub on_fault: Option<OnFault>,
    /// Given to the app in its kv store as `config.<key>` = value.
    pub config: BTreeMap<String, String>,
}

impl UploadOptions {
    fn limits(&self) -> Result<AppLimits, AppsError> {
        let d = AppLimits::default();
        let limits = AppLimits {
            max_live_calls: self.max_live_calls.unwrap_or(d.max_live_calls),
            memory_mb: self.memory_mb.unwrap_or(d.memory_mb),
            callback_deadline_ms: self.callback_deadline_ms.unwrap_or(d.callback_deadline_ms),
            on_fault: self.on_fault.unwrap_or(d.on_fault),
        };
        if limits.max_live_calls == 0 {
            return Err(AppsError::BadLimits(
                "max_live_calls must be at least 1".into(),
            ));
        }
        if !(1..=4096).contains(&limits.memory_mb) {
            return Err(AppsError::BadLimits(
                "memory_mb must be between 1 and 4096".into(),
            ));
        }
        if limits.callback_deadline_ms == 0 {
            return Err(AppsError::BadLimits(
                "callback_deadline_ms must be at least 1".into(),
            ));
        }
        Ok(limits)
    }
}

/// Runtime settings of stored limits.
pub fn settings_of(limits: &AppLimits) -> AppSettings {
    AppSettings {
        max_live_calls: limits.max_live_calls,
        max_memory_bytes: limits.memory_mb << 20,
        callback_deadline: Duration::from_millis(limits.callback_deadline_ms),
        on_fault: match limits.on_fault {
            OnFault::Hangup => FaultPolicy::Hangup,
            OnFault::Continue => FaultPolicy::Continue,
        },
    }
}

/// One error worth showing an operator.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub message: String,
}

/// One version as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    #[serde(flatten)]
    pub record: VersionRecord,
    pub active: bool,
    /// Whether it is loaded and can serve (false: damaged on disk, see the errors).
    pub loaded: bool,
}

/// An app as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AppInfo {
    pub name: String,
    /// `upload` (managed here) or `config` (from `[apps.*]`, not versioned).
    pub source: &'static str,
    pub active_version: Option<u32>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub compile_ms: Option<u64>,
    pub live_calls: usize,
    /// Deleted, but still registered while its calls in progress finish.
    pub draining: bool,
    pub versions: Vec<VersionInfo>,
    pub recent_errors: Vec<RecentError>,
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub size: u64,
    pub compile_ms: u64,
    /// The version it replaced for new calls.
    pub replaced: Option<u32>,
}

/// What a delete did.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub name: String,
    /// Calls still in progress when new calls stopped.
    pub live_calls: usize,
    /// Calls told to hang up (`force`).
    pub hung_up: usize,
}

struct Entry {
    manifest: Manifest,
    shared: Arc<AppShared>,
    /// Loaded versions (a damaged one is absent).
    loaded: BTreeMap<u32, Arc<App>>,
    errors: VecDeque<RecentError>,
}

impl Entry {
    fn note_error(&mut self, message: String) {
        if self.errors.len() == RECENT_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(RecentError { at: now(), message });
    }
}

/// The uploaded apps of a host; see the module docs.
pub struct Apps {
    runtime: Arc<Runtime>,
    catalog: Arc<Catalog>,
    backend: Arc<dyn AriBackend>,
    dispatch: DispatchControl,
    store: Option<Store>,
    max_upload_bytes: usize,
    entries: Mutex<BTreeMap<String, Entry>>,
    writes: tokio::sync::Mutex<()>,
    /// Names held by ARI facade clients: never given to an upload.
    external: Arc<crate::facade::events::ExternalApps>,
}

impl Apps {
    /// Opens the store of `gateway.config.store` (if a data dir is set) and loads every
    /// stored app; damaged ones are skipped with an error. Fails only if the data dir
    /// itself cannot be created or listed.
    pub async fn open(gateway: &Gateway) -> Result<Arc<Apps>, AppsError> {
        let store = match &gateway.config.store.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                Some(blocking(move || Store::open(&dir)).await??)
            }
            None => None,
        };
        let apps = Arc::new(Apps {
            runtime: gateway.runtime.clone(),
            catalog: gateway.catalog.clone(),
            backend: gateway.router.clone() as Arc<dyn AriBackend>,
            dispatch: gateway.dispatch.clone(),
            store,
            max_upload_bytes: gateway.config.store.max_upload_bytes,
            entries: Mutex::new(BTreeMap::new()),
            writes: tokio::sync::Mutex::new(()),
            external: gateway.external.clone(),
        });
        apps.load_stored().await?;
        Ok(apps)
    }

    async fn load_stored(&self) -> Result<(), AppsError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let all = {
            let store = store.clone();
            blocking(move || store.load_all()).await??
        };
        for (name, manifest) in all {
            let manifest = match manifest {
                Ok(m) => m,
                Err(e) => {
                    error!(app = %name, error = %e, "stored app skipped: its manifest is unreadable");
                    let mut entry = self.new_entry(Manifest::new(&name));
                    entry.note_error(format!("not loaded at start-up: {e}"));
                    self.entries.lock().insert(name, entry);
                    continue;
                }
            };
            let mut entry = self.new_entry(manifest.clone());
            let mut rewritten = false;
            for record in &manifest.versions {
                match self
                    .load_stored_version(&store, &entry.shared, record)
                    .await
                {
                    Ok((app, new_checksum)) => {
                        entry.loaded.insert(record.version, app);
                        if let Some(checksum) = new_checksum
                            && let Some(r) = entry
                                .manifest
                                .versions
                                .iter_mut()
                                .find(|r| r.version == record.version)
                        {
                            r.artifact_sha256 = checksum;
                            rewritten = true;
                        }
                    }
                    Err(message) => {
                        error!(app = %name, version = record.version, error = %message, "stored version skipped");
                        entry.note_error(format!(
                            "version {} not loaded at start-up: {message}",
                            record.version
                        ));
                    }
                }
            }
            match manifest
                .active
                .and_then(|v| entry.loaded.get(&v).map(|app| (v, app.clone())))
            {
                Some((version, app)) => {
                    seed_config(
                        &app,
                        &manifest
                            .version(version)
                            .expect("loaded versions are recorded")
                            .config,
                    );
                    self.catalog.activate(&name, app);
                    info!(app = %name, version, "stored app serving");
                }
                None => {
                    warn!(app = %name, "stored app has no loadable active version: not serving")
                }
            }
            if rewritten {
                let (store, manifest) = (store.clone(), entry.manifest.clone());
                if let Ok(Err(e)) = blocking(move || store.write_manifest(&manifest)).await {
                    warn!(app = %name, error = %e, "cannot record the recompiled artifacts");
                }
            }
            self.entries.lock().insert(name, entry);
        }
        Ok(())
    }

    /// Loads one stored version: its artifact if intact and compatible, else a recompile
    /// of its (intact) component, whose new artifact replaces the stale one; then returns
    /// the new artifact's checksum for the manifest.
    async fn load_stored_version(
        &self,
        store: &Store,
        shared: &Arc<AppShared>,
        record: &VersionRecord,
    ) -> Result<(Arc<App>, Option<String>), String> {
        let name = shared.name();
        let settings = settings_of(&record.limits);
        let artifact = {
            let (store, name, record) = (store.clone(), name.to_string(), record.clone());
            blocking(move || store.read_artifact(&name, &record))
                .await
                .map_err(|e| e.to_string())?
        };
        let loaded = artifact.map_err(|e| e.to_string()).and_then(|bytes| {
            self.runtime
                .load_version(shared, bytes, settings.clone(), self.backend.clone())
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok(app) => return Ok((app, None)),
            Err(e) => {
                warn!(app = name, version = record.version, error = %e, "stored artifact unusable: recompiling")
            }
        }
        let wasm = {
            let (store, name, record) = (store.clone(), name.to_string(), record.clone());
            blocking(move || store.read_wasm(&name, &record))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let artifact = self
            .runtime
            .compile(wasm)
            .await
            .map_err(|e| e.to_string())?;
        let app = self
            .runtime
            .load_version(shared, &artifact.bytes, settings, self.backend.clone())
            .map_err(|e| e.to_string())?;
        let checksum = sha256_hex(&artifact.bytes);
        let (store, name, sha) = (store.clone(), name.to_string(), record.sha256.clone());
        // Caching the new artifact is best effort: failing only costs a recompile next start.
        match blocking(move || store.put_artifact(&name, &sha, &artifact.bytes)).await {
            Ok(Ok(())) => Ok((app, Some(checksum))),
            _ => Ok((app, None)),
        }
    }

    /// The largest accepted upload.
    pub fn max_upload_bytes(&self) -> usize {
        self.max_upload_bytes
    }

    /// Validates, compiles, persists and activates a new version of `name`. On any error
    /// the version serving before keeps serving.
    pub async fn upload(
        &self,
        name: &str,
        wasm: Vec<u8>,
        options: UploadOptions,
    ) -> Result<Uploaded, AppsError> {
        if !valid_name(name) {
            return Err(AppsError::BadName(name.to_string()));
        }
        if self.external.holds(name) {
            return Err(AppsError::NameTaken(name.to_string()));
        }
        let result = self.try_upload(name, wasm, options).await;
        if let Err(e) = &result {
            self.note_refused(name, e);
        }
        result
    }

    /// Records a refused upload in the app's recent errors (if the app exists), also for
    /// refusals decided before [`Apps::upload`] runs, e.g. an oversized body.
    pub fn note_refused(&self, name: &str, error: &AppsError) {
        warn!(app = name, %error, "upload refused");
        if let Some(entry) = self.entries.lock().get_mut(name) {
            entry.note_error(format!("upload refused: {error}"));
        }
    }

    async fn try_upload(
        &self,
        name: &str,
        wasm: Vec<u8>,
        options: UploadOptions,
    ) -> Result<Uploaded, AppsError> {
        if wasm.is_empty() {
            return Err(AppsError::Empty);
        }
        if wasm.len() > self.max_upload_bytes {
            return Err(AppsError::TooLarge {
                size: wasm.len(),
                limit: self.max_upload_bytes,
            });
        }
        let limits = options.limits()?;
        let started = Instant::now();
        // Compile before taking the write lock: it is the slow part, and the runtime
        // bounds how many run at once.
        let sha256 = sha256_hex(&wasm);
        let size = wasm.len() as u64;
        // The runtime takes the bytes; the store needs them after compiling succeeded. One
        // copy of at most `max_upload_bytes` is cheaper than re-reading the upload.
        let artifact = self
            .runtime
            .compile(wasm.clone())
            .await
            .map_err(AppsError::Invalid)?;
        let _writing = self.writes.lock().await;
        let shared = self.shared_for(name);
        let app = self
            .runtime
            .load_version(
                &shared,
                &artifact.bytes,
                settings_of(&limits),
                self.backend.clone(),
            )
            .map_err(AppsError::Invalid)?;
        let mut manifest = self
            .entries
            .lock()
            .get(name)
            .map(|e| e.manifest.clone())
            .unwrap_or_else(|| Manifest::new(name));
        let record = VersionRecord {
            version: manifest.next_version(),
            sha256: sha256.clone(),
            size,
            artifact_sha256: sha256_hex(&artifact.bytes),
            uploaded_at: now(),
            compile_ms: artifact.compile_time.as_millis() as u64,
            limits,
            config: options.config.clone(),
        };
        let replaced = manifest.active;
        manifest.versions.push(record.clone());
        manifest.active = Some(record.version);
        let dropped = manifest.prune();
        if let Some(store) = self.store.clone() {
            let (manifest, name, sha) = (manifest.clone(), name.to_string(), sha256.clone());
            blocking(move || {
                store.put_version(&name, &sha, &wasm, &artifact.bytes)?;
                store.write_manifest(&manifest)
            })
            .await??;
        }
        // Persisted: now switch new calls over.
        seed_config(&app, &options.config);
        {
            let mut entries = self.entries.lock();
            let entry = entries.entry(name.to_string()).or_insert_with(|| Entry {
                manifest: Manifest::new(name),
                shared: shared.clone(),
                loaded: BTreeMap::new(),
                errors: VecDeque::new(),
            });
            entry.manifest = manifest;
            entry.loaded.insert(record.version, app.clone());
            for old in dropped {
                entry.loaded.remove(&old.version);
            }
            self.catalog.activate(name, app);
        }
        info!(app = name, version = record.version, sha256 = %record.sha256, compile_ms = record.compile_ms,
            total_ms = started.elapsed().as_millis() as u64, "app version serving");
        Ok(Uploaded {
            name: name.to_string(),
            version: record.version,
            sha256: record.sha256,
            size: record.size,
            compile_ms: record.compile_ms,
            replaced,
        })
    }

    /// Makes the newest version older than the active one serve new calls again.
    pub async fn rollback(&self, name: &str) -> Result<Uploaded, AppsError> {
        let _writing = self.writes.lock().await;
        let (mut manifest, target, app) = {
            let entries = self.entries.lock();
            let entry = entries
                .get(name)
                .ok_or_else(|| AppsError::NotFound(name.to_string()))?;
            let active = entry.manifest.active.unwrap_or(u32::MAX);
            let target = entry
                .loaded
                .range(..active)
                .next_back()
                .map(|(v, app)| (*v, app.clone()))
                .ok_or_else(|| AppsError::NoEarlierVersion(name.to_string()))?;
            (entry.manifest.clone(), target.0, target.1)
        };
        let replaced = manifest.active;
        manifest.active = Some(target);
        if let Some(store) = self.store.clone() {
            let manifest = manifest.clone();
            blocking(move || store.write_manifest(&manifest)).await??;
        }
        let record = manifest
            .version(target)
            .expect("loaded versions are recorded")
            .clone();
        seed_config(&app, &record.config);
        {
            let mut entries = self.entries.lock();
            if let Some(entry) = entries.get_mut(name) {
                entry.manifest = manifest;
            }
            self.catalog.activate(name, app);
        }
        info!(app = name, version = target, ?replaced, "rolled back");
        Ok(Uploaded {
            name: name.to_string(),
            version: target,
            sha256: record.sha256,
            size: record.size,
            compile_ms: record.compile_ms,
            replaced,
        })
    }

    /// Stops new calls of `name` and removes it (and its stored versions). Calls in
    /// progress finish, or are hung up with `force`; the nodes unregister the app once the
    /// last one has ended.
    pub async fn delete(&self, name: &str, force: bool) -> Result<Deleted, AppsError> {
        let _writing = self.writes.lock().await;
        let known = self.entries.lock().contains_key(name);
        let retired = self.catalog.retire(name);
        if !known && retired.is_none() {
            return Err(AppsError::NotFound(name.to_string()));
        }
        if let Some(store) = self.store.clone() {
            let name = name.to_string();
            blocking(move || store.remove_app(&name)).await??;
        }
        let shared = self
            .entries
            .lock()
            .remove(name)
            .map(|e| e.shared)
            .or_else(|| retired.map(|a| a.shared().clone()));
        let live_calls = shared.as_ref().map_or(0, |s| s.live_calls());
        let hung_up = if force {
            self.dispatch.hang_up_app(name).await
        } else {
            0
        };
        // Keep the app registered on the nodes until its calls have ended.
        let (catalog, name_owned) = (self.catalog.clone(), name.to_string());
        tokio::spawn(async move {
            while shared.as_ref().is_some_and(|s| s.live_calls() > 0) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            catalog.release(&name_owned);
        });
        info!(app = name, live_calls, hung_up, "app deleted");
        Ok(Deleted {
            name: name.to_string(),
            live_calls,
            hung_up,
        })
    }

    /// Every app: uploaded ones, and config-file ones serving.
    pub fn list(&self) -> Vec<AppInfo> {
        let mut names: Vec<String> = self.entries.lock().keys().cloned().collect();
        names.extend(self.catalog.all().iter().map(|a| a.name().to_string()));
        names.sort();
        names.dedup();
        names.iter().filter_map(|n| self.get(n).ok()).collect()
    }

    /// One app, with its versions and recent errors.
    pub fn get(&self, name: &str) -> Result<AppInfo, AppsError> {
        let entries = self.entries.lock();
        let serving = self.catalog.get(name);
        let draining = self.catalog.is_draining(name);
        let Some(entry) = entries.get(name) else {
            let app = serving.ok_or_else(|| AppsError::NotFound(name.to_string()))?;
            return Ok(AppInfo {
                name: name.to_string(),
                source: "config",
                active_version: None,
                sha256: None,
                size: None,
                compile_ms: None,
                live_calls: app.live_calls(),
                draining,
                versions: Vec::new(),
                recent_errors: Vec::new(),
            });
        };
        let active = entry
            .manifest
            .active
            .and_then(|v| entry.manifest.version(v));
        Ok(AppInfo {
            name: name.to_string(),
            source: "upload",
            active_version: active.map(|r| r.version),
            sha256: active.map(|r| r.sha256.clone()),
            size: active.map(|r| r.size),
            compile_ms: active.map(|r| r.compile_ms),
            live_calls: entry.shared.live_calls(),
            draining,
            versions: entry
                .manifest
                .versions
                .iter()
                .map(|r| VersionInfo {
                    record: r.clone(),
                    active: Some(r.version) == entry.manifest.active,
                    loaded: entry.loaded.contains_key(&r.version),
                })
                .collect(),
            recent_errors: entry.errors.iter().cloned().collect(),
        })
    }

    fn new_entry(&self, manifest: Manifest) -> Entry {
        let shared = self.shared_for(&manifest.name);
        Entry {
            manifest,
            shared,
            loaded: BTreeMap::new(),
            errors: VecDeque::new(),
        }
    }

    /// The shared state of `name`: the existing entry's, else the version serving now
    /// (e.g. a config-file app being replaced by an upload), else fresh.
    fn shared_for(&self, name: &str) -> Arc<AppShared> {
        if let Some(entry) = self.entries.lock().get(name) {
            return entry.shared.clone();
        }
        match self.catalog.get(name) {
            Some(app) => app.shared().clone(),
            None => AppShared::new(name, self.runtime.config().kv_limits),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seeds an app's config values into its kv store (`config.<key>`), before it takes calls.
fn seed_config(app: &App, config: &BTreeMap<String, String>) {
    for (key, value) in config {
        if let Err(e) = app
            .shared()
            .kv()
            .set(&format!("config.{key}"), value.clone())
        {
            warn!(app = app.name(), key, error = %e, "config value not given to the app");
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppsError::Internal(e.to_string()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_limits_default_like_config_apps_and_are_checked() {
        let limits = UploadOptions::default().limits().unwrap();
        assert_eq!(limits, AppLimits::default());
        let settings = settings_of(&limits);
        assert_eq!(settings.max_memory_bytes, 16 << 20);
        assert_eq!(settings.callback_deadline, Duration::from_secs(1));
        let bad = |o: UploadOptions| o.limits().unwrap_err().to_string();
        assert!(
            bad(UploadOptions {
                max_live_calls: Some(0),
                ..Default::default()
            })
            .contains("max_live_calls")
        );
        assert!(
            bad(UploadOptions {
                memory_mb: Some(5000),
                ..Default::default()
            })
            .contains("memory_mb")
        );
        assert!(
            bad(UploadOptions {
                callback_deadline_ms: Some(0),
                ..Default::default()
            })
            .contains("deadline")
        );
    }

    #[test]
    fn names_are_ari_app_names() {
        assert!(valid_name("conf-2_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
