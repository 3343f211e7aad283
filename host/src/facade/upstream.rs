//! The facade's own HTTP/1.1 keep-alive pools to the nodes, one per node, for pass-through.
//!
//! Why not the nodes' `AriClient`: that client is made for the host's typed calls (query
//! pairs, JSON bodies, URL parsing, error classification), and its per-request work is a
//! large share of a proxy's cost. Here a request is the client's bytes with the node's
//! credentials (a header built once) and the answer is bytes, nothing parsed; this pool is
//! kept apart, so facade traffic cannot starve the wasm apps' requests either.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Uri};

use crate::ari_client::{Pool, pooled_http};
use crate::backend::AriError;
use crate::cluster::{Cluster, Node};

/// A node's answer as sent: no parsing, no copy of the body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

struct NodePool {
    /// `http://host:port/ari`
    base: String,
    auth: HeaderValue,
}

/// Pass-through pools, one per configured node.
pub struct Upstream {
    http: Pool,
    nodes: HashMap<String, NodePool>,
    timeout: Duration,
}

impl Upstream {
    pub fn new(cluster: &Cluster, connect_timeout: Duration, timeout: Duration) -> Upstream {
        let nodes = cluster
            .nodes()
            .map(|n| {
                let pool = NodePool {
                    base: n.config.ari_base(),
                    auth: n.client.auth().clone(),
                };
                (n.name.clone(), pool)
            })
            .collect();
        Upstream {
            http: pooled_http(connect_timeout, cluster.tls().clone()),
            nodes,
            timeout,
        }
    }

    /// Sends `method path_and_query` (relative to `/ari`, already encoded) with the client's
    /// content type and body to `node`; returns the node's answer whatever its status. Only
    /// transport failures are errors.
    pub async fn forward(
        &self,
        node: &Node,
        method: Method,
        path_and_query: &str,
        content_type: Option<HeaderValue>,
        body: Bytes,
    ) -> Result<RawResponse, AriError> {
        let what = || format!("{method} {path_and_query} on node {}", node.name);
        let pool = self
            .nodes
            .get(&node.name)
            .ok_or_else(|| AriError::Unavailable(format!("{}: unknown node", what())))?;
        let uri: Uri = format!("{}{}", pool.base, path_and_query)
            .parse()
            .map_err(|e| AriError::Invalid(format!("{}: {e}", what())))?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(AUTHORIZATION, pool.auth.clone());
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| AriError::Invalid(format!("{}: {e}", what())))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| AriError::Unavailable(format!("{}: {e}", what())))?;
            let status = response.status().as_u16();
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| AriError::Unavailable(format!("{}: {e}", what())))?
                .to_bytes();
            Ok(RawResponse {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AriError::Timeout(format!("{}: no answer in time", what())))?
    }
}
