//! Africa's Talking SMS: `POST /version1/messaging`, form-encoded, the
//! account's key in an `apiKey` header, `username`, `to`, `message` and
//! `from` (= `sender_id`) as fields (`../shared/providers.md` §7, the
//! official Python SDK `africastalking/SMS.py` + `Service.py`).
//!
//! The answer needs reading twice: a 2xx only says the request was taken;
//! whether *this* recipient's message went out is in
//! `SMSMessageData.Recipients[].status` / `statusCode`, which can be
//! `InvalidPhoneNumber`, `UserInBlacklist` or `InsufficientBalance` inside a
//! `201`. Those are classified here like HTTP errors. The per-recipient
//! `cost` is kept in the sent event's detail.
//!
//! The connection test is the account's user data (`GET /version1/user
//! ?username=…`, the SDK's `Application.fetch_application_data`) with the
//! same `apiKey` header and host: it answers with the balance.
//!
//! Africa's Talking takes no idempotency key (none in the SDK or the docs),
//! so [`Provider::deduplicates`] stays false.

pub mod webhook;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::connection::refusal;
use super::http::{Reply, execute};
use super::{Accepted, ErrorKind, Provider, ProviderError, SendRequest, SettingSpec};
use crate::domain::Channel;

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::required("username"),
    SettingSpec::secret("api_key"),
    // Optional: without it Africa's Talking sends from its shared default
    // sender (`AFRICASTKNG`).
    SettingSpec::optional("sender_id"),
    // Added to DESIGN's keys: Africa's Talking signs no callback, so its
    // callback URL carries this as `?token=` (see `webhook`).
    SettingSpec::optional_secret("webhook_token"),
];

/// The live API host, the default of `SWITCHBOARD_AFRICASTALKING_BASE_URL`.
pub const LIVE_BASE_URL: &str = "https://api.africastalking.com";
/// Where the `sandbox` username's requests go (the SDK switches on the
/// username alone).
pub const SANDBOX_BASE_URL: &str = "https://api.sandbox.africastalking.com";

pub struct AfricasTalking {
    http: reqwest::Client,
    base_url: String,
}

impl AfricasTalking {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The messaging endpoint for `username`. The sandbox account only
    /// exists on the sandbox host, so the username `sandbox` goes there
    /// unless the operator pointed the base URL somewhere else on purpose (a
    /// local mock, a proxy): that choice wins.
    fn endpoint(&self, username: &str) -> String {
        format!("{}/version1/messaging", self.base(username))
    }

    fn base(&self, username: &str) -> &str {
        if username == "sandbox" && self.base_url == LIVE_BASE_URL {
            SANDBOX_BASE_URL
        } else {
            self.base_url.as_str()
        }
    }
}

/// The form fields, in the order the SDK sends them.
fn form(request: &SendRequest<'_>) -> Result<Vec<(&'static str, String)>, ProviderError> {
    let s = request.settings;
    let job = request.job;
    let message = job.content.text.clone().ok_or_else(|| ProviderError {
        code: Some("no_content".into()),
        ..ProviderError::misconfigured("an Africa's Talking SMS needs `text`")
    })?;
    let mut form = vec![
        ("username", s.require("username")?.to_string()),
        ("to", job.recipient.as_str().to_string()),
        ("message", message),
    ];
    if let Some(from) = s.get("sender_id") {
        form.push(("from", from.to_string()));
    }
    Ok(form)
}

