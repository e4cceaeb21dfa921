//! Policy end to end: opt-outs, quiet hours in the recipient's zone, send_at
//! scheduling, rate limits and quotas, long Retry-After and circuit breakers.
//! Real Postgres and RabbitMQ; policy time is a manual clock, so no test
//! waits for real hours.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use serde_json::json;
use switchboard::clock::{Clock, ManualClock};
use switchboard::metrics::Metrics;
use switchboard::store::quotas::{self, Window};
use switchboard::store::scheduled;
use switchboard::worker::{WorkerContext, scheduler};

use wiremock::{MockServer, ResponseTemplate};

const SID: &str = "AC00000000000000000000000000000999";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn twilio_ok(server: &MockServer) {
    twilio_create_message(SID, "platform-token")
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMpol", "status": "queued"})),
        )
        .mount(server)
        .await;
}

async fn policy_env(server: &MockServer) -> Env {
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000")
        .set("SWITCHBOARD_SCHEDULER_INTERVAL_MS", "20");
    env
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

async fn sql(env: &Env, statement: &str) {
    env.db
        .client()
        .await
        .batch_execute(statement)
        .await
        .unwrap();
}

async fn due_at(env: &Env, id: uuid::Uuid) -> Option<DateTime<Utc>> {
    env.db
        .client()
        .await
        .query_opt("SELECT due_at FROM scheduled_jobs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn marketing_at_23h_local_is_deferred_to_9h_next_day_across_dst_then_sent() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    // Saturday 7 March 2026, 23:00 in New York (EST). DST starts overnight.
    let clock = Arc::new(ManualClock::new(at("2026-03-08T04:00:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let mut job = sms_job("agent-q", "+14155550123");
    job["category"] = "marketing".into();
    job["timezone"] = "America/New_York".into();
    env.publisher().await.publish(&job).await;

    env.wait_for_status(job_id(&job), "deferred").await;
    // 09:00 EDT on Sunday = 13:00 UTC (not 14:00, as it would be in EST).
    assert_eq!(
        due_at(&env, job_id(&job)).await,
        Some(at("2026-03-08T13:00:00Z"))
    );
    let events = env.event_details(job_id(&job)).await;
    let deferred = &events.iter().find(|(e, _)| e == "deferred").unwrap().1;
    assert_eq!(deferred["reason"], "quiet_hours");
    assert_eq!(deferred["recipient_timezone"], "America/New_York");
    assert_eq!(requests(&server).await, 0);

    clock.set(at("2026-03-08T12:59:00Z"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests(&server).await, 0, "not before the window opens");
    clock.set(at("2026-03-08T13:00:00Z"));
    env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(requests(&server).await, 1);
    assert_eq!(
        due_at(&env, job_id(&job)).await,
        None,
        "removed once republished"
    );
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "deferred", "sent"]
    );
}

#[tokio::test]
async fn the_zone_comes_from_the_number_when_the_job_gives_none() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    // 21:30 in Nairobi (UTC+3): outside the window there, inside it in UTC.
    let clock = Arc::new(ManualClock::new(at("2026-06-01T18:30:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let mut job = sms_job("agent-ke", "+254712345678");
    job["category"] = "marketing".into();
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "deferred").await;
    worker.stop().await;
    assert_eq!(
        due_at(&env, job_id(&job)).await,
        Some(at("2026-06-02T06:00:00Z"))
    );
}

#[tokio::test]
async fn transactional_at_23h_local_is_sent_at_once() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    let clock = Arc::new(ManualClock::new(at("2026-03-08T04:00:00Z")));
    let worker = env.start_worker_with_clock(clock);
    let mut job = sms_job("agent-q", "+14155550123");
    job["timezone"] = "America/New_York".into(); // category: transactional
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(requests(&server).await, 1);
}

#[tokio::test]
async fn opted_out_recipients_are_suppressed_without_a_provider_call() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    let mut client = env.db.client().await;
    switchboard::store::opt_outs::add(
        &mut client,
        Some("agent-o"),
        "sms".parse().unwrap(),
        "+14155550123",
        "stop_keyword",
        Some("test"),
    )
    .await
    .unwrap();
    // Platform-wide, and a marketing-only unsubscribe.
    switchboard::store::opt_outs::add(
        &mut client,
        None,
        "sms".parse().unwrap(),
        "+14155550124",
        "complaint",
        None,
    )
    .await
    .unwrap();
    switchboard::store::opt_outs::add(
        &mut client,
        Some("agent-o"),
        "sms".parse().unwrap(),
        "+14155550125",
        "unsubscribe",
        None,
    )
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let worker = env.start_worker_with_clock(clock);
    let publisher = env.publisher().await;
    // Given in another format: compared normalised.
    let stopped = sms_job("agent-o", "+1 (415) 555-0123");
    let platform_wide = sms_job("agent-other", "+14155550124");
    let mut unsubscribed_marketing = sms_job("agent-o", "+14155550125");
    unsubscribed_marketing["category"] = "marketing".into();
    unsubscribed_marketing["timezone"] = "UTC".into();
    let unsubscribed_transactional = sms_job("agent-o", "+14155550125");
    for j in [
        &stopped,
        &platform_wide,
        &unsubscribed_marketing,
        &unsubscribed_transactional,
    ] {
        publisher.publish(j).await;
    }
    let row = env.wait_for_status(job_id(&stopped), "suppressed").await;
    assert_eq!(row.last_error.as_deref(), Some("stop_keyword"));
    env.wait_for_status(job_id(&platform_wide), "suppressed")
        .await;
    env.wait_for_status(job_id(&unsubscribed_transactional), "sent")
        .await;
    env.wait_for_status(job_id(&unsubscribed_marketing), "suppressed")
        .await;
    worker.stop().await;
    assert_eq!(
        requests(&server).await,
        1,
        "only the transactional job reached Twilio"
    );
    assert_eq!(
        env.events(job_id(&stopped)).await,
        vec!["queued", "suppressed"]
    );
}

#[tokio::test]
async fn twilio_21610_records_an_opt_out_and_later_jobs_are_suppressed() {
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400})))
        .expect(1)
        .mount(&server)
        .await;
    let env = policy_env(&server).await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let first = sms_job("agent-u", "+14155550123");
    publisher.publish(&first).await;
    env.wait_for_status(job_id(&first), "failed").await;
    let second = sms_job("agent-u", "+14155550123");
    publisher.publish(&second).await;
    env.wait_for_status(job_id(&second), "suppressed").await;
    worker.stop().await;
    server.verify().await;
}

