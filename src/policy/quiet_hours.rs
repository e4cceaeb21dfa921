//! Quiet hours: marketing reaches people only inside their daytime window,
//! in *their* time zone, correctly across DST changes.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::country_zones::COUNTRY_ZONES;
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
/// number's country when that country keeps one clock (however many zone
/// names it has), else the agent's zone (which is UTC unless the agent set
/// one).
pub fn recipient_zone(job: &SendJob, agent_zone: Tz) -> (Tz, ZoneSource) {
    if let Some(tz) = job.timezone {
        return (tz, ZoneSource::Job);
    }
    if let Recipient::Phone(phone) = &job.recipient
        && let Some(tz) = phone.country().and_then(country_zone)
    {
        return (tz, ZoneSource::PhoneNumber);
    }
    (agent_zone, ZoneSource::Agent)
}

fn country_zone(country: &str) -> Option<Tz> {
    COUNTRY_ZONES
        .binary_search_by(|(cc, _, _)| (*cc).cmp(country))
        .ok()
        .and_then(|i| COUNTRY_ZONES[i].1.parse().ok())
}

/// `None` when `now` is inside the window in `tz`; otherwise the next
/// instant, strictly after `now`, at which the window opens.
pub fn next_opening(now: DateTime<Utc>, tz: Tz, window: SendWindow) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&tz);
    if window.contains(local.time()) {
        return None;
    }
    // The first start of the window after `now`: today's, else tomorrow's.
    // Taking "today's start" by date alone is not enough: on a fall-back
    // night the start can come twice, and the first of the two may already
    // be past (at 01:10 EST, the second 01:10 of the night, 01:30 EDT is
    // half an hour ago). A past opening parks the job due at once, and
    // every wake would park it again until the wall clock catches up.
    let today = local.date_naive();
    let mut date = today;
    for _ in 0..3 {
        if let Some(at) = local_instants(tz, date, window.start)
            .into_iter()
            .find(|at| *at > now)
        {
            return Some(at);
        }
        date = date.succ_opt()?;
    }
    // Unreachable for any zone: a window start comes every local day.
    None
}

