//! `POST /webhooks/ses/{integration_id}`: SES events through an Amazon SNS
//! HTTPS subscription. SNS signs every message with its own certificate, so
//! there is no shared secret: the signature is checked against the
//! certificate at `SigningCertURL` (only ever fetched from an
//! `sns.<region>.amazonaws.com` host; `crate::providers::ses::sns`), and
//! when the integration has `sns_topic_arn`, a message from any other topic
//! is refused, so that nobody else's topic can feed this URL. Anything that
//! fails is answered 401 and nothing is written.
//!
//! A `SubscriptionConfirmation` is confirmed by visiting its `SubscribeURL`;
//! a notification's SES event goes to the inbox keyed by the SNS
//! `MessageId` (the same on SNS's retries, so a retry is stored once),
//! about the message with the SES `mail.messageId`. There is no platform
//! SES account.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::inbox::{Delivery, EmailOptOut, ProviderEvent};
use super::{count, integration, refuse, store};
use crate::domain::EmailAddress;
use crate::http::HttpState;
use crate::providers::ses::sns::{CheckError, Kind, Message};
use crate::providers::ses::{NAME, webhook};
use crate::store::provider_events::Account;

pub async fn ses_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if owner == "platform" {
        return refuse(
            &state,
            NAME,
            StatusCode::NOT_FOUND,
            "unknown_account",
            "no platform account",
        );
    }
    let found = match integration(&state, NAME, &owner).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let unsigned = |state: &HttpState, why: &str| {
        tracing::warn!(%owner, why, "SES webhook refused: not a message signed by Amazon SNS");
        refuse(
            state,
            NAME,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid SNS signature",
        )
    };
    let message = match Message::parse(&body) {
        Ok(m) => m,
        Err(why) => return unsigned(&state, &why.to_string()),
    };
    if let Some(topic) = found
        .settings
        .get("sns_topic_arn")
        .filter(|t| !t.is_empty())
        && topic != message.topic_arn
    {
        tracing::warn!(%owner, topic = %message.topic_arn, "SES webhook from a topic that is not the integration's sns_topic_arn");
        return refuse(
            &state,
            NAME,
            StatusCode::UNAUTHORIZED,
            "wrong_topic",
            "not the configured SNS topic",
        );
    }
    let unreachable = |state: &HttpState, e: &str| {
        tracing::warn!(%owner, error = e, "SES webhook: SNS unreachable; asking it to retry");
        refuse(
            state,
            NAME,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "try again",
        )
    };
    match state.sns.verify(&message).await {
        Ok(()) => {}
        Err(CheckError::Invalid(why)) => return unsigned(&state, &why.to_string()),
        Err(CheckError::Unavailable(e)) => return unreachable(&state, &e),
    }
    match message.kind {
        Kind::SubscriptionConfirmation => match state.sns.confirm(&message).await {
            Ok(()) => {
                tracing::info!(%owner, topic = %message.topic_arn, "SNS subscription confirmed");
                count(&state, NAME, "subscription_confirmed");
                StatusCode::OK.into_response()
            }
            Err(CheckError::Invalid(why)) => unsigned(&state, &why.to_string()),
            Err(CheckError::Unavailable(e)) => unreachable(&state, &e),
        },
        Kind::UnsubscribeConfirmation => {
            tracing::info!(%owner, topic = %message.topic_arn, "SNS subscription ended");
            count(&state, NAME, "ignored");
            StatusCode::OK.into_response()
        }
        Kind::Notification => {
            let Some(notice) = webhook::parse(&message.message) else {
                count(&state, NAME, "ignored");
                return StatusCode::OK.into_response();
            };
            let delivery = Delivery {
                provider: NAME,
                account: Account::Integration(found.id),
                agent_id: Some(&found.agent_id),
                delivery_id: &message.message_id,
                event: event(notice),
            };
            if let Err(response) = store(&state, delivery).await {
                return response;
            }
            StatusCode::OK.into_response()
        }
    }
}

fn event(n: webhook::Notice) -> ProviderEvent {
    let opt_out = n.opt_out.map(|(reason, addresses)| EmailOptOut {
        reason: reason.to_string(),
        addresses: addresses
            .iter()
            .filter_map(|a| EmailAddress::parse(a).ok())
            .collect(),
        source: format!("{NAME}:webhook"),
    });
    ProviderEvent::Status {
        provider_message_id: n.message_id,
        event: n.event.to_string(),
        error: n.error,
        detail: n.detail,
        opt_out,
    }
}
