//! The simulation provider: accepts every message without sending anything.
//! Used in development and demos when `SWITCHBOARD_SIMULATE=true`, and only
//! as the last fallback, so a real account always wins when one is set up.

use std::time::Duration;

use async_trait::async_trait;

use super::{Accepted, Provider, ProviderError, SendRequest, SettingSpec};
use crate::domain::Channel;

pub const NAME: &str = "simulation";

// The simulation takes no settings, but it must say it serves every channel.
const SETTINGS: &[SettingSpec] = &[SettingSpec::optional("note")];

#[derive(Debug, Default)]
pub struct Simulation {
    /// Pretend the provider takes this long, to see concurrency at work.
    pub latency: Duration,
}

#[async_trait]
impl Provider for Simulation {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings(&self, _channel: Channel) -> &'static [SettingSpec] {
        SETTINGS
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut detail = serde_json::json!({"simulated": true});
        // An email shows the sender a real provider would have been given,
        // when one is configured (a connected `simulation` integration or
        // the fallback without settings may have none).
        if request.job.channel == Channel::Email
            && let Ok(s) = super::sender::sender(request)
        {
            detail["from"] = s.from.header().into();
            if let Some(r) = s.reply_to {
                detail["reply_to"] = r.into();
            }
        }
        Ok(Accepted {
            provider_message_id: Some(format!("sim-{}", request.job.id)),
            detail,
        })
    }

    /// Nothing to reach and no credentials: always connected.
    async fn check_connection(
        &self,
        _channel: Channel,
        _settings: &super::ProviderSettings,
    ) -> Result<String, ProviderError> {
        Ok("the simulation sends nothing and needs no credentials".into())
    }
}
