//! `opt_outs`: who must not be messaged, per agent and channel or
//! platform-wide (agent_id NULL). Addresses are stored normalised.
//!
//! An opt-out only ever gets stronger here: a later, weaker reason never
//! replaces a stronger one ([`STRENGTH`]), and the person's own START lifts
//! only what their STOP set ([`lift_stop_keyword`]). Removing anything else
//! is an operator's decision ([`remove`]).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use super::StoreError;
use super::scheduled::{StepFilter, cancel_steps};
use crate::domain::Channel;

pub const REASONS: [&str; 6] = STRENGTH;

/// The reasons from weakest to strongest. A new opt-out for an address that
/// already has one replaces it only when its reason comes later here:
///
/// - `unsubscribe` stops marketing only (`policy::STOPS_TRANSACTIONAL`), so
///   it is the weakest;
/// - `stop_keyword` stops everything, but the person can lift it with START;
/// - `provider_rejected`, `hard_bounce`, `complaint` and `manual` stop
///   everything until an operator removes them, ordered by how strongly each
///   says "never": the provider refuses today, the mailbox is dead, the person
///   complained, an operator decided.
///
/// So a STOP followed by a list `unsubscribe` keeps blocking transactional
/// messages, and a complaint followed by a STOP cannot be undone by START.
pub const STRENGTH: [&str; 6] = [
    "unsubscribe",
    "stop_keyword",
    "provider_rejected",
    "hard_bounce",
    "complaint",
    "manual",
];

/// `reason` if it is one of [`REASONS`], else what the choices are.
pub fn parse_reason(reason: &str) -> Result<&'static str, String> {
    REASONS
        .into_iter()
        .find(|r| *r == reason)
        .ok_or_else(|| format!("unknown reason `{reason}` (one of {})", REASONS.join(", ")))
}

#[derive(Debug, Clone, Serialize)]
pub struct OptOut {
    /// Increases with each new opt-out: the keyset for paging.
    pub id: i64,
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
    let n = add_in(&tx, agent_id, channel, address, reason, source).await?;
    tx.commit().await?;
    Ok(n)
}

/// [`add`] inside the caller's transaction.
pub async fn add_in(
    tx: &impl GenericClient,
    agent_id: Option<&str>,
    channel: Channel,
    address: &str,
    reason: &str,
    source: Option<&str>,
) -> Result<u64, StoreError> {
    // The source goes with the reason it explains. An equal reason keeps the
    // first source: the earliest evidence is the one worth keeping.
    tx.execute(
        "INSERT INTO opt_outs (agent_id, channel, address, reason, source)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (agent_id, channel, address) DO UPDATE
            SET reason = EXCLUDED.reason, source = EXCLUDED.source
          WHERE array_position($6::text[], EXCLUDED.reason)
              > array_position($6::text[], opt_outs.reason)",
        &[
            &agent_id,
            &channel.as_str(),
            &address,
            &reason,
            &source,
            &&STRENGTH[..],
        ],
    )
    .await?;
    let filter = StepFilter {
        agent_id,
        channel: Some(channel.as_str()),
        recipient: Some(address),
        ..Default::default()
    };
    let detail = serde_json::json!({"reason": "opt_out", "opt_out_reason": reason});
    cancel_steps(tx, &filter, &detail).await
}

const OPT_OUT_COLUMNS: &str = "id, agent_id, channel, address, reason, source, created_at";

fn opt_out_from_row(r: &tokio_postgres::Row) -> OptOut {
    OptOut {
        id: r.get(0),
        agent_id: r.get(1),
        channel: r.get(2),
        address: r.get(3),
        reason: r.get(4),
        source: r.get(5),
        created_at: r.get(6),
    }
}

pub async fn list(client: &impl GenericClient, agent_id: &str) -> Result<Vec<OptOut>, StoreError> {
    let sql = format!(
        "SELECT {OPT_OUT_COLUMNS} FROM opt_outs
          WHERE agent_id = $1 OR agent_id IS NULL ORDER BY created_at"
    );
    let rows = client.query(&sql, &[&agent_id]).await?;
    Ok(rows.iter().map(opt_out_from_row).collect())
}

/// Which opt-outs to page through; `None` matches any.
#[derive(Debug, Default, Clone)]
pub struct OptOutFilter<'a> {
    pub channel: Option<Channel>,
    /// Normalised, as stored.
    pub address: Option<&'a str>,
}

/// The agent's opt-outs and the platform-wide ones, oldest first, with ids
/// above `after`.
pub async fn page(
    client: &impl GenericClient,
    agent_id: &str,
    filter: &OptOutFilter<'_>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<OptOut>, StoreError> {
    let sql = format!(
        "SELECT {OPT_OUT_COLUMNS} FROM opt_outs
          WHERE (agent_id = $1 OR agent_id IS NULL)
            AND ($2::text IS NULL OR channel = $2)
            AND ($3::text IS NULL OR address = $3)
            AND id > $4
          ORDER BY id
          LIMIT $5"
    );
    let channel = filter.channel.map(Channel::as_str);
    let rows = client
        .query(
            &sql,
            &[
                &agent_id,
                &channel,
                &filter.address,
                &after.unwrap_or(0),
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(opt_out_from_row).collect())
}

/// An operator's removal: whatever the reason. Returns whether there was one.
pub async fn remove(
    client: &impl GenericClient,
    agent_id: Option<&str>,
    channel: Channel,
    address: &str,
) -> Result<bool, StoreError> {
    delete(client, agent_id, channel, address, None).await
}

/// The person's START: lifts the opt-out only if their STOP set it. Any
/// stronger reason (a complaint, a bounce, an operator's block) stays, and so
/// does a platform-wide opt-out: a reply to one agent's number speaks for
/// that agent only. Returns whether an opt-out was lifted.
pub async fn lift_stop_keyword(
    client: &impl GenericClient,
    agent_id: Option<&str>,
    channel: Channel,
    address: &str,
) -> Result<bool, StoreError> {
    delete(client, agent_id, channel, address, Some("stop_keyword")).await
}

/// Deletes the opt-out, only if its reason is `only` when given.
async fn delete(
    client: &impl GenericClient,
    agent_id: Option<&str>,
    channel: Channel,
    address: &str,
    only: Option<&str>,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "DELETE FROM opt_outs
              WHERE agent_id IS NOT DISTINCT FROM $1 AND channel = $2 AND address = $3
                AND ($4::text IS NULL OR reason = $4)",
            &[&agent_id, &channel.as_str(), &address, &only],
        )
        .await?;
    Ok(n > 0)
}
