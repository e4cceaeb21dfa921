//! One job's path: parse → claim → route → send with retries → record.
//!
//! Crash safety, line by line:
//! - before the claim commits: nothing is recorded; the unacked delivery is
//!   redelivered and starts over;
//! - after the claim, before the provider call: the row is `queued` with a
//!   lease; a redelivered copy waits for the lease to lapse, then sends;
//! - after the provider accepted, before the outcome commits: the one window
//!   where a redelivery sends again. Resend dedups on the job id; Twilio
//!   cannot (README, "Delivery guarantees");
//! - after the outcome commits, before the ack: the redelivered copy finds a
//!   terminal status and is acked without calling anyone.
//!
//! Database errors on this path are waited out (with backoff) rather than
//! turned into failures: a job must not be marked failed, nor acked, because
//! Postgres blinked.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::WorkerContext;
use super::failover;
use super::limits;
use super::send::Delivery;
use crate::domain::{Route, SendJob};
use crate::policy::{self, AgentPolicy, Hold};
use crate::providers::ProviderError;
use crate::providers::sender::Branding;
use crate::routing::{ResolvedRoute, RouteError};
use crate::store::StoreError;
use crate::store::messages::{self, Claim, EventRow};
use crate::store::scheduled;

/// How one delivery of a job ended. Each maps to one broker action
/// ([`super::broker_action`]) and one recorded status.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recorded `sent`.
    Sent,
    /// Recorded `failed`. Jobs that failed only because retries ran out (or
    /// deliveries kept dying) are also dead-lettered, so an operator can
    /// replay them: `dead_letter` is then the message id whose row records
    /// that a dead letter is owed.
    Failed {
        dead_letter: Option<Uuid>,
        reason: String,
    },
    /// Recorded `unknown`: the provider may have taken the message but its
    /// answer was lost, and it cannot deduplicate a second try.
    Unknown,
    /// Not a valid job: recorded `rejected` when its id was readable.
    Rejected { reason: String },
    /// The job already had an outcome; nothing was done.
    Duplicate,
    /// Recorded `suppressed`: the recipient opted out.
    Suppressed,
    /// Recorded `cancelled`: its sequence was cancelled.
    Cancelled,
    /// Recorded `capped`: over the agent's per-recipient cap, and the job
    /// said `"cap": "drop"`.
    Capped,
    /// Parked in `scheduled_jobs` until this time (`scheduled` or `deferred`).
    Deferred { until: DateTime<Utc> },
    /// The database refused the write for a reason retrying cannot fix (a
    /// bug or a schema mismatch): dead-lettered so nothing is lost.
    Unrecordable { reason: String },
    /// Shutdown came first; nothing new was recorded.
    Abandoned,
}

/// Why a step stopped early.
pub(super) enum Stop {
    Shutdown,
    Store(StoreError),
}

/// What tells a job to stop, in two stages (SIGTERM, then the end of the
/// grace period).
#[derive(Clone, Default)]
pub struct Signals {
    /// Stop waiting where nothing was sent yet (a claim, a rate limit, the
    /// backoff before the next try): the job is left for redelivery.
    pub stop: CancellationToken,
    /// Stop waiting even with an outcome in hand (the grace period is over):
    /// until then a send the provider accepted keeps trying to be recorded,
    /// because giving up would send it again.
    pub abandon: CancellationToken,
}

/// Processes one delivery body to a recorded outcome.
pub async fn process(ctx: &WorkerContext, body: &[u8], signals: &Signals) -> Outcome {
    match process_inner(ctx, body, signals).await {
        Ok(outcome) => outcome,
        Err(Stop::Shutdown) => Outcome::Abandoned,
        Err(Stop::Store(e)) => {
            tracing::error!(error = %e, "database refused a write; dead-lettering the job");
            Outcome::Unrecordable {
                reason: format!("internal: could not record the outcome: {e}"),
            }
        }
    }
}

