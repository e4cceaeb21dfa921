//! The README's delivery guarantees, each tested with switchboard's default
//! settings (`Env::with_defaults`): no duplicate from our own retries, no
//! poisoned batch, no id taken over by another tenant, no hostile input that
//! stalls the worker, nothing abandoned on shutdown. Each test failed on the
//! code before the fix it names (issue 10).

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID_PLATFORM: &str = "AC00000000000000000000000000000999";
const SID_A: &str = "AC0000000000000000000000000000000a";
const SID_B: &str = "AC0000000000000000000000000000000b";

fn twilio_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{sid}/Messages.json")
}

fn platform_twilio(env: &mut Env, server: &MockServer) {
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID_PLATFORM)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
}

/// Twilio's CreateMessage for one account, checking its auth and encoding.
fn twilio_ok(sid: &str, token: &str, message_sid: &str) -> Mock {
    Mock::given(method("POST"))
        .and(path(twilio_path(sid)))
        .and(header("authorization", basic_auth(sid, token).as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sid": message_sid, "status": "queued", "account_sid": sid
        })))
}

async fn requests_to(server: &MockServer, p: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == p)
        .count()
}

async fn count(env: &Env, sql: &str, id: uuid::Uuid) -> i64 {
    env.db
        .client()
        .await
        .query_one(sql, &[&id])
        .await
        .unwrap()
        .get(0)
}

// ---- 1. our own retries never send twice ----------------------------------

#[tokio::test]
async fn a_twilio_5xx_is_not_resent_and_the_message_is_recorded_unknown() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    // A gateway error after Twilio may have queued the message: Twilio takes
    // no idempotency key, so a second POST could be a second SMS.
    Mock::given(method("POST"))
        .and(path(twilio_path(SID_PLATFORM)))
        .respond_with(ResponseTemplate::new(502).set_body_string("Bad Gateway"))
        .mount(&server)
        .await;
    let worker = env.start_worker();
    let job = sms_job("agent-u", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "unknown").await;
    // Redelivery cannot resend it either: `unknown` is an outcome.
    env.publisher().await.publish(&job).await;
    wait_until("the repeat to be acked", || async {
        (env.publisher().await.queue_depth().await == 0).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(requests_to(&server, &twilio_path(SID_PLATFORM)).await, 1);
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .contains("outcome unknown"),
        "{:?}",
        row.last_error
    );
    let events = env.event_details(job_id(&job)).await;
    let unknown = events.iter().find(|(e, _)| e == "unknown").expect("event");
    assert_eq!(unknown.1["http_status"], 502);
    assert_eq!(unknown.1["maybe_sent"], true);
}

#[tokio::test]
async fn resend_5xx_is_retried_with_the_same_idempotency_key() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri())
        .set("RESEND_API_KEY", "re_platform_key")
        .set("EMAIL_FROM", "Realty <noreply@realty.test>");
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(500).set_body_json(
            json!({"statusCode": 500, "name": "internal_server_error", "message": "oops"}),
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    // Resend's answer to a retry overtaking the first try.
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({
            "statusCode": 409, "name": "concurrent_idempotent_requests",
            "message": "Same idempotency key used while original request is still in progress"
        })))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(header("authorization", "Bearer re_platform_key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "re-1"})))
        .with_priority(3)
        .mount(&server)
        .await;
    let worker = env.start_worker();
    let job = email_job("agent-r", "buyer@example.com");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(row.attempts, 3);
    let keys: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec![job_id(&job).to_string(); 3]);
}

// ---- 2. one bad row never poisons a batch ---------------------------------

#[tokio::test]
async fn a_job_with_a_nul_is_rejected_alone_and_its_batch_is_sent() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    twilio_ok(SID_PLATFORM, "platform-token", "SMok")
        .mount(&server)
        .await;
    let publisher = env.publisher().await;
    // Published before the worker starts, so they arrive together and share
    // write batches.
    let good: Vec<_> = (0..40)
        .map(|i| sms_job(&format!("agent-{i}"), "+14155550123"))
        .collect();
    let mut bad = sms_job("agent-nul", "+14155550123");
    bad["text"] = json!("hello\u{0}world");
    for job in good.iter().take(20) {
        publisher.publish(job).await;
    }
    publisher.publish(&bad).await;
    for job in good.iter().skip(20) {
        publisher.publish(job).await;
    }
    let worker = env.start_worker();
    for job in &good {
        env.wait_for_status(job_id(job), "sent").await;
    }
    env.wait_for_status(job_id(&bad), "rejected").await;
    let dead = publisher.take_dead_letters(1).await;
    assert!(dead[0].1.contains("NUL"), "{}", dead[0].1);
    worker.stop().await;
    assert_eq!(requests_to(&server, &twilio_path(SID_PLATFORM)).await, 40);
}

