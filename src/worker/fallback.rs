//! The channel-fallback step: when a job cannot be delivered on its channel
//! and names a `fallback`, its next entry is parked as a job of its own, due
//! at once, for the scheduler to publish (`domain::fallback`). Parking it
//! rather than publishing from here keeps one way into the queue, with
//! confirms and `mandatory`, and makes the child durable before the
//! parent's failure is recorded and acked: a crash in between leaves the
//! child parked and the parent redelivered, which finds the child there.
//! Failures a provider reports later (a hard bounce, an unanswered call)
//! fall back the same way from the webhook inbox (`webhooks::inbox`).

use tokio_util::sync::CancellationToken;

use super::WorkerContext;
use super::job::{Stop, with_db};
use crate::domain::SendJob;
use crate::store::scheduled;

/// Parks the job's fallback, if it has one; returns the detail the parent's
/// `failed` event carries about it.
pub(super) async fn schedule(
    ctx: &WorkerContext,
    job: &SendJob,
    shutdown: &CancellationToken,
) -> Result<Option<serde_json::Value>, Stop> {
    if job.fallback.is_empty() {
        return Ok(None);
    }
    let now = ctx.clock.now();
    with_db(ctx, shutdown, |c| async move {
        scheduled::park_fallback(&c, job, now).await
    })
    .await
}
