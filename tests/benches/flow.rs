//! Conference-flow benchmark through the whole system:
//! `cargo bench -p stasis-e2e --bench flow` (`FLOW_CALLERS=10` or `=100`: that scenario only).
//!
//! Simulated nodes and the host run in one process but on separate tokio runtimes with
//! named threads, so the CPU time of each side is read from `/proc/self/task/*/stat`.
//! Each call: StasisStart → get-or-create bridge → answer → Up → addChannel → far-end
//! hangup → StasisEnd → instance dropped.
//!
//! Prints: calls per second; host CPU µs per call (host threads only: its runtime and the
//! epoch ticker) and the simulator's CPU per call; p50/p99 latency inside the host from an
//! event reaching dispatch to the call's next request reaching the router; and the join
//! latency (call injected → in the conference bridge) of a local participant, of the first
//! participant on another node (bridge part + trunk leg) and of a later one there.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stasis_e2e::{host_config, in_bridge, plugin, route_trunk_legs, sim_config};
use stasis_host::gateway::Gateway;
use stasis_host::runtime::{AppSettings, RuntimeConfig};
use support::{call, install_tracing, micros, percentile, run_calls, wait};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Pairs "event" and "request" traces per channel into latencies.
/// Channel → when its latest event reached dispatch; and the latencies measured so far.
type Pending = (HashMap<String, Instant>, Vec<Duration>);

#[derive(Default, Clone)]
struct Latency {
    inner: Arc<Mutex<Pending>>,
    events: Arc<std::sync::atomic::AtomicUsize>,
    /// Pairing costs the host thread a few µs per event (formatting, a lock, a map), so it is
    /// on only in the latency round, not in the rounds whose CPU time is reported.
    pairing: Arc<std::sync::atomic::AtomicBool>,
}

struct ChannelField(Option<String>);
impl Visit for ChannelField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "channel" {
            self.0 = Some(format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "channel" {
            self.0 = Some(value.to_string());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Latency {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "stasis::latency" {
            return;
        }
        // The "event" trace is dispatch's, the "request" trace the router's.
        if event.metadata().module_path() == Some("stasis_host::dispatch") {
            self.events
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if !self.pairing.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let mut channel = ChannelField(None);
        event.record(&mut channel);
        let Some(channel) = channel.0 else { return };
        let mut message = String::new();
        struct Msg<'a>(&'a mut String);
        impl Visit for Msg<'_> {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    *self.0 = format!("{value:?}");
                }
            }
        }
        event.record(&mut Msg(&mut message));
        let mut inner = self.inner.lock().unwrap();
        if message == "event" {
            inner.0.insert(channel, now);
        } else if let Some(t) = inner.0.remove(&channel) {
            inner.1.push(now - t);
        }
    }
}

/// CPU seconds used so far by this process's threads whose name starts with one of `prefixes`.
fn cpu_of(prefixes: &[&str]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|p| comm.trim().starts_with(p)) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 13 {
            total += (fields[11].parse::<f64>().unwrap_or(0.0)
                + fields[12].parse::<f64>().unwrap_or(0.0))
                / ticks;
        }
    }
    total
}

/// The figures of one round of a scenario.
struct Round {
    calls_per_sec: f64,
    events_per_call: f64,
    host_us: f64,
    sim_us: f64,
}

