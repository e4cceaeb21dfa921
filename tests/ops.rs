//! Operators' commands end to end: a dead-lettered job replayed after its
//! cause is fixed is sent exactly once; `messages retry` sends a failed job
//! once and refuses a sent one. Real Postgres, real RabbitMQ, Twilio as
//! wiremock checking the request the real API takes.

mod common;

use common::*;
use serde_json::json;
use switchboard::ops::{self, RetryTarget, Selection};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID: &str = "AC00000000000000000000000000000999";
const TOKEN: &str = "platform-token";

fn platform_twilio(env: &mut Env, server: &MockServer) {
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", TOKEN)
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
}

/// Twilio accepting exactly one message from now on (the cause is fixed).
async fn twilio_accepts_once(server: &MockServer) {
    server.reset().await;
    twilio_create_message(SID, TOKEN)
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMagain", "status": "queued"})),
        )
        .expect(1)
        .mount(server)
        .await;
}

/// Twilio refusing permanently: a 400 for the number.
async fn twilio_refuses(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{SID}/Messages.json")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211, "message": "The 'To' number is not a valid phone number.",
            "status": 400
        })))
        .mount(server)
        .await;
}

/// Waits until the worker consumed `n` deliveries in all and none is left.
async fn wait_consumed(env: &Env, worker: &RunningWorker, n: u64) {
    let publisher = env.publisher().await;
    wait_until("deliveries acked", || async {
        let depth = publisher.queue_depth().await;
        (worker.ctx.metrics.jobs_consumed.get() == n
            && depth == 0
            && worker.ctx.metrics.jobs_in_flight.get() == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_dead_lettered_job_replayed_after_its_cause_is_fixed_is_sent_once() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    platform_twilio(&mut env, &server);
    // Dead-lettering needs retries exhausted, and at the default 5 attempts
    // the 5th failure of a lone job opens the account's circuit and defers
    // it instead (see pipeline.rs transient_failures_that_never_end_fail_and_
    // are_dead_lettered); 3 attempts and at-least-once for Twilio's 5xx is
    // how a job reaches switchboard.dead. Replay itself has no setting.
    // Env::new()'s short backoff only shortens the wait between the three
    // tries; what is recorded and replayed is the same at the default.
    env.set("SWITCHBOARD_MAX_ATTEMPTS", "3")
        .set("SWITCHBOARD_AT_LEAST_ONCE", "twilio");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"code": 20500})))
        .expect(3)
        .mount(&server)
        .await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let job = sms_job("agent-r", "+14155550123");
    let id = job_id(&job);
    publisher.publish(&job).await;
    env.wait_for_status(id, "failed").await;
    server.verify().await;
    wait_until("the dead letter", || async {
        (count(
            &env,
            "SELECT count(*) FROM outbound_messages WHERE dead_letter_reason IS NOT NULL",
        )
        .await
            == 0
            && publisher_dead_depth(&env).await == 1)
            .then_some(())
    })
    .await;

    // Listing leaves it where it is.
    let listed = ops::list_dead_letters(&env.settings(), 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id, Some(id));
    assert_eq!(listed[0].status.as_deref(), Some("failed"));
    assert!(
        listed[0].reason.contains("retries exhausted"),
        "{}",
        listed[0].reason
    );
    assert_eq!(publisher_dead_depth(&env).await, 1);

    // An ordinary duplicate of the failed job is acked as a duplicate.
    let consumed = worker.ctx.metrics.jobs_consumed.get();
    publisher.publish(&job).await;
    wait_consumed(&env, &worker, consumed + 1).await;
    assert_eq!(env.status(id).await.as_deref(), Some("failed"));

    twilio_accepts_once(&server).await;
    let report = ops::replay_dead_letters(&env.settings(), Selection::Ids(vec![id]))
        .await
        .unwrap();
    assert_eq!(report.sent_again, vec![id], "{report:?}");
    let row = env.wait_for_status(id, "sent").await;
    assert_eq!(row.provider_message_id.as_deref(), Some("SMagain"));
    wait_consumed(&env, &worker, consumed + 2).await;
    assert_eq!(publisher_dead_depth(&env).await, 0);

    // Replaying or publishing again once sent sends nothing more.
    publisher.publish(&job).await;
    wait_consumed(&env, &worker, consumed + 3).await;
    worker.stop().await;
    server.verify().await;
    let events = env.events(id).await;
    assert_eq!(
        events.iter().filter(|e| *e == "sent").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "retried").count(),
        1,
        "{events:?}"
    );
    let by: Vec<_> = env
        .event_details(id)
        .await
        .into_iter()
        .filter(|(e, _)| e == "retried")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(by[0]["by"], "dead-letters replay");
    assert_eq!(by[0]["previous_attempts"], 3);
}

#[tokio::test]
async fn a_dead_letter_of_a_sent_job_is_refused_and_stays() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    twilio_accepts_once(&server).await;
    let worker = env.start_worker();
    let job = sms_job("agent-s", "+14155550123");
    let id = job_id(&job);
    env.publisher().await.publish(&job).await;
    env.wait_for_status(id, "sent").await;
    worker.stop().await;
    // A copy of the sent job in switchboard.dead (as a worker that lost its
    // database mid-outcome would leave one).
    let conn = switchboard::amqp::connect(&env.vhost.url, "test")
        .await
        .unwrap();
    let ch = switchboard::amqp::confirm_channel(&conn).await.unwrap();
    switchboard::amqp::dead_letter(
        &ch,
        job.to_string().as_bytes(),
        &switchboard::amqp::job_properties(id),
        "database refused a write",
    )
    .await
    .unwrap();

    let report = ops::replay_dead_letters(&env.settings(), Selection::All)
        .await
        .unwrap();
    assert!(report.sent_again.is_empty(), "{report:?}");
    assert!(
        report.refused[0].1.contains("the job is sent"),
        "{report:?}"
    );
    assert_eq!(publisher_dead_depth(&env).await, 1);
    assert_eq!(env.status(id).await.as_deref(), Some("sent"));
    server.verify().await;
}

#[tokio::test]
async fn retry_of_a_failed_job_sends_it_once_and_retry_of_a_sent_job_is_refused() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    twilio_refuses(&server).await;
    let worker = env.start_worker();
    let job = sms_job("agent-t", "+14155550123");
    let id = job_id(&job);
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(id, "failed").await;
    assert_eq!(row.attempts, 1);

    twilio_accepts_once(&server).await;
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let report = ops::retry_messages(
        &env.settings(),
        RetryTarget::Failed {
            agent: "agent-t".into(),
            since,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.sent_again, vec![id], "{report:?}");
    env.wait_for_status(id, "sent").await;

    // Sent: a retry is refused and publishes nothing.
    let report = ops::retry_messages(&env.settings(), RetryTarget::Ids(vec![id]))
        .await
        .unwrap();
    assert!(report.sent_again.is_empty());
    assert!(
        report.refused[0].1.contains("the job is sent"),
        "{report:?}"
    );
    wait_consumed(&env, &worker, 2).await;
    worker.stop().await;
    server.verify().await;
    assert_eq!(
        env.events(id).await,
        vec!["queued", "failed", "retried", "sent"]
    );
}

async fn publisher_dead_depth(env: &Env) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let conn = switchboard::amqp::connect(&env.vhost.url, "test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let depth = ch
        .queue_declare(
            switchboard::amqp::DEAD_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count();
    let _ = conn.close(200, "".into()).await;
    depth
}
