//! Operators' commands on jobs that did not get through:
//! `switchboard dead-letters list|replay` and `switchboard messages retry`.
//!
//! Replay and retry send a job again only through
//! [`crate::store::retry::reopen`], which moves a `failed` row back to
//! `queued` and records a `retried` event; every other status is refused, so
//! a job the provider accepted is never sent twice this way. A dead letter
//! leaves `switchboard.dead` only after its copy is confirmed in
//! `switchboard.jobs`; everything not chosen, or not replayable, is put back.

use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::{Channel, Connection};
use serde::Serialize;
use uuid::Uuid;

use crate::amqp;
use crate::config::Settings;
use crate::domain::SendJob;
use crate::store::{self, retry::Reopen};

/// One message in `switchboard.dead`, as `dead-letters list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The job id (message id property, else the body's `id`), if any.
    pub job_id: Option<Uuid>,
    pub agent_id: Option<String>,
    /// The `x-switchboard-reason` header.
    pub reason: String,
    /// The job row's status now, if it has one.
    pub status: Option<String>,
    /// The body as text (lossy for bytes that are not UTF-8).
    pub body: String,
}

/// Which dead letters `dead-letters replay` takes.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Ids(Vec<Uuid>),
}

/// What a replay or retry did, one line per job.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Published to `switchboard.jobs` (and, for a replay, removed from the
    /// dead queue).
    pub sent_again: Vec<Uuid>,
    /// Left alone, with why (a dead letter stays in `switchboard.dead`).
    pub refused: Vec<(String, String)>,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for id in &self.sent_again {
            out.push_str(&format!("{id}\tpublished again\n"));
        }
        for (id, why) in &self.refused {
            out.push_str(&format!("{id}\trefused: {why}\n"));
        }
        out
    }
}

/// The dead letters currently in `switchboard.dead` (at most `limit`),
/// oldest first. Nothing is removed: each message is fetched unacked and
/// put back when the listing is done.
pub async fn list_dead_letters(
    settings: &Settings,
    limit: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    let (conn, channel) = open(settings).await?;
    let held = take_all(&channel, limit).await?;
    let mut out: Vec<DeadLetter> = held.iter().map(describe).collect();
    let ids: Vec<Uuid> = out.iter().filter_map(|d| d.job_id).collect();
    let statuses = store::retry::statuses(&client, &ids).await?;
    for d in &mut out {
        d.status = d.job_id.and_then(|id| statuses.get(&id).cloned());
    }
    put_back(held).await?;
    let _ = conn.close(200, "listed".into()).await;
    Ok(out)
}

/// Republishes the chosen dead letters to `switchboard.jobs`, each with a
/// publisher confirm (mandatory, so an unroutable copy is an error), and
/// acks each from `switchboard.dead` only after its confirm.
///
/// A dead letter whose job row is `failed` is reopened first (a `retried`
/// event); one whose job has no row, or a row still in a claimable status,
/// is published as it is (the worker never recorded an outcome for it). Any
/// other status is refused and the dead letter stays: a `sent` job would
/// only be acked as a duplicate, a `rejected` one rejected again.
pub async fn replay_dead_letters(
    settings: &Settings,
    selection: Selection,
) -> anyhow::Result<Report> {
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    let (conn, channel) = open(settings).await?;
    let publish = amqp::confirm_channel(&conn).await?;
    let held = take_all(&channel, usize::MAX).await?;
    let mut report = Report::default();
    let mut keep = Vec::new();
    for delivery in held {
        let d = describe(&delivery);
        let chosen = match &selection {
            Selection::All => true,
            Selection::Ids(ids) => d.job_id.is_some_and(|id| ids.contains(&id)),
        };
        if !chosen {
            keep.push(delivery);
            continue;
        }
        let label = d
            .job_id
            .map_or_else(|| "(no job id)".to_string(), |id| id.to_string());
        let Some(id) = d.job_id else {
            report
                .refused
                .push((label, "no job id: nothing to claim it by".into()));
            keep.push(delivery);
            continue;
        };
        // The stored form, to compare with the row: the dead letter may be
        // another job that reused this id.
        let wire = SendJob::parse(&delivery.data).ok().map(|j| j.to_wire());
        let routing = d.agent_id.clone().unwrap_or_default();
        let reopened = match store::retry::reopen(&client, id, wire.as_ref(), "dead-letters replay")
            .await?
        {
            Reopen::Reopened { .. } => true,
            Reopen::Missing => false,
            Reopen::Refused { status } if store::messages::CLAIMABLE.contains(&status.as_str()) => {
                false
            }
            Reopen::Refused { status } => {
                report.refused.push((
                    label,
                    format!("the job is {status}; only failed jobs are sent again"),
                ));
                keep.push(delivery);
                continue;
            }
            Reopen::Different => {
                report.refused.push((
                    label,
                    "another job with this id is recorded; ids must be unique".into(),
                ));
                keep.push(delivery);
                continue;
            }
        };
        match amqp::publish_job(&publish, id, &routing, &delivery.data).await {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                tracing::info!(job_id = %id, reopened, "dead letter replayed");
                report.sent_again.push(id);
            }
            Err(e) => {
                if reopened {
                    store::retry::unpublished(&client, id, &e.to_string()).await?;
                }
                report
                    .refused
                    .push((label, format!("could not publish: {e}")));
                keep.push(delivery);
            }
        }
    }
    put_back(keep).await?;
    let _ = conn.close(200, "replayed".into()).await;
    Ok(report)
}

