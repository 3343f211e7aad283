//! One call: its slot, its instance, its event queue and the task that owns them.
//!
//! Exactly one task per call owns the call's `Store`, so callbacks of a call run one at a
//! time, in queue order, without locks; different calls are different tasks and run
//! concurrently. [`CallHandle::deliver`] only pushes onto an unbounded queue, so the
//! dispatcher never waits on a guest.
//!
//! Life of a call: [`App::start_call`](super::App::start_call) reserves a slot (per-app and
//! runtime-wide counters; refused at the cap, never queued) and grants the call's channel;
//! the task instantiates, runs `on-start`, then one callback per queued event until `End`
//! (`on-end`), then drops the instance. A fault ends the callback with a typed [`Fault`],
//! the instance is dropped at once, the app's [`FaultPolicy`](super::FaultPolicy) is applied
//! to the channel through the backend, and later events are discarded. Either way the slot
//! is released, the channel and the call's playbacks/recordings are revoked, and
//! [`CallHandle::finished`] resolves with a [`CallReport`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::app::App;
use super::bindings::{self, wit};
use super::capability::Resource;
use super::fault::{Fault, FaultPolicy};
use super::limits::{DeadlineExceeded, InstanceLimiter};
use super::sandbox::{self, GuestOutput, OutputTag};
use super::types::{CallContext, CallEvent, ChannelSnapshot};
use crate::backend::{AriError, Operation, Origin};

/// Extra time the executor-side timeout allows beyond a callback's deadline. The epoch
/// callback normally fires first; this one catches a callback stuck awaiting the host.
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);
/// Budget of the hangup/continue request sent after a fault.
const FAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Most elements of a table (Rust guests use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Why a call could not start. Logged by the runtime at WARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("app {app} is at its cap of {limit} live calls")]
    AtCapacity { app: String, limit: usize },
    #[error("the runtime is at its cap of {limit} live instances")]
    RuntimeFull { limit: usize },
    #[error("start_call must run inside a tokio runtime")]
    NoExecutor,
}

/// How a call ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallReport {
    /// Why the instance stopped early, if it did.
    pub fault: Option<Fault>,
    /// The callback that faulted (`instantiate` if the instance was never created).
    pub fault_callback: Option<&'static str>,
    /// The outcome of the fault policy's request (hangup or continue).
    pub fault_action: Option<Result<(), AriError>>,
    /// Callbacks that completed.
    pub callbacks_run: usize,
    /// Whether `on-end` ran to completion.
    pub ended: bool,
    /// Events that were queued when the instance went away, and discarded.
    pub discarded_events: usize,
}

/// Boxed in the queue: tokio's unbounded channel allocates slots in blocks of 32, and a
/// pointer-sized slot keeps an idle call's queue at a few hundred bytes instead of ~10 KiB.
struct Msg {
    /// `None`: only the snapshot changed (an event the app did not ask for).
    event: Option<CallEvent>,
    snapshot: Option<ChannelSnapshot>,
    /// Acknowledges the event to its source once its callback has run.
    receipt: Option<crate::event::Receipt>,
}

/// A live call. Cheap to clone.
#[derive(Clone)]
pub struct CallHandle {
    tx: mpsc::UnboundedSender<Box<Msg>>,
    done: watch::Receiver<Option<CallReport>>,
    channel: Arc<str>,
}

impl std::fmt::Debug for CallHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHandle")
            .field("channel", &self.channel)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl CallHandle {
    /// The call's channel id.
    pub fn channel_id(&self) -> &str {
        &self.channel
    }

    /// Queues an event for the call; never blocks. `snapshot` is the channel as of this
    /// event (what the guest's context shows from now on); `None` keeps the previous one.
    /// Events for a call that has finished are discarded (DEBUG log).
    pub fn deliver(&self, event: CallEvent, snapshot: Option<ChannelSnapshot>) {
        self.deliver_with(event, snapshot, None);
    }

    /// [`CallHandle::deliver`], with a receipt dropped (the event acknowledged) once the
    /// event's callback has run, or at once if the call has finished.
    pub fn deliver_with(
        &self,
        event: CallEvent,
        snapshot: Option<ChannelSnapshot>,
        receipt: Option<crate::event::Receipt>,
    ) {
        if let Err(e) = self.tx.send(Box::new(Msg {
            event: Some(event),
            snapshot,
            receipt,
        })) {
            let event = e.0.event.as_ref().map_or("", CallEvent::callback_name);
            tracing::debug!(call = %self.channel, event, "event for a finished call discarded");
        }
    }

    /// For an event the call's app did not ask for (see
    /// [`App::wants_event`](super::App::wants_event)): no callback runs, but the channel as
    /// of the event becomes the context of the next one.
    pub fn update_snapshot(
        &self,
        snapshot: ChannelSnapshot,
        receipt: Option<crate::event::Receipt>,
    ) {
        let _ = self.tx.send(Box::new(Msg {
            event: None,
            snapshot: Some(snapshot),
            receipt,
        }));
    }

    /// Whether the instance is gone.
    pub fn is_finished(&self) -> bool {
        self.done.borrow().is_some() || self.tx.is_closed()
    }

    /// Resolves once the instance has been dropped (after `End` or a fault).
    pub async fn finished(&self) -> CallReport {
        let mut done = self.done.clone();
        match done.wait_for(Option::is_some).await {
            Ok(report) => report.clone().unwrap_or_default(),
            // The task ended without reporting: it panicked or its executor shut down.
            Err(_) => CallReport {
                fault: Some(Fault::Host(
                    "the call's task ended without a report (panic or executor shutdown)".into(),
                )),
                ..CallReport::default()
            },
        }
    }
}

