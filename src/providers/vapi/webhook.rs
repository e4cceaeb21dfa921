//! VAPI's Server URL messages: `{"message": {"type", "call", …}}`.
//!
//! How VAPI authenticates them is configurable, and its docs describe
//! several schemes without one default (`../shared/providers.md` §9): a
//! legacy `serverUrlSecret` sent as `X-Vapi-Secret`, a "Bearer token"
//! credential (`Authorization: Bearer <token>`), or an "HMAC" credential
//! whose header, algorithm and payload the user chooses. We accept exactly
//! these, each checked in constant time against the integration's
//! `webhook_secret`:
//!
//! * `X-Vapi-Secret: <secret>`;
//! * `Authorization: Bearer <secret>`;
//! * `X-Vapi-Signature: <hex HMAC-SHA256 of the raw body>` (an HMAC
//!   credential with algorithm SHA256, signature header `x-vapi-signature`,
//!   no timestamp header, payload = the body only).
//!
//! None of them carries a timestamp, so a captured request stays valid; the
//! inbox recognises a replay by the call id and event.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::providers::same_secret;

/// Whether the request carries proof of `secret` in one of the accepted
/// forms. An empty secret proves nothing.
pub fn is_authentic(
    secret: &str,
    x_vapi_secret: Option<&str>,
    authorization: Option<&str>,
    x_vapi_signature: Option<&str>,
    body: &[u8],
) -> bool {
    if secret.is_empty() {
        return false;
    }
    if x_vapi_secret.is_some_and(|s| same_secret(s.trim(), secret)) {
        return true;
    }
    if authorization
        .and_then(|a| a.trim().strip_prefix("Bearer "))
        .is_some_and(|t| same_secret(t.trim(), secret))
    {
        return true;
    }
    x_vapi_signature.is_some_and(|sig| {
        let sig = sig.trim();
        let hex_sig = sig.strip_prefix("sha256=").unwrap_or(sig);
        let Ok(sig) = hex::decode(hex_sig) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

/// One thing a VAPI message says about a call we placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub call_id: String,
    /// Our event name: `delivered` (answered), `failed` (busy, no answer,
    /// could not connect) or `ended` (the end-of-call report).
    pub event: &'static str,
    /// Unique per call and meaning: a repeat is recognised.
    pub delivery_id: String,
    pub detail: Value,
}

/// `endedReason`s (VAPI's OpenAPI enum) that mean the call never reached
/// the person: busy, no answer, the carrier could not connect or refused
/// it, or the call could not start. Reasons from after an answer (a
/// pipeline error, a transfer's `call.forwarding.no-answer`) do not count;
/// `voicemail` neither (a machine answered: not failed, not delivered).
fn unreached(reason: &str) -> bool {
    const UNREACHED: [&str; 7] = [
        "customer-busy",
        "customer-did-not-answer",
        "twilio-failed-to-connect-call",
        "twilio-reported-customer-misdialed",
        "vonage-failed-to-connect-call",
        "vonage-rejected",
        "call.in-progress.error-sip-outbound-call-failed-to-connect",
    ];
    UNREACHED.contains(&reason)
        || reason.starts_with("call.start.error")
        || reason.starts_with("call-start-error")
        || reason.contains("error-providerfault-outbound-sip-")
}

/// The call's length: `durationSeconds` where VAPI sends it, else from
/// `startedAt` and `endedAt` (the OpenAPI's fields).
fn duration_seconds(m: &Value) -> Option<f64> {
    if let Some(d) = m.get("durationSeconds").and_then(Value::as_f64) {
        return Some(d);
    }
    let at = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let (start, end) = (at("startedAt")?, at("endedAt")?);
    Some((end - start).num_milliseconds() as f64 / 1000.0)
}

/// What a verified message says: nothing for the types we do not record
/// (transcripts, speech updates, tool calls…).
pub fn parse(body: &[u8]) -> Vec<Notice> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let Some(m) = v.get("message") else {
        return Vec::new();
    };
    let Some(call_id) = m.pointer("/call/id").and_then(Value::as_str) else {
        return Vec::new();
    };
    let text = |p: &str| m.pointer(p).and_then(Value::as_str);
    let notice = |event: &'static str, detail: Value| Notice {
        call_id: call_id.to_string(),
        event,
        delivery_id: format!("{call_id}:{event}"),
        detail,
    };
    match text("/type") {
        Some("status-update") => match text("/status") {
            Some("in-progress") => vec![notice(
                "delivered",
                json!({"provider_status": "in-progress"}),
            )],
            _ => Vec::new(),
        },
        Some("end-of-call-report") => {
            let reason = text("/endedReason").unwrap_or("");
            // Where VAPI's OpenAPI puts them (`analysis.summary`,
            // `artifact.recordingUrl` or `artifact.recording.stereoUrl`),
            // with the older top-level names as a fallback.
            let detail = json!({
                "ended_reason": reason,
                "duration_seconds": duration_seconds(m),
                "cost": m.get("cost"),
                "summary": m.pointer("/analysis/summary").or_else(|| m.get("summary")),
                "recording_url": m.pointer("/artifact/recordingUrl")
                    .or_else(|| m.pointer("/artifact/recording/stereoUrl"))
                    .or_else(|| m.get("recordingUrl")),
            });
            if unreached(reason) {
                vec![notice("failed", detail)]
            } else if reason == "voicemail" {
                vec![notice("ended", detail)]
            } else {
                // Answered: say so (stored once if `in-progress` said it
                // already), then the report itself.
                vec![
                    notice(
                        "delivered",
                        json!({"provider_status": "ended", "ended_reason": reason}),
                    ),
                    notice("ended", detail),
                ]
            }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_accepted_form_of_the_secret_authenticates() {
        let body = br#"{"message":{}}"#;
        assert!(is_authentic("s3cret", Some("s3cret"), None, None, body));
        assert!(is_authentic(
            "s3cret",
            None,
            Some("Bearer s3cret"),
            None,
            body
        ));
        // RFC 4231 test case 2, as an independent HMAC-SHA256 check.
        let sig = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(is_authentic(
            "Jefe",
            None,
            None,
            Some(sig),
            b"what do ya want for nothing?"
        ));
        assert!(!is_authentic(
            "Jefe",
            None,
            None,
            Some(sig),
            b"what do ya want for nothing!"
        ));
        assert!(!is_authentic(
            "s3cret",
            Some("wrong"),
            Some("Bearer wrong"),
            Some("00"),
            body
        ));
        assert!(!is_authentic("", Some(""), Some("Bearer "), None, body));
    }

    #[test]
    fn reports_become_events() {
        let report = |reason: &str| {
            json!({"message": {"type": "end-of-call-report", "endedReason": reason,
                "startedAt": "2026-11-25T10:00:00.000Z", "endedAt": "2026-11-25T10:00:42.500Z",
                "cost": 0.11, "analysis": {"summary": "Booked a viewing"},
                "artifact": {"recordingUrl": "https://rec.test/1.wav"}, "call": {"id": "call_1"}}})
            .to_string()
        };
        let events = |reason: &str| {
            parse(report(reason).as_bytes())
                .iter()
                .map(|n| n.event)
                .collect::<Vec<_>>()
        };
        let n = parse(report("customer-ended-call").as_bytes());
        assert_eq!(events("customer-ended-call"), ["delivered", "ended"]);
        assert_eq!(n[1].detail["cost"], 0.11);
        assert_eq!(n[1].detail["duration_seconds"], 42.5);
        assert_eq!(n[1].detail["summary"], "Booked a viewing");
        assert_eq!(n[1].detail["recording_url"], "https://rec.test/1.wav");
        for reason in [
            "customer-busy",
            "customer-did-not-answer",
            "call.start.error-get-customer",
        ] {
            assert_eq!(events(reason), ["failed"], "{reason}");
        }
        assert_eq!(
            parse(report("customer-busy").as_bytes())[0].delivery_id,
            "call_1:failed"
        );
        // After an answer: not "unreached"; a machine: neither.
        for reason in [
            "call.forwarding.no-answer",
            "pipeline-error-eleven-labs-system-busy-and-requested-upgrade",
        ] {
            assert_eq!(events(reason), ["delivered", "ended"], "{reason}");
        }
        assert_eq!(events("voicemail"), ["ended"]);
        let n = parse(
            br#"{"message":{"type":"status-update","status":"in-progress","call":{"id":"call_1"}}}"#,
        );
        assert_eq!(n[0].delivery_id, "call_1:delivered");
        assert!(parse(br#"{"message":{"type":"transcript","call":{"id":"c"}}}"#).is_empty());
    }
}