/// Which jobs `messages retry` takes.
#[derive(Debug, Clone)]
pub enum RetryTarget {
    Ids(Vec<Uuid>),
    /// `failed` jobs of one agent changed since a time.
    Failed {
        agent: String,
        since: chrono::DateTime<chrono::Utc>,
    },
}

/// Sends `failed` jobs again: each is reopened (a `retried` event) and its
/// stored job published to `switchboard.jobs` with a confirm. Jobs in any
/// other status are refused.
pub async fn retry_messages(settings: &Settings, target: RetryTarget) -> anyhow::Result<Report> {
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    let ids = match target {
        RetryTarget::Ids(ids) => ids,
        RetryTarget::Failed { agent, since } => {
            store::retry::failed_since(&client, &agent, since).await?
        }
    };
    let (conn, _) = open(settings).await?;
    let publish = amqp::confirm_channel(&conn).await?;
    let mut report = Report::default();
    for id in ids {
        let (agent_id, job) =
            match store::retry::reopen(&client, id, None, "messages retry").await? {
                Reopen::Reopened { agent_id, job } => (agent_id, job),
                Reopen::Refused { status } => {
                    report.refused.push((
                        id.to_string(),
                        format!("the job is {status}; only failed jobs can be retried"),
                    ));
                    continue;
                }
                Reopen::Missing | Reopen::Different => {
                    report.refused.push((id.to_string(), "no such job".into()));
                    continue;
                }
            };
        match amqp::publish_job(&publish, id, &agent_id, job.to_string().as_bytes()).await {
            Ok(()) => {
                tracing::info!(job_id = %id, agent_id, "retry published");
                report.sent_again.push(id);
            }
            Err(e) => {
                store::retry::unpublished(&client, id, &e.to_string()).await?;
                report
                    .refused
                    .push((id.to_string(), format!("could not publish: {e}")));
            }
        }
    }
    let _ = conn.close(200, "retried".into()).await;
    Ok(report)
}

