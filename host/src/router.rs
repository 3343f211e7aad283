//! The router: carries out each app operation on the node that owns its resource.
//!
//! This is the host's [`AriBackend`]. For every operation it finds the owning node in the
//! [`Ownership`] index (asking every healthy node in parallel when the index does not know
//! the id, and caching the answer), sends the ARI request through that node's pooled
//! client, and keeps the index up to date with what it created.
//!
//! Bridge operations go to [`Conferences`], which gives bridge ids their cluster-wide
//! meaning (one conference across nodes, linked by trunk legs).

use std::sync::Arc;

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::ari_client::AriResponse;
use crate::backend::{AriBackend, AriError, BoxFuture, NewCall, Operation, Origin, Outcome};
use crate::cluster::{Cluster, Node};
use crate::conference::Conferences;
use crate::ownership::{Ownership, PlaybackOwner};

/// Routes operations to nodes.
#[derive(Debug, Clone)]
pub struct Router {
    cluster: Arc<Cluster>,
    ownership: Arc<Ownership>,
    conferences: Arc<Conferences>,
}

type Query = Vec<(String, String)>;

fn q(pairs: &[(&str, &str)]) -> Query {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Router {
    pub fn new(
        cluster: Arc<Cluster>,
        ownership: Arc<Ownership>,
        conferences: Arc<Conferences>,
    ) -> Router {
        Router {
            cluster,
            ownership,
            conferences,
        }
    }

    /// The node that owns `channel`: from the index, else asked of every healthy node.
    pub async fn channel_node(&self, channel: &str) -> Result<Arc<Node>, AriError> {
        if let Some(name) = self.ownership.channel_node(channel) {
            return self.usable(&name);
        }
        let node = self
            .lookup(&format!("/channels/{channel}"), "channel", channel)
            .await?;
        self.ownership.record_channel(channel, &node.name);
        Ok(node)
    }

    /// Asks every healthy node for `path` in parallel; the node answering 200 owns it.
    /// Never guesses: no answer is not-found, and only-unreachable nodes is unavailable.
    async fn lookup(&self, path: &str, what: &str, id: &str) -> Result<Arc<Node>, AriError> {
        let nodes = self.cluster.healthy();
        if nodes.is_empty() {
            return Err(AriError::Unavailable(format!(
                "no node is up to look {what} {id} up"
            )));
        }
        let answers = join_all(
            nodes
                .iter()
                .map(|n| n.client.send(Method::GET, path, &[], None)),
        )
        .await;
        let mut unreachable = 0;
        for (node, answer) in nodes.iter().zip(answers) {
            match answer {
                Ok(AriResponse { status: 200, .. }) => return Ok(node.clone()),
                Ok(_) => {}
                Err(_) => unreachable += 1,
            }
        }
        if unreachable == nodes.len() {
            Err(AriError::Unavailable(format!(
                "no node answered for {what} {id}"
            )))
        } else {
            Err(AriError::NotFound(format!("{what} {id} is on no node")))
        }
    }

    fn usable(&self, name: &str) -> Result<Arc<Node>, AriError> {
        self.cluster.usable(name)
    }

    /// The node an app's call lives on.
    fn origin_node(&self, origin: &Origin) -> Result<Arc<Node>, AriError> {
        let node = self
            .cluster
            .by_asterisk_id(&origin.node)
            .ok_or_else(|| AriError::Unavailable(format!("node {} is not known", origin.node)))?;
        self.usable(&node.name.clone())
    }

    /// Where a new call goes: the requested node, else the caller's own node.
    fn placement(&self, origin: &Origin, call: &NewCall) -> Result<Arc<Node>, AriError> {
        match &call.node {
            Some(id) => {
                let node = self
                    .cluster
                    .by_asterisk_id(id)
                    .or_else(|| self.cluster.node(id))
                    .ok_or_else(|| AriError::Invalid(format!("unknown node {id}")))?;
                self.usable(&node.name.clone())
            }
            None => self.origin_node(origin),
        }
    }

    async fn on_channel(
        &self,
        channel: &str,
        method: Method,
        suffix: &str,
        query: Query,
    ) -> Result<AriResponse, AriError> {
        let node = self.channel_node(channel).await?;
        node.client
            .call(
                method,
                &format!("/channels/{channel}{suffix}"),
                &query,
                None,
            )
            .await
    }

    async fn new_call(
        &self,
        origin: &Origin,
        call: NewCall,
        dial: bool,
    ) -> Result<Outcome, AriError> {
        let node = self.placement(origin, &call)?;
        // Recorded first: the channel's first event may beat the response.
        self.ownership.record_channel(&call.channel_id, &node.name);
        let mut query = q(&[
            ("endpoint", &call.endpoint),
            ("app", &origin.app),
            ("channelId", &call.channel_id),
        ]);
        if !call.app_args.is_empty() {
            query.push(("appArgs".into(), call.app_args.join(",")));
        }
        if let Some(caller) = &call.caller_id {
            query.push(("callerId".into(), caller.clone()));
        }
        if let Some(timeout) = call.timeout_secs
            && !dial
        {
            query.push(("timeout".into(), timeout.to_string()));
        }
        let body = (!call.variables.is_empty()).then(|| {
            let variables: serde_json::Map<String, serde_json::Value> = call
                .variables
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({ "variables": variables })
        });
        let path = if dial {
            "/channels/create"
        } else {
            "/channels"
        };
        let created = node.client.call(Method::POST, path, &query, body).await;
        if let Err(e) = created {
            self.ownership.forget_channel(&call.channel_id);
            return Err(e);
        }
        if dial {
            let mut query = Query::new();
            if let Some(timeout) = call.timeout_secs {
                query.push(("timeout".into(), timeout.to_string()));
            }
            node.client
                .call(
                    Method::POST,
                    &format!("/channels/{}/dial", call.channel_id),
                    &query,
                    None,
                )
                .await?;
        }
        Ok(Outcome::Value(call.channel_id))
    }

    /// The node a raw request goes to: the owner of the channel, bridge or playback named in
    /// the path, else the caller's node.
    async fn raw_node(&self, origin: &Origin, path: &str) -> Result<Arc<Node>, AriError> {
        let mut parts = path.trim_start_matches('/').split('/');
        match (parts.next(), parts.next()) {
            (Some("channels"), Some(id))
                if !id.is_empty() && id != "create" && id != "externalMedia" =>
            {
                self.channel_node(id).await
            }
            (Some("bridges"), Some(id)) if !id.is_empty() => {
                match self.conferences.locate(id).await {
                    Ok(node) => self.usable(&node),
                    Err(AriError::NotFound(_)) => self.origin_node(origin),
                    Err(e) => Err(e),
                }
            }
            _ => self.origin_node(origin),
        }
    }

    async fn run(&self, origin: &Origin, op: Operation) -> Result<Outcome, AriError> {
        use Operation::*;
        // For the latency benchmark: a call's request reached the router (pairs with dispatch's).
        tracing::trace!(target: "stasis::latency", channel = %origin.channel, "request");
        let done = |r: Result<AriResponse, AriError>| r.map(|_| Outcome::Done);
        match op {
            Answer { channel } => done(
                self.on_channel(&channel, Method::POST, "/answer", vec![])
                    .await,
            ),
            Hangup { channel, reason } => {
                let query = reason
                    .map(|r| vec![("reason".to_string(), r)])
                    .unwrap_or_default();
                done(self.on_channel(&channel, Method::DELETE, "", query).await)
            }
            Ring { channel } => done(
                self.on_channel(&channel, Method::POST, "/ring", vec![])
                    .await,
            ),
            Play {
                channel,
                media,
                playback_id,
            } => {
                self.ownership.record_playback(
                    &playback_id,
                    PlaybackOwner {
                        app: origin.app.clone(),
                        channel: origin.channel.clone(),
                    },
                );
                let query = q(&[("media", &media.join(",")), ("playbackId", &playback_id)]);
                let result = self
                    .on_channel(&channel, Method::POST, "/play", query)
                    .await;
                if result.is_err() {
                    self.ownership.take_playback(&playback_id);
                }
                result.map(|_| Outcome::Value(playback_id))
            }
            StopPlayback { playback } => {
                let path = format!("/playbacks/{playback}");
                let node = self.lookup(&path, "playback", &playback).await?;
                done(node.client.call(Method::DELETE, &path, &[], None).await)
            }
            GetOrCreateBridge { bridge, kind } => {
                let node = self.origin_node(origin)?;
                self.conferences
                    .get_or_create(&bridge, kind, &node.name, &origin.channel)
                    .await?;
                Ok(Outcome::Value(bridge))
            }
            BridgeAdd { bridge, channel } => {
                let node = self.channel_node(&channel).await?;
                self.conferences
                    .add(&bridge, &channel, &node.name)
                    .await
                    .map(|_| Outcome::Done)
            }
            BridgeRemove { bridge, channel } => {
                let node = self.channel_node(&channel).await?;
                self.conferences
                    .remove(&bridge, &channel, &node.name)
                    .await
                    .map(|_| Outcome::Done)
            }
            BridgeDestroy { bridge } => self
                .conferences
                .destroy(&bridge)
                .await
                .map(|_| Outcome::Done),
            PlayOnBridge {
                bridge,
                media,
                playback_id,
            } => {
                self.ownership.record_playback(
                    &playback_id,
                    PlaybackOwner {
                        app: origin.app.clone(),
                        channel: origin.channel.clone(),
                    },
                );
                let fallback = self.origin_node(origin)?.name.clone();
                let result = self
                    .conferences
                    .play(&bridge, &media.join(","), &playback_id, &fallback)
                    .await;
                if result.is_err() {
                    self.ownership.take_playback(&playback_id);
                }
                result.map(|_| Outcome::Value(playback_id))
            }
            Originate(call) => self.new_call(origin, call, false).await,
            Dial(call) => self.new_call(origin, call, true).await,
            GetVariable { channel, name } => {
                let response = self
                    .on_channel(
                        &channel,
                        Method::GET,
                        "/variable",
                        q(&[("variable", &name)]),
                    )
                    .await?;
                let value = response
                    .json()
                    .get("value")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                Ok(Outcome::Value(value))
            }
            SetVariable {
                channel,
                name,
                value,
            } => done(
                self.on_channel(
                    &channel,
                    Method::POST,
                    "/variable",
                    q(&[("variable", &name), ("value", &value)]),
                )
                .await,
            ),
            Continue {
                channel,
                context,
                exten,
                priority,
            } => {
                let query: Query = [
                    context.map(|c| ("context".to_string(), c)),
                    exten.map(|e| ("extension".to_string(), e)),
                    priority.map(|p| ("priority".to_string(), p.to_string())),
                ]
                .into_iter()
                .flatten()
                .collect();
                done(
                    self.on_channel(&channel, Method::POST, "/continue", query)
                        .await,
                )
            }
            StartMoh { channel, class } => {
                let query = class
                    .map(|c| vec![("mohClass".to_string(), c)])
                    .unwrap_or_default();
                done(self.on_channel(&channel, Method::POST, "/moh", query).await)
            }
            StopMoh { channel } => done(
                self.on_channel(&channel, Method::DELETE, "/moh", vec![])
                    .await,
            ),
            Mute { channel, direction } => done(
                self.on_channel(
                    &channel,
                    Method::POST,
                    "/mute",
                    q(&[("direction", direction.as_ari())]),
                )
                .await,
            ),
            Unmute { channel, direction } => done(
                self.on_channel(
                    &channel,
                    Method::DELETE,
                    "/mute",
                    q(&[("direction", direction.as_ari())]),
                )
                .await,
            ),
            SendDtmf { channel, digits } => done(
                self.on_channel(&channel, Method::POST, "/dtmf", q(&[("dtmf", &digits)]))
                    .await,
            ),
            Record { channel, options } => {
                let query = q(&[
                    ("name", &options.name),
                    ("format", &options.format),
                    ("maxDurationSeconds", &options.max_duration_secs.to_string()),
                    ("maxSilenceSeconds", &options.max_silence_secs.to_string()),
                    ("beep", if options.beep { "true" } else { "false" }),
                    ("terminateOn", &options.terminate_on),
                ]);
                self.on_channel(&channel, Method::POST, "/record", query)
                    .await?;
                Ok(Outcome::Value(options.name))
            }
            Raw {
                method,
                path,
                query,
                body,
            } => {
                let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| AriError::Invalid(format!("bad HTTP method {method}")))?;
                let body = match body {
                    Some(text) if !text.is_empty() => Some(
                        serde_json::from_str(&text)
                            .map_err(|e| AriError::Invalid(format!("body is not JSON: {e}")))?,
                    ),
                    _ => None,
                };
                let path = if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                };
                let node = self.raw_node(origin, &path).await?;
                let response = node.client.call(method, &path, &query, body).await?;
                Ok(Outcome::Raw {
                    status: response.status,
                    body: response.body,
                })
            }
        }
    }
}

impl AriBackend for Router {
    fn execute<'a>(
        &'a self,
        origin: &'a Origin,
        op: Operation,
    ) -> BoxFuture<'a, Result<Outcome, AriError>> {
        Box::pin(self.run(origin, op))
    }
}
