//! The send job, version 1: the wire format publishers use (DESIGN.md) and the
//! validated [`SendJob`] that the rest of switchboard works with.
//!
//! Parsing happens exactly once, here. A job that fails to parse becomes a
//! [`Rejection`] that still carries whatever could be read (id, agent,
//! channel) so the rejection can be recorded against the right message. This
//! module never touches the network or the database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Channel, Recipient};

/// Longest agent id we accept: it is also the AMQP routing key, which is
/// limited to 255 bytes.
const MAX_AGENT_ID_BYTES: usize = 255;

/// Largest job body we read. RabbitMQ would carry far more, but a job is a
/// message, not an attachment store, and every copy of it (the message row,
/// `scheduled_jobs`, a dead letter) is paid for again.
pub const MAX_JOB_BYTES: usize = 1024 * 1024;

/// Longest value of a short field: a subject (RFC 5322's line limit),
/// campaign and sequence ids.
const MAX_SHORT_FIELD_CHARS: usize = 998;

/// What a rejection reason may echo of a value the publisher sent: enough to
/// recognise it, never enough to grow a dead-letter header or an event.
fn shown(v: &impl ToString) -> String {
    let s = v.to_string();
    if s.chars().count() <= 64 {
        s
    } else {
        format!(
            "{}… ({} characters)",
            s.chars().take(64).collect::<String>(),
            s.chars().count()
        )
    }
}

/// Postgres stores neither a NUL in `text` nor `\u0000` in `jsonb`, and no
/// provider wants one: refused here, at the edge, instead of failing the
/// outcome write after the message was sent.
fn nul_in(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(nul_in),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || nul_in(v)),
        _ => false,
    }
}

/// Whether quiet hours apply: marketing waits for the recipient's daytime,
/// transactional (password resets, appointment confirmations) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Transactional,
    #[default]
    Marketing,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Transactional => "transactional",
            Category::Marketing => "marketing",
        }
    }
}

/// What the message says. Which fields matter depends on the channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub reply_to: Option<super::EmailAddress>,
    pub media_urls: Vec<String>,
    /// Provider template (WhatsApp template name, language, params; a
    /// provider-side email template). Passed through to the adapter.
    pub template: Option<serde_json::Value>,
}

/// Campaign bookkeeping, carried through to the message row and events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CampaignRef {
    pub campaign_id: Option<String>,
    pub sequence_id: Option<String>,
    pub step: Option<i64>,
}

/// A validated send job. Code behind the edge accepts only this type.
#[derive(Debug, Clone, PartialEq)]
pub struct SendJob {
    pub id: Uuid,
    pub agent_id: String,
    pub channel: Channel,
    pub recipient: Recipient,
    pub category: Category,
    pub content: Content,
    pub send_at: Option<DateTime<Utc>>,
    pub timezone: Option<chrono_tz::Tz>,
    pub campaign: CampaignRef,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The publisher's id for the person, so that the per-recipient cap
    /// counts their email, phone and WhatsApp as one person.
    pub contact_id: Option<String>,
    /// What a marketing job over the agent's per-recipient cap does.
    pub cap: CapMode,
    /// Channels to try next when this one cannot deliver
    /// ([`super::fallback`]): entries of channel and content, in order.
    pub fallback: Vec<serde_json::Map<String, serde_json::Value>>,
    /// The job this one falls back from.
    pub parent_id: Option<Uuid>,
}

/// A marketing job over the agent's per-recipient frequency cap
/// (`agents.limits.per_recipient`) waits for the window to allow it
/// (`defer`, the default) or ends `capped` (`drop`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CapMode {
    #[default]
    Defer,
    Drop,
}

impl CapMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CapMode::Defer => "defer",
            CapMode::Drop => "drop",
        }
    }
}

/// A job that cannot be processed, with what we could still read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub id: Option<Uuid>,
    pub agent_id: Option<String>,
    pub channel: Option<Channel>,
    /// Human-readable, safe to log and to put in the dead-letter header: it
    /// never contains a full recipient address.
    pub reason: String,
}