async fn open(settings: &Settings) -> anyhow::Result<(Connection, Channel)> {
    let conn = amqp::connect(&settings.amqp_url, "switchboard-ops")
        .await
        .context("connecting to RabbitMQ")?;
    amqp::declare_topology(&conn)
        .await
        .context("declaring the topology")?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// Fetches up to `limit` of the messages now in `switchboard.dead`, unacked.
/// Counted from the first fetch, so messages put back meanwhile (by another
/// operator) are not fetched twice.
async fn take_all(
    channel: &Channel,
    limit: usize,
) -> anyhow::Result<Vec<lapin::message::Delivery>> {
    let mut held = Vec::new();
    let mut remaining = None;
    while held.len() < limit && remaining != Some(0) {
        let got = amqp::bounded(
            channel.basic_get(amqp::DEAD_QUEUE.into(), BasicGetOptions { no_ack: false }),
        )
        .await?;
        let Some(got) = got else { break };
        let left = remaining.map_or(got.message_count as usize, |n: usize| n - 1);
        remaining = Some(left.min(got.message_count as usize));
        held.push(got.delivery);
    }
    Ok(held)
}

/// Returns messages to `switchboard.dead`.
async fn put_back(held: Vec<lapin::message::Delivery>) -> anyhow::Result<()> {
    for delivery in held {
        delivery
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await?;
    }
    Ok(())
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
    let field = |k: &str| {
        body.as_ref()
            .and_then(|b| b.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    // The body's id is what the worker claims by; the message id property
    // only stands in for a body without one.
    let job_id = field("id")
        .and_then(|s| Uuid::parse_str(&s).ok())
        .or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|m| Uuid::parse_str(m.as_str()).ok())
        });
    let reason = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(amqp::REASON_HEADER).cloned())
        .map(|v| match v {
            AMQPValue::LongString(s) => s.to_string(),
            AMQPValue::ShortString(s) => s.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    DeadLetter {
        job_id,
        agent_id: field("agent_id"),
        reason,
        status: None,
        body: String::from_utf8_lossy(&delivery.data).into_owned(),
    }
}

/// `switchboard dead-letters …`
#[derive(Debug, clap::Subcommand)]
pub enum DeadLettersCli {
    /// Shows what is in switchboard.dead without removing anything.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publishes chosen dead letters to switchboard.jobs again (failed jobs
    /// are reopened; sent ones are refused) and removes them once confirmed.
    Replay {
        #[arg(long = "id", required_unless_present = "all", num_args = 1..)]
        ids: Vec<Uuid>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// `switchboard messages …`
#[derive(Debug, clap::Subcommand)]
pub enum MessagesCli {
    /// Sends failed jobs again: by id, or every failed job of an agent since
    /// a time. Only from `failed`; a `retried` event is recorded.
    Retry {
        #[arg(required_unless_present = "agent")]
        ids: Vec<Uuid>,
        #[arg(long, conflicts_with = "ids", requires = "since")]
        agent: Option<String>,
        /// Only `failed` is allowed: no other status may be sent again.
        #[arg(long, default_value = "failed")]
        status: String,
        /// RFC 3339, like 2026-01-31T00:00:00Z.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// Runs a `dead-letters` command, printing its result.
pub async fn dead_letters(settings: &Settings, command: DeadLettersCli) -> anyhow::Result<()> {
    match command {
        DeadLettersCli::List { limit, json } => {
            for d in list_dead_letters(settings, limit).await? {
                if json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    let id = d.job_id.map_or_else(|| "-".into(), |id| id.to_string());
                    let status = d.status.as_deref().unwrap_or("-");
                    println!("{id}\t{status}\t{}", d.reason);
                }
            }
            Ok(())
        }
        DeadLettersCli::Replay { ids, all } => {
            let selection = if all {
                Selection::All
            } else {
                Selection::Ids(ids)
            };
            finish(replay_dead_letters(settings, selection).await?)
        }
    }
}

/// Runs a `messages` command, printing its result.
pub async fn messages(settings: &Settings, command: MessagesCli) -> anyhow::Result<()> {
    let MessagesCli::Retry {
        ids,
        agent,
        status,
        since,
    } = command;
    anyhow::ensure!(
        status == "failed",
        "only failed jobs can be retried (a job in any other status may have been sent)"
    );
    let target = match (agent, since) {
        (Some(agent), Some(since)) => RetryTarget::Failed { agent, since },
        _ => RetryTarget::Ids(ids),
    };
    finish(retry_messages(settings, target).await?)
}

/// Prints a report; refusals make the command fail, so scripts notice.
fn finish(report: Report) -> anyhow::Result<()> {
    print!("{}", report.render());
    anyhow::ensure!(
        report.refused.is_empty(),
        "{} job(s) not sent again",
        report.refused.len()
    );
    Ok(())
}
