//! The admin HTTP API: upload, list, inspect, delete and roll back apps on a running host.
//!
//! A thin axum skin over [`Apps`](crate::apps::Apps), which owns the rules. What lives here
//! is what is HTTP-specific:
//! - **Auth.** With a token configured, every route but `/health` and `/openapi.json` needs
//!   `Authorization: Bearer <token>`; the comparison is constant time (both sides are hashed
//!   first so not even the length leaks). Without a token the API is only allowed on
//!   loopback (enforced by config validation).
//! - **Uploads** are read with the size limit enforced while streaming, so an oversized body
//!   is refused without buffering it. Limits and config values come as query parameters
//!   (`?max_live_calls=…&memory_mb=…&callback_deadline_ms=…&on_fault=…&config.KEY=VALUE`).
//! - **Errors are JSON**: `{"error": {"status": 422, "code": "wrong_world", "message": …}}`;
//!   the code is stable for scripts, the message is for people.
//! - The OpenAPI 3 description is a hand-written document (`openapi.json`), served as is.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::apps::{Apps, AppsError, UploadOptions};
use crate::config::OnFault;
use crate::runtime::RuntimeError;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// An error response: a status and a JSON body naming it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"status": self.status.as_u16(), "code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<AppsError> for ApiError {
    fn from(e: AppsError) -> ApiError {
        let (status, code) = match &e {
            AppsError::BadName(_) => (StatusCode::BAD_REQUEST, "bad_name"),
            AppsError::Empty => (StatusCode::BAD_REQUEST, "empty_upload"),
            AppsError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            AppsError::BadLimits(_) => (StatusCode::BAD_REQUEST, "bad_limits"),
            AppsError::Invalid(e) => match e {
                RuntimeError::NotWasm => (StatusCode::UNPROCESSABLE_ENTITY, "not_wasm"),
                RuntimeError::CoreModule => (StatusCode::UNPROCESSABLE_ENTITY, "core_module"),
                RuntimeError::Precompiled => (StatusCode::UNPROCESSABLE_ENTITY, "precompiled"),
                RuntimeError::WrongWorld(_) => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_world"),
                RuntimeError::Compile(_) => (StatusCode::UNPROCESSABLE_ENTITY, "compile_failed"),
                RuntimeError::Settings(_) => (StatusCode::BAD_REQUEST, "bad_limits"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            AppsError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppsError::NoEarlierVersion(_) => (StatusCode::CONFLICT, "no_earlier_version"),
            AppsError::NameTaken(_) => (StatusCode::CONFLICT, "name_taken"),
            AppsError::Stream(_) => (StatusCode::SERVICE_UNAVAILABLE, "stream_unavailable"),
            AppsError::NotApplied(_) => (StatusCode::GATEWAY_TIMEOUT, "stream_timeout"),
            AppsError::Store(_) | AppsError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

#[derive(Clone)]
struct AdminState {
    apps: Arc<Apps>,
    /// SHA-256 of the token; None: no auth (loopback only).
    token_hash: Option<[u8; 32]>,
}

/// The admin API's routes. `token`: the bearer token required, if any.
pub fn router(apps: Arc<Apps>, token: Option<&str>) -> Router {
    let state = AdminState {
        apps,
        token_hash: token
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t).into()),
    };
    let protected = Router::new()
        .route("/apps", get(list))
        .route("/apps/{name}", get(show).put(upload).delete(remove))
        .route("/apps/{name}/rollback", post(rollback))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(protected)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed; see /openapi.json",
            )
        })
        .with_state(state)
}

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    apps: Arc<Apps>,
    token: Option<&str>,
) -> std::io::Result<()> {
    axum::serve(listener, router(apps, token)).await
}

async fn auth(
    State(state): State<AdminState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.token_hash else {
        return next.run(request).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token)
        .map(|t| -> [u8; 32] { Sha256::digest(t.trim()).into() });
    match given {
        Some(given) if bool::from(given.ct_eq(&expected)) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not valid"),
        None => {
            unauthorized("this API requires `Authorization: Bearer <token>` (listen.admin_token)")
        }
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn list(State(state): State<AdminState>) -> impl IntoResponse {
    axum::Json(json!({"apps": state.apps.list()}))
}

async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(state.apps.get(&name)?))
}

async fn upload(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let options = upload_options(&query)?;
    let limit = state.apps.max_upload_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(size) = declared
        && size > limit
    {
        return Err(refuse(&state, &name, AppsError::TooLarge { size, limit }));
    }
    // Read with the limit enforced as bytes arrive: never buffer more than the limit.
    let mut wasm = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "upload_interrupted", e.to_string())
        })?;
        if wasm.len() + chunk.len() > limit {
            return Err(refuse(
                &state,
                &name,
                AppsError::TooLarge {
                    size: wasm.len() + chunk.len(),
                    limit,
                },
            ));
        }
        wasm.extend_from_slice(&chunk);
    }
    let uploaded = state.apps.upload(&name, wasm, options).await?;
    let status = if uploaded.replaced.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(uploaded)))
}

fn refuse(state: &AdminState, name: &str, error: AppsError) -> ApiError {
    state.apps.note_refused(name, &error);
    error.into()
}

fn upload_options(query: &[(String, String)]) -> Result<UploadOptions, ApiError> {
    let mut options = UploadOptions::default();
    let bad = |key: &str, e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_limits",
            format!("query parameter {key}: {e}"),
        )
    };
    for (key, value) in query {
        match key.as_str() {
            "max_live_calls" => {
                options.max_live_calls = Some(value.parse().map_err(|e| bad(key, &e))?)
            }
            "memory_mb" => options.memory_mb = Some(value.parse().map_err(|e| bad(key, &e))?),
            "callback_deadline_ms" => {
                options.callback_deadline_ms = Some(value.parse().map_err(|e| bad(key, &e))?)
            }
            "on_fault" => {
                options.on_fault = Some(match value.as_str() {
                    "hangup" => OnFault::Hangup,
                    "continue" => OnFault::Continue,
                    _ => return Err(bad(key, &"must be `hangup` or `continue`")),
                })
            }
            _ => match key.strip_prefix("config.") {
                Some(k) if !k.is_empty() => {
                    options.config.insert(k.to_string(), value.clone());
                }
                _ => {
                    return Err(bad(
                        key,
                        &"unknown; expected max_live_calls, memory_mb, callback_deadline_ms, on_fault or config.KEY",
                    ));
                }
            },
        }
    }
    Ok(options)
}

async fn remove(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<impl IntoResponse, ApiError> {
    let force = query
        .iter()
        .any(|(k, v)| k == "force" && !matches!(v.as_str(), "false" | "0"));
    Ok(axum::Json(state.apps.delete(&name, force).await?))
}

async fn rollback(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(state.apps.rollback(&name).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn upload_options_from_the_query() {
        let o = upload_options(&q(&[
            ("max_live_calls", "7"),
            ("on_fault", "continue"),
            ("config.room", "42"),
        ]))
        .unwrap();
        assert_eq!(o.max_live_calls, Some(7));
        assert_eq!(o.on_fault, Some(OnFault::Continue));
        assert_eq!(o.config["room"], "42");
        assert!(
            upload_options(&q(&[("memory", "1")]))
                .unwrap_err()
                .message
                .contains("unknown")
        );
        assert!(
            upload_options(&q(&[("memory_mb", "x")]))
                .unwrap_err()
                .message
                .contains("memory_mb")
        );
    }

    #[test]
    fn the_openapi_document_is_json() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        assert!(doc["paths"]["/apps/{name}"]["put"].is_object());
    }
}