#[async_trait]
impl Provider for AfricasTalking {
    fn name(&self) -> &'static str {
        "africastalking"
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Sms => SETTINGS,
            _ => &[],
        }
    }

    fn check_settings(&self, _channel: Channel, s: &super::ProviderSettings) -> Result<(), String> {
        match s.get("webhook_token") {
            Some(t) if t.chars().count() < webhook::MIN_TOKEN_CHARS => Err(format!(
                "`webhook_token` must be at least {} characters: it is the only proof a \
                 callback comes from Africa's Talking",
                webhook::MIN_TOKEN_CHARS
            )),
            _ => Ok(()),
        }
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let s = request.settings;
        let api_key = s.require("api_key")?;
        let url = self.endpoint(s.require("username")?);
        let reply = execute(
            self.http
                .post(url)
                .header("apiKey", api_key)
                .header(reqwest::header::ACCEPT, "application/json")
                .form(&form(request)?),
        )
        .await?;
        if reply.is_success() {
            // Africa's Talking answers with a cost but no segment count.
            let (encoding, segments) =
                super::segments::count(request.job.content.text.as_deref().unwrap_or(""));
            read_success(&reply).map(|mut accepted| {
                accepted.detail["encoding"] = encoding.as_str().into();
                accepted.detail["num_segments"] = segments.into();
                accepted
            })
        } else {
            Err(http_error(&reply))
        }
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        s: &super::ProviderSettings,
    ) -> Result<String, ProviderError> {
        let api_key = s.require("api_key")?;
        let username = s.require("username")?;
        let mut url = url::Url::parse(&format!("{}/version1/user", self.base(username)))
            .map_err(|e| ProviderError::misconfigured(format!("Africa's Talking URL: {e}")))?;
        url.query_pairs_mut().append_pair("username", username);
        let reply = execute(
            self.http
                .get(url)
                .header("apiKey", api_key)
                .header(reqwest::header::ACCEPT, "application/json"),
        )
        .await?;
        if !reply.is_success() {
            return Err(refusal(http_error(&reply)));
        }
        let balance = reply.json().and_then(|j| {
            j.pointer("/UserData/balance")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        Ok(match balance {
            Some(b) => format!("Africa's Talking account {username}, balance {b}"),
            None => format!("Africa's Talking accepted the key of {username}"),
        })
    }
}

/// A 2xx: find our (only) recipient and read its status.
fn read_success(reply: &Reply) -> Result<Accepted, ProviderError> {
    let Some(json) = reply.json() else {
        // Taken, but the answer is unreadable (or was lost on the way):
        // sent, id unknown. Sending again could deliver twice.
        return Ok(Accepted {
            provider_message_id: None,
            detail: json!({"warning": "unreadable answer"}),
        });
    };
    let data = json.get("SMSMessageData");
    let recipient = data
        .and_then(|d| d.get("Recipients"))
        .and_then(Value::as_array)
        .and_then(|r| r.first());
    let Some(r) = recipient else {
        // No recipient at all: Africa's Talking refused the whole request
        // and says why only in `Message` (e.g. "InvalidSenderId").
        let message = data
            .and_then(|d| d.get("Message"))
            .and_then(Value::as_str)
            .unwrap_or("no recipient in the answer")
            .to_string();
        let mut err =
            ProviderError::from_status(reply.status, Some("no_recipients".into()), message, None);
        err.kind = ErrorKind::Permanent;
        return Err(err);
    };
    let status = r.get("status").and_then(Value::as_str).unwrap_or("");
    let code = r.get("statusCode").and_then(Value::as_i64);
    let outcome = classify(status, code);
    let detail = json!({
        "status": status,
        "status_code": code,
        "cost": r.get("cost"),
        "summary": data.and_then(|d| d.get("Message")),
    });
    match outcome {
        RecipientOutcome::Sent => Ok(Accepted {
            provider_message_id: r
                .get("messageId")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && *id != "None")
                .map(str::to_string),
            detail,
        }),
        refused => {
            let mut err = ProviderError::from_status(
                reply.status,
                Some(if status.is_empty() {
                    code.map(|c| c.to_string()).unwrap_or_default()
                } else {
                    status.to_string()
                }),
                format!("Africa's Talking refused the recipient: {status}"),
                None,
            );
            err.kind = match refused {
                RecipientOutcome::Retry => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            };
            err.recipient_opted_out = refused == RecipientOutcome::OptedOut;
            Err(err)
        }
    }
}

/// What a per-recipient status means for this one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// Processed (100), Sent (101) or Queued (102): it is on its way.
    Sent,
    /// The recipient blocked the sender or registered Do-Not-Disturb: no
    /// message will reach them from this sender, so they are recorded as a
    /// `provider_rejected` opt-out.
    OptedOut,
    /// Refused for good: a bad number, a bad sender id, no credit, a risk hold.
    Refused,
    /// A fault at Africa's Talking or the gateway for this message, which
    /// says it was not sent: trying again later can succeed.
    Retry,
}