fn main() {
    let latency = Latency::default();
    install_tracing(latency.clone());
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sim")
        .enable_all()
        .build()
        .unwrap();
    let host_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("host")
        .enable_all()
        .build()
        .unwrap();
    let wasm = plugin("conference");

    let mut config = sim_config(2);
    config = config.with_playback_ms(100);
    let sim = sim_rt.block_on(stasis_sim::Cluster::start(config)).unwrap();
    route_trunk_legs(&sim);
    let (a, b) = (sim.node("a"), sim.node("b"));
    let host_config = host_config(&sim, "");
    let host = host_rt
        .block_on(async {
            let runtime = RuntimeConfig {
                max_instances: 2000,
                ..RuntimeConfig::default()
            };
            let host = Gateway::start(host_config, runtime).await?;
            host.load_app(
                "conf",
                wasm,
                AppSettings {
                    max_live_calls: 2000,
                    ..AppSettings::default()
                },
            )
            .await?;
            Ok::<_, anyhow::Error>(host)
        })
        .unwrap();
    let app = host.catalog.get("conf").unwrap();
    sim_rt.block_on(wait(|| {
        host.cluster.nodes().all(|n| n.is_up())
            && a.apps().contains(&"conf".to_string())
            && b.apps().contains(&"conf".to_string())
    }));

    // Warm-up, then measured runs: small conferences (10 callers at a time) and large ones
    // (100 at a time: every join and leave updates BRIDGEPEER on every member, as Asterisk
    // does, so events per call grow with the conference).
    let live = || app.live_calls();
    sim_rt.block_on(run_calls(&a, 200, 50, Duration::from_secs(5), live));
    // Each scenario runs ROUNDS times with latency pairing off; CPU figures are the median
    // round's (CPU time is read in 10 ms ticks and a shared VM is noisy). Then one more round
    // with pairing on gives the latencies.
    const ROUNDS: usize = 3;
    let pairing = |on: bool| {
        latency
            .pairing
            .store(on, std::sync::atomic::Ordering::Relaxed)
    };
    // FLOW_CALLERS=10 or =100 runs one scenario only (for profiling one of them).
    let only: Option<usize> = std::env::var("FLOW_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok());
    let scenarios = [(3000, 10), (2000, 100)]
        .into_iter()
        .filter(|&(_, batch)| only.is_none_or(|o| o == batch));
    for (total, batch) in scenarios {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let events0 = latency.events.load(std::sync::atomic::Ordering::Relaxed);
            let (host_cpu0, sim_cpu0) = (cpu_of(&["host", "wasm-epoch"]), cpu_of(&["sim"]));
            let elapsed =
                sim_rt.block_on(run_calls(&a, total, batch, Duration::from_secs(5), live));
            let (host_cpu, sim_cpu) = (
                cpu_of(&["host", "wasm-epoch"]) - host_cpu0,
                cpu_of(&["sim"]) - sim_cpu0,
            );
            let events = latency.events.load(std::sync::atomic::Ordering::Relaxed) - events0;
            rounds.push(Round {
                calls_per_sec: total as f64 / elapsed.as_secs_f64(),
                events_per_call: events as f64 / total as f64,
                host_us: host_cpu * 1e6 / total as f64,
                sim_us: sim_cpu * 1e6 / total as f64,
            });
        }
        latency.inner.lock().unwrap().1.clear();
        pairing(true);
        sim_rt.block_on(run_calls(&a, total, batch, Duration::from_secs(5), live));
        pairing(false);
        let mut lat = std::mem::take(&mut latency.inner.lock().unwrap().1);
        lat.sort();
        let host_all: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.host_us)).collect();
        rounds.sort_by(|x, y| x.host_us.total_cmp(&y.host_us));
        let r = &rounds[rounds.len() / 2];
        println!(
            "conference flow, {total} calls × {ROUNDS} rounds, {batch} callers per conference at \
             a time, one node (host: 1 worker thread, simulator: 1 worker thread); median round:"
        );
        println!("  calls per second:                 {:.0}", r.calls_per_sec);
        println!(
            "  events per call (host intake):    {:.1}",
            r.events_per_call
        );
        println!(
            "  host CPU per call:                {:.1} µs (rounds: {} µs)",
            r.host_us,
            host_all.join(", ")
        );
        println!(
            "  simulator CPU per call:           {:.1} µs (driver included)",
            r.sim_us
        );
        println!(
            "  host share of CPU:                {:.0} %",
            100.0 * r.host_us / (r.host_us + r.sim_us).max(f64::EPSILON)
        );
        println!(
            "  event → request inside the host:  p50 {:.0} µs, p99 {:.0} µs ({} samples, \
             separate round)",
            micros(percentile(&lat, 0.5)),
            micros(percentile(&lat, 0.99)),
            lat.len()
        );
        // How the requests reached the node (the socket takes at most 32 waiting requests).
        let log = a.request_log();
        let on_socket = log.iter().filter(|r| r.over_websocket).count();
        println!(
            "  requests on the event websocket:  {on_socket} of {} (the rest over HTTP)",
            log.len()
        );
        a.clear_log();
    }

    // Join latency: local participant vs participants on another node.
    let mut local = Vec::new();
    let mut remote_first = Vec::new();
    let mut remote_next = Vec::new();
    for round in 0..30 {
        sim_rt.block_on(async {
            let home = call(&a, round);
            let t = Instant::now();
            wait(|| in_bridge(&a, &home, "conf")).await;
            local.push(t.elapsed());
            // First on b: local bridge part + trunk leg to the home bridge.
            let t = Instant::now();
            let first = call(&b, round);
            wait(|| {
                in_bridge(&b, &first, "conf")
                    && b.channels()
                        .iter()
                        .any(|c| c.id.starts_with("trunk-") && c.bridge.as_deref() == Some("conf"))
            })
            .await;
            remote_first.push(t.elapsed());
            let t = Instant::now();
            let next = call(&b, round + 100);
            wait(|| in_bridge(&b, &next, "conf")).await;
            remote_next.push(t.elapsed());
            for (node, id) in [(&a, &home), (&b, &first), (&b, &next)] {
                node.hangup_far_end(id, None).unwrap();
            }
            wait(|| app.live_calls() == 0 && a.bridges().is_empty() && b.bridges().is_empty())
                .await;
        });
    }
    for (name, mut v) in [
        ("local participant", local),
        ("first on another node", remote_first),
        ("next on that node", remote_next),
    ] {
        v.sort();
        println!(
            "  join latency, {name:<22} p50 {:.0} µs, p99 {:.0} µs",
            micros(percentile(&v, 0.5)),
            micros(percentile(&v, 0.99))
        );
    }
    host.shutdown();
    sim_rt.block_on(sim.shutdown());
}
