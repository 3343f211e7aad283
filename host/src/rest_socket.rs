//! ARI REST over a node's event websocket (`RESTRequest` / `RESTResponse`, Asterisk 22.4,
//! 21.9 and 20.14 onwards; `ari_websocket_requests.c`).
//!
//! Why: every request of every call used to be an HTTP exchange on a pooled connection of
//! its own, and that exchange (request building, pool checkout, the connection task, two
//! syscalls, response parsing) was the largest single cost per call after the events. The
//! event websocket is already open; a request on it is one small text frame, written in a
//! batch with whatever else is queued, and its answer arrives in the same reads as the events.
//!
//! How: [`crate::ingress`] owns the socket. When it opens one, it attaches a [`Lane`] here (a
//! queue to the socket's writer) and probes it with `GET asterisk/ping`. Only once the node
//! answers the probe does [`crate::ari_client::AriClient`] send requests this way; a node
//! that never answers (Asterisk before the versions above, which ignores what clients write
//! on the socket) keeps getting HTTP, and the probe is retried with backoff while the socket
//! lasts. A request the socket never got to write falls back to HTTP (in the time left of
//! its timeout); one written but not answered before the socket dropped is `unavailable`, as
//! a reset HTTP connection is. A request that gets no answer in time sends the node's
//! requests back to HTTP until the socket answers a probe again: the node may be slow, or an
//! event filter may hide its answers (they pass the filter of the socket's first app).
//!
//! Asterisk reads a socket's requests one at a time, in its reader thread: requests on one
//! node are serialised (events are not; Stasis threads write those), so once a request has
//! waited longer than `MAX_WAIT`, new ones take HTTP, where each has a connection. Paths that the socket
//! cannot carry as HTTP would (a `?`, `#` or `%` in an id; binary answers, which Asterisk
//! refuses with 406) always use HTTP.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::ari_client::AriResponse;

/// What a socket's writer task writes, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// A `RESTRequest` frame; `id` is its `request_id`.
    Request { id: u64, text: String },
    /// A websocket ping.
    Ping,
}

/// Why a request sent over the socket got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// Never written: the socket went away first. Safe to send again over HTTP.
    NotSent,
    /// Written, but the socket dropped before the answer: the node may have acted on it.
    Lost,
}

type ReplyTx = oneshot::Sender<Result<AriResponse, Undelivered>>;

/// A request waiting for its answer.
#[derive(Debug)]
struct Pending {
    /// The socket it was queued on.
    generation: u64,
    /// Handed to the socket by its writer: from then on the node may act on it.
    written: bool,
    queued: Instant,
    reply: ReplyTx,
}

/// One socket's queue to its writer.
#[derive(Debug)]
struct Lane {
    generation: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// The node answered the probe on this socket.
    ready: bool,
    /// Wakes the socket's prober when a request went unanswered (see [`RestSocket::suspect`]).
    suspect: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    lane: Option<Lane>,
    /// Requests queued or written, by `request_id`.
    pending: HashMap<u64, Pending>,
}

impl Inner {
    /// Whether requests are backing up on the socket (see [`MAX_WAIT`]).
    fn backed_up(&self) -> bool {
        if self.pending.len() >= MAX_IN_FLIGHT {
            return true;
        }
        let now = Instant::now();
        self.pending
            .values()
            .any(|p| now.duration_since(p.queued) > MAX_WAIT)
    }
}

/// The REST side of one node's event websocket; shared by the node's ARI client (which sends)
/// and its intake task (which owns the socket and delivers the answers).
#[derive(Debug, Default)]
pub struct RestSocket {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    next_generation: AtomicU64,
}

/// A request on its way: resolves to the node's answer. Dropping it (a timeout, a caller that
/// went away) forgets the request, so a late answer is ignored.
#[derive(Debug)]
pub struct Reply {
    socket: Arc<RestSocket>,
    id: u64,
    generation: u64,
    rx: oneshot::Receiver<Result<AriResponse, Undelivered>>,
}

