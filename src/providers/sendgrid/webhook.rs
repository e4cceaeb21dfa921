//! SendGrid's signed Event Webhook (`../shared/providers.md` §2, §10, and
//! the official SDKs' `EventWebhook.verify_signature`): the body is a JSON
//! array of events; `X-Twilio-Email-Event-Webhook-Signature` is the base64
//! of a DER ECDSA P-256 / SHA-256 signature over the bytes of
//! `X-Twilio-Email-Event-Webhook-Timestamp` followed by the raw body; the
//! key is the account's verification key, base64 DER SubjectPublicKeyInfo.
//!
//! Verification runs on the raw bytes (re-serialised JSON would not match),
//! before anything in the body is read. A timestamp further than
//! [`TOLERANCE_SECS`] from now is refused as a replay; a replay sooner is
//! recognised by its events' `sg_event_id` in the inbox.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::{Value, json};

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// SendGrid documents no tolerance. Its timestamp is set when a request is
/// sent (the SDK's example is signed ten seconds after its event), so ten
/// minutes allows for clock skew and slow delivery and nothing older.
pub const TOLERANCE_SECS: i64 = 10 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Headers,
    /// Ours, not the sender's: the configured key is not a P-256 key.
    Key,
    Signature,
    Stale,
}

/// The verification key as the dashboard shows it (base64 DER), or the same
/// wrapped in `-----BEGIN PUBLIC KEY-----` lines.
pub fn public_key(configured: &str) -> Result<VerifyingKey, Invalid> {
    let b64: String = configured
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(str::split_whitespace)
        .collect();
    let der = BASE64.decode(b64).map_err(|_| Invalid::Key)?;
    VerifyingKey::from_public_key_der(&der).map_err(|_| Invalid::Key)
}

