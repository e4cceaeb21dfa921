//! The HTTP API under `/v1`: what the platforms' settings screens and
//! services call instead of the CLI or AMQP. One file per resource; each
//! handler parses its input into domain types and calls the same library
//! functions the CLI calls, so both validate alike.
//!
//! This module owns authentication (the platform's bearer token,
//! `SWITCHBOARD_API_TOKEN`), the one error shape every route answers with
//! (`{"error": {"code", "message", "details"}}`), body limits and paging. It
//! must never return or log a stored secret: integrations are shown only
//! through [`crate::integrations::IntegrationView`], which masks them, and
//! database errors are logged here and answered with a generic message.

pub mod agents;
pub mod auth;
pub mod integrations;
pub mod messages;
pub mod opt_outs;
pub mod stats;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use deadpool_postgres::Pool;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::amqp::JobPublisher;
use crate::config::Settings;
use crate::crypto::Keyring;
use crate::domain::Channel;
use crate::providers::{Registry, http_client};
use crate::store::StoreError;

/// Largest request body on every route but `POST /v1/messages`.
pub const BODY_LIMIT: usize = 256 * 1024;
/// Largest `POST /v1/messages` body: room for a full batch of ordinary
/// jobs, not for a thousand jobs of the 1 MB a single job may be.
pub const MESSAGES_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Most jobs in one `POST /v1/messages`.
pub const MAX_BATCH: usize = 1_000;
/// Rows per page unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 500;
/// Longest agent id: it is also the AMQP routing key (255 bytes at most).
const MAX_AGENT_ID_BYTES: usize = 255;

/// What the API's handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The HTTP server's own pool, never the worker's.
    pub pool: Pool,
    pub keyring: Option<Keyring>,
    pub registry: Registry,
    /// `SWITCHBOARD_SIMULATE`: whether `simulation` may be connected.
    pub simulate: bool,
    pub public_url: Option<String>,
    pub publisher: Arc<JobPublisher>,
    /// SHA-256 of `SWITCHBOARD_API_TOKEN`; `None` turns the API off. Tokens
    /// are compared as digests so the comparison takes the same time
    /// whatever their lengths.
    token_digest: Option<[u8; 32]>,
    /// Failed authentications per client address.
    auth_failures: Arc<auth::FailureLimiter>,
}

impl ApiState {
    pub fn new(pool: Pool, settings: &Settings) -> Self {
        Self {
            pool,
            keyring: settings.keyring.clone(),
            registry: Registry::new(
                http_client(settings.provider_timeout),
                &settings.provider_urls,
            ),
            simulate: settings.simulate,
            public_url: settings.public_url.clone(),
            publisher: Arc::new(JobPublisher::new(&settings.amqp_url)),
            token_digest: settings
                .api_token
                .as_ref()
                .map(|t| Sha256::digest(t.expose_secret().as_bytes()).into()),
            auth_failures: Arc::default(),
        }
    }

    /// The keyring, or the 503 that says the server cannot handle secrets.
    fn keyring(&self) -> Result<&Keyring, ApiError> {
        self.keyring.as_ref().ok_or_else(|| {
            ApiError::unavailable(
                "SWITCHBOARD_ENCRYPTION_KEY is not set on this server: integrations cannot be \
                 read or written",
            )
        })
    }
}

/// Whether `serve` may listen on `addr`: the API is reachable by anyone who
/// can reach the address, so a non-loopback address needs a token.
pub fn check_exposure(addr: std::net::SocketAddr, settings: &Settings) -> Result<(), String> {
    if addr.ip().is_loopback() || settings.api_token.is_some() {
        Ok(())
    } else {
        Err(format!(
            "refusing to serve HTTP on {addr} without SWITCHBOARD_API_TOKEN: set a token, or \
             listen on a loopback address (SWITCHBOARD_HTTP_ADDR=127.0.0.1:8080)"
        ))
    }
}

/// The `/v1` routes, authenticated. Unknown paths and methods under `/v1`
/// answer in the API's error shape too.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/messages",
            post(messages::create).layer(DefaultBodyLimit::max(MESSAGES_BODY_LIMIT)),
        )
        .route("/messages/{id}", get(messages::show))
        .route(
            "/agents/{agent_id}",
            put(agents::put).patch(agents::patch).get(agents::show),
        )
        .route("/agents/{agent_id}/messages", get(messages::list))
        .route("/agents/{agent_id}/integrations", get(integrations::list))
        .route(
            "/agents/{agent_id}/integrations/{channel}",
            put(integrations::connect)
                .get(integrations::show)
                .patch(integrations::patch)
                .delete(integrations::disconnect),
        )
        .route("/agents/{agent_id}/usage", get(stats::usage))
        .route("/campaigns/{campaign_id}/stats", get(stats::campaign))
        .route(
            "/sequences/{sequence_id}/cancel",
            post(stats::cancel_sequence),
        )
        .route(
            "/agents/{agent_id}/integrations/{channel}/test",
            post(integrations::test),
        )
        .route(
            "/agents/{agent_id}/opt-outs",
            get(opt_outs::list)
                .post(opt_outs::add)
                .delete(opt_outs::remove),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route under /v1 (see the README's HTTP API section)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Every API error, as `{"error": {"code", "message", "details"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Well-formed but wrong: a missing or unknown key, a bad address.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

/// Database trouble: logged with its cause here, answered without it (a
/// driver's message can quote the statement's parameters).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "API request failed in the database");
        if e.is_retriable() {
            ApiError::unavailable("the database is unavailable; try again")
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed in the database; the server log has the cause",
            )
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::from(e).into()
    }
}

/// `axum::Json` with its rejections in the API's error shape: bad JSON is
/// 400, JSON of the wrong shape 422, too large 413.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}

/// `axum::extract::Query` with a 400 in the API's shape.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// An agent id from a path: what the worker would accept as one.
pub fn agent_id(raw: &str) -> Result<&str, ApiError> {
    let id = raw.trim();
    if id.is_empty() || id.len() > MAX_AGENT_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::not_found(format!(
            "`{}` is not an agent id (1 to {MAX_AGENT_ID_BYTES} bytes, no control characters)",
            crate::domain::mask(id)
        )));
    }
    Ok(id)
}

/// A channel from a path: an unknown one names no resource.
pub fn channel_in_path(raw: &str) -> Result<Channel, ApiError> {
    raw.parse().map_err(ApiError::not_found)
}

/// A channel from a body or query: an unknown one is bad input.
pub fn channel_in_input(raw: &str) -> Result<Channel, ApiError> {
    raw.parse().map_err(ApiError::invalid)
}

/// `limit` within bounds.
pub fn page_size(limit: Option<i64>) -> i64 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// The cursor of the page after `rows`: `None` on a short (last) page.
pub fn next_cursor<T, C>(rows: &[T], limit: i64, cursor: impl Fn(&T) -> C) -> Option<C> {
    if rows.len() as i64 == limit {
        rows.last().map(cursor)
    } else {
        None
    }
}
