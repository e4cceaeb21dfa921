//! Provider webhooks under `/webhooks/{provider}/{integration_id}` (or
//! `platform` for the platform's accounts): delivery status and replies.
//!
//! Every request is verified with the provider's signature, keyed by that
//! integration's secret, before anything is read from it: a forged request
//! gets 401 and changes nothing. Parsing and signature checks live beside
//! each provider; this module finds the secret, turns what was said into an
//! [`inbox::ProviderEvent`] and hands it to the inbox, which stores it before
//! we answer and applies it scoped to the account it came in on.
//! Built so far: Twilio (status callbacks, STOP / START replies), Resend,
//! SendGrid, Mailgun, Postmark and SES through SNS (delivery, bounces,
//! complaints, opens, clicks; one file each here, verification and parsing
//! beside the adapter);
//! Meta WhatsApp, VAPI and Africa's Talking in [`messaging`]. Secrets are
//! never logged.

pub mod inbox;
pub mod mailgun;
pub mod messaging;
pub mod postmark;
pub mod resend;
pub mod sendgrid;
pub mod ses;
pub mod twilio;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use crate::domain::{Channel, EmailAddress, PhoneNumber};
use crate::http::HttpState;
use crate::integrations;
use crate::store;
use crate::store::provider_events::Account;
use inbox::{Accepted, Delivery, EmailOptOut, ProviderEvent};

/// The answer Twilio expects to an incoming message: no reply.
const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

fn count(state: &HttpState, provider: &str, outcome: &str) {
    state
        .metrics
        .webhooks
        .with_label_values(&[provider, outcome])
        .inc();
}

fn refuse(
    state: &HttpState,
    provider: &str,
    status: StatusCode,
    outcome: &str,
    message: &str,
) -> Response {
    count(state, provider, outcome);
    (status, format!("{message}\n")).into_response()
}

/// The account a webhook URL names, the secret that signs its webhooks, and
/// the agent that owns it (`None` for the platform's account).
struct Owner {
    account: Account,
    secret: String,
    agent_id: Option<String>,
}

/// Finds `owner`'s account and secret. `Err` is the response to give.
async fn account_secret(
    state: &HttpState,
    provider: &'static str,
    owner: &str,
    key: &str,
    platform_secret: Option<&SecretString>,
) -> Result<Owner, Response> {
    if owner == "platform" {
        return match platform_secret {
            Some(s) => Ok(Owner {
                account: Account::Platform,
                secret: s.expose_secret().to_string(),
                agent_id: None,
            }),
            None => Err(refuse(
                state,
                provider,
                StatusCode::NOT_FOUND,
                "unknown_account",
                "no platform account",
            )),
        };
    }
    let found = integration(state, provider, owner).await?;
    match found.settings.get(key) {
        Some(secret) => Ok(Owner {
            account: Account::Integration(found.id),
            secret: secret.to_string(),
            agent_id: Some(found.agent_id),
        }),
        None => Err(refuse(
            state,
            provider,
            StatusCode::NOT_FOUND,
            "unknown_account",
            &format!("the integration has no `{key}`"),
        )),
    }
}

/// An agent's integration named by a webhook URL, with its settings
/// decrypted.
struct FoundIntegration {
    id: Uuid,
    agent_id: String,
    settings: crate::providers::ProviderSettings,
}

/// Finds the `provider` integration whose id is `owner`. `Err` is the
/// response to give: 404 for no such integration (of that provider), 503
/// when the database or the keyring cannot say.
async fn integration(
    state: &HttpState,
    provider: &'static str,
    owner: &str,
) -> Result<FoundIntegration, Response> {
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
    let agent_id = row.agent_id.clone();
    match integrations::activate(state.keyring.as_ref(), Some(row)) {
        Ok(Some(active)) => Ok(FoundIntegration {
            id,
            agent_id,
            settings: active.settings,
        }),
        _ => Err(refuse(
            state,
            provider,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "integration secrets unreadable",
        )),
    }
}

/// Stores a verified notification and answers: `ok` once it is stored (or
/// was already), 503 when even that failed. The 503 is all we can do then:
/// with the database unreachable there is nowhere durable to put it, and a
/// provider that retries (Resend does; Twilio only with a retry policy on
/// the URL) will bring it again.
async fn accept(state: &HttpState, delivery: Delivery<'_>, ok: Response) -> Response {
    let provider = delivery.provider;
    match inbox::accept(&state.pool, delivery).await {
        Ok(accepted) => {
            let outcome = match accepted {
                Accepted::Stored => "accepted",
                Accepted::Duplicate => "duplicate",
            };
            count(state, provider, outcome);
            ok
        }
        Err(e) => {
            tracing::warn!(error = %e, provider, "webhook: could not store it; asking the provider to retry");
            refuse(
                state,
                provider,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again",
            )
        }
    }
}

/// Stores one verified event, counting what became of it. `Err` is the
/// answer to give: 503, so that the provider brings it again.
async fn store(state: &HttpState, delivery: Delivery<'_>) -> Result<(), Response> {
    let provider = delivery.provider;
    match inbox::accept(&state.pool, delivery).await {
        Ok(Accepted::Stored) => count(state, provider, "accepted"),
        Ok(Accepted::Duplicate) => count(state, provider, "duplicate"),
        Err(e) => {
            tracing::warn!(error = %e, provider, "webhook: could not store an event; asking the provider to retry");
            return Err(refuse(
                state,
                provider,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again",
            ));
        }
    }
    Ok(())
}