impl Reply {
    pub async fn get(&mut self) -> Result<AriResponse, Undelivered> {
        (&mut self.rx).await.unwrap_or(Err(Undelivered::Lost))
    }

    /// The request got no answer in time: the socket is suspect (see [`RestSocket::suspect`]).
    pub fn timed_out(&self) {
        self.socket.suspect(self.generation);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.socket.inner.lock().pending.remove(&self.id);
    }
}

/// A `RESTRequest` as `ari_websocket_requests.c` parses it. Query parameters go in
/// `query_strings` (name/value pairs, no URL encoding to get wrong); a JSON entity goes in
/// `message_body` with its content type, as over HTTP.
#[derive(Serialize)]
struct RestRequest<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: String,
    method: &'a str,
    uri: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    query_strings: Vec<NameValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_body: Option<String>,
}

#[derive(Serialize)]
struct NameValue<'a> {
    name: &'a str,
    value: &'a str,
}

/// A `RESTResponse` as `send_rest_response` writes it (`type`, `uri`, `reason_phrase`,
/// `timestamp`, `asterisk_id` and `application` are not needed).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct RestResponse {
    #[serde(default)]
    pub request_id: String,
    pub status_code: u16,
    #[serde(default)]
    pub message_body: Option<String>,
}

impl RestResponse {
    pub fn parse(text: &str) -> Result<RestResponse, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// How long the oldest request on a socket may have waited before new ones go over HTTP.
/// Asterisk runs a socket's requests one after another, so one that blocks (a channel whose
/// thread is busy) holds up the rest; each HTTP connection has a thread of its own.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Most requests waiting on a socket, whatever their age.
const MAX_IN_FLIGHT: usize = 1024;

/// The probe: cheap, read-only, and in ARI since Asterisk 13.25.
const PROBE_PATH: &str = "/asterisk/ping";

impl RestSocket {
    /// Whether a request may go over the socket: a path the socket carries exactly as HTTP
    /// would. Over HTTP, Asterisk percent-decodes the path and cuts the query at `?`; a
    /// socket request's `uri` is not decoded, so ids holding those characters use HTTP. A
    /// recording's file is binary, which the socket cannot carry.
    pub fn carries(path: &str) -> bool {
        let binary = path.starts_with("/recordings/") && path.ends_with("/file");
        !binary && !path.contains(['?', '#', '%'])
    }

    /// Queues a request if the current socket answers requests; `None` means use HTTP.
    /// `path` is relative to `/ari` and starts with `/`.
    pub fn send(
        self: &Arc<Self>,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<&serde_json::Value>,
    ) -> Option<Reply> {
        if !Self::carries(path) {
            return None;
        }
        self.enqueue(None, method, path, query, body)
    }

    /// Queues a request on the socket of `generation` (`None`: the current socket, only if
    /// it answered the probe).
    fn enqueue(
        self: &Arc<Self>,
        generation: Option<u64>,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<&serde_json::Value>,
    ) -> Option<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        // Checked, queued and registered under one lock: a socket detached after this sees
        // the request (and its writer reports it unsent if it never writes it); one detached
        // before refuses it here, and HTTP takes it.
        let generation = {
            let mut inner = self.inner.lock();
            let backed_up = generation.is_none() && inner.backed_up();
            let lane = inner.lane.as_ref()?;
            let usable = match generation {
                Some(g) => lane.generation == g,
                None => lane.ready && !backed_up,
            };
            if !usable {
                return None;
            }
            let generation = lane.generation;
            let text = request_text(id, method, path, query, body);
            lane.tx.send(Outgoing::Request { id, text }).ok()?;
            inner.pending.insert(
                id,
                Pending {
                    generation,
                    written: false,
                    queued: Instant::now(),
                    reply,
                },
            );
            generation
        };
        Some(Reply {
            socket: self.clone(),
            id,
            generation,
            rx,
        })
    }

