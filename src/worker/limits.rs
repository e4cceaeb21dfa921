//! The limits step: the agent's and the account's per-second rates and
//! hour / day quotas, taken in Postgres so they hold across every worker
//! process, and given back when nothing was sent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::WorkerContext;
use super::job::{Outcome, Park, Stop, Unsent, park_job, record_unsent, with_db};
use super::send::Delivery;
use crate::domain::{CapMode, Category, SendJob};
use crate::policy::{self, AgentPolicy};
use crate::routing::ResolvedRoute;
use crate::store::quotas::{self, Window};
use crate::store::rate_slots;
use crate::store::recipient_caps::{self, Person};

/// Applies the agent's and the account's limits: per-second limits wait in
/// memory when the wait is short; longer waits and exhausted hour / day
/// quotas park the job until its turn.
pub(super) async fn check_limits(
    ctx: &WorkerContext,
    job: &SendJob,
    agent: &AgentPolicy,
    route: &ResolvedRoute,
    shutdown: &CancellationToken,
) -> Result<Result<Admitted, Park>, Stop> {
    let marketing = job.category == Category::Marketing;
    // (key, limit, whether its hour/day quotas apply to this job, units of
    // them this job may not use)
    let mut keys = Vec::new();
    if let Some(limit) = agent.limits.get(&job.channel) {
        // An agent's own hour/day quotas pace its marketing; transactional
        // messages (codes, confirmations) are exempt from them.
        keys.push((
            format!("agent:{}:{}", job.agent_id, job.channel),
            *limit,
            marketing,
            false,
        ));
    }
    if let Some(id) = route.integration_id {
        let limit = policy::RateLimit::from_json(route.settings.value("rate_limit"));
        if !limit.is_empty() {
            // The account's quotas are the provider's: every message counts,
            // and marketing leaves a share for transactional ones.
            keys.push((format!("integration:{id}"), limit, true, marketing));
        }
    }
    let mut rate_slot = None;
    for (key, limit, _, _) in &keys {
        if let Some(per_second) = limit.per_second {
            // The slot comes from Postgres, so the limit holds across every
            // worker process (store::rate_slots).
            let now = ctx.clock.now();
            let wait_max = ctx.settings.rate_wait_max;
            let slot = with_db(ctx, shutdown, |c| async move {
                rate_slots::take(&c, key, job.id, per_second, now, wait_max).await
            })
            .await?;
            let wait = (slot - now).to_std().unwrap_or(Duration::ZERO);
            if wait > wait_max {
                return Ok(Err(Park::deferred(
                    slot,
                    "rate_limit",
                    json!({"key": key, "per_second": per_second.get()}),
                )));
            }
            rate_slot = rate_slot.max(Some(slot));
            if !wait.is_zero() {
                tokio::select! {
                    _ = ctx.clock.sleep_until(slot) => {}
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                }
            }
        }
    }
    let quotas: Vec<(String, Window, u32)> = keys
        .iter()
        .filter(|(_, _, applies, _)| *applies)
        .flat_map(|(key, limit, _, leave_share)| {
            let usable = |n: u32| {
                if *leave_share {
                    n - quotas::transactional_share(n)
                } else {
                    n
                }
            };
            [
                limit
                    .per_hour
                    .map(|n| (key.clone(), Window::Hour, usable(n.get()))),
                limit
                    .per_day
                    .map(|n| (key.clone(), Window::Day, usable(n.get()))),
            ]
        })
        .flatten()
        .collect();
    if quotas.is_empty() {
        return Ok(Ok(Admitted {
            quota: None,
            rate_slot,
        }));
    }
    let now = ctx.clock.now();
    let full = {
        let quotas = &quotas;
        with_db(ctx, shutdown, |mut c| async move {
            quotas::reserve(&mut c, quotas, now).await
        })
        .await?
    };
    Ok(match full {
        Some(until) => Err(Park::deferred(
            until,
            "quota",
            json!({"quota_resets_at": until}),
        )),
        None => Ok(Admitted {
            quota: Some(Reserved { quotas, at: now }),
            rate_slot,
        }),
    })
}

/// What the limits let through: the quota units taken and the per-second
/// slot given, if any.
pub(super) struct Admitted {
    pub(super) quota: Option<Reserved>,
    pub(super) rate_slot: Option<DateTime<Utc>>,
}

/// Hour and day quota units a job took before its provider call, held
/// until the call's result says whether anything was sent.
pub(super) struct Reserved {
    quotas: Vec<(String, Window, u32)>,
    at: DateTime<Utc>,
}

/// Gives the units back when the delivery sent nothing: parked (circuit
/// open, long Retry-After) or refused. A message that was sent, or may have
/// been (`unknown`), keeps them.
pub(super) async fn settle_quota(
    ctx: &WorkerContext,
    reserved: Option<Reserved>,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    let Some(reserved) = reserved else {
        return Ok(());
    };
    let sent_nothing =
        delivery.park.is_some() || (delivery.result.is_err() && !delivery.unconfirmed);
    if !sent_nothing {
        return Ok(());
    }
    let reserved = &reserved;
    with_db(ctx, shutdown, |mut c| async move {
        quotas::release(&mut c, &reserved.quotas, reserved.at).await
    })
    .await
}

/// The agent's per-recipient frequency cap, for marketing jobs: `Ok(true)`
/// when the job took a place under the cap (given back by
/// [`release_cap`] if it then fails), `Ok(false)` when no cap applies, and
/// `Err(outcome)` when the cap held it: parked until the recipient's next
/// day or week, or recorded `capped` when the job said `"cap": "drop"`.
pub(super) async fn frequency_cap(
    ctx: &WorkerContext,
    job: &SendJob,
    agent: &AgentPolicy,
    now: DateTime<Utc>,
    shutdown: &CancellationToken,
) -> Result<Result<bool, Outcome>, Stop> {
    let cap = &agent.frequency_cap;
    if job.category != Category::Marketing || cap.is_empty() {
        return Ok(Ok(false));
    }
    let (zones, _) = policy::quiet_hours::recipient_zones(job, agent.timezone);
    let windows = cap.windows(now, &zones);
    let person = Person {
        agent_id: &job.agent_id,
        address: job.recipient.as_str(),
        contact_id: job.contact_id.as_deref(),
    };
    let full = {
        let (person, windows) = (&person, &windows);
        with_db(ctx, shutdown, |mut c| async move {
            recipient_caps::reserve(&mut c, person, job.id, windows, now).await
        })
        .await?
    };
    let Some(full) = full else {
        return Ok(Ok(true));
    };
    let detail = json!({"reason": "frequency_cap", "window": full.name,
                        "allowed": full.allowed, "until": full.end});
    if job.cap == CapMode::Drop {
        tracing::info!(window = full.name, "over the per-recipient cap; dropped");
        let unsent = Unsent {
            status: "capped",
            last_error: Some("frequency_cap"),
            label: "capped",
            detail,
            dead_letter_reason: None,
        };
        record_unsent(ctx, job, unsent, shutdown).await?;
        return Ok(Err(Outcome::Capped));
    }
    let park = Park::deferred(full.end, "frequency_cap", detail);
    let parked = park_job(ctx, job, None, park, Default::default(), shutdown).await?;
    Ok(Err(parked))
}

/// Gives back the place a job took under the frequency cap: it failed, so
/// the person received nothing.
pub(super) async fn release_cap(
    ctx: &WorkerContext,
    message_id: uuid::Uuid,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    with_db(ctx, shutdown, |c| async move {
        recipient_caps::release(&c, message_id).await
    })
    .await
}
