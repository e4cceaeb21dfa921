//! Twilio Programmable Messaging (SMS, MMS and WhatsApp):
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP
//! Basic auth with the account SID and auth token, `201` with the Message
//! resource whose `sid` is the id (`../shared/providers.md` §6, and the
//! official OpenAPI `twilio_api_v2010.json`).
//!
//! The connection test is FetchAccount, `GET /2010-04-01/Accounts/{Sid}.json`
//! with the same Basic auth: it answers with the account's `status`, and an
//! account that is not `active` (suspended, closed) cannot send. Its answer
//! also carries the account's `auth_token`, which is never read out.
//!
//! Messages.json takes no idempotency key, so a resend after a crash between
//! Twilio's answer and our database write can deliver twice (README).

use async_trait::async_trait;

use super::connection::refusal;
use super::http::{Reply, execute};
use super::{
    Accepted, ErrorKind, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec,
};
use crate::domain::Channel;

const SMS_SETTINGS: &[SettingSpec] = &[
    SettingSpec::required("account_sid"),
    SettingSpec::secret("auth_token"),
    SettingSpec::optional("phone_number"),
    SettingSpec::optional("messaging_service_sid"),
];

const WHATSAPP_SETTINGS: &[SettingSpec] = &[
    SettingSpec::required("account_sid"),
    SettingSpec::secret("auth_token"),
    SettingSpec::required("whatsapp_number"),
];

/// Twilio error codes that mean "not now" rather than "never": 20429 is
/// "too many concurrent requests", documented as never processed and always
/// safe to retry.
const TRANSIENT_CODES: &[i64] = &[20429];

/// The recipient replied STOP; Twilio refuses until they reply START.
const UNSUBSCRIBED_RECIPIENT: i64 = 21610;

pub struct Twilio {
    http: reqwest::Client,
    base_url: String,
}

impl Twilio {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.to_string(),
        }
    }

    /// The form fields of CreateMessage, in the order Twilio documents them.
    fn form(
        &self,
        request: &SendRequest<'_>,
    ) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let job = request.job;
        let s = request.settings;
        let whatsapp = job.channel == Channel::Whatsapp;
        let address = |n: &str| {
            if whatsapp {
                format!("whatsapp:{n}")
            } else {
                n.to_string()
            }
        };

        let mut form = vec![("To", address(job.recipient.as_str()))];
        if whatsapp {
            form.push(("From", address(s.require("whatsapp_number")?)));
        } else if let Some(service) = s.get("messaging_service_sid") {
            form.push(("MessagingServiceSid", service.to_string()));
        } else {
            form.push(("From", s.require("phone_number")?.to_string()));
        }
        // A WhatsApp template is a Twilio Content template: ContentSid with
        // its variables as a JSON string.
        let content_sid = job
            .content
            .template
            .as_ref()
            .and_then(|t| t.get("content_sid"))
            .and_then(|v| v.as_str());
        if let Some(sid) = content_sid {
            form.push(("ContentSid", sid.to_string()));
            if let Some(vars) = job
                .content
                .template
                .as_ref()
                .and_then(|t| t.get("variables"))
            {
                form.push(("ContentVariables", vars.to_string()));
            }
        } else if let Some(text) = &job.content.text {
            form.push(("Body", text.clone()));
        }
        for url in &job.content.media_urls {
            form.push(("MediaUrl", url.clone()));
        }
        if let Some(callback) = &request.status_callback {
            form.push(("StatusCallback", callback.clone()));
        }
        Ok(form)
    }
}

#[async_trait]
impl Provider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Sms => SMS_SETTINGS,
            Channel::Whatsapp => WHATSAPP_SETTINGS,
            Channel::Email | Channel::Voice => &[],
        }
    }

    fn check_settings(&self, channel: Channel, s: &ProviderSettings) -> Result<(), String> {
        let sid = s.get("account_sid").unwrap_or_default();
        if !sid.starts_with("AC") {
            return Err("`account_sid` must start with AC".into());
        }
        if channel == Channel::Sms
            && s.get("phone_number").is_none()
            && s.get("messaging_service_sid").is_none()
        {
            return Err("twilio sms needs `phone_number` or `messaging_service_sid`".into());
        }
        Ok(())
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let s = request.settings;
        let account_sid = s.require("account_sid")?;
        let auth_token = s.require("auth_token")?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base_url, account_sid
        );
        let form = self.form(request)?;
        let reply = execute(
            self.http
                .post(url)
                .basic_auth(account_sid, Some(auth_token))
                .header(reqwest::header::ACCEPT, "application/json")
                .form(&form),
        )
        .await?;
        if reply.is_success() {
            Ok(accepted(&reply))
        } else {
            Err(error(&reply))
        }
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        s: &ProviderSettings,
    ) -> Result<String, ProviderError> {
        let account_sid = s.require("account_sid")?;
        let auth_token = s.require("auth_token")?;
        let url = format!("{}/2010-04-01/Accounts/{account_sid}.json", self.base_url);
        let reply = execute(
            self.http
                .get(url)
                .basic_auth(account_sid, Some(auth_token))
                .header(reqwest::header::ACCEPT, "application/json"),
        )
        .await?;
        if !reply.is_success() {
            return Err(refusal(error(&reply)));
        }
        account_verdict(&reply, account_sid)
    }
}

/// FetchAccount's answer: only an `active` account can send.
fn account_verdict(reply: &Reply, account_sid: &str) -> Result<String, ProviderError> {
    let json = reply.json().unwrap_or_default();
    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let name = field("friendly_name");
    match field("status") {
        "active" => Ok(format!("Twilio account {account_sid} ({name}) is active")),
        // An unreadable answer to a 200 still proves the credentials.
        "" => Ok(format!("Twilio accepted the credentials of {account_sid}")),
        status => Err(ProviderError {
            code: Some(format!("account_{status}")),
            ..ProviderError::misconfigured(format!(
                "the Twilio account {account_sid} is {status}: it cannot send until Twilio \
                 reactivates it"
            ))
        }),
    }
}

fn accepted(reply: &Reply) -> Accepted {
    let json = reply.json();
    let field = |k: &str| json.as_ref().and_then(|j| j.get(k)).cloned();
    Accepted {
        provider_message_id: field("sid").and_then(|v| v.as_str().map(str::to_string)),
        detail: serde_json::json!({
            "status": field("status"),
            "num_segments": field("num_segments"),
        }),
    }
}

/// Twilio's REST errors: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
fn error(reply: &Reply) -> ProviderError {
    let json = reply.json();
    let code = json
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(|c| c.as_i64());
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| reply.body_snippet());
    let mut err = ProviderError::from_status(
        reply.status,
        code.map(|c| c.to_string()),
        message,
        reply.retry_after(),
    );
    if code.is_some_and(|c| TRANSIENT_CODES.contains(&c)) {
        err.kind = ErrorKind::Transient;
    }
    if code == Some(UNSUBSCRIBED_RECIPIENT) {
        err.kind = ErrorKind::Permanent;
        err.recipient_opted_out = true;
    }
    err
}
