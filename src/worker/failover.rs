//! The route as a list of candidates: the limits and send steps run for one
//! account at a time, and when that account cannot send (its circuit is
//! open, or it refused the account itself: a revoked key, a suspended
//! account) the job moves to the next candidate: the agent's backups in
//! priority order, then the platform's account when the agent allows it
//! (`agents.allow_platform_fallback`).
//!
//! It must never fail over once a provider may have taken the message (a
//! `maybe_sent` failure on any route, in this delivery or an earlier one):
//! one job is never accepted by two providers. A refusal of the recipient
//! (a bad number, a landline) never fails over either: it is bad everywhere.

use serde_json::json;
use uuid::Uuid;

use super::WorkerContext;
use super::job::{Attempted, Outcome, Signals, Stop, park_job, record_delivery, with_db};
use super::limits::{check_limits, settle_quota};
use super::send::{Delivery, send_with_retries};
use crate::domain::{Route, SendJob};
use crate::policy::AgentPolicy;
use crate::providers::sender::Branding;
use crate::routing::ResolvedRoute;
use crate::store::messages::EventRow;

/// What the send step needs to know about the claimed job.
pub(super) struct Step<'a> {
    pub job: &'a SendJob,
    pub agent: &'a AgentPolicy,
    pub allow_platform: bool,
    /// The agent's branding, for the sender identity of a platform route.
    pub branding: &'a Branding,
    /// Provider calls made by earlier deliveries of the job.
    pub prior_attempts: i32,
    /// The worker-lock epoch the job was claimed under.
    pub epoch: i32,
}

/// Sends the job through `route`, failing over to the next candidate while
/// the current one cannot send, and records (or parks) what the last one
/// did. Events and attempts of the accounts left behind go into the record.
pub(super) async fn send_step(
    ctx: &WorkerContext,
    step: Step<'_>,
    mut route: ResolvedRoute,
    signals: &Signals,
) -> Result<Outcome, Stop> {
    let Step {
        job,
        agent,
        allow_platform,
        branding,
        prior_attempts,
        epoch,
    } = step;
    let shutdown = &signals.abandon;
    let mut tried: Vec<(Route, Option<Uuid>)> = vec![(route.route, route.integration_id)];
    let mut left_behind = Attempted::default();
    loop {
        let admitted = match check_limits(ctx, job, agent, &route, &signals.stop).await? {
            Ok(admitted) => admitted,
            Err(park) => {
                return park_job(ctx, job, Some(&route), park, left_behind, shutdown).await;
            }
        };
        // The claim was made under this process's lock; if the lock was lost
        // since (the Postgres connection dropped), another worker may have
        // taken the job over. Claim again before calling anyone.
        if !ctx.liveness.still(epoch) {
            tracing::info!("worker lock was lost since the claim; claiming again before sending");
            if let (super::job::Claimed::Done(outcome), _) =
                super::job::claim(ctx, job, &signals.stop).await?
            {
                return Ok(outcome);
            }
        }
        let mut delivery =
            send_with_retries(ctx, job, &route, branding, prior_attempts, signals).await?;
        settle_quota(ctx, admitted.quota, &delivery, shutdown).await?;
        delivery.rate_slot = admitted.rate_slot;

        if let Some(reason) = reason(&delivery)
            && !may_have_been_sent(ctx, job, prior_attempts, shutdown).await?
            && let Some(next) = next_route(ctx, job, allow_platform, &tried, shutdown).await?
        {
            let error = delivery.result.as_ref().err();
            if let (Some(e), Some(id)) = (error, route.integration_id)
                && e.credentials_refused
            {
                let msg = e.to_string();
                with_db(ctx, shutdown, |c| {
                    let msg = msg.clone();
                    async move { crate::store::integrations::mark_unverified(&c, id, &msg).await }
                })
                .await?;
            }
            let detail = json!({
                "from": describe(&route),
                "to": describe(&next),
                "reason": reason,
                "error": error.map(|e| e.to_detail()),
            });
            tracing::warn!(
                from = route.provider.name(),
                to = next.provider.name(),
                reason,
                "failing over to the next account"
            );
            ctx.metrics
                .failovers
                .with_label_values(&[
                    job.channel.as_str(),
                    route.provider.name(),
                    next.provider.name(),
                    reason,
                ])
                .inc();
            left_behind.attempts += delivery.attempts;
            left_behind.last_error = error.map(|e| e.to_string());
            left_behind.events.append(&mut delivery.events);
            left_behind.events.push(EventRow {
                event: "failover",
                detail,
            });
            tried.push((next.route, next.integration_id));
            route = next;
            continue;
        }

        let Attempted {
            attempts, events, ..
        } = left_behind;
        delivery.attempts += attempts;
        delivery.events.splice(0..0, events);
        if let Some(park) = delivery.park.take() {
            let attempted = Attempted {
                attempts: delivery.attempts,
                last_error: delivery.result.as_ref().err().map(|e| e.to_string()),
                events: delivery.events,
            };
            return park_job(ctx, job, Some(&route), park, attempted, shutdown).await;
        }
        return record_delivery(ctx, job, &route, delivery, shutdown).await;
    }
}

/// Why the account that made `delivery` should be left for the next one,
/// or `None` when the job stays with it.
fn reason(delivery: &Delivery) -> Option<&'static str> {
    if delivery.unconfirmed || delivery.maybe_sent {
        return None;
    }
    if delivery
        .park
        .as_ref()
        .is_some_and(|p| p.reason == "circuit_open")
    {
        return Some("circuit_open");
    }
    match &delivery.result {
        Err(e) if e.is_account_level() => Some("account_refused"),
        _ => None,
    }
}

/// Whether an earlier delivery of the job made a call that may have reached
/// a provider (its `attempt_failed` events say `maybe_sent`): then no other
/// account may be asked.
async fn may_have_been_sent(
    ctx: &WorkerContext,
    job: &SendJob,
    prior_attempts: i32,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<bool, Stop> {
    if prior_attempts == 0 {
        return Ok(false);
    }
    with_db(ctx, shutdown, |c| async move {
        let row = c
            .query_one(
                "SELECT EXISTS(SELECT 1 FROM outbound_events
                                WHERE message_id = $1 AND (detail->>'maybe_sent')::boolean)",
                &[&job.id],
            )
            .await?;
        Ok(row.get(0))
    })
    .await
}

/// The next account to try: the agent's next active backup for the channel
/// not tried yet, then the platform's account if allowed. Backups that
/// cannot be used (unreadable secrets, a provider that cannot send the
/// channel) are skipped with a warning.
async fn next_route(
    ctx: &WorkerContext,
    job: &SendJob,
    allow_platform: bool,
    tried: &[(Route, Option<Uuid>)],
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<ResolvedRoute>, Stop> {
    let backups = with_db(ctx, shutdown, |c| async move {
        crate::store::integrations::backups(&c, &job.agent_id, job.channel).await
    })
    .await?;
    for row in backups {
        if tried.iter().any(|(_, id)| *id == Some(row.id)) {
            continue;
        }
        match ctx.router.integration(job, row) {
            Ok(route) => return Ok(Some(route)),
            Err(e) => tracing::warn!(error = %e, "backup account unusable; skipped"),
        }
    }
    if allow_platform && !tried.iter().any(|(r, _)| *r == Route::Platform) {
        return Ok(ctx.router.platform(job));
    }
    Ok(None)
}

fn describe(route: &ResolvedRoute) -> serde_json::Value {
    json!({
        "provider": route.provider.name(),
        "route": route.route.as_str(),
        "integration_id": route.integration_id,
    })
}
