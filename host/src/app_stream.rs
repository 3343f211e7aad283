//! The app stream: one durable, ordered log of app changes in RabbitMQ, shared by every
//! host replica.
//!
//! With `[amqp] apps_stream` set, an upload, rollback or delete on any replica is not
//! applied where it arrived: it is published as a [`Record`] to a RabbitMQ *stream* (a
//! queue with `x-queue-type: stream`), and every replica — the one that received the
//! request included — applies the records in stream order (`apps.rs`). Version numbers are
//! decided when a record is applied (the next number of that name in log order), so every
//! replica numbers every version the same.
//!
//! Why a stream, and not a home-made sync protocol between replicas:
//! - **Ordered.** One log, one order: no vector clocks, no "last writer wins", no conflicts
//!   to resolve. Two uploads racing on two replicas become versions n and n+1 everywhere.
//! - **Durable and replayable from the start.** Consumption never removes a record, so a
//!   replica that starts later (or restarts with an empty disk) reads the log from offset
//!   `first` and ends up with every app and version, deleted ones deleted. No snapshot
//!   transfer, no peer discovery.
//! - **RabbitMQ-native.** The broker the replicas already share; publisher confirms say a
//!   record is stored; a consumer resumes at any offset after a connection loss.
//!
//! The stream must keep every record: do not give it a retention policy
//! (`x-max-length-bytes`, `x-max-age`), or replicas started later miss the apps whose
//! records were dropped.
//!
//! Wire format of one record (one AMQP message, published to the default exchange with the
//! stream's name as routing key):
//! - header `stasis-record`: the [`Record`] as JSON (`{"format":1,"id":"…","op":"upload",
//!   "name":"conf","sha256":"…",…}`);
//! - body: the component (`.wasm`) of an upload, empty otherwise;
//! - `message_id`: the record id (128 random bits, hex), which the publishing replica uses to
//!   recognise its own record when it comes back, and every replica uses to apply a record
//!   published twice (a publish retried after a lost confirm) only once.
//!
//! The stream position of each delivery is RabbitMQ's `x-stream-offset` header; the follower
//! resumes after the last offset it handed over when the connection comes back (with
//! exponential backoff and jitter while the broker is away).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::store::{AppLimits, sha256_hex};

/// The message header carrying the record's JSON.
pub const RECORD_HEADER: &str = "stasis-record";
/// The record format this host writes and understands.
pub const FORMAT: u32 = 1;
/// Deliveries in flight per follower: bodies can be tens of MB (a Python component).
const PREFETCH: u16 = 2;
/// Longest wait between reconnection attempts.
const MAX_RECONNECT: Duration = Duration::from_secs(5);
/// Longest wait for a connection (TCP, AMQP handshake, declaring the stream).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for RabbitMQ to confirm a published record.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the app stream could not be reached, written or read.
#[derive(Debug, thiserror::Error)]
pub enum AppStreamError {
    #[error("invalid app stream name {0:?}: 1 to 255 bytes, not starting with \"amq.\"")]
    BadName(String),
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("app stream {stream:?}: {action} failed: {source}")]
    Broker {
        stream: String,
        action: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("app stream {stream:?}: RabbitMQ did not store the record ({reason})")]
    NotStored { stream: String, reason: String },
    #[error(
        "app stream {stream:?}: {action} timed out after {} s{}",
        after.as_secs(),
        if *action == "publisher confirm" { " (the record may or may not be logged)" } else { "" }
    )]
    Timeout {
        stream: String,
        action: &'static str,
        after: Duration,
    },
    #[error("app stream {stream:?}: the consumer was cancelled by the broker")]
    ConsumerEnded { stream: String },
    #[error("malformed app stream record: {0}")]
    Malformed(String),
}

/// One change of the uploaded apps, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`FORMAT`]; a record of another format is skipped (logged), never misread.
    pub format: u32,
    /// Unique per record: 128 random bits, hex.
    pub id: String,
    #[serde(flatten)]
    pub op: Op,
}

