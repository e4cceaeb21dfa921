//! `POST /webhooks/sendgrid/{integration_id|platform}`: SendGrid's signed
//! Event Webhook. Verification and parsing live with the adapter
//! (`crate::providers::sendgrid::webhook`); this handler finds the account's
//! verification key, refuses what is not signed by it, and hands each event
//! to the inbox, keyed by its `sg_event_id`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;

use super::inbox::Delivery;
use super::{account_secret, count, email_event, refuse, store};
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
    for n in notices {
        let (event_id, event) = email_event(NAME, n);
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
    }
    StatusCode::OK.into_response()
}
