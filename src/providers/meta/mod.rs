//! Meta's WhatsApp Cloud API: `POST /{phone_number_id}/messages` on the
//! Graph API (`SWITCHBOARD_WHATSAPP_BASE_URL`, version included), JSON,
//! `Authorization: Bearer <access_token>`; the answer's `messages[0].id`
//! (a `wamid.…`) is the message id (`../shared/providers.md` §8).
//!
//! A job is sent as a template message when its `template` names one
//! (`name`, `language`, `body_params`, `header`, or raw `components`), else
//! as free-form text. A template marked `"fallback": true` is only for
//! outside the 24-hour customer-service window: inside it the text goes, and
//! [`crate::policy::whatsapp_window`] swaps the template in when the window
//! is closed. Which one the adapter sends is decided before it is called;
//! it never reads the database.
//!
//! The Cloud API takes no idempotency key (none in Meta's OpenAPI,
//! facebook/openapi `business-messaging-api_v23.0.yaml`), so
//! [`Provider::deduplicates`] stays false: a timeout after the request was written is `unknown`, not
//! resent. Graph errors are classified by their `code` (Meta advises keying
//! on codes, not titles).
//!
//! The connection test reads the phone number (`GET /{phone_number_id}`,
//! Meta's `getPhoneNumberById`) with the access token: it proves the token
//! and that it may use that number.

pub mod webhook;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::connection::refusal;
use super::http::{Reply, execute};
use super::{Accepted, ErrorKind, Provider, ProviderError, SendRequest, SettingSpec};
use crate::domain::Channel;
use crate::policy::whatsapp_window::is_fallback;

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::required("phone_number_id"),
    SettingSpec::secret("access_token"),
    SettingSpec::secret("app_secret"),
    SettingSpec::secret("verify_token"),
    SettingSpec::optional("business_account_id"),
];

/// Message undeliverable: the number is not on WhatsApp, or the person
/// blocked / does not take messages from this business.
pub const UNDELIVERABLE: i64 = 131026;
/// Re-engagement message: more than 24 hours since the person last wrote.
pub const RE_ENGAGEMENT: i64 = 131047;
/// Throughput (130429), pair rate (131056) and Graph app / account rate
/// limits (4, 80007): not sent, safe to try again later.
const RATE_LIMITED: &[i64] = &[130429, 131056, 4, 80007];
/// The access token is invalid or expired: nothing works until the agent
/// reconnects the integration.
pub const BAD_TOKEN: i64 = 190;

pub struct Meta {
    http: reqwest::Client,
    base_url: String,
}

impl Meta {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }
}

fn invalid_template(message: &str) -> ProviderError {
    ProviderError {
        code: Some("invalid_template".into()),
        ..ProviderError::misconfigured(message)
    }
}

/// `template` in Meta's shape from the job's:
/// `{"name", "language": "en_US" | {"code"}, "body_params": [..],
///   "header": {"type": "image"|"video"|"document", "link": url}}`,
/// or `components` given as Meta takes them, passed through.
fn template(t: &Value) -> Result<Value, ProviderError> {
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_template("a WhatsApp template needs `template.name`"))?;
    let code = match t.get("language") {
        Some(Value::String(code)) => code.as_str(),
        Some(lang) => lang.get("code").and_then(Value::as_str).unwrap_or(""),
        None => "",
    };
    if code.is_empty() {
        return Err(invalid_template(
            "a WhatsApp template needs `template.language` (e.g. \"en_US\")",
        ));
    }
    // Meta's OpenAPI (facebook/openapi) requires `policy` beside `code`;
    // `deterministic` is its only value.
    let mut out = json!({"name": name, "language": {"policy": "deterministic", "code": code}});
    if let Some(components) = t.get("components") {
        out["components"] = components.clone();
        return Ok(out);
    }
    let mut components = Vec::new();
    if let Some(h) = t.get("header") {
        let kind = h.get("type").and_then(Value::as_str).unwrap_or("");
        let link = h
            .get("link")
            .or_else(|| h.get("url"))
            .and_then(Value::as_str);
        match (kind, link) {
            ("image" | "video" | "document", Some(link)) => components.push(json!({
                "type": "header",
                "parameters": [{"type": kind, kind: {"link": link}}],
            })),
            _ => {
                return Err(invalid_template(
                    "`template.header` needs `type` (image, video or document) and `link`",
                ));
            }
        }
    }
    if let Some(params) = t.get("body_params") {
        let params = params
            .as_array()
            .ok_or_else(|| invalid_template("`template.body_params` must be an array"))?;
        let parameters: Vec<Value> = params
            .iter()
            .map(|p| {
                let text = match p {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                json!({"type": "text", "text": text})
            })
            .collect();
        components.push(json!({"type": "body", "parameters": parameters}));
    }
    if !components.is_empty() {
        out["components"] = components.into();
    }
    Ok(out)
}

