//! Typed reasons a call's instance failed, and how a wasmtime error maps to one.
//!
//! A fault ends the callback it happened in; the runtime then logs it (tagged with app and
//! call), applies the app's [`FaultPolicy`] to the call's channel and drops the instance.
//! Nothing else is affected: every call has its own store.

use std::time::Duration;

use wasmtime::Trap;

use super::limits::{DeadlineExceeded, MemoryCapExceeded};

/// What to do with a call whose instance faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultPolicy {
    /// Hang the channel up (`DELETE /channels/{id}`).
    #[default]
    Hangup,
    /// Leave the app and continue in the dialplan where the channel was.
    Continue,
}

/// Why an instance stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The instance could not be created (pool exhausted, initial memory above the cap, ...).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The guest trapped; a Rust panic is a trap (`unreachable` after the panic hook), and
    /// `guest_stderr` then holds the panic message.
    // One log line: the stderr lines are joined with " | ".
    #[error("trap: {trap}{}", guest_stderr.as_ref().map(|s| format!("; guest stderr: {}", s.replace('\n', " | "))).unwrap_or_default())]
    Trap {
        trap: String,
        guest_stderr: Option<String>,
    },
    /// The callback ran past its deadline.
    #[error("deadline of {0:?} exceeded")]
    Deadline(Duration),
    /// A linear memory would have grown past the instance's cap.
    #[error("out of memory: cap of {limit} bytes exceeded")]
    OutOfMemory { limit: usize },
    /// Any other error raised while running the callback (host side).
    #[error("host error: {0}")]
    Host(String),
}

impl Fault {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Instantiate(_) => "instantiate",
            Fault::Trap { .. } => "trap",
            Fault::Deadline(_) => "deadline",
            Fault::OutOfMemory { .. } => "out_of_memory",
            Fault::Host(_) => "host",
        }
    }

    /// Maps an error from a callback to a fault. `deadline` is the callback's deadline,
    /// `stderr` the guest's recent stderr (the panic message, if any).
    pub(crate) fn classify(
        err: &wasmtime::Error,
        deadline: Duration,
        stderr: Option<String>,
    ) -> Fault {
        if err.downcast_ref::<DeadlineExceeded>().is_some() {
            return Fault::Deadline(deadline);
        }
        if let Some(m) = err.downcast_ref::<MemoryCapExceeded>() {
            return Fault::OutOfMemory { limit: m.limit };
        }
        if let Some(trap) = err.downcast_ref::<Trap>() {
            if *trap == Trap::Interrupt {
                return Fault::Deadline(deadline);
            }
            return Fault::Trap {
                trap: trap.to_string(),
                guest_stderr: stderr,
            };
        }
        Fault::Host(format!("{err:#}"))
    }
}
