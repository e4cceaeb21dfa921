//! Webhook endpoints of issue 13's providers: Meta's WhatsApp Cloud API
//! (`GET` subscription handshake, signed `POST`s), VAPI's Server URL and
//! Africa's Talking's SMS callbacks (a token in the URL: it signs nothing).
//!
//! As for Twilio and Resend (see the parent module): the integration named
//! in the URL supplies the secret, nothing is read before it verifies, and
//! every verified notification goes through the durable inbox keyed by the
//! provider's own ids, scoped to that integration. Verification and parsing
//! live in the provider folders (`providers::meta::webhook`,
//! `providers::vapi::webhook`).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::inbox::{Delivery, ProviderEvent};
use super::{Owner, accept, account_secret, count, refuse};
use crate::domain::{Channel, PhoneNumber};
use crate::http::HttpState;
use crate::providers::africastalking::webhook as africastalking;
use crate::providers::meta::webhook as meta;
use crate::providers::vapi::webhook as vapi;

/// The routes this module serves, merged into `http::router`.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/webhooks/meta/{owner}",
            get(meta_handshake).post(meta_webhook),
        )
        .route("/webhooks/vapi/{owner}", post(vapi_webhook))
        .route(
            "/webhooks/africastalking/{owner}",
            post(africastalking_webhook),
        )
}

/// `GET /webhooks/meta/{integration_id}`: Meta's subscription check. The
/// `hub.verify_token` must be the integration's `verify_token`; then the
/// `hub.challenge` is echoed, else 403.
async fn meta_handshake(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    // Meta has no platform account in switchboard: no secret for it.
    let account = match account_secret(&state, "meta", &owner, "verify_token", None).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match meta::handshake(
        &account.secret,
        get("hub.mode"),
        get("hub.verify_token"),
        get("hub.challenge"),
    ) {
        Some(challenge) => {
            count(&state, "meta", "handshake");
            (
                [(header::CONTENT_TYPE, "text/plain")],
                challenge.to_string(),
            )
                .into_response()
        }
        None => {
            tracing::warn!(%owner, "Meta subscription check with a wrong verify token");
            refuse(
                &state,
                "meta",
                StatusCode::FORBIDDEN,
                "bad_signature",
                "verify token mismatch",
            )
        }
    }
}

/// Accepts each event of one request; 503 if any could not be stored (the
/// provider retries the whole request, and what was stored is recognised
/// by its id).
async fn accept_all(
    state: &HttpState,
    provider: &'static str,
    account: &Owner,
    events: Vec<(String, ProviderEvent)>,
    ok: Response,
) -> Response {
    if events.is_empty() {
        count(state, provider, "ignored");
        return ok;
    }
    for (delivery_id, event) in events {
        let delivery = Delivery {
            provider,
            account: account.account,
            agent_id: account.agent_id.as_deref(),
            delivery_id: &delivery_id,
            event,
        };
        let answer = accept(state, delivery, StatusCode::OK.into_response()).await;
        if !answer.status().is_success() {
            return answer;
        }
    }
    ok
}

/// `POST /webhooks/meta/{integration_id}`: statuses and inbound messages,
/// signed with `X-Hub-Signature-256` by the integration's `app_secret`.
async fn meta_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let account = match account_secret(&state, "meta", &owner, "app_secret", None).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !meta::signature_is_valid(&account.secret, &body, signature) {
        tracing::warn!(%owner, "Meta webhook with a missing or wrong X-Hub-Signature-256");
        return refuse(
            &state,
            "meta",
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid X-Hub-Signature-256",
        );
    }
    let events = meta::parse(&body)
        .into_iter()
        .flat_map(meta_events)
        .collect();
    accept_all(
        &state,
        "meta",
        &account,
        events,
        StatusCode::OK.into_response(),
    )
    .await
}

/// A status report and its delivery id, as the inbox takes it.
fn status_event(
    delivery_id: String,
    provider_message_id: String,
    event: &str,
    error: Option<String>,
    detail: serde_json::Value,
) -> (String, ProviderEvent) {
    let event = ProviderEvent::Status {
        provider_message_id,
        event: event.to_string(),
        error,
        detail,
        opt_out: None,
    };
    (delivery_id, event)
}

/// A provider's report that a number refuses messages, as an opt-out of the
/// account's agent, identified by the report it came with.
fn phone_opt_out(
    report_id: &str,
    channel: Channel,
    number: Option<&str>,
    source: String,
) -> Option<(String, ProviderEvent)> {
    let number = number?;
    let from = PhoneNumber::parse(number)
        .or_else(|_| PhoneNumber::parse(&format!("+{number}")))
        .ok()?;
    let event = ProviderEvent::PhoneOptOut {
        channel,
        from,
        reason: "provider_rejected".into(),
        source,
    };
    Some((format!("{report_id}:opt_out"), event))
}

