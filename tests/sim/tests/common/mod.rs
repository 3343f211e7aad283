//! Test helpers: an ARI websocket client that records events and how the socket ended, and a
//! small REST client.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// How a websocket ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// A close frame with this code was received.
    Frame(u16),
    /// The TCP connection ended without a close frame (what clients report as 1006).
    Abnormal,
}

pub struct Ws {
    pub events: Arc<Mutex<Vec<Value>>>,
    /// The raw text of each event (to check field order).
    pub raw: Arc<Mutex<Vec<String>>>,
    pub closed: Arc<Mutex<Option<Closed>>>,
    out: tokio::sync::mpsc::UnboundedSender<Message>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        Self::try_connect(url).await.expect("websocket connect")
    }

    pub async fn try_connect(url: &str) -> Result<Ws, String> {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sink, mut source) = stream.split();
        let events = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw2 = raw.clone();
        let closed = Arc::new(Mutex::new(None));
        let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (ev2, cl2) = (events.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = source.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(&t).expect("event is JSON");
                            raw2.lock().push(t.to_string());
                            ev2.lock().push(v);
                        }
                        Some(Ok(Message::Close(f))) => {
                            *cl2.lock() = Some(Closed::Frame(f.map(|f| u16::from(f.code)).unwrap_or(1005)));
                            // Let tungstenite answer the close handshake.
                            let _ = source.next().await;
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            let mut c = cl2.lock();
                            if c.is_none() {
                                *c = Some(Closed::Abnormal);
                            }
                            return;
                        }
                    },
                    o = out_rx.recv() => match o {
                        Some(m) => { let _ = sink.send(m).await; }
                        None => return,
                    }
                }
            }
        });
        Ok(Ws {
            events,
            raw,
            closed,
            out,
        })
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.events.lock().len()
    }

    pub fn types(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Wait for the first event (from index `from`) matching `pred`.
    pub async fn wait_for(
        &self,
        from: usize,
        timeout_ms: u64,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(v) = self.events.lock().iter().skip(from).find(|e| pred(e)) {
                return Some(v.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wait for an event of `ty` about channel `chan`.
    pub async fn wait_chan(&self, ty: &str, chan: &str, timeout_ms: u64) -> Option<Value> {
        self.wait_for(0, timeout_ms, |e| {
            e["type"] == ty && e["channel"]["id"] == chan
        })
        .await
    }

    pub async fn wait_closed(&self, timeout_ms: u64) -> Option<Closed> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(c) = self.closed.lock().clone() {
                return Some(c);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes a text frame to the node (a `RESTRequest`, or anything else).
    pub fn send_text(&self, text: &str) {
        let _ = self.out.send(Message::text(text));
    }

    /// The `RESTResponse` with `request_id`, and its raw text (to check field order).
    pub async fn wait_answer(&self, request_id: &str, timeout_ms: u64) -> Option<(Value, String)> {
        let answer = self
            .wait_for(0, timeout_ms, |e| {
                e["type"] == "RESTResponse" && e["request_id"] == request_id
            })
            .await?;
        let raw = self
            .raw
            .lock()
            .iter()
            .find(|r| serde_json::from_str::<Value>(r).ok().as_ref() == Some(&answer))
            .cloned()?;
        Some((answer, raw))
    }

    pub fn close(&self) {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        let _ = self.out.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "client done".into(),
        })));
    }
}

/// Minimal ARI REST client (basic auth asterisk/asterisk).
#[derive(Clone)]
pub struct Ari {
    pub base: String,
    pub http: reqwest::Client,
}

impl Ari {
    pub fn new(base: &str) -> Ari {
        Ari {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// `method path?query` → (status, body as JSON or Null). Errors are connection failures.
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
    ) -> Result<(u16, Value), reqwest::Error> {
        let url = format!("{}{}", self.base, path_and_query);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .http
            .request(m, url)
            .basic_auth("asterisk", Some("asterisk"))
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        });
        Ok((status, v))
    }

    pub async fn ok(&self, method: &str, pq: &str) -> (u16, Value) {
        self.call(method, pq).await.expect("request")
    }
}

/// The JSON "shape": field names and value types, recursively (arrays: element shapes).
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Null => Value::String("null".into()),
        Value::Bool(_) => Value::String("bool".into()),
        Value::Number(_) => Value::String("number".into()),
        Value::String(_) => Value::String("string".into()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}
