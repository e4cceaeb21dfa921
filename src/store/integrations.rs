//! `integrations`: an agent's own provider account per channel.
//!
//! Rows hold non-secret config in `config` and the encrypted secrets in
//! `secrets_ciphertext`. This module never sees plaintext secrets: the caller
//! encrypts (bound to the row's id) before writing and decrypts after reading.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;
use crate::domain::Channel;

#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationRow {
    pub id: Uuid,
    pub agent_id: String,
    pub channel: String,
    pub provider: String,
    pub config: serde_json::Value,
    /// `(key id, nonce || ciphertext)`
    pub secrets: Option<(String, Vec<u8>)>,
    pub active: bool,
    /// 0 is the primary account for the channel; 1, 2, … are backups tried
    /// in that order when it cannot send (worker::failover).
    pub priority: i32,
    pub verification_status: String,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, agent_id, channel, provider, config, secrets_key_id, secrets_ciphertext,
                       active, verification_status, last_error, created_at, updated_at, priority";

fn from_row(r: &tokio_postgres::Row) -> IntegrationRow {
    from_row_at(r, 0).expect("the row has an integration")
}

/// Reads [`COLUMNS`] starting at column `at`; `None` when they are NULL
/// (an outer join that found no integration).
pub fn from_row_at(r: &tokio_postgres::Row, at: usize) -> Option<IntegrationRow> {
    let id: Option<Uuid> = r.get(at);
    let key_id: Option<String> = r.get(at + 5);
    let blob: Option<Vec<u8>> = r.get(at + 6);
    Some(IntegrationRow {
        id: id?,
        agent_id: r.get(at + 1),
        channel: r.get(at + 2),
        provider: r.get(at + 3),
        config: r.get(at + 4),
        secrets: key_id.zip(blob),
        active: r.get(at + 7),
        verification_status: r.get(at + 8),
        last_error: r.get(at + 9),
        created_at: r.get(at + 10),
        updated_at: r.get(at + 11),
        priority: r.get(at + 12),
    })
}

/// Connects (or replaces) the agent's integration for a channel at
/// `priority` (0: the primary). The row's
/// id is decided first, under a per-(agent, channel) lock, because the
/// secrets are encrypted bound to it. A replaced integration keeps its id, so
/// webhook URLs given to the provider stay valid.
pub async fn upsert(
    client: &mut deadpool_postgres::Client,
    agent_id: &str,
    // The slot: one integration per agent, channel and priority.
    (channel, priority): (Channel, i32),
    provider: &str,
    config: &serde_json::Value,
    active: bool,
    encrypt: impl FnOnce(Uuid) -> Option<(String, Vec<u8>)>,
) -> Result<Uuid, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))",
        &[&agent_id, &channel.as_str()],
    )
    .await?;
    tx.execute(
        "INSERT INTO agents (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        &[&agent_id],
    )
    .await?;
    let existing = tx
        .query_opt(
            "SELECT id FROM integrations WHERE agent_id = $1 AND channel = $2 AND priority = $3",
            &[&agent_id, &channel.as_str(), &priority],
        )
        .await?;
    let id: Uuid = existing.map(|r| r.get(0)).unwrap_or_else(Uuid::new_v4);
    let (key_id, blob) = encrypt(id).unzip();
    tx.execute(
        "INSERT INTO integrations
             (id, agent_id, channel, provider, config, secrets_key_id, secrets_ciphertext, active,
              priority)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (agent_id, channel, priority) DO UPDATE
            SET provider = EXCLUDED.provider, config = EXCLUDED.config,
                secrets_key_id = EXCLUDED.secrets_key_id,
                secrets_ciphertext = EXCLUDED.secrets_ciphertext,
                active = EXCLUDED.active, verification_status = 'unverified', last_error = NULL,
                verified_at = NULL, last_tested_at = NULL, updated_at = now()",
        &[
            &id,
            &agent_id,
            &channel.as_str(),
            &provider,
            config,
            &key_id,
            &blob,
            &active,
            &priority,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

pub async fn get(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<IntegrationRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM integrations WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await?;
    Ok(row.as_ref().map(from_row))
}

/// The one integration in an agent's slot (channel and priority), enabled
/// or not.
pub async fn slot(
    client: &impl GenericClient,
    agent_id: &str,
    (channel, priority): (Channel, i32),
) -> Result<Option<IntegrationRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM integrations WHERE agent_id = $1 AND channel = $2 AND priority = $3"
    );
    let row = client
        .query_opt(&sql, &[&agent_id, &channel.as_str(), &priority])
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// When an integration's credentials were last tried against its provider
/// and last passed (V16). Read apart from [`IntegrationRow`], whose columns
/// the job claim reads at fixed positions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tested {
    pub verified_at: Option<DateTime<Utc>>,
    pub last_tested_at: Option<DateTime<Utc>>,
}

