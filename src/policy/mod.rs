//! Policy: what may be sent, to whom, and when. Checked before every send,
//! in one order: suppression (opt-outs, cancelled sequences) → `send_at` →
//! quiet hours → the per-recipient frequency cap → rate limits and quotas →
//! the account's circuit breaker.
//!
//! The pure decisions live here and take the time as an argument; the worker
//! supplies the data (read with the claim, in the same round trip) and
//! records whatever is decided as an event.

pub mod circuit;
mod country_zones;
pub mod frequency_cap;
mod prefix_zones;
pub mod quiet_hours;
pub mod whatsapp_window;

use std::collections::HashMap;
use std::num::NonZeroU32;

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::domain::{Category, Channel, SendJob};
pub use quiet_hours::{SendWindow, ZoneSource};

/// Limits on one key (agent and channel, or a provider account).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: Option<NonZeroU32>,
    pub per_hour: Option<NonZeroU32>,
    pub per_day: Option<NonZeroU32>,
}

/// A count from a limit object as stored (`{"per_day": 500, …}`): a missing
/// or non-positive value is no limit.
pub(crate) fn count(limit: Option<&Value>, key: &str) -> Option<NonZeroU32> {
    limit
        .and_then(|v| v.get(key))
        .and_then(Value::as_u64)
        .and_then(|n| NonZeroU32::new(n.min(u32::MAX as u64) as u32))
}

/// Checks a limit object as a person gave it, named `path` in messages:
/// only `keys`, each a positive whole number; `example` shows the shape.
pub(crate) fn check_counts(
    v: &Value,
    path: &str,
    keys: &[&str],
    example: &str,
) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path} must be an object like {example}"))?;
    for (k, n) in obj {
        if !keys.contains(&k.as_str()) {
            return Err(format!("unknown key {path}.{k} ({})", keys.join(", ")));
        }
        if n.as_u64().is_none_or(|n| n == 0 || n > u32::MAX as u64) {
            return Err(format!("{path}.{k} must be a positive whole number"));
        }
    }
    Ok(())
}

impl RateLimit {
    /// Reads `{"per_second": N, "per_hour": N, "per_day": N}`; anything
    /// missing or not a positive number is no limit.
    pub fn from_json(v: Option<&Value>) -> Self {
        Self {
            per_second: count(v, "per_second"),
            per_hour: count(v, "per_hour"),
            per_day: count(v, "per_day"),
        }
    }

    /// Checks one limit as given by a person, named `path` in messages:
    /// an object of `per_second`, `per_hour`, `per_day`, each a positive
    /// whole number.
    pub fn check_json(v: &Value, path: &str) -> Result<(), String> {
        check_counts(
            v,
            path,
            &["per_second", "per_hour", "per_day"],
            "{\"per_second\": 10}",
        )
    }

    /// Checks an agent's `limits`: an object keyed by channel, each a limit
    /// as [`RateLimit::check_json`] takes it.
    pub fn check_agent_limits(v: &Value) -> Result<(), String> {
        let obj = v.as_object().ok_or(
            "limits must be an object keyed by channel, like {\"sms\": {\"per_second\": 2}}",
        )?;
        for (channel, limit) in obj {
            if channel == "per_recipient" {
                frequency_cap::FrequencyCap::check_json(limit)?;
                continue;
            }
            channel.parse::<Channel>()?;
            Self::check_json(limit, &format!("limits.{channel}"))?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.per_second.is_none() && self.per_hour.is_none() && self.per_day.is_none()
    }
}

/// What switchboard knows of an agent for policy (the `agents` row).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPolicy {
    pub timezone: Tz,
    pub window: SendWindow,
    pub quiet_hours_email: bool,
    /// When voice calls may ring, in the recipient's zone, for every
    /// category (`agents.calling_hours_start/end`, default 08:00–21:00,
    /// the US TCPA's hours).
    pub calling_hours: SendWindow,
    pub limits: HashMap<Channel, RateLimit>,
    /// Marketing messages to one person, across channels
    /// (`limits.per_recipient`).
    pub frequency_cap: frequency_cap::FrequencyCap,
}

