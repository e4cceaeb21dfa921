//! Recipient addresses, parsed and normalised once at the edge.
//!
//! Everything behind the edge compares and stores addresses in their normal
//! form (lower-cased email, E.164 phone), so opt-out lookups and provider
//! requests agree on what "the same recipient" means. This module must never
//! accept an address it cannot normalise.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Channel;

/// A syntactically valid email address, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Accepts a bare address or one with a display name (`Bob <bob@x.com>`)
    /// and keeps only the bare address: opt-outs, sequence cancellations and
    /// providers must all see the same recipient, and a display name would
    /// otherwise carry whatever it holds (CR/LF included) into mail headers.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        let invalid = || format!("`{}` is not a valid email address", mask(trimmed));
        if trimmed.chars().any(char::is_control) {
            return Err(format!("{} (it contains a control character)", invalid()));
        }
        let parsed = trimmed
            .parse::<email_address::EmailAddress>()
            .map_err(|_| invalid())?;
        let bare = parsed.email();
        // The crate accepts a quoted local part with spaces; no provider we
        // serve does, so refuse it here rather than at the provider.
        if bare.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        Ok(Self(bare.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid phone number in E.164 form (`+14155551234`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber {
    e164: String,
    country: Option<String>,
    calling_code: u16,
}

impl PhoneNumber {
    /// Parses an international number. Without a country code there is no way
    /// to know which country a local number belongs to, so one is required.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        let trimmed = trimmed.strip_prefix("whatsapp:").unwrap_or(trimmed);
        let parsed = phonenumber::parse(None, trimmed).map_err(|_| {
            format!(
                "`{}` is not a phone number in international form (+country code)",
                mask(trimmed)
            )
        })?;
        if !phonenumber::is_valid(&parsed) {
            return Err(format!("`{}` is not a valid phone number", mask(trimmed)));
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        let country = parsed.country().id().map(|id| id.as_ref().to_string());
        let calling_code = parsed.code().value();
        Ok(Self {
            e164,
            country,
            calling_code,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// ISO 3166 region the number belongs to, when the numbering plan says.
    pub fn country(&self) -> Option<&str> {
        self.country.as_deref()
    }

    /// The country calling code (`1` for the US and Canada, `61` for
    /// Australia): the first digits of the E.164 form.
    pub fn calling_code(&self) -> u16 {
        self.calling_code
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.e164
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.e164)
    }
}

/// Whom a message goes to: the channel decides which kind of address it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    Email(EmailAddress),
    Phone(PhoneNumber),
}

impl Recipient {
    pub fn parse(channel: Channel, raw: &str) -> Result<Self, String> {
        match channel {
            Channel::Email => EmailAddress::parse(raw).map(Recipient::Email),
            Channel::Sms | Channel::Whatsapp | Channel::Voice => {
                PhoneNumber::parse(raw).map(Recipient::Phone)
            }
        }
    }

    /// An address of either kind as stored, when the channel is not known
    /// (a sequence spans channels): a phone number in E.164, else an email
    /// address, else as given (it then matches nothing stored).
    pub fn normalise_any(raw: &str) -> String {
        PhoneNumber::parse(raw)
            .map(|p| p.as_str().to_string())
            .or_else(|_| EmailAddress::parse(raw).map(|e| e.as_str().to_string()))
            .unwrap_or_else(|_| raw.to_string())
    }

    /// The normalised address, as stored in Postgres and compared for opt-outs.
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Email(e) => e.as_str(),
            Recipient::Phone(p) => p.as_str(),
        }
    }

    /// A form safe for logs: enough to tell recipients apart while debugging,
    /// never the whole address.
    pub fn masked(&self) -> String {
        mask(self.as_str())
    }
}

/// Keeps the first two and last two characters of an address, so that logs
/// and error messages never carry a full recipient.
pub fn mask(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    // A hostile value can be any length; what we echo of it must not be
    // (it ends up in dead-letter headers, events and logs).
    const MAX_STARS: usize = 16;
    if chars.len() - 4 > MAX_STARS {
        return format!(
            "{head}{}{tail} ({} characters)",
            "*".repeat(MAX_STARS),
            chars.len()
        );
    }
    format!("{head}{}{tail}", "*".repeat(chars.len() - 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_name_is_dropped_so_opt_outs_match_the_bare_address() {
        for raw in ["Bob <Bob@Example.com>", "\"Bob Smith\" <bob@example.com>"] {
            assert_eq!(
                EmailAddress::parse(raw).unwrap().as_str(),
                "bob@example.com",
                "{raw}"
            );
        }
    }

    #[test]
    fn control_characters_never_reach_a_header() {
        for raw in [
            "Bob\r\nBcc: eve@evil.com <bob@example.com>",
            "bob@exa\tmple.com",
            "bo\u{0}b@example.com",
        ] {
            assert!(EmailAddress::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn masking_a_huge_value_stays_short() {
        let huge = "x".repeat(140_000);
        assert!(mask(&huge).len() < 60, "{}", mask(&huge));
    }

    #[test]
    fn emails_are_lower_cased_and_validated() {
        assert_eq!(
            EmailAddress::parse(" Jane.Doe@Example.COM ")
                .unwrap()
                .as_str(),
            "jane.doe@example.com"
        );
        assert!(EmailAddress::parse("not-an-email").is_err());
        assert!(EmailAddress::parse("").is_err());
    }

    #[test]
    fn phones_are_normalised_to_e164() {
        let p = PhoneNumber::parse("+1 (415) 555-0123").unwrap();
        assert_eq!(p.as_str(), "+14155550123");
        assert_eq!(p.country(), Some("US"));
        let ke = PhoneNumber::parse("+254 712 345678").unwrap();
        assert_eq!(ke.as_str(), "+254712345678");
        assert_eq!(ke.country(), Some("KE"));
        assert_eq!(
            PhoneNumber::parse("whatsapp:+14155550123")
                .unwrap()
                .as_str(),
            "+14155550123"
        );
    }

    #[test]
    fn local_or_garbage_phones_are_rejected() {
        assert!(PhoneNumber::parse("4155550123").is_err());
        assert!(PhoneNumber::parse("hello").is_err());
        assert!(PhoneNumber::parse("+1 000").is_err());
    }

    #[test]
    fn errors_never_carry_the_full_address() {
        let err = EmailAddress::parse("secret-person-at-example").unwrap_err();
        assert!(!err.contains("secret-person-at-example"), "{err}");
    }

    #[test]
    fn masking_keeps_only_the_ends() {
        assert_eq!(mask("+14155550123"), "+1********23");
        assert_eq!(mask("abc"), "***");
    }
}
