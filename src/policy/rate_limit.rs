//! Per-second limits, in memory (governor's GCRA on the injected clock).
//!
//! A job over its limit waits in memory only when the wait is short and few
//! others are already waiting for the same key; otherwise it is deferred to
//! `scheduled_jobs` for the time its turn is expected. So one agent's burst
//! never fills the prefetch window and holds up other agents.
//!
//! These limits hold per process. Across processes, RabbitMQ's sharding
//! (DESIGN.md, Scale-out) gives each agent one active consumer; hour and day
//! quotas are counted in Postgres and hold everywhere (`store::quotas`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::clock::Reference;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::clock::Clock;

/// governor's view of our clock: nanoseconds since the Unix epoch.
#[derive(Clone)]
struct GovernorClock(Arc<dyn Clock>);

impl governor::clock::Clock for GovernorClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::new(self.0.now().timestamp_nanos_opt().unwrap_or(0).max(0) as u64)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, GovernorClock, NoOpMiddleware<Nanos>>;

struct Entry {
    per_second: NonZeroU32,
    limiter: Arc<Limiter>,
    waiting: Arc<AtomicUsize>,
}

pub struct PerSecondLimits {
    clock: Arc<dyn Clock>,
    max_wait: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl PerSecondLimits {
    pub fn new(clock: Arc<dyn Clock>, max_wait: Duration) -> Self {
        Self {
            clock,
            max_wait,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, key: &str, per_second: NonZeroU32) -> (Arc<Limiter>, Arc<AtomicUsize>) {
        let mut entries = self.entries.lock().expect("limiter lock");
        let fresh = || Entry {
            per_second,
            limiter: Arc::new(RateLimiter::direct_with_clock(
                Quota::per_second(per_second),
                GovernorClock(self.clock.clone()),
            )),
            waiting: Arc::new(AtomicUsize::new(0)),
        };
        let entry = entries.entry(key.to_string()).or_insert_with(fresh);
        if entry.per_second != per_second {
            // The limit was changed: start over with the new quota.
            *entry = fresh();
        }
        (entry.limiter.clone(), entry.waiting.clone())
    }

    /// Takes one unit of `key`'s budget, waiting (on the injected clock) when
    /// the wait is short. `Err(at)`: the job should be deferred until `at`.
    pub async fn acquire(&self, key: &str, per_second: NonZeroU32) -> Result<(), DateTime<Utc>> {
        let (limiter, waiting) = self.entry(key, per_second);
        loop {
            let not_until = match limiter.check() {
                Ok(()) => return Ok(()),
                Err(n) => n,
            };
            let now = GovernorClock(self.clock.clone());
            let now_nanos = governor::clock::Clock::now(&now);
            let until_first = not_until.earliest_possible().duration_since(now_nanos);
            // Everyone already waiting goes first: estimate our turn.
            let ahead = waiting.load(Ordering::SeqCst) as u64;
            let turn = Duration::from(until_first)
                + Duration::from_secs_f64(ahead as f64 / per_second.get() as f64);
            let now = self.clock.now();
            if turn > self.max_wait {
                return Err(now + chrono::Duration::from_std(turn).unwrap_or_default());
            }
            waiting.fetch_add(1, Ordering::SeqCst);
            let until =
                now + chrono::Duration::from_std(Duration::from(until_first)).unwrap_or_default();
            self.clock.sleep_until(until).await;
            waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn a_burst_beyond_the_wait_budget_is_deferred_in_order() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let limits = PerSecondLimits::new(clock.clone(), Duration::from_secs(1));
        let two = NonZeroU32::new(2).unwrap();
        assert!(limits.acquire("a", two).await.is_ok());
        assert!(limits.acquire("a", two).await.is_ok());
        // The bucket is empty: the next slot is 0.5 s away, within budget,
        // but with nobody waiting a 3 s estimate is not.
        let start = clock.now();
        let deferred = limits.acquire("a", NonZeroU32::new(2).unwrap());
        let waiter = tokio::spawn({
            let clock = clock.clone();
            async move {
                tokio::task::yield_now().await;
                clock.advance(Duration::from_millis(500));
            }
        });
        assert!(deferred.await.is_ok());
        waiter.await.unwrap();
        assert!(clock.now() - start >= chrono::Duration::milliseconds(500));
        // Another key is not affected.
        assert!(limits.acquire("b", two).await.is_ok());
    }

    #[tokio::test]
    async fn long_waits_are_deferred_not_slept() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let limits = PerSecondLimits::new(clock.clone(), Duration::from_millis(100));
        let one = NonZeroU32::new(1).unwrap();
        assert!(limits.acquire("a", one).await.is_ok());
        let at = limits.acquire("a", one).await.unwrap_err();
        let wait = at - clock.now();
        assert!(
            wait > chrono::Duration::milliseconds(900) && wait <= chrono::Duration::seconds(1),
            "{wait}"
        );
    }
}
