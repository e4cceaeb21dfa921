//! Which provider a credential's shape names: SendGrid keys start `SG.`,
//! Resend keys `re_`, legacy Mailgun keys `key-`, Twilio Account SIDs are
//! `AC` and 32 hex digits (the pattern of Twilio's OpenAPI). Used to connect
//! an account without naming its provider, and to refuse a key pasted under
//! the wrong provider with a message that says which one it looks like.
//!
//! Only credential settings are read ([`CREDENTIAL_KEYS`]): an SMTP
//! `password` may rightly be a SendGrid or Resend key (both relay SMTP with
//! their API key as the password). Keys with no telling shape (Postmark
//! tokens and VAPI keys are UUIDs, newer Mailgun keys are dashed hex groups) name
//! nothing, and nothing is refused for them.

use serde_json::Value;

/// The settings that hold a provider's own credential or account id.
pub const CREDENTIAL_KEYS: &[&str] = &[
    "api_key",
    "account_sid",
    "server_token",
    "auth_token",
    "access_token",
    "access_key_id",
    "secret_access_key",
];

/// The provider whose credentials look like `value`, if its shape says.
pub fn provider_for_key(value: &str) -> Option<&'static str> {
    let value = value.trim();
    if value.starts_with("SG.") {
        Some("sendgrid")
    } else if value.starts_with("re_") {
        Some("resend")
    } else if value.starts_with("key-") {
        Some("mailgun")
    } else if value.len() == 34
        && value.starts_with("AC")
        && value[2..].chars().all(|c| c.is_ascii_hexdigit())
    {
        Some("twilio")
    } else {
        None
    }
}

/// A credential setting whose shape names a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The setting (`api_key`, `account_sid`).
    pub key: &'static str,
    pub provider: &'static str,
}

/// Every credential setting in `settings` whose shape names a provider.
pub fn named_providers(settings: &Value) -> Vec<Named> {
    CREDENTIAL_KEYS
        .iter()
        .filter_map(|key| {
            let value = settings.get(*key)?.as_str()?;
            Some(Named {
                key,
                provider: provider_for_key(value)?,
            })
        })
        .collect()
}

/// The provider the settings' credentials name, for a connect without a
/// provider: `Ok(None)` when nothing names one, an error when two
/// credentials name different providers.
pub fn detect(settings: &Value) -> Result<Option<&'static str>, String> {
    let named = named_providers(settings);
    match named.as_slice() {
        [] => Ok(None),
        [first, rest @ ..] => match rest.iter().find(|n| n.provider != first.provider) {
            Some(other) => Err(format!(
                "`{}` looks like a {} key and `{}` like a {} one: name the provider",
                first.key,
                display_name(first.provider),
                other.key,
                display_name(other.provider)
            )),
            None => Ok(Some(first.provider)),
        },
    }
}

/// Refuses settings for `provider` whose credential clearly belongs to
/// another provider.
pub fn check(provider: &str, settings: &Value) -> Result<(), String> {
    match named_providers(settings)
        .into_iter()
        .find(|n| n.provider != provider)
    {
        Some(n) => Err(format!(
            "`{}` looks like a {} key, not a {} one: connect it with provider `{}`, or check \
             that the right key was pasted",
            n.key,
            display_name(n.provider),
            display_name(provider),
            n.provider
        )),
        None => Ok(()),
    }
}

/// How people write the provider's name.
fn display_name(provider: &str) -> &str {
    match provider {
        "sendgrid" => "SendGrid",
        "resend" => "Resend",
        "mailgun" => "Mailgun",
        "twilio" => "Twilio",
        "postmark" => "Postmark",
        "africastalking" => "Africa's Talking",
        "meta" => "Meta WhatsApp",
        "vapi" => "VAPI",
        "ses" => "Amazon SES",
        "smtp" => "SMTP",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SID: &str = "AC0123456789abcdef0123456789ABCDEF";

    #[test]
    fn shapes_name_their_providers() {
        assert_eq!(provider_for_key("SG.aBcD_eFgH.iJkLmNoP"), Some("sendgrid"));
        assert_eq!(provider_for_key("re_123abc"), Some("resend"));
        assert_eq!(
            provider_for_key("key-3ax6xnjp29jd6fds4gc373sgvjxteol0"),
            Some("mailgun")
        );
        assert_eq!(provider_for_key(SID), Some("twilio"));
        assert_eq!(provider_for_key(&format!(" {SID}\n")), Some("twilio"));
        // Almost: too short, not hex, an API key SID rather than an account.
        assert_eq!(provider_for_key("AC0123"), None);
        assert_eq!(provider_for_key("ACzz23456789abcdef0123456789abcdef"), None);
        assert_eq!(provider_for_key("SK0123456789abcdef0123456789abcdef"), None);
        // Shapeless keys name nothing.
        assert_eq!(
            provider_for_key("a1b2c3d4-0000-4000-8000-000000000000"),
            None
        );
        assert_eq!(provider_for_key("sg.lowercase"), None);
        assert_eq!(provider_for_key(""), None);
    }

    #[test]
    fn detection_reads_credentials_only() {
        assert_eq!(
            detect(&json!({"api_key": "SG.x.y", "from_email": "a@b.test"})),
            Ok(Some("sendgrid"))
        );
        assert_eq!(
            detect(&json!({"account_sid": SID, "auth_token": "t"})),
            Ok(Some("twilio"))
        );
        assert_eq!(detect(&json!({"server_token": "uuid-ish"})), Ok(None));
        // An SMTP password may be a SendGrid key: SendGrid relays SMTP.
        assert_eq!(
            detect(&json!({"host": "smtp.sendgrid.net", "password": "SG.x.y"})),
            Ok(None)
        );
        let two = detect(&json!({"api_key": "re_x", "account_sid": SID})).unwrap_err();
        assert!(two.contains("Resend") && two.contains("Twilio"), "{two}");
    }

    #[test]
    fn a_key_under_the_wrong_provider_is_refused_naming_the_right_one() {
        let e = check("resend", &json!({"api_key": "SG.abc.def"})).unwrap_err();
        assert!(e.contains("looks like a SendGrid key"), "{e}");
        assert!(e.contains("provider `sendgrid`"), "{e}");
        assert!(!e.contains("SG.abc"), "the key itself is not repeated: {e}");
        let e = check("postmark", &json!({"server_token": "key-abc"})).unwrap_err();
        assert!(e.contains("Mailgun"), "{e}");
        assert!(check("sendgrid", &json!({"api_key": "SG.abc.def"})).is_ok());
        assert!(check("twilio", &json!({"account_sid": SID})).is_ok());
        assert!(check("smtp", &json!({"password": "re_abc"})).is_ok());
        assert!(check("vapi", &json!({"api_key": "0b4c-uuid"})).is_ok());
    }
}