/// The request body for one job.
fn body(request: &SendRequest<'_>) -> Result<Value, ProviderError> {
    let job = request.job;
    let mut b = Map::new();
    b.insert("messaging_product".into(), "whatsapp".into());
    b.insert("recipient_type".into(), "individual".into());
    b.insert("to".into(), job.recipient.as_str().into());
    let template_msg = job.content.template.as_ref().filter(|t| !is_fallback(t));
    let fallback = job.content.template.as_ref().filter(|t| is_fallback(t));
    match (template_msg, &job.content.text) {
        (Some(t), _) => {
            b.insert("type".into(), "template".into());
            b.insert("template".into(), template(t)?);
        }
        (None, Some(text)) => {
            if !job.content.media_urls.is_empty() {
                return Err(ProviderError {
                    code: Some("unsupported_content".into()),
                    ..ProviderError::misconfigured(
                        "the Meta adapter sends media only as a template header",
                    )
                });
            }
            b.insert("type".into(), "text".into());
            b.insert("text".into(), json!({"preview_url": false, "body": text}));
        }
        (None, None) => match fallback {
            // Nothing but a fallback template: it is the message.
            Some(t) => {
                b.insert("type".into(), "template".into());
                b.insert("template".into(), template(t)?);
            }
            None => {
                return Err(ProviderError {
                    code: Some("no_content".into()),
                    ..ProviderError::misconfigured("a WhatsApp job needs `text` or `template`")
                });
            }
        },
    }
    Ok(Value::Object(b))
}

#[async_trait]
impl Provider for Meta {
    fn name(&self) -> &'static str {
        "meta"
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Whatsapp => SETTINGS,
            _ => &[],
        }
    }

    fn check_settings(&self, _channel: Channel, s: &super::ProviderSettings) -> Result<(), String> {
        let id = s.get("phone_number_id").unwrap_or_default();
        if !id.chars().all(|c| c.is_ascii_digit()) {
            return Err("`phone_number_id` is the numeric id Meta shows for the number, not the number itself".into());
        }
        Ok(())
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let s = request.settings;
        let token = s.require("access_token")?;
        let url = format!(
            "{}/{}/messages",
            self.base_url,
            s.require("phone_number_id")?
        );
        let reply = execute(self.http.post(url).bearer_auth(token).json(&body(request)?)).await?;
        if reply.is_success() {
            let json = reply.json();
            let message = json
                .as_ref()
                .and_then(|j| j.pointer("/messages/0"))
                .cloned();
            Ok(Accepted {
                provider_message_id: message
                    .as_ref()
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                detail: json!({
                    "message_status": message.as_ref().and_then(|m| m.get("message_status")),
                    "wa_id": json.as_ref().and_then(|j| j.pointer("/contacts/0/wa_id")),
                }),
            })
        } else {
            Err(error(&reply))
        }
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        s: &super::ProviderSettings,
    ) -> Result<String, ProviderError> {
        let token = s.require("access_token")?;
        let id = s.require("phone_number_id")?;
        let reply = execute(
            self.http
                .get(format!("{}/{id}", self.base_url))
                .bearer_auth(token),
        )
        .await?;
        if !reply.is_success() {
            return Err(refusal(error(&reply)));
        }
        let json = reply.json().unwrap_or_default();
        let field = |k: &str| json.get(k).and_then(Value::as_str).unwrap_or("?");
        Ok(format!(
            "WhatsApp number {} ({}), quality {}",
            field("display_phone_number"),
            field("verified_name"),
            field("quality_rating"),
        ))
    }
}

