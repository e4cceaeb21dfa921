//! Agents' own provider accounts: connecting (the provider named or read
//! from a key's shape), listing (masked), enabling, disabling,
//! disconnecting, testing their credentials against the provider (verdict
//! stored), and loading the decrypted settings at send time.
//!
//! This is the only module that joins the keyring, the provider registry and
//! the `integrations` table. Plaintext secrets exist only in memory here and
//! in the adapters; they are never logged, returned or stored unencrypted.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::crypto::{Keyring, KeyringError};
use crate::domain::Channel;
use crate::providers::connection::scrub;
use crate::providers::{
    Provider, ProviderSettings, Registry, SplitSettings, Verdict, VerdictKind, key_shape,
    mask_secret, split_settings,
};
use crate::store::integrations::{IntegrationRow, TestRecord, Tested};
use crate::store::{self, StoreError};

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
    /// A connect with verification whose connection test did not pass:
    /// nothing was stored (HTTP 422 when refused, 502 when the provider
    /// could not be asked).
    #[error("{}: {message}; nothing was stored", not_verified(.verdict))]
    NotVerified {
        verdict: VerdictKind,
        message: String,
    },
    /// The integration was reconnected while it was being tested: the
    /// verdict was about settings it no longer has, and was not stored.
    #[error(
        "the {channel} integration of agent `{agent}` was changed while it was being tested; \
         test it again"
    )]
    ChangedDuringTest { agent: String, channel: Channel },
}

fn not_verified(verdict: &VerdictKind) -> &'static str {
    match verdict {
        VerdictKind::Refused => "the provider refused these settings",
        _ => "the provider could not be asked whether these settings work",
    }
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
    /// When a connection test last passed.
    pub verified_at: Option<DateTime<Utc>>,
    /// When the credentials were last tested, whatever the verdict.
    pub last_tested_at: Option<DateTime<Utc>>,
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
    let (provider, SplitSettings { config, secrets }) =
        validate(registry, channel, provider_name, settings)?;
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
            secrets_json
                .as_ref()
                .map(|plain| keyring.encrypt(id.as_bytes(), plain.as_bytes()))
        },
    )
    .await?;
    Ok(id)
}

/// Checks settings for `provider_name` on `channel` as a connect does: a
/// known provider, no credential shaped like another provider's, the
/// provider's keys. Returns the adapter and the settings split for storage.
fn validate(
    registry: &Registry,
    channel: Channel,
    provider_name: &str,
    settings: &Value,
) -> Result<(std::sync::Arc<dyn Provider>, SplitSettings), IntegrationError> {
    let provider = registry.get(provider_name).ok_or_else(|| {
        IntegrationError::Invalid(format!(
            "unknown provider `{provider_name}` for {channel} (known: {})",
            registry.names_for(channel).join(", ")
        ))
    })?;
    key_shape::check(provider.name(), settings).map_err(IntegrationError::Invalid)?;
    let split =
        split_settings(provider.as_ref(), channel, settings).map_err(IntegrationError::Invalid)?;
    Ok((provider, split))
}

/// The provider to connect: the one given, else the one a credential's
/// shape names (`SG.` SendGrid, `re_` Resend, `key-` Mailgun, `AC…`
/// Twilio; [`key_shape`]).
pub fn resolve_provider(
    registry: &Registry,
    channel: Channel,
    given: Option<&str>,
    settings: &Value,
) -> Result<String, IntegrationError> {
    if let Some(p) = given.map(str::trim).filter(|p| !p.is_empty()) {
        return Ok(p.to_string());
    }
    match key_shape::detect(settings).map_err(IntegrationError::Invalid)? {
        Some(p) => Ok(p.to_string()),
        None => Err(IntegrationError::Invalid(format!(
            "no provider given, and no key in the settings names one by its shape (`SG.` \
             SendGrid, `re_` Resend, `key-` Mailgun, `AC…` Twilio): name the provider (for \
             {channel}: {})",
            registry.names_for(channel).join(", ")
        ))),
    }
}

