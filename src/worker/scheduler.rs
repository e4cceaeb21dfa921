//! The scheduler: republishes parked jobs (`scheduled_jobs`) to
//! `switchboard.jobs` when they are due. Every worker runs one.
//!
//! Due rows are locked `FOR UPDATE SKIP LOCKED` inside a transaction, so two
//! workers never take the same row; each is published with a publisher
//! confirm and deleted only after RabbitMQ confirmed it, in the same
//! transaction. A crash between the confirm and the commit republishes the
//! job later: harmless, because the job id is claimed idempotently.

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

/// Publishes one batch of due jobs; returns how many.
pub async fn publish_due(
    ctx: &WorkerContext,
    channel: &lapin::Channel,
) -> Result<usize, TickError> {
    let mut client = ctx.pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let due = scheduled::lock_due(&tx, ctx.clock.now(), BATCH).await?;
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
            lapin::options::BasicPublishOptions::default(),
            body.as_bytes(),
            amqp::job_properties(job.id),
        ))
        .await?;
        confirms.push(confirm);
    }
    // A nack rolls back the transaction: the rows stay and are tried again.
    amqp::await_confirms(confirms).await?;
    let ids: Vec<_> = due.iter().map(|j| j.id).collect();
    scheduled::delete(&tx, &ids).await?;
    tx.commit().await.map_err(StoreError::from)?;
    ctx.metrics.scheduled_published.inc_by(ids.len() as u64);
    tracing::debug!(count = ids.len(), "republished due jobs");
    Ok(ids.len())
}
