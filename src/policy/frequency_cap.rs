//! The per-recipient frequency cap: at most N marketing messages from one
//! agent to one person per day and per week, across every channel
//! (`agents.limits.per_recipient`, like `{"per_day": 2, "per_week": 5}`).
//!
//! Days and weeks are the recipient's calendar days and ISO weeks (Monday
//! to Sunday) in their own zone, so "two a day" means what the person sees
//! on their phone, and a message held by the cap goes out the moment their
//! next day (or week) begins — and then waits for quiet hours like any other
//! marketing message. Transactional messages neither count nor are held.
//!
//! This module decides from counts; `store::recipient_caps` counts and
//! reserves under a lock, and the worker records what was decided.

use std::num::NonZeroU32;

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::Value;

/// An agent's cap on marketing messages to one person.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrequencyCap {
    pub per_day: Option<NonZeroU32>,
    pub per_week: Option<NonZeroU32>,
}

/// One calendar window of the cap, in UTC, and how many it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapWindow {
    /// `day` or `week`: the detail of a `deferred` or `capped` event.
    pub name: &'static str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub allowed: u32,
}

impl FrequencyCap {
    /// Reads `limits.per_recipient`; a missing or non-positive number is no
    /// cap.
    pub fn from_limits(limits: Option<&Value>) -> Self {
        let cap = limits.and_then(|l| l.get("per_recipient"));
        Self {
            per_day: super::count(cap, "per_day"),
            per_week: super::count(cap, "per_week"),
        }
    }

    /// Checks `limits.per_recipient` as a person gave it.
    pub fn check_json(v: &Value) -> Result<(), String> {
        super::check_counts(
            v,
            "limits.per_recipient",
            &["per_day", "per_week"],
            "{\"per_day\": 2, \"per_week\": 5}",
        )
    }

    pub fn is_empty(&self) -> bool {
        self.per_day.is_none() && self.per_week.is_none()
    }

    /// The windows that contain `now` in the recipient's zone. Where the
    /// recipient may be in several zones (an area code across a zone line),
    /// the earliest start and the latest end of them, so that no zone's
    /// day holds more than the cap.
    pub fn windows(&self, now: DateTime<Utc>, zones: &[Tz]) -> Vec<CapWindow> {
        let zones = if zones.is_empty() {
            &[chrono_tz::UTC][..]
        } else {
            zones
        };
        let span = |first_day: fn(NaiveDate) -> NaiveDate, length: u64| {
            let bounds = zones.iter().map(|tz| {
                let today = now.with_timezone(tz).date_naive();
                let start = first_day(today);
                (
                    local_midnight(*tz, start),
                    local_midnight(*tz, start + Days::new(length)),
                )
            });
            let start = bounds.clone().map(|b| b.0).min().expect("a zone");
            let end = bounds.map(|b| b.1).max().expect("a zone");
            (start, end)
        };
        let mut windows = Vec::new();
        if let Some(n) = self.per_day {
            let (start, end) = span(|d| d, 1);
            windows.push(CapWindow {
                name: "day",
                start,
                end,
                allowed: n.get(),
            });
        }
        if let Some(n) = self.per_week {
            let (start, end) = span(
                |d| d - Days::new(d.weekday().num_days_from_monday().into()),
                7,
            );
            windows.push(CapWindow {
                name: "week",
                start,
                end,
                allowed: n.get(),
            });
        }
        windows
    }
}

/// What the counts decide: `None` sends; `Some(window)` is the full window
/// that ends last, the earliest time every window allows the message.
pub fn over_cap(windows: &[CapWindow], counts: &[u32]) -> Option<CapWindow> {
    windows
        .iter()
        .zip(counts)
        .filter(|(w, n)| **n >= w.allowed)
        .map(|(w, _)| *w)
        .max_by_key(|w| w.end)
}