/// What a record does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A new version of `name`; the component is the message body. Its version number is
    /// the next one of `name` when the record is applied.
    Upload {
        name: String,
        /// SHA-256 of the body (hex), checked on receipt.
        sha256: String,
        size: u64,
        /// How long the publishing replica took to compile it (shown, not used).
        compile_ms: u64,
        /// Seconds since the Unix epoch, on the publishing replica.
        uploaded_at: u64,
        limits: AppLimits,
        #[serde(default)]
        config: BTreeMap<String, String>,
    },
    /// Make the newest version older than the active one active.
    Rollback { name: String },
    /// Remove the app; `force` hangs its calls in progress up.
    Delete { name: String, force: bool },
    /// Changes nothing: a replica publishes one when it starts and knows it has caught up
    /// with the log once it reads it back.
    Sync,
}

impl Record {
    /// A record with a fresh id.
    pub fn new(op: Op) -> Record {
        Record {
            format: FORMAT,
            id: format!("{:032x}", rand::random::<u128>()),
            op,
        }
    }

    /// The app the record changes (none for [`Op::Sync`]).
    pub fn app(&self) -> Option<&str> {
        match &self.op {
            Op::Upload { name, .. } | Op::Rollback { name } | Op::Delete { name, .. } => Some(name),
            Op::Sync => None,
        }
    }
}

/// A record read from the stream, in order.
#[derive(Debug)]
pub struct Logged {
    /// Its position in the stream.
    pub offset: u64,
    pub record: Record,
    /// The component of an upload (checked against its `sha256`); empty otherwise.
    pub body: Vec<u8>,
}

/// The message properties of `record`.
pub fn encode(record: &Record) -> BasicProperties {
    let json = serde_json::to_vec(record).expect("records serialize");
    let mut headers = FieldTable::default();
    headers.insert(RECORD_HEADER.into(), AMQPValue::LongString(json.into()));
    let content_type = match record.op {
        Op::Upload { .. } => "application/wasm",
        _ => "application/octet-stream",
    };
    BasicProperties::default()
        .with_headers(headers)
        .with_message_id(record.id.as_str().into())
        .with_content_type(content_type.into())
        .with_delivery_mode(2)
}

/// The record of a message: its header parsed, the body checked against an upload's hash.
pub fn decode(headers: Option<&FieldTable>, body: &[u8]) -> Result<Record, AppStreamError> {
    let malformed = |m: String| AppStreamError::Malformed(m);
    let value = headers
        .and_then(|h| h.inner().get(RECORD_HEADER))
        .ok_or_else(|| malformed(format!("no {RECORD_HEADER} header")))?;
    let json: &[u8] = match value {
        AMQPValue::LongString(s) => s.as_bytes(),
        AMQPValue::ByteArray(b) => b.as_slice(),
        other => {
            return Err(malformed(format!(
                "{RECORD_HEADER} is a {:?}, not a string",
                other.get_type()
            )));
        }
    };
    let format = serde_json::from_slice::<serde_json::Value>(json)
        .map_err(|e| malformed(format!("{RECORD_HEADER}: {e}")))?
        .get("format")
        .and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        return Err(malformed(format!(
            "format {format:?}; this host reads format {FORMAT} (a newer host wrote it?)"
        )));
    }
    let record: Record =
        serde_json::from_slice(json).map_err(|e| malformed(format!("{RECORD_HEADER}: {e}")))?;
    if let Op::Upload { sha256, size, .. } = &record.op {
        let actual = sha256_hex(body);
        if body.len() as u64 != *size || &actual != sha256 {
            return Err(malformed(format!(
                "record {}: the body ({} bytes, sha256 {actual}) is not the component it names ({size} bytes, sha256 {sha256})",
                record.id,
                body.len()
            )));
        }
    } else if !body.is_empty() {
        return Err(malformed(format!(
            "record {}: unexpected body of {} bytes",
            record.id,
            body.len()
        )));
    }
    Ok(record)
}