#[tokio::test]
async fn twenty_jobs_against_2_per_second_are_all_sent_over_9_virtual_seconds_other_agents_unaffected()
 {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    let start = at("2026-01-15T15:00:00Z");
    let clock = Arc::new(ManualClock::new(start));
    sql(
        &env,
        r#"INSERT INTO agents (id, limits) VALUES ('agent-slow', '{"sms": {"per_second": 2}}')"#,
    )
    .await;
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let mut slow = Vec::new();
    let mut fast = Vec::new();
    for _ in 0..20 {
        let j = sms_job("agent-slow", "+14155550123");
        slow.push(job_id(&j));
        publisher.publish(&j).await;
        let j = sms_job("agent-fast", "+14155550123");
        fast.push(job_id(&j));
        publisher.publish(&j).await;
    }
    // The other agent is not held up at all: all its jobs go out while the
    // virtual clock stands still.
    for id in &fast {
        env.wait_for_status(*id, "sent").await;
    }
    assert_eq!(clock.now(), start);

    let client = env.db.client().await;
    let sent_slow = || async {
        client
            .query_one(
                "SELECT count(*) FROM outbound_messages WHERE agent_id = 'agent-slow' AND status = 'sent'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut steps = 0;
    while sent_slow().await < 20 {
        clock.advance(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(15)).await;
        steps += 1;
        assert!(steps < 5_000, "rate-limited jobs never finished");
    }
    worker.stop().await;

    // Each send's policy time and the per-second slot it was given.
    let mut sends = Vec::new();
    for id in &slow {
        let events = env.event_details(*id).await;
        let sent = events
            .iter()
            .find(|(e, _)| e == "sent")
            .expect("sent")
            .1
            .clone();
        let slot = at(sent["rate_slot"].as_str().expect("a rate slot"));
        let when = at(sent["at"].as_str().unwrap());
        assert!(when >= slot, "sent at {when}, before its slot {slot}");
        sends.push((slot, when));
    }
    sends.sort();
    let spread = sends.last().unwrap().1 - sends[0].1;
    assert!(
        spread >= chrono::Duration::milliseconds(9_500),
        "20 jobs at 2/s spread over {spread}"
    );
    // Never more than 2 in any one second: slots are 500 ms apart, so any
    // three span at least a second, and no send goes before its slot.
    for w in sends.windows(3) {
        assert!(w[2].0 - w[0].0 >= chrono::Duration::seconds(1), "{w:?}");
    }
    assert_eq!(requests(&server).await, 40, "none dropped, none doubled");
}

#[tokio::test]
async fn a_day_quota_defers_the_rest_to_the_next_day_and_is_counted_in_postgres() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    sql(
        &env,
        r#"INSERT INTO agents (id, limits, send_window_start, send_window_end)
           VALUES ('agent-q', '{"sms": {"per_day": 3}}', '00:00', '23:59')"#,
    )
    .await;
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        // An agent's own quotas pace its marketing (its window is open all
        // day, so only the quota holds jobs); transactional messages are
        // exempt (tests/quotas.rs).
        let mut j = sms_job("agent-q", "+14155550123");
        j["category"] = json!("marketing");
        ids.push(job_id(&j));
        publisher.publish(&j).await;
    }
    let client = env.db.client().await;
    let count = |status: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM outbound_messages WHERE status = $1",
                    &[&status],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    wait_until("3 sent, 2 deferred", || async {
        (count("sent").await == 3 && count("deferred").await == 2).then_some(())
    })
    .await;
    let counted: i32 = client
        .query_one("SELECT count FROM rate_counters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 3);
    let due: Vec<DateTime<Utc>> = client
        .query("SELECT due_at FROM scheduled_jobs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        due.iter().all(|d| *d == at("2026-01-16T00:00:00Z")),
        "{due:?}"
    );
    clock.set(at("2026-01-16T00:00:01Z"));
    wait_until("the rest sent the next day", || async {
        (count("sent").await == 5).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(requests(&server).await, 5);
}

#[tokio::test]
async fn two_workers_publish_a_send_at_job_exactly_once() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let a = env.start_worker_with_clock(clock.clone());
    let b = env.start_worker_with_clock(clock.clone());
    let mut jobs = Vec::new();
    let publisher = env.publisher().await;
    for _ in 0..20 {
        let mut job = sms_job("agent-s", "+14155550123");
        job["send_at"] = "2026-01-15T16:00:00Z".into();
        publisher.publish(&job).await;
        jobs.push(job_id(&job));
    }
    for id in &jobs {
        env.wait_for_status(*id, "scheduled").await;
    }
    assert_eq!(requests(&server).await, 0);
    clock.set(at("2026-01-15T16:00:00Z"));
    for id in &jobs {
        env.wait_for_status(*id, "sent").await;
    }
    let published =
        a.ctx.metrics.scheduled_published.get() + b.ctx.metrics.scheduled_published.get();
    a.stop().await;
    b.stop().await;
    assert_eq!(published, 20, "each due job republished exactly once");
    assert_eq!(requests(&server).await, 20);
}

#[tokio::test]
async fn an_opt_out_or_the_command_line_cancels_later_steps_of_a_sequence() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let step = |to: &str, seq: &str, n: i64| {
        let mut j = sms_job("agent-seq", to);
        j["sequence_id"] = seq.into();
        j["step"] = n.into();
        j["send_at"] = format!("2026-01-{}T16:00:00Z", 15 + n).into();
        j
    };
    let a2 = step("+14155550123", "drip-1", 2);
    let a3 = step("+14155550123", "drip-1", 3);
    let b2 = step("+14155550199", "drip-1", 2);
    let c2 = step("+14155550177", "drip-2", 2);
    for j in [&a2, &a3, &b2, &c2] {
        publisher.publish(j).await;
        env.wait_for_status(job_id(j), "scheduled").await;
    }
    // The first recipient replies STOP.
    let mut client = env.db.client().await;
    let cancelled = switchboard::store::opt_outs::add(
        &mut client,
        Some("agent-seq"),
        "sms".parse().unwrap(),
        "+14155550123",
        "stop_keyword",
        Some("reply"),
    )
    .await
    .unwrap();
    assert_eq!(cancelled, 2);
    env.wait_for_status(job_id(&a2), "cancelled").await;
    env.wait_for_status(job_id(&a3), "cancelled").await;

    // An operator cancels drip-2 for everyone from the command line.
    let (ok, out, err) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "sequences",
                "cancel",
                "--agent",
                "agent-seq",
                "--sequence",
                "drip-2",
            ])
            .env_clear()
            .envs(&env.vars)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "{err}");
    assert!(out.contains("cancelled 1"), "{out}");
    env.wait_for_status(job_id(&c2), "cancelled").await;
    // A later step of drip-2 still in the queue is cancelled when consumed.
    let c3 = step("+14155550177", "drip-2", 3);
    publisher.publish(&c3).await;
    env.wait_for_status(job_id(&c3), "cancelled").await;

    clock.set(at("2026-01-20T00:00:00Z"));
    env.wait_for_status(job_id(&b2), "sent").await;
    worker.stop().await;
    assert_eq!(
        requests(&server).await,
        1,
        "only the other recipient's step was sent"
    );
}

