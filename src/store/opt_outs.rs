//! `opt_outs`: who must not be messaged, per agent and channel or
//! platform-wide (agent_id NULL). Addresses are stored normalised.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use super::StoreError;
use super::scheduled::{StepFilter, cancel_steps};
use crate::domain::Channel;

pub const REASONS: [&str; 6] = [
    "stop_keyword",
    "unsubscribe",
    "hard_bounce",
    "complaint",
    "manual",
    "provider_rejected",
];

#[derive(Debug, Clone, Serialize)]
pub struct OptOut {
    pub agent_id: Option<String>,
    pub channel: String,
    pub address: String,
    pub reason: String,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Records an opt-out and cancels the recipient's parked sequence steps (for
/// that agent, or every agent when platform-wide), in one transaction.
/// Returns how many parked jobs were cancelled.
pub async fn add(
    client: &mut deadpool_postgres::Client,
    agent_id: Option<&str>,
    channel: Channel,
    address: &str,
    reason: &str,
    source: Option<&str>,
) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO opt_outs (agent_id, channel, address, reason, source)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (agent_id, channel, address) DO UPDATE
            SET reason = EXCLUDED.reason, source = EXCLUDED.source",
        &[&agent_id, &channel.as_str(), &address, &reason, &source],
    )
    .await?;
    let filter = StepFilter {
        agent_id,
        channel: Some(channel.as_str()),
        recipient: Some(address),
        ..Default::default()
    };
    let detail = serde_json::json!({"reason": "opt_out", "opt_out_reason": reason});
    let n = cancel_steps(&tx, &filter, &detail).await?;
    tx.commit().await?;
    Ok(n)
}

pub async fn list(client: &impl GenericClient, agent_id: &str) -> Result<Vec<OptOut>, StoreError> {
    let rows = client
        .query(
            "SELECT agent_id, channel, address, reason, source, created_at FROM opt_outs
              WHERE agent_id = $1 OR agent_id IS NULL ORDER BY created_at",
            &[&agent_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OptOut {
            agent_id: r.get(0),
            channel: r.get(1),
            address: r.get(2),
            reason: r.get(3),
            source: r.get(4),
            created_at: r.get(5),
        })
        .collect())
}

pub async fn remove(
    client: &impl GenericClient,
    agent_id: Option<&str>,
    channel: Channel,
    address: &str,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "DELETE FROM opt_outs WHERE agent_id IS NOT DISTINCT FROM $1 AND channel = $2 AND address = $3",
            &[&agent_id, &channel.as_str(), &address],
        )
        .await?;
    Ok(n > 0)
}
