//! ARI facade benchmark: `bash scripts/bench-facade.sh` (or
//! `cargo bench -p stasis-e2e --bench facade`).
//!
//! One run, one machine: the same requests sent directly to a simulated node, through the
//! stasis-host facade, and through nginx as a plain reverse proxy (the seed's gateway; a
//! generated config, non-daemon, temp prefix, keep-alive upstream). Two reads: `GET
//! /ari/channels/{id}` for a live channel (the facade looks the owner up in its index) and
//! `GET /ari/asterisk/info`.
//!
//! Throughput: `wrk` (many keep-alive connections; falls back to an in-process reqwest load
//! generator when wrk is missing). Added latency: p50/p99 of sequential requests on one
//! keep-alive connection, minus the direct figure. The simulator and the host run on their own
//! tokio runtimes (2 worker threads each), nginx with `worker_processes 2`.
//!
//! Environment: `FACADE_BENCH_SECS` (default 4) per throughput run, `FACADE_BENCH_CONNS`
//! (default 64).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stasis_e2e::{host_config, runtime_config, sim_config};
use stasis_host::gateway::Gateway;

const USER: &str = "bench";
const PASS: &str = "bench-pass";

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64_encode(&format!("{user}:{pass}")))
}

fn base64_encode(text: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Target {
    name: &'static str,
    base: String,
    auth: String,
}

/// nginx as a plain reverse proxy to node a, in a temp prefix, in the foreground.
fn start_nginx(upstream: &str, dir: &std::path::Path) -> Option<(Child, String)> {
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Command::new(p).arg("-v").output().is_ok())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    std::fs::create_dir_all(dir.join("logs")).ok()?;
    let conf = format!(
        r#"worker_processes 2;
daemon off;
error_log {dir}/logs/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream asterisk {{ server {upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location /ari/ {{
            proxy_pass http://asterisk;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new(nginx)
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            &path.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, base));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// utime + stime of a /proc stat line, in clock ticks (10 ms).
fn stat_ticks(stat: &str) -> u64 {
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// CPU ticks of this process's threads whose names start with one of `names` (the host's
/// runtime and the facade's serving threads).
fn thread_ticks(names: &[&str]) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| names.iter().any(|n| c.trim().starts_with(n)))
        })
        .map(|t| std::fs::read_to_string(t.path().join("stat")).map_or(0, |s| stat_ticks(&s)))
        .sum()
}

/// CPU ticks of the nginx master `pid` and its workers.
fn process_tree_ticks(pid: u32) -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .filter(|stat| {
            let own = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u32>().ok());
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            own == Some(pid) || parent == Some(pid)
        })
        .map(|stat| stat_ticks(&stat))
        .sum()
}

fn have_wrk() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Requests per second with `wrk`.
fn wrk(url: &str, auth: &str, secs: u64, conns: usize) -> f64 {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "-H",
            &format!("Authorization: {auth}"),
            url,
        ])
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let non_2xx = text.lines().find(|l| l.contains("Non-2xx"));
    assert!(non_2xx.is_none(), "{url}: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"))
}

/// Requests per second with an in-process generator (when wrk is missing).
fn reqwest_load(
    rt: &tokio::runtime::Runtime,
    url: &str,
    auth: &str,
    secs: u64,
    conns: usize,
) -> f64 {
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(conns)
            .build()
            .unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (client, done, url, auth) = (
                    client.clone(),
                    done.clone(),
                    url.to_string(),
                    auth.to_string(),
                );
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let r = client
                            .get(&url)
                            .header("Authorization", &auth)
                            .send()
                            .await
                            .unwrap();
                        assert!(r.status().is_success());
                        let _ = r.bytes().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / secs as f64
    })
}

