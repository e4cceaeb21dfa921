//! SendGrid v3 Mail Send: `POST /v3/mail/send`, JSON, `Authorization:
//! Bearer <key>`, `202 Accepted` with the message id in the `X-Message-Id`
//! header (`../shared/providers.md` §2, and the official OpenAPI
//! `tsg_mail_v3.json`, copied to `tests/specs/`). EU regional subusers are
//! served from `https://api.eu.sendgrid.com` (`region: "eu"`).
//!
//! SendGrid takes no idempotency key, so this adapter does not
//! [`Provider::deduplicates`]: a request that may have been acted on (a
//! timeout, a 5xx) is recorded `unknown` rather than sent twice.
//!
//! The job id and the job's metadata travel as the personalization's
//! `custom_args` (an object there; the spec types the top-level field as a
//! string), so they come back on every Event Webhook event.
//!
//! The connection test is `GET /v3/scopes` (on the integration's regional
//! host), which any key may call and which lists what the key may do: a key
//! without `mail.send` is valid and still cannot send, so it is refused.

pub mod webhook;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::connection::refusal;
use super::email::{check_region, regional_base};
use super::http::{MAX_RETRY_AFTER, Reply, execute};
use super::sender::{Sender, sender};
use super::{Accepted, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec};
use crate::domain::{Channel, metadata_pairs};

pub const NAME: &str = "sendgrid";

/// Where the global API is; also the default of `SWITCHBOARD_SENDGRID_BASE_URL`.
pub const US_BASE_URL: &str = "https://api.sendgrid.com";
/// Where EU regional subusers must send (the spec's second server).
pub const EU_BASE_URL: &str = "https://api.eu.sendgrid.com";

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::secret("api_key"),
    SettingSpec::required("from_email"),
    SettingSpec::optional("from_name"),
    // Added to DESIGN.md's keys (compatible): `us` (default) or `eu`.
    SettingSpec::optional("region"),
    SettingSpec::optional("webhook_public_key"),
];

/// SendGrid refuses more than 255 characters in a category.
const MAX_CATEGORY_CHARS: usize = 255;

pub struct SendGrid {
    http: reqwest::Client,
    base_url: String,
}

impl SendGrid {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The API root for an integration: the EU host for `region: "eu"`,
    /// unless `SWITCHBOARD_SENDGRID_BASE_URL` points somewhere else (a proxy
    /// or a test mock), which then serves every region.
    fn base_for(&self, settings: &ProviderSettings) -> &str {
        regional_base(&self.base_url, US_BASE_URL, EU_BASE_URL, settings)
    }
}

/// The Mail Send body: one personalization for the one recipient, content
/// with `text/plain` before `text/html` (SendGrid refuses the other order).
pub fn body(request: &SendRequest<'_>) -> Result<Value, ProviderError> {
    let job = request.job;
    let Sender { from, reply_to } = sender(request)?;
    let mut custom_args = Map::new();
    for (k, v) in metadata_pairs(&job.metadata) {
        custom_args.insert(k, v.into());
    }
    // Last, so metadata cannot overwrite it.
    custom_args.insert("switchboard_job_id".into(), job.id.to_string().into());

    let mut personalization = Map::new();
    personalization.insert("to".into(), json!([{"email": job.recipient.as_str()}]));
    personalization.insert("custom_args".into(), Value::Object(custom_args));

    let mut b = Map::new();
    let mut sender = json!({"email": from.email});
    if let Some(name) = &from.name {
        sender["name"] = name.clone().into();
    }
    b.insert("from".into(), sender);
    if let Some(reply_to) = reply_to {
        b.insert("reply_to".into(), json!({"email": reply_to}));
    }
    if let Some(subject) = job.content.subject.as_ref().filter(|s| !s.is_empty()) {
        b.insert("subject".into(), subject.clone().into());
    }
    match &job.content.template {
        // A dynamic template (`d-…`) brings its own content; its data goes
        // with the personalization.
        Some(t) => {
            let id = t
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| ProviderError {
                    code: Some("invalid_template".into()),
                    ..ProviderError::misconfigured("a SendGrid template needs `template.id`")
                })?;
            b.insert("template_id".into(), id.into());
            if let Some(vars) = t.get("variables").filter(|v| v.is_object()) {
                personalization.insert("dynamic_template_data".into(), vars.clone());
            }
        }
        None => {
            let mut content = Vec::new();
            if let Some(text) = job.content.text.as_ref().filter(|s| !s.is_empty()) {
                content.push(json!({"type": "text/plain", "value": text}));
            }
            if let Some(html) = job.content.html.as_ref().filter(|s| !s.is_empty()) {
                content.push(json!({"type": "text/html", "value": html}));
            }
            b.insert("content".into(), content.into());
        }
    }
    b.insert(
        "personalizations".into(),
        Value::Array(vec![Value::Object(personalization)]),
    );
    if let Some(c) = job.campaign.campaign_id.as_ref().filter(|c| !c.is_empty()) {
        let category: String = c.chars().take(MAX_CATEGORY_CHARS).collect();
        b.insert("categories".into(), json!([category]));
    }
    Ok(Value::Object(b))
}