/// Checks one request against the integration's verification key.
pub fn verify(
    key: &str,
    signature: &str,
    timestamp: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Invalid> {
    let key = public_key(key)?;
    if signature.is_empty() || timestamp.is_empty() {
        return Err(Invalid::Headers);
    }
    let der = BASE64
        .decode(signature.trim())
        .map_err(|_| Invalid::Signature)?;
    let signature = Signature::from_der(&der).map_err(|_| Invalid::Signature)?;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify(&signed, &signature)
        .map_err(|_| Invalid::Signature)?;
    // Signed by the key's holder, and still only compared, with checked
    // arithmetic: a signed value is not a sane one.
    let ts: i64 = timestamp.trim().parse().map_err(|_| Invalid::Headers)?;
    let fresh = now
        .timestamp()
        .checked_sub(ts)
        .and_then(i64::checked_abs)
        .is_some_and(|age| age <= TOLERANCE_SECS);
    if fresh { Ok(()) } else { Err(Invalid::Stale) }
}

/// What one event means for switchboard (shared by the email providers).
pub use crate::providers::email::EmailNotice as Notice;

/// `sg_message_id` is the `X-Message-Id` of the send followed by
/// `.filter…` (or `.recvd…`) naming the machine that handled it.
pub fn message_id_of(sg_message_id: &str) -> &str {
    let cut = sg_message_id
        .find(".filter")
        .or_else(|| sg_message_id.find(".recvd"))
        .or_else(|| sg_message_id.find('.'))
        .unwrap_or(sg_message_id.len());
    &sg_message_id[..cut]
}

/// The events of a verified body that switchboard records; others
/// (`processed`, group subscriptions, account events) and events without
/// the ids needed to place them are left out.
pub fn parse(body: &[u8]) -> Vec<Notice> {
    let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    events.iter().filter_map(notice).collect()
}

fn notice(e: &Value) -> Option<Notice> {
    let text = |k: &str| e.get(k).and_then(Value::as_str);
    let event_id = text("sg_event_id")?.to_string();
    let message_id = message_id_of(text("sg_message_id")?).to_string();
    if message_id.is_empty() {
        return None;
    }
    let reason = text("reason");
    let (event, opt_out) = match text("event")? {
        "delivered" => ("delivered", None),
        "deferred" => ("delivery_delayed", None),
        "bounce" => {
            // `blocked` is a refusal for now (reputation, content), not a
            // dead address.
            let hard = text("type").is_none_or(|t| t == "bounce");
            ("bounced", hard.then_some("hard_bounce"))
        }
        // SendGrid will not send it: its suppression lists say why.
        "dropped" => (
            "failed",
            match reason {
                Some("Bounced Address") => Some("hard_bounce"),
                Some("Spam Reporting Address") => Some("complaint"),
                Some("Unsubscribed Address") => Some("unsubscribe"),
                _ => None,
            },
        ),
        "spamreport" => ("complained", Some("complaint")),
        "unsubscribe" => ("unsubscribed", Some("unsubscribe")),
        "open" => ("opened", None),
        "click" => ("clicked", None),
        _ => return None,
    };
    let error = matches!(event, "bounced" | "failed").then(|| match reason {
        Some(r) => format!("sendgrid {}: {}", text("event").unwrap_or(event), r),
        None => format!("sendgrid {}", text("event").unwrap_or(event)),
    });
    let mut detail = json!({"event": text("event")});
    for key in [
        "reason",
        "type",
        "status",
        "response",
        "url",
        "bounce_classification",
    ] {
        if let Some(v) = e.get(key) {
            detail[key] = v.clone();
        }
    }
    Some(Notice {
        event_id,
        message_id,
        event,
        recipient: text("email").map(str::to_string),
        opt_out,
        error,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // sendgrid/sendgrid-python test/unit/test_eventwebhook.py: the SDK's
    // published example (payload = `json.dumps(sort_keys=True,
    // separators=(',', ':'))` + CRLF).
    const PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    const SIGNATURE: &str = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=";
    const TIMESTAMP: &str = "1600112502";
    const PAYLOAD: &str = "[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\",\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\",\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\",\"timestamp\":1600112492}]\r\n";

    fn then() -> DateTime<Utc> {
        DateTime::from_timestamp(1600112502 + 30, 0).unwrap()
    }

    #[test]
    fn the_sdks_published_example_verifies() {
        assert_eq!(
            verify(PUBLIC_KEY, SIGNATURE, TIMESTAMP, PAYLOAD.as_bytes(), then()),
            Ok(())
        );
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{PUBLIC_KEY}\n-----END PUBLIC KEY-----\n");
        assert_eq!(
            verify(&pem, SIGNATURE, TIMESTAMP, PAYLOAD.as_bytes(), then()),
            Ok(())
        );
    }

    #[test]
    fn what_the_sdk_refuses_is_refused() {
        // Its other cases: another key, another payload, another signature,
        // another timestamp.
        let other_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";
        let body = PAYLOAD.as_bytes();
        assert_eq!(
            verify(other_key, SIGNATURE, TIMESTAMP, body, then()),
            Err(Invalid::Signature)
        );
        assert_eq!(
            verify(PUBLIC_KEY, SIGNATURE, TIMESTAMP, b"payload", then()),
            Err(Invalid::Signature)
        );
        let other_sig = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
        assert_eq!(
            verify(PUBLIC_KEY, other_sig, TIMESTAMP, body, then()),
            Err(Invalid::Signature)
        );
        assert_eq!(
            verify(PUBLIC_KEY, SIGNATURE, "timestamp", body, then()),
            Err(Invalid::Signature)
        );
        // One flipped byte of the body.
        let mut tampered = body.to_vec();
        tampered[3] ^= 1;
        assert_eq!(
            verify(PUBLIC_KEY, SIGNATURE, TIMESTAMP, &tampered, then()),
            Err(Invalid::Signature)
        );
        // Unsigned, or garbage.
        assert_eq!(
            verify(PUBLIC_KEY, "", TIMESTAMP, body, then()),
            Err(Invalid::Headers)
        );
        assert_eq!(
            verify(PUBLIC_KEY, "%%%", TIMESTAMP, body, then()),
            Err(Invalid::Signature)
        );
        // Our own key unusable.
        assert_eq!(
            verify("not a key", SIGNATURE, TIMESTAMP, body, then()),
            Err(Invalid::Key)
        );
        assert_eq!(
            verify("", SIGNATURE, TIMESTAMP, body, then()),
            Err(Invalid::Key)
        );
    }

    #[test]
    fn a_valid_signature_too_old_or_from_the_future_is_stale() {
        let body = PAYLOAD.as_bytes();
        let late = DateTime::from_timestamp(1600112502 + TOLERANCE_SECS + 1, 0).unwrap();
        assert_eq!(
            verify(PUBLIC_KEY, SIGNATURE, TIMESTAMP, body, late),
            Err(Invalid::Stale)
        );
        let early = DateTime::from_timestamp(1600112502 - TOLERANCE_SECS - 1, 0).unwrap();
        assert_eq!(
            verify(PUBLIC_KEY, SIGNATURE, TIMESTAMP, body, early),
            Err(Invalid::Stale)
        );
    }

    #[test]
    fn the_published_example_means_a_failed_send_and_a_hard_bounce() {
        let notices = parse(PAYLOAD.as_bytes());
        assert_eq!(notices.len(), 1);
        let n = &notices[0];
        assert_eq!(n.message_id, "LRzXl_NHStOGhQ4kofSm_A");
        assert_eq!(
            n.event_id,
            "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA"
        );
        assert_eq!((n.event, n.opt_out), ("failed", Some("hard_bounce")));
        assert_eq!(n.recipient.as_deref(), Some("hello@world.com"));
        assert_eq!(
            n.error.as_deref(),
            Some("sendgrid dropped: Bounced Address")
        );
    }

    #[test]
    fn events_map_to_outcomes_and_opt_outs() {
        let one = |e: Value| {
            let mut e = e;
            e["sg_event_id"] = "ev1".into();
            e["sg_message_id"] = "abc.filterdrecv-1.0".into();
            e["email"] = "a@b.co".into();
            let n = parse(json!([e]).to_string().as_bytes());
            n.into_iter().next().map(|n| (n.event, n.opt_out))
        };
        assert_eq!(
            one(json!({"event": "delivered"})),
            Some(("delivered", None))
        );
        assert_eq!(
            one(json!({"event": "bounce", "type": "bounce"})),
            Some(("bounced", Some("hard_bounce")))
        );
        assert_eq!(
            one(json!({"event": "bounce", "type": "blocked"})),
            Some(("bounced", None))
        );
        assert_eq!(
            one(json!({"event": "spamreport"})),
            Some(("complained", Some("complaint")))
        );
        assert_eq!(
            one(json!({"event": "unsubscribe"})),
            Some(("unsubscribed", Some("unsubscribe")))
        );
        assert_eq!(one(json!({"event": "open"})), Some(("opened", None)));
        assert_eq!(
            one(json!({"event": "click", "url": "https://x"})),
            Some(("clicked", None))
        );
        assert_eq!(
            one(json!({"event": "dropped", "reason": "Invalid SMTPAPI header"})),
            Some(("failed", None))
        );
        assert_eq!(one(json!({"event": "processed"})), None);
        assert_eq!(one(json!({"event": "group_unsubscribe"})), None);
        assert!(parse(b"{\"event\":\"delivered\"}").is_empty());
        assert!(parse(br#"[{"event":"delivered","sg_message_id":"x.filter"}]"#).is_empty());
    }

    #[test]
    fn message_ids_are_the_part_before_the_filter() {
        assert_eq!(
            message_id_of(
                "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
            ),
            "LRzXl_NHStOGhQ4kofSm_A"
        );
        assert_eq!(
            message_id_of("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"),
            "14c5d75ce93.dfd.64b469"
        );
        assert_eq!(message_id_of("plain"), "plain");
    }
}
