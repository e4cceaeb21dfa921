//! Per-second limits, in memory (governor's GCRA on the injected clock).
//!
//! A job over its limit waits in memory only when the wait is short and few
//! others are already waiting for the same key; otherwise it is deferred to
//! `scheduled_jobs` for the time its turn is expected. So one agent's burst
//! never fills the prefetch window and holds up other agents.
//!
//! A job deferred by [`PerSecondLimits::acquire_job`] is given a slot of
//! its own: the budget of that slot is spent when it is handed out, so the
//! slots of a burst are spread one emission interval apart behind
//! everything admitted, waiting or already deferred, and a job coming back
//! for its slot goes at once instead of competing again with fresh jobs.
//! Each job is parked at most once per process for a per-second limit
//! (once more if the process restarts or another worker takes it).
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

use uuid::Uuid;

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
    schedules: Mutex<HashMap<String, Schedule>>,
}

/// One key's budget as a schedule (GCRA in virtual-scheduling form).
struct Schedule {
    per_second: NonZeroU32,
    /// The theoretical arrival time: when the next unit of budget is free,
    /// counting every job admitted, waiting or given a slot.
    tat: DateTime<Utc>,
    /// Slots handed to deferred jobs, by job id: already paid for.
    reserved: HashMap<Uuid, DateTime<Utc>>,
    /// When `reserved` was last cleared of slots nobody came back for.
    pruned: DateTime<Utc>,
}

/// What one job's turn is.
enum Turn {
    Now,
    /// Soon enough to wait in memory.
    At(DateTime<Utc>),
    /// Later: park the job until this slot, which is kept for it.
    Deferred(DateTime<Utc>),
}

/// A slot nobody came back for after this long went to a job that ended
/// elsewhere (another worker, a cancellation, an opt-out): forget it.
const RESERVATION_TTL: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

impl PerSecondLimits {
    pub fn new(clock: Arc<dyn Clock>, max_wait: Duration) -> Self {
        Self {
            clock,
            max_wait,
            entries: Mutex::new(HashMap::new()),
            schedules: Mutex::new(HashMap::new()),
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

impl PerSecondLimits {
    /// Takes one unit of `key`'s budget for `job`, waiting (on the injected
    /// clock) when its turn is within the wait budget. `Err(at)`: park the
    /// job until `at`, a slot kept for it: called again for the same job at
    /// or after `at`, it goes at once, and early (a waker whose clock runs
    /// ahead) it gets the same slot, not a new one.
    pub async fn acquire_job(
        &self,
        key: &str,
        job: Uuid,
        per_second: NonZeroU32,
    ) -> Result<(), DateTime<Utc>> {
        let now = self.clock.now();
        match self.turn(key, job, per_second, now) {
            Turn::Now => Ok(()),
            Turn::At(at) => {
                self.clock.sleep_until(at).await;
                Ok(())
            }
            Turn::Deferred(at) => Err(at),
        }
    }

    fn turn(&self, key: &str, job: Uuid, per_second: NonZeroU32, now: DateTime<Utc>) -> Turn {
        let max_wait = chrono::TimeDelta::from_std(self.max_wait).unwrap_or_default();
        let mut schedules = self.schedules.lock().expect("limiter lock");
        let fresh = || Schedule {
            per_second,
            tat: now,
            reserved: HashMap::new(),
            pruned: now,
        };
        let s = schedules.entry(key.to_string()).or_insert_with(fresh);
        if s.per_second != per_second {
            // The limit was changed: start over with the new quota.
            *s = fresh();
        }
        if now - s.pruned > chrono::TimeDelta::minutes(1) {
            s.reserved.retain(|_, slot| now - *slot < RESERVATION_TTL);
            s.pruned = now;
        }
        if let Some(&slot) = s.reserved.get(&job) {
            if slot - now > max_wait {
                return Turn::Deferred(slot);
            }
            s.reserved.remove(&job);
            return if slot <= now {
                Turn::Now
            } else {
                Turn::At(slot)
            };
        }
        let interval = chrono::TimeDelta::nanoseconds(1_000_000_000 / per_second.get() as i64);
        // A full second's budget may go at once (as governor's quota does):
        // a job conforms from `tat - burst tolerance` on.
        let tolerance = interval * (per_second.get() as i32 - 1);
        let tat = s.tat.max(now);
        let slot = (tat - tolerance).max(now);
        s.tat = tat + interval;
        if slot <= now {
            Turn::Now
        } else if slot - now <= max_wait {
            Turn::At(slot)
        } else {
            s.reserved.insert(job, slot);
            Turn::Deferred(slot)
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

    /// Issue 18 #3: 10,000 jobs against 10/s. Every job not sent at once is
    /// parked once, to a slot of its own, and sent when woken for it, while
    /// fresh jobs keep arriving at every wake and queue behind; the k-th
    /// send is never earlier than the limit allows.
    #[tokio::test]
    async fn a_burst_is_parked_once_per_job_in_spread_slots_and_keeps_the_rate() {
        let start = Utc::now();
        let clock = Arc::new(ManualClock::new(start));
        // No wait in memory: every job not sent at once is parked.
        let limits = PerSecondLimits::new(clock.clone(), Duration::ZERO);
        let ten = NonZeroU32::new(10).unwrap();
        let mut parked: std::collections::BinaryHeap<std::cmp::Reverse<(DateTime<Utc>, Uuid)>> =
            Default::default();
        let mut parks: HashMap<Uuid, u32> = HashMap::new();
        let mut sends: Vec<DateTime<Utc>> = Vec::new();
        let mut try_send = |job: Uuid,
                            parked: &mut std::collections::BinaryHeap<_>,
                            result: Result<(), DateTime<Utc>>| {
            match result {
                Ok(()) => sends.push(clock.now()),
                Err(at) => {
                    *parks.entry(job).or_default() += 1;
                    parked.push(std::cmp::Reverse((at, job)));
                }
            }
        };
        for _ in 0..10_000 {
            let job = Uuid::new_v4();
            let r = limits.acquire_job("k", job, ten).await;
            try_send(job, &mut parked, r);
        }
        let mut fresh = 0;
        while let Some(std::cmp::Reverse((at, job))) = parked.pop() {
            clock.set(at.max(clock.now()));
            // Steady demand: a new job arrives with every wake, for a while.
            if fresh < 2_000 {
                fresh += 1;
                let newcomer = Uuid::new_v4();
                let r = limits.acquire_job("k", newcomer, ten).await;
                try_send(newcomer, &mut parked, r);
            }
            let r = limits.acquire_job("k", job, ten).await;
            try_send(job, &mut parked, r);
        }
        assert_eq!(sends.len(), 12_000);
        assert!(parks.values().all(|n| *n == 1), "parked once each");
        // GCRA at 10/s with a burst of 10: the k-th send (from 0) not
        // before (k - 9) × 100 ms.
        for (k, at) in sends.iter().enumerate() {
            let earliest = start + chrono::TimeDelta::milliseconds(100 * (k as i64 - 9).max(0));
            assert!(*at >= earliest, "send {k} at {at}, before {earliest}");
        }
    }
}
