//! Provider webhooks under `/webhooks/{provider}/{integration_id}` (or
//! `platform` for the platform's accounts): delivery status and replies.
//!
//! Every request is verified with the provider's signature, keyed by that
//! integration's secret, before anything is read from it: a forged request
//! gets 401 and changes nothing. Parsing and signature checks live beside
//! each provider; this module finds the secret and records what was said.
//! Built so far: Twilio (status callbacks, STOP / START replies) and Resend
//! (delivery, bounces, complaints, opens, clicks).

pub mod resend;
pub mod twilio;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use crate::domain::{Channel, EmailAddress, PhoneNumber, mask};
use crate::http::HttpState;
use crate::integrations;
use crate::store::messages::StatusMove;
use crate::store::{self, StoreError};

/// The answer Twilio expects to an incoming message: no reply.
const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

fn refuse(
    state: &HttpState,
    provider: &str,
    status: StatusCode,
    outcome: &str,
    message: &str,
) -> Response {
    state
        .metrics
        .webhooks
        .with_label_values(&[provider, outcome])
        .inc();
    (status, format!("{message}\n")).into_response()
}

fn accepted(state: &HttpState, provider: &str) {
    state
        .metrics
        .webhooks
        .with_label_values(&[provider, "accepted"])
        .inc();
}

/// The secret that signs `owner`'s webhooks, and the agent that owns them
/// (`None` for the platform's account). `Err` is the response to give.
async fn account_secret(
    state: &HttpState,
    provider: &'static str,
    owner: &str,
    key: &str,
    platform_secret: Option<&SecretString>,
) -> Result<(String, Option<String>), Response> {
    if owner == "platform" {
        return match platform_secret {
            Some(s) => Ok((s.expose_secret().to_string(), None)),
            None => Err(refuse(
                state,
                provider,
                StatusCode::NOT_FOUND,
                "unknown_account",
                "no platform account",
            )),
        };
    }
    let unknown = || {
        refuse(
            state,
            provider,
            StatusCode::NOT_FOUND,
            "unknown_account",
            "unknown integration",
        )
    };
    let Ok(id) = owner.parse::<Uuid>() else {
        return Err(unknown());
    };
    let row = match state.pool.get().await {
        Ok(client) => store::integrations::get(&client, id).await,
        Err(e) => Err(e.into()),
    };
    let row = match row {
        Ok(Some(row)) if row.provider == provider => row,
        Ok(_) => return Err(unknown()),
        Err(e) => {
            tracing::warn!(error = %e, provider, "webhook: database unavailable");
            // Providers retry on 5xx.
            return Err(refuse(
                state,
                provider,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again",
            ));
        }
    };
    let agent = row.agent_id.clone();
    match integrations::activate(state.keyring.as_ref(), Some(row)) {
        Ok(Some(active)) => match active.settings.get(key) {
            Some(secret) => Ok((secret.to_string(), Some(agent))),
            None => Err(refuse(
                state,
                provider,
                StatusCode::NOT_FOUND,
                "unknown_account",
                &format!("the integration has no `{key}`"),
            )),
        },
        _ => Err(refuse(
            state,
            provider,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "integration secrets unreadable",
        )),
    }
}

