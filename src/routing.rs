//! Route resolution: which provider account sends a job.
//!
//! The agent's active integration for the channel, else the platform's
//! account from the environment, else the simulation (only when
//! `SWITCHBOARD_SIMULATE=true`), else the job fails with `no_provider`. A
//! message is never reported sent without a real route. When the chosen
//! account cannot send, the worker fails over to the next candidate
//! (worker::failover) through [`Router::integration`] and
//! [`Router::platform`].

use std::collections::HashMap;
use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::PlatformAccounts;
use crate::crypto::Keyring;
use crate::domain::{Channel, Route, SendJob};
use crate::integrations::{self, UnusableIntegration};
use crate::providers::{Provider, ProviderSettings, Registry};
use crate::store::integrations::IntegrationRow;

/// The chosen provider account for one job.
#[derive(Clone)]
pub struct ResolvedRoute {
    pub route: Route,
    pub provider: Arc<dyn Provider>,
    pub integration_id: Option<Uuid>,
    pub settings: ProviderSettings,
}

impl std::fmt::Debug for ResolvedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedRoute")
            .field("route", &self.route)
            .field("provider", &self.provider.name())
            .field("integration_id", &self.integration_id)
            .finish()
    }
}

/// Why no account can send a job. Each is a permanent failure of the job.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no provider is configured for {0} (no agent integration, no platform account, simulation off)"
    )]
    NoProvider(Channel),
    #[error(
        "integration {integration_id} names provider `{provider}`, which cannot send {channel}"
    )]
    UnsupportedProvider {
        integration_id: Uuid,
        provider: String,
        channel: Channel,
    },
    #[error(
        "integration {integration_id} is the simulation, which sends nothing, and simulation is off (SWITCHBOARD_SIMULATE)"
    )]
    SimulationOff { integration_id: Uuid },
    #[error(transparent)]
    Unusable(#[from] UnusableIntegration),
}

impl RouteError {
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::NoProvider(_) => "no_provider",
            RouteError::UnsupportedProvider { .. } => "unsupported_provider",
            RouteError::SimulationOff { .. } => "simulation_off",
            RouteError::Unusable(_) => "integration_unusable",
        }
    }
}

pub struct Router {
    registry: Registry,
    keyring: Option<Keyring>,
    platform: HashMap<Channel, (&'static str, ProviderSettings)>,
    simulate: bool,
}

impl Router {
    pub fn new(
        registry: Registry,
        keyring: Option<Keyring>,
        accounts: &PlatformAccounts,
        simulate: bool,
    ) -> Self {
        Self {
            platform: platform_accounts(accounts),
            registry,
            keyring,
            simulate,
        }
    }

    /// Channels the platform itself has an account for.
    pub fn platform_channels(&self) -> Vec<Channel> {
        let mut c: Vec<_> = self.platform.keys().copied().collect();
        c.sort_by_key(|c| c.as_str());
        c
    }

    /// Picks the account for `job`, given the agent's active integration
    /// for the channel as read with the claim.
    pub fn resolve(
        &self,
        job: &SendJob,
        own: Option<IntegrationRow>,
    ) -> Result<ResolvedRoute, RouteError> {
        if let Some(own) = own {
            return self.integration(job, own);
        }
        if let Some(platform) = self.platform(job) {
            return Ok(platform);
        }
        if self.simulate {
            return Ok(ResolvedRoute {
                route: Route::Simulation,
                provider: self.registry.simulation(),
                integration_id: None,
                settings: ProviderSettings::default(),
            });
        }
        Err(RouteError::NoProvider(job.channel))
    }

