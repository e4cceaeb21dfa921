//! The gauges of shared state: jobs parked in `scheduled_jobs`, circuits
//! open, quota use. Every worker reads them from Postgres every
//! [`REFRESH_INTERVAL`], so any one process's `/metrics` shows the whole
//! system's state (aggregate with `max`, not `sum`).
//!
//! A failed read leaves the previous values (the next tick tries again) and
//! is logged at debug: Postgres being down is reported by `/readyz` and
//! `switchboard_db_retries_total`, not once more every few seconds here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::WorkerContext;
use crate::store::{StoreError, circuits, quotas, scheduled};

/// How often the gauges are read: Prometheus's usual scrape interval, so
/// each scrape sees fresh values and the three small queries stay cheap.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15);

/// A parked job due this long ago and still parked counts as overdue: the
/// scheduler republishes due jobs every second by default.
const OVERDUE_AFTER: chrono::Duration = chrono::Duration::minutes(1);

pub async fn run(ctx: Arc<WorkerContext>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(e) = refresh(&ctx).await {
            tracing::debug!(error = %e, "could not refresh the gauges of shared state");
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Reads the shared state once and replaces the gauges' values: a reason,
/// provider or quota that is no longer present disappears from `/metrics`
/// instead of keeping its last value.
pub async fn refresh(ctx: &WorkerContext) -> Result<(), StoreError> {
    let client = ctx.pool.get().await?;
    let now = ctx.clock.now();
    let (parked, overdue) = scheduled::counts(&client, now - OVERDUE_AFTER).await?;
    let open = circuits::open_by_provider(&client, now).await?;
    let quotas = quotas::highest_use(&client, now).await?;
    drop(client);

    let m = &ctx.metrics;
    m.jobs_parked.reset();
    for (reason, n) in parked {
        m.jobs_parked.with_label_values(&[&reason]).set(n);
    }
    m.jobs_parked_overdue.set(overdue);
    m.circuits_open.reset();
    for (provider, n) in open {
        m.circuits_open.with_label_values(&[&provider]).set(n);
    }
    m.quota_use_ratio.reset();
    for (scope, channel, window, ratio) in quotas {
        m.quota_use_ratio
            .with_label_values(&[&scope, &channel, &window])
            .set(ratio);
    }
    Ok(())
}
