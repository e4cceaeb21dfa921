//! `POST /webhooks/postmark/{integration_id}`: Postmark's webhooks, which
//! are not signed; they must carry HTTP Basic auth with the integration's
//! `webhook_password` (set it as the webhook's HttpAuth in Postmark).
//! Parsing lives with the adapter (`crate::providers::postmark::webhook`).
//! There is no platform Postmark account.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::inbox::{self, Accepted, Delivery, EmailOptOut, ProviderEvent};
use super::{account_secret, count, refuse};
use crate::domain::EmailAddress;
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
    let delivery_id = notice.delivery_id.clone();
    let opt_out = notice.opt_out.map(|reason| EmailOptOut {
        reason: reason.to_string(),
        addresses: notice
            .recipient
            .as_deref()
            .and_then(|e| EmailAddress::parse(e).ok())
            .into_iter()
            .collect(),
        source: "postmark:webhook".into(),
    });
    let delivery = Delivery {
        provider: NAME,
        account: account.account,
        agent_id: account.agent_id.as_deref(),
        delivery_id: &delivery_id,
        event: ProviderEvent::Status {
            provider_message_id: notice.message_id,
            event: notice.event.to_string(),
            error: notice.error,
            detail: notice.detail,
            opt_out,
        },
    };
    match inbox::accept(&state.pool, delivery).await {
        Ok(Accepted::Stored) => count(&state, NAME, "accepted"),
        Ok(Accepted::Duplicate) => count(&state, NAME, "duplicate"),
        Err(e) => {
            tracing::warn!(error = %e, "Postmark webhook: could not store it; asking Postmark to retry");
            return refuse(
                &state,
                NAME,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again",
            );
        }
    }
    StatusCode::OK.into_response()
}