#[async_trait]
impl Provider for SendGrid {
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
        if let Some(key) = s.get("webhook_public_key") {
            webhook::public_key(key).map_err(|_| {
                "sendgrid `webhook_public_key` is not the base64 P-256 verification key \
                 shown under Mail Settings → Signed Event Webhook"
                    .to_string()
            })?;
        }
        Ok(())
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let api_key = request.settings.require("api_key")?;
        let url = format!("{}/v3/mail/send", self.base_for(request.settings));
        let reply = execute(
            self.http
                .post(url)
                .bearer_auth(api_key)
                .json(&body(request)?),
        )
        .await?;
        if reply.is_success() {
            Ok(accepted(&reply))
        } else {
            Err(error(&reply, chrono::Utc::now().timestamp()))
        }
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        s: &ProviderSettings,
    ) -> Result<String, ProviderError> {
        let api_key = s.require("api_key")?;
        let url = format!("{}/v3/scopes", self.base_for(s));
        let reply = execute(self.http.get(url).bearer_auth(api_key)).await?;
        if !reply.is_success() {
            return Err(refusal(error(&reply, chrono::Utc::now().timestamp())));
        }
        scopes_verdict(&reply)
    }
}

/// The scope a key needs to send (SendGrid's API key permissions).
const SEND_SCOPE: &str = "mail.send";

/// `GET /v3/scopes` answers `{"scopes": [...]}`: the key must hold
/// `mail.send`.
fn scopes_verdict(reply: &Reply) -> Result<String, ProviderError> {
    let scopes: Vec<String> = reply
        .json()
        .and_then(|j| j.get("scopes").cloned())
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    if scopes.iter().any(|s| s == SEND_SCOPE) {
        Ok(format!(
            "SendGrid accepted the key, which may send ({} scopes)",
            scopes.len()
        ))
    } else {
        Err(ProviderError {
            code: Some("missing_scope".into()),
            credentials_refused: true,
            ..ProviderError::misconfigured(
                "the SendGrid key is valid but lacks the `mail.send` permission: give it \
                 Mail Send access (Settings → API Keys) or use another key",
            )
        })
    }
}

fn accepted(reply: &Reply) -> Accepted {
    // `None` when the header is missing: sent all the same (202), and the id
    // is then unknown rather than a reason to send again.
    let id = reply
        .headers
        .get("x-message-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    Accepted {
        provider_message_id: id,
        detail: json!({"http_status": reply.status}),
    }
}