#[tokio::test]
async fn an_integration_disconnected_while_its_message_is_at_the_provider_still_records_sent() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    Mock::given(method("POST"))
        .and(path(twilio_path(SID_A)))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMslow", "status": "queued"}))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let integration = env
        .connect_integration(
            "agent-d",
            "sms",
            "twilio",
            json!({"account_sid": SID_A, "auth_token": "tok-a", "phone_number": "+14155550100"}),
        )
        .await;
    let worker = env.start_worker();
    let job = sms_job("agent-d", "+14155550123");
    env.publisher().await.publish(&job).await;
    wait_until("Twilio to get the request", || async {
        (requests_to(&server, &twilio_path(SID_A)).await == 1).then_some(())
    })
    .await;
    env.db
        .client()
        .await
        .execute("DELETE FROM integrations WHERE id = $1", &[&integration])
        .await
        .unwrap();
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(row.provider_message_id.as_deref(), Some("SMslow"));
    assert_eq!(
        row.integration_id, None,
        "the link to the deleted row is dropped"
    );
    assert_eq!(row.route.as_deref(), Some("agent"));
}

// ---- 9. a job id is one job -----------------------------------------------

#[tokio::test]
async fn an_id_reused_by_another_agent_is_refused_and_the_first_job_is_kept() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    twilio_ok(SID_A, "tok-a", "SMa").mount(&server).await;
    twilio_ok(SID_B, "tok-b", "SMb").mount(&server).await;
    for (agent, sid, token) in [("agent-a", SID_A, "tok-a"), ("agent-b", SID_B, "tok-b")] {
        env.connect_integration(
            agent,
            "sms",
            "twilio",
            json!({"account_sid": sid, "auth_token": token, "phone_number": "+14155550100"}),
        )
        .await;
    }
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let mut a = sms_job("agent-a", "+14155550123");
    a["send_at"] = json!((chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339());
    publisher.publish(&a).await;
    env.wait_for_status(job_id(&a), "scheduled").await;

    let mut b = sms_job("agent-b", "+14155550199");
    b["id"] = a["id"].clone();
    b["text"] = json!("Agent B's message");
    publisher.publish(&b).await;
    let dead = publisher.take_dead_letters(1).await;
    assert!(dead[0].1.contains("already used"), "{}", dead[0].1);

    let row = env.wait_for_status(job_id(&a), "sent").await;
    worker.stop().await;
    assert_eq!(row.agent_id.as_deref(), Some("agent-a"));
    assert_eq!(row.provider_message_id.as_deref(), Some("SMa"));
    assert_eq!(requests_to(&server, &twilio_path(SID_A)).await, 1);
    assert_eq!(requests_to(&server, &twilio_path(SID_B)).await, 0);
}

#[tokio::test]
async fn the_same_id_with_other_content_from_the_same_agent_is_refused() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    twilio_ok(SID_PLATFORM, "platform-token", "SM1")
        .mount(&server)
        .await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let first = sms_job("agent-c", "+14155550123");
    publisher.publish(&first).await;
    env.wait_for_status(job_id(&first), "sent").await;
    let mut second = first.clone();
    second["text"] = json!("a different message");
    publisher.publish(&second).await;
    let dead = publisher.take_dead_letters(1).await;
    assert!(dead[0].1.contains("already used"), "{}", dead[0].1);
    // The identical job again is a plain duplicate: acked, nothing sent.
    publisher.publish(&first).await;
    wait_until("the duplicate to be acked", || async {
        (publisher.queue_depth().await == 0).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(requests_to(&server, &twilio_path(SID_PLATFORM)).await, 1);
}

// ---- 10. simulation never poses as an agent's account ---------------------

#[tokio::test]
async fn a_simulation_integration_sends_nothing_while_simulation_is_off() {
    let env = Env::with_defaults().await;
    env.connect_integration("agent-s", "sms", "simulation", json!({}))
        .await;
    let worker = env.start_worker();
    let job = sms_job("agent-s", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "failed").await;
    worker.stop().await;
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .starts_with("simulation_off"),
        "{:?}",
        row.last_error
    );
    assert_eq!(row.route, None);
}

