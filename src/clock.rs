//! Time, injected. Policy decisions (quiet hours, `send_at`, rate limits,
//! circuit breakers, due scheduled jobs) read the clock through [`Clock`], so
//! tests can move a [`ManualClock`] across a night or a DST change without
//! waiting for it.
//!
//! Only policy time goes through here; network timeouts and backoff between
//! retries use tokio's clock, which is what they are about.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once the clock reads `until` or later.
    fn sleep_until(&self, until: DateTime<Utc>) -> futures_util::future::BoxFuture<'_, ()>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, until: DateTime<Utc>) -> futures_util::future::BoxFuture<'_, ()> {
        let wait = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to.
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    changed: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
            changed: watch::channel(start).0,
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().expect("clock lock");
        *now += chrono::Duration::from_std(by).expect("a sane duration");
        self.changed.send_replace(*now);
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().expect("clock lock") = to;
        self.changed.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock lock")
    }

    fn sleep_until(&self, until: DateTime<Utc>) -> futures_util::future::BoxFuture<'_, ()> {
        let mut rx = self.changed.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|now| *now >= until).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_ends_when_the_clock_is_moved() {
        let clock = std::sync::Arc::new(ManualClock::new(Utc::now()));
        let until = clock.now() + chrono::Duration::seconds(5);
        let c = clock.clone();
        let waiter = tokio::spawn(async move { c.sleep_until(until).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