/// The calling hours an agent has unless it widens them.
pub fn default_calling_hours() -> SendWindow {
    SendWindow {
        start: NaiveTime::from_hms_opt(8, 0, 0).expect("valid time"),
        end: NaiveTime::from_hms_opt(21, 0, 0).expect("valid time"),
    }
}

impl Default for AgentPolicy {
    fn default() -> Self {
        Self {
            timezone: chrono_tz::UTC,
            window: SendWindow::default(),
            quiet_hours_email: false,
            calling_hours: default_calling_hours(),
            limits: HashMap::new(),
            frequency_cap: Default::default(),
        }
    }
}

impl AgentPolicy {
    /// From the `agents` row as JSON (`row_to_json`); `None` (the agent was
    /// created by this very job) gives the defaults the table has.
    pub fn from_row(row: Option<&Value>) -> Self {
        let Some(row) = row else {
            return Self::default();
        };
        let time = |k: &str, default: NaiveTime| {
            row.get(k)
                .and_then(Value::as_str)
                .and_then(|s| NaiveTime::parse_from_str(s, "%H:%M:%S").ok())
                .unwrap_or(default)
        };
        let defaults = SendWindow::default();
        let limits = Channel::ALL
            .into_iter()
            .filter_map(|c| {
                let l = RateLimit::from_json(row.get("limits").and_then(|l| l.get(c.as_str())));
                (!l.is_empty()).then_some((c, l))
            })
            .collect();
        Self {
            timezone: row
                .get("timezone")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(chrono_tz::UTC),
            window: SendWindow {
                start: time("send_window_start", defaults.start),
                end: time("send_window_end", defaults.end),
            },
            quiet_hours_email: row
                .get("quiet_hours_email")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            calling_hours: SendWindow {
                start: time("calling_hours_start", default_calling_hours().start),
                end: time("calling_hours_end", default_calling_hours().end),
            },
            limits,
            frequency_cap: frequency_cap::FrequencyCap::from_limits(row.get("limits")),
        }
    }
}

/// Opt-out reasons that stop even transactional messages: the address
/// bounces, the person complained, the carrier blocks after STOP, the
/// provider refused, or someone blocked it by hand. A marketing-list
/// `unsubscribe` stops marketing only.
const STOPS_TRANSACTIONAL: [&str; 5] = [
    "hard_bounce",
    "complaint",
    "stop_keyword",
    "provider_rejected",
    "manual",
];

/// Why a job must not be sent now.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// Never: the recipient opted out (reason from `opt_outs`).
    Suppressed { reason: String },
    /// Never: its sequence was cancelled.
    Cancelled,
    /// Later: `send_at` is in the future.
    Scheduled { at: DateTime<Utc> },
    /// Later: outside the recipient's window (quiet hours or calling
    /// hours).
    Window(WindowHold),
}

/// A hold until a local-time window opens in the recipient's zone(s).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowHold {
    pub until: DateTime<Utc>,
    /// `quiet_hours` or `calling_hours`: the event's reason.
    pub reason: &'static str,
    /// Every zone the recipient may be in; the window is open in all at
    /// `until`.
    pub zones: Vec<Tz>,
    pub source: ZoneSource,
}

impl WindowHold {
    /// The deferral event's detail: `recipient_timezone` (the first zone,
    /// as before several were possible), `recipient_timezones` (all) and
    /// `timezone_source`.
    pub fn detail(&self) -> Value {
        let names: Vec<&str> = self.zones.iter().map(|z| z.name()).collect();
        serde_json::json!({
            "recipient_timezone": names.first(),
            "recipient_timezones": names,
            "timezone_source": self.source.as_str(),
        })
    }
}