/// A connection test's result, as stored and shown. Never carries a secret:
/// the message is scrubbed of the integration's secret values.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub integration_id: Uuid,
    pub agent_id: String,
    pub channel: String,
    pub provider: String,
    pub priority: i32,
    pub verdict: VerdictKind,
    /// The integration's status after the test: `verified`, `failed`, or
    /// unchanged when the provider could not be asked.
    pub verification_status: String,
    /// What answered, or why the test did not pass.
    pub message: String,
    /// Whether the same test may pass later without new settings.
    pub retryable: bool,
    /// The provider refused the credentials themselves (not, say, a domain).
    pub credentials_refused: bool,
    pub tested_at: DateTime<Utc>,
}

impl TestReport {
    /// The verdict for people, as `integrations test` prints it.
    pub fn render(&self) -> String {
        let what = format!(
            "{} {} integration of agent {} ({})",
            self.provider, self.channel, self.agent_id, self.integration_id
        );
        match self.verdict {
            VerdictKind::Verified => {
                format!("verified: {what}\n  {}\n", self.message)
            }
            VerdictKind::Refused => format!(
                "refused: {what}\n  {}\n  marked failed; connect it again with settings \
                 that work\n",
                self.message
            ),
            VerdictKind::Inconclusive => format!(
                "could not tell: {what}\n  {}\n  the provider could not be asked; nothing \
                 changed (still {}); try again later\n",
                self.message, self.verification_status
            ),
        }
    }

    /// `switchboard integrations test`'s exit status: 0 verified, 1
    /// refused, 75 (EX_TEMPFAIL) when trying again later may pass.
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            VerdictKind::Verified => 0,
            VerdictKind::Refused => 1,
            VerdictKind::Inconclusive => 75,
        }
    }
}

/// The values of the settings `provider` keeps secret on `channel`.
fn secret_values<'a>(
    provider: &dyn Provider,
    channel: Channel,
    settings: &'a ProviderSettings,
) -> Vec<&'a str> {
    provider
        .settings(channel)
        .iter()
        .filter(|spec| spec.secret)
        .filter_map(|spec| settings.get(spec.key))
        .collect()
}

/// Runs the provider's connection test on `settings`; the verdict's
/// message is scrubbed of their secrets.
async fn run_check(
    provider: &dyn Provider,
    channel: Channel,
    settings: &ProviderSettings,
) -> (Verdict, String) {
    let verdict = Verdict::from_result(provider.check_connection(channel, settings).await);
    let message = scrub(
        &verdict.message(),
        secret_values(provider, channel, settings),
    );
    (verdict, message)
}

/// Tests the agent's integration in the slot (channel, priority) with its
/// provider's cheapest authenticated read, and stores the verdict:
/// verified (with `verified_at`), failed (with `last_error`), or, when the
/// provider could not be asked, only `last_error` and `last_tested_at`. A
/// disabled integration is tested too, so it can be checked before it is
/// enabled.
pub async fn test(
    pool: &Pool,
    keyring: &Keyring,
    registry: &Registry,
    agent_id: &str,
    (channel, priority): (Channel, i32),
) -> Result<TestReport, IntegrationError> {
    let not_found = || IntegrationError::NotFound {
        agent: agent_id.into(),
        channel,
    };
    let row = {
        let client = pool.get().await.map_err(StoreError::from)?;
        store::integrations::slot(&client, agent_id, (channel, priority))
            .await?
            .ok_or_else(not_found)?
    };
    let provider = registry.get(&row.provider).ok_or_else(|| {
        IntegrationError::Invalid(format!(
            "provider `{}` is not known to this switchboard",
            row.provider
        ))
    })?;
    let settings = ProviderSettings::new(decrypt(keyring, &row)?);
    // No pooled connection is held while the provider answers.
    let (verdict, message) = run_check(provider.as_ref(), channel, &settings).await;
    let record = match &verdict {
        Verdict::Verified(_) => TestRecord::Verified,
        Verdict::Refused(_) => TestRecord::Refused(&message),
        Verdict::Inconclusive(_) => TestRecord::Inconclusive(&message),
    };
    let client = pool.get().await.map_err(StoreError::from)?;
    let tested_at = store::integrations::record_test(&client, &row, record)
        .await?
        .ok_or_else(|| IntegrationError::ChangedDuringTest {
            agent: agent_id.into(),
            channel,
        })?;
    Ok(report(row, verdict, message, tested_at))
}

