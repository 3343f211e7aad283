//! The WebAssembly runtime: compiles apps once, runs one sandboxed instance per call.
//!
//! - [`Runtime`] (engine.rs): one per process. One wasmtime `Engine` with the pooling
//!   allocator and epoch interruption, one `Linker` (WASI p2 deny-by-default + the
//!   `stasis:app` imports), an epoch ticker thread.
//! - [`Runtime::compile`] (compile.rs): validate an upload against the world and compile it
//!   to a serialized [`Artifact`], off the executor. [`Runtime::load`] turns an artifact into
//!   an [`App`] in about 0.1 ms; nothing is compiled on the call path.
//! - [`App::start_call`] (call.rs): one instance per call, owned by one task that runs the
//!   call's callbacks in order; [`CallHandle::deliver`] queues events without blocking.
//! - Limits (limits.rs, engine.rs): per-callback deadline, per-instance memory cap, per-app
//!   and runtime-wide caps on live instances. Faults (fault.rs) are typed, logged, and end
//!   the call per [`FaultPolicy`]; other calls never notice.
//! - Imports (imports.rs) check capabilities (capability.rs) and go through the
//!   [`AriBackend`](crate::backend::AriBackend) trait; kv.rs is the per-app store; sandbox.rs
//!   the WASI context and guest output capture.
//! - [`testing`]: a recording backend and plugin helpers for tests and benchmarks.
//!
//! ```no_run
//! # async fn demo(wasm: Vec<u8>, backend: std::sync::Arc<dyn stasis_host::backend::AriBackend>,
//! #               ctx: stasis_host::runtime::CallContext) -> anyhow::Result<()> {
//! use stasis_host::runtime::*;
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let artifact = runtime.compile(wasm).await?;          // at upload; persist artifact.bytes
//! let app = runtime.load("conference", &artifact, runtime.default_settings(), backend)?;
//! let call = app.start_call(ctx)?;                       // StasisStart
//! call.deliver(CallEvent::Up, None);                     // ChannelStateChange → Up
//! call.deliver(CallEvent::End, None);                    // StasisEnd
//! let report = call.finished().await;
//! assert!(report.fault.is_none());
//! # Ok(()) }
//! ```

mod app;
mod bindings;
mod call;
mod capability;
mod compile;
mod engine;
mod fault;
mod imports;
mod kv;
mod limits;
mod sandbox;
pub mod testing;
mod types;

#[cfg(test)]
mod tests;

pub use app::{App, AppSettings, AppShared, EventInterest};
pub use call::{CallHandle, CallReport, StartError};
pub use compile::{Artifact, CALLBACKS_EXPORT, INTEREST_EXPORT};
pub use engine::{Runtime, RuntimeConfig, RuntimeError};
pub use fault::{Fault, FaultPolicy};
pub use kv::{KvError, KvLimits, KvStore};
pub use types::{
    CallContext, CallEvent, CallerId, ChannelSnapshot, ChannelState, NodeEvent, NodeStatus,
    PlaybackInfo, PlaybackState,
};
