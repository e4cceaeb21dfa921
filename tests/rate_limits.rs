//! Per-second limits kept in Postgres (`store::rate_slots`): exact spacing,
//! one park per job however big the burst, and shared by every worker
//! process (the multi-process test is in `process.rs`).

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use switchboard::store::rate_slots;
use uuid::Uuid;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Issue 18 #3 and the old "burst deferred in order" test, done right:
/// 3,000 jobs arrive at once against 10/s, with 600 more arriving over the
/// first minutes while the parked ones come back at their slots (one
/// statement per job; the same property holds at any size). Each
/// job is parked at most once, slots are handed out in arrival order, and
/// no two sends are closer than 100 ms.
#[tokio::test]
async fn a_burst_is_parked_once_per_job_in_order_and_keeps_the_rate() {
    let env = Env::with_defaults().await;
    let client = env.db.client().await;
    let ten = NonZeroU32::new(10).unwrap();
    let wait_max = Duration::from_secs(1);
    let start = at("2026-03-02T12:00:00Z");
    let mut now = start;
    let mut parked: Vec<(DateTime<Utc>, Uuid)> = Vec::new();
    let mut parks: HashMap<Uuid, u32> = HashMap::new();
    let mut sends: Vec<DateTime<Utc>> = Vec::new();
    let burst: Vec<Uuid> = (0..3_000).map(|_| Uuid::new_v4()).collect();
    let mut last_slot = None;
    for id in &burst {
        let slot = rate_slots::take(&client, "agent:a:sms", *id, ten, now, wait_max)
            .await
            .unwrap();
        if let Some(prev) = last_slot {
            assert!(slot > prev, "slots follow arrival order");
        }
        last_slot = Some(slot);
        if slot - now > chrono::Duration::from_std(wait_max).unwrap() {
            *parks.entry(*id).or_default() += 1;
            parked.push((slot, *id));
        } else {
            sends.push(slot);
        }
    }
    // The parked jobs come back at their slots, in due order, while a fresh
    // job arrives every 500 ms of the first 300 s.
    parked.sort();
    let mut fresh = 0;
    for (due, id) in parked.clone() {
        while fresh < 600 && start + chrono::Duration::milliseconds(500 * fresh) <= due {
            let t = start + chrono::Duration::milliseconds(500 * fresh);
            let fid = Uuid::new_v4();
            let slot = rate_slots::take(&client, "agent:a:sms", fid, ten, t.max(now), wait_max)
                .await
                .unwrap();
            assert!(slot - t.max(now) > chrono::Duration::from_std(wait_max).unwrap());
            *parks.entry(fid).or_default() += 1;
            fresh += 1;
        }
        now = due;
        let slot = rate_slots::take(&client, "agent:a:sms", id, ten, now, wait_max)
            .await
            .unwrap();
        assert_eq!(slot, due, "a job coming back gets the slot it was given");
        sends.push(slot);
    }
    assert!(parks.values().all(|n| *n == 1), "parked once each");
    sends.sort();
    for w in sends.windows(2) {
        assert!(w[1] - w[0] >= chrono::Duration::milliseconds(100), "{w:?}");
    }
    assert_eq!(sends.len(), 3_000);
}

/// Another key, and another agent, are not slowed by a busy one.
#[tokio::test]
async fn keys_are_independent() {
    let env = Env::with_defaults().await;
    let client = env.db.client().await;
    let two = NonZeroU32::new(2).unwrap();
    let now = at("2026-03-02T12:00:00Z");
    for _ in 0..10 {
        rate_slots::take(
            &client,
            "agent:busy:sms",
            Uuid::new_v4(),
            two,
            now,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    }
    let slot = rate_slots::take(
        &client,
        "agent:quiet:sms",
        Uuid::new_v4(),
        two,
        now,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(slot, now);
}

/// The scheduler's hourly prune forgets rate state that can no longer
/// matter (a grant its job never came back for, a key idle for days) and
/// keeps what can; a key pruned this way hands out the same slot as one
/// that was never pruned, so the limit is unchanged.
#[tokio::test]
async fn stale_rate_state_is_pruned_and_pruning_does_not_change_the_slots() {
    let env = Env::with_defaults().await;
    let client = env.db.client().await;
    let one = NonZeroU32::new(1).unwrap();
    let wait_max = Duration::from_secs(1);
    let long_ago = at("2026-03-01T12:00:00Z");
    // A burst parks its second job on a grant; the job never comes back.
    for _ in 0..2 {
        rate_slots::take(
            &client,
            "agent:idle:sms",
            Uuid::new_v4(),
            one,
            long_ago,
            Duration::ZERO,
        )
        .await
        .unwrap();
    }
    let recent = at("2026-03-05T11:59:00Z");
    let kept_job = Uuid::new_v4();
    for job in [Uuid::new_v4(), kept_job] {
        rate_slots::take(&client, "agent:busy:sms", job, one, recent, Duration::ZERO)
            .await
            .unwrap();
    }
    let count = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        (count("rate_slots").await, count("rate_grants").await),
        (2, 2)
    );

    let now = at("2026-03-05T12:00:00Z");
    switchboard::store::scheduled::prune_counters(&client, now - chrono::Duration::days(2))
        .await
        .unwrap();
    assert_eq!(
        (count("rate_slots").await, count("rate_grants").await),
        (1, 1),
        "the idle key and its forgotten grant are gone; the busy key's are kept"
    );
    // The busy key's parked job still gets its own slot back.
    let back = rate_slots::take(&client, "agent:busy:sms", kept_job, one, now, wait_max)
        .await
        .unwrap();
    assert_eq!(back, recent + chrono::Duration::seconds(1));
    // The pruned key behaves as a key never seen: the slot is now.
    let fresh = rate_slots::take(
        &client,
        "agent:idle:sms",
        Uuid::new_v4(),
        one,
        now,
        wait_max,
    )
    .await
    .unwrap();
    assert_eq!(fresh, now);
}
