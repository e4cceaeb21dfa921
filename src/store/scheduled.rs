//! `scheduled_jobs`: jobs parked until a time (send_at, quiet hours, a
//! quota, a provider's long Retry-After, an open circuit), and the
//! scheduler's take-publish-delete cycle.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;
use uuid::Uuid;

use super::StoreError;
use super::messages::{CLAIMABLE, EventRow};
use crate::domain::SendJob;

/// Where and why a job is parked.
#[derive(Debug)]
pub struct Parking<'a> {
    pub due_at: DateTime<Utc>,
    /// `scheduled` (send_at) or `deferred` (everything else).
    pub status: &'static str,
    pub reason: &'a str,
    /// Provider calls made by this delivery before parking.
    pub attempts: i32,
    pub last_error: Option<&'a str>,
    pub events: &'a [EventRow],
}

/// Parks a claimed job until it is due, sets the message's status and
/// appends the events, in one statement. The caller acks after this returns.
pub async fn park(
    client: &impl GenericClient,
    job: &SendJob,
    p: &Parking<'_>,
) -> Result<(), StoreError> {
    const SQL: &str = "
        WITH s AS (
            INSERT INTO scheduled_jobs (id, agent_id, channel, job, due_at, reason, created_at)
            VALUES ($1, $2, $3, $4, $5, $6,
                    COALESCE((SELECT created_at FROM outbound_messages WHERE id = $1), now()))
            ON CONFLICT (id) DO UPDATE
                SET job = EXCLUDED.job, due_at = EXCLUDED.due_at,
                    reason = EXCLUDED.reason, updated_at = now()
        ), m AS (
            UPDATE outbound_messages
               SET status = $7, attempts = attempts + $8,
                   last_error = COALESCE($9, last_error),
                   lease_until = NULL, updated_at = now()
             WHERE id = $1 AND status = ANY($11)
            RETURNING id, agent_id, channel
        )
        INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
        SELECT m.id, m.agent_id, m.channel, e.event, e.detail
          FROM m, jsonb_to_recordset($10::jsonb) AS e(event text, detail jsonb)";
    let events: serde_json::Value = p
        .events
        .iter()
        .map(|e| json!({"event": e.event, "detail": e.detail}))
        .collect();
    let statement = client.prepare_cached(SQL).await?;
    client
        .execute(
            &statement,
            &[
                &job.id,
                &job.agent_id,
                &job.channel.as_str(),
                &job.to_wire(),
                &p.due_at,
                &p.reason,
                &p.status,
                &p.attempts,
                &p.last_error,
                &events,
                &&CLAIMABLE[..],
            ],
        )
        .await?;
    Ok(())
}

/// Parks the fallback of `parent` (its next channel, `domain::fallback`)
/// due at `now`, for the scheduler to publish. Returns the detail to record
/// on the parent (the child's id and channel), or `None` when the job names
/// no fallback. A parent whose failure is recorded twice (a redelivery, a
/// webhook seen twice) still has one child: the child's id is derived from
/// the parent's, and it is not parked again once it is parked or has a
/// message row.
pub async fn park_fallback(
    client: &impl GenericClient,
    parent: &SendJob,
    now: DateTime<Utc>,
) -> Result<Option<serde_json::Value>, StoreError> {
    let child = match parent.fallback_job() {
        None => return Ok(None),
        Some(Ok(child)) => child,
        // Parsing the parent checked every entry, so only a job parked
        // before a change to the rules lands here: say so, lose nothing else.
        Some(Err(reason)) => {
            tracing::warn!(%reason, "the job's fallback is not a valid job; not sent");
            return Ok(Some(json!({"error": reason})));
        }
    };
    let parked = client
        .execute(
            "INSERT INTO scheduled_jobs (id, agent_id, channel, job, due_at, reason)
             SELECT $1, $2, $3, $4, $5, 'fallback'
              WHERE NOT EXISTS (SELECT 1 FROM outbound_messages WHERE id = $1)
             ON CONFLICT (id) DO NOTHING",
            &[
                &child.id,
                &child.agent_id,
                &child.channel.as_str(),
                &child.to_wire(),
                &now,
            ],
        )
        .await?;
    tracing::info!(fallback_id = %child.id, channel = child.channel.as_str(), parked = parked == 1,
                   "falling back to the next channel");
    Ok(Some(
        json!({"id": child.id, "channel": child.channel.as_str()}),
    ))
}

/// A parked job that is due.
#[derive(Debug, Clone)]
pub struct DueJob {
    pub id: Uuid,
    pub agent_id: String,
    pub job: serde_json::Value,
}

/// Locks up to `limit` due jobs inside the caller's transaction. Rows locked
/// by another worker's scheduler are skipped, so two schedulers never
/// publish the same job.
///
/// Earliest due first; among jobs due at the same instant (a quota's reset,
/// a circuit's cool-down) the oldest job first: a row's `created_at` is its
/// message's, which re-parking does not move, so a job cannot lose every
/// wake to younger ones.
pub async fn lock_due(
    tx: &deadpool_postgres::Transaction<'_>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DueJob>, StoreError> {
    let rows = tx
        .query(
            "SELECT id, agent_id, job FROM scheduled_jobs
              WHERE due_at <= $1 ORDER BY due_at, created_at, id LIMIT $2
              FOR UPDATE SKIP LOCKED",
            &[&now, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DueJob {
            id: r.get(0),
            agent_id: r.get(1),
            job: r.get(2),
        })
        .collect())
}

