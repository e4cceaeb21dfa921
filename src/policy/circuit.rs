//! Circuit breakers, one per provider account (integration, or the
//! platform's account of a provider).
//!
//! When an account keeps failing (transient errors: it is down or broken,
//! not rate limiting us), stop calling it for a cool-down, defer its jobs,
//! then let a single probe through: the probe's success closes the circuit,
//! its failure keeps it open for another cool-down. State changes are
//! returned to the caller to record.
//!
//! Hundreds of calls are in flight at once (prefetch 512 by default), so
//! results keep arriving after the circuit opened, from calls that passed
//! the gate while it was closed. They say nothing new: they must not
//! re-open it (one `circuit_opened` per outage, a cool-down that starts
//! once), and a late success must not close it without a probe. So every
//! call carries the [`Call`] the gate gave it, and a result counts only if
//! it belongs to the circuit's current state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::Clock;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: DateTime<Utc>,
    },
    /// One probe is out (since then); everyone else waits for its answer.
    HalfOpen {
        since: DateTime<Utc>,
    },
}

/// One account's breaker. `openings` counts how often it opened: a call
/// admitted before the latest opening is from an older outage.
#[derive(Debug, Clone, Copy)]
struct Breaker {
    state: State,
    openings: u64,
}

/// A call the gate let through; hand it back with its result to
/// [`Circuits::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The breaker's `openings` when the call was admitted.
    openings: u64,
    /// The half-open probe, whose result decides.
    probe: bool,
}

