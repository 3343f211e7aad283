//! AMQP intake benchmark: `cargo bench -p stasis-e2e --bench amqp`.
//!
//! Needs the test broker: `bash scripts/rabbitmq.sh start` and
//! `eval "$(bash scripts/rabbitmq.sh env)"` (sets `STASIS_TEST_AMQP_URL`).
//!
//! Same conference flow as `benches/flow.rs` (2 simulated nodes, calls into the conference
//! plugin on node a, 10 callers per conference at a time, then all hang up), run:
//! 1. through websocket intake and through AMQP intake, one host each;
//! 2. through AMQP intake with two host replicas consuming the same (single-active-consumer)
//!    queue: one replica does the work, the other is a hot standby, so the ratio to one
//!    replica is expected near 1.0; then with `share_calls`, one replica and two (the one
//!    consuming the queue routes each call to one of them);
//! 3. raw intake: calls parked in the conference, then a burst of DTMF digits (one
//!    `ChannelDtmfReceived` each, delivered to the app's on-dtmf callback) from both nodes;
//!    measured from the burst to every event handled by dispatch, and until the broker's
//!    queue is empty (ready + unacknowledged = 0).
//!
//! The simulator and each host replica run on their own single-worker tokio runtime with
//! named threads (`sim`, `host`, `host2`), so CPU time is read per side from
//! `/proc/self/task/*/stat`; the broker's CPU from its own process.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stasis_e2e::{
    amqp_host_config, amqp_url, host_config, in_bridge, plugin, rabbitmqctl_output,
    route_trunk_legs, sim_config, unique,
};
use stasis_host::gateway::Gateway;
use stasis_host::runtime::{App, AppSettings, RuntimeConfig};
use stasis_sim::{AmqpConfig, AmqpState};
use support::{call, install_tracing, micros, percentile, run_calls, wait};
use tokio::runtime::Runtime;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Channel → when its latest event reached dispatch; and the latencies measured so far.
type Pending = (HashMap<String, Instant>, Vec<Duration>);

/// Counts events reaching dispatch (per host replica, by thread name) and pairs "event" and
/// "request" traces per channel into event → request latencies.
#[derive(Default, Clone)]
struct Probe {
    inner: Arc<Mutex<Pending>>,
    /// Events reaching dispatch on the `host` runtime and on the `host2` runtime.
    events: Arc<[AtomicUsize; 2]>,
}

impl Probe {
    fn events(&self) -> usize {
        self.events.iter().map(|e| e.load(Ordering::Relaxed)).sum()
    }
    fn per_replica(&self) -> [usize; 2] {
        [
            self.events[0].load(Ordering::Relaxed),
            self.events[1].load(Ordering::Relaxed),
        ]
    }
}

#[derive(Default)]
struct Fields {
    channel: Option<String>,
    message: String,
}
impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "channel" => self.channel = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "channel" => self.channel = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Probe {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "stasis::latency" {
            return;
        }
        let now = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(channel) = fields.channel else {
            return;
        };
        let mut inner = self.inner.lock().unwrap();
        if fields.message == "event" {
            let replica = usize::from(std::thread::current().name() == Some("host2"));
            self.events[replica].fetch_add(1, Ordering::Relaxed);
            inner.0.insert(channel, now);
        } else if let Some(t) = inner.0.remove(&channel) {
            inner.1.push(now - t);
        }
    }
}

fn ticks(stat: &str) -> f64 {
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() > 13 {
        (fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0))
            / 100.0 // USER_HZ on Linux
    } else {
        0.0
    }
}

/// CPU seconds used so far by this process's threads, grouped: host replicas (`host*`,
/// `wasm-epoch`), simulator (`sim`), everything else but the main (driving) thread.
#[derive(Clone, Copy, Default)]
struct Cpu {
    host: f64,
    sim: f64,
    other: f64,
    broker: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            host: self.host - o.host,
            sim: self.sim - o.sim,
            other: self.other - o.other,
            broker: self.broker - o.broker,
        }
    }
}

fn cpu(broker_pid: Option<u32>) -> Cpu {
    let mut cpu = Cpu::default();
    let me = std::process::id().to_string();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if task.file_name().to_string_lossy() == me {
            continue; // the main thread drives the benchmark
        }
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let t = ticks(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default());
        let comm = comm.trim();
        if comm.starts_with("host") || comm.starts_with("wasm-epoch") {
            cpu.host += t;
        } else if comm.starts_with("sim") {
            cpu.sim += t;
        } else {
            cpu.other += t;
        }
    }
    if let Some(pid) = broker_pid {
        cpu.broker =
            ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default());
    }
    cpu
}

