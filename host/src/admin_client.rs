//! A client of the admin API, for the `stasis-host app …` commands (and tests).
//!
//! Responses are returned as JSON values rather than typed structs so the CLI keeps working
//! against a host one version ahead that adds fields. Error bodies are turned into
//! [`ClientError::Api`] with the server's own message, which is what a person needs to see.

use std::time::Duration;

use futures_util::stream;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the host at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{status}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
}

/// The admin API of one host.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Bytes per upload chunk (each one advances the progress callback).
const CHUNK: usize = 64 << 10;

impl AdminClient {
    /// `base`: e.g. `http://127.0.0.1:8090`.
    pub fn new(base: &str, token: Option<String>) -> AdminClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Uploads compile before answering: seconds for large Python or JS apps.
            .timeout(Duration::from_secs(300))
            .build()
            .expect("reqwest client builds");
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let url = self.base.clone();
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let error = &body["error"];
        Err(ClientError::Api {
            status,
            code: error["code"].as_str().unwrap_or("").to_string(),
            message: error["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string()),
        })
    }

    /// Uploads `wasm` as a new version of `name`. `query`: limits and `config.KEY` values.
    /// `progress(sent)` is called as the body goes out.
    pub async fn push(
        &self,
        name: &str,
        wasm: Vec<u8>,
        query: &[(String, String)],
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Value, ClientError> {
        let len = wasm.len();
        let bytes = bytes::Bytes::from(wasm);
        let chunks: Vec<bytes::Bytes> = (0..len)
            .step_by(CHUNK)
            .map(|i| bytes.slice(i..(i + CHUNK).min(len)))
            .collect();
        let mut sent = 0u64;
        let body = stream::iter(chunks.into_iter().map(move |chunk| {
            sent += chunk.len() as u64;
            progress(sent);
            Ok::<_, std::io::Error>(chunk)
        }));
        let request = self
            .request(Method::PUT, &format!("/apps/{name}"))
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        self.send(request).await
    }

    pub async fn list(&self) -> Result<Value, ClientError> {
        self.send(self.request(Method::GET, "/apps")).await
    }

    pub async fn get(&self, name: &str) -> Result<Value, ClientError> {
        self.send(self.request(Method::GET, &format!("/apps/{name}")))
            .await
    }

    pub async fn delete(&self, name: &str, force: bool) -> Result<Value, ClientError> {
        let path = if force {
            format!("/apps/{name}?force")
        } else {
            format!("/apps/{name}")
        };
        self.send(self.request(Method::DELETE, &path)).await
    }

    pub async fn rollback(&self, name: &str) -> Result<Value, ClientError> {
        self.send(self.request(Method::POST, &format!("/apps/{name}/rollback")))
            .await
    }
}