/// The data of a call's `Store`: WASI, limits, and what the imports need.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: InstanceLimiter,
    /// When the running callback must be done (read by the epoch callback).
    deadline: Instant,
    pub(crate) imports: ImportCtx,
}

impl CallState {
    /// A call's store data without an instance, to drive the import implementations
    /// directly in tests.
    #[cfg(test)]
    pub(crate) fn for_test(app: &Arc<App>, channel: &str) -> Self {
        let tag = Arc::new(OutputTag {
            app: app.shared.name.clone(),
            call: channel.into(),
        });
        let (wasi, _) = sandbox::wasi_context(&tag);
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: InstanceLimiter {
                max_memory_bytes: app.settings.max_memory_bytes,
                max_table_elements: MAX_TABLE_ELEMENTS,
            },
            deadline: Instant::now(),
            imports: ImportCtx {
                app: app.clone(),
                origin: Origin {
                    app: app.shared.name.to_string(),
                    node: "test-node".into(),
                    channel: channel.into(),
                },
                tag,
                owned: Vec::new(),
                waited: Arc::default(),
            },
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What the import implementations (imports.rs) know about the call.
pub(crate) struct ImportCtx {
    pub(crate) app: Arc<App>,
    pub(crate) origin: Origin,
    pub(crate) tag: Arc<OutputTag>,
    /// Playbacks and recordings this call started: revoked when it ends.
    pub(crate) owned: Vec<Resource>,
    /// Time the current callback spends waiting on ARI: the callback deadline budgets the
    /// guest's own time.
    pub(crate) waited: Arc<HostWait>,
}

/// Time one callback spent waiting on ARI requests, finished and in flight.
#[derive(Default)]
pub(crate) struct HostWait {
    finished_ns: std::sync::atomic::AtomicU64,
    since: parking_lot::Mutex<Option<Instant>>,
}

impl HostWait {
    fn reset(&self) {
        self.finished_ns
            .store(0, std::sync::atomic::Ordering::Relaxed);
        *self.since.lock() = None;
    }

    /// A request starts.
    pub(crate) fn begin(&self) {
        *self.since.lock() = Some(Instant::now());
    }

    /// The request started by [`HostWait::begin`] is over.
    pub(crate) fn end(&self) {
        if let Some(since) = self.since.lock().take() {
            let ns = since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            self.finished_ns
                .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Waiting so far, the request in flight included, at most `cap`.
    fn total(&self, cap: Duration) -> Duration {
        let finished =
            Duration::from_nanos(self.finished_ns.load(std::sync::atomic::Ordering::Relaxed));
        let in_flight = self.since.lock().map_or(Duration::ZERO, |s| s.elapsed());
        (finished + in_flight).min(cap)
    }
}

/// A reserved live-call slot; releasing it (drop) also revokes the call's channel.
struct Slot {
    app: Arc<App>,
    channel: String,
}

impl Slot {
    fn reserve(app: &Arc<App>, channel: &str) -> Result<Self, StartError> {
        let limit = app.settings.max_live_calls;
        let shared = &app.shared;
        if shared
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            let e = StartError::AtCapacity {
                app: shared.name.to_string(),
                limit,
            };
            tracing::warn!(app = %shared.name, call = channel, "call refused: {e}");
            return Err(e);
        }
        let rt = &app.runtime;
        let max = rt.config.max_instances as usize;
        if rt
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            shared.live.fetch_sub(1, Ordering::AcqRel);
            let e = StartError::RuntimeFull { limit: max };
            tracing::warn!(app = %shared.name, call = channel, "call refused: {e}");
            return Err(e);
        }
        shared.caps.grant(&Resource::Channel(channel.to_owned()));
        app.calls.fetch_add(1, Ordering::AcqRel);
        Ok(Self {
            app: app.clone(),
            channel: channel.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let shared = &self.app.shared;
        shared
            .caps
            .revoke(&Resource::Channel(std::mem::take(&mut self.channel)));
        shared.live.fetch_sub(1, Ordering::AcqRel);
        self.app.calls.fetch_sub(1, Ordering::AcqRel);
        self.app.runtime.live.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn start(
    app: &Arc<App>,
    ctx: CallContext,
    receipt: Option<crate::event::Receipt>,
) -> Result<CallHandle, StartError> {
    let executor = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoExecutor)?;
    let slot = Slot::reserve(app, &ctx.channel.id)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done) = watch::channel(None);
    let channel: Arc<str> = ctx.channel.id.as_str().into();
    executor.spawn(async move {
        let report = drive(slot, ctx, rx, false, receipt).await;
        done_tx.send_replace(Some(report));
    });
    Ok(CallHandle { tx, done, channel })
}

pub(crate) async fn run_inline(
    app: &Arc<App>,
    ctx: CallContext,
    events: Vec<CallEvent>,
) -> Result<CallReport, StartError> {
    let slot = Slot::reserve(app, &ctx.channel.id)?;
    let (tx, rx) = mpsc::unbounded_channel();
    for event in events {
        let _ = tx.send(Box::new(Msg {
            event: Some(event),
            snapshot: None,
            receipt: None,
        }));
    }
    drop(tx);
    Ok(drive(slot, ctx, rx, true, None).await)
}

/// The instance of a call.
struct Instance {
    store: Store<CallState>,
    instance: wasmtime::component::Instance,
    bindings: bindings::App,
    stderr: GuestOutput,
}

/// What to run: `on-start`, or the callback of an event.
enum Callback<'a> {
    /// `interest.on-event-types`, whose answer is stored on the app.
    Interest(wasmtime::component::ComponentExportIndex),
    Start,
    Event(&'a CallEvent),
}

impl Callback<'_> {
    fn name(&self) -> &'static str {
        match self {
            Callback::Interest(_) => "on-event-types",
            Callback::Start => "on-start",
            Callback::Event(e) => e.callback_name(),
        }
    }
}

type CallbackFuture<'a> = Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send + 'a>>;

impl Instance {
    async fn new(app: &Arc<App>, origin: Origin, tag: Arc<OutputTag>) -> Result<Self, Fault> {
        let settings = &app.settings;
        let (wasi, stderr) = sandbox::wasi_context(&tag);
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limiter: InstanceLimiter {
                max_memory_bytes: settings.max_memory_bytes,
                max_table_elements: MAX_TABLE_ELEMENTS,
            },
            // Instantiation may run guest initialisers: give it a callback's budget too.
            deadline: Instant::now() + settings.callback_deadline,
            imports: ImportCtx {
                app: app.clone(),
                origin,
                tag,
                owned: Vec::new(),
                waited: Arc::default(),
            },
        };
        let mut store = Store::new(&app.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Every tick: past the deadline → trap; otherwise yield to the executor so a busy
        // guest shares its thread, and check again next tick.
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            let cap = state.imports.app.settings.max_host_wait;
            if Instant::now() >= state.deadline + state.imports.waited.total(cap) {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        let deadline = settings.callback_deadline;
        let instantiate = async {
            let instance = app.pre.instantiate_async(&mut store).await?;
            let bindings = app.indices.load(&mut store, &instance)?;
            Ok::<_, wasmtime::Error>((instance, bindings))
        };
        match tokio::time::timeout(deadline + TIMEOUT_SLACK, Box::pin(instantiate)).await {
            Ok(Ok((instance, bindings))) => Ok(Self {
                store,
                instance,
                bindings,
                stderr,
            }),
            Ok(Err(e)) => Err(match Fault::classify(&e, deadline, stderr.take_recent()) {
                // Anything but a limit we enforce is a failure to instantiate (e.g. the pool
                // is exhausted), not a guest trap.
                f @ (Fault::OutOfMemory { .. } | Fault::Deadline(_)) => f,
                _ => Fault::Instantiate(format!("{e:#}")),
            }),
            Err(_) => Err(Fault::Deadline(deadline)),
        }
    }

    async fn run(
        &mut self,
        cb: Callback<'_>,
        ctx: &wit::CallContext,
        deadline: Duration,
    ) -> Result<(), Fault> {
        let started = Instant::now();
        self.store.data_mut().deadline = started + deadline;
        let waited = self.store.data().imports.waited.clone();
        waited.reset();
        let cap = self.store.data().imports.app.settings.max_host_wait;
        self.store.set_epoch_deadline(1);
        // Fault reports quote only this callback's stderr.
        let _ = self.stderr.take_recent();
        let cbs = self.bindings.stasis_app_callbacks();
        let store = &mut self.store;
        let playback;
        let node;
        let instance = self.instance;
        let fut: CallbackFuture<'_> = match cb {
            Callback::Interest(index) => Box::pin(async move {
                let app = store.data().imports.app.clone();
                let func = instance.get_typed_func::<(), (Vec<String>,)>(&mut *store, &index)?;
                let (types,) = func.call_async(&mut *store, ()).await?;
                let interest = super::app::EventInterest::from_types(types);
                if app.interest.set(interest).is_ok() {
                    app.runtime.interests.send_modify(|n| *n += 1);
                }
                Ok(())
            }),
            Callback::Start => Box::pin(cbs.call_on_start(store, ctx)),
            Callback::Event(CallEvent::Up) => Box::pin(cbs.call_on_up(store, ctx)),
            Callback::Event(CallEvent::Dtmf { digit, duration_ms }) => {
                Box::pin(cbs.call_on_dtmf(store, ctx, digit, *duration_ms))
            }
            Callback::Event(CallEvent::PlaybackFinished(p)) => {
                playback = wit::Playback::from(p.clone());
                Box::pin(cbs.call_on_playback_finished(store, ctx, &playback))
            }
            Callback::Event(CallEvent::Other { kind, json }) => {
                Box::pin(cbs.call_on_event(store, ctx, kind, &json[..]))
            }
            Callback::Event(CallEvent::Node(n)) => {
                node = wit::NodeEvent::from(n.clone());
                Box::pin(cbs.call_on_node(store, ctx, &node))
            }
            Callback::Event(CallEvent::End) => Box::pin(cbs.call_on_end(store, ctx)),
        };
        // The executor-side limit moves with the time spent waiting on ARI, like the
        // guest-side one; each request is bounded by its own timeout.
        let limit = || started + deadline + TIMEOUT_SLACK + waited.total(cap);
        let mut fut = fut;
        let result = loop {
            tokio::select! {
                done = &mut fut => break Ok(done),
                _ = tokio::time::sleep_until(limit().into()) => {
                    if Instant::now() >= limit() {
                        break Err(());
                    }
                }
            }
        };
        self.stderr.flush_partial();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Fault::classify(&e, deadline, self.stderr.take_recent())),
            // Stuck awaiting the host past the deadline; dropping the future unwinds the
            // guest's fiber and the instance is discarded.
            Err(_) => Err(Fault::Deadline(deadline)),
        }
    }
}

