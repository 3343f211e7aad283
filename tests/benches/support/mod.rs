//! What the end-to-end benchmarks share: the conference-call driving loop and small helpers.

use std::time::{Duration, Instant};

use stasis_e2e::{InboundCall, NodeHandle, in_bridge};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

/// The allocator of the `stasis-host` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Installs `probe` for the host's `stasis::latency` traces, and warnings to stderr.
pub fn install_tracing(probe: impl Layer<Registry> + Send + Sync + 'static) {
    tracing::subscriber::set_global_default(
        Registry::default()
            .with(
                probe.with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("stasis::latency", tracing::Level::TRACE),
                ),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(
                        tracing_subscriber::filter::Targets::new()
                            .with_default(tracing::Level::WARN),
                    ),
            ),
    )
    .unwrap();
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Polls `ready`; a benchmark that stalls for a minute fails where it waited.
#[track_caller]
pub fn wait(mut ready: impl FnMut() -> bool) -> impl std::future::Future<Output = ()> {
    let at = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(Instant::now() < deadline, "benchmark stalled at {at}");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

/// Injects call number `i` into the conference extension on `node`.
pub fn call(node: &NodeHandle, i: usize) -> String {
    node.inject_call(InboundCall {
        caller_name: format!("caller{i}"),
        caller_number: format!("{}", 1000 + i),
        exten: "8000".into(),
        ..Default::default()
    })
    .unwrap()
}

/// Runs `total` calls in batches of `batch` on node `a`: each batch joins the conference, then
/// hangs up; a batch that takes longer than `patience` for either fails the benchmark.
/// Returns the elapsed time.
pub async fn run_calls(
    a: &NodeHandle,
    total: usize,
    batch: usize,
    patience: Duration,
    live: impl Fn() -> usize,
) -> Duration {
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        let ids: Vec<String> = (0..batch.min(total - done))
            .map(|i| call(a, done + i))
            .collect();
        let t = Instant::now();
        while !ids.iter().all(|id| in_bridge(a, id, "conf")) {
            if t.elapsed() > patience {
                let bad: Vec<_> = ids
                    .iter()
                    .filter(|id| !in_bridge(a, id, "conf"))
                    .map(|id| a.channel(id))
                    .collect();
                panic!("not bridged: {} {:?}", bad.len(), bad.first());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for id in &ids {
            a.hangup_far_end(id, None).unwrap();
        }
        let t = Instant::now();
        while live() != 0 {
            if t.elapsed() > patience {
                panic!("live {} channels {:?}", live(), a.channels().len());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        done += ids.len();
    }
    start.elapsed()
}