async fn process_inner(
    ctx: &WorkerContext,
    body: &[u8],
    signals: &Signals,
) -> Result<Outcome, Stop> {
    // Waits after the claim use `abandon` unless they come before a send.
    let shutdown = &signals.abandon;
    let span = tracing::Span::current();
    let job = match SendJob::parse(body) {
        Ok(job) => job,
        Err(rejection) => {
            tracing::warn!(reason = %rejection.reason, "rejected job");
            if let Some(id) = rejection.id {
                span.record("job_id", tracing::field::display(id));
                let rejection = &rejection;
                with_db(ctx, shutdown, |c| async move {
                    messages::record_rejection(&c, id, rejection).await
                })
                .await?;
            }
            ctx.metrics.message_outcome(
                rejection.channel.map(|c| c.as_str()).unwrap_or(""),
                "",
                "",
                "rejected",
            );
            return Ok(Outcome::Rejected {
                reason: format!("rejected: {}", rejection.reason),
            });
        }
    };
    span.record("job_id", tracing::field::display(job.id));
    span.record("agent_id", tracing::field::display(&job.agent_id));
    span.record("channel", job.channel.as_str());

    let (claimed, epoch) = match claim(ctx, &job, &signals.stop).await? {
        (Claimed::Owned(claimed), epoch) => (claimed, epoch),
        (Claimed::Done(outcome), _) => return Ok(outcome),
    };
    let prior_attempts = claimed.attempts;
    if claimed.taken_over && prior_attempts >= ctx.settings.max_attempts as i32 {
        return give_up_on_lost_deliveries(ctx, &job, prior_attempts, shutdown).await;
    }

    let agent = AgentPolicy::from_row(claimed.agent.as_ref());
    let branding = Branding::from_agent_row(claimed.agent.as_ref());
    let now = ctx.clock.now();
    if let Some(hold) = policy::hold(
        &job,
        &agent,
        &claimed.opt_outs,
        claimed.sequence_cancelled,
        now,
    ) {
        return apply_hold(ctx, &job, hold, shutdown).await;
    }

    let route = match ctx.router.resolve(&job, claimed.integration) {
        Ok(route) => route,
        Err(e) => return record_unroutable(ctx, &job, e, shutdown).await,
    };
    let job = match whatsapp_window(ctx, &job, &route, now, shutdown).await? {
        Ok(None) => job,
        Ok(Some(fallback)) => fallback,
        Err(refused) => return Ok(refused),
    };

    let capped = match limits::frequency_cap(ctx, &job, &agent, now, shutdown).await? {
        Ok(capped) => capped,
        Err(held) => return Ok(held),
    };

    let allow_platform = claimed
        .agent
        .as_ref()
        .and_then(|a| a.get("allow_platform_fallback"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let step = failover::Step {
        job: &job,
        agent: &agent,
        allow_platform,
        branding: &branding,
        prior_attempts,
        epoch,
    };
    let outcome = failover::send_step(ctx, step, route, signals).await?;
    if capped && matches!(outcome, Outcome::Failed { .. }) {
        limits::release_cap(ctx, job.id, shutdown).await?;
    }
    Ok(outcome)
}

/// WhatsApp's 24-hour rule, after routing and before any provider call
/// ([`crate::policy::whatsapp_window`]): `Ok(None)` sends the job as it is,
/// `Ok(Some(job))` sends its fallback template instead, `Err(outcome)` is a
/// refusal, already recorded as `failed`.
async fn whatsapp_window(
    ctx: &WorkerContext,
    job: &SendJob,
    route: &ResolvedRoute,
    now: DateTime<Utc>,
    shutdown: &CancellationToken,
) -> Result<Result<Option<SendJob>, Outcome>, Stop> {
    use crate::policy::whatsapp_window::{Decision, decide, needs_window};
    // The simulation sends nothing and never hears a reply, so it has no
    // window to keep.
    if route.route == Route::Simulation || !needs_window(job) {
        return Ok(Ok(None));
    }
    let last = with_db(ctx, shutdown, |c| async move {
        crate::store::whatsapp_windows::last_inbound(&c, &job.agent_id, job.recipient.as_str())
            .await
    })
    .await?;
    match decide(job, last, now) {
        Decision::AsIs => Ok(Ok(None)),
        Decision::Fallback(template_job) => Ok(Ok(Some(*template_job))),
        Decision::Refuse(reason) => {
            tracing::info!(%reason, "not sent");
            let detail = json!({"code": "outside_whatsapp_window", "message": reason,
                                "last_inbound_at": last, "provider": route.provider.name()});
            let unsent = Unsent {
                status: "failed",
                last_error: Some(&reason),
                label: "failed",
                detail,
                dead_letter_reason: None,
            };
            record_unsent(ctx, job, unsent, shutdown).await?;
            Ok(Err(Outcome::Failed {
                dead_letter: None,
                reason,
            }))
        }
    }
}

/// What claiming decided.
pub(super) enum Claimed {
    /// This delivery owns the job and decides it.
    Owned(Box<messages::Claimed>),
    /// Nothing to send: the outcome of this delivery.
    Done(Outcome),
}

/// Claims the job. When another worker holds the lease (a redelivery while
/// the first copy is still being sent, or after that worker died), waits
/// until it finishes or the lease lapses.
pub(super) async fn claim(
    ctx: &WorkerContext,
    job: &SendJob,
    shutdown: &CancellationToken,
) -> Result<(Claimed, i32), Stop> {
    let mut row = messages::ClaimRow::new(job);
    loop {
        // Claim only while holding the lock that makes the claim ours.
        let epoch = ctx.liveness.held(shutdown).await.ok_or(Stop::Shutdown)?;
        row.owner = Some(epoch);
        let row = &row;
        let claim = retry_db(ctx, shutdown, || ctx.claims.call(row.clone())).await?;
        match claim {
            Claim::Owned(claimed) => {
                if !claimed.first_delivery {
                    tracing::debug!(
                        prior_attempts = claimed.attempts,
                        "claimed a job that was seen before (due, redelivered or taken over)"
                    );
                }
                return Ok((Claimed::Owned(claimed), epoch));
            }
            Claim::Finished {
                status,
                dead_letter_reason: Some(reason),
            } => {
                tracing::info!(%status, "job already has an outcome that still owes a dead letter");
                return Ok((
                    Claimed::Done(Outcome::Failed {
                        dead_letter: Some(job.id),
                        reason,
                    }),
                    epoch,
                ));
            }
            Claim::Finished { status, .. } => {
                tracing::info!(%status, "job already has an outcome; acking without sending");
                ctx.metrics
                    .message_outcome(job.channel.as_str(), "", "", "duplicate");
                return Ok((Claimed::Done(Outcome::Duplicate), epoch));
            }
            Claim::Conflict { reason } => {
                tracing::warn!(%reason, "job id reused; refusing this job");
                ctx.metrics
                    .message_outcome(job.channel.as_str(), "", "", "rejected");
                return Ok((Claimed::Done(Outcome::Rejected { reason }), epoch));
            }
            Claim::Leased { until } => {
                let wait = (until - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(200), Duration::from_secs(2));
                tracing::debug!(?wait, "job is leased by another delivery; waiting");
                sleep_or_shutdown(wait, shutdown).await?;
            }
        }
    }
}

/// A job to put back in `scheduled_jobs`.
#[derive(Debug, Clone)]
pub(super) struct Park {
    pub(super) until: DateTime<Utc>,
    /// `scheduled` or `deferred`.
    pub(super) status: &'static str,
    /// `send_at`, `quiet_hours`, `rate_limit`, `quota`, `retry_after`, `circuit_open`.
    pub(super) reason: &'static str,
    pub(super) detail: serde_json::Value,
}

impl Park {
    pub(super) fn deferred(
        until: DateTime<Utc>,
        reason: &'static str,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            until,
            status: "deferred",
            reason,
            detail,
        }
    }
}

/// Suppressed and cancelled jobs get their final status; scheduled and
/// quiet-hour jobs are parked until they may go.
async fn apply_hold(
    ctx: &WorkerContext,
    job: &SendJob,
    hold: Hold,
    shutdown: &CancellationToken,
) -> Result<Outcome, Stop> {
    let (status, detail) = match hold {
        Hold::Scheduled { at } => {
            let park = Park {
                until: at,
                status: "scheduled",
                reason: "send_at",
                detail: json!({}),
            };
            return park_job(ctx, job, None, park, Attempted::default(), shutdown).await;
        }
        Hold::Window(w) => {
            let park = Park::deferred(w.until, w.reason, w.detail());
            return park_job(ctx, job, None, park, Attempted::default(), shutdown).await;
        }
        Hold::Suppressed { reason } => ("suppressed", json!({"reason": reason})),
        Hold::Cancelled => (
            "cancelled",
            json!({"reason": "sequence_cancelled", "sequence_id": job.campaign.sequence_id}),
        ),
    };
    tracing::info!(status, %detail, "not sent");
    let reason = detail["reason"].as_str().map(str::to_string);
    let unsent = Unsent {
        status,
        last_error: reason.as_deref(),
        label: status,
        detail,
        dead_letter_reason: None,
    };
    record_unsent(ctx, job, unsent, shutdown).await?;
    Ok(if status == "suppressed" {
        Outcome::Suppressed
    } else {
        Outcome::Cancelled
    })
}

/// What a delivery did before it was parked.
#[derive(Default)]
pub(super) struct Attempted {
    pub(super) attempts: i32,
    pub(super) last_error: Option<String>,
    pub(super) events: Vec<EventRow>,
}

/// Parks the job in `scheduled_jobs` and records why and until when.
pub(super) async fn park_job(
    ctx: &WorkerContext,
    job: &SendJob,
    route: Option<&ResolvedRoute>,
    park: Park,
    attempted: Attempted,
    shutdown: &CancellationToken,
) -> Result<Outcome, Stop> {
    let Attempted {
        attempts,
        last_error,
        mut events,
    } = attempted;
    let mut detail = park.detail.clone();
    detail["reason"] = json!(park.reason);
    detail["due_at"] = json!(park.until);
    let event = if park.status == "scheduled" {
        "scheduled"
    } else {
        "deferred"
    };
    tracing::info!(reason = park.reason, due_at = %park.until, "parked until due");
    events.push(EventRow { event, detail });
    let parking = scheduled::Parking {
        due_at: park.until,
        status: park.status,
        reason: park.reason,
        attempts,
        last_error: last_error.as_deref(),
        events: &events,
    };
    let parking = &parking;
    with_db(ctx, shutdown, |c| async move {
        scheduled::park(&c, job, parking).await
    })
    .await?;
    let provider = route.map(|r| r.provider.name()).unwrap_or("");
    let route_label = route.map(|r| r.route.as_str()).unwrap_or("");
    ctx.metrics
        .message_outcome(job.channel.as_str(), provider, route_label, park.status);
    Ok(Outcome::Deferred { until: park.until })
}

pub(super) async fn record_delivery(
    ctx: &WorkerContext,
    job: &SendJob,
    route: &ResolvedRoute,
    mut delivery: Delivery,
    shutdown: &CancellationToken,
) -> Result<Outcome, Stop> {
    let provider = route.provider.name();
    let total_attempts = delivery.prior_attempts + delivery.attempts;
    let (status, outcome, last_error, provider_message_id) = match &delivery.result {
        Ok(accepted) => {
            let mut detail = json!({
                "route": route.route.as_str(),
                "attempts": total_attempts,
                "provider_response": accepted.detail,
                // Policy time (the injected clock) of the provider call.
                "at": delivery.called_at,
            });
            if let Some(slot) = delivery.rate_slot {
                detail["rate_slot"] = json!(slot);
            }
            if accepted.provider_message_id.is_none() {
                detail["warning"] =
                    json!("the provider accepted the message but its id could not be read");
            }
            delivery.events.push(EventRow {
                event: "sent",
                detail,
            });
            (
                "sent",
                Outcome::Sent,
                None,
                accepted.provider_message_id.clone(),
            )
        }
        Err(error) if delivery.unconfirmed => {
            let mut detail = error.to_detail();
            detail["attempts"] = json!(total_attempts);
            detail["route"] = json!(route.route.as_str());
            detail["integration_id"] = json!(route.integration_id);
            detail["why"] = json!(
                "the provider may have taken the message but its answer was lost; it takes no \
                 idempotency key, so switchboard does not send it again \
                 (SWITCHBOARD_AT_LEAST_ONCE opts a provider into retrying)"
            );
            delivery.events.push(EventRow {
                event: "unknown",
                detail,
            });
            tracing::warn!(error = %error, recipient = %job.recipient.masked(), "outcome unknown; not resending");
            let reason = format!("outcome unknown, not resent: {error}");
            ("unknown", Outcome::Unknown, Some(reason), None)
        }
        Err(error) => {
            let mut detail = error.to_detail();
            detail["attempts"] = json!(total_attempts);
            detail["retries_exhausted"] = json!(delivery.exhausted);
            delivery.events.push(EventRow {
                event: "failed",
                detail,
            });
            if error.is_unreachable_on_channel()
                && let Some(mut next) = super::fallback::schedule(ctx, job, shutdown).await?
            {
                next["after"] = json!("failed");
                delivery.events.push(EventRow {
                    event: "fallback",
                    detail: next,
                });
            }
            let reason = if delivery.exhausted {
                format!("retries exhausted after {total_attempts} attempts: {error}")
            } else {
                error.to_string()
            };
            tracing::warn!(error = %error, recipient = %job.recipient.masked(), "provider refused the message");
            if error.recipient_opted_out {
                opted_out_at_provider(ctx, job, provider, error, shutdown).await?;
            }
            if let (true, Some(id)) = (error.credentials_refused, route.integration_id) {
                let msg = error.to_string();
                with_db(ctx, shutdown, |c| {
                    let msg = msg.clone();
                    async move { crate::store::integrations::mark_unverified(&c, id, &msg).await }
                })
                .await?;
            }
            (
                "failed",
                Outcome::Failed {
                    dead_letter: delivery.exhausted.then_some(job.id),
                    reason: reason.clone(),
                },
                Some(reason),
                None,
            )
        }
    };
    let record = messages::Outcome {
        status,
        route: Some(route.route),
        provider: Some(provider),
        integration_id: route.integration_id,
        provider_message_id: provider_message_id.as_deref(),
        attempts: delivery.attempts,
        last_error: last_error.as_deref(),
        events: delivery.events,
        dead_letter_reason: match &outcome {
            Outcome::Failed {
                dead_letter: Some(_),
                reason,
            } => Some(reason.as_str()),
            _ => None,
        },
    };
    record_outcome(ctx, job, &record, shutdown).await?;
    ctx.metrics
        .message_outcome(job.channel.as_str(), provider, route.route.as_str(), status);
    if let Some(id) = &provider_message_id {
        tracing::info!(provider, provider_message_id = %id, attempts = total_attempts, "sent");
    }
    Ok(outcome)
}

/// The provider says the recipient refused messages (Twilio 21610 after a
/// STOP): remember it, so later jobs are suppressed without a provider call.
async fn opted_out_at_provider(
    ctx: &WorkerContext,
    job: &SendJob,
    provider: &str,
    error: &ProviderError,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    let source = format!("{provider}:{}", error.code.as_deref().unwrap_or("refused"));
    let source = &source;
    with_db(ctx, shutdown, |mut c| async move {
        crate::store::opt_outs::add(
            &mut c,
            Some(&job.agent_id),
            job.channel,
            job.recipient.as_str(),
            "provider_rejected",
            Some(source),
        )
        .await
    })
    .await?;
    Ok(())
}

/// No account can send the job: a permanent failure, recorded with the
/// reason code (`no_provider`, …) so the publisher can see what to set up.
async fn record_unroutable(
    ctx: &WorkerContext,
    job: &SendJob,
    error: RouteError,
    shutdown: &CancellationToken,
) -> Result<Outcome, Stop> {
    let code = error.code();
    let reason = format!("{code}: {error}");
    tracing::warn!(%reason, "no usable route");
    if let RouteError::Unusable(crate::integrations::UnusableIntegration::Secrets { id, .. }) =
        &error
    {
        let (id, msg) = (*id, error.to_string());
        with_db(ctx, shutdown, |c| {
            let msg = msg.clone();
            async move { crate::store::integrations::set_last_error(&c, id, &msg).await }
        })
        .await?;
    }
    let detail = json!({"code": code, "message": error.to_string()});
    let unsent = Unsent {
        status: "failed",
        last_error: Some(&reason),
        label: code,
        detail,
        dead_letter_reason: None,
    };
    record_unsent(ctx, job, unsent, shutdown).await?;
    Ok(Outcome::Failed {
        dead_letter: None,
        reason,
    })
}

/// Earlier deliveries of this job kept ending without an outcome (each one's
/// worker died or lost the job before recording): the job may be what kills
/// them, so it is failed and dead-lettered instead of tried forever.
async fn give_up_on_lost_deliveries(
    ctx: &WorkerContext,
    job: &SendJob,
    attempts: i32,
    shutdown: &CancellationToken,
) -> Result<Outcome, Stop> {
    let reason = format!(
        "gave up: {attempts} attempts ended without an outcome (a worker may have crashed on \
         this job); SWITCHBOARD_MAX_ATTEMPTS is {}",
        ctx.settings.max_attempts
    );
    tracing::error!(%reason, "poison job");
    let detail = json!({"code": "attempts_exhausted", "attempts": attempts, "message": reason});
    let unsent = Unsent {
        status: "failed",
        last_error: Some(&reason),
        label: "failed",
        detail,
        dead_letter_reason: Some(&reason),
    };
    record_unsent(ctx, job, unsent, shutdown).await?;
    Ok(Outcome::Failed {
        dead_letter: Some(job.id),
        reason,
    })
}

/// The dead letter owed for message `id` is in `switchboard.dead`: clear the
/// debt, so a later redelivery of the job is acked as a duplicate. One try:
/// if it fails, a redelivery dead-letters a second copy, which replaying
/// handles like the first (the id is the same).
pub async fn dead_letter_delivered(ctx: &WorkerContext, id: Uuid) {
    let result = async {
        let client = ctx.pool.get().await?;
        messages::clear_dead_letter(&client, id).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not clear the dead-letter debt; a redelivery may dead-letter again");
    }
}

/// Records the final status of a job that reached no provider (suppressed,
/// cancelled, unroutable) with its one event, and counts it under `label`.
/// The final status of a job that reached no provider, with its one event.
pub(super) struct Unsent<'a> {
    pub(super) status: &'static str,
    pub(super) last_error: Option<&'a str>,
    /// The metrics outcome label.
    pub(super) label: &'a str,
    pub(super) detail: serde_json::Value,
    /// Set when the job must also be dead-lettered.
    pub(super) dead_letter_reason: Option<&'a str>,
}

