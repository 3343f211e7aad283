//! Test helpers for the AMQP tests: the broker URL from the environment, a lapin client that
//! declares exchanges and binds temporary queues, and a recorder of received messages.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use parking_lot::Mutex;
use serde_json::Value;

/// The broker the tests use (`STASIS_TEST_AMQP_URL`, exported by `scripts/test.sh`).
pub fn amqp_url() -> String {
    match std::env::var("STASIS_TEST_AMQP_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "the AMQP tests need a RabbitMQ broker: run through scripts/test.sh or set \
             STASIS_TEST_AMQP_URL (e.g. `bash scripts/rabbitmq.sh start && eval \"$(bash \
             scripts/rabbitmq.sh env)\"`)"
        ),
    }
}

/// A name no other test (or earlier run) uses: `<prefix>-<pid>-<n>-<millis>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{ms}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One received message, with what the tests check.
#[derive(Clone, Debug)]
pub struct Received {
    pub exchange: String,
    pub routing_key: String,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    /// Header values as text (the module sends long strings).
    pub headers: BTreeMap<String, String>,
    /// Header kinds (`LongString`, ...).
    pub header_kinds: BTreeMap<String, String>,
    pub text: String,
    pub body: Value,
}

impl Received {
    /// The ARI event: `data` of an envelope, the body itself in the raw format.
    pub fn event(&self) -> &Value {
        if self.body.get("data").is_some() && self.body.get("name").is_some() {
            &self.body["data"]
        } else {
            &self.body
        }
    }

    pub fn ty(&self) -> String {
        self.event()["type"].as_str().unwrap_or("").to_string()
    }
}

fn header_text(v: &AMQPValue) -> (String, String) {
    match v {
        AMQPValue::LongString(s) => (s.to_string(), "LongString".into()),
        AMQPValue::ShortString(s) => (s.to_string(), "ShortString".into()),
        other => (format!("{other:?}"), "other".into()),
    }
}

/// A client connection to the test broker.
pub struct Broker {
    pub conn: Connection,
    pub chan: Channel,
}

impl Broker {
    pub async fn connect() -> Broker {
        let url = amqp_url();
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test broker at {url}: {e}"));
        let chan = conn.create_channel().await.expect("channel");
        Broker { conn, chan }
    }

    /// A durable topic exchange, as the host declares it before nodes publish.
    pub async fn declare_exchange(&self, name: &str) {
        self.chan
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange.declare");
    }

    pub async fn delete_exchange(&self, name: &str) {
        let _ = self
            .chan
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await;
    }

    /// A temporary (exclusive, auto-delete) queue bound to `exchange` with each of `keys`,
    /// consumed into a [`Sub`].
    pub async fn subscribe(&self, exchange: &str, keys: &[&str]) -> Sub {
        let chan = self.conn.create_channel().await.expect("channel");
        let q = chan
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue.declare");
        for key in keys {
            chan.queue_bind(
                q.name().clone(),
                exchange.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
        }
        let mut consumer = chan
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("basic.consume");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let out = msgs.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let text = String::from_utf8_lossy(&d.data).into_owned();
                let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                let mut headers = BTreeMap::new();
                let mut header_kinds = BTreeMap::new();
                if let Some(h) = d.properties.headers() {
                    for (k, v) in h {
                        let (text, kind) = header_text(v);
                        headers.insert(k.to_string(), text);
                        header_kinds.insert(k.to_string(), kind);
                    }
                }
                out.lock().push(Received {
                    exchange: d.exchange.to_string(),
                    routing_key: d.routing_key.to_string(),
                    content_type: d.properties.content_type().as_ref().map(|c| c.to_string()),
                    delivery_mode: *d.properties.delivery_mode(),
                    headers,
                    header_kinds,
                    text,
                    body,
                });
            }
        });
        Sub { msgs, _chan: chan }
    }
}

/// Messages received on one temporary queue.
pub struct Sub {
    msgs: Arc<Mutex<Vec<Received>>>,
    _chan: Channel,
}

impl Sub {
    pub fn all(&self) -> Vec<Received> {
        self.msgs.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.msgs.lock().len()
    }

    pub fn types(&self) -> Vec<String> {
        self.all().iter().map(Received::ty).collect()
    }

    /// Wait for the first message matching `pred`.
    pub async fn wait_for(
        &self,
        timeout_ms: u64,
        pred: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(m) = self.msgs.lock().iter().find(|m| pred(m)) {
                return Some(m.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wait for an event of type `ty` (about channel `chan`, if given).
    pub async fn wait_event(&self, ty: &str, chan: Option<&str>, timeout_ms: u64) -> Received {
        self.wait_for(timeout_ms, |m| {
            m.ty() == ty && chan.is_none_or(|c| m.event()["channel"]["id"] == c)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no {ty} message (channel {chan:?}) within {timeout_ms} ms; got {:?}",
                self.types()
            )
        })
    }

    /// Nothing new arrives for `quiet_ms` (at most `timeout_ms` in all); returns the messages.
    pub async fn settle(&self, quiet_ms: u64, timeout_ms: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut last = self.count();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let n = self.count();
            if n != last {
                last = n;
                since = Instant::now();
            }
            if since.elapsed() >= Duration::from_millis(quiet_ms) || Instant::now() > deadline {
                return self.all();
            }
        }
    }
}