#[tokio::test]
async fn a_long_retry_after_parks_the_job_instead_of_holding_a_slot() {
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "120")
                .set_body_json(
                    json!({"code": 20429, "message": "Too Many Requests", "status": 429}),
                ),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let job = sms_job("agent-r", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "deferred").await;
    assert_eq!(row.attempts, 1);
    assert_eq!(
        due_at(&env, job_id(&job)).await,
        Some(at("2026-01-15T15:02:00Z"))
    );
    clock.set(at("2026-01-15T15:02:00Z"));
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(row.attempts, 2);
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "attempt_failed", "deferred", "sent"]
    );
}

#[tokio::test]
async fn a_failing_account_opens_its_circuit_defers_jobs_and_closes_after_a_good_probe() {
    let server = MockServer::start().await;
    let mut env = policy_env(&server).await;
    // Threshold 2 and prefetch 1 make the opening and the probe land on
    // known jobs, so this test can follow one outage through to the closing
    // probe with a manual clock. The defaults (threshold 5, prefetch 512)
    // are tested in
    // `the_job_that_opens_the_circuit_is_deferred_not_failed_at_the_defaults`
    // and, across processes, in process.rs.
    env.set("SWITCHBOARD_CIRCUIT_THRESHOLD", "2")
        .set("SWITCHBOARD_CIRCUIT_COOLDOWN_MS", "30000")
        .set("SWITCHBOARD_MAX_ATTEMPTS", "5")
        .set("SWITCHBOARD_PREFETCH", "1");
    twilio_create_message(SID, "platform-token")
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let first = sms_job("agent-c", "+14155550123");
    let second = sms_job("agent-c", "+14155550123");
    publisher.publish(&first).await;
    publisher.publish(&second).await;
    env.wait_for_status(job_id(&first), "deferred").await;
    env.wait_for_status(job_id(&second), "deferred").await;
    // Two calls opened the circuit; the second job never reached Twilio.
    assert_eq!(requests(&server).await, 2);
    let client = env.db.client().await;
    let opened: i64 = client
        .query_one("SELECT count(*) FROM outbound_events WHERE event = 'circuit_opened' AND message_id IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(opened, 1);

    server.reset().await;
    twilio_ok(&server).await;
    clock.advance(Duration::from_secs(30));
    env.wait_for_status(job_id(&first), "sent").await;
    env.wait_for_status(job_id(&second), "sent").await;
    worker.stop().await;
    let closed: i64 = client
        .query_one(
            "SELECT count(*) FROM outbound_events WHERE event = 'circuit_closed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(closed, 1);
}

#[tokio::test]
async fn the_agents_window_and_zone_apply_when_the_recipients_zone_is_unknown() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = policy_env(&server).await;
    switchboard::app::set_agent(
        &env.settings(),
        switchboard::app::AgentSettings {
            agent: "agent-paris".into(),
            timezone: Some("Europe/Paris".into()),
            send_window: Some("10:00-18:00".into()),
            quiet_hours_email: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // 08:00 UTC = 09:00 in Paris: inside the default window, not the agent's.
    let clock = Arc::new(ManualClock::new(at("2026-01-15T08:00:00Z")));
    let worker = env.start_worker_with_clock(clock);
    // A US toll-free number: no area code, and the country has many
    // zones, so the agent's zone is used.
    let mut job = sms_job("agent-paris", "+18005550199");
    job["category"] = "marketing".into();
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "deferred").await;
    worker.stop().await;
    assert_eq!(
        due_at(&env, job_id(&job)).await,
        Some(at("2026-01-15T09:00:00Z"))
    );
    let events = env.event_details(job_id(&job)).await;
    let deferred = &events.iter().find(|(e, _)| e == "deferred").unwrap().1;
    assert_eq!(deferred["timezone_source"], "agent");
}

// ---------------------------------------------------------------------------
// Findings of issues 18 and 10, each reproduced at default settings: quota
// windows that collided at midnight UTC, countries whose zones share one
// clock, a fall-back night whose opening lay in the past, a scheduler whose
// clock runs ahead, and a scheduler publishing into a topology that cannot
// route. Each failed on the code before its fix.

/// Default settings, but for the platform's Twilio account pointed at the
/// mock (there is no default for those): the scheduler ticks every second,
/// as in production.
async fn default_env(server: &MockServer) -> Env {
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
    env
}

async fn count_status(env: &Env, status: &str) -> i64 {
    env.db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM outbound_messages WHERE status = $1",
            &[&status],
        )
        .await
        .unwrap()
        .get(0)
}

async fn count_events(env: &Env, id: uuid::Uuid, event: &str) -> usize {
    env.events(id).await.iter().filter(|e| *e == event).count()
}

// ---------------------------------------------------------------------------
// Issue 18 #4: the hour and day counters of one key shared a row from 00:00
// to 01:00 UTC (same key, same window start), so each send counted twice.

#[tokio::test]
async fn hour_and_day_quotas_are_counted_apart_at_00_30_utc() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let now = at("2026-01-15T00:30:00Z");
    let quotas = vec![
        ("agent:a:sms".to_string(), Window::Hour, 2),
        ("agent:a:sms".to_string(), Window::Day, 100),
    ];
    assert_eq!(
        quotas::reserve(&mut client, &quotas, now).await.unwrap(),
        None
    );
    assert_eq!(
        quotas::reserve(&mut client, &quotas, now).await.unwrap(),
        None,
        "the second send of the hour fits a per_hour of 2"
    );
    assert_eq!(
        quotas::reserve(&mut client, &quotas, now).await.unwrap(),
        Some(at("2026-01-15T01:00:00Z")),
        "the third waits for the next hour"
    );
    // The day counted the two sends once each.
    let later = at("2026-01-15T05:00:00Z");
    let day_only = vec![("agent:a:sms".to_string(), Window::Day, 3)];
    assert_eq!(
        quotas::reserve(&mut client, &day_only, later)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        quotas::reserve(&mut client, &day_only, later)
            .await
            .unwrap(),
        Some(at("2026-01-16T00:00:00Z"))
    );
}