/// An email provider's event as the inbox takes it: the event's own id
/// (the de-duplication key) and the status report, with the opt-out it
/// implies for its recipient.
fn email_event(provider: &str, n: crate::providers::email::EmailNotice) -> (String, ProviderEvent) {
    let opt_out = n.opt_out.map(|reason| EmailOptOut {
        reason: reason.to_string(),
        addresses: n
            .recipient
            .as_deref()
            .and_then(|e| EmailAddress::parse(e).ok())
            .into_iter()
            .collect(),
        source: format!("{provider}:webhook"),
    });
    let event = ProviderEvent::Status {
        provider_message_id: n.message_id,
        event: n.event.to_string(),
        error: n.error,
        detail: n.detail,
        opt_out,
    };
    (n.event_id, event)
}

/// `POST /webhooks/twilio/{integration_id|platform}`
pub async fn twilio_webhook(
    State(state): State<HttpState>,
    Path(owner): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Twilio signs the URL it called: ours as the public sees it. Behind a
    // TLS proxy the request we get says neither the scheme nor, reliably,
    // the host Twilio used, so without the public URL every signature would
    // fail as if forged; say what is wrong instead.
    let Some(base) = state.public_url.as_deref() else {
        tracing::error!(
            %owner,
            "Twilio webhook refused: set SWITCHBOARD_PUBLIC_URL to the URL Twilio calls \
             (e.g. https://hooks.example.com) so that its signatures can be checked"
        );
        return refuse(
            &state,
            "twilio",
            StatusCode::SERVICE_UNAVAILABLE,
            "misconfigured",
            "SWITCHBOARD_PUBLIC_URL is not set, so Twilio signatures cannot be checked",
        );
    };
    let platform = state.platform.twilio_auth_token.as_ref();
    let account = match account_secret(&state, "twilio", &owner, "auth_token", platform).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
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
    if !twilio::signature_is_valid(&account.secret, &url, &params, signature) {
        tracing::warn!(%owner, "Twilio webhook with a missing or wrong X-Twilio-Signature");
        return refuse(
            &state,
            "twilio",
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid X-Twilio-Signature",
        );
    }
    let ok = ([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response();
    let Some((delivery_id, event)) = twilio_event(twilio::parse(&params)) else {
        count(&state, "twilio", "ignored");
        return ok;
    };
    let delivery = Delivery {
        provider: "twilio",
        account: account.account,
        agent_id: account.agent_id.as_deref(),
        delivery_id: &delivery_id,
        event,
    };
    accept(&state, delivery, ok).await
}

/// What a Twilio notice means, and its id: Twilio signs no timestamp, so a
/// captured request is valid forever and only its id tells a replay apart.
/// A status report is identified by its message and status (Twilio reports
/// each status of a message once), an incoming message by its own SID.
fn twilio_event(notice: twilio::Notice) -> Option<(String, ProviderEvent)> {
    match notice {
        twilio::Notice::Ignored => None,
        twilio::Notice::Status {
            message_sid,
            event,
            provider_status,
            error_code,
        } => {
            let error = error_code
                .as_ref()
                .map(|c| format!("twilio {provider_status}: error {c}"));
            let detail = json!({"provider_status": provider_status, "error_code": error_code});
            Some((
                format!("{message_sid}:{provider_status}"),
                ProviderEvent::Status {
                    provider_message_id: message_sid,
                    event: event.to_string(),
                    error,
                    detail,
                    opt_out: None,
                },
            ))
        }
        twilio::Notice::Inbound {
            message_sid,
            from,
            body: _,
            keyword,
        } => {
            // Without its SID a reply could be replayed without end; Twilio
            // always sends one, so a request without is not worth acting on.
            let message_sid = message_sid?;
            let channel = if from.starts_with("whatsapp:") {
                Channel::Whatsapp
            } else {
                Channel::Sms
            };
            let from = PhoneNumber::parse(&from).ok()?;
            Some((
                format!("{message_sid}:received"),
                ProviderEvent::Inbound {
                    channel,
                    from,
                    keyword,
                },
            ))
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
    let account = match account_secret(&state, "resend", &owner, "webhook_secret", platform).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let svix_id = header("svix-id");
    let verified = resend::verify(
        &account.secret,
        svix_id,
        header("svix-timestamp"),
        header("svix-signature"),
        &body,
        chrono::Utc::now(),
    );
    if let Err(why) = verified {
        if why == resend::Invalid::Secret {
            tracing::error!(%owner, "Resend webhook refused: the configured webhook secret is not a usable whsec_ secret (empty or too short)");
        } else {
            tracing::warn!(%owner, ?why, "Resend webhook with a missing, wrong or stale Svix signature");
        }
        return refuse(
            &state,
            "resend",
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid Svix signature",
        );
    }
    let ok = StatusCode::NO_CONTENT.into_response();
    let Some(notice) = resend::parse(&body) else {
        count(&state, "resend", "ignored");
        return ok;
    };
    let delivery = Delivery {
        provider: "resend",
        account: account.account,
        agent_id: account.agent_id.as_deref(),
        // Svix sends every attempt of one event with the same id.
        delivery_id: svix_id,
        event: resend_event(notice),
    };
    accept(&state, delivery, ok).await
}

fn resend_event(notice: resend::Notice) -> ProviderEvent {
    let error = matches!(notice.event, "bounced" | "failed")
        .then(|| format!("resend: email {}", notice.event));
    let opt_out = notice.opt_out.map(|reason| EmailOptOut {
        reason: reason.to_string(),
        addresses: notice
            .to
            .iter()
            .filter_map(|to| EmailAddress::parse(to).ok())
            .collect(),
        source: "resend:webhook".into(),
    });
    ProviderEvent::Status {
        provider_message_id: notice.email_id,
        event: notice.event.to_string(),
        error,
        detail: notice.detail,
        opt_out,
    }
}
