//! `outbound_messages` and `outbound_events`: claiming a job, and recording
//! its outcome together with its events in one statement.
//!
//! Every write that matters for "no loss, no duplicates" is a single
//! statement, so a crash leaves either all of it or none of it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{Channel, Rejection, Route, SendJob};

/// Statuses from which a job may be (re)claimed and sent.
pub const CLAIMABLE: [&str; 3] = ["queued", "scheduled", "deferred"];

/// What claiming a job found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This worker owns the job until the lease ends and must decide it.
    Owned(Box<Claimed>),
    /// The job already has an outcome: do nothing (idempotency), unless
    /// the outcome still owes a dead letter (its publish failed).
    Finished {
        status: String,
        dead_letter_reason: Option<String>,
    },
    /// Another worker owns the job right now.
    Leased { until: DateTime<Utc> },
    /// The id belongs to another job (another agent's, or other content):
    /// the row is left alone and this delivery is refused.
    Conflict { reason: String },
}

/// What the claim read for policy, in the same round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Provider calls made by earlier deliveries (a worker that died
    /// mid-send, or a job parked after a failed attempt).
    pub attempts: i32,
    /// False when the row existed: a redelivery, a takeover or a due job.
    pub first_delivery: bool,
    /// An earlier delivery's claim never ended (no outcome, not parked): its
    /// worker died, maybe because of this job. The claim counted that
    /// delivery in `attempts`.
    pub taken_over: bool,
    /// The `agents` row as JSON; `None` when this job created the agent.
    pub agent: Option<serde_json::Value>,
    /// Reasons the recipient opted out (this agent's and platform-wide).
    pub opt_outs: Vec<String>,
    /// The job's sequence was cancelled for this recipient.
    pub sequence_cancelled: bool,
    /// The agent's active integration for the channel (secrets still
    /// encrypted), read here to save a round trip per job.
    pub integration: Option<super::integrations::IntegrationRow>,
}

/// One job to claim, as the claim statement takes it.
#[derive(Debug, Clone)]
pub struct ClaimRow {
    pub id: Uuid,
    pub agent_id: String,
    pub channel: &'static str,
    pub recipient: String,
    pub category: &'static str,
    pub campaign_id: Option<String>,
    pub sequence_id: Option<String>,
    pub step: Option<i32>,
    pub job: serde_json::Value,
    /// The claiming worker's lock key ([`super::liveness::Liveness::held`]);
    /// `None` for a claim that relies on the lease alone.
    pub owner: Option<i32>,
}

impl ClaimRow {
    pub fn new(job: &SendJob) -> Self {
        Self {
            id: job.id,
            agent_id: job.agent_id.clone(),
            channel: job.channel.as_str(),
            recipient: job.recipient.as_str().to_string(),
            category: job.category.as_str(),
            campaign_id: job.campaign.campaign_id.clone(),
            sequence_id: job.campaign.sequence_id.clone(),
            step: job.campaign.step.map(|s| s as i32),
            job: job.to_wire(),
            owner: None,
        }
    }
}