    /// A new socket takes over: requests go to its writer once it answers the probe.
    /// Returns the socket's generation (for [`RestSocket::detach`] and the probe) and what
    /// wakes its prober when a request on it goes unanswered.
    pub fn attach(&self, tx: mpsc::UnboundedSender<Outgoing>) -> (u64, Arc<tokio::sync::Notify>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let suspect = Arc::new(tokio::sync::Notify::new());
        self.inner.lock().lane = Some(Lane {
            generation,
            tx,
            ready: false,
            suspect: suspect.clone(),
        });
        (generation, suspect)
    }

    /// The socket of `generation` is gone: requests written on it and not answered are
    /// `Lost`; those still queued are reported `NotSent` by its writer as it ends. New
    /// requests use HTTP until the next socket answers its probe.
    pub fn detach(&self, generation: u64) {
        let lost: Vec<ReplyTx> = {
            let mut inner = self.inner.lock();
            if inner
                .lane
                .as_ref()
                .is_some_and(|l| l.generation == generation)
            {
                inner.lane = None;
            }
            let ids: Vec<u64> = inner
                .pending
                .iter()
                .filter(|(_, p)| p.generation == generation && p.written)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| inner.pending.remove(id))
                .map(|p| p.reply)
                .collect()
        };
        for reply in lost {
            let _ = reply.send(Err(Undelivered::Lost));
        }
    }

    /// The writer handed request `id` to the socket.
    pub fn written(&self, id: u64) {
        if let Some(p) = self.inner.lock().pending.get_mut(&id) {
            p.written = true;
        }
    }

    /// The writer did not write request `id` (the socket ended first).
    pub fn not_sent(&self, id: u64) {
        if let Some(p) = self.inner.lock().pending.remove(&id) {
            let _ = p.reply.send(Err(Undelivered::NotSent));
        }
    }

    /// Whether requests on the socket of `generation` still wait for answers.
    pub fn waiting_on(&self, generation: u64) -> bool {
        self.inner
            .lock()
            .pending
            .values()
            .any(|p| p.generation == generation)
    }

    /// A request on the socket of `generation` got no answer in time. The node may be slow,
    /// or its answers may be hidden (an event filter on the socket's first app that leaves
    /// out `RESTResponse`): requests use HTTP until the socket answers a probe again.
    pub fn suspect(&self, generation: u64) {
        let mut inner = self.inner.lock();
        if let Some(lane) = inner.lane.as_mut().filter(|l| l.generation == generation)
            && lane.ready
        {
            lane.ready = false;
            lane.suspect.notify_one();
        }
    }

    /// Whether `generation` is the current socket.
    pub fn is_current(&self, generation: u64) -> bool {
        self.inner
            .lock()
            .lane
            .as_ref()
            .is_some_and(|l| l.generation == generation)
    }

    /// An answer arrived. Returns false if no request waits for it (timed out, or not ours).
    pub fn answer(&self, response: RestResponse) -> bool {
        let Ok(id) = response.request_id.parse::<u64>() else {
            return false;
        };
        let Some(pending) = self.inner.lock().pending.remove(&id) else {
            return false;
        };
        let _ = pending.reply.send(Ok(AriResponse {
            status: response.status_code,
            body: response.message_body.unwrap_or_default(),
        }));
        true
    }

    /// Whether requests currently go over the socket.
    pub fn is_ready(&self) -> bool {
        self.inner.lock().lane.as_ref().is_some_and(|l| l.ready)
    }

    /// How many requests sent on the socket still wait for their answer.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// Sends the probe on the socket of `generation` and, if the node answers within
    /// `wait`, lets requests use that socket. Returns whether it did.
    pub async fn probe(self: &Arc<Self>, generation: u64, wait: Duration) -> bool {
        let Some(mut reply) = self.enqueue(Some(generation), "GET", PROBE_PATH, &[], None) else {
            return false;
        };
        match tokio::time::timeout(wait, reply.get()).await {
            Ok(Ok(response)) if response.status == 200 => {
                let mut inner = self.inner.lock();
                match inner.lane.as_mut() {
                    Some(lane) if lane.generation == generation => {
                        lane.ready = true;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// The JSON text of a `RESTRequest`; `path` loses its leading `/` (the socket's `uri` is
/// relative to `/ari/`).
fn request_text(
    id: u64,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: Option<&serde_json::Value>,
) -> String {
    let request = RestRequest {
        kind: "RESTRequest",
        request_id: id.to_string(),
        method,
        uri: path.trim_start_matches('/'),
        query_strings: query
            .iter()
            .map(|(name, value)| NameValue { name, value })
            .collect(),
        content_type: body.map(|_| "application/json"),
        message_body: body.map(|b| b.to_string()),
    };
    serde_json::to_string(&request).expect("a request serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> (Arc<RestSocket>, mpsc::UnboundedReceiver<Outgoing>, u64) {
        let socket = Arc::new(RestSocket::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (generation, _) = socket.attach(tx);
        (socket, rx, generation)
    }

    fn written(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> (u64, serde_json::Value) {
        match rx.try_recv().expect("a frame was queued") {
            Outgoing::Request { id, text } => (id, serde_json::from_str(&text).unwrap()),
            other => panic!("not a request: {other:?}"),
        }
    }

    fn answer(id: u64, status: u16, body: Option<&str>) -> RestResponse {
        RestResponse {
            request_id: id.to_string(),
            status_code: status,
            message_body: body.map(str::to_string),
        }
    }

    #[test]
    fn requests_are_written_as_asterisk_parses_them() {
        let text = request_text(
            7,
            "POST",
            "/channels/1741988825.0/variable",
            &[
                ("variable".into(), "X".into()),
                ("value".into(), "a b&c".into()),
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "RESTRequest",
                "request_id": "7",
                "method": "POST",
                "uri": "channels/1741988825.0/variable",
                "query_strings": [
                    {"name": "variable", "value": "X"},
                    {"name": "value", "value": "a b&c"},
                ],
            })
        );
        let body = serde_json::json!({"variables": {"A": "1"}});
        let v: serde_json::Value =
            serde_json::from_str(&request_text(8, "POST", "/channels", &[], Some(&body))).unwrap();
        assert_eq!(v["content_type"], "application/json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(v["message_body"].as_str().unwrap()).unwrap(),
            body
        );
        assert!(v.get("query_strings").is_none());
    }

    #[test]
    fn paths_the_socket_cannot_carry_as_http_would_use_http() {
        assert!(RestSocket::carries("/channels/1.2/answer"));
        assert!(!RestSocket::carries("/channels/a%20b"));
        assert!(!RestSocket::carries("/channels/a?b"));
        assert!(!RestSocket::carries("/recordings/stored/r1/file"));
        assert!(RestSocket::carries("/recordings/stored/r1"));
    }

    #[tokio::test]
    async fn requests_wait_for_the_probe_then_get_their_answers() {
        let (socket, mut rx, generation) = socket();
        assert!(socket.send("GET", "/channels", &[], None).is_none());
        let probe = tokio::spawn({
            let socket = socket.clone();
            async move { socket.probe(generation, Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        let (id, v) = loop {
            if let Ok(Outgoing::Request { id, text }) = rx.try_recv() {
                break (
                    id,
                    serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                );
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(v["uri"], "asterisk/ping");
        assert!(socket.answer(answer(id, 200, Some(r#"{"ping":"pong"}"#))));
        assert!(probe.await.unwrap());
        assert!(socket.is_ready());

        let mut reply = socket
            .send("POST", "/channels/c1/answer", &[], None)
            .unwrap();
        let (id, v) = written(&mut rx);
        assert_eq!(v["method"], "POST");
        assert!(socket.answer(answer(id, 204, None)));
        assert_eq!(
            reply.get().await,
            Ok(AriResponse {
                status: 204,
                body: String::new()
            })
        );
        // An answer nobody waits for is reported, not delivered twice.
        assert!(!socket.answer(answer(id, 204, None)));
        assert!(!socket.answer(answer(u64::MAX, 204, None)));
    }

    #[tokio::test]
    async fn a_dropped_socket_loses_written_requests_and_its_writer_reports_the_rest() {
        let (socket, mut rx, generation) = socket();
        socket.inner.lock().lane.as_mut().unwrap().ready = true;
        let mut written_one = socket.send("GET", "/bridges", &[], None).unwrap();
        let mut unsent = socket.send("GET", "/channels", &[], None).unwrap();
        let (written_id, _) = written(&mut rx);
        socket.written(written_id);
        assert!(socket.waiting_on(generation));
        socket.detach(generation);
        // Written: the node may have acted on it. Still queued: the writer says so as it ends.
        assert_eq!(written_one.get().await, Err(Undelivered::Lost));
        let (unsent_id, _) = written(&mut rx);
        socket.not_sent(unsent_id);
        assert_eq!(unsent.get().await, Err(Undelivered::NotSent));
        assert!(!socket.waiting_on(generation));
        assert!(socket.send("GET", "/channels", &[], None).is_none());
        assert!(!socket.is_ready());
    }

    #[tokio::test]
    async fn an_unanswered_request_sends_requests_back_to_http_until_a_probe_answers() {
        let (socket, mut rx, generation) = socket();
        let suspect = socket.inner.lock().lane.as_ref().unwrap().suspect.clone();
        socket.inner.lock().lane.as_mut().unwrap().ready = true;
        let reply = socket.send("GET", "/bridges", &[], None).unwrap();
        let _ = written(&mut rx);
        reply.timed_out();
        assert!(!socket.is_ready());
        assert!(socket.send("GET", "/bridges", &[], None).is_none(), "HTTP");
        // The prober is woken (the permit waits for it if it is busy).
        tokio::time::timeout(Duration::from_secs(1), suspect.notified())
            .await
            .expect("prober woken");
        // A late timeout from an older socket does not touch the current one.
        socket.inner.lock().lane.as_mut().unwrap().ready = true;
        socket.suspect(generation + 1);
        assert!(socket.is_ready());
        assert!(socket.is_current(generation) && !socket.is_current(generation + 1));
    }

    #[tokio::test]
    async fn a_backed_up_socket_leaves_further_requests_to_http() {
        let (socket, _rx, _) = socket();
        socket.inner.lock().lane.as_mut().unwrap().ready = true;
        // Many quick requests in flight: still the socket.
        let waiting: Vec<Reply> = (0..100)
            .map(|_| socket.send("GET", "/channels", &[], None).unwrap())
            .collect();
        // One that waits too long: HTTP until it is answered or given up.
        let id = waiting[0].id;
        socket.inner.lock().pending.get_mut(&id).unwrap().queued -= MAX_WAIT * 2;
        assert!(socket.send("GET", "/channels", &[], None).is_none());
        drop(waiting);
        assert!(socket.send("GET", "/channels", &[], None).is_some());
    }

    #[tokio::test]
    async fn a_probe_without_answer_keeps_http() {
        let (socket, _rx, generation) = socket();
        assert!(!socket.probe(generation, Duration::from_millis(20)).await);
        assert!(!socket.is_ready());
        assert!(
            socket.inner.lock().pending.is_empty(),
            "the probe is forgotten"
        );
        // A probe for a socket that is no longer current does nothing.
        assert!(
            !socket
                .probe(generation + 1, Duration::from_millis(20))
                .await
        );
    }

    #[test]
    fn answers_parse_from_what_asterisk_writes() {
        let text = r#"{"type":"RESTResponse","transaction_id":"","request_id":"12","status_code":404,"reason_phrase":"Not Found","uri":"channels/x","content_type":"application/json","message_body":"{\"message\":\"Channel not found\"}","timestamp":"2025-03-17T08:32:35.709-0600","asterisk_id":"e4:1d:2d:b8:3b:a0","application":"conf"}"#;
        assert_eq!(
            RestResponse::parse(text).unwrap(),
            RestResponse {
                request_id: "12".into(),
                status_code: 404,
                message_body: Some(r#"{"message":"Channel not found"}"#.into()),
            }
        );
    }
}