/// The wire format. Every field is optional here so that a missing field is
/// reported by name instead of as a serde error in the middle of a sentence.
/// Unknown fields are ignored, as DESIGN.md promises publishers.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct SendJobV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_urls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<serde_json::Value>,
}

impl SendJob {
    /// Parses and validates a job body exactly as it arrived from the queue.
    pub fn parse(body: &[u8]) -> Result<SendJob, Rejection> {
        if body.len() > MAX_JOB_BYTES {
            return Err(Rejection {
                id: None,
                agent_id: None,
                channel: None,
                reason: format!(
                    "body is {} bytes; a job may be at most {MAX_JOB_BYTES}",
                    body.len()
                ),
            });
        }
        // Straight into the wire struct: every job takes this path, and it
        // skips building a whole-body `Value` first. Only an object goes
        // this way (serde would also fill a struct from an array, by
        // position); a body the struct refuses (not JSON, a repeated key) is
        // read again below to say why, or to accept what a `Value` accepts.
        let is_object = body.trim_ascii_start().first() == Some(&b'{');
        match is_object.then(|| serde_json::from_slice::<SendJobV1>(body)) {
            Some(Ok(wire)) => wire.validate(),
            _ => Self::parse_via_value(body),
        }
    }

    /// The slow path of [`Self::parse`], which also words the rejections.
    fn parse_via_value(body: &[u8]) -> Result<SendJob, Rejection> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| Rejection {
            id: None,
            agent_id: None,
            channel: None,
            reason: format!("body is not valid JSON: {e}"),
        })?;
        if !value.is_object() {
            return Err(Rejection {
                id: None,
                agent_id: None,
                channel: None,
                reason: "body is not a JSON object".into(),
            });
        }
        // Cannot fail: every field is an optional `Value`.
        let wire: SendJobV1 = serde_json::from_value(value).map_err(|e| Rejection {
            id: None,
            agent_id: None,
            channel: None,
            reason: format!("body does not match the v1 job schema: {e}"),
        })?;
        wire.validate()
    }

    /// Serialises back to the v1 wire format (for `scheduled_jobs`, replays
    /// and the message row). `parse(to_wire())` gives the same job back.
    pub fn to_wire(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "agent_id": self.agent_id,
            "channel": self.channel.as_str(),
            "to": self.recipient.as_str(),
            "category": self.category.as_str(),
        });
        let obj = v.as_object_mut().expect("literal object");
        let mut put = |k: &str, val: Option<serde_json::Value>| {
            if let Some(val) = val {
                obj.insert(k.to_string(), val);
            }
        };
        put("subject", self.content.subject.clone().map(Into::into));
        put("text", self.content.text.clone().map(Into::into));
        put("html", self.content.html.clone().map(Into::into));
        put(
            "reply_to",
            self.content.reply_to.as_ref().map(|r| r.as_str().into()),
        );
        if !self.content.media_urls.is_empty() {
            put("media_urls", Some(self.content.media_urls.clone().into()));
        }
        put("template", self.content.template.clone());
        put("send_at", self.send_at.map(|t| t.to_rfc3339().into()));
        put("timezone", self.timezone.map(|t| t.name().into()));
        put(
            "campaign_id",
            self.campaign.campaign_id.clone().map(Into::into),
        );
        put(
            "sequence_id",
            self.campaign.sequence_id.clone().map(Into::into),
        );
        put("step", self.campaign.step.map(Into::into));
        if !self.metadata.is_empty() {
            put("metadata", Some(self.metadata.clone().into()));
        }
        put("contact_id", self.contact_id.clone().map(Into::into));
        if self.cap != CapMode::default() {
            put("cap", Some(self.cap.as_str().into()));
        }
        if !self.fallback.is_empty() {
            put("fallback", Some(self.fallback.clone().into()));
        }
        put("parent_id", self.parent_id.map(|p| p.to_string().into()));
        v
    }
}

