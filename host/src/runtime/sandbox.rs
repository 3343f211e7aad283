//! The WASI sandbox of one instance: deny by default, guest output into the host log.
//!
//! A Rust `wasm32-wasip2` guest imports WASI (cli, io, clocks, random, filesystem, sockets)
//! even when the app never uses it, so WASI is linked — with a context that grants nothing:
//! no preopened directories, no environment, no arguments, no network (TCP, UDP and name
//! lookup all disabled), stdin closed. Clocks and random numbers are allowed.
//!
//! stdout and stderr are captured line by line into `tracing` events tagged with the app and
//! the call (target `guest`), stderr at WARN and stdout at INFO. Output is bounded per
//! instance so a chatty guest cannot flood the log; the last stderr lines are also kept so a
//! fault report can quote the guest's panic message.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// Most bytes of guest output logged per instance; the rest is dropped (one warning).
const MAX_LOGGED_BYTES: usize = 256 * 1024;
/// Longest line; longer lines are cut.
const MAX_LINE: usize = 4096;
/// How much recent stderr to keep for fault reports.
const MAX_RECENT: usize = 2048;

/// Who an instance's output belongs to.
#[derive(Debug)]
pub struct OutputTag {
    pub app: Arc<str>,
    pub call: Arc<str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Buf {
    line: Vec<u8>,
    logged: usize,
    truncated: bool,
    /// Recent complete stderr lines, for fault reports.
    recent: String,
}

/// The capture of one stream of one instance. Cloned into every WASI stream handle the
/// guest opens, so partial lines written through different handles still join.
#[derive(Clone)]
pub struct GuestOutput {
    tag: Arc<OutputTag>,
    kind: Kind,
    buf: Arc<Mutex<Buf>>,
}

impl GuestOutput {
    fn new(tag: Arc<OutputTag>, kind: Kind) -> Self {
        Self {
            tag,
            kind,
            buf: Arc::default(),
        }
    }

    fn emit(&self, buf: &mut Buf, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return;
        }
        if buf.logged >= MAX_LOGGED_BYTES {
            if !buf.truncated {
                buf.truncated = true;
                tracing::warn!(target: "guest", app = %self.tag.app, call = %self.tag.call,
                    "guest output exceeds {MAX_LOGGED_BYTES} bytes; dropping the rest");
            }
        } else {
            buf.logged += text.len();
            match self.kind {
                Kind::Stderr => {
                    tracing::warn!(target: "guest", app = %self.tag.app, call = %self.tag.call, stream = "stderr", "{text}")
                }
                Kind::Stdout => {
                    tracing::info!(target: "guest", app = %self.tag.app, call = %self.tag.call, stream = "stdout", "{text}")
                }
            }
        }
        if self.kind == Kind::Stderr {
            if !buf.recent.is_empty() {
                buf.recent.push('\n');
            }
            buf.recent.push_str(text);
            if buf.recent.len() > MAX_RECENT {
                let mut cut = buf.recent.len() - MAX_RECENT;
                while !buf.recent.is_char_boundary(cut) {
                    cut += 1;
                }
                buf.recent.drain(..cut);
            }
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, complete) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            let room = MAX_LINE.saturating_sub(buf.line.len());
            buf.line.extend_from_slice(&body[..body.len().min(room)]);
            if complete || buf.line.len() >= MAX_LINE {
                let line = std::mem::take(&mut buf.line);
                self.emit(&mut buf, &line);
            }
        }
    }

    /// Logs a pending partial line (at the end of a callback or of the instance).
    pub fn flush_partial(&self) {
        let mut buf = self.buf.lock();
        if !buf.line.is_empty() {
            let line = std::mem::take(&mut buf.line);
            self.emit(&mut buf, &line);
        }
    }

    /// Takes the stderr lines written since the last call (for a fault report).
    pub fn take_recent(&self) -> Option<String> {
        self.flush_partial();
        let recent = std::mem::take(&mut self.buf.lock().recent);
        (!recent.is_empty()).then_some(recent)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // A synchronous stream: writes go straight to the log, no background task per handle.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_LINE)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The WASI context of one instance and the handle on its stderr capture.
pub fn wasi_context(tag: &Arc<OutputTag>) -> (WasiCtx, GuestOutput) {
    let stderr = GuestOutput::new(tag.clone(), Kind::Stderr);
    let stdout = GuestOutput::new(tag.clone(), Kind::Stdout);
    let mut b = WasiCtxBuilder::new();
    // Explicit even where it is the default: the sandbox should not change when a default does.
    b.stdout(stdout)
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(false);
    (b.build(), stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_join_and_recent_is_kept() {
        let tag = Arc::new(OutputTag {
            app: "a".into(),
            call: "c".into(),
        });
        let (_, err) = wasi_context(&tag);
        let mut s1 = err.clone();
        let mut s2 = err.clone();
        s1.write(Bytes::from_static(b"panicked at ")).unwrap();
        s2.write(Bytes::from_static(b"src/lib.rs:1\nboom")).unwrap();
        assert_eq!(
            err.take_recent().as_deref(),
            Some("panicked at src/lib.rs:1\nboom")
        );
        assert_eq!(err.take_recent(), None);
    }
}
