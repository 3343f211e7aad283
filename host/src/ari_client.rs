//! ARI REST requests to one node: over its event websocket when it takes them there
//! (`rest_socket`), else over a keep-alive HTTP connection pool.
//!
//! One client per node, so a slow or dead node only exhausts its own pool. Every failure is
//! classified into [`AriError`] here, once: transport problems become `unavailable` or
//! `timeout`, HTTP statuses map as Asterisk uses them (see `AriError::from_status`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::backend::AriError;
use crate::rest_socket::{RestSocket, Undelivered};

/// A response from a node, status and body as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AriResponse {
    pub status: u16,
    pub body: String,
}

impl AriResponse {
    /// The body parsed as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// ARI REST client for one node.
///
/// hyper's pooled client directly, not a general-purpose HTTP client: every call of every
/// app goes through here, and a request to a node needs no redirects, cookies or URL
/// parsing beyond the path, so the credentials header is built once and the URI is the
/// base plus the path and query.
#[derive(Debug, Clone)]
pub struct AriClient {
    http: Pool,
    tls: Arc<rustls::ClientConfig>,
    base: String,
    auth: HeaderValue,
    timeout: Duration,
    node: String,
    socket: Arc<RestSocket>,
}

impl AriClient {
    /// `base` ends in `/ari`. `node` names the node in error messages.
    pub fn new(
        node: &str,
        base: &str,
        username: &str,
        password: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> AriClient {
        let http = pooled_http(connect_timeout, tls.clone());
        let credentials = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{username}:{password}"),
        );
        let mut auth = HeaderValue::from_str(&format!("Basic {credentials}"))
            .expect("base64 is a valid header value");
        auth.set_sensitive(true);
        AriClient {
            http,
            tls,
            base: base.trim_end_matches('/').to_string(),
            auth,
            timeout: request_timeout,
            node: node.to_string(),
            socket: Arc::default(),
        }
    }

    /// The base URL (`…/ari`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The node's `Authorization` header (HTTP Basic), built once: for the event websocket
    /// and the facade's own pool too.
    pub fn auth(&self) -> &HeaderValue {
        &self.auth
    }

    /// The TLS client configuration, for the node's `wss://` event socket.
    pub fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    /// How long a request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The REST side of the node's event websocket, which intake attaches sockets to.
    pub fn socket(&self) -> &Arc<RestSocket> {
        &self.socket
    }

    /// Sends one request; `path` is relative to `/ari` and starts with `/`. Returns the
    /// response for any status; only transport failures are errors.
    ///
    /// Over the node's event websocket when it answers requests there (see `rest_socket`),
    /// else over HTTP. One timeout covers both: a request the socket never got to write goes
    /// over HTTP in the time left.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<serde_json::Value>,
    ) -> Result<AriResponse, AriError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        if let Some(mut reply) = self
            .socket
            .send(method.as_str(), path, query, body.as_ref())
        {
            let what = || format!("{method} {path} on node {}", self.node);
            match tokio::time::timeout_at(deadline, reply.get()).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(Undelivered::Lost)) => {
                    return Err(AriError::Unavailable(format!(
                        "{}: the node's websocket closed before it answered",
                        what()
                    )));
                }
                Ok(Err(Undelivered::NotSent)) => {}
                Err(_) => {
                    reply.timed_out();
                    return Err(AriError::Timeout(format!("{}: no answer in time", what())));
                }
            }
        }
        self.send_http_until(deadline, method, path, query, body)
            .await
    }

    /// Sends one request over HTTP, never on the event websocket: for what the node's
    /// intake task itself waits on (identifying the node), since that task is the one that
    /// reads the socket's answers.
    pub async fn call_http(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<serde_json::Value>,
    ) -> Result<AriResponse, AriError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = self
            .send_http_until(deadline, method, path, query, body)
            .await?;
        check_status(response)
    }

    async fn send_http_until(
        &self,
        deadline: tokio::time::Instant,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<serde_json::Value>,
    ) -> Result<AriResponse, AriError> {
        let what = || format!("{method} {path} on node {}", self.node);
        // Ids and names from apps may hold characters a URI path cannot (spaces, quotes,
        // non-ASCII): percent-encode those, as a URL parser would; `%` and `/` pass as they are, `+` is escaped since Asterisk reads it as a space.
        let mut uri = format!(
            "{}{}",
            self.base,
            percent_encoding::utf8_percent_encode(path, PATH)
        );
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(
                &serde_urlencoded::to_string(query)
                    .map_err(|e| AriError::Invalid(format!("{}: {e}", what())))?,
            );
        }
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(AUTHORIZATION, self.auth.clone());
        let body = match body {
            Some(json) => {
                request =
                    request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| AriError::Invalid(format!("{}: {e}", what())))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| transport_error(what(), &e))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport_error(what(), &e))?
                .to_bytes();
            let body = match String::from_utf8(body.into()) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            Ok(AriResponse { status, body })
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| AriError::Timeout(format!("{}: no answer in time", what())))?
    }

    /// Sends one request and turns a non-2xx status into a typed error carrying Asterisk's
    /// message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<serde_json::Value>,
    ) -> Result<AriResponse, AriError> {
        check_status(self.send(method, path, query, body).await?)
    }
}

