//! How a provider call failed, and whether trying again can help.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Trying again later may succeed: the network, a timeout, 408, 429, 5xx,
    /// or a provider code documented as "safe to retry".
    Transient,
    /// The same request will fail the same way: bad recipient, bad
    /// credentials, content refused.
    Permanent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The HTTP status, when the provider answered at all.
    pub status: Option<u16>,
    /// The provider's own error code (Twilio `21211`, Resend `validation_error`).
    pub code: Option<String>,
    /// The provider's message, or ours when it did not answer. Never carries
    /// a credential.
    pub message: String,
    /// How long the provider asked us to wait.
    pub retry_after: Option<Duration>,
    /// The recipient refused messages (Twilio 21610 after STOP): no retry, and
    /// policy may add them to the opt-out list.
    pub recipient_opted_out: bool,
    /// The request may have reached the provider and been acted on although
    /// we got no clear answer (a timeout after the request was written, a
    /// 5xx from a gateway in front of it). Retrying such a failure can send
    /// the message twice unless the provider deduplicates on our key.
    pub maybe_sent: bool,
    /// The provider refused the account's credentials (Meta 190: a bad or
    /// expired access token): no message can go until the agent reconnects,
    /// so the worker marks the integration unverified with this error.
    pub credentials_refused: bool,
}

impl ProviderError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            status: None,
            code: None,
            message: message.into(),
            retry_after: None,
            recipient_opted_out: false,
            maybe_sent: false,
            credentials_refused: false,
        }
    }

    /// A transient failure after which the provider may have taken the
    /// message (see [`Self::maybe_sent`]).
    pub fn ambiguous(message: impl Into<String>) -> Self {
        Self {
            maybe_sent: true,
            ..Self::transient(message)
        }
    }

    /// The integration lacks something it needs. Not the message's fault, and
    /// no retry fixes it.
    pub fn misconfigured(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            status: None,
            code: Some("misconfigured".into()),
            message: message.into(),
            retry_after: None,
            recipient_opted_out: false,
            maybe_sent: false,
            credentials_refused: false,
        }
    }

    /// An HTTP error answer, classified by status alone: 408, 429 and 5xx can
    /// succeed later; any other 4xx will not. A 5xx other than 503 may come
    /// from a gateway after the provider took the message, so it is also
    /// `maybe_sent`; a 408, 429 or 503 says the request was not acted on.
    pub fn from_status(
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    ) -> Self {
        let kind = if status == 408 || status == 429 || status >= 500 {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        };
        Self {
            kind,
            status: Some(status),
            code,
            message,
            retry_after,
            recipient_opted_out: false,
            // 503 says the service did not take the request (overloaded,
            // down for maintenance); 500, 502 and 504 can come after the
            // provider (or the gateway before it) acted on it.
            maybe_sent: status >= 500 && status != 503,
            credentials_refused: false,
        }
    }

    pub fn is_retriable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The recipient cannot be reached on this channel at all, though
    /// another channel may reach them (a job's `fallback`): Twilio 21614 (a
    /// landline or other number that takes no SMS), 21612 (not reachable
    /// by SMS), 63003 (no WhatsApp on the number), Meta 131026 (message
    /// undeliverable: no WhatsApp, or an old client).
    pub fn is_unreachable_on_channel(&self) -> bool {
        const CODES: [&str; 4] = ["21614", "21612", "63003", "131026"];
        self.kind == ErrorKind::Permanent
            && self.code.as_deref().is_some_and(|c| CODES.contains(&c))
    }

    /// A permanent refusal of the account rather than of the message: its
    /// credentials (401, 403, a revoked token) or its standing (Twilio
    /// 20005 / 10001 "account not active", 30002 "account suspended"). Another
    /// account may send the same message; the same one will not until it is
    /// reconnected (worker::failover).
    pub fn is_account_level(&self) -> bool {
        const ACCOUNT_CODES: [&str; 3] = ["20005", "10001", "30002"];
        self.kind == ErrorKind::Permanent
            && !self.recipient_opted_out
            && (self.credentials_refused
                || matches!(self.status, Some(401 | 403))
                || self
                    .code
                    .as_deref()
                    .is_some_and(|c| ACCOUNT_CODES.contains(&c)))
    }

    /// A short machine-readable label for metrics and events.
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        }
    }

    pub fn to_detail(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind_label(),
            "http_status": self.status,
            "code": self.code,
            "message": self.message,
            "retry_after_ms": self.retry_after.map(|d| d.as_millis() as u64),
            "maybe_sent": self.maybe_sent,
        })
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(status) = self.status {
            write!(f, "HTTP {status} ")?;
        }
        if let Some(code) = &self.code {
            write!(f, "[{code}] ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProviderError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                ProviderError::from_status(s, None, String::new(), None).is_retriable(),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(
                !ProviderError::from_status(s, None, String::new(), None).is_retriable(),
                "{s}"
            );
        }
    }

    #[test]
    fn account_level_refusals_are_the_accounts_not_the_messages() {
        let e = |s, c: &str| ProviderError::from_status(s, Some(c.into()), String::new(), None);
        assert!(e(401, "20003").is_account_level());
        assert!(e(403, "").is_account_level());
        assert!(e(400, "20005").is_account_level());
        // A landline, a bad number: bad with every account.
        assert!(!e(400, "21614").is_account_level());
        assert!(!e(400, "21211").is_account_level());
        // Transient failures are the circuit breaker's to judge.
        assert!(!e(503, "").is_account_level());
    }

    #[test]
    fn display_carries_status_code_and_message() {
        let e = ProviderError::from_status(400, Some("21211".into()), "Invalid 'To'".into(), None);
        assert_eq!(e.to_string(), "HTTP 400 [21211] Invalid 'To'");
    }
}
