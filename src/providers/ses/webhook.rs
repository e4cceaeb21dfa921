//! SES events as they arrive in an SNS notification's `Message`: the JSON
//! of SES event publishing (`eventType`, through a configuration set) or of
//! the older identity notifications (`notificationType`), both keyed by
//! `mail.messageId`, the `MessageId` that `SendEmail` returned and we
//! stored.
//!
//! Delivery → `delivered`; a `Permanent` bounce → `bounced` and a
//! `hard_bounce` opt-out of its bounced recipients; a `Transient` or
//! `Undetermined` bounce → `soft_bounced`, an event only (SES keeps trying
//! or the mailbox may come back); Complaint → `complained` and a
//! `complaint` opt-out; Open, Click → `opened`, `clicked`; DeliveryDelay →
//! `delivery_delayed`; Reject and Rendering Failure (SES never tried to
//! deliver) → `failed`. `Send` and `Subscription` say nothing we record.
//!
//! The signature that makes any of this trustworthy is checked in
//! [`super::sns`] before this parser sees it.

use serde_json::{Value, json};

/// What one SES event means for switchboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// `mail.messageId`: our provider message id.
    pub message_id: String,
    /// Our event name.
    pub event: &'static str,
    /// The opt-out the event implies, and for whom.
    pub opt_out: Option<(&'static str, Vec<String>)>,
    /// Recorded as the message's `last_error` when it moves.
    pub error: Option<String>,
    pub detail: Value,
}

fn addresses(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("emailAddress").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Reads one SES event. `None` for JSON that is not an SES event or an
/// event we do not record.
pub fn parse(message: &str) -> Option<Notice> {
    let v: Value = serde_json::from_str(message).ok()?;
    let kind = v
        .get("eventType")
        .or_else(|| v.get("notificationType"))
        .and_then(Value::as_str)?;
    let message_id = v.get("mail")?.get("messageId")?.as_str()?.to_string();
    let text = |section: &str, key: &str| {
        v.get(section)
            .and_then(|s| s.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut detail = json!({"event_type": kind});
    let (event, opt_out, error) = match kind {
        "Delivery" => {
            detail["smtp_response"] = text("delivery", "smtpResponse").into();
            ("delivered", None, None)
        }
        "Bounce" => {
            let bounce_type = text("bounce", "bounceType").unwrap_or_default();
            let sub_type = text("bounce", "bounceSubType").unwrap_or_default();
            let recipients = v.get("bounce").and_then(|b| b.get("bouncedRecipients"));
            let diagnostic = recipients
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .and_then(|r| r.get("diagnosticCode"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            detail["bounce_type"] = bounce_type.clone().into();
            detail["bounce_sub_type"] = sub_type.clone().into();
            detail["diagnostic_code"] = diagnostic.clone().into();
            if bounce_type == "Permanent" {
                let error = format!("ses bounce Permanent/{sub_type}: {diagnostic}")
                    .trim_end_matches([':', ' '])
                    .to_string();
                (
                    "bounced",
                    Some(("hard_bounce", addresses(recipients))),
                    Some(error),
                )
            } else {
                ("soft_bounced", None, None)
            }
        }
        "Complaint" => {
            let complaint = v.get("complaint");
            detail["feedback_type"] = text("complaint", "complaintFeedbackType").into();
            (
                "complained",
                Some((
                    "complaint",
                    addresses(complaint.and_then(|c| c.get("complainedRecipients"))),
                )),
                None,
            )
        }
        "Open" => ("opened", None, None),
        "Click" => {
            detail["link"] = text("click", "link").into();
            ("clicked", None, None)
        }
        "DeliveryDelay" => {
            detail["delay_type"] = text("deliveryDelay", "delayType").into();
            ("delivery_delayed", None, None)
        }
        "Reject" => {
            let reason = text("reject", "reason").unwrap_or_default();
            let error = format!("ses rejected the message: {reason}");
            ("failed", None, Some(error))
        }
        "Rendering Failure" => {
            let reason = text("failure", "errorMessage").unwrap_or_default();
            (
                "failed",
                None,
                Some(format!("ses rendering failure: {reason}")),
            )
        }
        _ => return None,
    };
    Some(Notice {
        message_id,
        event,
        opt_out,
        error,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind_key: &str, kind: &str, section: &str, body: Value) -> String {
        let mut v = json!({
            kind_key: kind,
            "mail": {"timestamp": "2026-12-06T03:00:00.000Z", "messageId": "0102-abc-000000",
                     "source": "jane@realty.test", "destination": ["buyer@example.com"]}
        });
        v[section] = body;
        v.to_string()
    }

    #[test]
    fn ses_events_map_to_outcomes_and_opt_outs() {
        let hard = parse(&event("eventType", "Bounce", "bounce", json!({
            "bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "buyer@example.com", "action": "failed",
                                   "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]
        })))
        .unwrap();
        assert_eq!(hard.event, "bounced");
        assert_eq!(hard.message_id, "0102-abc-000000");
        assert_eq!(
            hard.opt_out,
            Some(("hard_bounce", vec!["buyer@example.com".to_string()]))
        );
        assert_eq!(
            hard.error.as_deref(),
            Some("ses bounce Permanent/General: smtp; 550 5.1.1 user unknown")
        );
        let soft = parse(&event(
            "eventType",
            "Bounce",
            "bounce",
            json!({
                "bounceType": "Transient", "bounceSubType": "MailboxFull",
                "bouncedRecipients": [{"emailAddress": "buyer@example.com"}]
            }),
        ))
        .unwrap();
        assert_eq!((soft.event, soft.opt_out), ("soft_bounced", None));
        // The older identity notifications name the type `notificationType`.
        let complaint = parse(&event(
            "notificationType",
            "Complaint",
            "complaint",
            json!({
                "complainedRecipients": [{"emailAddress": "buyer@example.com"}],
                "complaintFeedbackType": "abuse"
            }),
        ))
        .unwrap();
        assert_eq!(complaint.event, "complained");
        assert_eq!(
            complaint.opt_out,
            Some(("complaint", vec!["buyer@example.com".to_string()]))
        );
        for (kind, section, ours) in [
            ("Delivery", "delivery", "delivered"),
            ("Open", "open", "opened"),
            ("Click", "click", "clicked"),
            ("DeliveryDelay", "deliveryDelay", "delivery_delayed"),
            ("Reject", "reject", "failed"),
        ] {
            let n = parse(&event("eventType", kind, section, json!({}))).unwrap();
            assert_eq!((n.event, n.opt_out), (ours, None), "{kind}");
        }
        assert_eq!(parse(&event("eventType", "Send", "send", json!({}))), None);
        assert_eq!(parse("not json"), None);
        assert_eq!(parse(r#"{"eventType": "Delivery"}"#), None);
    }
}
