//! Replays a recorded scenario (`fixtures/*.json`) against the simulator and compares, ids and
//! timestamps aside: REST statuses and body shapes, and per-channel event sequences (types in
//! order, plus each event's field names and JSON types).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use stasis_sim::{Cluster, ClusterConfig};

use crate::common::{Ari, Ws, shape};

/// Something the recording did besides REST.
#[derive(Clone, Debug)]
pub enum Hook {
    Kill(&'static str),
    Revive(&'static str),
    /// Connect the recorded websocket `label`.
    Connect(&'static str),
    /// Close the websocket `label` (client close frame).
    Close(&'static str),
    /// Inject an inbound call on a node (stands in for sipp).
    Inject {
        node: &'static str,
        context: &'static str,
        exten: &'static str,
    },
    /// The far end of the channel that had the `n`-th StasisStart on `label` hangs up.
    FarHangup {
        label: &'static str,
        nth: usize,
        cause: Option<u32>,
    },
}

pub struct Options {
    pub file: &'static str,
    /// Websocket labels connected before the replay starts.
    pub initial_ws: Vec<&'static str>,
    pub hooks: Vec<(f64, Hook)>,
    /// Events ignored on both sides (documented differences).
    pub ignore_event: fn(&Value) -> bool,
    /// REST paths whose body shape is not compared (status still is).
    pub skip_shape: fn(&str) -> bool,
    /// REST requests not replayed at all (documented).
    pub skip_request: fn(&Value) -> bool,
}

impl Options {
    pub fn new(file: &'static str) -> Self {
        Options {
            file,
            initial_ws: vec!["a", "b"],
            hooks: vec![],
            ignore_event: |_| false,
            skip_shape: |_| false,
            skip_request: |_| false,
        }
    }
}

#[derive(Default, Debug)]
pub struct Report {
    pub rest_total: usize,
    pub rest_status_ok: usize,
    pub rest_shape_ok: usize,
    pub rest_skipped: usize,
    pub channels_total: usize,
    pub channels_ok: usize,
    pub events_compared: usize,
    pub mismatches: Vec<String>,
}

impl Report {
    pub fn summary(&self, name: &str) -> String {
        format!(
            "{name}: REST status {}/{} shape {}/{} (skipped {}), per-channel event sequences {}/{} ({} events), mismatches {}",
            self.rest_status_ok,
            self.rest_total,
            self.rest_shape_ok,
            self.rest_total,
            self.rest_skipped,
            self.channels_ok,
            self.channels_total,
            self.events_compared,
            self.mismatches.len()
        )
    }
}

fn load(file: &str) -> Value {
    let path = format!("{}/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

fn rec_events(rec: &Value, label: &str) -> Vec<(f64, Value)> {
    rec["events"][label]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e["t"].as_f64().unwrap_or(0.0), e["event"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The per-channel grouping key of an event.
fn key(e: &Value) -> String {
    if let Some(id) = e["channel"]["id"].as_str() {
        return id.to_string();
    }
    if let Some(id) = e["peer"]["id"].as_str() {
        return id.to_string();
    }
    if let Some(t) = e["playback"]["target_uri"].as_str() {
        return t.split_once(':').map(|x| x.1).unwrap_or(t).to_string();
    }
    if let Some(b) = e["bridge"]["id"].as_str() {
        return format!("bridge:{b}");
    }
    "-".to_string()
}

fn descriptor(e: &Value) -> String {
    let ty = e["type"].as_str().unwrap_or("?");
    match ty {
        "ChannelVarset" => format!("{ty}({})", e["variable"].as_str().unwrap_or("")),
        _ => ty.to_string(),
    }
}

pub struct Replay {
    pub cluster: Cluster,
    pub ws: HashMap<String, Ws>,
    pub map: HashMap<String, String>,
    rec: Value,
    opts: Options,
    pub report: Report,
}

fn is_server_id(s: &str) -> bool {
    s.starts_with("ast-a-") || s.starts_with("ast-b-")
}

impl Replay {
    fn map_id(&self, s: &str) -> String {
        self.map.get(s).cloned().unwrap_or_else(|| s.to_string())
    }

    fn map_value(&self, v: &str) -> String {
        v.split(',')
            .map(|part| match part.split_once(':') {
                Some((k, id)) if matches!(k, "channel" | "bridge") => {
                    format!("{k}:{}", self.map_id(id))
                }
                _ => self.map_id(part),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Map recorded StasisStart channel ids to the simulator's, in order, per socket.
    fn learn_from_events(&mut self) {
        for (label, ws) in &self.ws {
            let rec: Vec<String> = rec_events(&self.rec, label)
                .iter()
                .filter(|(_, e)| e["type"] == "StasisStart")
                .map(|(_, e)| e["channel"]["id"].as_str().unwrap_or("").to_string())
                .collect();
            let sim: Vec<String> = ws
                .events()
                .iter()
                .filter(|e| e["type"] == "StasisStart")
                .map(|e| e["channel"]["id"].as_str().unwrap_or("").to_string())
                .collect();
            for (r, s) in rec.iter().zip(sim.iter()) {
                if r != s {
                    self.map.entry(r.clone()).or_insert_with(|| s.clone());
                }
            }
        }
    }

    async fn sync_events(&mut self, t: f64) {
        let deadline = Instant::now() + Duration::from_millis(2500);
        loop {
            let behind = self.ws.iter().any(|(label, ws)| {
                let want = rec_events(&self.rec, label)
                    .iter()
                    .filter(|(et, _)| *et < t)
                    .count();
                ws.count() < want
            });
            if !behind || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.learn_from_events();
    }

    fn ari_for(&self, node: &str) -> Ari {
        Ari::new(&self.cluster.node(node).ari_url().replace("/ari", ""))
    }

    async fn connect(&mut self, label: &str) {
        let inst = self.rec["websockets"][label]["instance"]
            .as_str()
            .unwrap_or(label)
            .to_string();
        let app = self.rec["websockets"][label]["app"]
            .as_str()
            .unwrap_or("conf")
            .to_string();
        let url = self.cluster.node(&inst).ws_url(&app);
        if let Ok(ws) = Ws::try_connect(&url).await {
            self.ws.insert(label.to_string(), ws);
        }
        // Give the registration a moment (it happens right after the handshake).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    async fn rest(&mut self, r: &Value) {
        if (self.opts.skip_request)(r) {
            self.report.rest_skipped += 1;
            return;
        }
        self.report.rest_total += 1;
        let inst = r["instance"].as_str().unwrap_or("a");
        let method = r["method"].as_str().unwrap_or("GET");
        let rec_path = r["path"].as_str().unwrap_or("");
        // Wait (briefly) for server ids this request needs.
        let needs: Vec<String> = rec_path
            .split('/')
            .map(str::to_string)
            .chain(
                r["query"]
                    .as_object()
                    .map(|q| {
                        q.values()
                            .filter_map(|v| v.as_str())
                            .flat_map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            )
            .filter(|s| is_server_id(s))
            .collect();
        let deadline = Instant::now() + Duration::from_millis(2000);
        while needs.iter().any(|n| !self.map.contains_key(n)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.learn_from_events();
        }
        let path: String = rec_path
            .split('/')
            .map(|s| self.map_id(s))
            .collect::<Vec<_>>()
            .join("/");
        let query: Vec<(String, String)> = r["query"]
            .as_object()
            .map(|q| {
                q.iter()
                    .map(|(k, v)| (k.clone(), self.map_value(v.as_str().unwrap_or(""))))
                    .collect()
            })
            .unwrap_or_default();
        let base = self.ari_for(inst);
        let url = format!("{}{}", base.base, path);
        let mut req = base
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &url,
            )
            .query(&query);
        if r["request_headers"]["Authorization"].is_string() {
            req = req.basic_auth("asterisk", Some("asterisk"));
        }
        if !r["request_body"].is_null() {
            req = req.json(&r["request_body"]);
        }
        let rec_status = r["status"].as_u64().map(|s| s as u16);
        let result = req.send().await;
        let what = format!("{method} {rec_path} {:?}", r["query"]);
        match (rec_status, result) {
            (None, Err(_)) => {
                self.report.rest_status_ok += 1;
                self.report.rest_shape_ok += 1;
            }
            (None, Ok(resp)) => self.report.mismatches.push(format!(
                "{what}: recorded connection error, sim answered {}",
                resp.status()
            )),
            (Some(s), Err(e)) => self
                .report
                .mismatches
                .push(format!("{what}: recorded {s}, sim connection error {e}")),
            (Some(s), Ok(resp)) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
                    Value::Null
                } else {
                    Value::String(text)
                });
                if status == s {
                    self.report.rest_status_ok += 1;
                } else {
                    self.report.mismatches.push(format!(
                        "{what}: status recorded {s} sim {status} body {body}"
                    ));
                }
                let rec_body = &r["response_body"];
                if (self.opts.skip_shape)(rec_path) || shape(rec_body) == shape(&body) {
                    self.report.rest_shape_ok += 1;
                } else {
                    self.report.mismatches.push(format!(
                        "{what}: body shape differs:\n   recorded {}\n   sim      {}",
                        shape(rec_body),
                        shape(&body)
                    ));
                }
                if let (Some(ri), Some(si)) = (rec_body["id"].as_str(), body["id"].as_str())
                    && ri != si
                {
                    self.map.insert(ri.to_string(), si.to_string());
                }
            }
        }
    }

    async fn hook(&mut self, h: &Hook) {
        match h {
            Hook::Kill(n) => self.cluster.node(n).kill().await,
            Hook::Revive(n) => self.cluster.node(n).revive().await.expect("revive"),
            Hook::Connect(l) => self.connect(l).await,
            Hook::Close(l) => {
                if let Some(ws) = self.ws.get(*l) {
                    ws.close();
                    ws.wait_closed(1000).await;
                }
            }
            Hook::Inject {
                node,
                context,
                exten,
            } => {
                self.cluster
                    .node(node)
                    .inject_call(stasis_sim::InboundCall {
                        caller_name: "sipp".into(),
                        caller_number: "sipp".into(),
                        exten: exten.to_string(),
                        context: Some(context.to_string()),
                        ..Default::default()
                    })
                    .expect("inject");
            }
            Hook::FarHangup { label, nth, cause } => {
                let ws = &self.ws[*label];
                let id = ws
                    .events()
                    .iter()
                    .filter(|e| e["type"] == "StasisStart")
                    .nth(*nth)
                    .and_then(|e| e["channel"]["id"].as_str().map(str::to_string))
                    .expect("StasisStart to hang up");
                let inst = self.rec["websockets"][*label]["instance"]
                    .as_str()
                    .unwrap_or(label)
                    .to_string();
                self.cluster
                    .node(&inst)
                    .hangup_far_end(&id, *cause)
                    .expect("hangup");
            }
        }
    }

    fn compare_events(&mut self) {
        let labels: Vec<String> = self.ws.keys().cloned().collect();
        for label in labels {
            let mut rec_groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (_, e) in rec_events(&self.rec, &label) {
                if (self.opts.ignore_event)(&e) {
                    continue;
                }
                rec_groups.entry(self.map_id(&key(&e))).or_default().push(e);
            }
            let mut sim_groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for e in self.ws[&label].events() {
                if (self.opts.ignore_event)(&e) {
                    continue;
                }
                sim_groups.entry(key(&e)).or_default().push(e);
            }
            let keys: std::collections::BTreeSet<String> = rec_groups
                .keys()
                .chain(sim_groups.keys())
                .cloned()
                .collect();
            for k in keys {
                self.report.channels_total += 1;
                let empty = vec![];
                let r = rec_groups.get(&k).unwrap_or(&empty);
                let s = sim_groups.get(&k).unwrap_or(&empty);
                let rd: Vec<String> = r.iter().map(descriptor).collect();
                let sd: Vec<String> = s.iter().map(descriptor).collect();
                let mut ok = rd == sd;
                if !ok {
                    self.report.mismatches.push(format!(
                        "[{label}] {k}: event sequence differs\n   recorded {rd:?}\n   sim      {sd:?}"
                    ));
                } else {
                    for (re, se) in r.iter().zip(s.iter()) {
                        self.report.events_compared += 1;
                        if shape(re) != shape(se) {
                            ok = false;
                            self.report.mismatches.push(format!(
                                "[{label}] {k}: {} shape differs\n   recorded {}\n   sim      {}",
                                descriptor(re),
                                shape(re),
                                shape(se)
                            ));
                        }
                    }
                }
                if ok {
                    self.report.channels_ok += 1;
                }
            }
        }
    }
}

/// Replay a scenario and return the report (and the replay, for extra assertions).
pub async fn run(opts: Options, cfg: ClusterConfig) -> Replay {
    let rec = load(opts.file);
    let cluster = Cluster::start(cfg).await.expect("cluster");
    let mut rp = Replay {
        cluster,
        ws: HashMap::new(),
        map: HashMap::new(),
        rec: rec.clone(),
        opts,
        report: Report::default(),
    };
    // Connect the initial sockets when the recording did (some requests precede them).
    let mut connects = Vec::new();
    for label in rp.opts.initial_ws.clone() {
        if rec["websockets"][label].is_object() || rec["events"][label].is_array() {
            let at = rec["websockets"][label]["connected_at"]
                .as_f64()
                .unwrap_or(0.0);
            connects.push(((at - 0.001).max(0.0), Hook::Connect(label)));
        }
    }
    enum Item {
        Rest(Value),
        Hook(Hook),
    }
    let mut items: Vec<(f64, Item)> = rec["rest"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r["t"].as_f64().unwrap_or(0.0), Item::Rest(r)))
        .collect();
    for (t, h) in connects.into_iter().chain(rp.opts.hooks.clone()) {
        items.push((t, Item::Hook(h)));
    }
    // Hooks first at equal times (a socket connected "at" a request time precedes it).
    items.sort_by(|a, b| {
        a.0.partial_cmp(&b.0)
            .unwrap()
            .then_with(|| matches!(a.1, Item::Rest(_)).cmp(&matches!(b.1, Item::Rest(_))))
    });
    let start = Instant::now();
    for (t, item) in items {
        let at = start + Duration::from_secs_f64(t);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        rp.sync_events(t).await;
        match item {
            Item::Rest(r) => rp.rest(&r).await,
            Item::Hook(h) => rp.hook(&h).await,
        }
    }
    rp.sync_events(f64::MAX).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rp.learn_from_events();
    rp.compare_events();
    rp
}

/// The config the recordings were made with: nodes a and b, recorded ids and sound lengths.
pub fn recorded_cfg() -> ClusterConfig {
    ClusterConfig::default()
}