/// Runs a call from instantiation to drop. `inline`: events come from a finite list, so
/// running out of them is normal rather than an abandoned call.
async fn drive(
    slot: Slot,
    ctx: CallContext,
    mut rx: mpsc::UnboundedReceiver<Box<Msg>>,
    inline: bool,
    start_receipt: Option<crate::event::Receipt>,
) -> CallReport {
    // Acknowledges the StasisStart once on-start has run (or the call could not start).
    let mut start_receipt = start_receipt;
    let app = slot.app.clone();
    let deadline = app.settings.callback_deadline;
    let origin = Origin {
        app: app.shared.name.to_string(),
        node: ctx.node.clone(),
        channel: ctx.channel.id.clone(),
    };
    let tag = Arc::new(OutputTag {
        app: app.shared.name.clone(),
        call: ctx.channel.id.as_str().into(),
    });
    let mut report = CallReport::default();
    let mut fault = None;
    let mut instance = match Instance::new(&app, origin.clone(), tag.clone()).await {
        Ok(i) => Some(i),
        Err(f) => {
            fault = Some((f, "instantiate"));
            None
        }
    };
    if let Some(inst) = instance.as_mut() {
        let mut wctx: wit::CallContext = ctx.into();
        // The event being handled and its receipt; `None` before on-start.
        let mut next: Option<(CallEvent, Option<crate::event::Receipt>)> = None;
        // The app's declaration of the events it wants, once per app version. A trap here is
        // the call's fault like any callback's (the next call asks again).
        let asked = match app.interest_export.filter(|_| app.interest.get().is_none()) {
            Some(index) => inst.run(Callback::Interest(index), &wctx, deadline).await,
            None => Ok(()),
        };
        if let Err(f) = asked {
            fault = Some((f, "on-event-types"));
        }
        while fault.is_none() {
            let cb = match &next {
                None => Callback::Start,
                Some((event, _)) => Callback::Event(event),
            };
            let name = cb.name();
            if let Err(f) = inst.run(cb, &wctx, deadline).await {
                fault = Some((f, name));
                break;
            }
            report.callbacks_run += 1;
            // Handled: acknowledge now, not when the next event replaces this one.
            start_receipt.take();
            if let Some((event, receipt)) = next.as_mut() {
                receipt.take();
                if *event == CallEvent::End {
                    report.ended = true;
                    break;
                }
            }
            // The next event the app wants. Those it did not ask for (queued before its
            // declaration was known) and snapshot-only updates still move its context on.
            let received = loop {
                let Some(mut m) = rx.recv().await else {
                    break None;
                };
                if let Some(s) = m.snapshot.take() {
                    wctx.channel = s.into();
                }
                match m.event.take() {
                    Some(CallEvent::Other { kind, .. }) if !app.wants_event(&kind) => {}
                    None => {}
                    Some(event) => break Some((event, m.receipt.take())),
                }
            };
            let Some((event, receipt)) = received else {
                if !inline {
                    tracing::warn!(app = %tag.app, call = %tag.call,
                        "call handle dropped before End; dropping the instance");
                }
                break;
            };
            if let CallEvent::PlaybackFinished(p) = &event {
                // The playback is over: the app no longer needs to act on it.
                let r = Resource::Playback(p.id.clone());
                app.shared.caps.revoke(&r);
                inst.store.data_mut().imports.owned.retain(|o| o != &r);
            }
            next = Some((event, receipt));
        }
    }

    // Tear down: revoke what the call started, drop the instance (frees its pool slot).
    if let Some(mut inst) = instance.take() {
        for r in std::mem::take(&mut inst.store.data_mut().imports.owned) {
            app.shared.caps.revoke(&r);
        }
        inst.stderr.flush_partial();
        drop(inst);
    }
    rx.close();
    while rx.try_recv().is_ok() {
        report.discarded_events += 1;
    }
    if report.discarded_events > 0 {
        tracing::debug!(app = %tag.app, call = %tag.call, n = report.discarded_events,
            "events after the end of the call discarded");
    }
    drop(slot);

    if let Some((f, callback)) = fault {
        tracing::error!(app = %tag.app, call = %tag.call, fault = f.kind(), callback,
            policy = ?app.settings.on_fault, "call faulted: {f}");
        report.fault_action = Some(apply_fault_policy(&app, &origin).await);
        report.fault = Some(f);
        report.fault_callback = Some(callback);
    }
    report
}