// ---- 13. a display name does not hide an opted-out address ----------------

#[tokio::test]
async fn a_display_name_recipient_is_suppressed_by_the_bare_addresss_opt_out() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri())
        .set("RESEND_API_KEY", "re_platform_key")
        .set("EMAIL_FROM", "noreply@realty.test");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "x"})))
        .expect(0)
        .mount(&server)
        .await;
    env.db
        .client()
        .await
        .execute(
            "INSERT INTO opt_outs (agent_id, channel, address, reason, source)
             VALUES (NULL, 'email', 'bob@example.com', 'complaint', 'test')",
            &[],
        )
        .await
        .unwrap();
    let worker = env.start_worker();
    let job = email_job("agent-n", "Bob <Bob@Example.com>");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "suppressed").await;
    worker.stop().await;
    assert_eq!(row.recipient.as_deref(), Some("bob@example.com"));
    server.verify().await;
}

// ---- 12. an oversized job is refused once and harms nothing ---------------

#[tokio::test]
async fn an_oversized_field_is_dead_lettered_once_and_the_connection_survives() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    twilio_ok(SID_PLATFORM, "platform-token", "SMafter")
        .mount(&server)
        .await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let mut huge = sms_job("agent-h", "+14155550123");
    huge["timezone"] = json!("x".repeat(140 * 1024));
    publisher.publish(&huge).await;
    let dead = publisher.take_dead_letters(1).await;
    assert!(
        dead[0].1.len() < 1024,
        "reason is {} bytes",
        dead[0].1.len()
    );
    let after = sms_job("agent-h", "+14155550123");
    publisher.publish(&after).await;
    env.wait_for_status(job_id(&after), "sent").await;
    let rejected = count(
        &env,
        "SELECT count(*) FROM outbound_events WHERE message_id = $1 AND event = 'rejected'",
        job_id(&huge),
    )
    .await;
    assert_eq!(rejected, 1, "rejected once, not in a loop");
    assert_eq!(
        worker.ctx.metrics.amqp_connects.get(),
        1,
        "the consumer's connection was never lost"
    );
    worker.stop().await;
}

// ---- 5. a dead letter whose publish failed is still owed -------------------

#[tokio::test]
async fn a_redelivered_job_that_still_owes_its_dead_letter_is_dead_lettered_again() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri())
        .set("RESEND_API_KEY", "re_platform_key")
        .set("EMAIL_FROM", "noreply@realty.test")
        // Why not the default 5: this test needs a job that ends `failed`
        // with a dead letter, and at the defaults one job against a down
        // account cannot get there: its 5th failure is also the breaker's
        // 5th (threshold 5), so it is deferred instead (tested at the
        // defaults in tests/policy.rs,
        // `the_job_that_opens_the_circuit_is_deferred_not_failed_at_the_defaults`).
        // What is tested here, the debt on the row and the redelivered copy,
        // does not depend on how many attempts came before it.
        .set("SWITCHBOARD_MAX_ATTEMPTS", "2");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(
            json!({"statusCode": 503, "name": "service_unavailable", "message": "down"}),
        ))
        .mount(&server)
        .await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let job = email_job("agent-dl", "buyer@example.com");
    publisher.publish(&job).await;
    env.wait_for_status(job_id(&job), "failed").await;
    publisher.take_dead_letters(1).await;
    wait_until("the debt to be cleared", || async {
        let owed = count(
            &env,
            "SELECT count(*) FROM outbound_messages WHERE id = $1 AND dead_letter_reason IS NOT NULL",
            job_id(&job),
        )
        .await;
        (owed == 0).then_some(())
    })
    .await;
    // As if the dead-letter publish had failed: the row still owes it, and
    // the job comes back.
    env.db
        .client()
        .await
        .execute(
            "UPDATE outbound_messages SET dead_letter_reason = 'retries exhausted' WHERE id = $1",
            &[&job_id(&job)],
        )
        .await
        .unwrap();
    publisher.publish(&job).await;
    let dead = publisher.take_dead_letters(1).await;
    assert_eq!(dead[0].1, "retries exhausted");
    worker.stop().await;
    assert_eq!(
        requests_to(&server, "/emails").await,
        2,
        "no new provider call"
    );
}

// ---- 4. a job that kills its workers is not tried forever ------------------

