//! Mailgun's webhooks (`../shared/providers.md` §3, Mailgun's "Securing
//! Webhooks"): a JSON body `{"signature": {"timestamp", "token",
//! "signature"}, "event-data": {…}}` where `signature` is the hex
//! HMAC-SHA256, keyed by the HTTP webhook signing key, of `timestamp`
//! followed by `token`. The signature is in the body, so the body is parsed
//! to find it, and nothing else in it is read before it matches.
//!
//! Replays: a timestamp more than [`TOLERANCE_SECS`] from now is refused;
//! a token already seen is refused by the handler (`webhook_tokens`).

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::bare_id;

/// "A few minutes", as Mailgun recommends.
pub const TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON, or no `signature` object.
    Body,
    /// Ours: no usable signing key configured.
    Key,
    Signature,
    Stale,
}

/// The signed parts of a request that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub token: String,
    pub event_data: Value,
}

fn mac(key: &str, timestamp: &str, token: &str) -> Result<Hmac<Sha256>, Invalid> {
    if key.trim().is_empty() {
        return Err(Invalid::Key);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.trim().as_bytes()).map_err(|_| Invalid::Key)?;
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    Ok(mac)
}

pub fn verify(key: &str, body: &[u8], now: DateTime<Utc>) -> Result<Verified, Invalid> {
    let v: Value = serde_json::from_slice(body).map_err(|_| Invalid::Body)?;
    let sig = v.get("signature").ok_or(Invalid::Body)?;
    let text = |k: &str| sig.get(k).and_then(Value::as_str).unwrap_or("");
    // Mailgun sends the timestamp as a string; accept a number too.
    let timestamp = match sig.get("timestamp") {
        Some(Value::Number(n)) => n.to_string(),
        _ => text("timestamp").to_string(),
    };
    let (token, signature) = (text("token"), text("signature"));
    if timestamp.is_empty() || token.is_empty() || signature.is_empty() {
        return Err(Invalid::Signature);
    }
    let expected = mac(key, &timestamp, token)?;
    let given = hex::decode(signature.trim()).map_err(|_| Invalid::Signature)?;
    expected
        .verify_slice(&given)
        .map_err(|_| Invalid::Signature)?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| Invalid::Stale)?;
    let fresh = now
        .timestamp()
        .checked_sub(ts)
        .and_then(i64::checked_abs)
        .is_some_and(|age| age <= TOLERANCE_SECS);
    if !fresh {
        return Err(Invalid::Stale);
    }
    Ok(Verified {
        token: token.to_string(),
        event_data: v.get("event-data").cloned().unwrap_or(Value::Null),
    })
}

/// The signature Mailgun would send (tests of this module only).
#[cfg(test)]
fn sign(key: &str, timestamp: &str, token: &str) -> String {
    hex::encode(mac(key, timestamp, token).unwrap().finalize().into_bytes())
}

/// What one event means for switchboard (shared by the email providers).
pub use crate::providers::email::EmailNotice as Notice;

