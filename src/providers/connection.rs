//! Connection tests: what a provider's answer to its cheapest authenticated
//! read ([`super::Provider::check_connection`]) says about an account.
//!
//! Three verdicts, because "it did not work" has two meanings that call for
//! opposite actions: the provider *refused* (401/403, a key without the
//! permission to send, a domain or number that is not in the account), and
//! only new settings fix it; or the provider *could not be asked* (a
//! timeout, 429, 5xx), and the same test may pass in a minute. Only the
//! first may mark an integration failed.
//!
//! This module never sees a secret: adapters hand it errors whose messages
//! are the provider's words, and [`scrub`] removes any secret a provider
//! echoed before a message is stored or shown.

use serde::Serialize;

use super::{ErrorKind, ProviderError};

/// What a connection test found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The provider accepted the credentials; what answered (an account,
    /// domain or number name, never a secret).
    Verified(String),
    /// The provider refused the credentials or the account's settings.
    Refused(ProviderError),
    /// No answer either way: trying again later may succeed.
    Inconclusive(ProviderError),
}

/// The verdict's machine-readable name, as the API and CLI give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Verified,
    Refused,
    Inconclusive,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Refused => "refused",
            Self::Inconclusive => "inconclusive",
        }
    }
}

impl Verdict {
    /// Reads an adapter's result: a retriable error says nothing about the
    /// credentials; any other error is a refusal.
    pub fn from_result(result: Result<String, ProviderError>) -> Self {
        match result {
            Ok(detail) => Self::Verified(detail),
            Err(e) if e.is_retriable() => Self::Inconclusive(e),
            Err(e) => Self::Refused(e),
        }
    }

    pub fn kind(&self) -> VerdictKind {
        match self {
            Self::Verified(_) => VerdictKind::Verified,
            Self::Refused(_) => VerdictKind::Refused,
            Self::Inconclusive(_) => VerdictKind::Inconclusive,
        }
    }

    /// What answered, or why not (`HTTP 401 [code] message`).
    pub fn message(&self) -> String {
        match self {
            Self::Verified(detail) => detail.clone(),
            Self::Refused(e) | Self::Inconclusive(e) => e.to_string(),
        }
    }
}

/// A connection test's failed read, as the adapter's own error classifier
/// left it, with refused credentials marked: a 401 or 403 to a read that
/// takes nothing but the credentials means the provider does not accept
/// them. Nothing was sent, so nothing is `maybe_sent`.
pub fn refusal(mut e: ProviderError) -> ProviderError {
    if matches!(e.status, Some(401 | 403)) {
        e.kind = ErrorKind::Permanent;
        e.credentials_refused = true;
    }
    e.maybe_sent = false;
    e
}

/// `message` with every secret in `secrets` replaced by `****`: a provider
/// may quote the key it refused, and the message is stored and shown.
/// Secrets shorter than four characters are left alone: replacing them
/// would mangle ordinary words and protect nothing.
pub fn scrub<'a>(message: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = message.to_string();
    for secret in secrets {
        if secret.chars().count() >= 4 {
            out = out.replace(secret, "****");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_unanswered_tests_are_told_apart() {
        let status = |s| ProviderError::from_status(s, None, "x".into(), None);
        assert_eq!(
            Verdict::from_result(Ok("acct".into())).kind(),
            VerdictKind::Verified
        );
        for s in [400, 401, 403, 404] {
            assert_eq!(
                Verdict::from_result(Err(refusal(status(s)))).kind(),
                VerdictKind::Refused,
                "{s}"
            );
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                Verdict::from_result(Err(refusal(status(s)))).kind(),
                VerdictKind::Inconclusive,
                "{s}"
            );
        }
        let timeout = ProviderError::ambiguous("timed out");
        assert_eq!(
            Verdict::from_result(Err(refusal(timeout))).kind(),
            VerdictKind::Inconclusive
        );
    }

    #[test]
    fn only_401_and_403_are_refused_credentials() {
        let e = refusal(ProviderError::from_status(401, None, "x".into(), None));
        assert!(e.credentials_refused && !e.is_retriable());
        let e = refusal(ProviderError::from_status(403, None, "x".into(), None));
        assert!(e.credentials_refused);
        let e = refusal(ProviderError::from_status(404, None, "x".into(), None));
        assert!(!e.credentials_refused && !e.is_retriable());
        let e = refusal(ProviderError::from_status(500, None, "x".into(), None));
        assert!(!e.credentials_refused && e.is_retriable() && !e.maybe_sent);
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        assert_eq!(
            scrub("Invalid key SG.abc.def given", ["SG.abc.def", "xy"]),
            "Invalid key **** given"
        );
        assert_eq!(scrub("xy stays", ["xy"]), "xy stays");
    }
}
