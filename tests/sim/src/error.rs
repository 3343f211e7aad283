//! Typed errors at the crate's boundaries.
//!
//! [`SimError`] is what the library API returns to tests and to the host. [`AriError`] is an
//! ARI error response (status + JSON body) exactly as a real node sends it: most errors are
//! `{"message": "..."}`, the "Allocation failed" 500 is `{"error": "..."}` (as recorded).

/// Errors of the library / control API.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("node {0:?} is down")]
    NodeDown(String),
    #[error("channel {0:?} not found")]
    ChannelNotFound(String),
    #[error("no route for {context}/{exten}")]
    NoRoute { context: String, exten: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// An ARI error response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {body}")]
pub struct AriError {
    pub status: u16,
    /// The JSON body, already serialized.
    pub body: String,
}

impl AriError {
    /// `{"message": msg}` with `status`.
    pub fn msg(status: u16, msg: &str) -> Self {
        AriError {
            status,
            body: serde_json::json!({ "message": msg }).to_string(),
        }
    }
    pub fn not_found(what: &str) -> Self {
        Self::msg(404, &format!("{what} not found"))
    }
    /// 500 `{"error": "Allocation failed"}` (unknown technology, unreachable trunk).
    pub fn allocation_failed() -> Self {
        AriError {
            status: 500,
            body: r#"{"error":"Allocation failed"}"#.to_string(),
        }
    }
    pub fn not_in_stasis() -> Self {
        Self::msg(409, "Channel not in Stasis application")
    }
}