/// How far another process's clock may run ahead of this one's before a
/// job it wakes is parked again.
///
/// The scheduler of any worker republishes a parked job once the job is due
/// by *its* clock; the worker that takes it judges `send_at` and quiet hours
/// by *its own*. Were the waker's clock ahead by a second, the job would be
/// parked again until the clocks agree, and woken again at every scheduler
/// tick meanwhile (a claim, a park, an event and a publish each time). So a
/// time-based hold that ends within this allowance counts as over: the job
/// goes up to this much early by this worker's clock, which is on time by
/// the waker's. Beyond it (a clock minutes off is broken, not skewed) a
/// woken job is parked again, about once per scheduler tick for
/// (skew − allowance).
pub const CLOCK_SKEW_ALLOWANCE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// The checks that need no counters: suppression, `send_at`, quiet hours.
/// `None`: go on to rate limits and sending. `send_at` and quiet hours
/// that end within [`CLOCK_SKEW_ALLOWANCE`] of `now` do not hold a job.
pub fn hold(
    job: &SendJob,
    agent: &AgentPolicy,
    opt_out_reasons: &[String],
    sequence_cancelled: bool,
    now: DateTime<Utc>,
) -> Option<Hold> {
    let blocking = opt_out_reasons
        .iter()
        .find(|r| job.category == Category::Marketing || STOPS_TRANSACTIONAL.contains(&r.as_str()));
    if let Some(reason) = blocking {
        return Some(Hold::Suppressed {
            reason: reason.clone(),
        });
    }
    if sequence_cancelled {
        return Some(Hold::Cancelled);
    }
    if let Some(at) = job.send_at
        && at > now + CLOCK_SKEW_ALLOWANCE
    {
        return Some(Hold::Scheduled { at });
    }
    let quiet_hours_apply = job.category == Category::Marketing
        && (job.channel != Channel::Email || agent.quiet_hours_email);
    // Calls ring whatever their category: a call at night wakes people
    // whatever it is about, and US law limits marketing calls to these hours.
    let windows = [
        (quiet_hours_apply, agent.window, "quiet_hours"),
        (
            job.channel == Channel::Voice,
            agent.calling_hours,
            "calling_hours",
        ),
    ];
    if windows.iter().any(|(applies, _, _)| *applies) {
        let (zones, source) = quiet_hours::recipient_zones(job, agent.timezone);
        for (_, window, reason) in windows.iter().filter(|(applies, _, _)| *applies) {
            if let Some(until) = quiet_hours::next_opening_in_all(now, &zones, *window)
                && until > now + CLOCK_SKEW_ALLOWANCE
            {
                return Some(Hold::Window(WindowHold {
                    until,
                    reason,
                    zones,
                    source,
                }));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(category: &str, channel: &str, to: &str) -> SendJob {
        SendJob::parse(
            serde_json::json!({"id": "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c", "agent_id": "a",
                "channel": channel, "to": to, "text": "x", "subject": "s", "category": category,
                "timezone": "America/New_York"})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const NIGHT: &str = "2026-01-15T04:00:00Z"; // 23:00 in New York
    const DAY: &str = "2026-01-15T16:00:00Z"; // 11:00 in New York

    #[test]
    fn marketing_at_night_waits_transactional_does_not() {
        let a = AgentPolicy::default();
        assert!(matches!(
            hold(
                &job("marketing", "sms", "+14155550123"),
                &a,
                &[],
                false,
                at(NIGHT)
            ),
            Some(Hold::Window(WindowHold {
                reason: "quiet_hours",
                ..
            }))
        ));
        assert_eq!(
            hold(
                &job("transactional", "sms", "+14155550123"),
                &a,
                &[],
                false,
                at(NIGHT)
            ),
            None
        );
        assert_eq!(
            hold(
                &job("marketing", "sms", "+14155550123"),
                &a,
                &[],
                false,
                at(DAY)
            ),
            None
        );
        // Email is exempt unless the agent asks for quiet hours on email.
        assert_eq!(
            hold(
                &job("marketing", "email", "a@b.co"),
                &a,
                &[],
                false,
                at(NIGHT)
            ),
            None
        );
        let strict = AgentPolicy {
            quiet_hours_email: true,
            ..Default::default()
        };
        assert!(
            hold(
                &job("marketing", "email", "a@b.co"),
                &strict,
                &[],
                false,
                at(NIGHT)
            )
            .is_some()
        );
    }

    #[test]
    fn calls_wait_for_calling_hours_whatever_their_category() {
        let a = AgentPolicy::default();
        // 07:30 in New York: before 08:00 for calls, SMS transactional goes.
        let early = at("2026-01-15T12:30:00Z");
        let held = |reason, until| {
            Some(Hold::Window(WindowHold {
                until: at(until),
                reason,
                zones: vec![chrono_tz::America::New_York],
                source: ZoneSource::Job,
            }))
        };
        assert_eq!(
            hold(
                &job("transactional", "voice", "+14155550123"),
                &a,
                &[],
                false,
                early
            ),
            held("calling_hours", "2026-01-15T13:00:00Z")
        );
        // Marketing calls must pass quiet hours (09:00) too.
        assert_eq!(
            hold(
                &job("marketing", "voice", "+14155550123"),
                &a,
                &[],
                false,
                early
            ),
            held("quiet_hours", "2026-01-15T14:00:00Z")
        );
        assert_eq!(
            hold(
                &job("transactional", "sms", "+14155550123"),
                &a,
                &[],
                false,
                early
            ),
            None
        );
        // 21:00 sharp closes calls; an agent that widens to 22:00 still calls.
        let nine_pm = at("2026-01-16T02:00:00Z");
        let call = job("transactional", "voice", "+14155550123");
        assert!(hold(&call, &a, &[], false, nine_pm).is_some());
        let wide = AgentPolicy::from_row(Some(&serde_json::json!({
            "calling_hours_start": "07:00:00", "calling_hours_end": "22:00:00"})));
        assert_eq!(hold(&call, &wide, &[], false, nine_pm), None);
    }

    #[test]
    fn opt_outs_suppress_by_category() {
        let a = AgentPolicy::default();
        let unsub = vec!["unsubscribe".to_string()];
        let bounce = vec!["hard_bounce".to_string()];
        let j = job("marketing", "email", "a@b.co");
        assert_eq!(
            hold(&j, &a, &unsub, false, at(DAY)),
            Some(Hold::Suppressed {
                reason: "unsubscribe".into()
            })
        );
        let t = job("transactional", "email", "a@b.co");
        assert_eq!(hold(&t, &a, &unsub, false, at(DAY)), None);
        assert_eq!(
            hold(&t, &a, &bounce, false, at(DAY)),
            Some(Hold::Suppressed {
                reason: "hard_bounce".into()
            })
        );
    }

    /// Issue 18 #8: a job woken by a scheduler whose clock runs a little
    /// ahead is not parked again for the last seconds of its wait.
    #[test]
    fn holds_ending_within_the_skew_allowance_do_not_hold() {
        let a = AgentPolicy::default();
        let mut j = job("transactional", "sms", "+14155550123");
        j.send_at = Some(at(DAY));
        let before = |s: i64| at(DAY) - chrono::TimeDelta::seconds(s);
        assert_eq!(hold(&j, &a, &[], false, before(5)), None);
        assert_eq!(
            hold(&j, &a, &[], false, before(6)),
            Some(Hold::Scheduled { at: at(DAY) })
        );
        // 09:00 in New York is 14:00 UTC.
        let m = job("marketing", "sms", "+14155550123");
        let opening = at("2026-01-15T14:00:00Z");
        assert_eq!(
            hold(&m, &a, &[], false, opening - chrono::TimeDelta::seconds(5)),
            None
        );
        assert!(matches!(
            hold(&m, &a, &[], false, opening - chrono::TimeDelta::seconds(6)),
            Some(Hold::Window(WindowHold { until, .. })) if until == opening
        ));
    }

    #[test]
    fn agent_rows_are_read_with_defaults() {
        let row = serde_json::json!({"timezone": "Europe/Paris", "send_window_start": "08:30:00",
            "send_window_end": "19:00:00", "quiet_hours_email": true,
            "limits": {"sms": {"per_second": 2, "per_day": 500}}});
        let p = AgentPolicy::from_row(Some(&row));
        assert_eq!(p.timezone.name(), "Europe/Paris");
        assert_eq!(p.window.start, NaiveTime::from_hms_opt(8, 30, 0).unwrap());
        assert_eq!(p.limits[&Channel::Sms].per_second, NonZeroU32::new(2));
        assert!(!p.limits.contains_key(&Channel::Email));
        assert_eq!(AgentPolicy::from_row(None), AgentPolicy::default());
    }
}
