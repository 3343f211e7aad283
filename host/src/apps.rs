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
//! consistent) — with an app stream, by the one task applying the log; reads never take it.
//!
//! **Replicas** (`[amqp] apps_stream` set): every change goes through the app stream
//! (`app_stream.rs`), the single ordered log of app changes shared by all replicas. An
//! upload is still validated and compiled here first (a bad one is refused and never
//! logged), then published; rollbacks and deletes are published as they are. One follower
//! task per replica applies the log in order — this replica's own records included — and the
//! request is answered with the result of applying its record. Applying is split in two:
//! - *recording* (in log order, deterministic, cheap): version numbers, the active version,
//!   pruning, deletes — a function of the log alone, so all replicas agree;
//! - *settling* (local): compiling or loading the active version (reusing the artifact
//!   compiled for validation, or the store's artifact of the same SHA-256), switching the
//!   catalog, writing the store. It runs once the follower has caught up with the log (so
//!   a replica replaying a long history compiles only what is still active at its end),
//!   then after every batch. Versions that are not active are loaded when their artifact
//!   is at hand and compiled only once they become active again (rollback).
//!
//! With a stream the store is a cache: at start-up it is not loaded but read as an index of
//! artifacts; the state is rebuilt from the log (from offset `first`), so a restart never
//! duplicates a version, and stored apps the log does not have are removed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::app_stream::{AppStream, AppStreamError, Logged, Op, Record};
use crate::backend::AriBackend;
use crate::catalog::Catalog;
use crate::config::OnFault;
use crate::dispatch::DispatchControl;
use crate::gateway::Gateway;
use crate::runtime::{App, AppSettings, AppShared, Artifact, FaultPolicy, Runtime, RuntimeError};
use crate::store::{AppLimits, Manifest, Store, StoreError, VersionRecord, sha256_hex};

/// Recent errors kept per app.
const RECENT_ERRORS: usize = 10;
/// How long a request waits for its record to come back from the app stream and be applied.
const STREAM_WAIT: Duration = Duration::from_secs(60);
/// How long [`Apps::open`] waits to catch up with the app stream before serving anyway (it
/// keeps catching up in the background).
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// Records applied before settling (the follower hands them over one at a time).
const BATCH: usize = 32;

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
    #[error("the app stream is unavailable: {0}")]
    Stream(#[from] AppStreamError),
    #[error(
        "the change is in the app stream but this replica has not applied it within {0} s \
         (it is catching up, or compiling); it takes effect when applied"
    )]
    NotApplied(u64),
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
        check_limits(&limits)?;
        Ok(limits)
    }
}

/// The ranges an upload's limits must be in (also checked on records from the app stream).
fn check_limits(limits: &AppLimits) -> Result<(), AppsError> {
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
    Ok(())
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
        ..AppSettings::default()
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
    /// Whether it is loaded and can serve (false: damaged on disk, see the errors; or, with
    /// an app stream, not compiled on this replica yet: it is when it becomes active).
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
    /// With an app stream: components of versions recorded but not yet settled, and (without
    /// a data dir) of versions not loaded, needed if they become active again.
    pending: BTreeMap<u32, Vec<u8>>,
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
    /// The app stream shared with the other replicas, if configured.
    replicated: Option<Replicated>,
}

/// What applying one app stream record did, for the replica that published it.
#[derive(Debug)]
enum Applied {
    /// An upload or a rollback: the version now active.
    Version(Uploaded),
    Deleted(Deleted),
}

