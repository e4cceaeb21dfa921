//! Postmark: `POST /email`, JSON, `X-Postmark-Server-Token`, `200` with
//! `{"MessageID", "ErrorCode": 0, "Message": "OK"}` (`../shared/providers.md`
//! §4). `MessageStream` is the integration's `message_stream`, else
//! `outbound` (Postmark's default transactional stream). The job id and
//! metadata go as `Metadata`, which comes back on every webhook.
//!
//! Postmark refuses with `422 {"ErrorCode", "Message"}`: 406 (inactive
//! recipient: bounced, complained or unsubscribed before) means the address
//! cannot receive and becomes a `provider_rejected` opt-out; 300 (invalid
//! email request) is permanent; 429 is rate limited. Postmark takes no
//! idempotency key: this adapter does not deduplicate.
//!
//! The connection test is `GET /server` with the same token header: the
//! server the token belongs to answers with its name.

pub mod webhook;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::connection::refusal;
use super::http::{Reply, execute};
use super::sender::{Sender, sender};
use super::{
    Accepted, ErrorKind, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec,
};
use crate::domain::{Channel, metadata_pairs};

pub const NAME: &str = "postmark";

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::secret("server_token"),
    SettingSpec::required("from_email"),
    SettingSpec::optional("from_name"),
    SettingSpec::optional("message_stream"),
    SettingSpec::optional_secret("webhook_password"),
];

const DEFAULT_STREAM: &str = "outbound";
/// Postmark's `ErrorCode`s that change what a failure means.
const INACTIVE_RECIPIENT: i64 = 406;
const RATE_LIMITED: i64 = 429;
/// Postmark refuses a `Tag` longer than this.
const MAX_TAG_CHARS: usize = 1000;

pub struct Postmark {
    http: reqwest::Client,
    base_url: String,
}

impl Postmark {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }
}

pub fn body(request: &SendRequest<'_>) -> Result<Value, ProviderError> {
    let job = request.job;
    super::email::refuse_template(request, "Postmark")?;
    let Sender { from, reply_to } = sender(request)?;
    let mut b = Map::new();
    b.insert("From".into(), from.header().into());
    b.insert("To".into(), job.recipient.as_str().into());
    if let Some(subject) = &job.content.subject {
        b.insert("Subject".into(), subject.clone().into());
    }
    if let Some(html) = &job.content.html {
        b.insert("HtmlBody".into(), html.clone().into());
    }
    if let Some(text) = &job.content.text {
        b.insert("TextBody".into(), text.clone().into());
    }
    if let Some(reply_to) = reply_to {
        b.insert("ReplyTo".into(), reply_to.into());
    }
    if let Some(c) = job.campaign.campaign_id.as_ref().filter(|c| !c.is_empty()) {
        b.insert(
            "Tag".into(),
            c.chars().take(MAX_TAG_CHARS).collect::<String>().into(),
        );
    }
    let mut metadata = Map::new();
    for (k, v) in metadata_pairs(&job.metadata) {
        metadata.insert(k, v.into());
    }
    metadata.insert("switchboard_job_id".into(), job.id.to_string().into());
    b.insert("Metadata".into(), Value::Object(metadata));
    b.insert(
        "MessageStream".into(),
        request
            .settings
            .get("message_stream")
            .unwrap_or(DEFAULT_STREAM)
            .into(),
    );
    Ok(Value::Object(b))
}

#[async_trait]
impl Provider for Postmark {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Email => SETTINGS,
            _ => &[],
        }
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let token = request.settings.require("server_token")?;
        let reply = execute(
            self.http
                .post(format!("{}/email", self.base_url))
                .header("X-Postmark-Server-Token", token)
                .header(reqwest::header::ACCEPT, "application/json")
                .json(&body(request)?),
        )
        .await?;
        let json = reply.json();
        let error_code = json
            .as_ref()
            .and_then(|j| j.get("ErrorCode"))
            .and_then(Value::as_i64);
        // A 200 with a non-zero ErrorCode is still a refusal.
        if reply.is_success() && error_code.unwrap_or(0) == 0 {
            let id = json
                .as_ref()
                .and_then(|j| j.get("MessageID"))
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(Accepted {
                provider_message_id: id,
                detail: json!({"submitted_at": json.as_ref().and_then(|j| j.get("SubmittedAt"))}),
            })
        } else {
            Err(error(&reply))
        }
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        s: &ProviderSettings,
    ) -> Result<String, ProviderError> {
        let token = s.require("server_token")?;
        let reply = execute(
            self.http
                .get(format!("{}/server", self.base_url))
                .header("X-Postmark-Server-Token", token)
                .header(reqwest::header::ACCEPT, "application/json"),
        )
        .await?;
        if !reply.is_success() {
            return Err(refusal(error(&reply)));
        }
        let name = reply
            .json()
            .and_then(|j| j.get("Name").and_then(Value::as_str).map(str::to_string));
        Ok(match name {
            Some(name) => format!("Postmark server \"{name}\" accepted the token"),
            None => "Postmark accepted the server token".into(),
        })
    }
}

fn error(reply: &Reply) -> ProviderError {
    let json = reply.json();
    let code = json
        .as_ref()
        .and_then(|j| j.get("ErrorCode"))
        .and_then(Value::as_i64);
    let message = json
        .as_ref()
        .and_then(|j| j.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| reply.body_snippet());
    let status = if (200..300).contains(&reply.status) {
        422
    } else {
        reply.status
    };
    let mut err = ProviderError::from_status(
        status,
        code.map(|c| c.to_string()),
        message,
        reply.retry_after(),
    );
    match code {
        Some(INACTIVE_RECIPIENT) => {
            err.kind = ErrorKind::Permanent;
            err.recipient_opted_out = true;
        }
        Some(RATE_LIMITED) => {
            err.kind = ErrorKind::Transient;
            err.maybe_sent = false;
        }
        _ => {}
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn error_codes_are_classified_as_postmark_sends_them() {
        let e = error(&reply(
            422,
            r#"{"ErrorCode":406,"Message":"You tried to send to recipient(s) that have been marked as inactive. Found inactive addresses: buyer@example.com. Inactive recipients are ones that have generated a hard bounce, a spam complaint, or a manual suppression."}"#,
        ));
        assert!(!e.is_retriable() && e.recipient_opted_out);
        assert_eq!(e.code.as_deref(), Some("406"));
        let e = error(&reply(
            422,
            r#"{"ErrorCode":300,"Message":"Invalid 'To' address: 'nobody'."}"#,
        ));
        assert!(!e.is_retriable() && !e.recipient_opted_out);
        let e = error(&reply(
            422,
            r#"{"ErrorCode":429,"Message":"Rate limit exceeded."}"#,
        ));
        assert!(e.is_retriable() && !e.maybe_sent);
        let e = error(&reply(
            429,
            r#"{"ErrorCode":429,"Message":"Rate limit exceeded."}"#,
        ));
        assert!(e.is_retriable() && !e.maybe_sent);
        let e = error(&reply(
            401,
            r#"{"ErrorCode":10,"Message":"No Account or Server API tokens were supplied in the HTTP headers."}"#,
        ));
        assert!(!e.is_retriable());
        let e = error(&reply(
            500,
            r#"{"ErrorCode":500,"Message":"Internal server error"}"#,
        ));
        assert!(e.is_retriable() && e.maybe_sent);
        // A 200 carrying an error code is a refusal.
        let e = error(&reply(
            200,
            r#"{"ErrorCode":300,"Message":"Invalid email request"}"#,
        ));
        assert_eq!(e.status, Some(422));
        assert!(!e.is_retriable());
    }
}