/// [`list`] with each integration's [`Tested`].
pub async fn list_tested(
    client: &impl GenericClient,
    agent_id: &str,
) -> Result<Vec<(IntegrationRow, Tested)>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS}, verified_at, last_tested_at FROM integrations WHERE agent_id = $1
          ORDER BY channel, priority"
    );
    let rows = client.query(&sql, &[&agent_id]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let tested = Tested {
                verified_at: r.get(13),
                last_tested_at: r.get(14),
            };
            (from_row(r), tested)
        })
        .collect())
}

/// What a connection test found, as stored.
#[derive(Debug, Clone, Copy)]
pub enum TestRecord<'a> {
    /// The provider accepted the credentials.
    Verified,
    /// The provider refused them: the integration is `failed`, with why.
    Refused(&'a str),
    /// The provider could not be asked: the verification status stays what
    /// it was, and why is kept.
    Inconclusive(&'a str),
}

/// Stores a connection test's verdict on the integration `tested`; returns
/// when it was tested. The row is touched only while it still holds the
/// provider, config and secrets that were tested: a reconnect while the
/// test ran must not be marked with the old settings' verdict (`None`).
/// `updated_at` is left alone: a test changes no setting.
pub async fn record_test(
    client: &impl GenericClient,
    tested: &IntegrationRow,
    record: TestRecord<'_>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (status, error): (Option<&str>, Option<&str>) = match record {
        TestRecord::Verified => (Some("verified"), None),
        TestRecord::Refused(e) => (Some("failed"), Some(e)),
        TestRecord::Inconclusive(e) => (None, Some(e)),
    };
    let blob = tested.secrets.as_ref().map(|(_, b)| b);
    let row = client
        .query_opt(
            "UPDATE integrations
                SET verification_status = COALESCE($5, verification_status),
                    verified_at = CASE $5 WHEN 'verified' THEN now()
                                          WHEN 'failed' THEN NULL
                                          ELSE verified_at END,
                    last_error = $6,
                    last_tested_at = now()
              WHERE id = $1 AND provider = $2 AND config = $3
                AND secrets_ciphertext IS NOT DISTINCT FROM $4
          RETURNING last_tested_at",
            &[
                &tested.id,
                &tested.provider,
                &tested.config,
                &blob,
                &status,
                &error,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn list(
    client: &impl GenericClient,
    agent_id: &str,
) -> Result<Vec<IntegrationRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM integrations WHERE agent_id = $1 ORDER BY channel, priority"
    );
    let rows = client.query(&sql, &[&agent_id]).await?;
    Ok(rows.iter().map(from_row).collect())
}

/// The agent's active backup accounts for a channel (priority above 0), in
/// the order they are tried. Read only when the primary cannot send, so the
/// claim stays one row per job.
pub async fn backups(
    client: &impl GenericClient,
    agent_id: &str,
    channel: Channel,
) -> Result<Vec<IntegrationRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM integrations
          WHERE agent_id = $1 AND channel = $2 AND active AND priority > 0
          ORDER BY priority"
    );
    let rows = client.query(&sql, &[&agent_id, &channel.as_str()]).await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Enables or disables (every priority of the channel); returns false when the agent has no such integration.
pub async fn set_active(
    client: &impl GenericClient,
    agent_id: &str,
    channel: Channel,
    active: bool,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE integrations SET active = $3, updated_at = now()
              WHERE agent_id = $1 AND channel = $2",
            &[&agent_id, &channel.as_str(), &active],
        )
        .await?;
    Ok(n > 0)
}

/// Removes the channel's integrations, backups included (and their
/// secrets); returns false when absent.
pub async fn delete(
    client: &impl GenericClient,
    agent_id: &str,
    channel: Channel,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "DELETE FROM integrations WHERE agent_id = $1 AND channel = $2",
            &[&agent_id, &channel.as_str()],
        )
        .await?;
    Ok(n > 0)
}

/// Remembers why sending through an integration failed for a reason that
/// is the account's, not the message's (bad credentials, unreadable secrets).
pub async fn set_last_error(
    client: &impl GenericClient,
    id: Uuid,
    error: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE integrations SET last_error = $2, updated_at = now() WHERE id = $1",
            &[&id, &error],
        )
        .await?;
    Ok(())
}

/// The provider refused the integration's credentials: it is unverified
/// again, with the provider's words, until the agent reconnects it.
pub async fn mark_unverified(
    client: &impl GenericClient,
    id: Uuid,
    error: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE integrations
                SET verification_status = 'unverified', verified_at = NULL,
                    last_error = $2, updated_at = now()
              WHERE id = $1",
            &[&id, &error],
        )
        .await?;
    Ok(())
}