fn report(
    row: IntegrationRow,
    verdict: Verdict,
    message: String,
    tested_at: DateTime<Utc>,
) -> TestReport {
    let (status, retryable, credentials_refused) = match &verdict {
        Verdict::Verified(_) => ("verified".to_string(), false, false),
        Verdict::Refused(e) => ("failed".to_string(), false, e.credentials_refused),
        Verdict::Inconclusive(_) => (row.verification_status.clone(), true, false),
    };
    TestReport {
        integration_id: row.id,
        agent_id: row.agent_id,
        channel: row.channel,
        provider: row.provider,
        priority: row.priority,
        verdict: verdict.kind(),
        verification_status: status,
        message,
        retryable,
        credentials_refused,
        tested_at,
    }
}

/// Connects like [`connect_with`], but only after the provider accepted
/// the settings in a connection test: refused or untestable settings are
/// not stored at all ([`IntegrationError::NotVerified`]). The stored
/// integration is marked verified.
pub async fn connect_verified(
    pool: &Pool,
    keyring: &Keyring,
    registry: &Registry,
    request: ConnectRequest<'_>,
) -> Result<(Uuid, TestReport), IntegrationError> {
    let (provider, split) = validate(
        registry,
        request.channel,
        request.provider,
        request.settings,
    )?;
    let mut merged = split.config;
    merged.extend(split.secrets);
    let settings = ProviderSettings::new(merged);
    let (verdict, message) = run_check(provider.as_ref(), request.channel, &settings).await;
    if !matches!(verdict, Verdict::Verified(_)) {
        return Err(IntegrationError::NotVerified {
            verdict: verdict.kind(),
            message,
        });
    }
    let (agent_id, channel, priority) =
        (request.agent_id.trim(), request.channel, request.priority);
    let id = connect_with(pool, keyring, registry, request).await?;
    let client = pool.get().await.map_err(StoreError::from)?;
    let row = store::integrations::slot(&client, agent_id, (channel, priority))
        .await?
        .filter(|r| r.id == id)
        .ok_or_else(|| IntegrationError::ChangedDuringTest {
            agent: agent_id.into(),
            channel,
        })?;
    let tested_at = store::integrations::record_test(&client, &row, TestRecord::Verified)
        .await?
        .ok_or_else(|| IntegrationError::ChangedDuringTest {
            agent: agent_id.into(),
            channel,
        })?;
    Ok((id, report(row, verdict, message, tested_at)))
}

fn decrypt(keyring: &Keyring, row: &IntegrationRow) -> Result<Map<String, Value>, KeyringError> {
    let mut merged = row.config.as_object().cloned().unwrap_or_default();
    if let Some((key_id, blob)) = &row.secrets {
        let plain = keyring.decrypt(key_id, row.id.as_bytes(), blob)?;
        let secrets: Map<String, Value> =
            serde_json::from_slice(&plain).map_err(|_| KeyringError::Undecryptable)?;
        merged.extend(secrets);
    }
    Ok(merged)
}

fn view(
    keyring: &Keyring,
    registry: &Registry,
    (row, tested): (IntegrationRow, Tested),
) -> IntegrationView {
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
        verified_at: tested.verified_at,
        last_tested_at: tested.last_tested_at,
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
    let rows = store::integrations::list_tested(&client, agent_id).await?;
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
