//! Mailgun Messages API: `POST /v3/{domain}/messages`, `multipart/form-data`,
//! HTTP Basic auth `api:<key>`, `200` with `{"id": "<…@domain>", "message":
//! "Queued. Thank you."}` (`../shared/providers.md` §3). The domain's region
//! decides the host: `https://api.mailgun.net` (US) or
//! `https://api.eu.mailgun.net` (EU).
//!
//! The id is stored without its angle brackets, as webhooks carry it
//! (`event-data.message.headers.message-id`). The job id and metadata go as
//! `v:` variables, which come back in every event's `user-variables`.
//! Mailgun takes no idempotency key: this adapter does not deduplicate.
//!
//! The connection test is `GET /v3/domains/{domain}` on the region's host:
//! it proves the key and that the domain is in that account and region
//! (a domain in the other region answers 404). A Domain Sending Key may
//! only send (`/messages`), so it cannot pass this test: connect an
//! account API key to test it.

pub mod webhook;

use async_trait::async_trait;
use reqwest::multipart::Form;
use serde_json::{Value, json};

use super::connection::refusal;
use super::email::{check_region, regional_base};
use super::http::{Reply, execute};
use super::sender::{Sender, sender};
use super::{Accepted, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec};
use crate::domain::{Channel, metadata_pairs};

pub const NAME: &str = "mailgun";

/// Default of `SWITCHBOARD_MAILGUN_BASE_URL`.
pub const US_BASE_URL: &str = "https://api.mailgun.net";
pub const EU_BASE_URL: &str = "https://api.eu.mailgun.net";

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::secret("api_key"),
    SettingSpec::required("domain"),
    SettingSpec::optional("region"),
    SettingSpec::required("from_email"),
    SettingSpec::optional("from_name"),
    SettingSpec::optional_secret("webhook_signing_key"),
];

pub struct Mailgun {
    http: reqwest::Client,
    base_url: String,
}

impl Mailgun {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// As for SendGrid: the EU host for `region: "eu"` unless the base URL
    /// is overridden (a proxy or a test mock serves every region).
    fn base_for(&self, settings: &ProviderSettings) -> &str {
        regional_base(&self.base_url, US_BASE_URL, EU_BASE_URL, settings)
    }
}

/// The form fields, in order. Mailgun wants `text`, `html` or `template`.
pub fn fields(request: &SendRequest<'_>) -> Result<Vec<(String, String)>, ProviderError> {
    let job = request.job;
    let Sender { from, reply_to } = sender(request)?;
    let mut f: Vec<(String, String)> = vec![
        ("from".into(), from.header()),
        ("to".into(), job.recipient.as_str().to_string()),
    ];
    if let Some(subject) = &job.content.subject {
        f.push(("subject".into(), subject.clone()));
    }
    match &job.content.template {
        Some(t) => {
            let name = t
                .get("name")
                .or_else(|| t.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| ProviderError {
                    code: Some("invalid_template".into()),
                    ..ProviderError::misconfigured("a Mailgun template needs `template.name`")
                })?;
            f.push(("template".into(), name.to_string()));
            if let Some(vars) = t.get("variables").filter(|v| v.is_object()) {
                f.push(("t:variables".into(), vars.to_string()));
            }
        }
        None => {
            if let Some(text) = &job.content.text {
                f.push(("text".into(), text.clone()));
            }
            if let Some(html) = &job.content.html {
                f.push(("html".into(), html.clone()));
            }
        }
    }
    if let Some(reply_to) = reply_to {
        f.push(("h:Reply-To".into(), reply_to));
    }
    if let Some(c) = job.campaign.campaign_id.as_ref().filter(|c| !c.is_empty()) {
        f.push(("o:tag".into(), c.clone()));
    }
    for (k, v) in metadata_pairs(&job.metadata) {
        if k != "switchboard_job_id" {
            f.push((format!("v:{k}"), v));
        }
    }
    f.push(("v:switchboard_job_id".into(), job.id.to_string()));
    Ok(f)
}

