//! The send step: one route's provider calls with retries, backoff, the
//! account's circuit breaker and `Retry-After`, ending in a [`Delivery`].
//!
//! It never records the job's outcome (worker::job does, once) and never
//! repeats a call that may have reached a provider that cannot deduplicate it.

use std::time::Instant;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::WorkerContext;
use super::job::{Park, Signals, Stop, sleep_or_shutdown, with_db};
use crate::domain::{Route, SendJob};
use crate::policy::circuit::{Gate, Transition};
use crate::providers::sender::Branding;
use crate::providers::{Accepted, ProviderError, SendRequest};
use crate::routing::ResolvedRoute;
use crate::store::circuits;
use crate::store::messages::{self, EventRow};

/// The result of the provider calls for one delivery.
pub(super) struct Delivery {
    pub(super) result: Result<Accepted, ProviderError>,
    /// Calls made by this delivery.
    pub(super) attempts: i32,
    /// Calls made before, by deliveries that died or were parked.
    pub(super) prior_attempts: i32,
    pub(super) exhausted: bool,
    /// The last failure may have sent the message and the provider cannot
    /// deduplicate a second try: recorded `unknown`, never resent.
    pub(super) unconfirmed: bool,
    /// Some call may have reached the provider (a `maybe_sent` failure that
    /// was retried because the provider deduplicates): the job must not go
    /// to another account (worker::failover).
    pub(super) maybe_sent: bool,
    /// Stop retrying here and park the job: a long Retry-After, or the
    /// account's circuit opened.
    pub(super) park: Option<Park>,
    pub(super) events: Vec<EventRow>,
    /// Policy time of the last provider call, which rate limits were judged by.
    pub(super) called_at: Option<DateTime<Utc>>,
    /// The per-second slot the job was given (recorded with the send).
    pub(super) rate_slot: Option<DateTime<Utc>>,
}

/// The circuit-breaker key of the account a route sends through.
fn account_key(route: &ResolvedRoute) -> Option<String> {
    match (route.route, route.integration_id) {
        (Route::Simulation, _) => None,
        (_, Some(id)) => Some(format!("integration:{id}")),
        (_, None) => Some(format!("platform:{}", route.provider.name())),
    }
}

/// A failure that says the account is down or broken (not that it is
/// rate-limiting us or refusing this one message).
fn looks_down(error: &ProviderError) -> bool {
    error.is_retriable() && error.status.is_none_or(|s| s >= 500)
}

