//! The RabbitMQ side of the worker: connect, declare, consume with manual
//! acks and a prefetch window, run each delivery in its own task, reconnect
//! with backoff when the connection is lost, and drain on shutdown.
//!
//! Concurrency is bounded by the prefetch count: RabbitMQ never hands this
//! consumer more unacked deliveries than that, so at most `prefetch` jobs are
//! in flight, and a slow provider never stops other jobs from starting.
//! This module never decides a job's fate; it applies [`broker_action`].

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{BrokerAction, WorkerContext, broker_action, process};
use crate::amqp;

/// Runs until `shutdown` is cancelled, reconnecting whenever RabbitMQ goes
/// away. Never returns an error: an outage is waited out, not reported by
/// exiting.
pub async fn run(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    let scheduler = tokio::spawn(super::scheduler::run(ctx.clone(), shutdown.clone()));
    let circuits = tokio::spawn(follow_shared_circuits(ctx.clone(), shutdown.clone()));
    let gauges = tokio::spawn(super::gauges::run(ctx.clone(), shutdown.clone()));
    let dead_letters = Arc::new(amqp::DeadLetters::new(&ctx.settings.amqp_url));
    consume_until_shutdown(&ctx, &dead_letters, &shutdown).await;
    dead_letters.close().await;
    let _ = scheduler.await;
    let _ = circuits.await;
    let _ = gauges.await;
    // Every job in hand has finished or been abandoned: release the lock, so
    // that redelivered copies of abandoned ones are taken over at once.
    ctx.liveness_stop.cancel();
    tracing::info!("worker stopped");
}

/// How long jobs still in hand after the grace period get to notice that
/// they are abandoned and return (they stop at their next wait).
const ABANDON_WAIT: Duration = Duration::from_secs(5);

async fn consume_until_shutdown(
    ctx: &Arc<WorkerContext>,
    dead_letters: &Arc<amqp::DeadLetters>,
    shutdown: &CancellationToken,
) {
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    while !shutdown.is_cancelled() {
        match consume(ctx, dead_letters, shutdown).await {
            Ok(Session::ShutDown) => break,
            Ok(Session::Lost(reason)) => {
                // It was up: start the next wait from the shortest delay.
                backoff = new_backoff();
                tracing::warn!(%reason, "lost the RabbitMQ connection; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach RabbitMQ; retrying"),
        }
        ctx.metrics.amqp_connected.set(0);
        let delay = backoff.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

enum Session {
    ShutDown,
    Lost(String),
}

async fn consume(
    ctx: &Arc<WorkerContext>,
    dead_letters: &Arc<amqp::DeadLetters>,
    shutdown: &CancellationToken,
) -> Result<Session, amqp::BrokerError> {
    // The whole set-up is bounded: a connection that dies half-way must lead
    // to the next attempt, not to a wait on a reply that never comes.
    let (conn, channel, mut consumer) = amqp::bounded(async {
        let conn = amqp::connect(&ctx.settings.amqp_url, "switchboard-worker").await?;
        amqp::declare_topology(&conn).await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(ctx.settings.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                amqp::SEND_QUEUE.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((conn, channel, consumer))
    })
    .await?;
    ctx.metrics.amqp_connected.set(1);
    ctx.metrics.amqp_connects.inc();
    tracing::info!(
        prefetch = ctx.settings.prefetch,
        queue = amqp::SEND_QUEUE,
        "consuming"
    );

    let tasks = TaskTracker::new();
    // Shutdown has two stages: `shutdown` stops new deliveries and the waits
    // that come before a provider call; `abandon` (once the grace period is
    // over) also stops the waits of jobs whose outcome is not yet recorded.
    // A send the provider accepted is thus recorded through a database blip
    // during shutdown instead of being abandoned and sent again.
    let abandon = CancellationToken::new();
    let session = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Session::ShutDown,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    let dead_letters = dead_letters.clone();
                    let signals = super::job::Signals {
                        stop: shutdown.clone(),
                        abandon: abandon.clone(),
                    };
                    tasks.spawn(async move { handle(&ctx, delivery, &dead_letters, &signals).await });
                }
                Some(Err(e)) => break Session::Lost(e.to_string()),
                None => break Session::Lost("consumer stream ended".into()),
            },
        }
    };
    tasks.close();

    if let Session::ShutDown = session {
        // Take no new deliveries, let the ones in hand finish (bounded), then
        // close: whatever is still unacked goes back to the queue.
        let _ = amqp::bounded(channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
            .await;
        let grace = ctx.settings.shutdown_grace;
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "in-flight jobs did not finish in time; they stay unacked and will be redelivered"
            );
            abandon.cancel();
            let _ = tokio::time::timeout(ABANDON_WAIT, tasks.wait()).await;
        }
        let _ = amqp::bounded(channel.close(200, "shutting down".into())).await;
        let _ = amqp::bounded(conn.close(200, "shutting down".into())).await;
    }
    // On a lost connection the tasks in hand keep going: they record their
    // outcomes in Postgres, their acks fail, and the redelivered copies find
    // the recorded outcome and are acked without sending again.
    Ok(session)
}