/// Hangs the channel up or sends it back to the dialplan, per the app's policy.
async fn apply_fault_policy(app: &App, origin: &Origin) -> Result<(), AriError> {
    let channel = origin.channel.clone();
    let op = match app.settings.on_fault {
        FaultPolicy::Hangup => Operation::Hangup {
            channel,
            reason: None,
        },
        FaultPolicy::Continue => Operation::Continue {
            channel,
            context: None,
            exten: None,
            priority: None,
        },
    };
    let result =
        match tokio::time::timeout(FAULT_ACTION_TIMEOUT, app.backend.execute(origin, op)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(AriError::Timeout("fault policy request timed out".into())),
        };
    if let Err(e) = &result {
        tracing::warn!(app = %origin.app, call = %origin.channel, "fault policy request failed: {e}");
    }
    result
}

/// Benchmark support (see `testing::time_callbacks`): instantiates, runs `on-start`, then
/// runs `event`'s callback `n` times on the same instance, timing each run; drops.
pub(crate) async fn time_callbacks(
    app: &Arc<App>,
    ctx: CallContext,
    event: CallEvent,
    n: usize,
) -> Result<Vec<Duration>, Fault> {
    let slot = Slot::reserve(app, &ctx.channel.id).map_err(|e| Fault::Host(e.to_string()))?;
    let deadline = app.settings.callback_deadline;
    let origin = Origin {
        app: app.shared.name.to_string(),
        node: ctx.node.clone(),
        channel: ctx.channel.id.clone(),
    };
    let tag = Arc::new(OutputTag {
        app: app.shared.name.clone(),
        call: ctx.channel.id.as_str().into(),
    });
    let mut inst = Instance::new(app, origin, tag).await?;
    let wctx: wit::CallContext = ctx.into();
    inst.run(Callback::Start, &wctx, deadline).await?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        inst.run(Callback::Event(&event), &wctx, deadline).await?;
        times.push(t.elapsed());
    }
    drop(inst);
    drop(slot);
    Ok(times)
}
