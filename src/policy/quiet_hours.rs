//! Quiet hours: marketing reaches people only inside their daytime window,
//! in *their* time zone, correctly across DST changes.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::country_zones::COUNTRY_ZONES;
use super::prefix_zones::prefix_zones;
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
    /// The number's prefix (area code), libphonenumber's map.
    PhonePrefix,
    /// The number's country, which keeps one clock.
    PhoneNumber,
    Agent,
}

impl ZoneSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneSource::Job => "job",
            ZoneSource::PhonePrefix => "phone_prefix",
            ZoneSource::PhoneNumber => "phone_number",
            ZoneSource::Agent => "agent",
        }
    }
}

/// The recipient's zones, in this order: the job's `timezone`; else the
/// zones the number's prefix is used in (one, or several where an area
/// code spans a zone line); else the zone of the number's country when
/// that country keeps one clock (however many zone names it has); else the
/// agent's zone (UTC unless the agent set one). Several zones mean "the
/// recipient is in one of these": send only when all are open.
pub fn recipient_zones(job: &SendJob, agent_zone: Tz) -> (Vec<Tz>, ZoneSource) {
    if let Some(tz) = job.timezone {
        return (vec![tz], ZoneSource::Job);
    }
    if let Recipient::Phone(phone) = &job.recipient {
        if let Some(zones) = prefix_zones(phone) {
            return (zones.to_vec(), ZoneSource::PhonePrefix);
        }
        if let Some(tz) = phone.country().and_then(country_zone) {
            return (vec![tz], ZoneSource::PhoneNumber);
        }
    }
    (vec![agent_zone], ZoneSource::Agent)
}

fn country_zone(country: &str) -> Option<Tz> {
    COUNTRY_ZONES
        .binary_search_by(|(cc, _, _)| (*cc).cmp(country))
        .ok()
        .and_then(|i| COUNTRY_ZONES[i].1.parse().ok())
}

