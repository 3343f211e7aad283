//! A loaded app version ([`App`]) and the state its versions share ([`AppShared`]).
//!
//! `App` holds what instantiating needs (the pre-linked component), its settings and its
//! backend; it is immutable, so calls never lock it. What must outlive a version — the kv
//! store, the capabilities and the live-call count — sits in `AppShared`, so a hot swap
//! passes the same `Arc<AppShared>` to the new version (see
//! [`Runtime::load_version`](super::Runtime::load_version)) and the cap counts calls on both.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{ComponentExportIndex, InstancePre};

use super::bindings::AppIndices;
use super::call::{self, CallHandle, CallReport, CallState, StartError};
use super::capability::{Capabilities, Resource};
use super::compile;
use super::engine::{RuntimeError, RuntimeInner};
use super::fault::FaultPolicy;
use super::kv::{KvLimits, KvStore};
use super::types::{CallContext, CallEvent};
use crate::backend::AriBackend;

/// Per-app limits and policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// Most live calls (instances) of the app, across its versions.
    pub max_live_calls: usize,
    /// Most bytes of linear memory per instance (≤ the runtime's memory ceiling).
    pub max_memory_bytes: usize,
    /// Budget of one callback for the guest's own time: time spent waiting on ARI is
    /// credited back, up to `max_host_wait` (so a slow node cannot fault a healthy app,
    /// and a request that never returns still ends the callback).
    pub callback_deadline: Duration,
    /// Most time one callback may spend waiting on ARI on top of its deadline.
    pub max_host_wait: Duration,
    /// What happens to a call whose instance faults.
    pub on_fault: FaultPolicy,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            max_live_calls: 1_000,
            max_memory_bytes: 16 << 20,
            callback_deadline: Duration::from_secs(1),
            max_host_wait: Duration::from_secs(10),
            on_fault: FaultPolicy::Hangup,
        }
    }
}

impl AppSettings {
    fn validate(&self, memory_ceiling: usize) -> Result<(), RuntimeError> {
        if self.max_memory_bytes > memory_ceiling {
            return Err(RuntimeError::Settings(format!(
                "max_memory_bytes {} exceeds the runtime's memory ceiling {memory_ceiling}",
                self.max_memory_bytes
            )));
        }
        if self.max_live_calls == 0 {
            return Err(RuntimeError::Settings(
                "max_live_calls must be at least 1".into(),
            ));
        }
        if self.callback_deadline.is_zero() {
            return Err(RuntimeError::Settings(
                "callback_deadline must not be zero".into(),
            ));
        }
        Ok(())
    }
}

/// State of an app name that all its versions share.
pub struct AppShared {
    pub(crate) name: Arc<str>,
    pub(crate) kv: KvStore,
    pub(crate) caps: Capabilities,
    pub(crate) live: AtomicUsize,
}

impl AppShared {
    pub fn new(name: &str, kv_limits: KvLimits) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            kv: KvStore::new(kv_limits),
            caps: Capabilities::default(),
            live: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The app's key/value store.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// Live calls across all versions.
    pub fn live_calls(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Granted (channels, bridges, playbacks, recordings): for admin and tests.
    pub fn capability_counts(&self) -> (usize, usize, usize, usize) {
        self.caps.counts()
    }
}

/// The ARI event types an app version wants through `on-event` (WIT `interest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventInterest {
    /// Every type (the app does not export `interest`, or named `*`).
    All,
    /// Only these types.
    Only(Box<[Box<str>]>),
}

impl EventInterest {
    /// From the list the app returned.
    pub fn from_types(types: Vec<String>) -> Self {
        if types.iter().any(|t| t == "*") {
            return EventInterest::All;
        }
        EventInterest::Only(types.into_iter().map(String::into_boxed_str).collect())
    }

    /// Whether an event of type `kind` goes to `on-event`.
    pub fn wants(&self, kind: &str) -> bool {
        match self {
            EventInterest::All => true,
            EventInterest::Only(types) => types.iter().any(|t| &**t == kind),
        }
    }
}

/// One loaded version of an app.
pub struct App {
    pub(crate) runtime: Arc<RuntimeInner>,
    pub(crate) shared: Arc<AppShared>,
    /// The component linked against the host's imports, ready to instantiate per call.
    pub(crate) pre: InstancePre<CallState>,
    /// Where the contract's exports are, to bind each instance without name lookups.
    pub(crate) indices: AppIndices,
    /// `interest.on-event-types`, if the app exports it.
    pub(crate) interest_export: Option<ComponentExportIndex>,
    /// What the app declared: asked in the first call's instance, so unknown (every event
    /// delivered) until then.
    pub(crate) interest: OnceLock<EventInterest>,
    /// Live calls of this version (`AppShared::live` counts all versions).
    pub(crate) calls: AtomicUsize,
    pub(crate) settings: AppSettings,
    pub(crate) backend: Arc<dyn AriBackend>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.shared.name)
            .field("settings", &self.settings)
            .field("live_calls", &self.live_calls())
            .finish()
    }
}

