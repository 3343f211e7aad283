//! The process-wide [`Runtime`]: one wasmtime `Engine`, one `Linker`, the epoch ticker.
//!
//! Engine choices, and why:
//! - Pooling allocator sized for `max_instances` live calls: instantiation is a slot pick
//!   plus copy-on-write memory mapping (≈10 µs) instead of fresh `mmap`s.
//! - Linear memories reserve `memory_ceiling_bytes` of address space each instead of 4 GiB
//!   so that tens of thousands of slots fit in the address space; the cost is explicit
//!   bounds checks in compiled code.
//! - A slot's dirty pages are reset in place (PAGEMAP_SCAN, `KEEP_RESIDENT`), not returned
//!   to the kernel and faulted in again; what is still decommitted is batched
//!   (`DECOMMIT_BATCH`): fewer `madvise` calls and TLB shootdowns.
//! - Epoch interruption for per-callback deadlines (cheaper than fuel); a ticker thread bumps
//!   the epoch every `epoch_tick`. The per-store epoch callback yields to the executor on
//!   every tick so a busy guest cannot hog an executor thread, and traps once the
//!   callback's deadline has passed.
//! - `concurrency_support` off: the component-model async ABI is not used and it makes every
//!   host call slower (WASM-NOTES pitfall 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::app::{App, AppSettings, AppShared};
use super::bindings;
use super::call::CallState;
use super::capability::BridgeClaims;
use super::compile::Artifact;
use super::kv::KvLimits;
use crate::backend::AriBackend;

/// Settings of the runtime as a whole.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Epoch period: the granularity of callback deadlines and of guest yields.
    pub epoch_tick: Duration,
    /// Most live instances (calls) across all apps; sizes the pooling allocator.
    pub max_instances: u32,
    /// Largest linear memory any app may be given; the address space each memory slot
    /// reserves. [`AppSettings::max_memory_bytes`] must not exceed it.
    pub memory_ceiling_bytes: usize,
    /// Compilations that may run at once (each is CPU heavy and itself parallel).
    pub compile_workers: usize,
    /// Defaults for apps loaded without explicit settings.
    pub default_settings: AppSettings,
    /// Bounds of each app's key/value store.
    pub kv_limits: KvLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            epoch_tick: Duration::from_millis(10),
            max_instances: 10_000,
            memory_ceiling_bytes: 64 << 20,
            compile_workers: 1,
            default_settings: AppSettings::default(),
            kv_limits: KvLimits::default(),
        }
    }
}

/// Errors at the runtime's boundary: engine setup, compiling and loading apps.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("not a WebAssembly binary (expected the `\\0asm` header)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component. Build the app for the \
         wasm32-wasip2 target (`cargo build --target wasm32-wasip2`), or wrap the module with \
         `wasm-tools component new app.wasm -o app.component.wasm` (with the WASI preview1 \
         adapter for a wasip1 module)"
    )]
    CoreModule,
    #[error("this is a precompiled artifact, not a component; upload the .wasm component")]
    Precompiled,
    #[error("the component does not implement world stasis:app/app@0.1.0: {0}")]
    WrongWorld(String),
    #[error("compilation failed: {0}")]
    Compile(String),
    #[error("cannot load the compiled artifact: {0}")]
    Artifact(String),
    #[error("invalid app settings: {0}")]
    Settings(String),
    #[error("compile worker failed: {0}")]
    Worker(String),
}

/// State shared by the runtime handle, its apps and their calls.
pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<CallState>,
    pub(crate) config: RuntimeConfig,
    pub(crate) claims: BridgeClaims,
    /// Live instances across all apps (≤ `config.max_instances`, the pool's size).
    pub(crate) live: AtomicUsize,
    /// Bumped whenever an app version's declared interest becomes known (see
    /// [`Runtime::watch_interests`]).
    pub(crate) interests: tokio::sync::watch::Sender<u64>,
    compile_permits: tokio::sync::Semaphore,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The WebAssembly runtime of the process. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .field("live", &self.live_instances())
            .finish()
    }
}