fn meta_events(notice: meta::Notice) -> Vec<(String, ProviderEvent)> {
    match notice {
        meta::Notice::Status {
            wamid,
            status,
            event,
            recipient,
            error_code,
            detail,
        } => {
            // Undeliverable (blocked, or not on WhatsApp): like the same
            // code answered to the send, no more messages to this number.
            let opt_out = (error_code == Some(crate::providers::meta::UNDELIVERABLE))
                .then(|| {
                    let source = format!("meta:{}", crate::providers::meta::UNDELIVERABLE);
                    phone_opt_out(&wamid, Channel::Whatsapp, recipient.as_deref(), source)
                })
                .flatten();
            let error = (event == "failed").then(|| {
                format!(
                    "meta failed: error {}",
                    detail["error_code"].as_i64().unwrap_or_default()
                )
            });
            let status = status_event(format!("{wamid}:{status}"), wamid, event, error, detail);
            std::iter::once(status).chain(opt_out).collect()
        }
        meta::Notice::Inbound {
            message_id,
            from,
            keyword,
        } => {
            let Ok(from) = PhoneNumber::parse(&format!("+{from}")) else {
                return Vec::new();
            };
            let event = ProviderEvent::Inbound {
                channel: Channel::Whatsapp,
                from,
                keyword,
            };
            vec![(format!("{message_id}:received"), event)]
        }
    }
}

/// `POST /webhooks/vapi/{integration_id}`: call status and end-of-call
/// reports, authenticated with the integration's `webhook_secret`.
async fn vapi_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let account = match account_secret(&state, "vapi", &owner, "webhook_secret", None).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !vapi::is_authentic(
        &account.secret,
        h("x-vapi-secret"),
        h("authorization"),
        h("x-vapi-signature"),
        &body,
    ) {
        tracing::warn!(%owner, "VAPI webhook without a valid secret or signature");
        return refuse(
            &state,
            "vapi",
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid VAPI secret or signature",
        );
    }
    let events = vapi::parse(&body)
        .into_iter()
        .map(|n| {
            let error = (n.event == "failed").then(|| {
                format!(
                    "vapi call not answered: {}",
                    n.detail["ended_reason"].as_str().unwrap_or("")
                )
            });
            status_event(n.delivery_id, n.call_id, n.event, error, n.detail)
        })
        .collect();
    let ok = axum::Json(json!({})).into_response();
    accept_all(&state, "vapi", &account, events, ok).await
}

/// `POST /webhooks/africastalking/{integration_id}?token=<webhook_token>`:
/// SMS delivery reports and incoming SMS, form-encoded. Africa's Talking
/// signs nothing, so the token in the URL is the only proof.
async fn africastalking_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let provider = "africastalking";
    let account = match account_secret(&state, provider, &owner, "webhook_token", None).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let token = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !crate::providers::same_secret(&token, &account.secret) {
        tracing::warn!(%owner, "Africa's Talking callback without the integration's token");
        return refuse(
            &state,
            provider,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid token",
        );
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let events: Vec<(String, ProviderEvent)> = match africastalking::parse(&params) {
        africastalking::Notice::Ignored => Vec::new(),
        africastalking::Notice::Status {
            message_id,
            status,
            event,
            phone,
            failure_reason,
            detail,
        } => {
            let error = (event == "failed").then(|| {
                format!(
                    "africastalking {status}: {}",
                    detail["failure_reason"]
                        .as_str()
                        .unwrap_or("no reason given")
                )
            });
            // The recipient blocked the sender: as when the send was
            // refused for it, no more messages to this number.
            let opt_out = (failure_reason.as_deref() == Some("UserInBlacklist"))
                .then(|| {
                    let source = "africastalking:UserInBlacklist".to_string();
                    phone_opt_out(&message_id, Channel::Sms, phone.as_deref(), source)
                })
                .flatten();
            let delivery_id = format!("{message_id}:{status}");
            let status = status_event(delivery_id, message_id, event, error, detail);
            std::iter::once(status).chain(opt_out).collect()
        }
        africastalking::Notice::Inbound { id, from, keyword } => PhoneNumber::parse(&from)
            .ok()
            .map(|from| {
                let event = ProviderEvent::Inbound {
                    channel: Channel::Sms,
                    from,
                    keyword,
                };
                (format!("{id}:received"), event)
            })
            .into_iter()
            .collect(),
    };
    accept_all(
        &state,
        provider,
        &account,
        events,
        StatusCode::OK.into_response(),
    )
    .await
}
