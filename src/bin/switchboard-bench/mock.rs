//! A local stand-in for the providers the benchmark's agents use: Twilio's
//! CreateMessage, Resend's, SendGrid's, Mailgun's and Postmark's send, each
//! answering in its provider's success shape after a fixed latency, and
//! failing every `fail_every`-th request with a 503 (a failure the worker
//! retries without risking a duplicate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use uuid::Uuid;

pub struct MockProvider {
    pub url: String,
    /// Requests answered, failures included.
    pub served: Arc<AtomicU64>,
}

#[derive(Clone, Copy)]
enum Shape {
    Twilio,
    Resend,
    SendGrid,
    Mailgun,
    Postmark,
}

impl Shape {
    fn accepted(self, n: u64) -> Response {
        match self {
            Shape::Twilio => (
                StatusCode::CREATED,
                axum::Json(json!({"sid": format!("SM{n:032}"), "status": "queued"})),
            )
                .into_response(),
            Shape::Resend => axum::Json(json!({"id": Uuid::new_v4()})).into_response(),
            Shape::SendGrid => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    "x-message-id",
                    format!("bench{n:016}").parse().expect("a valid header"),
                );
                (StatusCode::ACCEPTED, headers).into_response()
            }
            Shape::Mailgun => axum::Json(
                json!({"id": format!("<bench.{n}@mg.bench.test>"), "message": "Queued. Thank you."}),
            )
            .into_response(),
            Shape::Postmark => axum::Json(json!({
                "To": "recipient", "SubmittedAt": "2026-11-25T00:00:00Z",
                "MessageID": Uuid::new_v4(), "ErrorCode": 0, "Message": "OK"}))
            .into_response(),
        }
    }
}

/// Starts the mock. `fail_every` = 0 never fails.
pub async fn start(latency: Duration, fail_every: u64) -> anyhow::Result<MockProvider> {
    let served = Arc::new(AtomicU64::new(0));
    let answer = |shape: Shape| {
        let served = served.clone();
        post(move || {
            let served = served.clone();
            async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let n = served.fetch_add(1, Ordering::Relaxed);
                if fail_every > 0 && n % fail_every == fail_every - 1 {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({"message": "Service temporarily unavailable"})),
                    )
                        .into_response();
                }
                shape.accepted(n)
            }
        })
    };
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            answer(Shape::Twilio),
        )
        .route("/emails", answer(Shape::Resend))
        .route("/v3/mail/send", answer(Shape::SendGrid))
        .route("/v3/{domain}/messages", answer(Shape::Mailgun))
        .route("/email", answer(Shape::Postmark));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(MockProvider { url, served })
}