/// The stream offset RabbitMQ put on a delivery (`x-stream-offset`).
pub fn offset_of(headers: Option<&FieldTable>) -> Option<u64> {
    match headers?.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// A connection and a publisher-confirm channel, kept between publishes.
struct Publisher {
    _connection: Connection,
    channel: Channel,
}

/// The app stream of one broker: publish records, follow the log.
pub struct AppStream {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    stream: String,
    publisher: tokio::sync::Mutex<Option<Publisher>>,
    /// How many times the follower lost (or could not get) its connection.
    failures: tokio::sync::watch::Sender<u64>,
}

impl AppStream {
    /// The stream `stream` on the broker at `url` (nothing is connected yet); `tls` for an
    /// `amqps://` URL.
    pub fn new(
        url: &str,
        stream: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Arc<AppStream>, AppStreamError> {
        if stream.is_empty() || stream.len() > 255 || stream.starts_with("amq.") {
            return Err(AppStreamError::BadName(stream.to_string()));
        }
        Ok(Arc::new(AppStream {
            url: url.to_string(),
            tls,
            stream: stream.to_string(),
            publisher: tokio::sync::Mutex::new(None),
            failures: tokio::sync::watch::channel(0).0,
        }))
    }

    /// Counts the follower's connection failures, as they happen (e.g. to stop waiting for
    /// it to catch up while the broker is unreachable).
    pub fn failures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.failures.subscribe()
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.stream
    }

    fn broker(&self, action: &'static str) -> impl FnOnce(lapin::Error) -> AppStreamError + '_ {
        move |source| AppStreamError::Broker {
            stream: self.stream.clone(),
            action,
            source,
        }
    }

    /// Connects, opens a channel and declares the stream (idempotent; fails if a queue of
    /// that name exists with another type), within [`CONNECT_TIMEOUT`].
    async fn connect(&self, role: &str) -> Result<(Connection, Channel), AppStreamError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now(role))
            .await
            .map_err(|_| AppStreamError::Timeout {
                stream: self.stream.clone(),
                action: "connecting",
                after: CONNECT_TIMEOUT,
            })?
    }

    async fn connect_now(&self, role: &str) -> Result<(Connection, Channel), AppStreamError> {
        let name = format!("stasis-host {role} of app stream {}", self.stream);
        let connection = crate::amqp::connect_broker(&self.url, &name, &self.tls)
            .await
            .map_err(|source| AppStreamError::Connect {
                url: crate::amqp::redact(&self.url),
                source,
            })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(self.broker("channel.open"))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        channel
            .queue_declare(
                self.stream.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(self.broker("declaring the stream (queue.declare)"))?;
        Ok((connection, channel))
    }

    /// Appends `record` (with `body`, the component of an upload) and returns once RabbitMQ
    /// confirmed it stored it. A kept connection that has gone stale is replaced once; a
    /// record that was stored twice that way is applied once (same id).
    pub async fn publish(&self, record: &Record, body: &[u8]) -> Result<(), AppStreamError> {
        let mut publisher = self.publisher.lock().await;
        loop {
            let fresh = publisher.is_none();
            if fresh {
                let (connection, channel) = self.connect("publisher").await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(self.broker("confirm.select"))?;
                *publisher = Some(Publisher {
                    _connection: connection,
                    channel,
                });
            }
            let channel = &publisher.as_ref().expect("connected above").channel;
            match self.send(channel, record, body).await {
                Ok(()) => {
                    debug!(stream = %self.stream, id = %record.id, bytes = body.len(), "app record published");
                    return Ok(());
                }
                Err(e) => {
                    *publisher = None;
                    if fresh
                        || matches!(
                            e,
                            AppStreamError::NotStored { .. } | AppStreamError::Timeout { .. }
                        )
                    {
                        return Err(e);
                    }
                    warn!(stream = %self.stream, error = %e, "publishing on the kept connection failed: reconnecting");
                }
            }
        }
    }

    async fn send(
        &self,
        channel: &Channel,
        record: &Record,
        body: &[u8],
    ) -> Result<(), AppStreamError> {
        let confirm = async {
            channel
                .basic_publish(
                    "".into(),
                    self.stream.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    encode(record),
                )
                .await
                .map_err(self.broker("basic.publish"))?
                .await
                .map_err(self.broker("publisher confirm"))
        };
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| AppStreamError::Timeout {
                stream: self.stream.clone(),
                action: "publisher confirm",
                after: CONFIRM_TIMEOUT,
            })??;
        let not_stored = |reason: &str| AppStreamError::NotStored {
            stream: self.stream.clone(),
            reason: reason.to_string(),
        };
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(not_stored(&format!(
                "returned: {} {}",
                returned.reply_code, returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(not_stored("negative confirm")),
            Confirmation::NotRequested => Err(not_stored("no publisher confirm")),
        }
    }

    /// Follows the log in a task: every record from the start (offset `first`), in order,
    /// into `tx`, forever, reconnecting with backoff and resuming after the last record
    /// handed over. On the first connection it publishes `barrier` (a [`Op::Sync`] record)
    /// before reading, so reading it back means the follower has caught up with everything
    /// logged before this replica started. Ends when `tx` is closed.
    pub fn follow(self: &Arc<Self>, tx: mpsc::Sender<Logged>, barrier: Record) -> JoinHandle<()> {
        let stream = self.clone();
        tokio::spawn(async move { stream.follow_forever(tx, barrier).await })
    }

    async fn follow_forever(&self, tx: mpsc::Sender<Logged>, barrier: Record) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(MAX_RECONNECT)
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        let mut next: Option<u64> = None;
        let mut barrier = Some(barrier);
        loop {
            let result = self
                .follow_once(&tx, &mut next, &mut barrier, || delays = backoff.build())
                .await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    self.failures.send_modify(|n| *n += 1);
                    let delay = delays.next().unwrap_or(MAX_RECONNECT);
                    // A refused certificate (amqps://) says what to do about it.
                    let advice = crate::tls::advice(&e).unwrap_or_default();
                    warn!(stream = %self.stream, error = %e, advice, resume_at = ?next, retry_ms = delay.as_millis() as u64,
                        "app stream follower disconnected");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        }
    }

    /// One connection's worth of following. `Ok` only when `tx` is closed.
    async fn follow_once(
        &self,
        tx: &mpsc::Sender<Logged>,
        next: &mut Option<u64>,
        barrier: &mut Option<Record>,
        connected: impl FnOnce(),
    ) -> Result<(), AppStreamError> {
        let (_connection, channel) = self.connect("follower").await?;
        if let Some(record) = barrier.as_ref() {
            self.publish(record, &[]).await?;
            *barrier = None;
        }
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(self.broker("basic.qos"))?;
        let mut arguments = FieldTable::default();
        let start = match *next {
            Some(offset) => AMQPValue::LongLongInt(offset as i64),
            None => AMQPValue::LongString("first".into()),
        };
        arguments.insert("x-stream-offset".into(), start);
        let mut consumer = channel
            .basic_consume(
                self.stream.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(self.broker("basic.consume"))?;
        connected();
        info!(stream = %self.stream, from = ?next, "following the app stream");
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                () = tx.closed() => return Ok(()),
            };
            let mut delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(self.broker("consuming")(e)),
                None => {
                    return Err(AppStreamError::ConsumerEnded {
                        stream: self.stream.clone(),
                    });
                }
            };
            let headers = delivery.properties.headers().clone();
            let offset = offset_of(headers.as_ref());
            // A consumer attached at an offset starts at the beginning of that offset's chunk:
            // skip what was handed over already.
            let skip = match (offset, *next) {
                (Some(offset), Some(next)) => offset < next,
                _ => false,
            };
            if !skip {
                let body = std::mem::take(&mut delivery.data);
                match (offset, decode(headers.as_ref(), &body)) {
                    (Some(offset), Ok(record)) => {
                        if tx
                            .send(Logged {
                                offset,
                                record,
                                body,
                            })
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    (None, _) => {
                        warn!(stream = %self.stream, "delivery without x-stream-offset skipped (is this queue a stream?)")
                    }
                    (Some(offset), Err(e)) => {
                        warn!(stream = %self.stream, offset, error = %e, "app stream record skipped")
                    }
                }
                if let Some(offset) = offset {
                    *next = Some(offset + 1);
                }
            }
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(self.broker("basic.ack"))?;
        }
    }

    /// Every readable record from the start, with its offset, until no delivery came for
    /// `idle` (bodies are dropped). For tools and tests: it does not know where the log ends.
    pub async fn history(&self, idle: Duration) -> Result<Vec<(u64, Record)>, AppStreamError> {
        let (_connection, channel) = self.connect("reader").await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(self.broker("basic.qos"))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        let mut consumer = channel
            .basic_consume(
                self.stream.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(self.broker("basic.consume"))?;
        let mut records = Vec::new();
        while let Ok(Some(delivery)) = tokio::time::timeout(idle, consumer.next()).await {
            let delivery = delivery.map_err(self.broker("consuming"))?;
            let headers = delivery.properties.headers().clone();
            if let (Some(offset), Ok(record)) = (
                offset_of(headers.as_ref()),
                decode(headers.as_ref(), &delivery.data),
            ) {
                records.push((offset, record));
            }
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(self.broker("basic.ack"))?;
        }
        Ok(records)
    }

    /// Deletes the stream and every record in it. For tests and decommissioning: replicas
    /// started afterwards start from an empty log.
    pub async fn delete(&self) -> Result<(), AppStreamError> {
        let (_connection, channel) = self.connect("admin").await?;
        channel
            .queue_delete(self.stream.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(self.broker("queue.delete"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(body: &[u8]) -> Record {
        Record::new(Op::Upload {
            name: "conf".into(),
            sha256: sha256_hex(body),
            size: body.len() as u64,
            compile_ms: 12,
            uploaded_at: 1_700_000_000,
            limits: AppLimits::default(),
            config: BTreeMap::from([("room".to_string(), "42".to_string())]),
        })
    }

    #[test]
    fn records_round_trip_through_message_properties() {
        let body = b"\0asm component";
        for (record, body) in [
            (upload(body), &body[..]),
            (
                Record::new(Op::Rollback {
                    name: "conf".into(),
                }),
                &[][..],
            ),
            (
                Record::new(Op::Delete {
                    name: "conf".into(),
                    force: true,
                }),
                &[][..],
            ),
            (Record::new(Op::Sync), &[][..]),
        ] {
            let properties = encode(&record);
            assert_eq!(
                properties.message_id().as_ref().map(|s| s.as_str()),
                Some(record.id.as_str())
            );
            let decoded = decode(properties.headers().as_ref(), body).unwrap();
            assert_eq!(decoded, record);
        }
        let json = serde_json::to_value(upload(body)).unwrap();
        assert_eq!(json["op"], "upload");
        assert_eq!(json["format"], 1);
        assert_eq!(json["limits"]["memory_mb"], 16);
    }

    #[test]
    fn ids_are_unique_128_bit_hex() {
        let a = Record::new(Op::Sync);
        let b = Record::new(Op::Sync);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert!(a.id.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn damaged_or_foreign_records_are_refused() {
        let record = upload(b"component");
        let headers = encode(&record).headers().clone();
        let err = decode(headers.as_ref(), b"componenT").unwrap_err();
        assert!(err.to_string().contains("is not the component"), "{err}");
        assert!(
            decode(None, b"")
                .unwrap_err()
                .to_string()
                .contains("no stasis-record")
        );
        let mut future = serde_json::to_value(&record).unwrap();
        future["format"] = 2.into();
        let mut headers = FieldTable::default();
        headers.insert(
            RECORD_HEADER.into(),
            AMQPValue::LongString(future.to_string().into()),
        );
        let err = decode(Some(&headers), b"component").unwrap_err();
        assert!(err.to_string().contains("format Some(2)"), "{err}");
        let mut unknown = FieldTable::default();
        unknown.insert(
            RECORD_HEADER.into(),
            AMQPValue::LongString(r#"{"format":1,"id":"x","op":"explode"}"#.into()),
        );
        assert!(decode(Some(&unknown), b"").is_err());
        let rollback = encode(&Record::new(Op::Rollback { name: "a".into() }));
        assert!(decode(rollback.headers().as_ref(), b"x").is_err());
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        crate::tls::client_config(None).unwrap()
    }

    #[test]
    fn offsets_and_names() {
        let mut headers = FieldTable::default();
        headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(42));
        assert_eq!(offset_of(Some(&headers)), Some(42));
        headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(-1));
        assert_eq!(offset_of(Some(&headers)), None);
        assert_eq!(offset_of(None), None);
        assert!(AppStream::new("amqp://h", "", tls()).is_err());
        assert!(AppStream::new("amqp://h", "amq.x", tls()).is_err());
        assert!(AppStream::new("amqp://h", &"s".repeat(256), tls()).is_err());
        assert_eq!(
            AppStream::new("amqp://h", "apps", tls()).unwrap().name(),
            "apps"
        );
    }
}
