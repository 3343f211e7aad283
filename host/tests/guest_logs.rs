//! Guest output, faults and denials reach the host's log with the app and the call.
//!
//! Its own test binary, so that the log capture can be the process-wide subscriber.

use std::sync::Arc;

use parking_lot::Mutex;
use stasis_host::runtime::testing::{RecordingBackend, inbound_call, plugin_wasm};
use stasis_host::runtime::{AppSettings, CallContext, CallEvent, Fault, Runtime, RuntimeConfig};

/// A `tracing` subscriber writing into a buffer, for log assertions.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn guest_output_faults_and_denials_are_logged_with_app_and_call() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    // Process-wide and before anything logs: a thread's own default races with callsites
    // first hit on other threads (tracing caches a callsite's interest when it is first
    // hit), which dropped lines now and then when this test ran among the runtime's others.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 16,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let wasm = plugin_wasm("probe").expect("plugins build");
    let artifact = runtime.compile_blocking(&wasm).expect("compile");
    let app = runtime
        .load(
            "rt-logs",
            &artifact,
            AppSettings::default(),
            RecordingBackend::new(),
        )
        .expect("load");
    let ctx = |id: &str, args: &[&str]| CallContext {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..inbound_call("rt-logs", id)
    };

    let r = app
        .run_call(ctx("log-1", &["stderr", "hello from the guest"]), vec![])
        .await
        .unwrap();
    assert_eq!(r.fault, None);
    let r = app
        .run_call(ctx("log-2", &["panic"]), vec![])
        .await
        .unwrap();
    assert!(matches!(r.fault, Some(Fault::Trap { .. })));
    let r = app
        .run_call(ctx("log-3", &["foreign", "nobody"]), vec![])
        .await
        .unwrap();
    assert_eq!(r.fault, None);
    let r = app
        .run_call(ctx("log-4", &["exercise"]), vec![CallEvent::End])
        .await
        .unwrap();
    assert!(r.ended);

    let text = String::from_utf8(logs.0.lock().clone()).unwrap();
    let has = |parts: &[&str]| text.lines().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        has(&[
            "WARN",
            "app=rt-logs",
            "call=log-1",
            "stderr",
            "hello from the guest"
        ]),
        "{text}"
    );
    assert!(
        has(&[
            "ERROR",
            "app=rt-logs",
            "call=log-2",
            "fault=\"trap\"",
            "probe panic on purpose"
        ]),
        "{text}"
    );
    assert!(
        has(&[
            "WARN",
            "app=rt-logs",
            "call=log-3",
            "import=\"answer\"",
            "denied",
            "channel nobody"
        ]),
        "{text}"
    );
    assert!(
        has(&["INFO", "app=rt-logs", "call=log-4", "probe log info"]),
        "{text}"
    );
    assert!(
        has(&["ERROR", "app=rt-logs", "call=log-4", "probe log error"]),
        "{text}"
    );
}
