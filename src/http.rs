//! The HTTP server: `/metrics`, `/healthz`, `/readyz` and provider
//! webhooks (`crate::webhooks`). The `/v1` API will mount here too.
//!
//! Handlers are thin: they read state and call the library. Nothing here
//! returns a secret or a full recipient address.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::config::PlatformAccounts;
use crate::crypto::Keyring;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub pool: Pool,
    pub metrics: Metrics,
    /// Decrypts integrations' webhook secrets.
    pub keyring: Option<Keyring>,
    /// `SWITCHBOARD_PUBLIC_URL`: the URL providers called, for signatures.
    pub public_url: Option<String>,
    /// The platform's accounts, whose secrets verify `/webhooks/{provider}/platform`.
    pub platform: PlatformAccounts,
}

impl HttpState {
    pub fn new(pool: Pool, metrics: Metrics, settings: &crate::config::Settings) -> Self {
        Self {
            pool,
            metrics,
            keyring: settings.keyring.clone(),
            public_url: settings.public_url.clone(),
            platform: settings.platform.clone(),
        }
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/webhooks/twilio/{owner}",
            post(crate::webhooks::twilio_webhook),
        )
        .route(
            "/webhooks/resend/{owner}",
            post(crate::webhooks::resend_webhook),
        )
        .merge(crate::webhooks::messaging::routes())
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The process is up and serving. Says nothing about dependencies, so an
/// orchestrator does not restart us because Postgres is down.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to do work: Postgres answers and RabbitMQ is connected.
async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let postgres = async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    let postgres = tokio::time::timeout(Duration::from_secs(3), postgres)
        .await
        .ok()
        .flatten()
        .is_some();
    let rabbitmq = state.metrics.amqp_connected.get() == 1;
    let status = if postgres && rabbitmq {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "postgres": if postgres { "ok" } else { "unreachable" },
        "rabbitmq": if rabbitmq { "ok" } else { "unreachable" },
    });
    (status, axum::Json(body))
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
    // Webhooks are answered once stored; what a request could not apply (a
    // report that came before its message's outcome was recorded) is applied
    // by this sweeper, for as long as this server takes webhooks.
    let sweeper = tokio::spawn(crate::webhooks::inbox::sweep(
        state.pool.clone(),
        shutdown.clone(),
    ));
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    sweeper.abort();
    served
}