/// A Graph error: `{"error": {"message", "type", "code", "error_subcode",
/// "error_data": {"details"}, "fbtrace_id"}}`.
fn error(reply: &Reply) -> ProviderError {
    let json = reply.json();
    let e = json.as_ref().and_then(|j| j.get("error"));
    let code = e.and_then(|e| e.get("code")).and_then(Value::as_i64);
    let details = e
        .and_then(|e| e.pointer("/error_data/details"))
        .and_then(Value::as_str);
    let message = match (
        e.and_then(|e| e.get("message")).and_then(Value::as_str),
        details,
    ) {
        (Some(m), Some(d)) => format!("{m}: {d}"),
        (Some(m), None) => m.to_string(),
        _ => reply.body_snippet(),
    };
    let mut err = ProviderError::from_status(
        reply.status,
        code.map(|c| c.to_string()),
        message,
        reply.retry_after(),
    );
    classify(&mut err, code);
    err
}

/// Applies what a Graph error code says over what the HTTP status said.
pub fn classify(err: &mut ProviderError, code: Option<i64>) {
    match code {
        Some(c) if RATE_LIMITED.contains(&c) => {
            // Refused, so certainly not sent.
            err.kind = ErrorKind::Transient;
            err.maybe_sent = false;
        }
        Some(UNDELIVERABLE) => {
            err.kind = ErrorKind::Permanent;
            err.recipient_opted_out = true;
        }
        Some(RE_ENGAGEMENT) => {
            err.kind = ErrorKind::Permanent;
            err.message = format!(
                "outside the 24-hour window (re-engagement): send a template instead; {}",
                err.message
            );
        }
        Some(BAD_TOKEN) => {
            err.kind = ErrorKind::Permanent;
            err.credentials_refused = true;
            err.message = format!(
                "the access token is invalid or expired: reconnect the integration; {}",
                err.message
            );
        }
        _ => {}
    }
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

    fn graph_error(code: i64) -> Value {
        json!({"error": {"message": "(#x) something", "type": "OAuthException", "code": code,
                         "error_data": {"messaging_product": "whatsapp", "details": "why"},
                         "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}})
    }

    #[test]
    fn graph_error_codes_are_classified() {
        let e = error(&reply(400, graph_error(131026)));
        assert!(!e.is_retriable() && e.recipient_opted_out);
        let e = error(&reply(400, graph_error(131047)));
        assert!(!e.is_retriable() && !e.recipient_opted_out);
        assert!(e.message.contains("24-hour"));
        for code in [130429, 131056] {
            let e = error(&reply(400, graph_error(code)));
            assert!(e.is_retriable() && !e.maybe_sent, "{code}");
        }
        let e = error(&reply(401, graph_error(190)));
        assert!(!e.is_retriable() && e.credentials_refused);
        assert_eq!(e.code.as_deref(), Some("190"));
        let e = error(&reply(500, graph_error(131000)));
        assert!(e.is_retriable() && e.maybe_sent);
    }

    #[test]
    fn templates_take_params_and_header_media() {
        let t = template(&json!({"name": "open_house", "language": "en_US",
            "body_params": ["Jane", 3],
            "header": {"type": "image", "link": "https://cdn.test/h.jpg"}}))
        .unwrap();
        assert_eq!(
            t,
            json!({"name": "open_house", "language": {"policy": "deterministic", "code": "en_US"}, "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.test/h.jpg"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Jane"}, {"type": "text", "text": "3"}]}
            ]})
        );
        assert!(template(&json!({"name": "x"})).is_err());
        assert!(template(&json!({"language": "en"})).is_err());
        assert!(
            template(&json!({"name": "x", "language": "en", "header": {"type": "gif"}})).is_err()
        );
    }
}
