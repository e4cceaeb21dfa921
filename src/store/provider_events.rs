//! What providers tell us after a send (delivered, bounced, a reply), as
//! SQL: the `webhook_inbox` where verified notifications wait to be applied,
//! and applying a report to the message it is about.
//!
//! Every lookup of a message here is scoped to the account the notification
//! came in on ([`Account`]): a provider message id alone never identifies a
//! message, because any agent can sign a notification naming any id with
//! its own valid secret.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;
use super::messages::StatusMove;

/// Whose webhook URL and secret a notification came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// `/webhooks/{provider}/platform`: the platform's own provider account,
    /// which sends the messages routed `platform`.
    Platform,
    /// `/webhooks/{provider}/{integration_id}`: an agent's own account.
    Integration(Uuid),
}

impl Account {
    pub fn integration_id(self) -> Option<Uuid> {
        match self {
            Account::Platform => None,
            Account::Integration(id) => Some(id),
        }
    }
}

/// What a provider reported about one of the messages it sent.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub provider: &'a str,
    pub provider_message_id: &'a str,
    /// Our event name (`delivered`, `bounced`, `opened`…).
    pub event: &'a str,
    pub status_move: Option<StatusMove<'a>>,
    /// The message's `last_error` if the status moves.
    pub error: Option<&'a str>,
    pub detail: &'a serde_json::Value,
}

/// Records `report` as an event of the message it is about, if that message
/// was sent through `account`, and applies its status move if any. A message
/// sent through another account is not looked at: false, nothing written,
/// as for a message not recorded yet.
pub async fn apply_provider_event(
    client: &impl GenericClient,
    account: Account,
    report: &Report<'_>,
) -> Result<Applied, StoreError> {
    // The platform's account sends only `platform`-routed messages, which
    // carry no integration; an agent's account only the messages that name
    // its integration.
    const SQL: &str = "
        WITH target AS (
            SELECT id, agent_id, channel FROM outbound_messages
             WHERE provider = $1 AND provider_message_id = $2
               AND CASE WHEN $8::uuid IS NULL
                        THEN route = 'platform' AND integration_id IS NULL
                        ELSE integration_id = $8 END
             LIMIT 1
        ), moved AS (
            UPDATE outbound_messages o
               SET status = $6, last_error = COALESCE($4, o.last_error), updated_at = now()
              FROM target t
             WHERE o.id = t.id AND $6::text IS NOT NULL AND o.status = ANY($7)
            RETURNING o.job
        ), event AS (
            INSERT INTO outbound_events
                (message_id, agent_id, channel, event, provider, provider_message_id, detail)
            SELECT t.id, t.agent_id, t.channel, $3::text, $1::text, $2::text, $5::jsonb FROM target t
        )
        SELECT EXISTS (SELECT 1 FROM target), (SELECT job FROM moved)";
    let to = report.status_move.map(|m| m.to);
    let from: &[&str] = report.status_move.map(|m| m.from).unwrap_or(&[]);
    let row = client
        .query_one(
            SQL,
            &[
                &report.provider,
                &report.provider_message_id,
                &report.event,
                &report.error,
                report.detail,
                &to,
                &from,
                &account.integration_id(),
            ],
        )
        .await?;
    Ok(Applied {
        found: row.get(0),
        moved_job: row.get(1),
    })
}

/// What [`apply_provider_event`] did.
#[derive(Debug)]
pub struct Applied {
    /// The message was found (and the event recorded against it).
    pub found: bool,
    /// The message's job in wire form, when the report moved its status.
    pub moved_job: Option<serde_json::Value>,
}

/// Credits a reply to the agent's latest message sent to `address` on
/// `channel` in the last 30 days, as its event `replied` (campaign stats
/// count replies per message). A reply to nothing recent is only the
/// account's `received` event.
pub async fn credit_reply(
    client: &impl GenericClient,
    agent: &str,
    channel: crate::domain::Channel,
    address: &str,
    provider: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO outbound_events (message_id, agent_id, channel, event, provider, detail)
             SELECT m.id, m.agent_id, m.channel, 'replied', $4, $5
               FROM outbound_messages m
              WHERE m.agent_id = $1 AND m.recipient = $2 AND m.channel = $3
                AND m.status IN ('sent', 'delivered')
                AND m.created_at > now() - interval '30 days'
              ORDER BY m.created_at DESC LIMIT 1",
            &[&agent, &address, &channel.as_str(), &provider, detail],
        )
        .await?;
    Ok(())
}

/// Keeps a report about a message that was never found (after the inbox
/// stopped waiting for it), without a message id, as before the inbox.
pub async fn record_unmatched_event(
    client: &impl GenericClient,
    report: &Report<'_>,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO outbound_events (event, provider, provider_message_id, detail)
             VALUES ($1, $2, $3, $4)",
            &[
                &report.event,
                &report.provider,
                &report.provider_message_id,
                report.detail,
            ],
        )
        .await?;
    Ok(())
}

