//! Reopening a `failed` job for one more try (`switchboard messages retry`,
//! `switchboard dead-letters replay`).
//!
//! `failed` is final for the worker: a re-published copy of a failed job is
//! acked as a duplicate. The only way back is [`reopen`], which an operator's
//! command calls: it moves the row from `failed` to `queued` (claimable, with
//! no lease) and records a `retried` event, in one statement. It never
//! touches a row in any other status, so a job the provider accepted (`sent`
//! and later) can never be sent again this way.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;

/// What [`reopen`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reopen {
    /// The row was `failed` and is now `queued`: publish `job` (its stored
    /// wire form) to `switchboard.jobs` with routing key `agent_id`.
    Reopened {
        agent_id: String,
        job: serde_json::Value,
    },
    /// The row is in `status`, from which no retry is allowed.
    Refused { status: String },
    /// The stored job is not the one given (another job reused the id).
    Different,
    /// No row has this id.
    Missing,
}

/// Moves message `id` from `failed` to `queued` for a new attempt, recording
/// a `retried` event (`by` says which command). With `expected`, only if the
/// stored job is exactly that one (a dead letter may carry another job that
/// reused the id). Attempts start again from zero; the events keep history.
pub async fn reopen(
    client: &impl GenericClient,
    id: Uuid,
    expected: Option<&serde_json::Value>,
    by: &str,
) -> Result<Reopen, StoreError> {
    const SQL: &str = "
        WITH prev AS (
            SELECT id, status, job, last_error, attempts
              FROM outbound_messages WHERE id = $1 FOR UPDATE
        ), reopened AS (
            UPDATE outbound_messages m
               SET status = 'queued', lease_until = NULL, owner = NULL, attempts = 0,
                   dead_letter_reason = NULL, updated_at = now()
              FROM prev
             WHERE m.id = prev.id AND prev.status = 'failed' AND m.job IS NOT NULL
               AND ($2::jsonb IS NULL OR m.job = $2::jsonb)
            RETURNING m.id, m.agent_id, m.channel, m.job
        ), event AS (
            INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
            SELECT r.id, r.agent_id, r.channel, 'retried',
                   jsonb_build_object('by', $3::text, 'previous_error', p.last_error,
                                      'previous_attempts', p.attempts)
              FROM reopened r, prev p
        )
        SELECT p.status, r.agent_id, r.job,
               $2::jsonb IS NOT NULL AND p.job IS DISTINCT FROM $2::jsonb
          FROM prev p LEFT JOIN reopened r ON true";
    let row = client.query_opt(SQL, &[&id, &expected, &by]).await?;
    Ok(match row {
        None => Reopen::Missing,
        Some(row) => match (row.get::<_, Option<String>>(1), row.get(2)) {
            (Some(agent_id), Some(job)) => Reopen::Reopened { agent_id, job },
            _ if row.get::<_, bool>(3) => Reopen::Different,
            _ => Reopen::Refused { status: row.get(0) },
        },
    })
}

/// Undoes [`reopen`] when the job could not be published: back to `failed`
/// (unless a worker already claimed it from a copy that did arrive), so a
/// later retry finds it where it was.
pub async fn unpublished(
    client: &impl GenericClient,
    id: Uuid,
    error: &str,
) -> Result<(), StoreError> {
    const SQL: &str = "
        WITH back AS (
            UPDATE outbound_messages SET status = 'failed', updated_at = now()
             WHERE id = $1 AND status = 'queued' AND lease_until IS NULL
            RETURNING id, agent_id, channel
        )
        INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
        SELECT id, agent_id, channel, 'failed',
               jsonb_build_object('code', 'retry_not_published', 'message', $2::text)
          FROM back";
    client.execute(SQL, &[&id, &error]).await?;
    Ok(())
}

/// Ids of `failed` jobs of `agent` last changed at or after `since`, oldest
/// first: what `messages retry --agent … --status failed --since …` retries.
pub async fn failed_since(
    client: &impl GenericClient,
    agent: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let rows = client
        .query(
            "SELECT id FROM outbound_messages
              WHERE agent_id = $1 AND status = 'failed' AND updated_at >= $2
              ORDER BY updated_at, id",
            &[&agent, &since],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The status of each of `ids` that has a row.
pub async fn statuses(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, StoreError> {
    let rows = client
        .query(
            "SELECT id, status FROM outbound_messages WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
