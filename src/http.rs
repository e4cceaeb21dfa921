//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, provider webhooks
//! (`crate::webhooks`) and the `/v1` API (`crate::api`); and the metrics
//! listener (`SWITCHBOARD_METRICS_ADDR`, [`serve_metrics`]), which when set
//! takes `/metrics` off the listener that faces providers.
//!
//! Handlers are thin: they read state and call the library. Nothing here
//! returns a secret; only the authenticated API returns recipients.
//!
//! The listener runs in the same process as the worker (`run`), so it must
//! never be a way to stall sending: connections are capped (each holds a
//! file descriptor the worker needs for providers, Postgres and RabbitMQ),
//! a connection that sends no complete request head within
//! [`HEADER_TIMEOUT`] is closed (that covers idle keep-alive connections
//! too), a body must arrive within [`BODY_TIMEOUT`] and a whole request is
//! answered within [`REQUEST_TIMEOUT`]. Requests use a small Postgres pool
//! of the server's own ([`HTTP_DB_POOL_SIZE`]), never the worker's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::config::PlatformAccounts;
use crate::crypto::Keyring;
use crate::metrics::Metrics;

/// Connections served at once; the next waits in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Time to receive a request's head, counted from when the connection
/// becomes idle: also how long an idle keep-alive connection is kept.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a request's body to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// Time to answer a request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections in the HTTP server's own Postgres pool (see `app::start`).
pub const HTTP_DB_POOL_SIZE: usize = 4;
/// How long open connections may finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    /// The `/v1` API (same pool).
    pub api: ApiState,
    /// Amazon SNS signing certificates (cached) and subscription
    /// confirmations, for `/webhooks/ses/…`.
    pub sns: Arc<crate::providers::ses::sns::Sns>,
    /// Whether `/metrics` is served here: not when the metrics listener
    /// (`SWITCHBOARD_METRICS_ADDR`) serves it.
    pub serve_metrics: bool,
}

impl HttpState {
    pub fn new(pool: Pool, metrics: Metrics, settings: &crate::config::Settings) -> Self {
        Self {
            metrics,
            keyring: settings.keyring.clone(),
            public_url: settings.public_url.clone(),
            platform: settings.platform.clone(),
            api: ApiState::new(pool.clone(), settings),
            sns: Arc::new(crate::providers::ses::sns::Sns::new(
                crate::providers::ses::sns::client_builder(
                    &settings.provider_urls.extra_root_certs,
                )
                .build()
                .expect("the SNS client has valid static settings and parsed roots"),
            )),
            serve_metrics: settings.metrics_addr.is_none(),
            pool,
        }
    }
}

/// The routes [`serve`] answers. `/metrics` only while `state.serve_metrics`.
pub fn router(state: HttpState) -> Router {
    let api = crate::api::router(state.api.clone());
    let router = if state.serve_metrics {
        Router::new().route("/metrics", get(metrics))
    } else {
        Router::new()
    };
    router
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
        .route(
            "/webhooks/sendgrid/{owner}",
            post(crate::webhooks::sendgrid::sendgrid_webhook),
        )
        .route(
            "/webhooks/mailgun/{owner}",
            post(crate::webhooks::mailgun::mailgun_webhook),
        )
        .route(
            "/webhooks/postmark/{owner}",
            post(crate::webhooks::postmark::postmark_webhook),
        )
        .route(
            "/webhooks/ses/{owner}",
            post(crate::webhooks::ses::ses_webhook),
        )
        .merge(crate::webhooks::messaging::routes())
        .with_state(state)
        .nest("/v1", api)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    exposition(&state.metrics)
}

fn exposition(metrics: &Metrics) -> impl IntoResponse + use<> {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// The routes of the metrics listener: `/metrics`, and `/healthz` so that
/// a process that serves nothing else (`worker`) can be probed.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move { exposition(&m) }),
        )
        .route("/healthz", get(healthz))
        .with_state(metrics)
}

/// Serves [`metrics_router`] on `addr` until `shutdown` is cancelled, with
/// the same connection cap and timeouts as [`serve`].
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = metrics_router(metrics).layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ));
    accept_loop(listener, app, shutdown).await;
    Ok(())
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

/// Serves until `shutdown` is cancelled, then lets open requests finish
/// for a few seconds.
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
    let publisher = state.api.publisher.clone();
    let app = router(state)
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    accept_loop(listener, app, shutdown).await;
    sweeper.abort();
    publisher.close().await;
    Ok(())
}

/// Accepts connections while fewer than [`MAX_CONNECTIONS`] are open (a
/// semaphore, as in tokio's mini-redis) and serves each with HTTP/1.1 and
/// the header timeout.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: wait instead of
                    // spinning on the error.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = stream;
        // The client address, for the API's per-address limit on failed
        // authentications.
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(
                    move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        request
                    },
                )
                .service(app.clone()),
        );
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at shutdown; closing them");
    }
}