/// The replica's side of the app stream.
struct Replicated {
    stream: Arc<AppStream>,
    /// Requests waiting for their record (by id) to be applied.
    waiters: Mutex<HashMap<String, oneshot::Sender<Result<Applied, AppsError>>>>,
    /// Artifacts compiled while validating uploads not applied yet, by component SHA-256.
    precompiled: Mutex<HashMap<String, Vec<u8>>>,
    /// Per app: the manifest last written to the store (or found there at start-up): which
    /// components and artifacts are on disk.
    on_disk: Mutex<BTreeMap<String, Manifest>>,
    /// True once the follower has read back the barrier this replica logged at start-up.
    caught_up: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Apps {
    fn drop(&mut self) {
        if let Some(replicated) = &self.replicated {
            for task in replicated.tasks.lock().drain(..) {
                task.abort();
            }
        }
    }
}

/// The follower's bookkeeping between batches.
struct Applier {
    /// Id of this replica's start-up barrier.
    barrier: String,
    caught_up: bool,
    /// Set when the barrier was read: settle everything, then announce.
    announce: bool,
    /// Ids applied (a record published twice is applied once).
    seen: HashSet<String>,
    /// Apps recorded since the last settle.
    dirty: BTreeSet<String>,
    /// Results of records applied since the last settle, by record id.
    results: Vec<(String, Result<Applied, AppsError>)>,
}

impl Apps {
    /// Opens the store of `gateway.config.store` (if a data dir is set) and loads every
    /// stored app; damaged ones are skipped with an error. Fails only if the data dir
    /// itself cannot be created or listed.
    ///
    /// With an app stream (`[amqp] apps_stream`), follows it instead: the apps are those of
    /// the log, and this returns once the follower has caught up with it (or after
    /// [`CATCH_UP_WAIT`], catching up in the background, e.g. while the broker is away).
    pub async fn open(gateway: &Gateway) -> Result<Arc<Apps>, AppsError> {
        let store = match &gateway.config.store.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                Some(blocking(move || Store::open(&dir)).await??)
            }
            None => None,
        };
        let replicated = match gateway.config.amqp.as_ref() {
            Some(amqp) if !amqp.apps_stream.is_empty() => Some(Replicated {
                stream: AppStream::new(
                    &amqp.url,
                    &amqp.apps_stream,
                    gateway.cluster.tls().clone(),
                )?,
                waiters: Mutex::new(HashMap::new()),
                precompiled: Mutex::new(HashMap::new()),
                on_disk: Mutex::new(BTreeMap::new()),
                caught_up: watch::channel(false).0,
                tasks: Mutex::new(Vec::new()),
            }),
            _ => None,
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
            replicated,
        });
        if apps.replicated.is_some() {
            apps.index_stored().await?;
            apps.follow().await;
        } else {
            apps.load_stored().await?;
        }
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
        if self.replicated.is_some() {
            return self
                .upload_through_stream(name, wasm, sha256, limits, options.config, artifact)
                .await;
        }
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
                pending: BTreeMap::new(),
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
        if self.replicated.is_some() {
            if !valid_name(name) {
                return Err(AppsError::NotFound(name.to_string()));
            }
            let record = Record::new(Op::Rollback {
                name: name.to_string(),
            });
            return match self.publish_and_wait(record, &[]).await? {
                Applied::Version(rolled) => Ok(rolled),
                other => Err(AppsError::Internal(format!("unexpected outcome {other:?}"))),
            };
        }
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
    ///
    /// With an app stream the delete is logged and applied by every replica, each draining
    /// (or hanging up) its own calls; the counts returned are this replica's.
    pub async fn delete(&self, name: &str, force: bool) -> Result<Deleted, AppsError> {
        if self.replicated.is_some() {
            if !valid_name(name) {
                return Err(AppsError::NotFound(name.to_string()));
            }
            let record = Record::new(Op::Delete {
                name: name.to_string(),
                force,
            });
            return match self.publish_and_wait(record, &[]).await? {
                Applied::Deleted(deleted) => Ok(deleted),
                other => Err(AppsError::Internal(format!("unexpected outcome {other:?}"))),
            };
        }
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
        Ok(self.drain(name, force, retired).await)
    }

    /// Forgets `name` (already retired from the catalog, `retired` being the version that
    /// served): its calls finish, or are hung up with `force`, and the nodes unregister it
    /// once the last one has ended.
    async fn drain(&self, name: &str, force: bool, retired: Option<Arc<App>>) -> Deleted {
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
        Deleted {
            name: name.to_string(),
            live_calls,
            hung_up,
        }
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
            pending: BTreeMap::new(),
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

/// The app stream side (see the module docs, "Replicas").
impl Apps {
    fn replicated(&self) -> &Replicated {
        self.replicated
            .as_ref()
            .expect("only called with an app stream")
    }

    /// Reads the store's manifests as an index of the components and artifacts on disk.
    /// Nothing is loaded: the log decides which apps and versions exist.
    async fn index_stored(&self) -> Result<(), AppsError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let all = blocking(move || store.load_all()).await??;
        let mut on_disk = self.replicated().on_disk.lock();
        for (name, manifest) in all {
            let manifest = manifest.unwrap_or_else(|e| {
                warn!(app = %name, error = %e, "stored manifest unreadable: rebuilt from the app stream");
                Manifest::new(&name)
            });
            on_disk.insert(name, manifest);
        }
        Ok(())
    }

    /// Starts following the app stream and waits (at most [`CATCH_UP_WAIT`], and not at all
    /// once the broker proved unreachable) until every record logged before this replica
    /// started has been applied.
    async fn follow(self: &Arc<Self>) {
        let replicated = self.replicated();
        let (tx, rx) = mpsc::channel(1);
        let barrier = Record::new(Op::Sync);
        let applier = Applier {
            barrier: barrier.id.clone(),
            caught_up: false,
            announce: false,
            seen: HashSet::new(),
            dirty: BTreeSet::new(),
            results: Vec::new(),
        };
        let mut failures = replicated.stream.failures();
        let reader = replicated.stream.follow(tx, barrier);
        let applying = tokio::spawn(run_applier(Arc::downgrade(self), rx, applier));
        replicated.tasks.lock().extend([reader, applying]);
        let started = Instant::now();
        let mut caught_up = replicated.caught_up.subscribe();
        let waited = tokio::time::timeout(CATCH_UP_WAIT, async {
            tokio::select! {
                r = caught_up.wait_for(|c| *c) => r.is_ok(),
                _ = failures.wait_for(|n| *n > 0) => false,
            }
        })
        .await
        .unwrap_or(false);
        if waited {
            info!(
                stream = replicated.stream.name(),
                apps = self.entries.lock().len(),
                ms = started.elapsed().as_millis() as u64,
                "caught up with the app stream"
            );
        } else {
            warn!(
                stream = replicated.stream.name(),
                waited_s = CATCH_UP_WAIT.as_secs(),
                "not caught up with the app stream yet: serving meanwhile, catching up in the background"
            );
        }
    }

    /// Logs a validated upload (its artifact kept for applying it here) and answers with the
    /// result of applying it.
    async fn upload_through_stream(
        &self,
        name: &str,
        wasm: Vec<u8>,
        sha256: String,
        limits: AppLimits,
        config: BTreeMap<String, String>,
        artifact: Artifact,
    ) -> Result<Uploaded, AppsError> {
        // What this replica cannot load (e.g. more memory than the engine allows) is refused
        // here, so nothing invalid is ever logged.
        let trial = AppShared::new(name, self.runtime.config().kv_limits);
        self.runtime
            .load_version(
                &trial,
                &artifact.bytes,
                settings_of(&limits),
                self.backend.clone(),
            )
            .map_err(AppsError::Invalid)?;
        let replicated = self.replicated();
        let record = Record::new(Op::Upload {
            name: name.to_string(),
            sha256: sha256.clone(),
            size: wasm.len() as u64,
            compile_ms: artifact.compile_time.as_millis() as u64,
            uploaded_at: now(),
            limits,
            config,
        });
        replicated
            .precompiled
            .lock()
            .insert(sha256.clone(), artifact.bytes);
        let applied = self.publish_and_wait(record, &wasm).await;
        replicated.precompiled.lock().remove(&sha256);
        match applied? {
            Applied::Version(uploaded) => Ok(uploaded),
            other => Err(AppsError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Publishes `record` and waits until this replica's follower has applied it.
    async fn publish_and_wait(&self, record: Record, body: &[u8]) -> Result<Applied, AppsError> {
        let replicated = self.replicated();
        let (tx, rx) = oneshot::channel();
        let id = record.id.clone();
        replicated.waiters.lock().insert(id.clone(), tx);
        if let Err(e) = replicated.stream.publish(&record, body).await {
            replicated.waiters.lock().remove(&id);
            return Err(e.into());
        }
        match tokio::time::timeout(STREAM_WAIT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AppsError::Internal(
                "the app stream follower stopped".into(),
            )),
            Err(_) => {
                replicated.waiters.lock().remove(&id);
                Err(AppsError::NotApplied(STREAM_WAIT.as_secs()))
            }
        }
    }

    /// Records one logged change (deterministic: the same on every replica); what needs
    /// compiling, loading or writing waits for [`Apps::settle`].
    async fn apply(&self, logged: Logged, state: &mut Applier) {
        let Logged {
            offset,
            record,
            body,
        } = logged;
        if !state.seen.insert(record.id.clone()) {
            debug!(offset, id = %record.id, "app stream record applied before: skipped");
            return;
        }
        let result = match record.op {
            Op::Sync => {
                if record.id == state.barrier && !state.caught_up {
                    state.caught_up = true;
                    state.announce = true;
                }
                return;
            }
            Op::Upload {
                name,
                sha256,
                size,
                compile_ms,
                uploaded_at,
                limits,
                config,
            } => {
                let version = VersionRecord {
                    version: 0,
                    sha256,
                    size,
                    artifact_sha256: String::new(),
                    uploaded_at,
                    compile_ms,
                    limits,
                    config,
                };
                self.record_upload(&name, version, body, state)
            }
            Op::Rollback { name } => self.record_rollback(&name, state),
            Op::Delete { name, force } => self.record_delete(&name, force, state).await,
        };
        match &result {
            Ok(applied) => debug!(offset, id = %record.id, ?applied, "app stream record applied"),
            Err(e) => info!(offset, id = %record.id, error = %e, "app stream record refused"),
        }
        state.results.push((record.id, result));
    }

    fn record_upload(
        &self,
        name: &str,
        mut record: VersionRecord,
        wasm: Vec<u8>,
        state: &mut Applier,
    ) -> Result<Applied, AppsError> {
        if !valid_name(name) {
            return Err(AppsError::BadName(name.to_string()));
        }
        check_limits(&record.limits)?;
        let shared = self.shared_for(name);
        let mut entries = self.entries.lock();
        let entry = entries.entry(name.to_string()).or_insert_with(|| Entry {
            manifest: Manifest::new(name),
            shared,
            loaded: BTreeMap::new(),
            errors: VecDeque::new(),
            pending: BTreeMap::new(),
        });
        record.version = entry.manifest.next_version();
        let replaced = entry.manifest.active;
        entry.manifest.versions.push(record.clone());
        entry.manifest.active = Some(record.version);
        for old in entry.manifest.prune() {
            entry.loaded.remove(&old.version);
            entry.pending.remove(&old.version);
        }
        entry.pending.insert(record.version, wasm);
        state.dirty.insert(name.to_string());
        Ok(Applied::Version(Uploaded {
            name: name.to_string(),
            version: record.version,
            sha256: record.sha256,
            size: record.size,
            compile_ms: record.compile_ms,
            replaced,
        }))
    }

    /// The newest version older than the active one becomes active: of the versions
    /// recorded, loaded here or not, so every replica picks the same one.
    fn record_rollback(&self, name: &str, state: &mut Applier) -> Result<Applied, AppsError> {
        let mut entries = self.entries.lock();
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| AppsError::NotFound(name.to_string()))?;
        let active = entry.manifest.active.unwrap_or(u32::MAX);
        let target = (entry.manifest.versions.iter())
            .filter(|r| r.version < active)
            .max_by_key(|r| r.version)
            .cloned()
            .ok_or_else(|| AppsError::NoEarlierVersion(name.to_string()))?;
        let replaced = entry.manifest.active;
        entry.manifest.active = Some(target.version);
        state.dirty.insert(name.to_string());
        Ok(Applied::Version(Uploaded {
            name: name.to_string(),
            version: target.version,
            sha256: target.sha256,
            size: target.size,
            compile_ms: target.compile_ms,
            replaced,
        }))
    }

    /// A delete takes effect at once (in log order: later records of the name start a new
    /// app); its stored files go when the name settles.
    async fn record_delete(
        &self,
        name: &str,
        force: bool,
        state: &mut Applier,
    ) -> Result<Applied, AppsError> {
        let known = self.entries.lock().contains_key(name);
        let retired = self.catalog.retire(name);
        if !known && retired.is_none() {
            return Err(AppsError::NotFound(name.to_string()));
        }
        state.dirty.insert(name.to_string());
        Ok(Applied::Deleted(self.drain(name, force, retired).await))
    }

    /// Settles every app recorded since the last time, then answers the requests whose
    /// records were applied (and announces having caught up, if this batch did).
    async fn settle(&self, state: &mut Applier) {
        let replicated = self.replicated();
        let mut names = std::mem::take(&mut state.dirty);
        if state.announce {
            // Caught up: stored apps the log does not have are removed.
            names.extend(replicated.on_disk.lock().keys().cloned());
        }
        for name in &names {
            self.settle_app(name).await;
        }
        for (id, result) in state.results.drain(..) {
            let waiter = replicated.waiters.lock().remove(&id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(result.and_then(|applied| self.served(applied)));
            }
        }
        if std::mem::take(&mut state.announce) {
            replicated.caught_up.send_replace(true);
        }
    }

    /// An upload or rollback is answered as done only if this replica serves its version
    /// (or a later record changed the app again).
    fn served(&self, applied: Applied) -> Result<Applied, AppsError> {
        let Applied::Version(version) = &applied else {
            return Ok(applied);
        };
        let entries = self.entries.lock();
        let Some(entry) = entries.get(&version.name) else {
            return Ok(applied);
        };
        if entry.manifest.active != Some(version.version)
            || entry.loaded.contains_key(&version.version)
        {
            return Ok(applied);
        }
        let reason = (entry.errors.back())
            .map(|e| e.message.clone())
            .unwrap_or_default();
        Err(AppsError::Internal(format!(
            "version {} of {:?} is logged but cannot be loaded on this replica: {reason}",
            version.version, version.name
        )))
    }

    /// Brings what this replica has of `name` (loaded versions, the catalog, the store) in
    /// line with what the log recorded. Only the follower task changes entries with a
    /// stream, so the snapshot taken here stays current while it compiles.
    async fn settle_app(&self, name: &str) {
        let replicated = self.replicated();
        let snapshot = self.entries.lock().get_mut(name).map(|e| {
            (
                e.manifest.clone(),
                e.shared.clone(),
                e.loaded.keys().copied().collect::<BTreeSet<u32>>(),
                std::mem::take(&mut e.pending),
            )
        });
        let Some((mut manifest, shared, loaded, mut pending)) = snapshot else {
            // Deleted, or stored but not in the log: remove its files.
            let stored = replicated.on_disk.lock().remove(name).is_some();
            if let (true, Some(store)) = (stored, self.store.clone()) {
                let owned = name.to_string();
                match blocking(move || store.remove_app(&owned)).await {
                    Ok(Ok(())) => {
                        info!(
                            app = name,
                            "stored app removed: deleted in the app stream, or not in it"
                        )
                    }
                    Ok(Err(e)) => warn!(app = name, error = %e, "cannot remove the stored app"),
                    Err(e) => warn!(app = name, error = %e, "cannot remove the stored app"),
                }
            }
            return;
        };
        // What the store has of this app (by component SHA-256), plus what this settle writes.
        let mut known: Vec<VersionRecord> = (replicated.on_disk.lock().get(name))
            .map(|m| m.versions.clone())
            .unwrap_or_default();
        // The active version first: it is what new calls need.
        let mut order: Vec<usize> = (0..manifest.versions.len()).collect();
        order.sort_by_key(|&i| {
            let v = manifest.versions[i].version;
            (Some(v) != manifest.active, std::cmp::Reverse(v))
        });
        let mut now_loaded = Vec::new();
        let mut errors = Vec::new();
        let mut writes = Vec::new();
        let mut keep = BTreeMap::new();
        for i in order {
            let record = manifest.versions[i].clone();
            let active = Some(record.version) == manifest.active;
            let stored = (known.iter()).find(|v| v.sha256 == record.sha256).cloned();
            let wasm = pending.remove(&record.version);
            let mut artifact = None;
            let mut is_loaded = loaded.contains(&record.version);
            if !is_loaded {
                match (self.materialize(&shared, &record, stored.as_ref(), wasm.as_deref(), active))
                    .await
                {
                    Ok(Some((app, new_artifact))) => {
                        now_loaded.push((record.version, app));
                        artifact = new_artifact;
                        is_loaded = true;
                    }
                    Ok(None) => {}
                    Err(message) => {
                        error!(app = name, version = record.version, error = %message, "version not loaded");
                        errors.push(format!("version {} not loaded: {message}", record.version));
                    }
                }
            }
            if self.store.is_none() {
                // Without a store, keep what a later rollback to this version would compile.
                if let (false, Some(wasm)) = (is_loaded, wasm) {
                    keep.insert(record.version, wasm);
                }
                if let Some(artifact) = &artifact {
                    manifest.versions[i].artifact_sha256 = sha256_hex(artifact);
                }
                continue;
            }
            // The store: each component once, the newest artifact; the manifest names them.
            let wasm = wasm.filter(|_| stored.is_none());
            let checksum = match (&artifact, &stored) {
                (Some(a), _) => sha256_hex(a),
                (None, Some(s)) => s.artifact_sha256.clone(),
                (None, None) if wasm.is_some() => sha256_hex(&[]),
                (None, None) => record.artifact_sha256.clone(),
            };
            let artifact = artifact.filter(|_| {
                stored
                    .as_ref()
                    .is_none_or(|s| s.artifact_sha256 != checksum)
            });
            manifest.versions[i].artifact_sha256 = checksum;
            if wasm.is_some() || artifact.is_some() {
                writes.push((record.sha256.clone(), wasm, artifact));
                // Another version with the same component finds these files.
                known.retain(|v| v.sha256 != record.sha256);
                known.push(manifest.versions[i].clone());
            }
        }
        if let Some(store) = self.store.clone() {
            let (owned, written) = (name.to_string(), manifest.clone());
            let result = blocking(move || -> Result<(), StoreError> {
                for (sha, wasm, artifact) in writes {
                    match (wasm, artifact) {
                        (Some(wasm), artifact) => store.put_version(
                            &owned,
                            &sha,
                            &wasm,
                            artifact.as_deref().unwrap_or(&[]),
                        )?,
                        (None, Some(artifact)) => store.put_artifact(&owned, &sha, &artifact)?,
                        (None, None) => {}
                    }
                }
                store.write_manifest(&written)
            })
            .await;
            match result.and_then(|r| r.map_err(AppsError::from)) {
                Ok(()) => {
                    replicated
                        .on_disk
                        .lock()
                        .insert(name.to_string(), manifest.clone());
                }
                Err(e) => {
                    warn!(app = name, error = %e, "cannot store the app (the app stream still has it)");
                    errors.push(format!("not stored: {e}"));
                }
            }
        }
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(name) else {
            return;
        };
        entry.manifest = manifest;
        entry.loaded.extend(now_loaded);
        entry.pending = keep;
        for message in errors {
            entry.note_error(message);
        }
        let Some(active) = entry.manifest.active else {
            return;
        };
        let Some(app) = entry.loaded.get(&active).cloned() else {
            warn!(
                app = name,
                version = active,
                "the active version is not loaded here: the version serving before keeps serving"
            );
            return;
        };
        if (self.catalog.get(name)).is_some_and(|serving| Arc::ptr_eq(&serving, &app)) {
            return;
        }
        if self.external.holds(name) {
            entry.note_error(format!(
                "version {active} not serving: the name is held by an ARI client connected through the facade"
            ));
            return;
        }
        let record = entry
            .manifest
            .version(active)
            .expect("the active version is recorded");
        seed_config(&app, &record.config);
        self.catalog.activate(name, app);
        info!(app = name, version = active, sha256 = %record.sha256, "app version serving");
    }

    /// Loads `record` of `shared`'s app from the artifact compiled when validating its upload
    /// here, else the store's artifact of the same component, else — only if `compile` — by
    /// compiling `wasm` (or the stored component). `Ok(None)`: not loaded, nothing at hand.
    /// A new artifact is returned for the store.
    async fn materialize(
        &self,
        shared: &Arc<AppShared>,
        record: &VersionRecord,
        stored: Option<&VersionRecord>,
        wasm: Option<&[u8]>,
        compile: bool,
    ) -> Result<Option<(Arc<App>, Option<Vec<u8>>)>, String> {
        let name = shared.name();
        let settings = settings_of(&record.limits);
        let precompiled = (self.replicated().precompiled.lock())
            .get(&record.sha256)
            .cloned();
        if let Some(bytes) = precompiled {
            match (self.runtime).load_version(
                shared,
                &bytes,
                settings.clone(),
                self.backend.clone(),
            ) {
                Ok(app) => return Ok(Some((app, Some(bytes)))),
                Err(e) => warn!(app = name, error = %e, "the upload's artifact does not load"),
            }
        }
        if let (Some(store), Some(stored)) = (self.store.clone(), stored) {
            let (owned, stored) = (name.to_string(), stored.clone());
            let loaded = blocking(move || store.read_artifact(&owned, &stored))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    (self.runtime)
                        .load_version(shared, bytes, settings.clone(), self.backend.clone())
                        .map_err(|e| e.to_string())
                });
            match loaded {
                Ok(app) => return Ok(Some((app, None))),
                Err(e) => {
                    debug!(app = name, version = record.version, error = %e, "stored artifact unusable")
                }
            }
        }
        if !compile {
            return Ok(None);
        }
        let wasm = match (wasm, self.store.clone(), stored) {
            (Some(wasm), _, _) => wasm.to_vec(),
            (None, Some(store), Some(stored)) => {
                let (owned, stored) = (name.to_string(), stored.clone());
                blocking(move || store.read_wasm(&owned, &stored))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            _ => return Err("its component is not available on this replica".into()),
        };
        let artifact = self
            .runtime
            .compile(wasm)
            .await
            .map_err(|e| e.to_string())?;
        let app = (self.runtime)
            .load_version(shared, &artifact.bytes, settings, self.backend.clone())
            .map_err(|e| e.to_string())?;
        info!(
            app = name,
            version = record.version,
            compile_ms = artifact.compile_time.as_millis() as u64,
            "compiled a version from the app stream"
        );
        Ok(Some((app, Some(artifact.bytes))))
    }
}