impl SendJobV1 {
    fn validate(self) -> Result<SendJob, Rejection> {
        // Read what identifies the job first, so that later failures can be
        // recorded against it.
        let id = match &self.id {
            None => None,
            Some(v) => v.as_str().and_then(|s| Uuid::parse_str(s).ok()),
        };
        let agent_id = self
            .agent_id
            .as_ref()
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_AGENT_ID_BYTES)
            .map(str::to_string);
        let channel = self
            .channel
            .as_ref()
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Channel>().ok());
        let reject = |reason: String| Rejection {
            id,
            agent_id: agent_id.clone(),
            channel,
            reason,
        };

        let id = match (&self.id, id) {
            (None, _) => return Err(reject("missing required field `id`".into())),
            (Some(_), None) => return Err(reject("field `id` must be a UUID string".into())),
            (_, Some(id)) => id,
        };
        let agent_id = match (&self.agent_id, &agent_id) {
            (None, _) => return Err(reject("missing required field `agent_id`".into())),
            (Some(_), None) => {
                return Err(reject(format!(
                    "field `agent_id` must be a non-empty string of at most {MAX_AGENT_ID_BYTES} bytes"
                )));
            }
            (_, Some(a)) => a.clone(),
        };
        let channel = match (&self.channel, channel) {
            (None, _) => return Err(reject("missing required field `channel`".into())),
            (Some(v), None) => {
                return Err(reject(format!(
                    "field `channel` must be one of email, sms, whatsapp, voice (got {})",
                    shown(v)
                )));
            }
            (_, Some(c)) => c,
        };
        let to = match &self.to {
            None => return Err(reject("missing required field `to`".into())),
            Some(v) => v
                .as_str()
                .ok_or_else(|| reject("field `to` must be a string".into()))?,
        };
        let recipient =
            Recipient::parse(channel, to).map_err(|e| reject(format!("field `to`: {e}")))?;

        let category = match &self.category {
            None | Some(serde_json::Value::Null) => Category::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                reject(format!(
                    "field `category` must be transactional or marketing (got {})",
                    shown(v)
                ))
            })?,
        };
        let text_field =
            |name: &str, v: &Option<serde_json::Value>| -> Result<Option<String>, Rejection> {
                match v {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::String(s)) if s.contains('\0') => {
                        Err(reject(format!("field `{name}` contains a NUL character")))
                    }
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(reject(format!("field `{name}` must be a string"))),
                }
            };
        // A field that becomes a mail header or a column: one line, bounded.
        let short_field =
            |name: &str, v: &Option<serde_json::Value>| -> Result<Option<String>, Rejection> {
                let s = text_field(name, v)?;
                if let Some(s) = &s {
                    if s.chars().any(char::is_control) {
                        return Err(reject(format!(
                            "field `{name}` contains a control character (a line break, say)"
                        )));
                    }
                    if s.chars().count() > MAX_SHORT_FIELD_CHARS {
                        return Err(reject(format!(
                            "field `{name}` is longer than {MAX_SHORT_FIELD_CHARS} characters"
                        )));
                    }
                }
                Ok(s)
            };
        let subject = short_field("subject", &self.subject)?;
        let text = text_field("text", &self.text)?;
        let html = text_field("html", &self.html)?;
        let reply_to = text_field("reply_to", &self.reply_to)?
            .map(|r| super::EmailAddress::parse(&r))
            .transpose()
            .map_err(|e| reject(format!("field `reply_to`: {e}")))?;
        let media_urls = match &self.media_urls {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<String>>(v.clone())
                .map_err(|_| reject("field `media_urls` must be an array of strings".into()))?,
        };
        for u in &media_urls {
            let parsed = url::Url::parse(u)
                .map_err(|_| reject(format!("field `media_urls`: `{}` is not a URL", shown(u))))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(reject(format!(
                    "field `media_urls`: `{}` must be an http(s) URL",
                    shown(u)
                )));
            }
        }
        let template = match &self.template {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) if nul_in(v) => {
                return Err(reject("field `template` contains a NUL character".into()));
            }
            Some(v @ serde_json::Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(reject("field `template` must be an object".into())),
        };
        let send_at = text_field("send_at", &self.send_at)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        reject(format!(
                            "field `send_at`: `{}` is not an RFC 3339 time",
                            shown(&s)
                        ))
                    })
            })
            .transpose()?;
        let timezone = text_field("timezone", &self.timezone)?
            .map(|s| {
                s.parse::<chrono_tz::Tz>().map_err(|_| {
                    reject(format!(
                        "field `timezone`: `{}` is not an IANA time zone",
                        shown(&s)
                    ))
                })
            })
            .transpose()?;
        let campaign = CampaignRef {
            campaign_id: short_field("campaign_id", &self.campaign_id)?,
            sequence_id: short_field("sequence_id", &self.sequence_id)?,
            step: match &self.step {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(
                    v.as_i64()
                        .ok_or_else(|| reject("field `step` must be an integer".into()))?,
                ),
            },
        };
        let metadata = match &self.metadata {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(v @ serde_json::Value::Object(_)) if nul_in(v) => {
                return Err(reject("field `metadata` contains a NUL character".into()));
            }
            Some(serde_json::Value::Object(m)) => m.clone(),
            Some(_) => return Err(reject("field `metadata` must be an object".into())),
        };
        let contact_id = short_field("contact_id", &self.contact_id)?;
        let cap = match text_field("cap", &self.cap)?.as_deref() {
            None | Some("defer") => CapMode::Defer,
            Some("drop") => CapMode::Drop,
            Some(other) => {
                return Err(reject(format!(
                    "field `cap` must be \"defer\" or \"drop\", not `{}`",
                    shown(&other)
                )));
            }
        };
        let fallback = fallback_entries(&self.fallback).map_err(reject)?;
        let parent_id = text_field("parent_id", &self.parent_id)?
            .map(|p| {
                Uuid::parse_str(&p)
                    .map_err(|_| reject("field `parent_id` must be a UUID string".into()))
            })
            .transpose()?;

        let content = Content {
            subject,
            text,
            html,
            reply_to,
            media_urls,
            template,
        };
        check_content(channel, &content).map_err(reject)?;

        let job = SendJob {
            id,
            agent_id,
            channel,
            recipient,
            category,
            content,
            send_at,
            timezone,
            campaign,
            metadata,
            contact_id,
            cap,
            fallback,
            parent_id,
        };
        // Each entry must make a job that could be sent: a fallback found
        // broken only after its parent failed would lose the message.
        if let Some(Err(reason)) = job.fallback_job() {
            return Err(reject(format!("field `fallback`: {reason}")));
        }
        Ok(job)
    }
}

