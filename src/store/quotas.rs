//! Hour and day quotas, counted in `rate_counters` so they survive restarts
//! and hold across worker processes. A counter is named by its key, its
//! span and its window's start: from 00:00 to 01:00 UTC the hour and the
//! day of one key start at the same instant and must still count apart.

use chrono::{DateTime, Duration, DurationRound, Utc};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
}

impl Window {
    /// The counter's `span` in `rate_counters`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    fn length(self) -> Duration {
        match self {
            Window::Hour => Duration::hours(1),
            Window::Day => Duration::days(1),
        }
    }

    /// The UTC window `now` falls in: `[start, end)`.
    pub fn bounds(self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = now.duration_trunc(self.length()).unwrap_or(now);
        (start, start + self.length())
    }
}

/// Takes one unit from every `(key, window, limit)` or none: `Ok(None)` when
/// all had room, `Ok(Some(end))` with the end of the first full window.
pub async fn reserve(
    client: &mut deadpool_postgres::Client,
    quotas: &[(String, Window, u32)],
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    const SQL: &str = "
        INSERT INTO rate_counters (key, span, window_start, count) VALUES ($1, $2, $3, 1)
        ON CONFLICT (key, span, window_start) DO UPDATE
            SET count = rate_counters.count + 1
            WHERE rate_counters.count < $4
        RETURNING count";
    let tx = client.transaction().await?;
    let statement = tx.prepare_cached(SQL).await?;
    for (key, window, limit) in quotas {
        let (start, end) = window.bounds(now);
        let limit = *limit as i32;
        if tx
            .query_opt(&statement, &[key, &window.as_str(), &start, &limit])
            .await?
            .is_none()
        {
            tx.rollback().await?;
            return Ok(Some(end));
        }
    }
    tx.commit().await?;
    Ok(None)
}

/// Gives back the units [`reserve`] took at `reserved_at` for a job that
/// did not send after all (the provider refused it, or it was parked on an
/// open circuit or a long `Retry-After`): a quota counts sends, not tries.
pub async fn release(
    client: &mut deadpool_postgres::Client,
    quotas: &[(String, Window, u32)],
    reserved_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    const SQL: &str = "
        UPDATE rate_counters SET count = count - 1
         WHERE key = $1 AND span = $2 AND window_start = $3 AND count > 0";
    let tx = client.transaction().await?;
    let statement = tx.prepare_cached(SQL).await?;
    for (key, window, _) in quotas {
        let (start, _) = window.bounds(reserved_at);
        tx.execute(&statement, &[key, &window.as_str(), &start])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The share of an account's hour or day quota that only transactional
/// messages may use (a tenth, at least one unit of any quota above one), so
/// that a marketing blast never holds back a one-time code.
pub fn transactional_share(limit: u32) -> u32 {
    if limit < 2 { 0 } else { (limit / 10).max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_of_a_quota_is_kept_for_transactional_messages() {
        assert_eq!(transactional_share(1), 0);
        assert_eq!(transactional_share(4), 1);
        assert_eq!(transactional_share(500), 50);
    }

    #[test]
    fn windows_are_utc_hours_and_days() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T16:42:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let (s, e) = Window::Hour.bounds(now);
        assert_eq!(s.to_rfc3339(), "2026-11-23T16:00:00+00:00");
        assert_eq!(e.to_rfc3339(), "2026-11-23T17:00:00+00:00");
        let (s, _) = Window::Day.bounds(now);
        assert_eq!(s.to_rfc3339(), "2026-11-23T00:00:00+00:00");
    }
}