/// The follower's apply loop: records in log order, in batches of what has arrived, each
/// batch settled once caught up. Ends when the [`Apps`] is dropped.
async fn run_applier(apps: Weak<Apps>, mut rx: mpsc::Receiver<Logged>, mut state: Applier) {
    while let Some(first) = rx.recv().await {
        let Some(apps) = apps.upgrade() else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(logged) => batch.push(logged),
                Err(_) => break,
            }
        }
        for logged in batch {
            apps.apply(logged, &mut state).await;
        }
        if state.caught_up {
            apps.settle(&mut state).await;
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

    /// Recording is a function of the log alone: numbers, pruning, rollback targets and
    /// deletes come out the same on every replica (settling is covered end to end, in
    /// tests/replicas_apps.rs).
    #[tokio::test]
    async fn the_log_decides_versions_rollbacks_and_deletes() {
        let config = crate::config::Config::from_toml(
            "[nodes.a]\nari_url = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let runtime = crate::runtime::RuntimeConfig {
            max_instances: 4,
            ..Default::default()
        };
        let gateway = Gateway::start(config, runtime).await.unwrap();
        let apps = Apps::open(&gateway).await.unwrap();
        let mut state = Applier {
            barrier: "start".into(),
            caught_up: false,
            announce: false,
            seen: HashSet::new(),
            dirty: BTreeSet::new(),
            results: Vec::new(),
        };
        let upload = |name: &str, body: &[u8]| Logged {
            offset: 0,
            record: Record::new(Op::Upload {
                name: name.into(),
                sha256: sha256_hex(body),
                size: body.len() as u64,
                compile_ms: 1,
                uploaded_at: 7,
                limits: AppLimits::default(),
                config: BTreeMap::new(),
            }),
            body: body.to_vec(),
        };
        let logged = |op: Op| Logged {
            offset: 0,
            record: Record::new(op),
            body: Vec::new(),
        };
        let outcome = |state: &mut Applier| match state.results.pop().expect("a result") {
            (_, Ok(Applied::Version(v))) => Ok((v.version, v.replaced)),
            (_, Ok(Applied::Deleted(d))) => Ok((0, Some(d.live_calls as u32))),
            (_, Err(e)) => Err(e.to_string()),
        };
        let view = |apps: &Apps| {
            let entries = apps.entries.lock();
            let m = &entries["conf"].manifest;
            (
                m.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
                m.active,
            )
        };

        for i in 1..=7u32 {
            apps.apply(upload("conf", &[i as u8]), &mut state).await;
            let replaced = (i > 1).then(|| i - 1);
            assert_eq!(outcome(&mut state), Ok((i, replaced)));
        }
        assert_eq!(view(&apps), (vec![3, 4, 5, 6, 7], Some(7)), "pruned");
        assert_eq!(apps.entries.lock()["conf"].pending.len(), 5);

        // A record published twice (a retried publish) counts once.
        let twice = upload("conf", b"again");
        let again = Logged {
            offset: 1,
            record: twice.record.clone(),
            body: twice.body.clone(),
        };
        apps.apply(twice, &mut state).await;
        apps.apply(again, &mut state).await;
        assert_eq!(state.results.len(), 1);
        assert_eq!(outcome(&mut state), Ok((8, Some(7))));

        let rollback = || {
            logged(Op::Rollback {
                name: "conf".into(),
            })
        };
        apps.apply(rollback(), &mut state).await;
        assert_eq!(outcome(&mut state), Ok((7, Some(8))));
        apps.apply(rollback(), &mut state).await;
        assert_eq!(outcome(&mut state), Ok((6, Some(7))));
        // The next upload numbers after the newest, not after the active one.
        apps.apply(upload("conf", b"nine"), &mut state).await;
        assert_eq!(outcome(&mut state), Ok((9, Some(6))));
        assert_eq!(view(&apps), (vec![5, 6, 7, 8, 9], Some(9)));
        for _ in 0..4 {
            apps.apply(rollback(), &mut state).await;
            outcome(&mut state).unwrap();
        }
        apps.apply(rollback(), &mut state).await;
        assert!(
            outcome(&mut state)
                .unwrap_err()
                .contains("no version older")
        );

        // Refusals are decided by the log too, and change nothing.
        apps.apply(
            logged(Op::Rollback {
                name: "nope".into(),
            }),
            &mut state,
        )
        .await;
        assert!(outcome(&mut state).unwrap_err().contains("no app named"));
        apps.apply(upload("../x", b"x"), &mut state).await;
        assert!(outcome(&mut state).unwrap_err().contains("app names"));

        // Delete, then the name starts over.
        let delete = logged(Op::Delete {
            name: "conf".into(),
            force: false,
        });
        apps.apply(delete, &mut state).await;
        assert_eq!(outcome(&mut state), Ok((0, Some(0))));
        assert!(apps.entries.lock().get("conf").is_none());
        apps.apply(upload("conf", b"new"), &mut state).await;
        assert_eq!(outcome(&mut state), Ok((1, None)));

        // Only this replica's own barrier means "caught up".
        let mut other = logged(Op::Sync);
        apps.apply(other, &mut state).await;
        assert!(!state.caught_up);
        other = logged(Op::Sync);
        other.record.id = "start".into();
        apps.apply(other, &mut state).await;
        assert!(state.caught_up && state.announce);
        assert!(state.dirty.contains("conf"));
        gateway.shutdown();
    }

    #[test]
    fn names_are_ari_app_names() {
        assert!(valid_name("conf-2_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