/// The instants at which local `date time` occurs in `tz`, earliest first:
/// one; two in a fall-back overlap; in a DST gap (the wall-clock time does
/// not exist) the end of the gap.
fn local_instants(tz: Tz, date: NaiveDate, time: NaiveTime) -> Vec<DateTime<Utc>> {
    let mut naive: NaiveDateTime = date.and_time(time);
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => return vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(a, b) => {
                return vec![a.with_timezone(&Utc), b.with_timezone(&Utc)];
            }
            LocalResult::None => naive += Duration::minutes(1),
        }
    }
    // No zone has a gap of four hours; fall back to reading it as UTC.
    vec![Utc.from_utc_datetime(&date.and_time(time))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Offset;

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

    /// Issue 18 #8: in the hour a fall-back night lives twice, the earlier
    /// of the two instants of the window's start may already be past.
    #[test]
    fn a_fall_back_night_opens_at_the_later_start_not_in_the_past() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let window = SendWindow {
            start: NaiveTime::from_hms_opt(1, 30, 0).unwrap(),
            end: NaiveTime::from_hms_opt(20, 0, 0).unwrap(),
        };
        // 01:10 EST, after the clocks went back from 02:00 EDT.
        let at = next_opening(utc("2026-11-01T06:10:00Z"), ny, window).unwrap();
        assert_eq!(at, utc("2026-11-01T06:30:00Z"));
        // 01:10 EDT, the first time round: the earlier 01:30 is next.
        let at = next_opening(utc("2026-11-01T05:10:00Z"), ny, window).unwrap();
        assert_eq!(at, utc("2026-11-01T05:30:00Z"));
    }

    /// Whatever the zone, window and instant around DST changes, the
    /// opening is strictly later than now.
    #[test]
    fn the_opening_is_always_in_the_future() {
        let zones: Vec<Tz> = [
            "America/New_York",
            "Europe/London",
            "Europe/Berlin",
            "Australia/Sydney",
            "Australia/Lord_Howe",
            "America/Santiago",
            "America/Havana",
            "Asia/Gaza",
        ]
        .iter()
        .map(|z| z.parse().unwrap())
        .collect();
        let times = |h: u32, m: u32| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        let windows = [
            SendWindow::default(),
            SendWindow {
                start: times(1, 30),
                end: times(20, 0),
            },
            SendWindow {
                start: times(0, 30),
                end: times(1, 15),
            },
            SendWindow {
                start: times(22, 0),
                end: times(1, 30),
            },
            SendWindow {
                start: times(1, 45),
                end: times(1, 15),
            },
        ];
        let mut now = utc("2026-01-01T00:00:00Z");
        let end = utc("2027-01-01T00:00:00Z");
        while now < end {
            for tz in &zones {
                // Only near a change of offset: the rest of the year is the
                // ordinary case the other tests cover.
                let offset = |t: DateTime<Utc>| t.with_timezone(tz).offset().fix();
                if offset(now) == offset(now + Duration::hours(3))
                    && offset(now) == offset(now - Duration::hours(3))
                {
                    continue;
                }
                for w in &windows {
                    if let Some(at) = next_opening(now, *tz, *w) {
                        assert!(at > now, "{tz} {w:?} at {now}: opening {at}");
                        let local = at.with_timezone(tz).time();
                        assert!(w.contains(local), "{tz} {w:?} at {now}: {local} is shut");
                    }
                }
            }
            now += Duration::minutes(5);
        }
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

    /// Issue 18 #5: countries with several zone names that keep one clock.
    #[test]
    fn countries_whose_zones_keep_one_clock_get_that_zone() {
        let job = |to: &str| {
            let v = serde_json::json!({"id": "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c",
                "agent_id": "a", "channel": "sms", "to": to, "text": "x"});
            SendJob::parse(v.to_string().as_bytes()).unwrap()
        };
        for (to, zone) in [
            ("+4915123456789", "Europe/Berlin"),
            ("+60123456789", "Asia/Kuala_Lumpur"),
            ("+8613812345678", "Asia/Shanghai"),
            ("+5491123456789", "America/Argentina/Buenos_Aires"),
            ("+35799123456", "Asia/Nicosia"),
            ("+998901234567", "Asia/Samarkand"),
            ("+77012345678", "Asia/Almaty"),
            ("+970599123456", "Asia/Gaza"),
        ] {
            let (tz, src) = recipient_zone(&job(to), chrono_tz::UTC);
            assert_eq!((tz.name(), src), (zone, ZoneSource::PhoneNumber), "{to}");
        }
    }

    /// The offset of `tz` at the start of the compared years and at every
    /// change until their end, to the second.
    fn clock(tz: Tz) -> Vec<(DateTime<Utc>, chrono::FixedOffset)> {
        use super::super::country_zones::{COMPARED_FROM_YEAR, COMPARED_YEARS};
        let year = |y| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).unwrap();
        let (start, end) = (
            year(COMPARED_FROM_YEAR),
            year(COMPARED_FROM_YEAR + COMPARED_YEARS),
        );
        let offset = |t: DateTime<Utc>| t.with_timezone(&tz).offset().fix();
        let mut changes = vec![(start, offset(start))];
        let mut t = start;
        while t < end {
            let next = (t + Duration::days(1)).min(end);
            if offset(next) != offset(t) {
                let (mut lo, mut hi) = (t, next);
                while hi - lo > Duration::seconds(1) {
                    let mid = lo + (hi - lo) / 2;
                    if offset(mid) == offset(lo) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                changes.push((hi, offset(hi)));
            }
            t = next;
        }
        changes
    }

    /// The table was generated from the system's tzdata by Python; the
    /// worker computes with chrono-tz's copy. Both must agree on which
    /// zones keep one clock, or a country silently loses its zone or gets a
    /// wrong one.
    #[test]
    fn the_country_table_agrees_with_chrono_tz() {
        use super::super::country_zones::SEVERAL_CLOCKS;
        for (cc, zone, members) in COUNTRY_ZONES {
            let zone: Tz = zone.parse().unwrap();
            let reference = clock(zone);
            for member in *members {
                let member: Tz = member.parse().unwrap();
                assert_eq!(clock(member), reference, "{cc}: {member} and {zone}");
            }
        }
        for (cc, members) in SEVERAL_CLOCKS {
            let clocks: std::collections::HashSet<_> =
                members.iter().map(|m| clock(m.parse().unwrap())).collect();
            assert!(clocks.len() > 1, "{cc} keeps one clock after all");
        }
    }
}