/// The claim statement. A row is claimable when its status allows it and
/// nobody owns it: a `queued` row with an `owner` is owned exactly while
/// that worker holds its advisory lock ([`super::liveness`]); one without
/// (written before owners existed, or by a claim that passed none) while
/// its lease lasts.
pub const CLAIM_SQL: &str = "
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::int4[], $9::jsonb[], $12::int4[])
                AS t(id, agent_id, channel, recipient, category,
                     campaign_id, sequence_id, step, job, owner)
        ), agent AS (
            INSERT INTO agents (id)
            SELECT DISTINCT agent_id FROM input ORDER BY agent_id
            ON CONFLICT (id) DO NOTHING
        ), claimed AS (
            INSERT INTO outbound_messages AS m
                (id, agent_id, channel, recipient, category, status,
                 campaign_id, sequence_id, step, job, lease_until, owner, parent_id)
            SELECT id, agent_id, channel, recipient, category, 'queued',
                   campaign_id, sequence_id, step, job, now() + make_interval(secs => $10), owner,
                   (job->>'parent_id')::uuid
              FROM input ORDER BY id
            ON CONFLICT (id) DO UPDATE
                SET lease_until = EXCLUDED.lease_until, owner = EXCLUDED.owner,
                    updated_at = now(),
                    -- A claim that never ended (no outcome, not parked: its
                    -- lease is still set) was a delivery that died: that
                    -- counts as an attempt, so a job that kills its worker
                    -- reaches the limit.
                    attempts = m.attempts + (m.lease_until IS NOT NULL)::int
                WHERE m.status = ANY($11)
                  AND (m.lease_until IS NULL
                       OR (m.owner IS NULL AND m.lease_until < now())
                       OR (m.owner IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM pg_locks l
                            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                              AND l.database = (SELECT oid FROM pg_database
                                                 WHERE datname = current_database())
                              AND l.classid = 21335::oid AND l.objid = m.owner::oid)))
                  AND m.agent_id = EXCLUDED.agent_id
                  AND m.job = EXCLUDED.job
            RETURNING m.id, m.attempts, (m.xmax = 0) AS inserted
        ), queued AS (
            INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
            SELECT i.id, i.agent_id, i.channel, 'queued', jsonb_build_object('category', i.category)
              FROM claimed c JOIN input i ON i.id = c.id
             WHERE c.inserted
        )
        SELECT i.id, c.id IS NOT NULL, c.attempts, c.inserted,
               (SELECT row_to_json(a)::jsonb FROM agents a WHERE a.id = i.agent_id),
               ARRAY(SELECT o.reason FROM opt_outs o
                      WHERE o.channel = i.channel AND o.address = i.recipient
                        AND (o.agent_id = i.agent_id OR o.agent_id IS NULL)),
               EXISTS(SELECT 1 FROM sequence_cancellations s
                       WHERE i.sequence_id IS NOT NULL AND s.agent_id = i.agent_id
                         AND s.sequence_id = i.sequence_id AND s.recipient IN ('', i.recipient)),
               p.status, p.lease_until,
               -- The agent's active integration (integrations::COLUMNS).
               g.id, g.agent_id, g.channel, g.provider, g.config, g.secrets_key_id,
               g.secrets_ciphertext, g.active, g.verification_status, g.last_error,
               g.created_at, g.updated_at, g.priority
               , p.agent_id IS DISTINCT FROM i.agent_id
                 OR (p.job IS NOT NULL AND p.job <> i.job),
               p.dead_letter_reason,
               c.id IS NOT NULL AND NOT c.inserted AND p.lease_until IS NOT NULL
          FROM input i
          LEFT JOIN claimed c ON c.id = i.id
          -- The row as it was before this statement (a statement does not
          -- see its own changes): why it could not be claimed, or whether
          -- the claim took it over from a delivery that died.
          LEFT JOIN LATERAL (
              SELECT o.status, o.lease_until, o.agent_id, o.job, o.dead_letter_reason
                FROM outbound_messages o
               WHERE o.id = i.id
          ) p ON true
          LEFT JOIN integrations g
                 ON c.id IS NOT NULL AND g.agent_id = i.agent_id
                AND g.channel = i.channel AND g.active AND g.priority = 0";

