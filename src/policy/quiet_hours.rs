//! Quiet hours: marketing reaches people only inside their daytime window,
//! in *their* time zone, correctly across DST changes.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::country_zones::SINGLE_ZONE_COUNTRIES;
use crate::domain::{Recipient, SendJob};

/// The local-time window in which marketing may be sent. `start == end`
/// means always; `start > end` wraps past midnight (e.g. 22:00–06:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Default for SendWindow {
    fn default() -> Self {
        Self {
            start: NaiveTime::from_hms_opt(9, 0, 0).expect("valid time"),
            end: NaiveTime::from_hms_opt(20, 0, 0).expect("valid time"),
        }
    }
}

impl SendWindow {
    pub fn contains(&self, t: NaiveTime) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => self.start <= t && t < self.end,
            std::cmp::Ordering::Greater => t >= self.start || t < self.end,
        }
    }
}

/// Where the recipient's zone came from, recorded with a deferral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSource {
    Job,
    PhoneNumber,
    Agent,
}

impl ZoneSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneSource::Job => "job",
            ZoneSource::PhoneNumber => "phone_number",
            ZoneSource::Agent => "agent",
        }
    }
}

/// The recipient's zone: the job's `timezone`, else the zone of the phone
/// number's country when that country has only one, else the agent's zone
/// (which is UTC unless the agent set one).
pub fn recipient_zone(job: &SendJob, agent_zone: Tz) -> (Tz, ZoneSource) {
    if let Some(tz) = job.timezone {
        return (tz, ZoneSource::Job);
    }
    if let Recipient::Phone(phone) = &job.recipient
        && let Some(tz) = phone.country().and_then(single_zone_of)
    {
        return (tz, ZoneSource::PhoneNumber);
    }
    (agent_zone, ZoneSource::Agent)
}

fn single_zone_of(country: &str) -> Option<Tz> {
    SINGLE_ZONE_COUNTRIES
        .binary_search_by(|(cc, _)| (*cc).cmp(country))
        .ok()
        .and_then(|i| SINGLE_ZONE_COUNTRIES[i].1.parse().ok())
}

/// `None` when `now` is inside the window in `tz`; otherwise the next
/// instant the window opens.
pub fn next_opening(now: DateTime<Utc>, tz: Tz, window: SendWindow) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&tz);
    if window.contains(local.time()) {
        return None;
    }
    let today = local.date_naive();
    // Outside a normal window before it opens: today; after it closed:
    // tomorrow. Outside a wrapping window we are always before today's start.
    let date = if window.start < window.end && local.time() >= window.end {
        today.succ_opt()?
    } else {
        today
    };
    Some(resolve_local(tz, date, window.start))
}

/// The first instant at or after local `date time` in `tz`. In a DST gap
/// (the wall-clock time does not exist) that is the end of the gap; in an
/// overlap, the earlier of the two instants.
fn resolve_local(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let mut naive: NaiveDateTime = date.and_time(time);
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(a, _) => return a.with_timezone(&Utc),
            LocalResult::None => naive += Duration::minutes(1),
        }
    }
    // No zone has a gap of four hours; fall back to reading it as UTC.
    Utc.from_utc_datetime(&date.and_time(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn inside_the_window_sends_now() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 14:00 UTC = 09:00 EST
        assert_eq!(
            next_opening(utc("2026-01-15T14:00:00Z"), ny, SendWindow::default()),
            None
        );
    }

    #[test]
    fn late_evening_waits_for_next_morning_across_a_dst_change() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // Saturday 2026-03-07 23:00 EST (UTC-5); clocks spring forward on
        // Sunday 03-08, so 09:00 that morning is EDT (UTC-4) = 13:00 UTC.
        let at = next_opening(utc("2026-03-08T04:00:00Z"), ny, SendWindow::default()).unwrap();
        assert_eq!(at, utc("2026-03-08T13:00:00Z"));
        // And in autumn, 09:00 after the fall back is EST again.
        let at = next_opening(utc("2026-11-01T03:30:00Z"), ny, SendWindow::default()).unwrap();
        assert_eq!(at, utc("2026-11-01T14:00:00Z"));
    }

    #[test]
    fn early_morning_waits_for_the_same_day() {
        let nairobi: Tz = "Africa/Nairobi".parse().unwrap();
        // 03:00 UTC = 06:00 EAT
        let at = next_opening(utc("2026-06-01T03:00:00Z"), nairobi, SendWindow::default()).unwrap();
        assert_eq!(at, utc("2026-06-01T06:00:00Z"));
    }

    #[test]
    fn a_window_start_inside_a_dst_gap_opens_at_the_end_of_the_gap() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let window = SendWindow {
            start: NaiveTime::from_hms_opt(2, 30, 0).unwrap(),
            end: NaiveTime::from_hms_opt(20, 0, 0).unwrap(),
        };
        // 02:30 does not exist on 2026-03-08; 03:00 EDT = 07:00 UTC.
        let at = next_opening(utc("2026-03-08T05:00:00Z"), ny, window).unwrap();
        assert_eq!(at, utc("2026-03-08T07:00:00Z"));
    }

    #[test]
    fn wrapping_windows() {
        let w = SendWindow {
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(6, 0, 0).unwrap(),
        };
        assert!(w.contains(NaiveTime::from_hms_opt(23, 0, 0).unwrap()));
        assert!(w.contains(NaiveTime::from_hms_opt(5, 0, 0).unwrap()));
        assert!(!w.contains(NaiveTime::from_hms_opt(12, 0, 0).unwrap()));
        let at = next_opening(utc("2026-06-01T12:00:00Z"), chrono_tz::UTC, w).unwrap();
        assert_eq!(at, utc("2026-06-01T22:00:00Z"));
    }

    #[test]
    fn zones_come_from_the_job_then_the_number_then_the_agent() {
        let job = |to: &str, tz: Option<&str>| {
            let mut v = serde_json::json!({"id": "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c", "agent_id": "a",
                "channel": "sms", "to": to, "text": "x"});
            if let Some(tz) = tz {
                v["timezone"] = tz.into();
            }
            SendJob::parse(v.to_string().as_bytes()).unwrap()
        };
        let agent: Tz = "Europe/Paris".parse().unwrap();
        assert_eq!(
            recipient_zone(&job("+254712345678", Some("Asia/Tokyo")), agent).1,
            ZoneSource::Job
        );
        let (tz, src) = recipient_zone(&job("+254712345678", None), agent);
        assert_eq!(
            (tz.name(), src),
            ("Africa/Nairobi", ZoneSource::PhoneNumber)
        );
        // The US has many zones: the number alone cannot tell.
        let (tz, src) = recipient_zone(&job("+14155550123", None), agent);
        assert_eq!((tz.name(), src), ("Europe/Paris", ZoneSource::Agent));
    }
}