pub fn parse(event_data: &Value) -> Option<Notice> {
    let text = |p: &str| event_data.pointer(p).and_then(Value::as_str);
    let event_id = text("/id")?.to_string();
    let message_id = bare_id(text("/message/headers/message-id")?).to_string();
    if message_id.is_empty() {
        return None;
    }
    let reason = text("/reason");
    let (event, opt_out) = match text("/event")? {
        "delivered" => ("delivered", None),
        "failed" if text("/severity") == Some("temporary") => ("delivery_delayed", None),
        "failed" => match reason {
            Some("suppress-complaint") => ("failed", Some("complaint")),
            Some("suppress-unsubscribe") => ("failed", Some("unsubscribe")),
            Some("bounce" | "suppress-bounce") | None => ("bounced", Some("hard_bounce")),
            Some(_) => ("failed", None),
        },
        "rejected" => ("failed", None),
        "complained" => ("complained", Some("complaint")),
        "unsubscribed" => ("unsubscribed", Some("unsubscribe")),
        "opened" => ("opened", None),
        "clicked" => ("clicked", None),
        _ => return None,
    };
    let error = matches!(event, "bounced" | "failed").then(|| {
        let description = text("/delivery-status/description")
            .filter(|d| !d.is_empty())
            .or_else(|| text("/delivery-status/message"))
            .or(reason)
            .unwrap_or("");
        format!("mailgun {}: {description}", text("/event").unwrap_or(event))
            .trim_end_matches([':', ' '])
            .to_string()
    });
    let mut detail = json!({"event": text("/event")});
    for key in ["severity", "reason", "url", "delivery-status"] {
        if let Some(v) = event_data.get(key) {
            detail[key] = v.clone();
        }
    }
    Some(Notice {
        event_id,
        message_id,
        event,
        recipient: text("/recipient").map(str::to_string),
        opt_out,
        error,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "key-4e6bd4f3a1c9a55d0e1d0f6d0ad11c0e";

    fn body(ts: &str, token: &str, signature: &str, event: Value) -> Vec<u8> {
        json!({"signature": {"timestamp": ts, "token": token, "signature": signature},
               "event-data": event})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn signatures_verify_and_tampering_or_staleness_is_refused() {
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let token = "5a9b3c1f2e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c";
        let sig = sign(KEY, &ts, token);
        let event = json!({"event": "delivered", "id": "ev1"});
        let ok = verify(KEY, &body(&ts, token, &sig, event.clone()), now).unwrap();
        assert_eq!(ok.token, token);
        assert_eq!(ok.event_data, event);
        assert_eq!(
            verify("another-key", &body(&ts, token, &sig, event.clone()), now),
            Err(Invalid::Signature)
        );
        assert_eq!(
            verify(KEY, &body(&ts, "other-token", &sig, event.clone()), now),
            Err(Invalid::Signature)
        );
        assert_eq!(
            verify(KEY, &body(&ts, token, "", event.clone()), now),
            Err(Invalid::Signature)
        );
        assert_eq!(verify(KEY, b"not json", now), Err(Invalid::Body));
        assert_eq!(
            verify("", &body(&ts, token, &sig, event.clone()), now),
            Err(Invalid::Key)
        );
        let later = now + chrono::Duration::seconds(TOLERANCE_SECS + 1);
        assert_eq!(
            verify(KEY, &body(&ts, token, &sig, event.clone()), later),
            Err(Invalid::Stale)
        );
        // A signed timestamp that is not a number, or is extreme, is only
        // refused.
        for ts in ["soon", "-9223372036854775808"] {
            let sig = sign(KEY, ts, token);
            assert_eq!(
                verify(KEY, &body(ts, token, &sig, event.clone()), now),
                Err(Invalid::Stale)
            );
        }
    }

    #[test]
    fn events_map_to_outcomes_and_opt_outs() {
        let one = |extra: Value| {
            let mut e = json!({"id": "ev1", "recipient": "a@b.co",
                "message": {"headers": {"message-id": "20240101.1@mg.realty.test"}}});
            for (k, v) in extra.as_object().unwrap() {
                e[k] = v.clone();
            }
            parse(&e).map(|n| (n.event, n.opt_out))
        };
        assert_eq!(
            one(json!({"event": "delivered"})),
            Some(("delivered", None))
        );
        assert_eq!(
            one(json!({"event": "failed", "severity": "permanent", "reason": "bounce"})),
            Some(("bounced", Some("hard_bounce")))
        );
        assert_eq!(
            one(json!({"event": "failed", "severity": "temporary", "reason": "generic"})),
            Some(("delivery_delayed", None))
        );
        assert_eq!(
            one(
                json!({"event": "failed", "severity": "permanent", "reason": "suppress-complaint"})
            ),
            Some(("failed", Some("complaint")))
        );
        assert_eq!(
            one(json!({"event": "failed", "severity": "permanent", "reason": "old"})),
            Some(("failed", None))
        );
        assert_eq!(
            one(json!({"event": "complained"})),
            Some(("complained", Some("complaint")))
        );
        assert_eq!(
            one(json!({"event": "unsubscribed"})),
            Some(("unsubscribed", Some("unsubscribe")))
        );
        assert_eq!(one(json!({"event": "opened"})), Some(("opened", None)));
        assert_eq!(one(json!({"event": "clicked"})), Some(("clicked", None)));
        assert_eq!(one(json!({"event": "accepted"})), None);
        let n = parse(&json!({"id": "ev2", "event": "delivered",
            "message": {"headers": {"message-id": "<x@mg.test>"}}}))
        .unwrap();
        assert_eq!(n.message_id, "x@mg.test");
    }
}