/// The test broker's process id, from `scripts/rabbitmq.sh status` ("… pid N)").
fn broker_pid() -> Option<u32> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("status")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid ")?;
    text[at + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

/// Messages ready and unacknowledged in `queue`.
fn queue_depth(queue: &str) -> Option<(u64, u64)> {
    let out = rabbitmqctl_output(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        (f.next()? == queue).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Intake {
    Websocket,
    Amqp,
}

/// A simulated cluster and `replicas` hosts (one per host runtime) with the conference app.
struct Rig {
    sim: stasis_sim::Cluster,
    hosts: Vec<Gateway>,
    apps: Vec<Arc<App>>,
    queue: Option<String>,
}

impl Rig {
    fn start(sim_rt: &Runtime, host_rts: &[&Runtime], intake: Intake, share: bool) -> Rig {
        let mut config = sim_config(2).with_playback_ms(100);
        let exchange = unique("stasis-bench");
        let queue = unique("bench-events");
        if intake == Intake::Amqp {
            config.amqp = Some(AmqpConfig::new(&amqp_url()).with_exchange(&exchange));
        }
        let sim = sim_rt.block_on(stasis_sim::Cluster::start(config)).unwrap();
        route_trunk_legs(&sim);
        let host_config = match intake {
            Intake::Websocket => host_config(&sim, ""),
            Intake::Amqp => {
                let extra = if share { "share_calls = true\n" } else { "" };
                amqp_host_config(&sim, &amqp_url(), &exchange, &queue, extra)
            }
        };
        let wasm = plugin("conference");
        let mut hosts = Vec::new();
        for rt in host_rts {
            let host = rt
                .block_on(async {
                    let runtime = RuntimeConfig {
                        max_instances: 2000,
                        ..RuntimeConfig::default()
                    };
                    let host = Gateway::start(host_config.clone(), runtime).await?;
                    host.load_app(
                        "conf",
                        wasm.clone(),
                        AppSettings {
                            max_live_calls: 2000,
                            ..AppSettings::default()
                        },
                    )
                    .await?;
                    Ok::<_, anyhow::Error>(host)
                })
                .unwrap();
            hosts.push(host);
        }
        let apps = hosts
            .iter()
            .map(|h| h.catalog.get("conf").unwrap())
            .collect();
        let rig = Rig {
            sim,
            hosts,
            apps,
            queue: (intake == Intake::Amqp).then_some(queue),
        };
        let wanted = ["conf", stasis_host::conference::TRUNK_APP];
        sim_rt.block_on(wait(|| {
            rig.hosts
                .iter()
                .all(|h| h.cluster.nodes().all(|n| n.is_up()))
                && rig.sim.nodes().iter().all(|n| match intake {
                    Intake::Websocket => n.apps().contains(&"conf".to_string()),
                    Intake::Amqp => {
                        let registered = n.amqp_apps();
                        n.amqp_status().state == AmqpState::Connected
                            && wanted.iter().all(|a| registered.contains(&a.to_string()))
                    }
                })
        }));
        if intake == Intake::Amqp {
            // Let the replicas' start-up markers and reconciles pass (and, sharing calls,
            // their announcements reach each other).
            let settle = if share { 2500 } else { 500 };
            std::thread::sleep(Duration::from_millis(settle));
        }
        rig
    }

    fn live(&self) -> usize {
        self.apps.iter().map(|a| a.live_calls()).sum()
    }

    fn published(&self) -> u64 {
        self.sim
            .nodes()
            .iter()
            .map(|n| n.amqp_status().published)
            .sum()
    }

    fn stop(self, sim_rt: &Runtime) {
        for host in self.hosts {
            host.shutdown();
        }
        sim_rt.block_on(self.sim.shutdown());
        if let Some(queue) = &self.queue {
            let _ = rabbitmqctl_output(&["delete_queue", queue]);
        }
    }
}

struct Flow {
    label: String,
    calls: usize,
    elapsed: Duration,
    events: usize,
    per_replica: [usize; 2],
    published: u64,
    cpu: Cpu,
    latency: Vec<Duration>,
}

impl Flow {
    fn calls_per_s(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn measure_flow(
    label: &str,
    rig: &Rig,
    sim_rt: &Runtime,
    probe: &Probe,
    broker: Option<u32>,
    total: usize,
    batch: usize,
) -> Flow {
    let a = rig.sim.node("a");
    // Warm-up.
    sim_rt.block_on(run_calls(&a, 200, 50, Duration::from_secs(10), || {
        rig.live()
    }));
    probe.inner.lock().unwrap().1.clear();
    let (events0, replica0, published0) = (probe.events(), probe.per_replica(), rig.published());
    let cpu0 = cpu(broker);
    let elapsed = sim_rt.block_on(run_calls(&a, total, batch, Duration::from_secs(10), || {
        rig.live()
    }));
    let cpu = cpu(broker) - cpu0;
    let replica = probe.per_replica();
    let mut latency = std::mem::take(&mut probe.inner.lock().unwrap().1);
    latency.sort();
    Flow {
        label: label.to_string(),
        calls: total,
        elapsed,
        events: probe.events() - events0,
        per_replica: [replica[0] - replica0[0], replica[1] - replica0[1]],
        published: rig.published() - published0,
        cpu,
        latency,
    }
}

fn print_flow(f: &Flow) {
    let n = f.calls as f64;
    println!("{}", f.label);
    println!(
        "  calls/s {:.0}   events/s (host intake) {:.0}   events/call {:.1}   elapsed {:.2} s",
        f.calls_per_s(),
        f.events_per_s(),
        f.events as f64 / n,
        f.elapsed.as_secs_f64()
    );
    if f.published > 0 {
        println!(
            "  published by the nodes (broker-confirmed) {}   events per replica: host {} / host2 {}",
            f.published, f.per_replica[0], f.per_replica[1]
        );
    }
    println!(
        "  CPU per call: host {:.0} µs, simulator {:.0} µs, other threads {:.0} µs, broker {:.0} µs",
        f.cpu.host * 1e6 / n,
        f.cpu.sim * 1e6 / n,
        f.cpu.other * 1e6 / n,
        f.cpu.broker * 1e6 / n
    );
    println!(
        "  event → request inside the host: p50 {:.0} µs, p99 {:.0} µs ({} samples)",
        micros(percentile(&f.latency, 0.5)),
        micros(percentile(&f.latency, 0.99)),
        f.latency.len()
    );
}

struct Raw {
    events: usize,
    to_published: Duration,
    to_dispatched: Duration,
    to_drained: Option<Duration>,
    cpu: Cpu,
}

/// Parks `per_node` calls on each node in the conference, then presses `digits` DTMF digits on
/// every call at once.
fn measure_raw(
    rig: &Rig,
    sim_rt: &Runtime,
    probe: &Probe,
    broker: Option<u32>,
    per_node: usize,
    digits: usize,
) -> Raw {
    // The simulator's effects are spawned onto its runtime.
    let _sim = sim_rt.enter();
    let (a, b) = (rig.sim.node("a"), rig.sim.node("b"));
    let mut calls = Vec::new();
    for i in 0..per_node {
        calls.push((a.clone(), call(&a, i)));
        calls.push((b.clone(), call(&b, i + 10_000)));
    }
    sim_rt.block_on(wait(|| {
        calls.iter().all(|(n, id)| in_bridge(n, id, "conf")) && rig.live() == calls.len()
    }));
    // Let the joins' events drain before the burst.
    let queue = rig.queue.as_deref().unwrap();
    let settle = Instant::now();
    while queue_depth(queue) != Some((0, 0)) && settle.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pattern: String = "0123456789#*".chars().cycle().take(digits).collect();
    let expected = calls.len() * digits;
    let (events0, published0) = (probe.events(), rig.published());
    let cpu0 = cpu(broker);
    let start = Instant::now();
    let (to_published, to_dispatched) = sim_rt.block_on(async {
        for (node, id) in &calls {
            node.press_dtmf(id, &pattern).unwrap();
        }
        let (mut published, mut dispatched) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        while published.is_none() || dispatched.is_none() {
            assert!(Instant::now() < deadline, "DTMF burst stalled");
            if published.is_none() && rig.published() - published0 >= expected as u64 {
                published = Some(start.elapsed());
            }
            if dispatched.is_none() && probe.events() - events0 >= expected {
                dispatched = Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        (published.unwrap(), dispatched.unwrap())
    });
    let cpu = cpu(broker) - cpu0;
    // Acknowledged: the queue is empty (rabbitmqctl takes a few hundred ms per look, so this
    // is an upper bound).
    let mut to_drained = None;
    while start.elapsed() < Duration::from_secs(60) {
        if queue_depth(queue) == Some((0, 0)) {
            to_drained = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (node, id) in &calls {
        node.hangup_far_end(id, None).unwrap();
    }
    sim_rt.block_on(wait(|| rig.live() == 0));
    Raw {
        events: expected,
        to_published,
        to_dispatched,
        to_drained,
        cpu,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let probe = Probe::default();
    install_tracing(probe.clone());
    let (total, batch) = (2000, 10);
    let sim_rt = runtime("sim");
    let host_rt = runtime("host");
    let host2_rt = runtime("host2");
    let broker = broker_pid();
    println!(
        "machine: {} CPUs, load average at start {}; broker pid {broker:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "conference flow: {total} calls on node a of 2 simulated nodes, {batch} callers per \
         conference at a time, all hang up (host and simulator: 1 worker thread each)\n"
    );

    // Starts a rig, measures the flow through it and prints it; the rig stays up for more.
    let flow = |label: &str, hosts: &[&Runtime], intake: Intake, share: bool| {
        let rig = Rig::start(&sim_rt, hosts, intake, share);
        let flow = measure_flow(label, &rig, &sim_rt, &probe, broker, total, batch);
        print_flow(&flow);
        (rig, flow)
    };
    let (rig, ws) = flow(
        "websocket intake, 1 host",
        &[&host_rt],
        Intake::Websocket,
        false,
    );
    rig.stop(&sim_rt);
    let (rig, one) = flow("AMQP intake, 1 host", &[&host_rt], Intake::Amqp, false);
    let (per_node, digits) = (100, 200);
    let raw = measure_raw(&rig, &sim_rt, &probe, broker, per_node, digits);
    rig.stop(&sim_rt);
    let (rig, two) = flow(
        "AMQP intake, 2 host replicas (same queue, single active consumer)",
        &[&host_rt, &host2_rt],
        Intake::Amqp,
        false,
    );
    rig.stop(&sim_rt);
    let (rig, shared_one) = flow(
        "AMQP intake, 1 replica sharing calls (share_calls)",
        &[&host_rt],
        Intake::Amqp,
        true,
    );
    rig.stop(&sim_rt);
    let (rig, shared_two) = flow(
        "AMQP intake, 2 replicas sharing calls (share_calls)",
        &[&host_rt, &host2_rt],
        Intake::Amqp,
        true,
    );
    rig.stop(&sim_rt);

    let rate = |d: Duration| raw.events as f64 / d.as_secs_f64();
    println!(
        "\nraw AMQP intake: {} calls ({per_node} per node, both nodes) × {digits} DTMF digits = {} \
         events",
        2 * per_node,
        raw.events
    );
    println!(
        "  all published (broker-confirmed) after {:.3} s: {:.0} events/s",
        raw.to_published.as_secs_f64(),
        rate(raw.to_published)
    );
    println!(
        "  all handled by dispatch after {:.3} s: {:.0} events/s",
        raw.to_dispatched.as_secs_f64(),
        rate(raw.to_dispatched)
    );
    match raw.to_drained {
        Some(d) => println!(
            "  queue empty (ready + unacked = 0) seen after {:.3} s: ≥ {:.0} events/s \
             (rabbitmqctl polling, coarse)",
            d.as_secs_f64(),
            rate(d)
        ),
        None => println!("  queue not seen empty within 60 s"),
    }
    let e = raw.events as f64;
    println!(
        "  CPU per event (to dispatch): host {:.1} µs, simulator {:.1} µs, other {:.1} µs, broker {:.1} µs",
        raw.cpu.host * 1e6 / e,
        raw.cpu.sim * 1e6 / e,
        raw.cpu.other * 1e6 / e,
        raw.cpu.broker * 1e6 / e
    );

    println!("\n| run | calls/s | events/s | host CPU µs/call |");
    println!("|---|---:|---:|---:|");
    for f in [&ws, &one, &two, &shared_one, &shared_two] {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} |",
            f.label,
            f.calls_per_s(),
            f.events_per_s(),
            f.cpu.host * 1e6 / f.calls as f64
        );
    }
    println!(
        "| raw AMQP intake (DTMF burst, to dispatch) | — | {:.0} | — |",
        rate(raw.to_dispatched)
    );
    println!(
        "\nAMQP / websocket (1 host): {:.2}; AMQP 2 replicas / 1 replica: {:.2} (one replica \
         active, the other a hot standby: events handled host {} / host2 {})",
        one.calls_per_s() / ws.calls_per_s(),
        two.calls_per_s() / one.calls_per_s(),
        two.per_replica[0],
        two.per_replica[1]
    );
    println!(
        "sharing calls: 2 replicas / 1 replica: {:.2} (events handled host {} / host2 {})",
        shared_two.calls_per_s() / shared_one.calls_per_s(),
        shared_two.per_replica[0],
        shared_two.per_replica[1]
    );
    println!("load average at end: {}", load_average());
}
