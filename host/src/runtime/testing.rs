//! Test support shared by the runtime's tests, the host's end-to-end tests and the
//! benchmark: a [`RecordingBackend`] and helpers that build and find the plugins.
//!
//! Public (not `#[cfg(test)]`) because integration tests and benches are separate crates.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::backend::{AriBackend, AriError, BoxFuture, Operation, Origin, Outcome};

type DelayFilter = dyn Fn(&Operation) -> bool + Send + Sync;
type Responder = dyn Fn(&Origin, &Operation) -> Option<Result<Outcome, AriError>> + Send + Sync;

/// The context of a fresh inbound call to exten 8000 on node `02:00:00:00:00:0a`, for
/// benchmarks that start calls without a node.
pub fn inbound_call(app: &str, id: &str) -> crate::runtime::CallContext {
    use crate::runtime::{CallContext, ChannelSnapshot, ChannelState};
    CallContext {
        app: app.into(),
        node: "02:00:00:00:00:0a".into(),
        channel: ChannelSnapshot {
            id: id.into(),
            name: format!("PJSIP/alice-{id}"),
            state: ChannelState::Ring,
            context: "default".into(),
            exten: "8000".into(),
            ..ChannelSnapshot::default()
        },
        args: vec![],
    }
}

/// A backend for benchmarks: answers like [`RecordingBackend`]'s defaults, records nothing,
/// only counts operations (`ops`).
#[derive(Default)]
pub struct CountingBackend {
    pub ops: std::sync::atomic::AtomicUsize,
}

impl AriBackend for CountingBackend {
    fn execute<'a>(
        &'a self,
        _origin: &'a Origin,
        op: Operation,
    ) -> BoxFuture<'a, Result<Outcome, AriError>> {
        self.ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = RecordingBackend::default_outcome(&op);
        Box::pin(async move { outcome })
    }
}

/// A backend that records every operation and answers with scripted outcomes.
///
/// Default outcomes: `Value(id)` for id-returning operations (the bridge id, the runtime's
/// playback or channel id, the recording name), `Value("value-of-<name>")` for
/// `GetVariable`, `Raw{200, "{}"}` for raw requests, `Done` otherwise. A responder set with
/// [`RecordingBackend::respond_with`] overrides them when it returns `Some`.
#[derive(Default)]
pub struct RecordingBackend {
    ops: Mutex<Vec<(Origin, Operation)>>,
    responder: Mutex<Option<Arc<Responder>>>,
    delay: Mutex<Option<(Duration, Arc<DelayFilter>)>>,
    changed: tokio::sync::Notify,
}

impl RecordingBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Everything executed so far, in order.
    pub fn operations(&self) -> Vec<(Origin, Operation)> {
        self.ops.lock().clone()
    }

    /// The operations a given call (its channel id) made, in order.
    pub fn operations_of(&self, channel: &str) -> Vec<Operation> {
        self.ops
            .lock()
            .iter()
            .filter(|(o, _)| o.channel == channel)
            .map(|(_, op)| op.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ops.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.ops.lock().clear();
    }

    /// Scripts outcomes: `f` returns `Some(outcome)` to override the default.
    pub fn respond_with(
        &self,
        f: impl Fn(&Origin, &Operation) -> Option<Result<Outcome, AriError>> + Send + Sync + 'static,
    ) {
        *self.responder.lock() = Some(Arc::new(f));
    }

    /// Makes every operation take `delay` (a slow node); `None` removes the delay.
    pub fn set_delay(&self, delay: Option<Duration>) {
        *self.delay.lock() = delay.map(|d| (d, Arc::new(|_: &Operation| true) as Arc<DelayFilter>));
    }

    /// Makes the operations matching `which` take `delay`.
    pub fn delay_where(
        &self,
        delay: Duration,
        which: impl Fn(&Operation) -> bool + Send + Sync + 'static,
    ) {
        *self.delay.lock() = Some((delay, Arc::new(which)));
    }

    /// Waits until `pred` holds for the recorded operations, or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[(Origin, Operation)]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if pred(&self.ops.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.ops.lock());
            }
        }
    }

    /// The outcome used when no responder overrides it.
    pub fn default_outcome(op: &Operation) -> Result<Outcome, AriError> {
        Ok(match op {
            Operation::GetOrCreateBridge { bridge, .. } => Outcome::Value(bridge.clone()),
            Operation::Play { playback_id, .. } | Operation::PlayOnBridge { playback_id, .. } => {
                Outcome::Value(playback_id.clone())
            }
            Operation::Originate(c) | Operation::Dial(c) => Outcome::Value(c.channel_id.clone()),
            Operation::GetVariable { name, .. } => Outcome::Value(format!("value-of-{name}")),
            Operation::Record { options, .. } => Outcome::Value(options.name.clone()),
            Operation::Raw { .. } => Outcome::Raw {
                status: 200,
                body: "{}".into(),
            },
            _ => Outcome::Done,
        })
    }
}

