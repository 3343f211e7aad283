//! `GET /ari/events`: the ARI event websocket.
//!
//! Each connection gets an unbounded queue; the node core pushes finished event strings into
//! it while holding its lock (cheap, never blocks) and this task writes them out, batching
//! whatever is queued into one flush. The task keeps its own sender so a *replaced* socket
//! stays open (as on a real node) even though no app routes events to it any more. A node kill
//! drops the socket without a close frame, so clients see 1006 like when Asterisk stops.
//! Text the client writes is a `RESTRequest`, answered on the socket (`rest_ws.rs`), one at a
//! time as Asterisk's reader thread does; a node configured as older Asterisk ignores it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::unbounded_channel;

use crate::node::{LoggedRequest, NodeInner};
use crate::params::Params;
use crate::state::Conn;

pub(crate) async fn events_handler(
    State(node): State<Arc<NodeInner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let q = query.clone().unwrap_or_default();
    let log = |status: u16| {
        node.log_request(LoggedRequest {
            method: "GET".into(),
            path: "/ari/events".into(),
            query: q.clone(),
            status,
            over_websocket: false,
        })
    };
    if !node.alive.load(Ordering::Acquire) {
        log(503);
        return crate::rest::shutdown_response();
    }
    if !node.auth_ok(&headers, query.as_deref()) {
        log(401);
        return crate::rest::unauthorized();
    }
    let p = Params::parse(query.as_deref(), &[]);
    let Some(apps) = p.get("app") else {
        log(400);
        return crate::rest::json_response(
            StatusCode::BAD_REQUEST,
            r#"{"message":"Missing parameter app"}"#.to_string(),
        );
    };
    let apps: Vec<String> = apps
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    let subscribe_all = p.has_true("subscribeAll");
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            log(400);
            return e.into_response();
        }
    };
    let Some(kill) = node.kill_signal() else {
        log(503);
        return crate::rest::shutdown_response();
    };
    log(101);
    // The apps are registered before the upgrade is answered, as Asterisk does (its
    // `event_websocket_attempted` callback): a client that has its socket has its apps.
    let (tx, rx) = unbounded_channel::<String>();
    let conn = Conn {
        id: node.conn_seq.fetch_add(1, Ordering::Relaxed),
        tx,
    };
    node.state.lock().register_ws(&apps, subscribe_all, &conn);
    let (node2, node3, id) = (node.clone(), node.clone(), conn.id);
    ws.on_failed_upgrade(move |_| node3.state.lock().unregister_conn(id))
        .on_upgrade(move |socket| run(node2, socket, apps, conn, rx, kill))
}

async fn run(
    node: Arc<NodeInner>,
    socket: WebSocket,
    apps: Vec<String>,
    conn: Conn,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut kill: tokio::sync::watch::Receiver<bool>,
) {
    if *kill.borrow() {
        node.state.lock().unregister_conn(conn.id);
        return;
    }
    // Keep a sender: a replaced socket must stay open although no app holds its sender.
    let _keep = conn.tx.clone();
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                if sink.feed(Message::Text(msg.into())).await.is_err() {
                    break;
                }
                // Batch whatever else is already queued into the same flush.
                let mut failed = false;
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(Message::Text(more.into())).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || sink.flush().await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => {
                match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The client closed: its apps go away; answer with 1000 and an
                        // empty reason, as recorded.
                        node.state.lock().unregister_conn(conn.id);
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: 1000,
                                reason: "".into(),
                            })))
                            .await;
                        let _ = sink.close().await;
                        return;
                    }
                    Some(Ok(Message::Text(text))) if node.cfg.rest_over_websocket => {
                        // Read and answered one at a time, like Asterisk's reader thread;
                        // the answer goes out as an event of the socket's first app.
                        if let Some(first) = apps.first()
                            && let Some(answer) = crate::rest_ws::answer(&node, first, text.as_str())
                        {
                            let _ = conn.tx.send(answer);
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = kill.changed() => {
                // Node killed: deliver what the shutdown produced, then drop the TCP
                // connection without a close frame (clients see 1006).
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(Message::Text(more.into())).await.is_err() {
                        break;
                    }
                }
                let _ = sink.flush().await;
                return;
            }
        }
    }
    node.state.lock().unregister_conn(conn.id);
}