/// Africa's Talking's per-recipient statuses. The names are the
/// documented ones; the numeric codes (100–102 sent, 401–409 refusals,
/// 500–502 faults) back them up where a name is missing.
pub fn classify(status: &str, code: Option<i64>) -> RecipientOutcome {
    match status {
        "Success" | "Sent" | "Queued" | "Processed" => RecipientOutcome::Sent,
        "UserInBlacklist" | "DoNotDisturbRejection" => RecipientOutcome::OptedOut,
        "InternalServerError" | "GatewayError" => RecipientOutcome::Retry,
        "InvalidPhoneNumber"
        | "InsufficientBalance"
        | "InvalidSenderId"
        | "RiskHold"
        | "UnsupportedNumberType"
        | "CouldNotRoute"
        | "RejectedByGateway" => RecipientOutcome::Refused,
        _ => match code {
            Some(100..=102) => RecipientOutcome::Sent,
            Some(406 | 409) => RecipientOutcome::OptedOut,
            Some(500 | 501) => RecipientOutcome::Retry,
            _ => RecipientOutcome::Refused,
        },
    }
}

/// A non-2xx: the SDK treats any as an error carrying the text body (often
/// plain text, e.g. "The supplied authentication is invalid").
fn http_error(reply: &Reply) -> ProviderError {
    ProviderError::from_status(
        reply.status,
        None,
        reply.body_snippet(),
        reply.retry_after(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Default::default(),
            body: body.to_string().into(),
        }
    }

    fn answer(status: &str, code: i64, id: &str) -> Value {
        json!({"SMSMessageData": {"Message": "Sent to 1/1 Total Cost: KES 0.8000",
            "Recipients": [{"statusCode": code, "number": "+254711000001", "status": status,
                            "cost": "KES 0.8000", "messageId": id}]}})
    }

    #[test]
    fn success_carries_the_id_and_the_cost() {
        let ok = read_success(&reply(201, answer("Success", 101, "ATXid_1"))).unwrap();
        assert_eq!(ok.provider_message_id.as_deref(), Some("ATXid_1"));
        assert_eq!(ok.detail["cost"], "KES 0.8000");
    }

    #[test]
    fn refusals_inside_a_201_are_errors() {
        let e = read_success(&reply(201, answer("InvalidPhoneNumber", 403, "None"))).unwrap_err();
        assert!(!e.is_retriable() && !e.recipient_opted_out);
        assert_eq!(e.code.as_deref(), Some("InvalidPhoneNumber"));
        let e = read_success(&reply(201, answer("UserInBlacklist", 406, "None"))).unwrap_err();
        assert!(!e.is_retriable() && e.recipient_opted_out);
        let e = read_success(&reply(201, answer("InsufficientBalance", 405, "None"))).unwrap_err();
        assert!(!e.is_retriable() && !e.recipient_opted_out && !e.maybe_sent);
        let e = read_success(&reply(201, answer("GatewayError", 501, "None"))).unwrap_err();
        assert!(e.is_retriable() && !e.maybe_sent);
    }

    #[test]
    fn an_answer_without_recipients_is_a_refusal() {
        let body = json!({"SMSMessageData": {"Message": "InvalidSenderId", "Recipients": []}});
        let e = read_success(&reply(201, body)).unwrap_err();
        assert!(!e.is_retriable());
        assert!(e.message.contains("InvalidSenderId"));
    }

    #[test]
    fn codes_back_up_missing_names() {
        assert_eq!(classify("", Some(102)), RecipientOutcome::Sent);
        assert_eq!(classify("", Some(409)), RecipientOutcome::OptedOut);
        assert_eq!(classify("Whatever", None), RecipientOutcome::Refused);
    }

    #[test]
    fn the_sandbox_username_uses_the_sandbox_host_unless_overridden() {
        let live = AfricasTalking::new(reqwest::Client::new(), LIVE_BASE_URL);
        assert_eq!(
            live.endpoint("sandbox"),
            "https://api.sandbox.africastalking.com/version1/messaging"
        );
        assert_eq!(
            live.endpoint("acme"),
            "https://api.africastalking.com/version1/messaging"
        );
        // The connection test's user-data read goes to the same host.
        assert_eq!(live.base("sandbox"), SANDBOX_BASE_URL);
        assert_eq!(live.base("acme"), LIVE_BASE_URL);
        let mock = AfricasTalking::new(reqwest::Client::new(), "http://127.0.0.1:9/");
        assert_eq!(
            mock.endpoint("sandbox"),
            "http://127.0.0.1:9/version1/messaging"
        );
    }
}
