//! WhatsApp's 24-hour rule: a business may send free-form messages only
//! within 24 hours of the person's last message to it; outside that window
//! only an approved template may go (Meta refuses anything else with error
//! 131047, Twilio with 63016).
//!
//! Decided before any provider call, from the last inbound time the
//! webhooks recorded (`store::whatsapp_windows`) and the worker's clock:
//!
//! * a job whose `template` is a template message is always allowed;
//! * a free-form job (`text`) inside the window goes as it is;
//! * outside it, a job whose `template` carries `"fallback": true` is sent
//!   as that template instead (its `text` and `media_urls` dropped);
//! * otherwise the job is refused with a clear reason.
//!
//! The fallback field is compatible with version 1 of the job: `template`
//! was already a free object passed to the adapter, and a publisher that
//! does not know the rule never sets `fallback`. Pure: no I/O here.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::domain::{Channel, SendJob};

/// How long a person's message keeps the window open.
pub const WINDOW: Duration = Duration::hours(24);

/// What to do with a WhatsApp job.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send the job as it is.
    AsIs,
    /// Send this job instead: the original with its fallback template as
    /// the message.
    Fallback(Box<SendJob>),
    /// Do not send: `failed` with this reason.
    Refuse(String),
}

/// Whether a job's `template` is only the fallback for outside the window.
pub fn is_fallback(t: &Value) -> bool {
    t.get("fallback").and_then(Value::as_bool) == Some(true)
}

/// Whether a job needs the window: a WhatsApp message that is not a
/// template message. The worker reads the last inbound time only then.
pub fn needs_window(job: &SendJob) -> bool {
    job.channel == Channel::Whatsapp
        && job.content.template.as_ref().is_none_or(is_fallback)
        && (job.content.text.is_some() || !job.content.media_urls.is_empty())
}

pub fn decide(job: &SendJob, last_inbound: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Decision {
    if !needs_window(job) {
        return Decision::AsIs;
    }
    // A message stamped in the future (clock skew) counts as now.
    if last_inbound.is_some_and(|at| now - at.min(now) < WINDOW) {
        return Decision::AsIs;
    }
    if let Some(t) = job.content.template.as_ref().filter(|t| is_fallback(t)) {
        let mut template = t.clone();
        if let Some(o) = template.as_object_mut() {
            o.remove("fallback");
        }
        let mut fallback = job.clone();
        fallback.content.text = None;
        fallback.content.media_urls.clear();
        fallback.content.template = Some(template);
        return Decision::Fallback(Box::new(fallback));
    }
    let since = match last_inbound {
        Some(at) => format!("the recipient last wrote at {}", at.to_rfc3339()),
        None => "the recipient has never written to this number".to_string(),
    };
    Decision::Refuse(format!(
        "outside_whatsapp_window: {since}; free-form WhatsApp messages may only be sent within \
         24 hours of the recipient's last message. Send a template, or name one with \
         `template.fallback: true` to be used outside the window"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(extra: Value) -> SendJob {
        let mut v = json!({"id": "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c", "agent_id": "a",
            "channel": "whatsapp", "to": "+14155550123"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        SendJob::parse(v.to_string().as_bytes()).unwrap()
    }

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + h * 3600, 0).unwrap()
    }

    #[test]
    fn free_form_goes_only_inside_the_window() {
        let j = job(json!({"text": "hi"}));
        assert_eq!(decide(&j, Some(at(0)), at(23)), Decision::AsIs);
        assert!(matches!(
            decide(&j, Some(at(0)), at(24)),
            Decision::Refuse(_)
        ));
        match decide(&j, None, at(0)) {
            Decision::Refuse(r) => assert!(r.starts_with("outside_whatsapp_window: ")),
            other => panic!("{other:?}"),
        }
        // A future stamp does not underflow into "open forever".
        assert_eq!(decide(&j, Some(at(5)), at(0)), Decision::AsIs);
    }

    #[test]
    fn templates_always_go_and_fallbacks_replace_text_outside() {
        let t = job(json!({"template": {"name": "x", "language": "en"}}));
        assert_eq!(decide(&t, None, at(0)), Decision::AsIs);
        let f = job(json!({"text": "hi", "media_urls": ["https://m.test/a.jpg"],
            "template": {"name": "x", "language": "en", "fallback": true}}));
        assert_eq!(decide(&f, Some(at(0)), at(1)), Decision::AsIs);
        match decide(&f, Some(at(0)), at(30)) {
            Decision::Fallback(j) => {
                assert_eq!(j.content.text, None);
                assert!(j.content.media_urls.is_empty());
                assert_eq!(
                    j.content.template,
                    Some(json!({"name": "x", "language": "en"}))
                );
                assert_eq!(j.id, f.id);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_channels_are_not_concerned() {
        let mut j = job(json!({"text": "hi"}));
        j.channel = Channel::Sms;
        assert_eq!(decide(&j, None, at(0)), Decision::AsIs);
    }
}