/// Reads `fallback`: an array of objects naming a channel and, optionally,
/// the address and content for it.
fn fallback_entries(
    v: &Option<serde_json::Value>,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    use super::fallback::{ENTRY_FIELDS, MAX_FALLBACK_STEPS};
    let entries = match v {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a,
        Some(_) => return Err("field `fallback` must be an array of {channel, …}".into()),
    };
    if entries.len() > MAX_FALLBACK_STEPS {
        return Err(format!(
            "field `fallback` may name at most {MAX_FALLBACK_STEPS} channels"
        ));
    }
    entries
        .iter()
        .map(|e| {
            let obj = e
                .as_object()
                .ok_or("field `fallback`: each entry must be an object")?;
            if !obj.contains_key("channel") {
                return Err("field `fallback`: each entry needs a `channel`".to_string());
            }
            if let Some(k) = obj.keys().find(|k| !ENTRY_FIELDS.contains(&k.as_str())) {
                return Err(format!(
                    "field `fallback`: an entry may not set `{}` (only {})",
                    shown(k),
                    ENTRY_FIELDS.join(", ")
                ));
            }
            Ok(obj.clone())
        })
        .collect()
}

/// Each channel needs something to send; a job without it can never succeed,
/// so it is rejected up front instead of failing at the provider.
fn check_content(channel: Channel, c: &Content) -> Result<(), String> {
    let has = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
    match channel {
        Channel::Email => {
            if c.template.is_some() {
                return Ok(());
            }
            if !has(&c.subject) {
                return Err("an email needs a `subject` (or a `template`)".into());
            }
            if !has(&c.text) && !has(&c.html) {
                return Err("an email needs `text` or `html` (or a `template`)".into());
            }
        }
        Channel::Sms => {
            if !has(&c.text) && c.media_urls.is_empty() {
                return Err("an sms needs `text` or `media_urls`".into());
            }
        }
        Channel::Whatsapp => {
            if !has(&c.text) && c.template.is_none() && c.media_urls.is_empty() {
                return Err("a whatsapp message needs `text`, `media_urls` or a `template`".into());
            }
        }
        // A voice call's script lives in the provider's assistant.
        Channel::Voice => {}
    }
    Ok(())
}