/// The first instant of `date` in `tz`. A zone that skips midnight for a
/// DST change (some do, at 00:00) starts that day at the end of the gap.
fn local_midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    loop {
        if let Some(at) = tz.from_local_datetime(&t).earliest() {
            return at.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cap(v: Value) -> FrequencyCap {
        FrequencyCap::from_limits(Some(&json!({ "per_recipient": v })))
    }

    #[test]
    fn a_day_is_the_recipients_calendar_day() {
        // 03:00 UTC on 10 March 2026 is 23:00 on the 9th in New York (EDT
        // since the 8th): the day runs 04:00 UTC on the 9th to 04:00 on
        // the 10th.
        let w = cap(json!({"per_day": 2}))
            .windows(utc("2026-03-10T03:00:00Z"), &[chrono_tz::America::New_York]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].start, utc("2026-03-09T04:00:00Z"));
        assert_eq!(w[0].end, utc("2026-03-10T04:00:00Z"));
        assert_eq!(w[0].allowed, 2);
    }

    #[test]
    fn the_day_of_a_dst_change_is_23_hours_long() {
        // New York springs forward on Sunday 8 March 2026: that day starts at
        // 05:00 UTC (EST) and ends at 04:00 UTC on the 9th (EDT).
        let w = cap(json!({"per_day": 1}))
            .windows(utc("2026-03-08T12:00:00Z"), &[chrono_tz::America::New_York]);
        assert_eq!(w[0].start, utc("2026-03-08T05:00:00Z"));
        assert_eq!(w[0].end, utc("2026-03-09T04:00:00Z"));
    }

    #[test]
    fn a_week_runs_monday_to_sunday_in_the_recipients_zone() {
        // Wednesday 14 January 2026 in Sydney (AEDT, UTC+11).
        let w = cap(json!({"per_week": 5}))
            .windows(utc("2026-01-14T01:00:00Z"), &[chrono_tz::Australia::Sydney]);
        assert_eq!(w[0].name, "week");
        assert_eq!(w[0].start, utc("2026-01-11T13:00:00Z"));
        assert_eq!(w[0].end, utc("2026-01-18T13:00:00Z"));
    }

    #[test]
    fn several_zones_take_the_widest_day() {
        // Idaho's 208 2xx: Boise (MST, UTC-7) and the panhandle (PST, UTC-8).
        let w = cap(json!({"per_day": 2})).windows(
            utc("2026-01-15T18:00:00Z"),
            &[chrono_tz::America::Boise, chrono_tz::America::Los_Angeles],
        );
        assert_eq!(w[0].start, utc("2026-01-15T07:00:00Z"));
        assert_eq!(w[0].end, utc("2026-01-16T08:00:00Z"));
    }

    #[test]
    fn over_the_cap_waits_for_the_window_that_ends_last() {
        let c = cap(json!({"per_day": 2, "per_week": 5}));
        let w = c.windows(utc("2026-01-14T12:00:00Z"), &[chrono_tz::UTC]);
        assert_eq!(over_cap(&w, &[1, 4]), None);
        assert_eq!(over_cap(&w, &[2, 4]).unwrap().name, "day");
        assert_eq!(over_cap(&w, &[2, 5]).unwrap().name, "week");
        assert_eq!(
            over_cap(&w, &[0, 5]).unwrap().end,
            utc("2026-01-19T00:00:00Z")
        );
    }

    #[test]
    fn limits_are_checked_as_given() {
        assert!(FrequencyCap::check_json(&json!({"per_day": 2, "per_week": 5})).is_ok());
        let e = FrequencyCap::check_json(&json!({"per_month": 2})).unwrap_err();
        assert!(
            e.contains("unknown key limits.per_recipient.per_month"),
            "{e}"
        );
        let e = FrequencyCap::check_json(&json!({"per_day": 0})).unwrap_err();
        assert!(e.contains("positive whole number"), "{e}");
        assert!(cap(json!({"per_day": 0})).is_empty());
        assert!(FrequencyCap::from_limits(None).is_empty());
    }
}