/// A non-2xx status as a typed error carrying Asterisk's message.
fn check_status(response: AriResponse) -> Result<AriResponse, AriError> {
    if StatusCode::from_u16(response.status).is_ok_and(|s| s.is_success()) {
        Ok(response)
    } else {
        Err(AriError::from_status(
            response.status,
            error_message(&response),
        ))
    }
}

/// A keep-alive HTTP/1.1 pool to nodes, as the host uses everywhere (this client and the
/// facade's pass-through pools).
/// A keep-alive connection pool to nodes, `http://` and `https://` alike.
pub(crate) type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(crate) fn pooled_http(connect_timeout: Duration, tls: Arc<rustls::ClientConfig>) -> Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    // Notices a pooled connection to a node that vanished without a FIN.
    connector.set_keepalive(Some(Duration::from_secs(15)));
    // The TLS layer takes https:// URLs; plain ones pass through it.
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Characters escaped in a request path: those a URI path cannot hold as they are.
const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    // Asterisk's HTTP server decodes `+` in a path as a space (`ast_uri_http_legacy`).
    .add(b'+')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A transport failure: `timeout` when any cause is a timed-out socket (the connect timeout),
/// `unavailable` otherwise. The message has every cause: hyper's own is only "client error
/// (Connect)".
fn transport_error(what: String, e: &(dyn std::error::Error + 'static)) -> AriError {
    let mut text = format!("{what}: {e}");
    let mut timed_out = false;
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        timed_out |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        source = s.source();
    }
    if let Some(advice) = crate::tls::advice(e) {
        text.push_str(" (");
        text.push_str(advice);
        text.push(')');
    }
    if timed_out {
        AriError::Timeout(text)
    } else {
        AriError::Unavailable(text)
    }
}

/// Asterisk's error text: `{"message": …}`, `{"error": …}` (some 500s), or the raw body
/// (503 during shutdown is text/html).
pub fn error_message(response: &AriResponse) -> String {
    match response.json() {
        serde_json::Value::Object(map) => map
            .get("message")
            .or_else(|| map.get("error"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| response.body.clone()),
        _ if response.body.trim().is_empty() => format!("HTTP {}", response.status),
        _ => response.body.trim().chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> AriResponse {
        AriResponse {
            status,
            body: body.into(),
        }
    }

    #[test]
    fn error_messages_follow_asterisk_shapes() {
        assert_eq!(
            error_message(&resp(404, r#"{"message": "Channel not found"}"#)),
            "Channel not found"
        );
        assert_eq!(
            error_message(&resp(500, r#"{"error": "Allocation failed"}"#)),
            "Allocation failed"
        );
        assert_eq!(
            error_message(&resp(503, "<html>Shutdown in progress</html>\n")),
            "<html>Shutdown in progress</html>"
        );
        assert_eq!(error_message(&resp(502, "")), "HTTP 502");
    }

    #[test]
    fn statuses_classify_like_asterisk_uses_them() {
        use AriError::*;
        assert!(matches!(
            AriError::from_status(404, "Channel not found".into()),
            NotFound(_)
        ));
        assert!(matches!(
            AriError::from_status(400, "Channel not found".into()),
            NotFound(_)
        ));
        assert!(matches!(
            AriError::from_status(400, "Endpoint must be specified".into()),
            Invalid(_)
        ));
        assert!(matches!(
            AriError::from_status(409, "Channel not in Stasis application".into()),
            Conflict(_)
        ));
        assert!(matches!(
            AriError::from_status(422, "Channel not in Stasis application".into()),
            Conflict(_)
        ));
        assert!(matches!(
            AriError::from_status(503, "Shutdown".into()),
            Unavailable(_)
        ));
        assert!(matches!(
            AriError::from_status(500, "Allocation failed".into()),
            Failed(_)
        ));
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable() {
        // Bind then drop to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = AriClient::new(
            "a",
            &format!("http://127.0.0.1:{port}/ari"),
            "u",
            "p",
            Duration::from_millis(200),
            Duration::from_millis(500),
            crate::tls::client_config(None).unwrap(),
        );
        let err = client
            .call(Method::GET, "/asterisk/info", &[], None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AriError::Unavailable(ref m) if m.contains("node a")),
            "{err:?}"
        );
    }
}
