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

/// The highest share of a quota used in the current hour and day windows
/// as of `now`, by scope (`agent`: an agent's own limits per channel;
/// `account`: an integration's `rate_limit`), channel and window: for the
/// `switchboard_quota_use_ratio` gauge. Reads only the current windows'
/// counters (index `rate_counters_window`, V18), so its cost grows with the
/// keys used this hour and day, not with history.
pub async fn highest_use(
    client: &impl deadpool_postgres::GenericClient,
    now: DateTime<Utc>,
) -> Result<Vec<(String, String, String, f64)>, StoreError> {
    // An agent's key is `agent:{agent_id}:{channel}` and an agent id may
    // itself contain `:`, so the channel is what follows the last one.
    const SQL: &str = "
        WITH current AS (
            SELECT key, span, count FROM rate_counters
             WHERE window_start IN ($1, $2)
               AND ((span = 'hour' AND window_start = $1) OR (span = 'day' AND window_start = $2))
        )
        SELECT 'agent', l.channel, c.span,
               max(c.count::float8 / (l.lim ->> ('per_' || c.span))::float8)
          FROM current c
          CROSS JOIN LATERAL (SELECT substring(c.key FROM '^agent:(.*):[^:]*$') AS agent_id,
                                     substring(c.key FROM ':([^:]*)$') AS channel) k
          JOIN agents a ON a.id = k.agent_id
          CROSS JOIN LATERAL (SELECT k.channel, a.limits -> k.channel AS lim) l
         WHERE c.key LIKE 'agent:%'
           AND jsonb_typeof(l.lim -> ('per_' || c.span)) = 'number'
         GROUP BY 1, 2, 3
        UNION ALL
        SELECT 'account', i.channel, c.span,
               max(c.count::float8 / (i.config -> 'rate_limit' ->> ('per_' || c.span))::float8)
          FROM current c
          JOIN integrations i ON c.key = 'integration:' || i.id::text
         WHERE c.key LIKE 'integration:%'
           AND jsonb_typeof(i.config -> 'rate_limit' -> ('per_' || c.span)) = 'number'
         GROUP BY 1, 2, 3";
    let (hour, _) = Window::Hour.bounds(now);
    let (day, _) = Window::Day.bounds(now);
    let rows = client.query(SQL, &[&hour, &day]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
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