impl AriBackend for RecordingBackend {
    fn execute<'a>(
        &'a self,
        origin: &'a Origin,
        op: Operation,
    ) -> BoxFuture<'a, Result<Outcome, AriError>> {
        let responder = self.responder.lock().clone();
        let outcome = responder
            .and_then(|f| f(origin, &op))
            .unwrap_or_else(|| Self::default_outcome(&op));
        let delay = self
            .delay
            .lock()
            .as_ref()
            .and_then(|(d, which)| which(&op).then_some(*d));
        self.ops.lock().push((origin.clone(), op));
        self.changed.notify_waiters();
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            outcome
        })
    }
}

/// The workspace root (the parent of the `host` crate).
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `plugins/build.sh` puts components: `$CARGO_TARGET_DIR/plugins` or
/// `<workspace>/target/plugins`.
pub fn plugins_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("plugins")
}

/// Runs `plugins/build.sh` once per process (later calls return the first result).
pub fn build_plugins() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = workspace_dir().join("plugins/build.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg("-q")
                .current_dir(workspace_dir())
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed ({}):\n{}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
}

/// The component of plugin `name`, building the plugins first if needed.
pub fn plugin_wasm(name: &str) -> Result<Vec<u8>, String> {
    build_plugins()?;
    let path = plugins_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The compiled artifact of plugin `name` for `runtime`, cached across processes.
///
/// Cranelift takes 10–30 s for a Python or JavaScript component, so the serialized artifact is
/// kept under `<plugins_dir>/.artifacts/<name>-<engine>-<sha256>.cwasm`, keyed by the
/// component's SHA-256 and a fingerprint of the engine (wasmtime's precompile compatibility
/// hash: version, compiler and memory settings). A cached file that does not deserialize is
/// recompiled; writing is atomic (temp + rename) and best effort. Older artifacts of the same
/// plugin and engine are removed when a new one is written. Synchronous: call it from
/// `spawn_blocking` in async code.
pub fn plugin_artifact(runtime: &super::Runtime, name: &str) -> Result<Vec<u8>, String> {
    use std::hash::{Hash, Hasher};
    // One compile at a time in this process: parallel tests wanting the same plugin wait for
    // the first one's artifact instead of compiling it again.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let wasm = plugin_wasm(name)?;
    let engine = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        runtime
            .inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut h);
        h.finish()
    };
    let sha = crate::store::sha256_hex(&wasm);
    let dir = plugins_dir().join(".artifacts");
    let prefix = format!("{name}-{engine:016x}-");
    let path = dir.join(format!("{prefix}{sha}.cwasm"));
    if let Ok(bytes) = std::fs::read(&path)
        && super::compile::deserialize(&runtime.inner, &bytes).is_ok()
    {
        return Ok(bytes);
    }
    let artifact = runtime
        .compile_blocking(&wasm)
        .map_err(|e| format!("compiling plugin {name}: {e}"))?;
    let tmp = dir.join(format!(".{prefix}{sha}.{}.tmp", std::process::id()));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, &artifact.bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => {
            let stale = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    let f = e.file_name().to_string_lossy().into_owned();
                    f.starts_with(&prefix) && f.ends_with(".cwasm") && e.path() != path
                });
            for entry in stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(plugin = name, error = %e, "cannot cache the compiled plugin");
        }
    }
    Ok(artifact.bytes)
}

/// Benchmark support: instantiates a call of `app`, runs `on-start`, then runs the callback of
/// `event` `n` times on that one instance and returns the duration of each run.
pub async fn time_callbacks(
    app: &Arc<super::App>,
    ctx: super::CallContext,
    event: super::CallEvent,
    n: usize,
) -> Result<Vec<Duration>, super::Fault> {
    super::call::time_callbacks(app, ctx, event, n).await
}
