//! The scheduler: republishes parked jobs (`scheduled_jobs`) to
//! `switchboard.jobs` when they are due. Every worker runs one.
//!
//! Due rows are locked `FOR UPDATE SKIP LOCKED` inside a transaction, so two
//! workers never take the same row; each is published `mandatory` with a
//! publisher confirm and deleted only after RabbitMQ confirmed that a queue
//! took it, in the same transaction. A crash between the confirm and the
//! commit republishes the job later: harmless, because the job id is
//! claimed idempotently.
//!
//! "Due" is judged by this process's clock. A worker whose clock runs
//! behind treats a job due within [`crate::policy::CLOCK_SKEW_ALLOWANCE`]
//! as due, so a scheduler slightly ahead does not wake a job only for it
//! to be parked again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::WorkerContext;
use crate::amqp;
use crate::store::{StoreError, scheduled};

/// Rows taken per transaction.
const BATCH: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] amqp::BrokerError),
}

pub async fn run(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    let mut last_prune = None;
    while !shutdown.is_cancelled() {
        if let Err(e) = session(&ctx, &shutdown, &mut last_prune).await {
            tracing::warn!(error = %e, "scheduler: RabbitMQ or Postgres unavailable; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// One RabbitMQ connection's worth of ticks.
async fn session(
    ctx: &WorkerContext,
    shutdown: &CancellationToken,
    last_prune: &mut Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), TickError> {
    let (conn, channel) = amqp::bounded(async {
        let conn = amqp::connect(&ctx.settings.amqp_url, "switchboard-scheduler").await?;
        amqp::declare_topology(&conn).await?;
        let channel = amqp::confirm_channel(&conn).await?;
        Ok::<_, lapin::Error>((conn, channel))
    })
    .await?;
    loop {
        // Publish while there is a full batch due; then wait for the next tick.
        while publish_due(ctx, &channel).await? == BATCH as usize {}
        let now = ctx.clock.now();
        if last_prune.is_none_or(|t| now - t > chrono::Duration::hours(1)) {
            let client = ctx.pool.get().await.map_err(StoreError::from)?;
            scheduled::prune_counters(&client, now - chrono::Duration::days(2)).await?;
            *last_prune = Some(now);
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.scheduler_interval) => {}
            _ = shutdown.cancelled() => {
                let _ = amqp::bounded(conn.close(200, "shutting down".into())).await;
                return Ok(());
            }
        }
    }
}

/// How long a job RabbitMQ could not route waits before it is tried again:
/// the topology is broken (the binding of `switchboard.send` is missing, or
/// the exchange routes by other rules) and only an operator or a restarting
/// worker's declarations mend it, so retrying every tick would only spin.
const UNROUTABLE_RETRY: chrono::Duration = chrono::Duration::seconds(60);

/// Publishes one batch of due jobs; returns how many were published.
///
/// Each job is published `mandatory`: a job that reaches no queue is
/// returned (`basic.return`) and then confirmed, and a confirm alone would
/// say nothing of whether any queue took it. Only jobs confirmed without a
/// return (or nack) leave `scheduled_jobs`; the others stay parked.
pub async fn publish_due(
    ctx: &WorkerContext,
    channel: &lapin::Channel,
) -> Result<usize, TickError> {
    let mut client = ctx.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let now = ctx.clock.now();
    let due = scheduled::lock_due(&tx, now, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    // Publish them all, then wait for every confirm: one round of waiting
    // per batch instead of one per job.
    let mut confirms = Vec::with_capacity(due.len());
    for job in &due {
        let body = job.job.to_string();
        let confirm = amqp::bounded(channel.basic_publish(
            amqp::JOBS_EXCHANGE.into(),
            job.agent_id.as_str().into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body.as_bytes(),
            amqp::job_properties(job.id),
        ))
        .await?;
        confirms.push(confirm);
    }
    let confirmations = amqp::bounded(async {
        let mut all = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            all.push(confirm.await?);
        }
        Ok::<_, lapin::Error>(all)
    })
    .await?;
    let mut published = Vec::with_capacity(due.len());
    let mut returned = Vec::new();
    let mut nacked = 0usize;
    for (job, confirmation) in due.iter().zip(confirmations) {
        match confirmation {
            lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => {
                published.push(job.id)
            }
            lapin::Confirmation::Ack(Some(_)) => returned.push(job.id),
            // RabbitMQ could not take it (an internal error): the row stays
            // due and is tried again at the next tick.
            lapin::Confirmation::Nack(_) => nacked += 1,
        }
    }
    if !returned.is_empty() {
        tracing::error!(
            count = returned.len(),
            exchange = amqp::JOBS_EXCHANGE,
            queue = amqp::SEND_QUEUE,
            "RabbitMQ could not route due jobs to any queue (is {} bound to {}?); \
             they stay parked and are tried again",
            amqp::SEND_QUEUE,
            amqp::JOBS_EXCHANGE,
        );
        scheduled::postpone(&tx, &returned, now + UNROUTABLE_RETRY).await?;
    }
    if nacked > 0 {
        tracing::warn!(count = nacked, "RabbitMQ refused due jobs (nack); retrying");
    }
    scheduled::delete(&tx, &published).await?;
    tx.commit().await.map_err(StoreError::from)?;
    ctx.metrics
        .scheduled_published
        .inc_by(published.len() as u64);
    tracing::debug!(count = published.len(), "republished due jobs");
    Ok(published.len())
}
