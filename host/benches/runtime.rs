//! Runtime benchmark: `cargo bench -p stasis-host --bench runtime`.
//!
//! Prints, for the Rust conference app (and the probe for a kv round trip):
//! - instantiate + one callback (`on-start`) + drop, median and p99;
//! - the whole life of a call through the public API (start_call, on-start, End, on-end,
//!   finished), median and p99;
//! - a callback round trip that makes one import (conference `on-up` → `bridge-add`);
//! - RSS per live call instance with 1,000 and 10,000 calls live (each between `on-start` and
//!   `on-end`), each measured in a fresh child process so earlier runs do not skew it.
//!
//! Goals: ≤ 50 µs median for instantiate + callback + drop, ≤ 64 KiB per live call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stasis_host::runtime::testing::{CountingBackend, inbound_call, plugin_wasm, time_callbacks};
use stasis_host::runtime::{App, AppSettings, CallEvent, Runtime, RuntimeConfig};

fn stats(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let median = d[d.len() / 2];
    let p99 = d[(d.len() * 99 / 100).min(d.len() - 1)];
    (median, p99)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn setup(max_instances: u32, plugin: &str) -> (Runtime, Arc<App>, Arc<CountingBackend>) {
    let rt = Runtime::new(RuntimeConfig {
        max_instances,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let wasm = plugin_wasm(plugin).expect("plugin");
    let t = Instant::now();
    let artifact = rt.compile_blocking(&wasm).expect("compile");
    let compile = t.elapsed();
    let backend = Arc::new(CountingBackend::default());
    let settings = AppSettings {
        max_live_calls: max_instances as usize,
        ..AppSettings::default()
    };
    let t = Instant::now();
    let app = rt
        .load(plugin, &artifact, settings, backend.clone())
        .expect("load");
    let load = t.elapsed();
    if std::env::var_os("BENCH_CHILD").is_none() {
        println!(
            "{plugin}: component {} bytes, compile {:.1} ms, load (deserialize) {}",
            wasm.len(),
            compile.as_secs_f64() * 1e3,
            us(load)
        );
    }
    (rt, app, backend)
}

/// Child process: hold `n` live conference calls and print the RSS delta per call.
fn rss_child(n: usize) {
    let (rt, app, backend) = setup(n as u32 + 16, "conference");
    let exec = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    exec.block_on(async {
        // Warm up allocator and pool with a few calls, then measure.
        for i in 0..16 {
            app.run_call(inbound_call("conference", &format!("warm-{i}")), vec![])
                .await
                .unwrap();
        }
        let ops_before = backend.ops.load(Ordering::Relaxed);
        let before = vm_rss_kib();
        let t = Instant::now();
        let calls: Vec<_> = (0..n)
            .map(|i| {
                app.start_call(inbound_call("conference", &format!("c-{i}")))
                    .unwrap()
            })
            .collect();
        // Conference on-start makes two requests: wait until every call ran it.
        while backend.ops.load(Ordering::Relaxed) < ops_before + 2 * n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = t.elapsed();
        assert_eq!(app.live_calls(), n);
        let after = vm_rss_kib();
        let per_call = (after.saturating_sub(before)) as f64 / n as f64;
        println!(
            "RSS per live call, {n:>6} live conference calls: {per_call:.1} KiB \
             (VmRSS {before} → {after} KiB; {n} calls started in {:.0} ms)",
            started.as_secs_f64() * 1e3
        );
        for c in &calls {
            c.deliver(CallEvent::End, None);
        }
        for c in &calls {
            let r = c.finished().await;
            assert!(r.fault.is_none(), "{r:?}");
        }
        assert_eq!(rt.live_instances(), 0);
    });
}

fn main() {
    if let Some(n) = std::env::args().skip_while(|a| a != "--rss-child").nth(1) {
        rss_child(n.parse().expect("--rss-child N"));
        return;
    }
    // `cargo bench` passes `--bench`; ignore other arguments.
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);

    let exec = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_rt, conf, _) = setup(1_000, "conference");
    let (_rt2, probe, _) = setup(1_000, "probe");
    exec.block_on(async {
        // Instantiate + on-start + drop, inline (no task, no queue).
        for i in 0..1_000 {
            conf.run_call(inbound_call("conference", &format!("w-{i}")), vec![])
                .await
                .unwrap();
        }
        let mut d = Vec::with_capacity(iters);
        for i in 0..iters {
            let c = inbound_call("conference", &format!("i-{i}"));
            let t = Instant::now();
            let r = conf.run_call(c, vec![]).await.unwrap();
            d.push(t.elapsed());
            debug_assert!(r.fault.is_none());
        }
        let (m, p) = stats(d);
        println!(
            "conference: instantiate + on-start (2 imports) + drop: median {}, p99 {}  (goal ≤ 50 µs median)",
            us(m),
            us(p)
        );

        // The whole call through the public API: start_call → on-start → End → on-end → finished.
        let mut d = Vec::with_capacity(iters);
        for i in 0..iters {
            let c = inbound_call("conference", &format!("l-{i}"));
            let t = Instant::now();
            let h = conf.start_call(c).unwrap();
            h.deliver(CallEvent::End, None);
            let r = h.finished().await;
            d.push(t.elapsed());
            debug_assert!(r.fault.is_none());
        }
        let (m, p) = stats(d);
        println!(
            "conference: start_call + on-start + on-end + drop (task, queue, report): median {}, p99 {}",
            us(m),
            us(p)
        );

        // One callback that makes exactly one import: conference on-up → bridge-add.
        let times = time_callbacks(&conf, inbound_call("conference", "rt-1"), CallEvent::Up, iters)
            .await
            .unwrap();
        let (m, p) = stats(times);
        println!(
            "conference: callback round trip with one import (on-up → bridge-add): median {}, p99 {}",
            us(m),
            us(p)
        );
        // The probe's on-up makes two kv imports (get + set of its trace line); its trace
        // grows with each run, so keep the run short.
        let times = time_callbacks(&probe, inbound_call("probe", "rt-2"), CallEvent::Up, 200)
            .await
            .unwrap();
        let (m, p) = stats(times);
        println!(
            "probe: callback round trip with two kv imports (on-up): median {}, p99 {}",
            us(m),
            us(p)
        );
    });
    drop(exec);

    if std::env::var_os("BENCH_SKIP_RSS").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    for n in [1_000usize, 10_000] {
        let status = std::process::Command::new(&exe)
            .arg("--rss-child")
            .arg(n.to_string())
            .env("BENCH_CHILD", "1")
            .status()
            .expect("spawn child");
        assert!(status.success(), "rss child for {n} failed");
    }
}
