//! Circuit breakers, one per provider account (integration, or the
//! platform's account of a provider).
//!
//! When an account keeps failing (transient errors: it is down or broken,
//! not rate limiting us), stop calling it for a cool-down, defer its jobs,
//! then let a single probe through: success closes the circuit, failure
//! opens it again. State changes are returned to the caller to record.

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
    /// One probe is out; everyone else waits for its answer.
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    Pass,
    /// Deferred: the account is failing; try again at this time.
    Blocked(DateTime<Utc>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    Opened { until: DateTime<Utc>, failures: u32 },
    Closed,
}

pub struct Circuits {
    clock: Arc<dyn Clock>,
    threshold: u32,
    cooldown: Duration,
    states: Mutex<HashMap<String, State>>,
}

impl Circuits {
    pub fn new(clock: Arc<dyn Clock>, threshold: u32, cooldown: Duration) -> Self {
        Self {
            clock,
            threshold: threshold.max(1),
            cooldown,
            states: Mutex::new(HashMap::new()),
        }
    }

    fn reopen_at(&self) -> DateTime<Utc> {
        self.clock.now() + chrono::Duration::from_std(self.cooldown).unwrap_or_default()
    }

    pub fn gate(&self, key: &str) -> Gate {
        let mut states = self.states.lock().expect("circuit lock");
        let state = states
            .entry(key.to_string())
            .or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { .. } => Gate::Pass,
            State::Open { until } if self.clock.now() >= until => {
                *state = State::HalfOpen;
                Gate::Pass
            }
            State::Open { until } => Gate::Blocked(until),
            // A probe is out: check back shortly.
            State::HalfOpen => Gate::Blocked(self.clock.now() + chrono::Duration::seconds(1)),
        }
    }

    /// Records a call's result. `failed` means the account looked down.
    pub fn record(&self, key: &str, failed: bool) -> Option<Transition> {
        let mut states = self.states.lock().expect("circuit lock");
        let state = states
            .entry(key.to_string())
            .or_insert(State::Closed { failures: 0 });
        match (*state, failed) {
            (State::Closed { .. }, false) => {
                *state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, true) if failures + 1 >= self.threshold => {
                let until = self.reopen_at();
                *state = State::Open { until };
                Some(Transition::Opened {
                    until,
                    failures: failures + 1,
                })
            }
            (State::Closed { failures }, true) => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            (State::HalfOpen | State::Open { .. }, false) => {
                *state = State::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (State::HalfOpen | State::Open { .. }, true) => {
                let until = self.reopen_at();
                *state = State::Open { until };
                Some(Transition::Opened { until, failures: 1 })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn opens_after_repeated_failures_probes_after_cooldown_and_closes_on_success() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let c = Circuits::new(clock.clone(), 3, Duration::from_secs(30));
        assert_eq!(c.record("k", true), None);
        assert_eq!(c.record("k", true), None);
        assert!(matches!(
            c.record("k", true),
            Some(Transition::Opened { .. })
        ));
        assert!(matches!(c.gate("k"), Gate::Blocked(_)));
        assert_eq!(c.gate("other"), Gate::Pass);
        clock.advance(Duration::from_secs(30));
        assert_eq!(c.gate("k"), Gate::Pass, "one probe");
        assert!(matches!(c.gate("k"), Gate::Blocked(_)), "only one");
        assert!(
            matches!(c.record("k", true), Some(Transition::Opened { .. })),
            "failed probe reopens"
        );
        clock.advance(Duration::from_secs(30));
        assert_eq!(c.gate("k"), Gate::Pass);
        assert_eq!(c.record("k", false), Some(Transition::Closed));
        assert_eq!(c.gate("k"), Gate::Pass);
    }
}