/// `None` when `now` is inside the window in every one of `zones`;
/// otherwise the earliest instant after `now` at which it is open in all.
///
/// Each round moves the candidate to the next opening of every zone still
/// shut; once a round moves nothing, all are open. Zones a prefix shares
/// are neighbours an hour or two apart, so this settles in a round or two.
/// Should the window never be open in all at once (a narrow window over
/// zones far apart), the latest candidate the rounds reached is returned:
/// open in the last zone that moved it, the best this can do.
pub fn next_opening_in_all(
    now: DateTime<Utc>,
    zones: &[Tz],
    window: SendWindow,
) -> Option<DateTime<Utc>> {
    let mut at = now;
    for _ in 0..(4 * zones.len().max(1)) {
        let mut moved = false;
        for tz in zones {
            if let Some(next) = next_opening(at, *tz, window) {
                at = next;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    (at > now).then_some(at)
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

    fn sms(to: &str, tz: Option<&str>) -> SendJob {
        let mut v = serde_json::json!({"id": "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c", "agent_id": "a",
            "channel": "sms", "to": to, "text": "x"});
        if let Some(tz) = tz {
            v["timezone"] = tz.into();
        }
        SendJob::parse(v.to_string().as_bytes()).unwrap()
    }

    fn names(zones: &[Tz]) -> Vec<&'static str> {
        zones.iter().map(|z| z.name()).collect()
    }

    #[test]
    fn zones_come_from_the_job_then_the_prefix_then_the_country_then_the_agent() {
        let agent: Tz = "Europe/Paris".parse().unwrap();
        let (zones, src) = recipient_zones(&sms("+12135550123", Some("Asia/Tokyo")), agent);
        assert_eq!((names(&zones), src), (vec!["Asia/Tokyo"], ZoneSource::Job));
        // Los Angeles' area code, below the country (the US keeps six clocks).
        let (zones, src) = recipient_zones(&sms("+14155550123", None), agent);
        assert_eq!(
            (names(&zones), src),
            (vec!["America/Los_Angeles"], ZoneSource::PhonePrefix)
        );
        // Toll-free: the prefix names all of +1, so no zone of its own.
        let (zones, src) = recipient_zones(&sms("+18005550199", None), agent);
        assert_eq!(
            (names(&zones), src),
            (vec!["Europe/Paris"], ZoneSource::Agent)
        );
    }

    /// Issue 18 #5: countries with several zone names that keep one clock.
    #[test]
    fn countries_whose_zones_keep_one_clock_get_that_zone() {
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
            let job = sms(to, None);
            let Recipient::Phone(phone) = &job.recipient else {
                unreachable!()
            };
            let tz = phone.country().and_then(country_zone).map(|z| z.name());
            assert_eq!(tz, Some(zone), "{to}");
        }
    }

    /// The example: an agent in New York whose window opens at
    /// 08:00 texts Los Angeles at 08:30 New York time; it is 05:30 there,
    /// so the message waits until 08:00 in Los Angeles.
    #[test]
    fn new_york_texting_los_angeles_at_half_past_eight_waits_for_los_angeles() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let window = SendWindow {
            start: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(20, 0, 0).unwrap(),
        };
        let (zones, _) = recipient_zones(&sms("+13105550123", None), ny);
        // 2026-01-15 08:30 EST = 13:30 UTC = 05:30 PST.
        let now = utc("2026-01-15T13:30:00Z");
        assert_eq!(next_opening_in_all(now, &[ny], window), None);
        assert_eq!(
            next_opening_in_all(now, &zones, window),
            Some(utc("2026-01-15T16:00:00Z"))
        );
    }

    #[test]
    fn prefix_zones_across_a_dst_change() {
        let w = SendWindow::default();
        let opening = |to: &str, now: &str| {
            let (zones, src) = recipient_zones(&sms(to, None), chrono_tz::UTC);
            assert_eq!(src, ZoneSource::PhonePrefix, "{to}");
            next_opening_in_all(utc(now), &zones, w)
        };
        // Sunday 2026-03-08, the US springs forward at 02:00 local. 12:30
        // UTC is 08:30 EDT in New York (held to 09:00 EDT = 13:00 UTC) but
        // would have been 07:30 EST the day before.
        assert_eq!(
            opening("+12125550123", "2026-03-08T12:30:00Z"),
            Some(utc("2026-03-08T13:00:00Z"))
        );
        assert_eq!(
            opening("+12125550123", "2026-03-07T12:30:00Z"),
            Some(utc("2026-03-07T14:00:00Z"))
        );
        // Chicago (CDT, UTC-5), Denver (MDT, UTC-6), Vancouver (PDT, UTC-7)
        // that morning: 09:00 local each.
        for (to, at) in [
            ("+13125550123", "2026-03-08T14:00:00Z"),
            ("+13035550123", "2026-03-08T15:00:00Z"),
            ("+16045550123", "2026-03-08T16:00:00Z"),
            ("+12135550123", "2026-03-08T16:00:00Z"),
        ] {
            assert_eq!(opening(to, "2026-03-08T12:30:00Z"), Some(utc(at)), "{to}");
        }
        // Honolulu keeps no DST: 09:00 HST = 19:00 UTC either side.
        assert_eq!(
            opening("+18085550123", "2026-03-08T12:30:00Z"),
            Some(utc("2026-03-08T19:00:00Z"))
        );
        assert_eq!(
            opening("+18085550123", "2026-03-07T12:30:00Z"),
            Some(utc("2026-03-07T19:00:00Z"))
        );
        // Australia: Sydney leaves DST on 2026-04-05 (AEDT UTC+11 → AEST
        // UTC+10), Perth keeps UTC+8. 21:30 UTC on 04-04 is 08:30 AEDT in
        // Sydney (opens at 09:00 AEDT = 22:00 UTC) and 05:30 in Perth; on
        // 04-05 at 21:30 UTC Sydney reads 07:30 AEST and opens at 23:00 UTC.
        assert_eq!(
            opening("+61292345678", "2026-04-03T21:30:00Z"),
            Some(utc("2026-04-03T22:00:00Z"))
        );
        assert_eq!(
            opening("+61292345678", "2026-04-05T21:30:00Z"),
            Some(utc("2026-04-05T23:00:00Z"))
        );
        assert_eq!(
            opening("+61892345678", "2026-04-05T21:30:00Z"),
            Some(utc("2026-04-06T01:00:00Z"))
        );
        // +61 8 9 is filed under Perth and Adelaide: 21:30 UTC is 05:30 in
        // Perth and 07:00 ACST in Adelaide, both open at 09:00 Perth
        // (10:30 Adelaide), 01:00 UTC. At 02:00 UTC both are open.
        assert_eq!(opening("+61892345678", "2026-04-06T02:00:00Z"), None);
    }

    /// An area code split between two clocks (Idaho's 208 2xx: Boise on
    /// Mountain, the panhandle on Pacific time) opens when both are open.
    #[test]
    fn a_prefix_with_several_zones_waits_for_all_of_them() {
        let (zones, src) = recipient_zones(&sms("+12082995555", None), chrono_tz::UTC);
        assert_eq!(src, ZoneSource::PhonePrefix);
        assert_eq!(names(&zones), vec!["America/Boise", "America/Los_Angeles"]);
        // 15:30 UTC in January: 08:30 in Boise, 07:30 in Los Angeles; both
        // open at 09:00 Pacific = 17:00 UTC, an hour after Boise alone.
        let now = utc("2026-01-15T15:30:00Z");
        assert_eq!(
            next_opening_in_all(now, &zones, SendWindow::default()),
            Some(utc("2026-01-15T17:00:00Z"))
        );
        // 19:30 local in Boise is 02:30 UTC; LA is 18:30 yet Boise shuts at
        // 20:00 Mountain = 03:00 UTC: open in both until then.
        assert_eq!(
            next_opening_in_all(utc("2026-01-16T02:30:00Z"), &zones, SendWindow::default()),
            None
        );
        // 03:30 UTC: Boise shut (20:30), LA open (19:30): next morning.
        assert_eq!(
            next_opening_in_all(utc("2026-01-16T03:30:00Z"), &zones, SendWindow::default()),
            Some(utc("2026-01-16T17:00:00Z"))
        );
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