/// How often a worker reads the circuits other processes opened.
const SHARED_CIRCUITS_EVERY: Duration = Duration::from_secs(1);

/// Adopts, every second, the circuits other worker processes opened, so an
/// account that is down is left alone by every process at once (one read
/// per second per process, not one per send).
async fn follow_shared_circuits(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SHARED_CIRCUITS_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = ctx.clock.now();
        let open = async {
            let client = ctx.pool.get().await?;
            crate::store::circuits::open_now(&client, now).await
        }
        .await;
        match open {
            Ok(open) => {
                for (key, until) in open {
                    ctx.circuits.adopt(&key, until);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read shared circuits"),
        }
    }
}

async fn handle(
    ctx: &WorkerContext,
    delivery: Delivery,
    dead_letters: &amqp::DeadLetters,
    signals: &super::job::Signals,
) {
    ctx.metrics.jobs_consumed.inc();
    ctx.metrics.jobs_in_flight.inc();
    // Every line of this job's work carries these fields (in JSON logs,
    // under `span`). `message_id` is the publisher's AMQP property, known
    // even when the body cannot be parsed; the others are recorded by
    // `job::process` once the body is read.
    let span = tracing::info_span!(
        "job",
        job_id = tracing::field::Empty,
        agent_id = tracing::field::Empty,
        channel = tracing::field::Empty,
        message_id = tracing::field::Empty,
        redelivered = delivery.redelivered,
    );
    if let Some(id) = delivery.properties.message_id() {
        span.record("message_id", id.as_str());
    }
    async {
        let outcome = process(ctx, &delivery.data, signals).await;
        if let Some(ts) = delivery.properties.timestamp() {
            let age = chrono::Utc::now().timestamp() - *ts as i64;
            if age >= 0 {
                ctx.metrics.job_latency.observe(age as f64);
            }
        }
        match broker_action(&outcome) {
            BrokerAction::Ack => ack(&delivery).await,
            BrokerAction::DeadLetter { reason, owed_by } => {
                match dead_letters
                    .publish(&delivery.data, &delivery.properties, &reason)
                    .await
                {
                    Ok(()) => {
                        if let Some(id) = owed_by {
                            super::job::dead_letter_delivered(ctx, id).await;
                        }
                        ack(&delivery).await
                    }
                    Err(e) => {
                        // Not acked, so not lost: requeue and try again. The
                        // message row remembers that a dead letter is owed,
                        // so the redelivered copy is dead-lettered again
                        // rather than acked as a duplicate.
                        tracing::warn!(error = %e, "could not dead-letter; requeueing");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = amqp::bounded(delivery.nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        }))
                        .await;
                    }
                }
            }
            BrokerAction::LeaveUnacked => {
                tracing::info!(
                    "shutting down before the outcome was recorded; leaving the job for redelivery"
                );
            }
        }
    }
    .instrument(span)
    .await;
    ctx.metrics.jobs_in_flight.dec();
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = amqp::bounded(delivery.ack(BasicAckOptions::default())).await {
        // The outcome is recorded; the redelivered copy will be acked as a
        // duplicate without sending.
        tracing::warn!(error = %e, "ack failed after the outcome was recorded");
    }
}