#[async_trait]
impl Provider for Mailgun {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Email => SETTINGS,
            _ => &[],
        }
    }

    fn check_settings(&self, _channel: Channel, s: &ProviderSettings) -> Result<(), String> {
        check_region(NAME, s)?;
        let domain = s.get("domain").unwrap_or_default();
        if domain.contains(['/', '?', '#', ' ']) || !domain.contains('.') {
            return Err("mailgun `domain` must be a sending domain such as mg.example.com".into());
        }
        Ok(())
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let s = request.settings;
        let api_key = s.require("api_key")?;
        let domain = s.require("domain")?;
        let url = format!("{}/v3/{domain}/messages", self.base_for(s));
        let form = fields(request)?
            .into_iter()
            .fold(Form::new(), |form, (k, v)| form.text(k, v));
        let reply = execute(
            self.http
                .post(url)
                .basic_auth("api", Some(api_key))
                .multipart(form),
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
        let api_key = s.require("api_key")?;
        let domain = s.require("domain")?;
        let url = format!("{}/v3/domains/{domain}", self.base_for(s));
        let reply = execute(self.http.get(url).basic_auth("api", Some(api_key))).await?;
        if reply.is_success() {
            let state = reply
                .json()
                .and_then(|j| {
                    j.pointer("/domain/state")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "state unknown".into());
            return Ok(format!("Mailgun domain {domain} ({state})"));
        }
        let mut err = refusal(error(&reply));
        if reply.status == 404 {
            err.message = format!(
                "{}: the domain `{domain}` is not in this Mailgun account's {} region",
                err.message,
                if s.get("region")
                    .is_some_and(|r| r.eq_ignore_ascii_case("eu"))
                {
                    "EU"
                } else {
                    "US"
                }
            );
        }
        Err(err)
    }
}

/// Mailgun's id without the `<>` it is returned with.
pub fn bare_id(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>')
}

fn accepted(reply: &Reply) -> Accepted {
    let id = reply
        .json()
        .and_then(|j| {
            j.get("id")
                .and_then(Value::as_str)
                .map(|s| bare_id(s).to_string())
        })
        .filter(|s| !s.is_empty());
    Accepted {
        provider_message_id: id,
        detail: json!({}),
    }
}

/// Mailgun's errors: JSON `{"message": "..."}` (400, 404, 429), or a plain
/// `Forbidden` for a wrong key (401). By status: 429 and 5xx retry.
fn error(reply: &Reply) -> ProviderError {
    let message = reply
        .json()
        .and_then(|j| j.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| reply.body_snippet());
    ProviderError::from_status(reply.status, None, message, reply.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use serde_json::Map;

    fn reply(status: u16, headers: &[(&'static str, &str)], body: &str) -> Reply {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        Reply {
            status,
            headers: h,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn the_id_is_kept_without_brackets() {
        let a = accepted(&reply(
            200,
            &[],
            r#"{"id":"<20240101120000.1.ABCDEF@mg.realty.test>","message":"Queued. Thank you."}"#,
        ));
        assert_eq!(
            a.provider_message_id.as_deref(),
            Some("20240101120000.1.ABCDEF@mg.realty.test")
        );
    }

    #[test]
    fn errors_are_classified_as_mailgun_sends_them() {
        let e = error(&reply(
            400,
            &[],
            r#"{"message":"'from' parameter is not a valid address. please check documentation"}"#,
        ));
        assert!(!e.is_retriable());
        assert!(e.message.starts_with("'from' parameter"));
        let e = error(&reply(401, &[], "Forbidden"));
        assert!(!e.is_retriable());
        assert_eq!(e.message, "Forbidden");
        let e = error(&reply(
            403,
            &[],
            r#"{"message":"Domain mg.realty.test is not allowed to send: Free accounts are for test purposes only."}"#,
        ));
        assert!(!e.is_retriable());
        let e = error(&reply(
            404,
            &[],
            r#"{"message":"Domain not found: mg.realty.test"}"#,
        ));
        assert!(!e.is_retriable());
        let e = error(&reply(
            429,
            &[("retry-after", "3")],
            r#"{"message":"Too many requests"}"#,
        ));
        assert!(e.is_retriable() && !e.maybe_sent);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(3)));
        let e = error(&reply(500, &[], "Internal Server Error"));
        assert!(e.is_retriable() && e.maybe_sent);
    }

    #[test]
    fn eu_domains_use_the_eu_host() {
        let mut m = Map::new();
        m.insert("region".into(), "eu".into());
        let eu = ProviderSettings::new(m);
        let real = Mailgun::new(reqwest::Client::new(), US_BASE_URL);
        assert_eq!(real.base_for(&eu), EU_BASE_URL);
        assert_eq!(real.base_for(&ProviderSettings::default()), US_BASE_URL);
        let mock = Mailgun::new(reqwest::Client::new(), "http://127.0.0.1:9");
        assert_eq!(mock.base_for(&eu), "http://127.0.0.1:9");
    }
}
