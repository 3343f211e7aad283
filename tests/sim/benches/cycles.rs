//! How many originate + answer + hangup cycles per second one simulated node serves.
//!
//! The node runs alone on a current-thread tokio runtime on its own OS thread (so it uses one
//! core at most); the client (reqwest over loopback HTTP + one ARI websocket) runs on a second
//! current-thread runtime on another thread. Each cycle:
//! `POST /channels?endpoint=Local/8000@default&extension=9001&otherChannelId=<id>` (its `;2`
//! half runs `Stasis(conf)`), wait for that StasisStart on the websocket,
//! `POST /channels/<id>/answer`, `DELETE /channels/<id>`.
//!
//! `cargo bench -p stasis-sim` (env: `SIM_BENCH_SECS`, `SIM_BENCH_WORKERS`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use stasis_sim::{Cluster, ClusterConfig, NodeConfig};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

fn main() {
    let secs: u64 = std::env::var("SIM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let workers: usize = std::env::var("SIM_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);

    // The simulated node: one thread, one current-thread runtime.
    let (url_tx, url_rx) = std::sync::mpsc::channel::<(String, String)>();
    // Ask the server thread for its own CPU time (utime+stime ticks of /proc/thread-self).
    let (cpu_tx, mut cpu_rx) = tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<f64>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut cfg = ClusterConfig::with_nodes(1);
            cfg.nodes = vec![NodeConfig::named("a")];
            let cluster = Cluster::start(cfg).await.unwrap();
            let a = cluster.node("a");
            url_tx.send((a.ari_url(), a.ws_url("conf"))).unwrap();
            tokio::spawn(async move {
                while let Some(reply) = cpu_rx.recv().await {
                    let _ = reply.send(thread_cpu_secs());
                }
            });
            let _ = stop_rx.await;
            cluster.shutdown().await;
        });
    });
    let (ari, ws_url) = url_rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cycles, elapsed, server_cpu) = rt.block_on(async move {
        let cpu = || {
            let (tx, rx) = oneshot::channel();
            cpu_tx.send(tx).unwrap();
            rx
        };
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        let (_sink, mut source) = ws.split();
        let w2 = waiters.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = source.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                    // Cheap match: only StasisStart matters.
                    if t.starts_with("{\"type\":\"StasisStart\"") {
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                        if let Some(id) = v["channel"]["id"].as_str()
                            && let Some(tx) = w2.lock().remove(id)
                        {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let http = reqwest::Client::builder().pool_max_idle_per_host(workers).build().unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs + 1);
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (http, ari, waiters, done) = (http.clone(), ari.clone(), waiters.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    // Distinct leading parts and a terminator: no id is a prefix of another.
                    let id = format!("c{i}w{w}i");
                    let (tx, rx) = oneshot::channel();
                    waiters.lock().insert(id.clone(), tx);
                    let r = http
                        .post(format!(
                            "{ari}/channels?endpoint=Local/8000@default&extension=9001&context=default&channelId=c{i}w{w}o&otherChannelId={id}"
                        ))
                        .basic_auth("asterisk", Some("asterisk"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    tokio::time::timeout(Duration::from_secs(5), rx).await.expect("StasisStart").unwrap();
                    let r = http
                        .post(format!("{ari}/channels/{id}/answer"))
                        .basic_auth("asterisk", Some("asterisk"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 204);
                    let r = http
                        .delete(format!("{ari}/channels/{id}"))
                        .basic_auth("asterisk", Some("asterisk"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 204);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Warm up for 1 s, then count.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start_count = done.load(Ordering::Relaxed);
        let cpu0 = cpu().await.unwrap();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let n = done.load(Ordering::Relaxed) - start_count;
        let cpu1 = cpu().await.unwrap();
        let el = t0.elapsed();
        for t in tasks {
            let _ = t.await;
        }
        (n, el, cpu1 - cpu0)
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    let wall = elapsed.as_secs_f64();
    println!(
        "stasis-sim: {:.0} originate+answer+hangup cycles/s on one node (one core, {workers} concurrent callers, {cycles} cycles in {wall:.1} s)",
        cycles as f64 / wall,
    );
    if server_cpu > 0.0 {
        println!(
            "stasis-sim: node thread busy {:.0}% of one core => {:.0} cycles per CPU-second of the node (the client, on the other core, is the limit when busy < 100%)",
            100.0 * server_cpu / wall,
            cycles as f64 / server_cpu
        );
    }
}

/// CPU seconds (user + system) used by the calling thread.
fn thread_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
