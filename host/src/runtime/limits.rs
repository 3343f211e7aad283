//! Per-instance resource limits and the marker errors that make faults distinguishable.
//!
//! The memory cap is enforced by a [`ResourceLimiter`] that *errors* (instead of refusing
//! with `Ok(false)`) when a linear memory would grow past the app's cap: a refused
//! `memory.grow` makes a Rust guest abort through `unreachable`, which looks exactly like a
//! panic; an error raised here becomes the trap itself and carries [`MemoryCapExceeded`], so
//! the host reports out-of-memory as such (WASM-NOTES pitfall 6).
//!
//! The limiter also answers `instances()`, `tables()` and `memories()`; without them wasmtime
//! silently applies its defaults (pitfall 8).

use wasmtime::ResourceLimiter;

/// Raised (as the trap's error) when a memory would grow past the instance's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("memory cap of {limit} bytes exceeded (wanted {desired} bytes)")]
pub struct MemoryCapExceeded {
    pub limit: usize,
    pub desired: usize,
}

/// Raised by the epoch callback when a callback ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("callback deadline exceeded")]
pub struct DeadlineExceeded;

/// Limits of one instance (one call).
#[derive(Debug, Clone, Copy)]
pub struct InstanceLimiter {
    /// Most bytes of any one linear memory.
    pub max_memory_bytes: usize,
    /// Most elements of any one table.
    pub max_table_elements: usize,
}

/// Core instances, tables and memories a single component may create. A Rust wasip2
/// component uses 2–4 core instances and one memory; other languages use a few more.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                limit: self.max_memory_bytes,
                desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