#[tokio::test]
async fn a_per_hour_limit_lets_its_full_count_through_between_00_and_01_utc() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = default_env(&server).await;
    sql(
        &env,
        r#"INSERT INTO agents (id, limits, send_window_start, send_window_end)
           VALUES ('agent-h', '{"sms": {"per_hour": 2, "per_day": 100}}', '00:00', '23:59')"#,
    )
    .await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T00:30:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    for _ in 0..3 {
        // Marketing, which the agent's own quotas pace; its window is open
        // all day so that 00:30 UTC is not a quiet hour.
        let mut j = sms_job("agent-h", "+14155550123");
        j["category"] = json!("marketing");
        publisher.publish(&j).await;
    }
    wait_until("all three sent or deferred", || async {
        (count_status(&env, "sent").await + count_status(&env, "deferred").await == 3).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(count_status(&env, "sent").await, 2, "per_hour = 2");
    assert_eq!(count_status(&env, "deferred").await, 1);
}

// ---------------------------------------------------------------------------
// Issue 18 #5: countries with several zone names but one clock (DE, MY, AR…)
// fell back to the agent's zone (UTC by default).

#[tokio::test]
async fn night_in_berlin_kuala_lumpur_and_buenos_aires_waits_for_local_morning() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = default_env(&server).await;
    // 23:30 UTC: 00:30 in Berlin (CET), 07:30 in Kuala Lumpur (+08), 20:30
    // in Buenos Aires (-03). Night everywhere, but in UTC too, so the old
    // fallback deferred all three to 09:00 UTC.
    let clock = Arc::new(ManualClock::new(at("2026-01-15T23:30:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let cases = [
        ("+4915123456789", "2026-01-16T08:00:00Z", "Europe/Berlin"),
        ("+60123456789", "2026-01-16T01:00:00Z", "Asia/Kuala_Lumpur"),
        (
            "+5491123456789",
            "2026-01-16T12:00:00Z",
            "America/Argentina/Buenos_Aires",
        ),
    ];
    let mut jobs = Vec::new();
    for (to, _, _) in cases {
        let mut job = sms_job("agent-world", to);
        job["category"] = "marketing".into();
        publisher.publish(&job).await;
        jobs.push(job_id(&job));
    }
    for id in &jobs {
        env.wait_for_status(*id, "deferred").await;
    }
    worker.stop().await;
    for (id, (to, due, zone)) in jobs.iter().zip(cases) {
        assert_eq!(due_at(&env, *id).await, Some(at(due)), "{to}");
        let events = env.event_details(*id).await;
        let deferred = &events.iter().find(|(e, _)| e == "deferred").unwrap().1;
        assert_eq!(deferred["recipient_timezone"], zone, "{to}");
        assert_eq!(deferred["timezone_source"], "phone_number", "{to}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Issue 18 #8: on a fall-back night the opening could be computed in the
// past, and a job woken by a scheduler whose clock runs ahead was parked
// again, every tick, until the clocks agreed.

#[tokio::test]
async fn a_fall_back_night_parks_until_the_later_opening_not_one_in_the_past() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = default_env(&server).await;
    // An agent whose window opens inside the hour New York lives twice.
    sql(
        &env,
        "INSERT INTO agents (id, send_window_start) VALUES ('agent-dst', '01:30')",
    )
    .await;
    // 2026-11-01 01:10 EST, the second time 01:10 comes that night; 01:30
    // EDT (05:30 UTC) is already past, 01:30 EST (06:30 UTC) is not.
    let clock = Arc::new(ManualClock::new(at("2026-11-01T06:10:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let mut job = sms_job("agent-dst", "+14155550123");
    job["category"] = "marketing".into();
    job["timezone"] = "America/New_York".into();
    env.publisher().await.publish(&job).await;
    let id = job_id(&job);
    let due = wait_until("the job parked", || async { due_at(&env, id).await }).await;
    assert_eq!(due, at("2026-11-01T06:30:00Z"));
    clock.set(due);
    env.wait_for_status(id, "sent").await;
    worker.stop().await;
    assert_eq!(count_events(&env, id, "deferred").await, 1);
}

/// A context whose scheduler is driven by hand, on its own clock.
fn scheduler_context(env: &Env, clock: Arc<dyn Clock>) -> Arc<WorkerContext> {
    WorkerContext::with_clock(env.settings(), Metrics::new(), clock).unwrap()
}

async fn scheduler_channel(env: &Env) -> (lapin::Connection, lapin::Channel) {
    let conn = switchboard::amqp::connect(&env.vhost.url, "test-scheduler")
        .await
        .unwrap();
    switchboard::amqp::declare_topology(&conn).await.unwrap();
    let channel = switchboard::amqp::confirm_channel(&conn).await.unwrap();
    (conn, channel)
}

#[tokio::test]
async fn a_job_woken_by_a_scheduler_a_few_seconds_ahead_is_sent_not_parked_again() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let env = default_env(&server).await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let mut job = sms_job("agent-skew", "+14155550123");
    job["send_at"] = "2026-01-15T16:00:00Z".into();
    env.publisher().await.publish(&job).await;
    let id = job_id(&job);
    env.wait_for_status(id, "scheduled").await;

    // The worker's clock reads 3 s before the job is due; another
    // machine's scheduler, 3 s ahead, finds it due and publishes it.
    clock.set(at("2026-01-15T15:59:57Z"));
    let ahead = scheduler_context(&env, Arc::new(ManualClock::new(at("2026-01-15T16:00:00Z"))));
    let (_conn, channel) = scheduler_channel(&env).await;
    assert_eq!(scheduler::publish_due(&ahead, &channel).await.unwrap(), 1);

    let seen = wait_until("sent, or parked again", || async {
        let scheduled = count_events(&env, id, "scheduled").await;
        let status = env.status(id).await.unwrap();
        (status == "sent" || scheduled > 1).then_some((status, scheduled))
    })
    .await;
    worker.stop().await;
    assert_eq!(seen, ("sent".to_string(), 1));
}

// ---------------------------------------------------------------------------
// Issue 10 #6: the scheduler published without `mandatory` and deleted the
// row on the confirm, so a job RabbitMQ could not route was gone.

#[tokio::test]
async fn a_due_job_that_cannot_be_routed_stays_parked() {
    let env = Env::new().await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let ctx = scheduler_context(&env, clock.clone());
    let (_conn, channel) = scheduler_channel(&env).await;
    // An operator removed the binding: nothing routes to switchboard.send.
    channel
        .queue_unbind(
            switchboard::amqp::SEND_QUEUE.into(),
            switchboard::amqp::JOBS_EXCHANGE.into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let wire = sms_job("agent-lost", "+14155550123");
    let job = switchboard::domain::SendJob::parse(wire.to_string().as_bytes()).unwrap();
    let client = env.db.client().await;
    let parking = scheduled::Parking {
        due_at: clock.now(),
        status: "scheduled",
        reason: "send_at",
        attempts: 0,
        last_error: None,
        events: &[],
    };
    scheduled::park(&client, &job, &parking).await.unwrap();

    assert_eq!(scheduler::publish_due(&ctx, &channel).await.unwrap(), 0);
    assert!(
        due_at(&env, job.id).await.is_some(),
        "a returned job keeps its row"
    );
    let publisher = env.publisher().await;
    assert_eq!(publisher.queue_depth().await, 0);

    // Bound again (every worker declares the topology on start), the job
    // goes out at a later tick.
    switchboard::amqp::declare_topology(&publisher.conn)
        .await
        .unwrap();
    clock.advance(std::time::Duration::from_secs(120));
    assert_eq!(scheduler::publish_due(&ctx, &channel).await.unwrap(), 1);
    assert_eq!(due_at(&env, job.id).await, None);
    assert_eq!(publisher.queue_depth().await, 1);
}

#[tokio::test]
async fn an_existing_jobs_exchange_of_another_type_is_refused() {
    let vhost = TestVhost::new();
    let conn = switchboard::amqp::connect(&vhost.url, "test-operator")
        .await
        .unwrap();
    // Declared by hand as a direct exchange: `#` would then be a literal
    // routing key and every job published with an agent id unroutable.
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        switchboard::amqp::JOBS_EXCHANGE.into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = switchboard::amqp::declare_topology(&conn)
        .await
        .expect_err("a direct switchboard.jobs must be refused");
    let message = err.to_string();
    assert!(
        message.contains("switchboard.jobs") && message.contains("topic"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------
// Issue 18 #3: `lock_due` had no tie-breaker, and a re-parked row was new,
// so among jobs due at one instant (a quota reset, a cool-down) a job could
// lose every wake to younger ones.

async fn park_for_quota(client: &deadpool_postgres::Client, id: uuid::Uuid, due: DateTime<Utc>) {
    let wire = json!({"id": id.to_string(), "agent_id": "agent-fair", "channel": "sms",
        "to": "+14155550123", "text": "x"});
    let job = switchboard::domain::SendJob::parse(wire.to_string().as_bytes()).unwrap();
    let parking = scheduled::Parking {
        due_at: due,
        status: "deferred",
        reason: "quota",
        attempts: 0,
        last_error: None,
        events: &[],
    };
    scheduled::park(client, &job, &parking).await.unwrap();
}

/// What the scheduler would take at `due`, in its order.
async fn take_due(client: &mut deadpool_postgres::Client, due: DateTime<Utc>) -> Vec<uuid::Uuid> {
    let tx = client.transaction().await.unwrap();
    let taken = scheduled::lock_due(&tx, due, 100).await.unwrap();
    tx.rollback().await.unwrap();
    taken.into_iter().map(|j| j.id).collect()
}

#[tokio::test]
async fn jobs_due_at_one_instant_are_taken_oldest_first_and_keep_their_age_when_parked_again() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let due = at("2026-01-16T00:00:00Z");
    // Three jobs whose messages were created an hour apart, parked to one
    // instant youngest first (the order a busy worker may well write them).
    let mut parked = Vec::new();
    for hours_old in [1, 2, 3] {
        let id = uuid::Uuid::new_v4();
        client
            .execute(
                "INSERT INTO outbound_messages (id, agent_id, channel, recipient, status, created_at)
                 VALUES ($1, 'agent-fair', 'sms', '+14155550123', 'queued',
                         now() - make_interval(hours => $2))",
                &[&id, &hours_old],
            )
            .await
            .unwrap();
        park_for_quota(&client, id, due).await;
        parked.push(id);
    }
    let oldest_first: Vec<_> = parked.iter().rev().copied().collect();
    assert_eq!(take_due(&mut client, due).await, oldest_first);

    // Woken (the scheduler deletes the rows) and parked again, youngest
    // first once more: the order is still by age.
    let tx = client.transaction().await.unwrap();
    scheduled::delete(&tx, &parked).await.unwrap();
    tx.commit().await.unwrap();
    for id in &parked {
        park_for_quota(&client, *id, due).await;
    }
    assert_eq!(take_due(&mut client, due).await, oldest_first);
}

/// Issue 18 #1 at the defaults (threshold 5, max attempts 5, prefetch 512):
/// one job against an account that keeps answering 503 spends its fifth
/// attempt on the failure that opens the circuit. It must be deferred with
/// every later job, not `failed` and dead-lettered; and however many calls
/// fail, the circuit opens once.
#[tokio::test]
async fn the_job_that_opens_the_circuit_is_deferred_not_failed_at_the_defaults() {
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({
            "code": 20503, "message": "Service Unavailable", "status": 503
        })))
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let job = sms_job("agent-cd", "+14155550123");
    publisher.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "deferred").await;
    assert_eq!(
        row.attempts, 5,
        "every attempt was spent before the circuit opened"
    );
    // Later jobs meet the open circuit without calling Twilio.
    let later: Vec<_> = (0..20)
        .map(|_| sms_job("agent-cd", "+14155550123"))
        .collect();
    for j in &later {
        publisher.publish(j).await;
    }
    for j in &later {
        env.wait_for_status(job_id(j), "deferred").await;
    }
    worker.stop().await;
    assert_eq!(requests(&server).await, 5);
    let opened = count(
        &env,
        "SELECT count(*) FROM outbound_events WHERE event = 'circuit_opened'",
    )
    .await;
    assert_eq!(opened, 1);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM outbound_messages WHERE status = 'failed'"
        )
        .await,
        0
    );
}

/// Issue 17, at the defaults: an agent capped at 2 marketing messages a day
/// per person. Two go (to two numbers of one contact); the third, to the
/// first number with the same contact id, waits for the next day in the
/// recipient's zone (New York, from the number); a transactional message
/// neither counts nor waits; a marketing job that says `"cap": "drop"` ends
/// `capped` without a provider call. At New York's midnight the parked one
/// is sent.
#[tokio::test]
async fn a_cap_of_two_a_day_defers_the_third_marketing_message_to_the_recipients_next_day() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
    sql(
        &env,
        r#"INSERT INTO agents (id, limits, send_window_start, send_window_end)
           VALUES ('agent-cap', '{"per_recipient": {"per_day": 2}}', '00:00', '23:59')"#,
    )
    .await;
    // 10:00 in New York.
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let marketing = |to: &str, extra: serde_json::Value| {
        let mut j = sms_job("agent-cap", to);
        j["category"] = json!("marketing");
        j.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        j
    };
    let first = marketing("+12125550123", json!({"contact_id": "lead-7"}));
    let second = marketing("+12125550199", json!({"contact_id": "lead-7"}));
    let third = marketing("+12125550123", json!({"contact_id": "lead-7"}));
    let dropped = marketing(
        "+12125550199",
        json!({"contact_id": "lead-7", "cap": "drop"}),
    );
    let transactional = sms_job("agent-cap", "+12125550123");
    for j in [&first, &second] {
        publisher.publish(j).await;
        env.wait_for_status(job_id(j), "sent").await;
    }
    publisher.publish(&third).await;
    env.wait_for_status(job_id(&third), "deferred").await;
    assert_eq!(
        due_at(&env, job_id(&third)).await,
        Some(at("2026-01-16T05:00:00Z")),
        "midnight in New York"
    );
    let events = env.event_details(job_id(&third)).await;
    let deferred = &events.iter().find(|(e, _)| e == "deferred").unwrap().1;
    assert_eq!(deferred["reason"], "frequency_cap");
    assert_eq!(deferred["window"], "day");
    publisher.publish(&dropped).await;
    env.wait_for_status(job_id(&dropped), "capped").await;
    publisher.publish(&transactional).await;
    env.wait_for_status(job_id(&transactional), "sent").await;
    assert_eq!(requests(&server).await, 3);

    clock.set(at("2026-01-16T05:00:01Z"));
    env.wait_for_status(job_id(&third), "sent").await;
    worker.stop().await;
    assert_eq!(requests(&server).await, 4);
    assert_eq!(env.events(job_id(&dropped)).await, vec!["queued", "capped"]);
}

/// At the defaults, ten marketing jobs to one person published at once (a
/// full prefetch works on them together): exactly the cap's two are sent,
/// because places are taken under a lock per person.
#[tokio::test]
async fn jobs_for_one_person_in_flight_together_never_pass_the_cap() {
    let server = MockServer::start().await;
    twilio_ok(&server).await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
    sql(
        &env,
        r#"INSERT INTO agents (id, limits, send_window_start, send_window_end)
           VALUES ('agent-cap2', '{"per_recipient": {"per_day": 2, "per_week": 5}}',
                   '00:00', '23:59')"#,
    )
    .await;
    let clock = Arc::new(ManualClock::new(at("2026-01-15T15:00:00Z")));
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let jobs: Vec<_> = (0..10)
        .map(|_| {
            let mut j = sms_job("agent-cap2", "+12125550123");
            j["category"] = json!("marketing");
            j
        })
        .collect();
    for j in &jobs {
        publisher.publish(j).await;
    }
    wait_until("2 sent and 8 deferred", || async {
        (count_status(&env, "sent").await == 2 && count_status(&env, "deferred").await == 8)
            .then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(requests(&server).await, 2);
}