/// Moves parked jobs' due time to `due_at` (jobs that could not be
/// published now).
pub async fn postpone(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[Uuid],
    due_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE scheduled_jobs SET due_at = $2, updated_at = now() WHERE id = ANY($1)",
        &[&ids, &due_at],
    )
    .await?;
    Ok(())
}

pub async fn delete(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    tx.execute("DELETE FROM scheduled_jobs WHERE id = ANY($1)", &[&ids])
        .await?;
    Ok(())
}

/// Which parked sequence steps to cancel; `None` matches anything.
#[derive(Debug, Default)]
pub struct StepFilter<'a> {
    pub agent_id: Option<&'a str>,
    pub channel: Option<&'a str>,
    pub sequence_id: Option<&'a str>,
    pub recipient: Option<&'a str>,
}

/// Cancels parked jobs that belong to a sequence and match `filter`: their
/// rows leave `scheduled_jobs`, their messages become `cancelled` with an
/// event carrying `detail`. Returns how many.
pub async fn cancel_steps(
    client: &impl GenericClient,
    filter: &StepFilter<'_>,
    detail: &serde_json::Value,
) -> Result<u64, StoreError> {
    const SQL: &str = "
        WITH d AS (
            DELETE FROM scheduled_jobs
             WHERE job ? 'sequence_id'
               AND ($1::text IS NULL OR agent_id = $1)
               AND ($2::text IS NULL OR channel = $2)
               AND ($3::text IS NULL OR job->>'sequence_id' = $3)
               AND ($4::text IS NULL OR job->>'to' = $4)
            RETURNING id
        ), m AS (
            UPDATE outbound_messages
               SET status = 'cancelled', lease_until = NULL, updated_at = now()
             WHERE id IN (SELECT id FROM d) AND status = ANY($6)
            RETURNING id, agent_id, channel
        ), e AS (
            INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
            SELECT id, agent_id, channel, 'cancelled', $5 FROM m
        )
        -- Every parked step counts, with a message row or not (a channel
        -- fallback is parked before it has one).
        SELECT count(*) FROM d";
    let row = client
        .query_one(
            SQL,
            &[
                &filter.agent_id,
                &filter.channel,
                &filter.sequence_id,
                &filter.recipient,
                detail,
                &&CLAIMABLE[..],
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Cancels a sequence for one recipient (or all): the parked steps now, and
/// (through `sequence_cancellations`) the steps still in the queue when they
/// are consumed. Returns how many parked jobs were cancelled.
pub async fn cancel_sequence(
    client: &mut deadpool_postgres::Client,
    agent_id: &str,
    sequence_id: &str,
    recipient: Option<&str>,
    reason: &str,
) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO sequence_cancellations (agent_id, sequence_id, recipient, reason)
         VALUES ($1, $2, COALESCE($3, ''), $4) ON CONFLICT DO NOTHING",
        &[&agent_id, &sequence_id, &recipient, &reason],
    )
    .await?;
    let filter = StepFilter {
        agent_id: Some(agent_id),
        sequence_id: Some(sequence_id),
        recipient,
        ..Default::default()
    };
    let detail = json!({"reason": reason, "sequence_id": sequence_id});
    let n = cancel_steps(&tx, &filter, &detail).await?;
    tx.commit().await?;
    Ok(n)
}

/// Drops counters of windows long past (called by the scheduler now and then).
///
/// Also forgets per-second rate state that can no longer matter: a slot
/// granted to a job that never came back for it (the job was cancelled or
/// ended another way), and a key whose theoretical arrival time is long
/// past, which `rate_slots::take` treats exactly like a key never seen.
/// Without this both tables grow with every parked job and every agent
/// that ever had a limit. The frequency cap's `recipient_sends` rows go
/// once no week can contain them.
pub async fn prune_counters(
    client: &impl GenericClient,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    const SQL: &str = "
        WITH counters AS (
            DELETE FROM rate_counters WHERE window_start < $1 RETURNING 1
        ), grants AS (
            DELETE FROM rate_grants WHERE slot < $1 RETURNING 1
        ), slots AS (
            DELETE FROM rate_slots WHERE tat < $1 RETURNING 1
        ), recipients AS (
            -- A week (the longest cap window) before the counters' horizon.
            DELETE FROM recipient_sends WHERE sent_at < $1 - interval '7 days' RETURNING 1
        )
        SELECT (SELECT count(*) FROM counters)
             + (SELECT count(*) FROM grants)
             + (SELECT count(*) FROM slots)
             + (SELECT count(*) FROM recipients)";
    let row = client.query_one(SQL, &[&before]).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// How many jobs are parked, by reason, and how many of them were due
/// before `overdue_before` (the scheduler should have republished them):
/// for the `switchboard_jobs_parked*` gauges. Reasons are a fixed set in the
/// code, so the result is small.
pub async fn counts(
    client: &impl GenericClient,
    overdue_before: DateTime<Utc>,
) -> Result<(Vec<(String, i64)>, i64), StoreError> {
    let rows = client
        .query(
            "SELECT reason, count(*), count(*) FILTER (WHERE due_at < $1)
               FROM scheduled_jobs GROUP BY reason",
            &[&overdue_before],
        )
        .await?;
    let overdue = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
    Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), overdue))
}
