//! Agents' own provider accounts: connecting, listing (masked), enabling,
//! disabling, disconnecting, and loading the decrypted settings at send time.
//!
//! This is the only module that joins the keyring, the provider registry and
//! the `integrations` table (`keys` re-encrypts rows, through [`binding`]). Plaintext secrets exist only in memory here and
//! in the adapters; they are never logged, returned or stored unencrypted.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::crypto::{Keyring, KeyringError, SecretBinding};
use crate::domain::Channel;
use crate::providers::{ProviderSettings, Registry, SplitSettings, mask_secret, split_settings};
use crate::store::{self, StoreError, integrations::IntegrationRow};

#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    /// The caller's input is wrong: say what to fix (HTTP 422, CLI exit 2).
    #[error("{0}")]
    Invalid(String),
    #[error("agent `{agent}` has no {channel} integration")]
    NotFound { agent: String, channel: Channel },
    #[error(transparent)]
    Key(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An integration as shown to people: secrets masked.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrationView {
    pub id: Uuid,
    pub agent_id: String,
    pub channel: String,
    pub provider: String,
    pub settings: Map<String, Value>,
    pub active: bool,
    /// 0: primary; above: a backup (failover order).
    pub priority: i32,
    pub verification_status: String,
    pub last_error: Option<String>,
    /// Where the provider should send delivery webhooks.
    pub webhook_path: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An active integration with its secrets decrypted, ready for an adapter.
#[derive(Debug, Clone)]
pub struct ActiveIntegration {
    pub id: Uuid,
    pub provider: String,
    pub settings: ProviderSettings,
}

/// Refuses `simulation` as an agent's integration unless simulation is
/// enabled. Checked again at send time; refused here so the mistake is seen
/// when it is made, not as failed jobs later.
pub fn check_provider_allowed(provider: &str, simulate: bool) -> Result<(), IntegrationError> {
    if provider == crate::providers::SIMULATION && !simulate {
        return Err(IntegrationError::Invalid(
            "`simulation` sends nothing: it can be an agent's integration only while \
             SWITCHBOARD_SIMULATE=true"
                .into(),
        ));
    }
    Ok(())
}

/// Connects (or replaces) an agent's integration, active.
pub async fn connect(
    pool: &Pool,
    keyring: &Keyring,
    registry: &Registry,
    agent_id: &str,
    channel: Channel,
    provider_name: &str,
    settings: &Value,
) -> Result<Uuid, IntegrationError> {
    connect_with(
        pool,
        keyring,
        registry,
        ConnectRequest {
            agent_id,
            channel,
            provider: provider_name,
            settings,
            active: true,
            priority: 0,
        },
    )
    .await
}

/// What to connect, for [`connect_with`].
pub struct ConnectRequest<'a> {
    pub agent_id: &'a str,
    pub channel: Channel,
    pub provider: &'a str,
    pub settings: &'a Value,
    /// Connected disabled when false: the settings are checked and stored,
    /// and no job uses them until it is enabled.
    pub active: bool,
    /// 0: the channel's primary account; 1, 2, …: backups tried in that
    /// order when the primary cannot send (README, "Provider failover").
    pub priority: i32,
}

/// Validates the settings against the provider's keys (unknown and missing
/// keys refused), encrypts the secrets and stores the integration.
pub async fn connect_with(
    pool: &Pool,
    keyring: &Keyring,
    registry: &Registry,
    request: ConnectRequest<'_>,
) -> Result<Uuid, IntegrationError> {
    let ConnectRequest {
        agent_id,
        channel,
        provider: provider_name,
        settings,
        active,
        priority,
    } = request;
    if priority < 0 {
        return Err(IntegrationError::Invalid(
            "priority must be 0 (primary) or more (backup)".into(),
        ));
    }
    let agent_id = agent_id.trim();
    if agent_id.is_empty() {
        return Err(IntegrationError::Invalid(
            "agent id must not be empty".into(),
        ));
    }
    let provider = registry.get(provider_name).ok_or_else(|| {
        IntegrationError::Invalid(format!(
            "unknown provider `{provider_name}` for {channel} (known: {})",
            registry.names_for(channel).join(", ")
        ))
    })?;
    let SplitSettings { config, secrets } =
        split_settings(provider.as_ref(), channel, settings).map_err(IntegrationError::Invalid)?;
    let secrets_json = (!secrets.is_empty()).then(|| Value::Object(secrets).to_string());
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let id = store::integrations::upsert(
        &mut client,
        agent_id,
        (channel, priority),
        provider.name(),
        &Value::Object(config),
        active,
        |id| {
            let binding = SecretBinding {
                integration_id: id,
                agent_id,
                channel: channel.as_str(),
            };
            secrets_json
                .as_ref()
                .map(|plain| keyring.encrypt(&binding, plain.as_bytes()))
        },
    )
    .await?;
    Ok(id)
}

/// What a row's secrets are bound to: the row's id, agent and channel, so
/// that a row moved to another agent or channel no longer decrypts.
pub fn binding(row: &IntegrationRow) -> SecretBinding<'_> {
    SecretBinding {
        integration_id: row.id,
        agent_id: &row.agent_id,
        channel: &row.channel,
    }
}