/// SendGrid's errors: `{"errors": [{"message", "field", "help"}], "id"}`,
/// classified by status (429 and 5xx retry, other 4xx do not). A 429 says
/// when the limit resets in `X-RateLimit-Reset` (Unix seconds), not in
/// `Retry-After`.
fn error(reply: &Reply, now_unix: i64) -> ProviderError {
    let json = reply.json();
    let errors: Vec<&Value> = json
        .as_ref()
        .and_then(|j| j.get("errors"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let messages: Vec<String> = errors
        .iter()
        .filter_map(|e| {
            let message = e.get("message").and_then(Value::as_str)?;
            Some(match e.get("field").and_then(Value::as_str) {
                Some(field) if field != "null" => format!("{field}: {message}"),
                _ => message.to_string(),
            })
        })
        .collect();
    let message = if messages.is_empty() {
        reply.body_snippet()
    } else {
        messages.join("; ")
    };
    let code = errors
        .first()
        .and_then(|e| e.get("field"))
        .and_then(Value::as_str)
        .filter(|f| *f != "null")
        .map(str::to_string);
    let retry_after = reply.retry_after().or_else(|| {
        (reply.status == 429)
            .then(|| rate_limit_reset(reply, now_unix))
            .flatten()
    });
    ProviderError::from_status(reply.status, code, message, retry_after)
}

/// The wait until `X-RateLimit-Reset`, capped like any `Retry-After`.
fn rate_limit_reset(reply: &Reply, now_unix: i64) -> Option<Duration> {
    let reset: i64 = reply
        .headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let secs = reset.checked_sub(now_unix)?.max(0) as u64;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

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

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn errors_are_classified_as_sendgrid_sends_them() {
        // 400: the request is wrong; the same request fails the same way.
        let e = error(
            &reply(
                400,
                &[],
                r#"{"errors":[{"message":"The from email does not contain a valid address.","field":"from.email","help":"http://sendgrid.com/docs/..."}]}"#,
            ),
            NOW,
        );
        assert!(!e.is_retriable() && !e.maybe_sent);
        assert_eq!(e.code.as_deref(), Some("from.email"));
        assert!(
            e.message.contains("from.email: The from email"),
            "{}",
            e.message
        );
        // 401 bad key, 403 missing scope or unverified sender, 413 too big.
        for (status, body) in [
            (
                401,
                r#"{"errors":[{"field":null,"message":"The provided authorization grant is invalid, expired, or revoked","help":null}]}"#,
            ),
            (
                403,
                r#"{"errors":[{"field":"from","message":"The from address does not match a verified Sender Identity.","help":null}]}"#,
            ),
            (
                413,
                r#"{"errors":[{"field":null,"message":"Payload too large"}]}"#,
            ),
        ] {
            let e = error(&reply(status, &[], body), NOW);
            assert!(!e.is_retriable(), "{status}");
            assert_eq!(e.status, Some(status));
        }
        // 429: retry when the limit resets.
        let e = error(
            &reply(
                429,
                &[
                    ("x-ratelimit-limit", "600"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1700000007"),
                ],
                r#"{"errors":[{"field":null,"message":"too many requests"}]}"#,
            ),
            NOW,
        );
        assert!(e.is_retriable() && !e.maybe_sent);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(e.message, "too many requests");
        // A reset in the past or absurdly far away is not a panic.
        let e = error(&reply(429, &[("x-ratelimit-reset", "5")], ""), NOW);
        assert_eq!(e.retry_after, Some(Duration::ZERO));
        let e = error(
            &reply(429, &[("x-ratelimit-reset", "9223372036854775807")], ""),
            NOW,
        );
        assert_eq!(e.retry_after, Some(MAX_RETRY_AFTER));
        // 5xx: may have been sent; SendGrid does not deduplicate.
        let e = error(
            &reply(
                500,
                &[],
                r#"{"errors":[{"field":null,"message":"internal error"}]}"#,
            ),
            NOW,
        );
        assert!(e.is_retriable() && e.maybe_sent);
        let e = error(&reply(502, &[], "<html>Bad Gateway</html>"), NOW);
        assert!(e.maybe_sent);
        assert!(e.message.contains("Bad Gateway"));
    }

    #[test]
    fn the_message_id_is_the_x_message_id_header() {
        let a = accepted(&reply(
            202,
            &[("x-message-id", "LRzXl_NHStOGhQ4kofSm_A")],
            "",
        ));
        assert_eq!(
            a.provider_message_id.as_deref(),
            Some("LRzXl_NHStOGhQ4kofSm_A")
        );
        assert_eq!(accepted(&reply(202, &[], "")).provider_message_id, None);
    }

    #[test]
    fn eu_integrations_use_the_eu_host_unless_the_base_url_is_overridden() {
        let settings = |region: &str| {
            let mut m = Map::new();
            m.insert("region".into(), region.into());
            ProviderSettings::new(m)
        };
        let real = SendGrid::new(reqwest::Client::new(), US_BASE_URL);
        assert_eq!(real.base_for(&settings("eu")), EU_BASE_URL);
        assert_eq!(real.base_for(&settings("EU")), EU_BASE_URL);
        assert_eq!(real.base_for(&settings("us")), US_BASE_URL);
        assert_eq!(real.base_for(&ProviderSettings::default()), US_BASE_URL);
        let mock = SendGrid::new(reqwest::Client::new(), "http://127.0.0.1:9/");
        assert_eq!(mock.base_for(&settings("eu")), "http://127.0.0.1:9");
    }
}