#[tokio::test]
async fn deliveries_that_end_without_an_outcome_count_as_attempts() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    twilio_ok(SID_PLATFORM, "platform-token", "SMx")
        .expect(0)
        .mount(&server)
        .await;
    let job = sms_job("agent-p", "+14155550123");
    // Five deliveries each claimed the job and died (a lease that lapsed at
    // once stands in for the crash).
    let parsed = switchboard::domain::SendJob::parse(job.to_string().as_bytes()).unwrap();
    let client = env.db.client().await;
    let row = switchboard::store::messages::ClaimRow::new(&parsed);
    for _ in 0..5 {
        let claims = switchboard::store::messages::claim_many(
            &client,
            std::slice::from_ref(&row),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert!(matches!(
            claims[0],
            switchboard::store::messages::Claim::Owned(_)
        ));
    }
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    publisher.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "failed").await;
    let dead = publisher.take_dead_letters(1).await;
    worker.stop().await;
    assert!(dead[0].1.contains("gave up"), "{}", dead[0].1);
    assert!(row.attempts >= 5, "{}", row.attempts);
    server.verify().await;
}

// ---- 3. SIGTERM lets an accepted send be recorded --------------------------

#[tokio::test]
async fn shutdown_during_a_database_blip_still_records_an_accepted_send() {
    let server = MockServer::start().await;
    let pg = Proxy::start("127.0.0.1:5432").await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    Mock::given(method("POST"))
        .and(path(twilio_path(SID_PLATFORM)))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMterm", "status": "queued"}))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let via_proxy = env.db.url_via(pg.port);
    env.set("DATABASE_URL", via_proxy);
    let worker = env.start_worker();
    let job = sms_job("agent-t", "+14155550123");
    env.publisher().await.publish(&job).await;
    wait_until("Twilio to get the request", || async {
        (requests_to(&server, &twilio_path(SID_PLATFORM)).await == 1).then_some(())
    })
    .await;
    // Postgres goes away while Twilio is taking the message, and SIGTERM
    // arrives; Postgres is back well within the default 30 s grace.
    pg.cut();
    worker.token.cancel();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.restore();
    worker.stop().await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    assert_eq!(row.provider_message_id.as_deref(), Some("SMterm"));
    assert_eq!(
        env.publisher().await.queue_depth().await,
        0,
        "acked, not left for a resend"
    );
}

// ---- issue 11: a live owner is never overtaken -----------------------------

/// Worker A's broker connection is cut while its provider takes 14 s (as
/// long as the default 15 s provider timeout allows; no timer in the
/// takeover rule, so any length gives the same result); RabbitMQ redelivers
/// the job to worker B, which must see that A is alive (A's advisory lock is
/// held) and leave the job to it. Exactly one provider call.
#[tokio::test]
async fn a_live_worker_with_a_slow_provider_is_not_overtaken() {
    let server = MockServer::start().await;
    let amqp = Proxy::start("127.0.0.1:5672").await;
    let mut env = Env::with_defaults().await;
    platform_twilio(&mut env, &server);
    Mock::given(method("POST"))
        .and(path(twilio_path(SID_PLATFORM)))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMslow", "status": "queued"}))
                .set_delay(Duration::from_secs(14)),
        )
        .mount(&server)
        .await;
    let direct = env.vars["AMQP_URL"].clone();
    env.set("AMQP_URL", env.vhost.url_via(amqp.port));
    let a = env.start_worker();
    env.set("AMQP_URL", direct);
    let job = sms_job("agent-slow", "+14155550123");
    env.publisher().await.publish(&job).await;
    wait_until("A's request to reach Twilio", || async {
        (requests_to(&server, &twilio_path(SID_PLATFORM)).await == 1).then_some(())
    })
    .await;
    // A loses RabbitMQ (and stays cut off): the job goes back to the queue.
    amqp.cut();
    let b = env.start_worker();
    let row = env.wait_for_status(job_id(&job), "sent").await;
    wait_until("B to take and settle the redelivered copy", || async {
        (b.ctx.metrics.jobs_consumed.get() == 1 && b.ctx.metrics.jobs_in_flight.get() == 0)
            .then_some(())
    })
    .await;
    assert_eq!(env.publisher().await.queue_depth().await, 0);
    b.stop().await;
    a.stop().await;
    assert_eq!(row.provider_message_id.as_deref(), Some("SMslow"));
    assert_eq!(requests_to(&server, &twilio_path(SID_PLATFORM)).await, 1);
}