fn decrypt(keyring: &Keyring, row: &IntegrationRow) -> Result<Map<String, Value>, KeyringError> {
    let mut merged = row.config.as_object().cloned().unwrap_or_default();
    if let Some((key_id, blob)) = &row.secrets {
        let plain = keyring.decrypt(key_id, &binding(row), blob)?;
        let secrets: Map<String, Value> =
            serde_json::from_slice(&plain).map_err(|_| KeyringError::Undecryptable)?;
        merged.extend(secrets);
    }
    Ok(merged)
}

fn view(keyring: &Keyring, registry: &Registry, row: IntegrationRow) -> IntegrationView {
    let channel: Option<Channel> = row.channel.parse().ok();
    let secret_keys: Vec<&str> = match (registry.get(&row.provider), channel) {
        (Some(p), Some(c)) => p
            .settings(c)
            .iter()
            .filter(|s| s.secret)
            .map(|s| s.key)
            .collect(),
        _ => Vec::new(),
    };
    let mut settings = row.config.as_object().cloned().unwrap_or_default();
    let mut last_error = row.last_error.clone();
    match decrypt(keyring, &row) {
        Ok(all) => {
            for (k, v) in all {
                if secret_keys.contains(&k.as_str()) || !settings.contains_key(&k) {
                    let masked = v.as_str().map(mask_secret).unwrap_or_else(|| "****".into());
                    settings.insert(k, masked.into());
                }
            }
        }
        Err(e) => last_error = Some(e.to_string()),
    }
    IntegrationView {
        webhook_path: format!("/webhooks/{}/{}", row.provider, row.id),
        id: row.id,
        agent_id: row.agent_id,
        channel: row.channel,
        provider: row.provider,
        settings,
        active: row.active,
        priority: row.priority,
        verification_status: row.verification_status,
        last_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

pub async fn list(
    pool: &Pool,
    keyring: &Keyring,
    registry: &Registry,
    agent_id: &str,
) -> Result<Vec<IntegrationView>, IntegrationError> {
    let client = pool.get().await.map_err(StoreError::from)?;
    let rows = store::integrations::list(&client, agent_id).await?;
    Ok(rows
        .into_iter()
        .map(|r| view(keyring, registry, r))
        .collect())
}

/// One integration, masked.
pub async fn show(
    pool: &Pool,
    keyring: &Keyring,
    registry: &Registry,
    agent_id: &str,
    channel: Channel,
) -> Result<IntegrationView, IntegrationError> {
    list(pool, keyring, registry, agent_id)
        .await?
        .into_iter()
        .find(|v| v.channel == channel.as_str())
        .ok_or_else(|| IntegrationError::NotFound {
            agent: agent_id.into(),
            channel,
        })
}

pub async fn set_active(
    pool: &Pool,
    agent_id: &str,
    channel: Channel,
    active: bool,
) -> Result<(), IntegrationError> {
    let client = pool.get().await.map_err(StoreError::from)?;
    if store::integrations::set_active(&client, agent_id, channel, active).await? {
        Ok(())
    } else {
        Err(IntegrationError::NotFound {
            agent: agent_id.into(),
            channel,
        })
    }
}

pub async fn disconnect(
    pool: &Pool,
    agent_id: &str,
    channel: Channel,
) -> Result<(), IntegrationError> {
    let client = pool.get().await.map_err(StoreError::from)?;
    if store::integrations::delete(&client, agent_id, channel).await? {
        Ok(())
    } else {
        Err(IntegrationError::NotFound {
            agent: agent_id.into(),
            channel,
        })
    }
}

/// Why an agent's integration exists but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UnusableIntegration {
    #[error("integration {id}: {source}")]
    Secrets { id: Uuid, source: KeyringError },
}

/// Decrypts an active integration's secrets for use.
pub fn activate(
    keyring: Option<&Keyring>,
    row: Option<IntegrationRow>,
) -> Result<Option<ActiveIntegration>, UnusableIntegration> {
    let Some(row) = row else {
        return Ok(None);
    };
    let settings = match keyring {
        None => Err(KeyringError::Missing),
        Some(k) => decrypt(k, &row),
    };
    match settings {
        Ok(s) => Ok(Some(ActiveIntegration {
            id: row.id,
            provider: row.provider,
            settings: ProviderSettings::new(s),
        })),
        Err(source) => Err(UnusableIntegration::Secrets { id: row.id, source }),
    }
}