/// Claims jobs: creates each message row (and agent row, on first use), or
/// takes over one nobody owns any more (see [`CLAIM_SQL`]), and reads what
/// policy needs. One
/// statement for the whole batch; ids must be unique within it.
pub async fn claim_many(
    client: &impl GenericClient,
    rows: &[ClaimRow],
    lease: std::time::Duration,
) -> Result<Vec<Claim>, StoreError> {
    let col = |f: fn(&ClaimRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let channels: Vec<&str> = rows.iter().map(|r| r.channel).collect();
    let categories: Vec<&str> = rows.iter().map(|r| r.category).collect();
    let campaigns: Vec<Option<String>> = rows.iter().map(|r| r.campaign_id.clone()).collect();
    let sequences: Vec<Option<String>> = rows.iter().map(|r| r.sequence_id.clone()).collect();
    let steps: Vec<Option<i32>> = rows.iter().map(|r| r.step).collect();
    let jobs: Vec<&serde_json::Value> = rows.iter().map(|r| &r.job).collect();
    let owners: Vec<Option<i32>> = rows.iter().map(|r| r.owner).collect();
    let statement = client.prepare_cached(CLAIM_SQL).await?;
    let result = client
        .query(
            &statement,
            &[
                &ids,
                &col(|r| r.agent_id.clone()),
                &channels,
                &col(|r| r.recipient.clone()),
                &categories,
                &campaigns,
                &sequences,
                &steps,
                &jobs,
                &lease.as_secs_f64(),
                &&CLAIMABLE[..],
                &owners,
            ],
        )
        .await?;
    let mut by_id: std::collections::HashMap<Uuid, Claim> = result
        .iter()
        .map(|row| {
            let id: Uuid = row.get(0);
            let claimed: bool = row.get(1);
            let claim = if claimed {
                Claim::Owned(Box::new(Claimed {
                    attempts: row.get(2),
                    first_delivery: row.get(3),
                    taken_over: row.get(24),
                    agent: row.get(4),
                    opt_outs: row.get(5),
                    sequence_cancelled: row.get(6),
                    integration: super::integrations::from_row_at(row, 9),
                }))
            } else {
                // No status: another transaction created the row while this
                // statement ran; it owns the job for now.
                let status: Option<String> = row.get(7);
                let conflict: Option<bool> = row.get(22);
                match status {
                    // Checked first: another job's outcome is no answer for
                    // this one.
                    Some(status) if conflict == Some(true) => Claim::Conflict {
                        reason: format!(
                            "job id {id} is already used by another job (another agent's, or \
                             different content; that one is {status}): ids must be unique"
                        ),
                    },
                    Some(status) if !CLAIMABLE.contains(&status.as_str()) => Claim::Finished {
                        status,
                        dead_letter_reason: row.get(23),
                    },
                    _ => {
                        let until: Option<DateTime<Utc>> = row.get(8);
                        Claim::Leased {
                            until: until.unwrap_or_else(Utc::now),
                        }
                    }
                }
            };
            (id, claim)
        })
        .collect();
    rows.iter()
        .map(|r| {
            by_id.remove(&r.id).ok_or_else(|| {
                StoreError::shared(format!("claim returned no row for {}", r.id), false)
            })
        })
        .collect()
}

/// Claims through a [`super::batch::Batcher`].
pub struct ClaimOp {
    pub lease: std::time::Duration,
}

impl super::batch::BatchOp for ClaimOp {
    type Req = ClaimRow;
    type Resp = Claim;

    fn key(req: &ClaimRow) -> Uuid {
        req.id
    }

    async fn run(
        &self,
        client: &deadpool_postgres::Client,
        reqs: &[ClaimRow],
    ) -> Result<Vec<Claim>, StoreError> {
        claim_many(client, reqs, self.lease).await
    }
}

/// One row for `outbound_events`, written together with the outcome.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event: &'static str,
    pub detail: serde_json::Value,
}

/// The final state of one delivery of a job.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub status: &'static str,
    pub route: Option<Route>,
    pub provider: Option<&'a str>,
    pub integration_id: Option<Uuid>,
    pub provider_message_id: Option<&'a str>,
    /// Provider calls made by this delivery, added to the stored count.
    pub attempts: i32,
    pub last_error: Option<&'a str>,
    pub events: Vec<EventRow>,
    /// Set when the outcome must also reach `switchboard.dead`: kept on the
    /// row until the broker confirmed the copy.
    pub dead_letter_reason: Option<&'a str>,
}

/// An outcome as the record statement takes it.
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub id: Uuid,
    pub status: &'static str,
    pub route: Option<&'static str>,
    pub provider: Option<String>,
    pub integration_id: Option<Uuid>,
    pub provider_message_id: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub events: serde_json::Value,
    pub dead_letter_reason: Option<String>,
}

impl OutcomeRow {
    pub fn new(id: Uuid, outcome: &Outcome<'_>) -> Self {
        Self {
            id,
            status: outcome.status,
            route: outcome.route.map(Route::as_str),
            provider: outcome.provider.map(str::to_string),
            integration_id: outcome.integration_id,
            provider_message_id: outcome.provider_message_id.map(str::to_string),
            attempts: outcome.attempts,
            last_error: outcome.last_error.map(str::to_string),
            dead_letter_reason: outcome.dead_letter_reason.map(str::to_string),
            events: outcome
                .events
                .iter()
                .map(|e| json!({"event": e.event, "detail": e.detail}))
                .collect(),
        }
    }
}

