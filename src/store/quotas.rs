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

#[cfg(test)]
mod tests {
    use super::*;

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
