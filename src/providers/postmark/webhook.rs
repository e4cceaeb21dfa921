//! Postmark's webhooks are not signed (`../shared/providers.md` §4): the
//! webhook is configured with HTTP Basic auth, and the password must be the
//! integration's `webhook_password` (compared in constant time; any user
//! name). One JSON object per request, by `RecordType`.
//!
//! Postmark sends no delivery id and no timestamp header, so each event is
//! identified by what makes it unique (a bounce's `ID`, a delivery's
//! message and time): a replay of a captured request is stored once.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Whether `authorization` carries `password` (Basic, any user name).
pub fn authorized(password: &str, authorization: &str) -> bool {
    if password.is_empty() {
        return false;
    }
    let Some(encoded) = authorization.trim().strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = BASE64.decode(encoded.trim()) else {
        return false;
    };
    let Some(given) = decoded.splitn(2, |b| *b == b':').nth(1) else {
        return false;
    };
    // Equal-length digests compared without an early exit.
    let (a, b) = (Sha256::digest(given), Sha256::digest(password.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// What one event means for switchboard (shared by the email providers).
pub use crate::providers::email::EmailNotice as Notice;

pub fn parse(body: &[u8]) -> Option<Notice> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str);
    let message_id = text("MessageID")?.to_string();
    let record = text("RecordType")?;
    let id = |k: &str| match v.get(k) {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (event, opt_out, unique, recipient) = match record {
        "Delivery" => (
            "delivered",
            None,
            text("DeliveredAt").map(str::to_string),
            text("Recipient"),
        ),
        "Bounce" => {
            let hard = text("Type") == Some("HardBounce");
            (
                if hard { "bounced" } else { "soft_bounced" },
                hard.then_some("hard_bounce"),
                id("ID"),
                text("Email"),
            )
        }
        "SpamComplaint" => ("complained", Some("complaint"), id("ID"), text("Email")),
        "Open" => (
            "opened",
            None,
            text("ReceivedAt").map(str::to_string),
            text("Recipient"),
        ),
        "Click" => (
            "clicked",
            None,
            text("ReceivedAt").map(str::to_string),
            text("Recipient"),
        ),
        "SubscriptionChange" if v.get("SuppressSending") == Some(&Value::Bool(true)) => (
            "unsubscribed",
            Some(match text("SuppressionReason") {
                Some("HardBounce") => "hard_bounce",
                Some("SpamComplaint") => "complaint",
                _ => "unsubscribe",
            }),
            text("ChangedAt").map(str::to_string),
            text("Recipient"),
        ),
        _ => return None,
    };
    let delivery_id = format!("{record}:{message_id}:{}", unique.unwrap_or_default());
    let error = (event == "bounced").then(|| {
        format!(
            "postmark {}: {}",
            text("Type").unwrap_or("bounce"),
            text("Description").unwrap_or("")
        )
        .trim_end_matches([':', ' '])
        .to_string()
    });
    let mut detail = json!({"record_type": record});
    for key in [
        "Type",
        "TypeCode",
        "Description",
        "OriginalLink",
        "SuppressionReason",
    ] {
        if let Some(x) = v.get(key) {
            detail[key] = x.clone();
        }
    }
    Some(Notice {
        event_id: delivery_id,
        message_id,
        event,
        recipient: recipient.map(str::to_string),
        opt_out,
        error,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_password_is_authorized() {
        let auth =
            |user: &str, pass: &str| format!("Basic {}", BASE64.encode(format!("{user}:{pass}")));
        assert!(authorized("s3cret-pw", &auth("postmark", "s3cret-pw")));
        assert!(authorized("s3cret-pw", &auth("", "s3cret-pw")));
        assert!(!authorized("s3cret-pw", &auth("postmark", "s3cret-px")));
        assert!(!authorized("s3cret-pw", ""));
        assert!(!authorized("s3cret-pw", "Bearer s3cret-pw"));
        assert!(!authorized("", &auth("postmark", "")));
    }

    #[test]
    fn record_types_map_to_outcomes_and_opt_outs() {
        let one = |v: Value| parse(v.to_string().as_bytes()).map(|n| (n.event, n.opt_out));
        let m = "883953f4-6105-42a2-a16a-77a8eac79483";
        assert_eq!(
            one(
                json!({"RecordType": "Delivery", "MessageID": m, "DeliveredAt": "2026-11-25T10:00:00Z"})
            ),
            Some(("delivered", None))
        );
        assert_eq!(
            one(
                json!({"RecordType": "Bounce", "ID": 4323372036854775807u64, "Type": "HardBounce", "MessageID": m, "Email": "a@b.co"})
            ),
            Some(("bounced", Some("hard_bounce")))
        );
        assert_eq!(
            one(json!({"RecordType": "Bounce", "ID": 1, "Type": "SoftBounce", "MessageID": m})),
            Some(("soft_bounced", None))
        );
        assert_eq!(
            one(json!({"RecordType": "SpamComplaint", "ID": 2, "MessageID": m})),
            Some(("complained", Some("complaint")))
        );
        assert_eq!(
            one(json!({"RecordType": "Open", "MessageID": m})),
            Some(("opened", None))
        );
        assert_eq!(
            one(json!({"RecordType": "Click", "MessageID": m})),
            Some(("clicked", None))
        );
        assert_eq!(
            one(
                json!({"RecordType": "SubscriptionChange", "MessageID": m, "SuppressSending": true, "SuppressionReason": "ManualSuppression"})
            ),
            Some(("unsubscribed", Some("unsubscribe")))
        );
        assert_eq!(
            one(
                json!({"RecordType": "SubscriptionChange", "MessageID": m, "SuppressSending": false})
            ),
            None
        );
        assert_eq!(one(json!({"RecordType": "Delivery"})), None);
    }
}
