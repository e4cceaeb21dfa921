//! Resend email: `POST /emails`, JSON, `Authorization: Bearer re_…`, `200`
//! with `{"id": "…"}` (`../shared/providers.md` §1, and the official OpenAPI
//! `resend.json`). Resend deduplicates on `Idempotency-Key` for 24 hours, so
//! the job id sent there makes a resend after a crash harmless.
//!
//! The connection test lists the account's domains (`GET /domains`). A key
//! with "sending access" only is refused there with `restricted_api_key`:
//! Resend has read the key and found it valid for sending, which is all
//! switchboard needs, so that answer verifies it.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::connection::refusal;
use super::email::Mailbox;
use super::http::{Reply, execute};
use super::sender::{Sender, sender};
use super::{
    Accepted, ErrorKind, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec,
};
use crate::domain::{Channel, metadata_pairs};

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::secret("api_key"),
    SettingSpec::required("from_email"),
    SettingSpec::optional("from_name"),
    SettingSpec::optional_secret("webhook_secret"),
];

pub struct Resend {
    http: reqwest::Client,
    base_url: String,
}

impl Resend {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.to_string(),
        }
    }
}

/// Resend tag names and values may hold only ASCII letters, digits, `_` and
/// `-` (at most 256 characters); anything else is replaced.
fn tag_safe(s: &str) -> String {
    s.chars()
        .take(256)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn body(request: &SendRequest<'_>) -> Result<Value, ProviderError> {
    let job = request.job;
    let Sender { from, reply_to } = sender(request)?;
    let mut b = Map::new();
    b.insert("from".into(), from.header().into());
    b.insert("to".into(), json!([job.recipient.as_str()]));
    if let Some(subject) = &job.content.subject {
        b.insert("subject".into(), subject.clone().into());
    }
    match &job.content.template {
        // A Resend template replaces html and text; they must not be sent with it.
        Some(t) => {
            let id = t
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| ProviderError {
                    code: Some("invalid_template".into()),
                    ..ProviderError::misconfigured("a Resend template needs `template.id`")
                })?;
            let mut tpl = json!({"id": id});
            if let Some(vars) = t.get("variables") {
                tpl["variables"] = vars.clone();
            }
            b.insert("template".into(), tpl);
        }
        None => {
            if let Some(html) = &job.content.html {
                b.insert("html".into(), html.clone().into());
            }
            if let Some(text) = &job.content.text {
                b.insert("text".into(), text.clone().into());
            }
        }
    }
    if let Some(reply_to) = reply_to {
        b.insert("reply_to".into(), reply_to.into());
    }
    let mut tags = vec![json!({"name": "switchboard_job_id", "value": job.id.to_string()})];
    if let Some(c) = &job.campaign.campaign_id {
        tags.push(json!({"name": "campaign_id", "value": tag_safe(c)}));
    }
    tags.extend(
        metadata_pairs(&job.metadata)
            .iter()
            .map(|(k, v)| json!({"name": tag_safe(k), "value": tag_safe(v)})),
    );
    b.insert("tags".into(), tags.into());
    Ok(Value::Object(b))
}

#[async_trait]
impl Provider for Resend {
    fn name(&self) -> &'static str {
        "resend"
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Email => SETTINGS,
            _ => &[],
        }
    }

    /// `Idempotency-Key` = the job id: a repeat within 24 h returns the
    /// first answer without sending again.
    fn deduplicates(&self) -> bool {
        true
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let api_key = request.settings.require("api_key")?;
        let reply = execute(
            self.http
                .post(format!("{}/emails", self.base_url))
                .bearer_auth(api_key)
                .header("Idempotency-Key", &request.idempotency_key)
                .json(&body(request)?),
        )
        .await?;
        if reply.is_success() {
            let id = reply
                .json()
                .and_then(|j| j.get("id").and_then(Value::as_str).map(str::to_string));
            Ok(Accepted {
                provider_message_id: id,
                detail: json!({}),
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
        let api_key = s.require("api_key")?;
        let reply = execute(
            self.http
                .get(format!("{}/domains", self.base_url))
                .bearer_auth(api_key),
        )
        .await?;
        if reply.is_success() {
            return Ok(domains_verdict(&reply, s));
        }
        let err = error(&reply);
        if err.code.as_deref() == Some(RESTRICTED_KEY) {
            return Ok("Resend accepted the key (sending access only)".into());
        }
        Err(refusal(err))
    }
}

/// Resend's name for a valid key that may only send.
const RESTRICTED_KEY: &str = "restricted_api_key";

/// `GET /domains`: how many domains, and whether the sender's is verified
/// (Resend refuses mail from a domain it has not verified).
fn domains_verdict(reply: &Reply, s: &ProviderSettings) -> String {
    let json = reply.json().unwrap_or_default();
    let domains: Vec<&Value> = json
        .get("data")
        .and_then(Value::as_array)
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    let sender_domain = Mailbox::from_settings(s).ok().and_then(|m| {
        m.email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
    });
    let mut out = format!("Resend accepted the key ({} domain(s))", domains.len());
    if let Some(domain) = sender_domain {
        let status = domains
            .iter()
            .find(|d| d.get("name").and_then(Value::as_str) == Some(domain.as_str()))
            .map(|d| d.get("status").and_then(Value::as_str).unwrap_or("unknown"));
        match status {
            Some(status) => out.push_str(&format!("; sender domain {domain} is {status}")),
            None if json.get("has_more").and_then(Value::as_bool) == Some(true) => out.push_str(
                &format!("; sender domain {domain} is not on the first page"),
            ),
            None => out.push_str(&format!(
                "; sender domain {domain} is not among them: Resend will refuse its mail"
            )),
        }
    }
    out
}

/// Resend's errors: `{"statusCode": 422, "name": "validation_error", "message": "..."}`.
fn error(reply: &Reply) -> ProviderError {
    let json = reply.json();
    let text = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let name = text("name");
    let mut err = ProviderError::from_status(
        reply.status,
        name.clone(),
        text("message").unwrap_or_else(|| reply.body_snippet()),
        reply.retry_after(),
    );
    // Another request with the same idempotency key is still being
    // processed (a retry overtook a slow first try): asking again later gets
    // that request's answer, never a second email.
    if name.as_deref() == Some("concurrent_idempotent_requests") {
        err.kind = ErrorKind::Transient;
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_made_safe() {
        assert_eq!(tag_safe("listing id/7"), "listing_id_7");
    }
}