impl Runtime {
    /// Builds the engine, the linker and starts the epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let d = &config.default_settings;
        if d.max_memory_bytes > config.memory_ceiling_bytes {
            return Err(RuntimeError::Settings(format!(
                "default max_memory_bytes {} exceeds memory_ceiling_bytes {}",
                d.max_memory_bytes, config.memory_ceiling_bytes
            )));
        }
        if config.epoch_tick.is_zero() {
            return Err(RuntimeError::Settings("epoch_tick must not be zero".into()));
        }
        let engine = Engine::new(&engine_config(&config))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("linking WASI: {e:#}")))?;
        bindings::App::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("linking stasis:app: {e:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), config.epoch_tick, ticker_stop.clone())?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                claims: BridgeClaims::default(),
                live: AtomicUsize::new(0),
                interests: tokio::sync::watch::channel(0).0,
                compile_permits: tokio::sync::Semaphore::new(config.compile_workers.max(1)),
                ticker_stop,
                config,
            }),
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Settings for an app that has none of its own.
    pub fn default_settings(&self) -> AppSettings {
        self.inner.config.default_settings.clone()
    }

    /// Live instances across all apps.
    pub fn live_instances(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Changes whenever an app version's declared interest in events becomes known (asked in
    /// its first call), so that the nodes can be told which events to send.
    pub fn watch_interests(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.interests.subscribe()
    }

    /// The app that created (claimed) a bridge id through this runtime, if any.
    pub fn bridge_owner(&self, bridge_id: &str) -> Option<String> {
        self.inner.claims.owner(bridge_id)
    }

    /// Validates and compiles an uploaded component off the async executor (a bounded
    /// number at a time, see [`RuntimeConfig::compile_workers`]). CPU heavy: tens of
    /// milliseconds for a small Rust app, seconds for Python or JavaScript.
    pub async fn compile(&self, wasm: Vec<u8>) -> Result<Artifact, RuntimeError> {
        let _permit = self
            .inner
            .compile_permits
            .acquire()
            .await
            .map_err(|e| RuntimeError::Worker(e.to_string()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || super::compile::compile(&inner, &wasm))
            .await
            .map_err(|e| RuntimeError::Worker(e.to_string()))?
    }

    /// Same as [`Runtime::compile`], on the current thread (startup, tools, tests).
    pub fn compile_blocking(&self, wasm: &[u8]) -> Result<Artifact, RuntimeError> {
        super::compile::compile(&self.inner, wasm)
    }

    /// Loads a compiled artifact as a new app with its own (fresh) kv and capabilities.
    /// Fast (≈0.1 ms): no compilation.
    ///
    /// The artifact must come from [`Runtime::compile`] of a runtime with the same
    /// configuration, through storage only the host writes: wasmtime checks the format and
    /// engine compatibility but cannot check the machine code itself.
    pub fn load(
        &self,
        name: &str,
        artifact: impl AsRef<[u8]>,
        settings: AppSettings,
        backend: Arc<dyn AriBackend>,
    ) -> Result<Arc<App>, RuntimeError> {
        let shared = AppShared::new(name, self.inner.config.kv_limits);
        self.load_version(&shared, artifact, settings, backend)
    }

    /// Loads a new version of an app that shares kv, capabilities and the live-call count
    /// with its other versions (`shared`, from [`App::shared`] of the old version): the hot
    /// swap path. Calls in progress keep running on the version they started with.
    pub fn load_version(
        &self,
        shared: &Arc<AppShared>,
        artifact: impl AsRef<[u8]>,
        settings: AppSettings,
        backend: Arc<dyn AriBackend>,
    ) -> Result<Arc<App>, RuntimeError> {
        App::load(
            self.inner.clone(),
            shared.clone(),
            artifact.as_ref(),
            settings,
            backend,
        )
    }
}

/// Finished instances whose memory is handed back to the kernel together (per CPU shard).
const DECOMMIT_BATCH: usize = 32;
/// Most bytes of a finished call's memory (and of each table) reset in place rather than
/// returned to the kernel. A slot keeps at most this much resident after its call ends, so
/// idle RSS is bounded by what the busiest moment already used.
const KEEP_RESIDENT: usize = 1 << 20;

fn engine_config(config: &RuntimeConfig) -> Config {
    let n = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // A Rust wasip2 component is 2–4 core instances with one memory and a few tables;
        // a componentize-py one about 14 (measured): size for the larger so a Python app can
        // use every call slot. Core instance slots are cheap; memories are the big reservation.
        .total_core_instances(n.saturating_mul(16))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(16))
        // A fiber stack is taken only while a callback runs (or awaits an import).
        .total_stacks(n)
        .max_memory_size(config.memory_ceiling_bytes)
        // Returning a finished call's memory and tables to the kernel is one `madvise` each,
        // and every `madvise` is a TLB shootdown across cores; batching them costs a few dozen
        // idle slots of RSS for a while and saves ~5 % of host CPU per call (flow bench).
        .decommit_batch_size(DECOMMIT_BATCH)
        .pagemap_scan(wasmtime::Enabled::Auto);
    // A finished call's dirty pages are found with the PAGEMAP_SCAN ioctl (Linux 6.7+) and
    // reset in place, up to KEEP_RESIDENT bytes per memory or table, instead of being
    // returned with `madvise` and faulted in again by the next call in that slot: the faults
    // and TLB shootdowns cost ~15 % of host CPU per call (flow bench). Without the ioctl,
    // keeping memory resident would mean a memset of its first KEEP_RESIDENT bytes per call
    // (a Rust guest's untouched stack), so older kernels keep `madvise`.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
    }

    let mut c = Config::new();
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .concurrency_support(false)
        .memory_reservation(config.memory_ceiling_bytes as u64)
        .memory_reservation_for_growth(0)
        .memory_guard_size(64 << 10);
    c
}

fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> Result<(), RuntimeError> {
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError::Engine(format!("epoch ticker thread: {e}")))
}