    /// The route through one of the agent's integrations (its primary, or a
    /// backup when failing over).
    pub fn integration(
        &self,
        job: &SendJob,
        row: IntegrationRow,
    ) -> Result<ResolvedRoute, RouteError> {
        let own = integrations::activate(self.keyring.as_ref(), Some(row))?
            .expect("a row activates to an integration");
        let provider = match self
            .registry
            .get(&own.provider)
            .filter(|p| p.serves(job.channel))
        {
            Some(p) => p,
            None => {
                return Err(RouteError::UnsupportedProvider {
                    integration_id: own.id,
                    provider: own.provider,
                    channel: job.channel,
                });
            }
        };
        // A connected `simulation` is still only a simulation: recorded
        // as such, and refused when simulation is off, so that a message
        // is never reported sent by an agent's account that sent nothing.
        let route = if provider.name() == crate::providers::SIMULATION {
            if !self.simulate {
                return Err(RouteError::SimulationOff {
                    integration_id: own.id,
                });
            }
            Route::Simulation
        } else {
            Route::Agent
        };
        Ok(ResolvedRoute {
            route,
            provider,
            integration_id: Some(own.id),
            settings: own.settings,
        })
    }

    /// The platform's account for the job's channel, if the environment
    /// configures one.
    pub fn platform(&self, job: &SendJob) -> Option<ResolvedRoute> {
        let (name, settings) = self.platform.get(&job.channel)?;
        Some(ResolvedRoute {
            route: Route::Platform,
            provider: self.registry.get(name)?,
            integration_id: None,
            settings: settings.clone(),
        })
    }
}

/// The platform's accounts, in the same settings vocabulary as integrations,
/// for the channels the environment fully configures.
fn platform_accounts(a: &PlatformAccounts) -> HashMap<Channel, (&'static str, ProviderSettings)> {
    let mut routes = HashMap::new();
    let settings = |pairs: Vec<(&str, Option<String>)>| {
        let map: Map<String, Value> = pairs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), Value::String(v))))
            .collect();
        ProviderSettings::new(map)
    };
    // One platform email account. With both keys set, Resend is it: it
    // deduplicates on the job id, so an ambiguous failure can be retried
    // there without sending twice (README, "Routing and integrations").
    let email_key = a
        .resend_api_key
        .as_ref()
        .map(|k| ("resend", k))
        .or_else(|| a.sendgrid_api_key.as_ref().map(|k| ("sendgrid", k)));
    if let (Some((provider, key)), Some(from)) = (email_key, &a.email_from) {
        routes.insert(
            Channel::Email,
            (
                provider,
                settings(vec![
                    ("api_key", Some(key.expose_secret().to_string())),
                    ("from_email", Some(from.clone())),
                ]),
            ),
        );
    }
    if let (Some(sid), Some(token)) = (&a.twilio_account_sid, &a.twilio_auth_token)
        && (a.twilio_phone_number.is_some() || a.twilio_messaging_service_sid.is_some())
    {
        routes.insert(
            Channel::Sms,
            (
                "twilio",
                settings(vec![
                    ("account_sid", Some(sid.clone())),
                    ("auth_token", Some(token.expose_secret().to_string())),
                    ("phone_number", a.twilio_phone_number.clone()),
                    (
                        "messaging_service_sid",
                        a.twilio_messaging_service_sid.clone(),
                    ),
                ]),
            ),
        );
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(resend: bool, sendgrid: bool) -> PlatformAccounts {
        PlatformAccounts {
            resend_api_key: resend.then(|| "re_platform_key".into()),
            sendgrid_api_key: sendgrid.then(|| "SG.platform_key".into()),
            email_from: Some("Acme <no-reply@acme.test>".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_platform_email_account_is_resend_else_sendgrid() {
        let provider = |a: &PlatformAccounts| {
            platform_accounts(a)
                .get(&Channel::Email)
                .map(|(name, s)| (*name, s.get("api_key").map(str::to_string)))
        };
        assert_eq!(
            provider(&accounts(true, true)),
            Some(("resend", Some("re_platform_key".into())))
        );
        assert_eq!(
            provider(&accounts(false, true)),
            Some(("sendgrid", Some("SG.platform_key".into())))
        );
        assert_eq!(provider(&accounts(false, false)), None);
        let no_from = PlatformAccounts {
            email_from: None,
            ..accounts(false, true)
        };
        assert_eq!(provider(&no_from), None);
    }
}