/// `POST /webhooks/twilio/{integration_id|platform}`
pub async fn twilio_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let platform = state.platform.twilio_auth_token.as_ref();
    let (auth_token, agent_id) =
        match account_secret(&state, "twilio", &owner, "auth_token", platform).await {
            Ok(found) => found,
            Err(response) => return response,
        };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    // Twilio signs the URL it called: ours as the public sees it.
    let base = match &state.public_url {
        Some(base) => base.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    let url = format!(
        "{base}{}",
        uri.path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(uri.path())
    );
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !twilio::signature_is_valid(&auth_token, &url, &params, signature) {
        tracing::warn!(%owner, "Twilio webhook with a missing or wrong X-Twilio-Signature");
        return refuse(
            &state,
            "twilio",
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid X-Twilio-Signature",
        );
    }
    if let Err(e) = record_twilio(&state, agent_id.as_deref(), twilio::parse(&params)).await {
        tracing::warn!(error = %e, "Twilio webhook: could not record; Twilio will retry");
        return refuse(
            &state,
            "twilio",
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "try again",
        );
    }
    accepted(&state, "twilio");
    ([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
}

async fn record_twilio(
    state: &HttpState,
    agent_id: Option<&str>,
    notice: twilio::Notice,
) -> Result<(), StoreError> {
    let mut client = state.pool.get().await?;
    match notice {
        twilio::Notice::Ignored => Ok(()),
        twilio::Notice::Status {
            message_sid,
            event,
            provider_status,
            error_code,
        } => {
            let detail = json!({"provider_status": provider_status, "error_code": error_code});
            let error = error_code.map(|c| format!("twilio {provider_status}: error {c}"));
            let status_move = matches!(event, "delivered" | "failed").then_some(StatusMove {
                to: event,
                from: &["sent"],
            });
            store::messages::apply_provider_event(
                &client,
                "twilio",
                &message_sid,
                event,
                status_move,
                error.as_deref(),
                &detail,
            )
            .await?;
            Ok(())
        }
        twilio::Notice::Inbound {
            from,
            body: _,
            keyword,
        } => {
            let channel = if from.starts_with("whatsapp:") {
                Channel::Whatsapp
            } else {
                Channel::Sms
            };
            let Ok(phone) = PhoneNumber::parse(&from) else {
                return Ok(());
            };
            let address = phone.as_str();
            let keyword_name = match keyword {
                Some(twilio::Keyword::Stop) => {
                    store::opt_outs::add(
                        &mut client,
                        agent_id,
                        channel,
                        address,
                        "stop_keyword",
                        Some("twilio:reply"),
                    )
                    .await?;
                    Some("stop")
                }
                Some(twilio::Keyword::Start) => {
                    store::opt_outs::remove(&client, agent_id, channel, address).await?;
                    Some("start")
                }
                None => None,
            };
            let detail = json!({"from": mask(address), "keyword": keyword_name});
            store::messages::record_account_event(
                &client, agent_id, channel, "received", "twilio", &detail,
            )
            .await
        }
    }
}

/// `POST /webhooks/resend/{integration_id|platform}`
pub async fn resend_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let platform = state.platform.resend_webhook_secret.as_ref();
    let (secret, agent_id) =
        match account_secret(&state, "resend", &owner, "webhook_secret", platform).await {
            Ok(found) => found,
            Err(response) => return response,
        };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let verified = resend::verify(
        &secret,
        header("svix-id"),
        header("svix-timestamp"),
        header("svix-signature"),
        &body,
        chrono::Utc::now(),
    );
    if let Err(why) = verified {
        tracing::warn!(%owner, ?why, "Resend webhook with a missing, wrong or stale Svix signature");
        return refuse(
            &state,
            "resend",
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid Svix signature",
        );
    }
    if let Some(notice) = resend::parse(&body)
        && let Err(e) = record_resend(&state, agent_id.as_deref(), notice).await
    {
        tracing::warn!(error = %e, "Resend webhook: could not record; Resend will retry");
        return refuse(
            &state,
            "resend",
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "try again",
        );
    }
    accepted(&state, "resend");
    StatusCode::NO_CONTENT.into_response()
}

async fn record_resend(
    state: &HttpState,
    agent_id: Option<&str>,
    notice: resend::Notice,
) -> Result<(), StoreError> {
    let mut client = state.pool.get().await?;
    let status_move = match notice.event {
        "delivered" | "failed" => Some(StatusMove {
            to: notice.event,
            from: &["sent"],
        }),
        // A bounce can follow a delivery report: the receiving server took
        // the message, then returned it.
        "bounced" => Some(StatusMove {
            to: "bounced",
            from: &["sent", "delivered"],
        }),
        _ => None,
    };
    let error = matches!(notice.event, "bounced" | "failed")
        .then(|| format!("resend: email {}", notice.event));
    store::messages::apply_provider_event(
        &client,
        "resend",
        &notice.email_id,
        notice.event,
        status_move,
        error.as_deref(),
        &notice.detail,
    )
    .await?;
    if let Some(reason) = notice.opt_out {
        for to in &notice.to {
            if let Ok(address) = EmailAddress::parse(to) {
                store::opt_outs::add(
                    &mut client,
                    agent_id,
                    Channel::Email,
                    address.as_str(),
                    reason,
                    Some("resend:webhook"),
                )
                .await?;
            }
        }
    }
    Ok(())
}