pub(super) async fn record_unsent(
    ctx: &WorkerContext,
    job: &SendJob,
    unsent: Unsent<'_>,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    let Unsent {
        status,
        last_error,
        label,
        detail,
        dead_letter_reason,
    } = unsent;
    let record = messages::Outcome {
        status,
        route: None,
        provider: None,
        integration_id: None,
        provider_message_id: None,
        attempts: 0,
        last_error,
        events: vec![EventRow {
            event: status,
            detail,
        }],
        dead_letter_reason,
    };
    record_outcome(ctx, job, &record, shutdown).await?;
    ctx.metrics
        .message_outcome(job.channel.as_str(), "", "", label);
    Ok(())
}

/// Writes an outcome through the batch writer, waiting out database errors.
async fn record_outcome(
    ctx: &WorkerContext,
    job: &SendJob,
    outcome: &messages::Outcome<'_>,
    shutdown: &CancellationToken,
) -> Result<bool, Stop> {
    let row = messages::OutcomeRow::new(job.id, outcome);
    let row = &row;
    retry_db(ctx, shutdown, || ctx.outcomes.call(row.clone())).await
}

/// Runs a database operation with a pooled client (see [`retry_db`]).
pub(super) async fn with_db<T, F, Fut>(
    ctx: &WorkerContext,
    shutdown: &CancellationToken,
    op: F,
) -> Result<T, Stop>
where
    F: Fn(deadpool_postgres::Client) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let op = &op;
    retry_db(ctx, shutdown, || async move {
        let client = ctx.pool.get().await?;
        op(client).await
    })
    .await
}

/// Runs a database operation until it succeeds, waiting out errors that may
/// pass (Postgres restarting, the network, a full pool) with capped backoff.
/// Gives up only on shutdown, or on an error that no retry can fix.
async fn retry_db<T, F, Fut>(
    ctx: &WorkerContext,
    shutdown: &CancellationToken,
    op: F,
) -> Result<T, Stop>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retriable() => {
                ctx.metrics.db_retries.inc();
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, ?delay, "database unavailable; waiting");
                sleep_or_shutdown(delay, shutdown).await?;
            }
            Err(e) => return Err(Stop::Store(e)),
        }
    }
}

pub(super) async fn sleep_or_shutdown(
    delay: Duration,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = shutdown.cancelled() => Err(Stop::Shutdown),
    }
}
