//! Meta's webhooks for WhatsApp: the GET subscription handshake and the
//! signed POSTs carrying message statuses and inbound messages.
//!
//! A POST is signed with `X-Hub-Signature-256: sha256=<hex>`, the hex
//! HMAC-SHA256 of the raw body keyed by the app secret (the official Node
//! SDK's `generateXHub256Sig`). Meta signs no timestamp, so a captured
//! request stays valid; only the ids inside it (the wamid and status, the
//! inbound message id) let the inbox recognise a replay. Nothing is read
//! from a body before its signature matches.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::webhooks::inbox::Keyword;

fn mac(app_secret: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac
}

/// Checks `X-Hub-Signature-256` against the raw body, in constant time. An
/// empty app secret verifies nothing: anyone can compute that HMAC.
pub fn signature_is_valid(app_secret: &str, body: &[u8], header: &str) -> bool {
    if app_secret.is_empty() {
        return false;
    }
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    match hex::decode(hex_sig) {
        Ok(sig) => mac(app_secret, body).verify_slice(&sig).is_ok(),
        Err(_) => false,
    }
}

/// The `X-Hub-Signature-256` value Meta would send.
#[cfg(test)]
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(app_secret, body).finalize().into_bytes())
    )
}

/// The subscription handshake: `hub.mode=subscribe` with our verify token
/// gets `hub.challenge` echoed; anything else gets nothing.
pub fn handshake<'a>(
    verify_token: &str,
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&'a str>,
) -> Option<&'a str> {
    let token_ok = token.is_some_and(|t| crate::providers::same_secret(t, verify_token));
    (mode == Some("subscribe") && token_ok && !verify_token.is_empty())
        .then_some(challenge)
        .flatten()
}

/// One thing a webhook POST says. A POST may say several.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A status of a message we sent.
    Status {
        wamid: String,
        /// Meta's word: `delivered`, `read`, `failed`.
        status: String,
        /// Ours: `delivered`, `opened`, `failed`.
        event: &'static str,
        /// `recipient_id`: the number the message went to, without `+`.
        recipient: Option<String>,
        /// Meta's error code when it failed (`131026`: undeliverable).
        error_code: Option<i64>,
        detail: Value,
    },
    /// A person wrote to the business number.
    Inbound {
        message_id: String,
        /// `wa_id`: the number in international format without `+`.
        from: String,
        keyword: Option<Keyword>,
    },
}

/// Everything a verified POST body says that switchboard records. `sent`
/// statuses are skipped: the send itself recorded that.
pub fn parse(body: &[u8]) -> Vec<Notice> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    if v.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return Vec::new();
    }
    let values = v
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("changes").and_then(Value::as_array))
        .flatten()
        .filter(|c| c.get("field").and_then(Value::as_str) == Some("messages"))
        .filter_map(|c| c.get("value"));
    let mut out = Vec::new();
    for value in values {
        let list = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        for s in list("statuses") {
            let (Some(wamid), Some(status)) = (
                s.get("id").and_then(Value::as_str),
                s.get("status").and_then(Value::as_str),
            ) else {
                continue;
            };
            let event = match status {
                "delivered" => "delivered",
                "read" => "opened",
                "failed" => "failed",
                _ => continue,
            };
            let error = s.pointer("/errors/0");
            out.push(Notice::Status {
                wamid: wamid.to_string(),
                status: status.to_string(),
                event,
                recipient: s
                    .get("recipient_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                error_code: error.and_then(|e| e.get("code")).and_then(Value::as_i64),
                detail: json!({
                    "provider_status": status,
                    "error_code": error.and_then(|e| e.get("code")),
                    "error_title": error.and_then(|e| e.get("title")),
                    "pricing_category": s.pointer("/pricing/category"),
                    "conversation_id": s.pointer("/conversation/id"),
                }),
            });
        }
        for m in list("messages") {
            let (Some(id), Some(from)) = (
                m.get("id").and_then(Value::as_str),
                m.get("from").and_then(Value::as_str),
            ) else {
                continue;
            };
            let text = match m.get("type").and_then(Value::as_str) {
                Some("text") => m.pointer("/text/body"),
                Some("button") => m.pointer("/button/text"),
                _ => None,
            }
            .and_then(Value::as_str)
            .unwrap_or("");
            out.push(Notice::Inbound {
                message_id: id.to_string(),
                from: from.to_string(),
                keyword: Keyword::from_reply(text),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256_of_the_raw_body() {
        // Independent check: RFC 4231 test case 2 (key "Jefe").
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let sig = sign("app-secret", body);
        assert!(signature_is_valid("app-secret", body, &sig));
        assert!(!signature_is_valid("other", body, &sig));
        assert!(!signature_is_valid("app-secret", b"{}", &sig));
        assert!(!signature_is_valid(
            "app-secret",
            body,
            sig.trim_start_matches("sha256=")
        ));
        assert!(!signature_is_valid("", body, &sign("", body)));
    }

    #[test]
    fn the_handshake_echoes_the_challenge_only_for_our_token() {
        let ok = handshake("vt", Some("subscribe"), Some("vt"), Some("1158201444"));
        assert_eq!(ok, Some("1158201444"));
        assert_eq!(
            handshake("vt", Some("subscribe"), Some("x"), Some("1")),
            None
        );
        assert_eq!(
            handshake("vt", Some("unsubscribe"), Some("vt"), Some("1")),
            None
        );
        assert_eq!(handshake("", Some("subscribe"), Some(""), Some("1")), None);
    }

    #[test]
    fn statuses_and_messages_are_read() {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA",
            "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "statuses": [
                    {"id": "wamid.A", "status": "sent", "recipient_id": "16505551234"},
                    {"id": "wamid.A", "status": "delivered", "recipient_id": "16505551234"},
                    {"id": "wamid.B", "status": "failed", "errors": [{"code": 131026, "title": "Message undeliverable"}]}],
                "messages": [{"from": "16505551234", "id": "wamid.IN", "timestamp": "1700000000",
                              "type": "text", "text": {"body": " Stop "}}]}}]}]});
        let notices = parse(body.to_string().as_bytes());
        assert_eq!(notices.len(), 3);
        assert!(matches!(
            &notices[0],
            Notice::Status {
                event: "delivered",
                ..
            }
        ));
        match &notices[1] {
            Notice::Status {
                event,
                detail,
                error_code,
                ..
            } => {
                assert_eq!(*event, "failed");
                assert_eq!(*error_code, Some(131026));
                assert_eq!(detail["error_code"], 131026);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            notices[2],
            Notice::Inbound {
                message_id: "wamid.IN".into(),
                from: "16505551234".into(),
                keyword: Some(Keyword::Stop)
            }
        );
        assert!(parse(br#"{"object":"page","entry":[]}"#).is_empty());
    }
}