/// Writes outcomes and their events and releases the leases, in one
/// statement for the batch. A message already in a terminal status is left
/// as it is (false for it): a late duplicate never overwrites a result.
pub async fn record_many(
    client: &impl GenericClient,
    rows: &[OutcomeRow],
) -> Result<Vec<bool>, StoreError> {
    const SQL: &str = "
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                                 $6::text[], $7::int4[], $8::text[], $9::jsonb[], $11::text[])
                AS t(id, status, route, provider, integration_id,
                     provider_message_id, attempts, last_error, events, dead_letter_reason)
        ), m AS (
            UPDATE outbound_messages o
               SET status = i.status, route = i.route, provider = i.provider,
                   -- The integration may have been disconnected while its
                   -- message was at the provider: the outcome is still
                   -- recorded, without the link (the event keeps the id).
                   integration_id = (SELECT g.id FROM integrations g
                                      WHERE g.id = i.integration_id),
                   provider_message_id = i.provider_message_id,
                   attempts = o.attempts + i.attempts, last_error = i.last_error,
                   dead_letter_reason = i.dead_letter_reason,
                   lease_until = NULL, owner = NULL, updated_at = now()
              FROM input i
             WHERE o.id = i.id AND o.status = ANY($10)
            RETURNING o.id, o.agent_id, o.channel, i.provider, i.provider_message_id, i.events
        ), e AS (
            INSERT INTO outbound_events
                (message_id, agent_id, channel, event, provider, provider_message_id, detail)
            SELECT m.id, m.agent_id, m.channel, e.event, m.provider, m.provider_message_id, e.detail
              FROM m, jsonb_to_recordset(m.events) AS e(event text, detail jsonb)
        )
        SELECT id FROM m";
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let routes: Vec<Option<&str>> = rows.iter().map(|r| r.route).collect();
    let providers: Vec<Option<&str>> = rows.iter().map(|r| r.provider.as_deref()).collect();
    let integrations: Vec<Option<Uuid>> = rows.iter().map(|r| r.integration_id).collect();
    let pmids: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.provider_message_id.as_deref())
        .collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
    let events: Vec<&serde_json::Value> = rows.iter().map(|r| &r.events).collect();
    let dead_letters: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.dead_letter_reason.as_deref())
        .collect();
    let statement = client.prepare_cached(SQL).await?;
    let updated: std::collections::HashSet<Uuid> = client
        .query(
            &statement,
            &[
                &ids,
                &statuses,
                &routes,
                &providers,
                &integrations,
                &pmids,
                &attempts,
                &errors,
                &events,
                &&CLAIMABLE[..],
                &dead_letters,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(ids.iter().map(|id| updated.contains(id)).collect())
}

/// Records outcomes through a [`super::batch::Batcher`].
pub struct RecordOp;

impl super::batch::BatchOp for RecordOp {
    type Req = OutcomeRow;
    type Resp = bool;

    fn key(req: &OutcomeRow) -> Uuid {
        req.id
    }

    async fn run(
        &self,
        client: &deadpool_postgres::Client,
        reqs: &[OutcomeRow],
    ) -> Result<Vec<bool>, StoreError> {
        record_many(client, reqs).await
    }
}

/// The dead letter a message owed is in `switchboard.dead`.
pub async fn clear_dead_letter(client: &impl GenericClient, id: Uuid) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE outbound_messages SET dead_letter_reason = NULL
              WHERE id = $1 AND dead_letter_reason IS NOT NULL",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Records a job that could not be parsed. The message row is created only
/// if the id was never seen; the `rejected` event is always appended.
pub async fn record_rejection(
    client: &impl GenericClient,
    id: Uuid,
    rejection: &Rejection,
) -> Result<(), StoreError> {
    const SQL: &str = "
        WITH m AS (
            INSERT INTO outbound_messages (id, agent_id, channel, status, last_error)
            VALUES ($1, $2, $3, 'rejected', $4)
            ON CONFLICT (id) DO NOTHING
        )
        INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
        VALUES ($1, $2, $3, 'rejected', jsonb_build_object('reason', $4::text))";
    let channel = rejection.channel.map(Channel::as_str);
    client
        .execute(
            SQL,
            &[&id, &rejection.agent_id, &channel, &rejection.reason],
        )
        .await?;
    Ok(())
}

/// An event about an agent's account rather than one message (a circuit
/// opening, say): `message_id` stays NULL.
pub async fn record_account_event(
    client: &impl GenericClient,
    agent_id: Option<&str>,
    channel: Channel,
    event: &str,
    provider: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO outbound_events (agent_id, channel, event, provider, detail)
             VALUES ($1, $2, $3, $4, $5)",
            &[&agent_id, &channel.as_str(), &event, &provider, detail],
        )
        .await?;
    Ok(())
}

