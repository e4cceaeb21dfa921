//! Provider adapters: one file per provider behind the small [`Provider`]
//! trait, and the registry that maps a provider name to its adapter.
//!
//! An adapter turns a validated [`SendJob`] plus an integration's settings
//! into exactly the request the provider's real API takes, and turns the
//! answer into a provider message id or a classified [`ProviderError`]. It
//! never retries, sleeps, logs secrets or touches the database: retry policy,
//! metrics and recording belong to the worker.
//!
//! Adding a provider is one new file (or folder, with its webhook parsing)
//! and one line in [`Registry::new`].

pub mod africastalking;
pub mod connection;
pub mod email;
mod error;
mod http;
pub mod key_shape;
pub mod mailgun;
pub mod meta;
pub mod postmark;
mod resend;
pub mod segments;
pub mod sender;
pub mod sendgrid;
pub mod ses;
mod settings;
mod simulation;
pub mod smtp;
mod twilio;
pub mod vapi;
mod verify;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

pub use connection::{Verdict, VerdictKind};
pub use error::{ErrorKind, ProviderError};
pub use settings::{ProviderSettings, SettingSpec, SplitSettings, mask_secret, split_settings};
pub use simulation::{NAME as SIMULATION, Simulation};
pub use verify::same_secret;

use crate::config::ProviderUrls;
use crate::domain::{Channel, SendJob};

/// Everything an adapter needs for one send.
#[derive(Debug)]
pub struct SendRequest<'a> {
    pub job: &'a SendJob,
    pub settings: &'a ProviderSettings,
    /// Where the provider should post delivery status, when switchboard has a
    /// public URL (`SWITCHBOARD_PUBLIC_URL/webhooks/{provider}/{integration}`).
    pub status_callback: Option<String>,
    /// The job id: passed to providers that deduplicate on a key, so that a
    /// resend after a crash is not delivered twice.
    pub idempotency_key: String,
    /// Whose account sends: with [`Self::branding`], what
    /// [`sender::sender`] decides an email's From and Reply-To from.
    pub route: crate::domain::Route,
    /// The agent's branding, read with the claim.
    pub branding: sender::Branding,
}

/// The provider took the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The provider's id for the message. `None` only when the provider said
    /// yes but its answer could not be read: the message is still sent, and
    /// must not be sent again.
    pub provider_message_id: Option<String>,
    /// Anything worth keeping from the answer (provider status, segments).
    pub detail: serde_json::Value,
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The name used in integrations and webhook URLs (`twilio`, `resend`).
    fn name(&self) -> &'static str;

    /// The settings keys this provider takes for `channel`; empty when the
    /// provider does not serve that channel.
    fn settings(&self, channel: Channel) -> &'static [SettingSpec];

    /// Rules across keys that [`SettingSpec`] cannot express.
    fn check_settings(
        &self,
        _channel: Channel,
        _settings: &ProviderSettings,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Whether the provider deduplicates on [`SendRequest::idempotency_key`],
    /// so that repeating a request it may already have acted on cannot send
    /// the message twice. Without it, the worker does not retry a
    /// [`ProviderError::maybe_sent`] failure (README, "Delivery guarantees").
    fn deduplicates(&self) -> bool {
        false
    }

    /// Sends one message. One request, no retries.
    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError>;

    /// The provider's cheapest authenticated read (SendGrid `GET /v3/scopes`,
    /// Twilio `GET /Accounts/{sid}.json`…), run by `integrations test` and
    /// `POST …/test`: proves the credentials work without sending anything.
    /// `Ok` carries a short description of what answered (an account or
    /// domain name, never a secret).
    async fn check_connection(
        &self,
        _channel: Channel,
        _settings: &ProviderSettings,
    ) -> Result<String, ProviderError> {
        Err(ProviderError::misconfigured(format!(
            "{} has no connection test",
            self.name()
        )))
    }

    fn serves(&self, channel: Channel) -> bool {
        !self.settings(channel).is_empty()
    }
}

/// All adapters, by name.
#[derive(Clone)]
pub struct Registry {
    providers: HashMap<&'static str, Arc<dyn Provider>>,
}

impl Registry {
    pub fn new(http: reqwest::Client, urls: &ProviderUrls) -> Self {
        let all: Vec<Arc<dyn Provider>> = vec![
            Arc::new(Simulation::default()),
            Arc::new(twilio::Twilio::new(http.clone(), &urls.twilio)),
            Arc::new(resend::Resend::new(http.clone(), &urls.resend)),
            Arc::new(sendgrid::SendGrid::new(http.clone(), &urls.sendgrid)),
            Arc::new(mailgun::Mailgun::new(http.clone(), &urls.mailgun)),
            Arc::new(postmark::Postmark::new(http.clone(), &urls.postmark)),
            Arc::new(ses::Ses::new(http.clone(), urls.ses.as_deref())),
            Arc::new(smtp::Smtp::new(urls.extra_root_certs.clone())),
            Arc::new(africastalking::AfricasTalking::new(
                http.clone(),
                &urls.africastalking,
            )),
            Arc::new(meta::Meta::new(http.clone(), &urls.whatsapp)),
            Arc::new(vapi::Vapi::new(http.clone(), &urls.vapi)),
        ];
        Self {
            providers: all.into_iter().map(|p| (p.name(), p)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.providers.get(name).cloned()
    }

    pub fn simulation(&self) -> Arc<dyn Provider> {
        self.get(simulation::NAME)
            .expect("the simulation provider is always registered")
    }

    /// Provider names that serve a channel, for error messages.
    pub fn names_for(&self, channel: Channel) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .providers
            .values()
            .filter(|p| p.serves(channel))
            .map(|p| p.name())
            .collect();
        names.sort_unstable();
        names
    }
}

/// A shared HTTP client: one connection pool per provider host, reused by
/// every job.
pub fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .pool_max_idle_per_host(256)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        // A provider API answers; it does not send us elsewhere. Following a
        // redirect would resend the body (with its credentials, for the
        // providers that take them as form fields) to a host we never chose.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client configuration is static and valid")
}

#[cfg(test)]
mod client_tests {
    use wiremock::matchers::any;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// A provider's redirect is an answer, not an instruction: the request
    /// (and the credentials in it) never goes to the other host.
    #[tokio::test]
    async fn the_provider_client_follows_no_redirect() {
        let elsewhere = MockServer::start().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200))
            .mount(&elsewhere)
            .await;
        let provider = MockServer::start().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(307).insert_header("location", elsewhere.uri().as_str()),
            )
            .mount(&provider)
            .await;
        let client = super::http_client(std::time::Duration::from_secs(30));
        let answer = client
            .post(provider.uri())
            .form(&[("api_key", "secret")])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 307);
        assert!(elsewhere.received_requests().await.unwrap().is_empty());
    }
}
