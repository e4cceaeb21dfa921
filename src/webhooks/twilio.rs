//! Twilio's webhooks: message status callbacks (the `StatusCallback` we send
//! with each message) and incoming messages (STOP / START replies).
//!
//! Signed with `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed by the
//! account's auth token, over the full URL Twilio requested followed by every
//! form parameter name and value, sorted by name (`../shared/providers.md`
//! §6). The URL is rebuilt from `SWITCHBOARD_PUBLIC_URL`, since behind a
//! proxy the listen address is not what Twilio called. Without it the URL
//! Twilio signed cannot be known (the scheme and host a TLS proxy saw are
//! gone), so the handler refuses to guess.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

pub use super::inbox::Keyword;

/// What a Twilio webhook says.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A status change of a message we sent.
    Status {
        message_sid: String,
        /// Our event name: `delivered`, `failed`, `opened` (WhatsApp read)…
        event: &'static str,
        provider_status: String,
        error_code: Option<String>,
    },
    /// A person wrote to one of the account's numbers.
    Inbound {
        /// Twilio's id of the incoming message: a replay carries the same.
        message_sid: Option<String>,
        from: String,
        body: String,
        keyword: Option<Keyword>,
    },
    /// Something we record nothing for (queued, sending, sent: we know).
    Ignored,
}

/// Twilio's default opt-out and opt-in keywords.
const STOP_WORDS: [&str; 6] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
const START_WORDS: [&str; 3] = ["START", "YES", "UNSTOP"];

/// Twilio's HMAC over the URL and the sorted form parameters.
fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Checks `X-Twilio-Signature` for a form POST to `url`, in constant time.
pub fn signature_is_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    match BASE64.decode(signature.trim()) {
        Ok(expected) => mac(auth_token, url, params).verify_slice(&expected).is_ok(),
        Err(_) => false,
    }
}

/// The signature Twilio would send.
#[cfg(test)]
fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    BASE64.encode(mac(auth_token, url, params).finalize().into_bytes())
}

pub fn parse(params: &[(String, String)]) -> Notice {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Some(status) = get("MessageStatus").or_else(|| get("SmsStatus")) {
        let event = match status.as_str() {
            "delivered" => Some("delivered"),
            "undelivered" | "failed" => Some("failed"),
            "read" => Some("opened"),
            "received" => None,
            _ => return Notice::Ignored,
        };
        if let (Some(event), Some(message_sid)) =
            (event, get("MessageSid").or_else(|| get("SmsSid")))
        {
            return Notice::Status {
                message_sid,
                event,
                provider_status: status,
                error_code: get("ErrorCode").filter(|c| !c.is_empty()),
            };
        }
    }
    match (get("From"), get("Body")) {
        (Some(from), Some(body)) => {
            let word = body.trim().to_ascii_uppercase();
            let keyword = if STOP_WORDS.contains(&word.as_str()) {
                Some(Keyword::Stop)
            } else if START_WORDS.contains(&word.as_str()) {
                Some(Keyword::Start)
            } else {
                None
            };
            Notice::Inbound {
                message_sid: get("MessageSid").or_else(|| get("SmsMessageSid")),
                from,
                body,
                keyword,
            }
        }
        _ => Notice::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signatures_match_twilios_documented_examples() {
        // The worked example of Twilio's "Validating requests" documentation
        // (two versions of it, with different caller numbers).
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = |caller: &str| {
            p(&[
                ("CallSid", "CA1234567890ABCDE"),
                ("Caller", caller),
                ("Digits", "1234"),
                ("From", caller),
                ("To", "+18005551212"),
            ])
        };
        assert_eq!(
            sign("12345", url, &params("+12349013030")),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert_eq!(
            sign("12345", url, &params("+14158675310")),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        let (params, sig) = (params("+12349013030"), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(signature_is_valid("12345", url, &params, sig));
        assert!(!signature_is_valid("wrong", url, &params, sig));
        assert!(!signature_is_valid(
            "12345",
            "https://mycompany.com/other",
            &params,
            sig
        ));
        assert!(!signature_is_valid("12345", url, &params, "not base64!"));
    }

    #[test]
    fn statuses_and_keywords() {
        assert!(matches!(
            parse(&p(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")])),
            Notice::Status {
                event: "delivered",
                ..
            }
        ));
        assert!(matches!(
            parse(&p(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30003")
            ])),
            Notice::Status {
                event: "failed",
                error_code: Some(_),
                ..
            }
        ));
        assert_eq!(
            parse(&p(&[("MessageSid", "SM1"), ("MessageStatus", "sent")])),
            Notice::Ignored
        );
        assert!(matches!(
            parse(&p(&[
                ("MessageSid", "SM2"),
                ("SmsStatus", "received"),
                ("From", "+1415"),
                ("Body", " stop ")
            ])),
            Notice::Inbound {
                keyword: Some(Keyword::Stop),
                ..
            }
        ));
        assert!(matches!(
            parse(&p(&[("From", "+1415"), ("Body", "Yes")])),
            Notice::Inbound {
                keyword: Some(Keyword::Start),
                ..
            }
        ));
    }
}
