//! `POST /webhooks/postmark/{integration_id}`: Postmark's webhooks, which
//! are not signed; they must carry HTTP Basic auth with the integration's
//! `webhook_password` (set it as the webhook's HttpAuth in Postmark).
//! Parsing lives with the adapter (`crate::providers::postmark::webhook`).
//! There is no platform Postmark account.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::inbox::Delivery;
use super::{account_secret, count, email_event, refuse, store};
use crate::http::HttpState;
use crate::providers::postmark::{NAME, webhook};

pub async fn postmark_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let account = match account_secret(&state, NAME, &owner, "webhook_password", None).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !webhook::authorized(&account.secret, authorization) {
        tracing::warn!(%owner, "Postmark webhook without the integration's basic-auth password");
        return (
            [(header::WWW_AUTHENTICATE, "Basic realm=\"switchboard\"")],
            refuse(
                &state,
                NAME,
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "unauthorized",
            ),
        )
            .into_response();
    }
    let Some(notice) = webhook::parse(&body) else {
        count(&state, NAME, "ignored");
        return StatusCode::OK.into_response();
    };
    let (event_id, event) = email_event(NAME, notice);
    let delivery = Delivery {
        provider: NAME,
        account: account.account,
        agent_id: account.agent_id.as_deref(),
        delivery_id: &event_id,
        event,
    };
    if let Err(response) = store(&state, delivery).await {
        return response;
    }
    StatusCode::OK.into_response()
}
