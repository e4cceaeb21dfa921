//! `POST /webhooks/sendgrid/{integration_id|platform}`: SendGrid's signed
//! Event Webhook. Verification and parsing live with the adapter
//! (`crate::providers::sendgrid::webhook`); this handler finds the account's
//! verification key, refuses what is not signed by it, and hands each event
//! to the inbox, keyed by its `sg_event_id`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;

use super::inbox::{self, Accepted, Delivery, EmailOptOut, ProviderEvent};
use super::{account_secret, count, refuse};
use crate::domain::EmailAddress;
use crate::http::HttpState;
use crate::providers::sendgrid::{NAME, webhook};

pub async fn sendgrid_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let platform = state
        .platform
        .sendgrid_webhook_public_key
        .clone()
        .map(SecretString::from);
    let account = match account_secret(
        &state,
        NAME,
        &owner,
        "webhook_public_key",
        platform.as_ref(),
    )
    .await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let verified = webhook::verify(
        &account.secret,
        header(webhook::SIGNATURE_HEADER),
        header(webhook::TIMESTAMP_HEADER),
        &body,
        chrono::Utc::now(),
    );
    if let Err(why) = verified {
        if why == webhook::Invalid::Key {
            tracing::error!(%owner, "SendGrid webhook refused: the configured webhook_public_key is not a P-256 verification key");
        } else {
            tracing::warn!(%owner, ?why, "SendGrid webhook with a missing, wrong or stale signature");
        }
        return refuse(
            &state,
            NAME,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid Event Webhook signature",
        );
    }
    let notices = webhook::parse(&body);
    if notices.is_empty() {
        count(&state, NAME, "ignored");
        return StatusCode::OK.into_response();
    }
    // One request carries many events. Each is stored on its own, keyed by
    // its `sg_event_id`; if any cannot be stored the whole request is
    // refused, and SendGrid's retry brings the stored ones again as
    // duplicates, which the inbox drops.
    for notice in notices {
        let event_id = notice.event_id.clone();
        let delivery = Delivery {
            provider: NAME,
            account: account.account,
            agent_id: account.agent_id.as_deref(),
            delivery_id: &event_id,
            event: event(notice),
        };
        match inbox::accept(&state.pool, delivery).await {
            Ok(Accepted::Stored) => count(&state, NAME, "accepted"),
            Ok(Accepted::Duplicate) => count(&state, NAME, "duplicate"),
            Err(e) => {
                tracing::warn!(error = %e, "SendGrid webhook: could not store an event; asking SendGrid to retry");
                return refuse(
                    &state,
                    NAME,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "try again",
                );
            }
        }
    }
    StatusCode::OK.into_response()
}

fn event(notice: webhook::Notice) -> ProviderEvent {
    let opt_out = notice.opt_out.map(|reason| EmailOptOut {
        reason: reason.to_string(),
        addresses: notice
            .email
            .as_deref()
            .and_then(|e| EmailAddress::parse(e).ok())
            .into_iter()
            .collect(),
        source: "sendgrid:webhook".into(),
    });
    ProviderEvent::Status {
        provider_message_id: notice.message_id,
        event: notice.event.to_string(),
        error: notice.error,
        detail: notice.detail,
        opt_out,
    }
}
