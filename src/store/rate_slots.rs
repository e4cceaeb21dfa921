//! Per-second limits in Postgres: a GCRA whose state (`rate_slots.tat`) all
//! worker processes share, so an agent limited to N/s gets N/s however many
//! workers consume its jobs (issue 11).
//!
//! Each call hands the job a slot: `max(tat, now)`, and moves `tat` one
//! emission interval on. Sends are spaced exactly `1 / per_second` apart, so
//! no second ever holds more than `per_second` of them. A slot further away
//! than the caller can wait for in memory is remembered in `rate_grants`:
//! the job is parked until it, and when it comes back it gets the same slot
//! instead of queueing again behind every slot handed out meanwhile, so a
//! burst is parked once per job. One statement per call; only jobs whose
//! agent or account has a per-second limit make it.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;

/// When `job` may send under `key`'s limit, as of `now` (policy time).
/// A slot later than `now + wait_max` is kept for the job until it returns.
pub async fn take(
    client: &impl GenericClient,
    key: &str,
    job: Uuid,
    per_second: NonZeroU32,
    now: DateTime<Utc>,
    wait_max: Duration,
) -> Result<DateTime<Utc>, StoreError> {
    const SQL: &str = "
        WITH granted AS (
            DELETE FROM rate_grants WHERE key = $1::text AND job_id = $2::uuid RETURNING slot
        ), taken AS (
            INSERT INTO rate_slots AS r (key, tat)
            SELECT $1, $3::timestamptz + make_interval(secs => $4::float8)
             WHERE NOT EXISTS (SELECT 1 FROM granted)
            ON CONFLICT (key) DO UPDATE
                SET tat = GREATEST(r.tat, $3) + make_interval(secs => $4)
            RETURNING r.tat - make_interval(secs => $4) AS slot
        ), kept AS (
            INSERT INTO rate_grants (key, job_id, slot)
            SELECT $1, $2, slot FROM taken WHERE slot > $3 + make_interval(secs => $5::float8)
        )
        SELECT COALESCE((SELECT slot FROM granted), (SELECT slot FROM taken))";
    let interval = 1.0 / f64::from(per_second.get());
    let statement = client.prepare_cached(SQL).await?;
    let row = client
        .query_one(
            &statement,
            &[&key, &job, &now, &interval, &wait_max.as_secs_f64()],
        )
        .await?;
    let slot: Option<DateTime<Utc>> = row.get(0);
    slot.ok_or_else(|| StoreError::shared("rate slot statement returned no slot", false))
}