pub(super) async fn send_with_retries(
    ctx: &WorkerContext,
    job: &SendJob,
    route: &ResolvedRoute,
    branding: &Branding,
    prior_attempts: i32,
    signals: &Signals,
) -> Result<Delivery, Stop> {
    let s = &ctx.settings;
    // Whether a try that may have reached the provider can be repeated: only
    // where the provider deduplicates on the job id, or the operator chose
    // at-least-once for it.
    let may_repeat =
        route.provider.deduplicates() || s.at_least_once.iter().any(|p| p == route.provider.name());
    let provider = route.provider.name();
    let request = SendRequest {
        job,
        settings: &route.settings,
        status_callback: s
            .public_url
            .as_ref()
            .filter(|_| route.route != Route::Simulation)
            .map(|base| {
                let owner = route
                    .integration_id
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "platform".into());
                format!("{base}/webhooks/{provider}/{owner}")
            }),
        idempotency_key: job.id.to_string(),
        route: route.route,
        branding: branding.clone(),
    };
    let circuit = account_key(route);
    // Attempts already made by earlier deliveries count against the budget,
    // so a job that crashes workers cannot be retried forever.
    let budget = (s.max_attempts as i32 - prior_attempts).max(1) as usize;
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(s.retry_base)
        .with_max_delay(s.retry_max)
        .with_jitter()
        .with_max_times(budget - 1)
        .build();
    let mut delivery = Delivery {
        result: Err(ProviderError::transient("not attempted")),
        attempts: 0,
        prior_attempts,
        exhausted: false,
        unconfirmed: false,
        maybe_sent: false,
        park: None,
        events: Vec::new(),
        called_at: None,
        rate_slot: None,
    };
    loop {
        // The gate's ticket goes back with the result, so that only the
        // half-open probe's result can close the circuit and results of
        // calls admitted before it opened change nothing.
        let mut ticket = None;
        if let Some(key) = &circuit {
            match ctx.circuits.gate(key) {
                Gate::Blocked(until) => {
                    delivery.park = Some(circuit_open(until, route));
                    return Ok(delivery);
                }
                Gate::Pass(call) => ticket = Some(call),
            }
        }
        delivery.attempts += 1;
        delivery.called_at = Some(ctx.clock.now());
        let started = Instant::now();
        let result = route.provider.send(&request).await;
        let label = match &result {
            Ok(_) => "success",
            Err(e) => e.kind_label(),
        };
        ctx.metrics
            .provider_request_duration
            .with_label_values(&[provider, label])
            .observe(started.elapsed().as_secs_f64());
        let mut opened_now = false;
        if let (Some(key), Some(call)) = (&circuit, ticket) {
            let down = result.as_ref().err().is_some_and(looks_down);
            if let Some(t) = ctx.circuits.settle(key, call, down) {
                opened_now = matches!(t, Transition::Opened { .. });
                record_circuit(ctx, job, route, key, t, &signals.abandon).await?;
            }
        }
        let error = match result {
            Err(e) if e.is_retriable() && e.maybe_sent && !may_repeat => {
                tracing::warn!(error = %e, "the provider may have taken the message; not sending it again");
                delivery.result = Err(e);
                delivery.unconfirmed = true;
                return Ok(delivery);
            }
            Err(e) if e.is_retriable() => e,
            result => {
                delivery.result = result;
                return Ok(delivery);
            }
        };
        delivery.maybe_sent |= error.maybe_sent;
        let mut detail = error.to_detail();
        detail["attempt"] = json!(prior_attempts + delivery.attempts);
        // Two failures stop the retries here and park the job instead of
        // holding a prefetch slot: the one that opened the account's circuit
        // (the job waits out the cool-down like every job after it, whatever
        // its attempts left), and a provider asking for a long wait.
        let opened_park =
            circuit
                .as_ref()
                .filter(|_| opened_now)
                .and_then(|key| match ctx.circuits.gate(key) {
                    Gate::Blocked(until) => Some(circuit_open(until, route)),
                    Gate::Pass(_) => None,
                });
        let park = opened_park.or_else(|| {
            let wait = error.retry_after.filter(|w| *w > s.retry_park_after)?;
            (delivery.attempts < budget as i32).then(|| {
                Park::deferred(
                    ctx.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                    "retry_after",
                    json!({"provider": provider, "retry_after_ms": wait.as_millis() as u64}),
                )
            })
        });
        if let Some(park) = park {
            delivery.events.push(EventRow {
                event: "attempt_failed",
                detail,
            });
            delivery.result = Err(error);
            delivery.park = Some(park);
            return Ok(delivery);
        }
        let Some(delay) = backoff.next() else {
            tracing::warn!(error = %error, attempts = delivery.attempts, "transient failures used every attempt");
            delivery.result = Err(error);
            delivery.exhausted = true;
            return Ok(delivery);
        };
        let delay = delay
            .max(error.retry_after.unwrap_or_default())
            .min(s.retry_max);
        tracing::info!(error = %error, attempt = delivery.attempts, ?delay, "transient provider failure; retrying");
        detail["retry_in_ms"] = json!(delay.as_millis() as u64);
        delivery.events.push(EventRow {
            event: "attempt_failed",
            detail,
        });
        sleep_or_shutdown(delay, &signals.stop).await?;
    }
}

/// Parks a job until the account's circuit lets calls through again.
fn circuit_open(until: chrono::DateTime<chrono::Utc>, route: &ResolvedRoute) -> Park {
    Park::deferred(
        until,
        "circuit_open",
        json!({"provider": route.provider.name(), "integration_id": route.integration_id}),
    )
}

/// Records a circuit opening or closing as an event of the account (no
/// message) and in the metrics.
async fn record_circuit(
    ctx: &WorkerContext,
    job: &SendJob,
    route: &ResolvedRoute,
    key: &str,
    transition: Transition,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    let provider = route.provider.name();
    // Shared with every worker process: the first to open (or close) the
    // account's circuit records it; the others adopt what it wrote.
    let now = ctx.clock.now();
    let first = match transition {
        Transition::Opened { until, .. } => {
            let opened = with_db(ctx, shutdown, |c| async move {
                circuits::open(&c, key, until, now).await
            })
            .await?;
            if !opened {
                let shared = with_db(ctx, shutdown, |c| async move {
                    circuits::open_until(&c, key).await
                })
                .await?;
                if let Some(shared) = shared {
                    ctx.circuits.adopt(key, shared);
                }
            }
            opened
        }
        Transition::Closed => {
            with_db(
                ctx,
                shutdown,
                |c| async move { circuits::close(&c, key).await },
            )
            .await?
        }
    };
    if !first {
        return Ok(());
    }
    let (event, detail) = match transition {
        Transition::Opened { until, failures } => {
            tracing::warn!(provider, integration_id = ?route.integration_id, %until, "circuit opened: the account keeps failing");
            (
                "circuit_opened",
                json!({"until": until, "consecutive_failures": failures}),
            )
        }
        Transition::Closed => {
            tracing::info!(provider, integration_id = ?route.integration_id, "circuit closed: the account answers again");
            ("circuit_closed", json!({}))
        }
    };
    ctx.metrics
        .circuit_transitions
        .with_label_values(&[provider, event])
        .inc();
    let mut detail = detail;
    detail["integration_id"] = json!(route.integration_id);
    detail["route"] = json!(route.route.as_str());
    let detail = &detail;
    with_db(ctx, shutdown, |c| async move {
        messages::record_account_event(
            &c,
            Some(&job.agent_id),
            job.channel,
            event,
            provider,
            detail,
        )
        .await
    })
    .await
}