/// Flattens metadata into string pairs, the shape providers' tags and custom
/// args take.
pub fn metadata_pairs(
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, String> {
    metadata
        .iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<SendJob, Rejection> {
        SendJob::parse(v.to_string().as_bytes())
    }

    const ID: &str = "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c";

    #[test]
    fn a_nul_anywhere_postgres_would_refuse_is_rejected_with_the_job_id() {
        let base = serde_json::json!({
            "id": ID, "agent_id": "a", "channel": "sms", "to": "+14155550123", "text": "hi"
        });
        for (field, value) in [
            ("text", serde_json::json!("bad\u{0}text")),
            ("campaign_id", serde_json::json!("c\u{0}")),
            ("metadata", serde_json::json!({"k": ["x\u{0}"]})),
            ("metadata", serde_json::json!({"k\u{0}": 1})),
        ] {
            let mut job = base.clone();
            job[field] = value;
            let r = parse(job).unwrap_err();
            assert!(r.reason.contains("NUL"), "{field}: {}", r.reason);
            assert_eq!(r.id, Some(Uuid::parse_str(ID).unwrap()));
        }
    }

    #[test]
    fn a_huge_bad_value_is_not_echoed_in_the_reason() {
        let huge = "x".repeat(140_000);
        for field in ["channel", "to", "send_at", "timezone", "category"] {
            let mut job = serde_json::json!({
                "id": ID, "agent_id": "a", "channel": "sms", "to": "+14155550123", "text": "hi"
            });
            job[field] = serde_json::json!(huge);
            let r = parse(job).unwrap_err();
            assert!(r.reason.len() < 300, "{field}: {} bytes", r.reason.len());
        }
        let body = format!(
            r#"{{"id":"{ID}","agent_id":"a","channel":"sms","to":"+14155550123","text":"{}"}}"#,
            "y".repeat(MAX_JOB_BYTES)
        );
        let r = SendJob::parse(body.as_bytes()).unwrap_err();
        assert!(r.reason.contains("at most"), "{}", r.reason);
    }

    #[test]
    fn a_subject_cannot_carry_a_header_line() {
        let r = parse(serde_json::json!({
            "id": ID, "agent_id": "a", "channel": "email", "to": "bob@example.com",
            "subject": "Hi\r\nBcc: eve@example.com", "text": "x"
        }))
        .unwrap_err();
        assert!(r.reason.contains("control character"), "{}", r.reason);
    }

    #[test]
    fn a_display_name_recipient_is_stored_as_the_bare_address() {
        let job = parse(serde_json::json!({
            "id": ID, "agent_id": "a", "channel": "email", "to": "Bob <Bob@Example.com>",
            "subject": "s", "text": "x"
        }))
        .unwrap();
        assert_eq!(job.recipient.as_str(), "bob@example.com");
    }

    #[test]
    fn a_full_sms_job_parses_and_round_trips() {
        let job = parse(serde_json::json!({
            "id": ID, "agent_id": "agent-1", "channel": "sms", "to": "+1 415 555 0123",
            "text": "Open house Saturday", "category": "transactional",
            "send_at": "2026-11-23T10:00:00+01:00", "timezone": "America/New_York",
            "campaign_id": "c1", "sequence_id": "s1", "step": 2,
            "metadata": {"listing": "L-9"}, "unknown_field": true
        }))
        .unwrap();
        assert_eq!(job.recipient.as_str(), "+14155550123");
        assert_eq!(job.category, Category::Transactional);
        assert_eq!(
            job.send_at.unwrap().to_rfc3339(),
            "2026-11-23T09:00:00+00:00"
        );
        assert_eq!(job.campaign.step, Some(2));
        let again = SendJob::parse(job.to_wire().to_string().as_bytes()).unwrap();
        assert_eq!(again, job);
    }

    #[test]
    fn category_defaults_to_marketing() {
        let job = parse(serde_json::json!({
            "id": ID, "agent_id": "a", "channel": "email", "to": "a@b.co",
            "subject": "Hi", "text": "Hello"
        }))
        .unwrap();
        assert_eq!(job.category, Category::Marketing);
    }

    #[test]
    fn an_array_is_not_a_job_even_in_field_order() {
        let r = SendJob::parse(format!(r#"["{ID}", "a", "sms", "+14155550123"]"#).as_bytes())
            .unwrap_err();
        assert_eq!(r.reason, "body is not a JSON object");
    }

    #[test]
    fn a_repeated_key_keeps_the_last_value_as_before() {
        let body = format!(
            r#"{{"id": "{ID}", "agent_id": "a", "agent_id": "b", "channel": "sms", "to": "+14155550123", "text": "x"}}"#
        );
        assert_eq!(SendJob::parse(body.as_bytes()).unwrap().agent_id, "b");
    }

    #[test]
    fn not_json_is_rejected_without_an_id() {
        let r = SendJob::parse(b"{not json").unwrap_err();
        assert_eq!(r.id, None);
        assert!(r.reason.contains("not valid JSON"), "{}", r.reason);
    }

    #[test]
    fn a_missing_field_is_named_and_the_id_kept() {
        let r =
            parse(serde_json::json!({"id": ID, "agent_id": "a", "channel": "sms"})).unwrap_err();
        assert_eq!(r.reason, "missing required field `to`");
        assert_eq!(r.id, Some(Uuid::parse_str(ID).unwrap()));
        assert_eq!(r.agent_id.as_deref(), Some("a"));
        assert_eq!(r.channel, Some(Channel::Sms));
    }

    #[test]
    fn bad_values_are_rejected_with_reasons() {
        let base = serde_json::json!({"id": ID, "agent_id": "a", "channel": "sms", "to": "+14155550123", "text": "x"});
        let with = |k: &str, v: serde_json::Value| {
            let mut j = base.clone();
            j[k] = v;
            parse(j).unwrap_err().reason
        };
        assert!(with("channel", "fax".into()).contains("must be one of"));
        assert!(with("to", "not-a-phone".into()).contains("field `to`"));
        assert!(with("id", "123".into()).contains("UUID"));
        assert!(with("category", "spam".into()).contains("category"));
        assert!(with("timezone", "Mars/Olympus".into()).contains("IANA"));
        assert!(with("send_at", "tomorrow".into()).contains("RFC 3339"));
        assert!(with("media_urls", serde_json::json!(["ftp://x"])).contains("http"));
        assert!(with("agent_id", "".into()).contains("agent_id"));
    }

    #[test]
    fn an_email_address_on_sms_or_a_phone_on_email_is_rejected() {
        let r = parse(serde_json::json!({"id": ID, "agent_id": "a", "channel": "email", "to": "+14155550123", "subject": "s", "text": "t"})).unwrap_err();
        assert!(r.reason.contains("email address"), "{}", r.reason);
    }

    #[test]
    fn content_is_required_per_channel() {
        let r = parse(serde_json::json!({"id": ID, "agent_id": "a", "channel": "email", "to": "a@b.co", "text": "t"})).unwrap_err();
        assert!(r.reason.contains("subject"));
        let r = parse(
            serde_json::json!({"id": ID, "agent_id": "a", "channel": "sms", "to": "+14155550123"}),
        )
        .unwrap_err();
        assert!(r.reason.contains("sms needs"));
        assert!(parse(serde_json::json!({"id": ID, "agent_id": "a", "channel": "voice", "to": "+14155550123"})).is_ok());
    }
}