impl App {
    pub(crate) fn load(
        runtime: Arc<RuntimeInner>,
        shared: Arc<AppShared>,
        artifact: &[u8],
        settings: AppSettings,
        backend: Arc<dyn AriBackend>,
    ) -> Result<Arc<Self>, RuntimeError> {
        settings.validate(runtime.config.memory_ceiling_bytes)?;
        let component = compile::deserialize(&runtime, artifact)?;
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::WrongWorld(format!("{e:#}")))?;
        let indices =
            AppIndices::new(&pre).map_err(|e| RuntimeError::WrongWorld(format!("{e:#}")))?;
        let interest_export =
            compile::interest_export(&runtime, &component).map_err(RuntimeError::WrongWorld)?;
        let interest = OnceLock::new();
        if interest_export.is_none() {
            let _ = interest.set(EventInterest::All);
        }
        Ok(Arc::new(Self {
            runtime,
            shared,
            pre,
            indices,
            interest_export,
            interest,
            calls: AtomicUsize::new(0),
            settings,
            backend,
        }))
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn settings(&self) -> &AppSettings {
        &self.settings
    }

    /// Whether `on-event` of this version gets events of type `kind`. True until the app's
    /// declaration is known.
    pub fn wants_event(&self, kind: &str) -> bool {
        self.interest.get().is_none_or(|i| i.wants(kind))
    }

    /// The app's declared interest, once its first instance has been asked.
    pub fn event_interest(&self) -> Option<&EventInterest> {
        self.interest.get()
    }

    /// Live calls of this version only.
    pub fn version_calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// State shared with the app's other versions (pass it to `load_version`).
    pub fn shared(&self) -> &Arc<AppShared> {
        &self.shared
    }

    /// Live calls of the app, across its versions.
    pub fn live_calls(&self) -> usize {
        self.shared.live_calls()
    }

    /// Starts a call: reserves a slot, grants the channel, spawns the call's task (which
    /// instantiates and runs `on-start`). Never blocks; must be called within a tokio
    /// runtime. At the cap the call is refused with a logged [`StartError`]; the caller
    /// decides what the node is told.
    pub fn start_call(self: &Arc<Self>, ctx: CallContext) -> Result<CallHandle, StartError> {
        call::start(self, ctx, None)
    }

    /// [`App::start_call`], with the StasisStart's receipt dropped (the event acknowledged)
    /// once `on-start` has run.
    pub fn start_call_with(
        self: &Arc<Self>,
        ctx: CallContext,
        receipt: Option<crate::event::Receipt>,
    ) -> Result<CallHandle, StartError> {
        call::start(self, ctx, receipt)
    }

    /// Runs a whole call in the current task: instantiate, `on-start`, each of `events`
    /// (stop after `End`), drop. Subject to the same cap, capabilities, limits and fault
    /// policy as [`App::start_call`]. For smoke tests of an upload and for benchmarks.
    pub async fn run_call(
        self: &Arc<Self>,
        ctx: CallContext,
        events: Vec<CallEvent>,
    ) -> Result<CallReport, StartError> {
        call::run_inline(self, ctx, events).await
    }

    /// The app may act on `bridge_id` (one of its calls' channels entered it).
    pub fn grant_bridge(&self, bridge_id: &str) {
        self.shared
            .caps
            .grant(&Resource::Bridge(bridge_id.to_owned()));
    }

    /// The bridge is gone (BridgeDestroyed): forget it, and release the app's claim on the id.
    pub fn revoke_bridge(&self, bridge_id: &str) {
        self.shared
            .caps
            .revoke(&Resource::Bridge(bridge_id.to_owned()));
        self.runtime.claims.release(bridge_id, &self.shared.name);
    }

    /// The channel is gone (ChannelDestroyed), e.g. an originated channel that never became
    /// a call. A call's own channel is revoked when the call ends.
    pub fn revoke_channel(&self, channel_id: &str) {
        self.shared
            .caps
            .revoke(&Resource::Channel(channel_id.to_owned()));
    }

    /// Whether the app may currently act on `channel_id` (admin, tests).
    pub fn may_act_on_channel(&self, channel_id: &str) -> bool {
        self.shared
            .caps
            .allows(&Resource::Channel(channel_id.to_owned()))
    }

    /// Whether the app may currently act on `bridge_id` (admin, tests).
    pub fn may_act_on_bridge(&self, bridge_id: &str) -> bool {
        self.shared
            .caps
            .allows(&Resource::Bridge(bridge_id.to_owned()))
    }

    /// A value of the app's kv store (admin, tests).
    pub fn kv_get(&self, key: &str) -> Option<String> {
        self.shared.kv.get(key)
    }
}