impl Call {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    Pass(Call),
    /// Deferred: the account is failing; try again at this time.
    Blocked(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Closed → open: the account started failing. Returned once per
    /// outage, however many calls fail and however many probes.
    Opened { until: DateTime<Utc>, failures: u32 },
    /// A probe succeeded: the account answers again.
    Closed,
}

pub struct Circuits {
    clock: Arc<dyn Clock>,
    threshold: u32,
    cooldown: Duration,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl Circuits {
    pub fn new(clock: Arc<dyn Clock>, threshold: u32, cooldown: Duration) -> Self {
        Self {
            clock,
            threshold: threshold.max(1),
            cooldown,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    fn cooldown(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.cooldown).unwrap_or_default()
    }

    fn with_breaker<T>(&self, key: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut breakers = self.breakers.lock().expect("circuit lock");
        let breaker = breakers.entry(key.to_string()).or_insert(Breaker {
            state: State::Closed { failures: 0 },
            openings: 0,
        });
        f(breaker)
    }

    pub fn gate(&self, key: &str) -> Gate {
        let now = self.clock.now();
        self.with_breaker(key, |b| {
            let call = |probe| {
                Gate::Pass(Call {
                    openings: b.openings,
                    probe,
                })
            };
            match b.state {
                State::Closed { .. } => call(false),
                State::Open { until } if now >= until => {
                    b.state = State::HalfOpen { since: now };
                    call(true)
                }
                State::Open { until } => Gate::Blocked(until),
                // A probe that has not answered within a cool-down is taken
                // as lost (its task ended without a result): send another,
                // or the account would stay blocked for good.
                State::HalfOpen { since } if now >= since + self.cooldown() => {
                    b.state = State::HalfOpen { since: now };
                    call(true)
                }
                // A probe is out: check back shortly.
                State::HalfOpen { .. } => Gate::Blocked(now + chrono::Duration::seconds(1)),
            }
        })
    }

    /// Records the result of a call the gate let through. `failed` means the
    /// account looked down.
    pub fn settle(&self, key: &str, call: Call, failed: bool) -> Option<Transition> {
        let now = self.clock.now();
        self.with_breaker(key, |b| {
            if call.openings != b.openings {
                // Admitted before the latest opening: its outage is already
                // counted, and it is no probe of the current one.
                return None;
            }
            match (b.state, failed) {
                (State::Closed { .. }, false) => {
                    b.state = State::Closed { failures: 0 };
                    None
                }
                (State::Closed { failures }, true) if failures + 1 >= self.threshold => {
                    let until = now + self.cooldown();
                    b.state = State::Open { until };
                    b.openings += 1;
                    Some(Transition::Opened {
                        until,
                        failures: failures + 1,
                    })
                }
                (State::Closed { failures }, true) => {
                    b.state = State::Closed {
                        failures: failures + 1,
                    };
                    None
                }
                // Only the probe decides; nothing else was let through.
                (State::HalfOpen { .. }, false) if call.probe => {
                    b.state = State::Closed { failures: 0 };
                    Some(Transition::Closed)
                }
                (State::HalfOpen { .. }, true) if call.probe => {
                    // Still down: another cool-down of the same outage, so
                    // no new `circuit_opened`. The count moves on so that a
                    // probe presumed lost, answering late, decides nothing.
                    b.state = State::Open {
                        until: now + self.cooldown(),
                    };
                    b.openings += 1;
                    None
                }
                (State::HalfOpen { .. } | State::Open { .. }, _) => None,
            }
        })
    }

    /// Another worker process opened this account's circuit until `until`
    /// (read from Postgres, `store::circuits`): stop calling it here too. A
    /// closed circuit opens without a transition of its own (the opener
    /// recorded it); an open one keeps the later end.
    pub fn adopt(&self, key: &str, until: DateTime<Utc>) {
        let now = self.clock.now();
        if until <= now {
            return;
        }
        self.with_breaker(key, |b| match b.state {
            State::Closed { .. } => {
                b.state = State::Open { until };
                b.openings += 1;
            }
            State::Open { until: mine } if mine < until => b.state = State::Open { until },
            State::Open { .. } | State::HalfOpen { .. } => {}
        })
    }

    /// Records a result without its [`Call`], as callers did before calls
    /// were tracked: taken as a call of the current state (the probe when
    /// half-open). Results arriving while open are still ignored, so the
    /// cool-down is never extended by calls already in flight; but a late
    /// result arriving while the probe is out is taken for the probe's.
    /// Prefer [`Circuits::settle`].
    pub fn record(&self, key: &str, failed: bool) -> Option<Transition> {
        let call = self.with_breaker(key, |b| Call {
            openings: b.openings,
            probe: matches!(b.state, State::HalfOpen { .. }),
        });
        self.settle(key, call, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_opening_blocks_until_its_end_then_probes() {
        let clock = Arc::new(crate::clock::ManualClock::new(Utc::now()));
        let c = Circuits::new(clock.clone(), 5, Duration::from_secs(30));
        let until = clock.now() + chrono::Duration::seconds(10);
        c.adopt("k", until);
        assert_eq!(c.gate("k"), Gate::Blocked(until));
        clock.advance(Duration::from_secs(10));
        assert!(matches!(c.gate("k"), Gate::Pass(call) if call.is_probe()));
    }
    use crate::clock::ManualClock;

    fn pass(gate: Gate) -> Call {
        match gate {
            Gate::Pass(call) => call,
            Gate::Blocked(until) => panic!("blocked until {until}"),
        }
    }

    #[test]
    fn opens_after_repeated_failures_probes_after_cooldown_and_closes_on_success() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let c = Circuits::new(clock.clone(), 3, Duration::from_secs(30));
        for _ in 0..2 {
            let call = pass(c.gate("k"));
            assert_eq!(c.settle("k", call, true), None);
        }
        let call = pass(c.gate("k"));
        assert!(matches!(
            c.settle("k", call, true),
            Some(Transition::Opened { failures: 3, .. })
        ));
        assert!(matches!(c.gate("k"), Gate::Blocked(_)));
        assert!(matches!(c.gate("other"), Gate::Pass(_)));
        clock.advance(Duration::from_secs(30));
        let probe = pass(c.gate("k"));
        assert!(probe.is_probe(), "one probe");
        assert!(matches!(c.gate("k"), Gate::Blocked(_)), "only one");
        assert_eq!(
            c.settle("k", probe, true),
            None,
            "a failed probe keeps it open, without a second circuit_opened"
        );
        assert!(matches!(c.gate("k"), Gate::Blocked(_)));
        clock.advance(Duration::from_secs(30));
        let probe = pass(c.gate("k"));
        assert_eq!(c.settle("k", probe, false), Some(Transition::Closed));
        assert!(!pass(c.gate("k")).is_probe());
    }

    /// Issue 18 #1 at the defaults (threshold 5, cool-down 30 s, prefetch
    /// 512): every job in flight passed the gate before the account went
    /// down, and their failures and late successes arrive after it opened.
    /// Written against `gate` / `record` (the calls of the old job path) so
    /// it ran on the old code, where it failed.
    #[test]
    fn a_full_prefetch_of_failures_opens_once_and_late_results_change_nothing() {
        let start = Utc::now();
        let clock = Arc::new(ManualClock::new(start));
        let c = Circuits::new(clock.clone(), 5, Duration::from_secs(30));
        for _ in 0..512 {
            assert!(matches!(c.gate("k"), Gate::Pass(_)));
        }
        let opened: Vec<_> = (0..511).filter_map(|_| c.record("k", true)).collect();
        let until = start + chrono::Duration::seconds(30);
        assert_eq!(
            (opened.len(), opened.first()),
            (1, Some(&Transition::Opened { until, failures: 5 })),
            "one circuit_opened, not one per failure in flight"
        );
        clock.advance(Duration::from_secs(20));
        assert_eq!(c.record("k", true), None, "a late failure");
        assert_eq!(c.gate("k"), Gate::Blocked(until), "cool-down not extended");
        assert_eq!(c.record("k", false), None, "a late success");
        assert_eq!(
            c.gate("k"),
            Gate::Blocked(until),
            "still open: no probe yet"
        );
    }

    /// With the calls tracked, only the probe's result moves a half-open
    /// circuit: results of calls admitted before it opened, however late,
    /// neither close it nor re-open it.
    #[test]
    fn only_the_probe_closes_a_half_open_circuit() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let c = Circuits::new(clock.clone(), 5, Duration::from_secs(30));
        let in_flight: Vec<Call> = (0..512).map(|_| pass(c.gate("k"))).collect();
        let opened = in_flight[..5]
            .iter()
            .filter_map(|call| c.settle("k", *call, true))
            .count();
        assert_eq!(opened, 1);
        clock.advance(Duration::from_secs(30));
        let probe = pass(c.gate("k"));
        assert!(probe.is_probe());
        // The rest of the prefetch answers while the probe is out.
        for (i, call) in in_flight[5..].iter().enumerate() {
            assert_eq!(c.settle("k", *call, i % 2 == 0), None);
        }
        assert!(matches!(c.gate("k"), Gate::Blocked(_)), "probe still out");
        assert_eq!(c.settle("k", probe, false), Some(Transition::Closed));
        // A failure from before the outage does not count toward the next.
        for _ in 0..4 {
            let call = pass(c.gate("k"));
            assert_eq!(c.settle("k", call, true), None);
        }
        assert_eq!(c.settle("k", in_flight[0], true), None);
        assert!(matches!(c.gate("k"), Gate::Pass(_)), "4 of 5: still closed");
    }

    /// A probe whose task ended without an answer (shutdown, a panic) must
    /// not block the account for good.
    #[test]
    fn a_lost_probe_is_replaced_after_a_cooldown() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let c = Circuits::new(clock.clone(), 1, Duration::from_secs(30));
        let call = pass(c.gate("k"));
        assert!(c.settle("k", call, true).is_some());
        clock.advance(Duration::from_secs(30));
        let lost = pass(c.gate("k"));
        assert!(matches!(c.gate("k"), Gate::Blocked(_)));
        clock.advance(Duration::from_secs(30));
        let probe = pass(c.gate("k"));
        assert!(probe.is_probe());
        assert_eq!(c.settle("k", probe, true), None, "still down");
        assert_eq!(
            c.settle("k", lost, false),
            None,
            "the lost one decides nothing"
        );
        assert!(matches!(c.gate("k"), Gate::Blocked(_)));
    }
}
