//! `POST /webhooks/mailgun/{integration_id}`: Mailgun's signed webhooks.
//! Verification and parsing live with the adapter
//! (`crate::providers::mailgun::webhook`); this handler finds the
//! integration's `webhook_signing_key`, refuses unsigned, stale and
//! replayed requests (a token seen before), and hands the event to the
//! inbox keyed by its `event-data.id`. There is no platform Mailgun account.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::inbox::Delivery;
use super::{account_secret, count, email_event, refuse, store};
use crate::http::HttpState;
use crate::providers::mailgun::{NAME, webhook};
use crate::store::webhook_tokens;

pub async fn mailgun_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    _headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let account = match account_secret(&state, NAME, &owner, "webhook_signing_key", None).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let verified = match webhook::verify(&account.secret, &body, chrono::Utc::now()) {
        Ok(v) => v,
        Err(why) => {
            if why == webhook::Invalid::Key {
                tracing::error!(%owner, "Mailgun webhook refused: the configured webhook_signing_key is empty");
            } else {
                tracing::warn!(%owner, ?why, "Mailgun webhook with a missing, wrong or stale signature");
            }
            return refuse(
                &state,
                NAME,
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "invalid signature",
            );
        }
    };
    let unavailable = |state: &HttpState| {
        refuse(
            state,
            NAME,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "try again",
        )
    };
    let client = match state.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "Mailgun webhook: database unavailable");
            return unavailable(&state);
        }
    };
    match webhook_tokens::claim(&client, NAME, &verified.token).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(%owner, "Mailgun webhook replayed: its token was seen before");
            return refuse(
                &state,
                NAME,
                StatusCode::UNAUTHORIZED,
                "replayed",
                "token already used",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "Mailgun webhook: could not record its token");
            return unavailable(&state);
        }
    }
    let Some(notice) = webhook::parse(&verified.event_data) else {
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
        // Its retry may carry the same token: do not refuse it as a replay.
        if let Err(e) = webhook_tokens::release(&client, NAME, &verified.token).await {
            tracing::warn!(error = %e, "Mailgun webhook: could not release its token");
        }
        return response;
    }
    StatusCode::OK.into_response()
}