/// A verified notification, as written to the inbox.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub provider: &'a str,
    pub account: Account,
    pub agent_id: Option<&'a str>,
    pub delivery_id: &'a str,
    /// `status` or `inbound`.
    pub kind: &'a str,
    pub provider_message_id: Option<&'a str>,
    pub event: &'a serde_json::Value,
}

/// Writes a notification to the inbox. `None`: the account already sent one
/// with this delivery id (a retry whose answer was lost, or a replay), and
/// nothing was written.
pub async fn insert(
    client: &impl GenericClient,
    d: &NewDelivery<'_>,
) -> Result<Option<i64>, StoreError> {
    let row = client
        .query_opt(
            "INSERT INTO webhook_inbox
                (provider, integration_id, agent_id, delivery_id, kind, provider_message_id, event)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (provider, integration_id, delivery_id) DO NOTHING
             RETURNING id",
            &[
                &d.provider,
                &d.account.integration_id(),
                &d.agent_id,
                &d.delivery_id,
                &d.kind,
                &d.provider_message_id,
                d.event,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A pending inbox row, locked by the transaction that read it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub provider: String,
    pub account: Account,
    pub agent_id: Option<String>,
    pub event: serde_json::Value,
    pub attempts: i32,
    pub received_at: DateTime<Utc>,
}

/// Locks the row if it is still pending and nobody else is applying it
/// (`SKIP LOCKED`: a request and a sweeper, or two sweepers, never apply the
/// same notification twice, and never wait for each other).
pub async fn lock_pending(
    client: &impl GenericClient,
    id: i64,
) -> Result<Option<Pending>, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, provider, integration_id, agent_id, event, attempts, received_at
               FROM webhook_inbox
              WHERE id = $1 AND processed_at IS NULL
                FOR UPDATE SKIP LOCKED",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| Pending {
        id: r.get(0),
        provider: r.get(1),
        account: r
            .get::<_, Option<Uuid>>(2)
            .map_or(Account::Platform, Account::Integration),
        agent_id: r.get(3),
        event: r.get(4),
        attempts: r.get(5),
        received_at: r.get(6),
    }))
}

/// Marks a row applied and forgets its content; its ids stay, to recognise
/// a replay.
pub async fn finish(client: &impl GenericClient, id: i64) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE webhook_inbox SET processed_at = now(), event = NULL WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Leaves a row pending until `retry_in_secs` from now, with what is still
/// to apply.
pub async fn postpone(
    client: &impl GenericClient,
    id: i64,
    event: &serde_json::Value,
    retry_in_secs: f64,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE webhook_inbox
                SET attempts = attempts + 1, event = $2,
                    next_attempt_at = now() + make_interval(secs => $3)
              WHERE id = $1",
            &[&id, event, &retry_in_secs],
        )
        .await?;
    Ok(())
}

/// Leaves a row whose apply failed (not for want of its message) pending,
/// retried with backoff up to hourly, so that one bad row never stops the
/// sweeper from applying the others.
pub async fn retry_later(client: &impl GenericClient, id: i64) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE webhook_inbox
                SET attempts = attempts + 1,
                    next_attempt_at = now() + make_interval(secs => least(power(2, attempts), 3600))
              WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Whether an earlier message from the same person to the same account is
/// still pending: replies must take effect in the order they came, or a
/// START stored before a STOP but applied after it would lift the STOP.
pub async fn earlier_reply_pending(
    client: &impl GenericClient,
    row: &Pending,
    from: &str,
) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "SELECT EXISTS (
                SELECT 1 FROM webhook_inbox
                 WHERE processed_at IS NULL AND kind = 'inbound' AND id < $1
                   AND provider = $2 AND integration_id IS NOT DISTINCT FROM $3
                   AND event->>'from' = $4)",
            &[&row.id, &row.provider, &row.account.integration_id(), &from],
        )
        .await?;
    Ok(row.get(0))
}

/// Pending rows whose next attempt is due, oldest first.
pub async fn due(client: &impl GenericClient, limit: i64) -> Result<Vec<i64>, StoreError> {
    let rows = client
        .query(
            "SELECT id FROM webhook_inbox
              WHERE processed_at IS NULL AND next_attempt_at <= now()
              ORDER BY next_attempt_at, id
              LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes applied status reports older than `keep_secs`. Their ids guard
/// against replays only while kept; a status report replayed later can add
/// an event but never move a status backwards. Inbound messages are kept:
/// a replayed START must never lift a later STOP, however old it is.
pub async fn prune(client: &impl GenericClient, keep_secs: f64) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM webhook_inbox
              WHERE processed_at < now() - make_interval(secs => $1) AND kind = 'status'",
            &[&keep_secs],
        )
        .await?)
}
