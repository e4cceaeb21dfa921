//! Channel fallback: a job may name the channels to try next when it cannot
//! be delivered on its own (`fallback: [{channel, to?, text?, …}, …]`). The
//! next entry becomes a job of its own, linked to this one by `parent_id`,
//! and goes through every policy check again for its channel.
//!
//! The child's id is derived from the parent's, so a parent whose failure is
//! recorded twice (a redelivery after a crash, a webhook seen twice) still
//! has one child, and the child's claim makes it idempotent like any job.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::SendJob;

/// At most this many entries: a fallback chain is a short list of channels,
/// and each one is validated as a whole job when the parent is parsed.
pub const MAX_FALLBACK_STEPS: usize = 4;

/// Fields an entry may set; the rest of the child (agent, category,
/// campaign, sequence, metadata, time zone, contact) is the parent's.
pub const ENTRY_FIELDS: [&str; 7] = [
    "channel",
    "to",
    "subject",
    "text",
    "html",
    "template",
    "media_urls",
];

/// The entry fields that are content rather than address.
const CONTENT_FIELDS: [&str; 5] = ["subject", "text", "html", "template", "media_urls"];

/// The id of the job that falls back from `parent`.
pub fn child_id(parent: Uuid) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"switchboard fallback of ")
        .chain_update(parent.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl SendJob {
    /// The job to send when this one cannot be delivered on its channel:
    /// `None` when it names no fallback, else the next entry as a job (in
    /// wire form, ready to park and publish) or why that entry is not one.
    pub fn fallback_job(&self) -> Option<Result<SendJob, String>> {
        let (entry, rest) = self.fallback.split_first()?;
        let mut wire = self.to_wire();
        let obj = wire
            .as_object_mut()
            .expect("a job's wire form is an object");
        obj.remove("send_at");
        obj.remove("fallback");
        // The parent's content goes on unless the entry brings its own (an
        // email entry its subject and body): then none of the parent's.
        if entry.keys().any(|k| CONTENT_FIELDS.contains(&k.as_str())) {
            for key in CONTENT_FIELDS {
                obj.remove(key);
            }
        }
        // The same address unless the entry names another (an SMS that
        // falls back to WhatsApp goes to the same number).
        obj.insert("to".into(), self.recipient.as_str().into());
        for (k, v) in entry {
            obj.insert(k.clone(), v.clone());
        }
        obj.insert("id".into(), child_id(self.id).to_string().into());
        obj.insert("parent_id".into(), self.id.to_string().into());
        if !rest.is_empty() {
            obj.insert("fallback".into(), rest.to_vec().into());
        }
        let body = serde_json::to_vec(&wire).expect("a Value serialises");
        Some(SendJob::parse(&body).map_err(|r| r.reason))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<SendJob, String> {
        SendJob::parse(v.to_string().as_bytes()).map_err(|r| r.reason)
    }

    fn sms_with_fallback() -> serde_json::Value {
        json!({"id": "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c", "agent_id": "a",
               "channel": "sms", "to": "+1 415 555 0123", "text": "Open house Saturday",
               "category": "marketing", "campaign_id": "c1", "sequence_id": "s1", "step": 2,
               "send_at": "2026-01-01T00:00:00Z",
               "fallback": [{"channel": "whatsapp"},
                            {"channel": "email", "to": "lead@example.com",
                             "subject": "Open house", "text": "Saturday at 10"}]})
    }

    #[test]
    fn the_next_entry_becomes_a_linked_job_with_the_parents_bookkeeping() {
        let parent = parse(sms_with_fallback()).unwrap();
        let child = parent.fallback_job().unwrap().unwrap();
        assert_eq!(child.id, child_id(parent.id));
        assert_eq!(child.parent_id, Some(parent.id));
        assert_eq!(child.channel.as_str(), "whatsapp");
        assert_eq!(child.recipient.as_str(), "+14155550123");
        assert_eq!(child.content.text.as_deref(), Some("Open house Saturday"));
        assert_eq!(child.campaign, parent.campaign);
        assert_eq!(child.category, parent.category);
        assert_eq!(
            child.send_at, None,
            "a fallback goes when the parent failed"
        );
        let grandchild = child.fallback_job().unwrap().unwrap();
        assert_eq!(grandchild.parent_id, Some(child.id));
        assert_eq!(grandchild.channel.as_str(), "email");
        assert_eq!(grandchild.recipient.as_str(), "lead@example.com");
        assert_eq!(grandchild.content.subject.as_deref(), Some("Open house"));
        assert!(grandchild.fallback_job().is_none());
    }

    #[test]
    fn the_child_id_is_stable_and_differs_from_the_parent() {
        let parent = Uuid::parse_str("6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c").unwrap();
        assert_eq!(child_id(parent), child_id(parent));
        assert_ne!(child_id(parent), parent);
        assert_ne!(child_id(child_id(parent)), child_id(parent));
    }

    #[test]
    fn a_fallback_that_could_never_be_sent_rejects_the_job_up_front() {
        let mut v = sms_with_fallback();
        v["fallback"] = json!([{"channel": "email"}]);
        let e = parse(v).unwrap_err();
        assert!(e.contains("field `fallback`"), "{e}");
        let mut v = sms_with_fallback();
        v["fallback"] = json!([{"channel": "fax"}]);
        assert!(parse(v).unwrap_err().contains("field `fallback`"));
        let mut v = sms_with_fallback();
        v["fallback"] = json!([{"channel": "whatsapp", "category": "transactional"}]);
        let e = parse(v).unwrap_err();
        assert!(e.contains("`category`"), "{e}");
        let mut v = sms_with_fallback();
        v["fallback"] = serde_json::Value::Array(vec![json!({"channel": "sms"}); 5]);
        assert!(parse(v).unwrap_err().contains("at most 4"));
        let mut v = sms_with_fallback();
        v["fallback"] = json!({"channel": "sms"});
        assert!(parse(v).unwrap_err().contains("array"));
    }
}
