//! Resend's webhooks, signed the Svix way (`../shared/providers.md` §1, §10):
//! `svix-signature` holds space-separated `v1,<base64>` entries, each an
//! HMAC-SHA256 keyed by the base64-decoded part of the `whsec_…` secret over
//! `{svix-id}.{svix-timestamp}.{raw body}`; timestamps more than five minutes
//! off are refused, so a captured request cannot be replayed later (and one
//! replayed sooner is recognised by its `svix-id` in the inbox).
//!
//! Nothing from the request is computed with before the signature matches:
//! the timestamp is only compared, with checked arithmetic, afterwards.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

const TOLERANCE_SECS: i64 = 5 * 60;

/// Svix's secrets are 24 or 32 random bytes. Anything much shorter is no
/// secret: an empty key (`whsec_`) signs for anyone who computes an HMAC
/// with an empty key.
const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Headers,
    /// Ours, not the sender's: the configured secret is unusable.
    Secret,
    Stale,
    Signature,
}

fn mac(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Result<Hmac<Sha256>, Invalid> {
    let key = BASE64
        .decode(
            secret
                .trim()
                .strip_prefix("whsec_")
                .unwrap_or(secret.trim()),
        )
        .map_err(|_| Invalid::Secret)?;
    if key.len() < MIN_KEY_BYTES {
        return Err(Invalid::Secret);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| Invalid::Secret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// Checks a delivery's Svix headers against the raw body.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Invalid> {
    if id.is_empty() || signatures.is_empty() || timestamp.is_empty() {
        return Err(Invalid::Headers);
    }
    let expected = mac(secret, id, timestamp, body)?;
    let matches = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| BASE64.decode(sig).ok())
        .any(|sig| expected.clone().verify_slice(&sig).is_ok());
    if !matches {
        return Err(Invalid::Signature);
    }
    // Signed, so written by the secret's holder; still checked arithmetic,
    // since a signed value is not a sane one.
    let ts: i64 = timestamp.trim().parse().map_err(|_| Invalid::Headers)?;
    let fresh = now
        .timestamp()
        .checked_sub(ts)
        .is_some_and(|age| age.checked_abs().is_some_and(|a| a <= TOLERANCE_SECS));
    if fresh { Ok(()) } else { Err(Invalid::Stale) }
}

/// The `svix-signature` value Resend would send.
#[cfg(test)]
fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = mac(secret, id, timestamp, body).expect("a valid whsec_ secret");
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// What a Resend event means for switchboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The send's `id`, which we stored as the provider message id.
    pub email_id: String,
    /// Our event name.
    pub event: &'static str,
    /// The recipients, for opt-outs.
    pub to: Vec<String>,
    /// The opt-out this event implies (`hard_bounce`, `complaint`).
    pub opt_out: Option<&'static str>,
    pub detail: Value,
}

pub fn parse(body: &[u8]) -> Option<Notice> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?;
    let email_id = data.get("email_id")?.as_str()?.to_string();
    let to = data
        .get("to")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let (event, opt_out) = match v.get("type")?.as_str()? {
        "email.delivered" => ("delivered", None),
        "email.delivery_delayed" => ("delivery_delayed", None),
        "email.bounced" => {
            // Only a permanent bounce means the address is dead.
            let bounce_type = data
                .pointer("/bounce/type")
                .and_then(Value::as_str)
                .unwrap_or("Permanent");
            (
                "bounced",
                bounce_type
                    .eq_ignore_ascii_case("permanent")
                    .then_some("hard_bounce"),
            )
        }
        "email.complained" => ("complained", Some("complaint")),
        "email.opened" => ("opened", None),
        "email.clicked" => ("clicked", None),
        "email.failed" => ("failed", None),
        "email.suppressed" => ("suppressed", None),
        _ => return None,
    };
    let mut detail = serde_json::json!({"type": v.get("type")});
    for key in ["bounce", "failed", "suppressed", "click"] {
        if let Some(x) = data.get(key) {
            detail[key] = x.clone();
        }
    }
    Some(Notice {
        email_id,
        event,
        to,
        opt_out,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_published_svix_reference_vector_verifies() {
        let body = br#"{"test": 2432232314}"#;
        let (id, ts) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330");
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(sign(SECRET, id, ts, body), expected);
        let then = DateTime::from_timestamp(1614265330, 0).unwrap();
        assert_eq!(verify(SECRET, id, ts, expected, body, then), Ok(()));
    }

    #[test]
    fn svix_signatures_round_trip_and_reject_tampering_and_replays() {
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let body = br#"{"type":"email.delivered","data":{"email_id":"e1"}}"#;
        let sig = sign(SECRET, "msg_1", &ts, body);
        assert_eq!(verify(SECRET, "msg_1", &ts, &sig, body, now), Ok(()));
        // Several signatures (a secret rotation): any v1 match passes.
        let both = format!("v1,AAAA {sig}");
        assert_eq!(verify(SECRET, "msg_1", &ts, &both, body, now), Ok(()));
        assert_eq!(
            verify(SECRET, "msg_2", &ts, &sig, body, now),
            Err(Invalid::Signature)
        );
        assert_eq!(
            verify(SECRET, "msg_1", &ts, &sig, b"{}", now),
            Err(Invalid::Signature)
        );
        let later = now + chrono::Duration::minutes(6);
        assert_eq!(
            verify(SECRET, "msg_1", &ts, &sig, body, later),
            Err(Invalid::Stale)
        );
        assert_eq!(
            verify(SECRET, "", &ts, &sig, body, now),
            Err(Invalid::Headers)
        );
    }

    #[test]
    fn extreme_timestamps_are_refused_without_overflow() {
        let now = Utc::now();
        let body = b"{}";
        for ts in ["-9223372036854775808", "9223372036854775807"] {
            // Unsigned: refused before the timestamp is looked at.
            assert_eq!(
                verify(SECRET, "msg_1", ts, "v1,AAAA", body, now),
                Err(Invalid::Signature)
            );
            // Signed by the secret's holder: still only refused.
            let sig = sign(SECRET, "msg_1", ts, body);
            assert_eq!(
                verify(SECRET, "msg_1", ts, &sig, body, now),
                Err(Invalid::Stale)
            );
        }
    }

    #[test]
    fn an_empty_or_short_secret_verifies_nothing() {
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        // What anyone can compute with an empty key.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"").unwrap();
        mac.update(format!("msg_1.{ts}.{{}}").as_bytes());
        let forged = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        for secret in ["whsec_", "", " whsec_ ", "whsec_c2hvcnQ="] {
            assert_eq!(
                verify(secret, "msg_1", &ts, &forged, b"{}", now),
                Err(Invalid::Secret),
                "{secret:?}"
            );
        }
    }

    #[test]
    fn events_map_to_outcomes_and_opt_outs() {
        let n = parse(br#"{"type":"email.bounced","data":{"email_id":"e1","to":["a@b.co"],"bounce":{"type":"Permanent"}}}"#).unwrap();
        assert_eq!((n.event, n.opt_out), ("bounced", Some("hard_bounce")));
        let n = parse(br#"{"type":"email.bounced","data":{"email_id":"e1","to":["a@b.co"],"bounce":{"type":"Transient"}}}"#).unwrap();
        assert_eq!(n.opt_out, None);
        let n = parse(br#"{"type":"email.complained","data":{"email_id":"e1","to":["a@b.co"]}}"#)
            .unwrap();
        assert_eq!((n.event, n.opt_out), ("complained", Some("complaint")));
        assert!(parse(br#"{"type":"contact.created","data":{}}"#).is_none());
    }
}
