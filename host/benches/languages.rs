//! The conference app in Rust, Python and JavaScript: `cargo bench -p stasis-host --bench languages`.
//!
//! Prints, per language (plugins `conference`, `conference-py`, `conference-js`, built by
//! `plugins/build.sh`):
//! - the component's size;
//! - compile time (Cranelift, `Runtime::compile_blocking`, including the world check and
//!   serialization), and the time to load the serialized artifact back;
//! - instantiate + `on-start` (two imports) + drop, median and p99 (`App::run_call`, no task);
//! - RSS per live call: a child process holds `BENCH_LIVE` calls (default 200) between
//!   `on-start` and `on-end` and prints the VmRSS growth divided by the number of calls.
//!
//! Environment: `BENCH_ITERS` (instantiate runs per language, default 500), `BENCH_LIVE`,
//! `BENCH_SKIP_RSS=1`, `BENCH_ONLY=conference-py` (one plugin).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stasis_host::runtime::testing::{CountingBackend, inbound_call, plugin_wasm};
use stasis_host::runtime::{App, AppSettings, CallEvent, Runtime, RuntimeConfig};

const PLUGINS: &[(&str, &str)] = &[
    ("Rust", "conference"),
    ("Python", "conference-py"),
    ("JavaScript", "conference-js"),
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// A runtime for `live` calls. The pool's core-instance budget is 4 per component instance,
/// sized for Rust; a Python component instance takes about 14 core instances, so the pool is
/// made 4× larger here (virtual address space only) to let every language hold `live` calls.
fn runtime(live: usize) -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 4 * live as u32 + 16,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn load(rt: &Runtime, artifact: &[u8], live: usize) -> (Arc<App>, Arc<CountingBackend>) {
    let backend = Arc::new(CountingBackend::default());
    let settings = AppSettings {
        max_live_calls: live + 16,
        ..AppSettings::default()
    };
    let app = rt
        .load("conf", artifact, settings, backend.clone())
        .expect("load");
    (app, backend)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Child process: load the artifact at `path`, hold `n` live calls, print KiB per call.
fn rss_child(path: &str, n: usize) {
    let rt = runtime(n);
    let artifact = std::fs::read(path).expect("artifact");
    let (app, backend) = load(&rt, &artifact, n);
    drop(artifact);
    let exec = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    exec.block_on(async {
        for i in 0..8 {
            app.run_call(inbound_call("conf", &format!("warm-{i}")), vec![])
                .await
                .unwrap();
        }
        let ops_before = backend.ops.load(Ordering::Relaxed);
        let before = vm_rss_kib();
        let calls: Vec<_> = (0..n)
            .map(|i| {
                app.start_call(inbound_call("conf", &format!("c-{i}")))
                    .unwrap()
            })
            .collect();
        // on-start makes two requests (get-or-create-bridge, answer): wait for every call.
        let deadline = Instant::now() + Duration::from_secs(120);
        while backend.ops.load(Ordering::Relaxed) < ops_before + 2 * n {
            if Instant::now() > deadline || calls.iter().any(|c| c.is_finished()) {
                let ended: Vec<_> = calls.iter().filter(|c| c.is_finished()).collect();
                eprintln!(
                    "{} of {n} calls ended early, {} ops of {}, {} live",
                    ended.len(),
                    backend.ops.load(Ordering::Relaxed) - ops_before,
                    2 * n,
                    app.live_calls()
                );
                for c in ended.iter().take(3) {
                    eprintln!("{:?}", c.finished().await);
                }
                std::process::exit(1);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(app.live_calls(), n);
        let after = vm_rss_kib();
        println!("{:.1}", after.saturating_sub(before) as f64 / n as f64);
        for c in &calls {
            c.deliver(CallEvent::End, None);
        }
        for c in &calls {
            let r = c.finished().await;
            assert!(r.fault.is_none(), "{r:?}");
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        rss_child(
            &args[i + 1],
            args[i + 2].parse().expect("--rss-child PATH N"),
        );
        return;
    }
    let iters = env_usize("BENCH_ITERS", 500);
    let live = env_usize("BENCH_LIVE", 200);
    let only = std::env::var("BENCH_ONLY").ok();
    let skip_rss = std::env::var_os("BENCH_SKIP_RSS").is_some();
    let tmp = std::env::temp_dir().join(format!("stasis-bench-languages-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");

    println!(
        "{:<11} {:>10} {:>11} {:>10} {:>22} {:>16}",
        "language",
        "component",
        "compile",
        "load",
        "instantiate+cb median/p99",
        format!("RSS/call ({live})")
    );
    for (language, plugin) in PLUGINS {
        if only.as_deref().is_some_and(|o| o != *plugin) {
            continue;
        }
        let wasm = plugin_wasm(plugin).expect("plugin (run plugins/build.sh)");
        let rt = runtime(live);
        let t = Instant::now();
        let artifact = rt.compile_blocking(&wasm).expect("compile");
        let compile = t.elapsed();
        let t = Instant::now();
        let (app, _backend) = load(&rt, &artifact.bytes, live);
        let load_time = t.elapsed();

        let exec = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut d = exec.block_on(async {
            for i in 0..iters.min(50) {
                app.run_call(inbound_call("conf", &format!("w-{i}")), vec![])
                    .await
                    .unwrap();
            }
            let mut d = Vec::with_capacity(iters);
            for i in 0..iters {
                let c = inbound_call("conf", &format!("i-{i}"));
                let t = Instant::now();
                let r = app.run_call(c, vec![]).await.unwrap();
                d.push(t.elapsed());
                assert!(r.fault.is_none(), "{r:?}");
            }
            d
        });
        drop(exec);
        d.sort();
        let (median, p99) = (d[d.len() / 2], d[(d.len() * 99 / 100).min(d.len() - 1)]);

        let rss = if skip_rss {
            "-".to_string()
        } else {
            let path = tmp.join(format!("{plugin}.cwasm"));
            std::fs::write(&path, &artifact.bytes).expect("write artifact");
            drop((app, rt));
            let out = std::process::Command::new(std::env::current_exe().expect("exe"))
                .arg("--rss-child")
                .arg(&path)
                .arg(live.to_string())
                .output()
                .expect("spawn child");
            let _ = std::fs::remove_file(&path);
            if out.status.success() {
                format!("{} KiB", String::from_utf8_lossy(&out.stdout).trim())
            } else {
                eprintln!(
                    "{plugin}: RSS child failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                "failed".to_string()
            }
        };
        println!(
            "{:<11} {:>8} KB {:>11} {:>10} {:>22} {:>16}",
            language,
            wasm.len() / 1000,
            ms(compile),
            us(load_time),
            format!("{} / {}", us(median), us(p99)),
            rss
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
