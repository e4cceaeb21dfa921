//! Who an email is from: the one place that decides the From address, the
//! From display name and the Reply-To of every email, for every adapter.
//!
//! Three cases (issue 12, DESIGN.md "Sender identity"):
//! - the agent's own account ([`Route::Agent`]): the integration's own
//!   `from_email` / `from_name`;
//! - the platform's account and the agent has branding: the agent's
//!   `from_name`, else its `company_name`, as the display name on the
//!   platform's address (the platform's domain is the one that is verified
//!   with the provider, so the address itself never changes), and the
//!   agent's `reply_email` as Reply-To, so answers reach the agent;
//! - neither: the platform's defaults (`EMAIL_FROM`).
//!
//! A job's own `content.reply_to` wins over the agent's `reply_email`: the
//! job's author asked for it. This module must never put an address the
//! provider has not verified in From.

use serde_json::Value;

use super::email::{Mailbox, clean_name};
use super::{ProviderError, SendRequest};
use crate::domain::{EmailAddress, Route};

/// The agent's branding columns (`agents.from_name`, `company_name`,
/// `reply_email`), read with the claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Branding {
    pub from_name: Option<String>,
    pub company_name: Option<String>,
    pub reply_email: Option<EmailAddress>,
}

impl Branding {
    /// From the `agents` row as JSON (`row_to_json`). Blank values count as
    /// unset; a `reply_email` that no longer parses is ignored rather than
    /// failing the send (the API validates it on the way in).
    pub fn from_agent_row(row: Option<&Value>) -> Self {
        let text = |k: &str| {
            row.and_then(|r| r.get(k))
                .and_then(Value::as_str)
                .map(clean_name)
                .filter(|s| !s.is_empty())
        };
        Self {
            from_name: text("from_name"),
            company_name: text("company_name"),
            reply_email: row
                .and_then(|r| r.get("reply_email"))
                .and_then(Value::as_str)
                .and_then(|s| EmailAddress::parse(s).ok()),
        }
    }

    fn is_empty(&self) -> bool {
        self.from_name.is_none() && self.company_name.is_none() && self.reply_email.is_none()
    }
}

/// The decided sender of one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub from: Mailbox,
    pub reply_to: Option<String>,
}

/// Decides the sender of `request`'s email (see the module comment).
pub fn sender(request: &SendRequest<'_>) -> Result<Sender, ProviderError> {
    let account = Mailbox::from_settings(request.settings)?;
    let job_reply_to = request
        .job
        .content
        .reply_to
        .as_ref()
        .map(|r| r.as_str().to_string());
    let branding = &request.branding;
    Ok(match request.route {
        Route::Platform if !branding.is_empty() => Sender {
            from: Mailbox {
                name: branding
                    .from_name
                    .clone()
                    .or_else(|| branding.company_name.clone())
                    .or(account.name),
                email: account.email,
            },
            reply_to: job_reply_to.or_else(|| {
                branding
                    .reply_email
                    .as_ref()
                    .map(|r| r.as_str().to_string())
            }),
        },
        // The agent's own account speaks for itself, and the platform
        // without branding (or the simulation) uses its defaults.
        Route::Agent | Route::Platform | Route::Simulation => Sender {
            from: account,
            reply_to: job_reply_to,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SendJob;
    use crate::providers::ProviderSettings;
    use serde_json::{Map, json};

    fn job(reply_to: Option<&str>) -> SendJob {
        let mut j = json!({
            "id": "7f1c1f5e-3c2a-4a43-9a77-2b4f4b1f0a11",
            "agent_id": "agent-1",
            "channel": "email",
            "category": "transactional",
            "to": "buyer@example.com",
            "subject": "Hi",
            "text": "Hello"
        });
        if let Some(r) = reply_to {
            j["reply_to"] = r.into();
        }
        SendJob::parse(&serde_json::to_vec(&j).unwrap()).unwrap()
    }

    fn settings(pairs: &[(&str, &str)]) -> ProviderSettings {
        let m: Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        ProviderSettings::new(m)
    }

    fn decide(route: Route, s: &ProviderSettings, agent: Value, reply_to: Option<&str>) -> Sender {
        let job = job(reply_to);
        sender(&SendRequest {
            job: &job,
            settings: s,
            status_callback: None,
            idempotency_key: String::new(),
            route,
            branding: Branding::from_agent_row(Some(&agent)),
        })
        .unwrap()
    }

    fn agent() -> Value {
        json!({"from_name": "Jane Realty", "company_name": "Realty Co",
               "reply_email": "jane@realty.test"})
    }

    #[test]
    fn the_agents_own_account_uses_its_own_sender() {
        let own = settings(&[("from_email", "jane@own.test"), ("from_name", "Jane Own")]);
        let s = decide(Route::Agent, &own, agent(), None);
        assert_eq!(s.from.email, "jane@own.test");
        assert_eq!(s.from.name.as_deref(), Some("Jane Own"));
        // The agent's branding is for the platform's account only.
        assert_eq!(s.reply_to, None);
    }

    #[test]
    fn the_platform_account_carries_the_agents_branding() {
        let platform = settings(&[("from_email", "Platform <no-reply@platform.test>")]);
        let s = decide(Route::Platform, &platform, agent(), None);
        assert_eq!(s.from.email, "no-reply@platform.test");
        assert_eq!(s.from.name.as_deref(), Some("Jane Realty"));
        assert_eq!(s.reply_to.as_deref(), Some("jane@realty.test"));

        // No from_name: the company name; a job's reply_to wins.
        let s = decide(
            Route::Platform,
            &platform,
            json!({"company_name": "Realty Co", "from_name": "  ",
                   "reply_email": "jane@realty.test"}),
            Some("desk@realty.test"),
        );
        assert_eq!(s.from.name.as_deref(), Some("Realty Co"));
        assert_eq!(s.reply_to.as_deref(), Some("desk@realty.test"));

        // Only a reply_email: the platform's own name stays.
        let s = decide(
            Route::Platform,
            &platform,
            json!({"reply_email": "jane@realty.test"}),
            None,
        );
        assert_eq!(s.from.name.as_deref(), Some("Platform"));
        assert_eq!(s.reply_to.as_deref(), Some("jane@realty.test"));
    }

    #[test]
    fn without_branding_the_platform_defaults_apply() {
        let platform = settings(&[("from_email", "Platform <no-reply@platform.test>")]);
        let s = decide(
            Route::Platform,
            &platform,
            json!({"company_name": null, "reply_email": null}),
            None,
        );
        assert_eq!(
            s,
            Sender {
                from: Mailbox {
                    email: "no-reply@platform.test".into(),
                    name: Some("Platform".into()),
                },
                reply_to: None,
            }
        );
    }

    #[test]
    fn branding_names_cannot_inject_headers() {
        let b = Branding::from_agent_row(Some(
            &json!({"from_name": "Jane\r\nBcc: x@y.z", "reply_email": "not an address"}),
        ));
        assert_eq!(b.from_name.as_deref(), Some("JaneBcc: x@y.z"));
        assert_eq!(b.reply_email, None);
    }
}