/// Appends one event to a message's history.
pub async fn record_event(
    client: &impl GenericClient,
    message_id: Uuid,
    agent_id: &str,
    channel: Channel,
    event: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
             VALUES ($1, $2, $3, $4, $5)",
            &[&message_id, &agent_id, &channel.as_str(), &event, detail],
        )
        .await?;
    Ok(())
}

/// A status change a provider's report causes: to `to`, only from one of
/// `from`, so a late or repeated report never undoes a later state.
#[derive(Debug, Clone, Copy)]
pub struct StatusMove<'a> {
    pub to: &'a str,
    pub from: &'a [&'a str],
}

/// A message as other services see it (used by tests and the API).
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: Uuid,
    pub agent_id: Option<String>,
    pub channel: Option<String>,
    pub recipient: Option<String>,
    pub status: String,
    pub route: Option<String>,
    pub provider: Option<String>,
    pub integration_id: Option<Uuid>,
    pub provider_message_id: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub campaign_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The job this one falls back from (channel fallback).
    pub parent_id: Option<Uuid>,
}

const MESSAGE_COLUMNS: &str = "id, agent_id, channel, recipient, status, route, provider,
    integration_id, provider_message_id, attempts, last_error, campaign_id, created_at, updated_at,
    parent_id";

fn message_from_row(r: &tokio_postgres::Row) -> MessageRow {
    MessageRow {
        id: r.get(0),
        agent_id: r.get(1),
        channel: r.get(2),
        recipient: r.get(3),
        status: r.get(4),
        route: r.get(5),
        provider: r.get(6),
        integration_id: r.get(7),
        provider_message_id: r.get(8),
        attempts: r.get(9),
        last_error: r.get(10),
        campaign_id: r.get(11),
        created_at: r.get(12),
        updated_at: r.get(13),
        parent_id: r.get(14),
    }
}

pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<MessageRow>, StoreError> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM outbound_messages WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await?;
    Ok(row.as_ref().map(message_from_row))
}

/// Which of an agent's messages to list; `None` matches any.
#[derive(Debug, Default, Clone)]
pub struct MessageFilter<'a> {
    pub status: Option<&'a str>,
    pub channel: Option<Channel>,
    pub campaign_id: Option<&'a str>,
}

/// An agent's messages, newest first, after the keyset position `after`
/// (the `(created_at, id)` of the last row of the previous page).
pub async fn page_for_agent(
    client: &impl GenericClient,
    agent_id: &str,
    filter: &MessageFilter<'_>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<MessageRow>, StoreError> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM outbound_messages
          WHERE agent_id = $1
            AND ($2::text IS NULL OR status = $2)
            AND ($3::text IS NULL OR channel = $3)
            AND ($4::text IS NULL OR campaign_id = $4)
            AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
          ORDER BY created_at DESC, id DESC
          LIMIT $7"
    );
    let (at, id) = after.unzip();
    let channel = filter.channel.map(Channel::as_str);
    let rows = client
        .query(
            &sql,
            &[
                &agent_id,
                &filter.status,
                &channel,
                &filter.campaign_id,
                &at,
                &id,
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(message_from_row).collect())
}

/// What is already recorded under a job id: whose it is, the job as the
/// worker stored it (`None` for a rejected body), and its status.
#[derive(Debug, Clone)]
pub struct KnownJob {
    pub id: Uuid,
    pub agent_id: Option<String>,
    pub job: Option<serde_json::Value>,
    pub status: String,
}

/// The rows that exist for `ids`, in no particular order.
pub async fn known(client: &impl GenericClient, ids: &[Uuid]) -> Result<Vec<KnownJob>, StoreError> {
    let rows = client
        .query(
            "SELECT id, agent_id, job, status FROM outbound_messages WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KnownJob {
            id: r.get(0),
            agent_id: r.get(1),
            job: r.get(2),
            status: r.get(3),
        })
        .collect())
}

/// One entry of a message's history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRecord {
    pub event: String,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub detail: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// A message's events with who reported them and when, oldest first.
pub async fn event_history(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Vec<EventRecord>, StoreError> {
    let rows = client
        .query(
            "SELECT event, provider, provider_message_id, detail, created_at
               FROM outbound_events WHERE message_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EventRecord {
            event: r.get(0),
            provider: r.get(1),
            provider_message_id: r.get(2),
            detail: r.get(3),
            created_at: r.get(4),
        })
        .collect())
}

/// The event names recorded for a message, oldest first.
pub async fn events(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
    let rows = client
        .query(
            "SELECT event, detail FROM outbound_events WHERE message_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