/// p50 and p99 of sequential requests on one keep-alive connection, in µs.
fn latency(rt: &tokio::runtime::Runtime, url: &str, auth: &str, n: usize) -> (f64, f64) {
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let mut samples = Vec::with_capacity(n);
        for i in 0..n + 200 {
            let started = Instant::now();
            let r = client
                .get(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{url}: {}", r.status());
            let _ = r.bytes().await.unwrap();
            if i >= 200 {
                samples.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        samples.sort_by(f64::total_cmp);
        (samples[n / 2], samples[n * 99 / 100])
    })
}

/// The allocator of the `stasis-host` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches: nothing to list here
    }
    let secs: u64 = std::env::var("FACADE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let conns: usize = std::env::var("FACADE_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let sim_rt = runtime("sim");
    let host_rt = runtime("host");
    let load_rt = runtime("load");

    let sim = sim_rt.block_on(async {
        let sim = stasis_sim::Cluster::start(sim_config(2))
            .await
            .expect("simulated cluster");
        for node in sim.nodes() {
            node.set_route(
                "default",
                "7000",
                stasis_sim::Route::Stasis {
                    app: "bench".into(),
                    args: vec![],
                },
            );
        }
        sim
    });
    let (user, pass) = sim.credentials();
    let node_auth = basic(user, pass);
    let a = sim.node("a");
    let extra = format!("[facade]\nusername = \"{USER}\"\npassword = \"{PASS}\"\n");
    let (host, facade_url, _server) = host_rt.block_on(async {
        let host = Gateway::start(host_config(&sim, &extra), runtime_config())
            .await
            .expect("host starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let facade = stasis_host::facade::Facade::new(&host, &address).unwrap();
        let server = tokio::spawn(stasis_host::facade::serve(listener, facade));
        (host, format!("http://{address}"), server)
    });
    // An external client holds app `bench`; a call sits in it on node a.
    let ws_url = format!(
        "{}/ari/events?app=bench&api_key={USER}:{PASS}",
        facade_url.replace("http://", "ws://")
    );
    let _socket = load_rt.block_on(async {
        tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("facade websocket")
            .0
    });
    let channel = {
        let _in_sim = sim_rt.enter();
        a.inject_call(stasis_sim::InboundCall {
            caller_name: "Bench".into(),
            caller_number: "1000".into(),
            exten: "7000".into(),
            ..Default::default()
        })
        .expect("call")
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        host.ownership.channel_node(&channel).as_deref(),
        Some("a"),
        "the facade knows the channel's node"
    );

    let dir = tempfile::tempdir().unwrap();
    let upstream = a
        .ari_url()
        .trim_start_matches("http://")
        .trim_end_matches("/ari")
        .to_string();
    let nginx = start_nginx(&upstream, dir.path());
    if nginx.is_none() {
        eprintln!(
            "nginx not found (install it: apt-get install nginx, or run scripts/bench-facade.sh): nginx row skipped"
        );
    }
    let mut targets = vec![
        Target {
            name: "direct",
            base: a.ari_url().trim_end_matches("/ari").to_string(),
            auth: node_auth.clone(),
        },
        Target {
            name: "facade",
            base: facade_url.clone(),
            auth: basic(USER, PASS),
        },
    ];
    if let Some((_, base)) = &nginx {
        targets.push(Target {
            name: "nginx",
            base: base.clone(),
            auth: node_auth.clone(),
        });
    }
    let nginx_pid = nginx.as_ref().map(|(child, _)| child.id());
    let generator = if have_wrk() {
        "wrk -t2"
    } else {
        "in-process reqwest"
    };
    println!(
        "ARI facade benchmark: {generator}, {conns} keep-alive connections, {secs} s per run; latency: 1 connection, 2000 sequential requests"
    );
    for (label, path) in [
        ("GET /ari/channels/{id}", format!("/ari/channels/{channel}")),
        ("GET /ari/asterisk/info", "/ari/asterisk/info".to_string()),
    ] {
        println!("\n{label}");
        println!(
            "{:<8} {:>12} {:>9} {:>10} {:>10} {:>14} {:>16}",
            "path", "req/s", "x direct", "p50 µs", "p99 µs", "added p50 µs", "proxy CPU µs/req"
        );
        let mut direct: Option<(f64, f64)> = None;
        for target in &targets {
            let url = format!("{}{path}", target.base);
            let (p50, p99) = latency(&load_rt, &url, &target.auth, 2000);
            let cpu_before = match target.name {
                "facade" => thread_ticks(&["host", "ari-facade"]),
                "nginx" => nginx_pid.map_or(0, process_tree_ticks),
                _ => 0,
            };
            let rps = if have_wrk() {
                wrk(&url, &target.auth, secs, conns)
            } else {
                reqwest_load(&load_rt, &url, &target.auth, secs, conns)
            };
            let cpu_after = match target.name {
                "facade" => thread_ticks(&["host", "ari-facade"]),
                "nginx" => nginx_pid.map_or(0, process_tree_ticks),
                _ => 0,
            };
            let cpu_per_request = (cpu_after - cpu_before) as f64 * 10_000.0 / (rps * secs as f64);
            let (base_rps, base_p50) = *direct.get_or_insert((rps, p50));
            let cpu = if target.name == "direct" {
                "-".to_string()
            } else {
                format!("{cpu_per_request:.1}")
            };
            println!(
                "{:<8} {:>12.0} {:>9.2} {:>10.0} {:>10.0} {:>14.0} {:>16}",
                target.name,
                rps,
                rps / base_rps,
                p50,
                p99,
                p50 - base_p50,
                cpu
            );
        }
    }
    if let Some((mut child, _)) = nginx {
        // SIGTERM, not SIGKILL: a killed master leaves its workers running.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    host.shutdown();
    sim_rt.block_on(sim.shutdown());
}
