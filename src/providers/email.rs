//! What every email adapter needs the same way: the sender mailbox read from
//! an integration's `from_email` / `from_name`, in the shape each provider
//! takes (a `{email, name}` object or one `Name <address>` header value).
//!
//! It must never let a display name carry CR, LF or an unbalanced quote into
//! a header: names are cleaned here once, for every provider.

use super::{ProviderError, ProviderSettings, SendRequest};

/// Refuses a job that names a provider-side template, for the adapters that
/// send only subject and text or html: a permanent, misconfigured error that
/// says so, before any call.
pub fn refuse_template(request: &SendRequest<'_>, provider: &str) -> Result<(), ProviderError> {
    if request.job.content.template.is_none() {
        return Ok(());
    }
    Err(ProviderError {
        code: Some("invalid_template".into()),
        ..ProviderError::misconfigured(format!(
            "{provider} templates are not supported yet; send subject and text or html"
        ))
    })
}

/// What one email provider's webhook event means for switchboard: the same
/// for SendGrid, Mailgun and Postmark once each has parsed its own format.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailNotice {
    /// The event's own id (SendGrid `sg_event_id`, Mailgun `event-data.id`,
    /// Postmark's record id), the same on the provider's retries: the
    /// inbox de-duplicates on it.
    pub event_id: String,
    /// The provider's id of the message, as the send stored it.
    pub message_id: String,
    /// Our event name.
    pub event: &'static str,
    /// The recipient the event is about.
    pub recipient: Option<String>,
    /// The opt-out this event implies.
    pub opt_out: Option<&'static str>,
    /// Recorded as the message's `last_error` when it moves.
    pub error: Option<String>,
    pub detail: serde_json::Value,
}

/// A sender: address, and display name when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub email: String,
    pub name: Option<String>,
}

impl Mailbox {
    /// The integration's sender. `from_email` may already be in
    /// `Name <address>` form (the platform's `EMAIL_FROM`); a `from_name`
    /// setting wins over a name written there.
    pub fn from_settings(s: &ProviderSettings) -> Result<Self, ProviderError> {
        let raw = s.require("from_email")?.trim();
        let (written_name, email) = match (raw.rfind('<'), raw.rfind('>')) {
            (Some(open), Some(close)) if open < close => {
                (Some(&raw[..open]), raw[open + 1..close].trim())
            }
            _ => (None, raw),
        };
        if email.is_empty() || !email.contains('@') {
            return Err(ProviderError::misconfigured(
                "setting `from_email` is not an email address",
            ));
        }
        let name = s
            .get("from_name")
            .or(written_name)
            .map(clean_name)
            .filter(|n| !n.is_empty());
        Ok(Self {
            email: email.to_string(),
            name,
        })
    }

    /// `"Name" <address>`, or the bare address: the `From` header value for
    /// providers that take one string (Mailgun, Postmark).
    pub fn header(&self) -> String {
        match &self.name {
            Some(name) => format!(
                "\"{}\" <{}>",
                name.replace('\\', "\\\\").replace('"', "\\\""),
                self.email
            ),
            None => self.email.clone(),
        }
    }
}

/// `region`, when given, is `us` or `eu` (SendGrid, Mailgun).
pub fn check_region(provider: &str, s: &ProviderSettings) -> Result<(), String> {
    match s.get("region").map(str::to_ascii_lowercase).as_deref() {
        None | Some("us" | "eu") => Ok(()),
        Some(_) => Err(format!("{provider} `region` must be `us` or `eu`")),
    }
}

/// The API root for an integration: `eu` for `region: "eu"`, unless the
/// configured base URL is not the provider's default `us` one (a proxy or
/// a test mock), which then serves every region.
pub fn regional_base<'a>(
    configured: &'a str,
    us: &str,
    eu: &'static str,
    s: &ProviderSettings,
) -> &'a str {
    match s.get("region") {
        Some(r) if r.eq_ignore_ascii_case("eu") && configured == us => eu,
        _ => configured,
    }
}

/// A display name without control characters, angle brackets or the quotes
/// a hand-written `EMAIL_FROM` may put around it.
pub(crate) fn clean_name(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_control() && !matches!(c, '<' | '>'))
        .collect::<String>()
        .trim()
        .trim_matches('"')
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    fn settings(pairs: &[(&str, &str)]) -> ProviderSettings {
        let m: Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        ProviderSettings::new(m)
    }

    #[test]
    fn the_sender_comes_from_either_form() {
        let m = Mailbox::from_settings(&settings(&[("from_email", "Acme <no-reply@acme.test>")]))
            .unwrap();
        assert_eq!(m.email, "no-reply@acme.test");
        assert_eq!(m.name.as_deref(), Some("Acme"));
        let m = Mailbox::from_settings(&settings(&[
            ("from_email", "jane@realty.test"),
            ("from_name", "Jane \"JR\" Realty\r\nBcc: x@y.z"),
        ]))
        .unwrap();
        assert_eq!(m.email, "jane@realty.test");
        assert_eq!(
            m.header(),
            r#""Jane \"JR\" RealtyBcc: x@y.z" <jane@realty.test>"#
        );
        let m = Mailbox::from_settings(&settings(&[("from_email", "a@b.co")])).unwrap();
        assert_eq!((m.name.clone(), m.header()), (None, "a@b.co".to_string()));
        assert!(Mailbox::from_settings(&settings(&[("from_email", "nobody")])).is_err());
    }
}
