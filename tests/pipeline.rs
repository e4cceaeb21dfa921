//! End to end, in process: a job published to RabbitMQ reaches a mock
//! provider in exactly the format the real API takes, and its outcome is
//! recorded in Postgres. Real Postgres, real RabbitMQ, a database and a vhost
//! per test.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::integrations;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID_A: &str = "AC0000000000000000000000000000000a";
const SID_B: &str = "AC0000000000000000000000000000000b";
const SID_PLATFORM: &str = "AC00000000000000000000000000000999";

fn twilio_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{sid}/Messages.json")
}

/// Twilio answering CreateMessage for one account, checking its auth.
async fn mount_twilio(server: &MockServer, sid: &str, token: &str, message_sid: &str) {
    Mock::given(method("POST"))
        .and(path(twilio_path(sid)))
        .and(header("authorization", basic_auth(sid, token).as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sid": message_sid, "status": "queued", "num_segments": "1",
            "account_sid": sid, "to": "+14155550123"
        })))
        .mount(server)
        .await;
}

async fn connect(
    env: &Env,
    agent: &str,
    channel: &str,
    provider: &str,
    settings: serde_json::Value,
) -> uuid::Uuid {
    env.connect_integration(agent, channel, provider, settings)
        .await
}

/// Every request Twilio received, checked against the official spec, as
/// form pairs.
async fn twilio_requests(server: &MockServer) -> Vec<(String, Vec<(String, String)>)> {
    let spec = spec("twilio_api_v2010.json");
    let schema = request_schema(
        &spec,
        "/2010-04-01/Accounts/{AccountSid}/Messages.json",
        "post",
        "application/x-www-form-urlencoded",
    );
    let mut out = Vec::new();
    for r in server.received_requests().await.unwrap() {
        let pairs = form_pairs(&r.body);
        let names: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
        assert_fields_match_schema(&schema, &names);
        assert_valid_against_spec(&spec, &schema, &twilio_form_as_json(&pairs));
        // What the spec cannot say: a sender and some content are required.
        assert!(
            names
                .iter()
                .any(|n| n == "From" || n == "MessagingServiceSid"),
            "no sender: {names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n == "Body" || n == "MediaUrl" || n == "ContentSid"),
            "no content: {names:?}"
        );
        out.push((r.url.path().to_string(), pairs));
    }
    out
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn platform_twilio(env: &mut Env, server: &MockServer) {
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID_PLATFORM)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
}

#[tokio::test]
async fn an_agents_own_integration_wins_over_the_platform_account() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    platform_twilio(&mut env, &server);
    env.set("SWITCHBOARD_PUBLIC_URL", "https://hooks.example.test");
    mount_twilio(&server, SID_A, "token-a", "SMaaaa").await;
    let integration = connect(
        &env,
        "agent-a",
        "sms",
        "twilio",
        json!({"account_sid": SID_A, "auth_token": "token-a", "phone_number": "+14155550100"}),
    )
    .await;

    let worker = env.start_worker();
    let job = sms_job("agent-a", "+1 (415) 555-0123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;

    assert_eq!(row.route.as_deref(), Some("agent"));
    assert_eq!(row.provider.as_deref(), Some("twilio"));
    assert_eq!(row.integration_id, Some(integration));
    assert_eq!(row.provider_message_id.as_deref(), Some("SMaaaa"));
    assert_eq!(row.attempts, 1);
    assert_eq!(row.recipient.as_deref(), Some("+14155550123"));
    let requests = twilio_requests(&server).await;
    assert_eq!(requests.len(), 1);
    let (p, form) = &requests[0];
    assert_eq!(p, &twilio_path(SID_A));
    assert_eq!(field(form, "To"), Some("+14155550123"));
    assert_eq!(field(form, "From"), Some("+14155550100"));
    assert_eq!(field(form, "Body"), Some("Open house on Saturday at 10am"));
    assert_eq!(
        field(form, "StatusCallback"),
        Some(format!("https://hooks.example.test/webhooks/twilio/{integration}").as_str())
    );
    assert_eq!(env.events(job_id(&job)).await, vec!["queued", "sent"]);
}

#[tokio::test]
async fn without_an_integration_the_platform_account_is_used() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    platform_twilio(&mut env, &server);
    mount_twilio(&server, SID_PLATFORM, "platform-token", "SMplat").await;
    // Another agent's integration must not be used for this agent, and a
    // disabled integration must not be used at all.
    connect(
        &env,
        "someone-else",
        "sms",
        "twilio",
        json!({"account_sid": SID_A, "auth_token": "t", "phone_number": "+14155550100"}),
    )
    .await;
    connect(
        &env,
        "agent-p",
        "sms",
        "twilio",
        json!({"account_sid": SID_B, "auth_token": "t", "phone_number": "+14155550100"}),
    )
    .await;
    let pool = switchboard::store::pool(&env.db.url, 1).unwrap();
    integrations::set_active(&pool, "agent-p", "sms".parse().unwrap(), false)
        .await
        .unwrap();

    let worker = env.start_worker();
    let job = sms_job("agent-p", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;

    assert_eq!(row.route.as_deref(), Some("platform"));
    assert_eq!(row.integration_id, None);
    assert_eq!(row.provider_message_id.as_deref(), Some("SMplat"));
    let requests = twilio_requests(&server).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].0, twilio_path(SID_PLATFORM));
    assert_eq!(field(&requests[0].1, "From"), Some("+14155550000"));
}

#[tokio::test]
async fn without_any_account_the_simulation_sends_when_enabled() {
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_SIMULATE", "true");
    let worker = env.start_worker();
    let job = email_job("agent-s", "Buyer@Example.com");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(row.route.as_deref(), Some("simulation"));
    assert_eq!(row.provider.as_deref(), Some("simulation"));
    assert_eq!(row.recipient.as_deref(), Some("buyer@example.com"));
    assert_eq!(
        row.provider_message_id,
        Some(format!("sim-{}", job_id(&job)))
    );
}

#[tokio::test]
async fn without_any_account_and_no_simulation_the_job_fails_with_no_provider() {
    let env = Env::new().await;
    let worker = env.start_worker();
    let job = email_job("agent-n", "buyer@example.com");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "failed").await;
    worker.stop().await;
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .starts_with("no_provider"),
        "{:?}",
        row.last_error
    );
    assert_eq!(row.route, None);
    assert_eq!(row.attempts, 0);
    assert_eq!(env.events(job_id(&job)).await, vec!["queued", "failed"]);
}

#[tokio::test]
async fn two_agents_each_send_with_their_own_twilio_account() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    mount_twilio(&server, SID_A, "token-a", "SMa").await;
    mount_twilio(&server, SID_B, "token-b", "SMb").await;
    connect(
        &env,
        "agent-a",
        "sms",
        "twilio",
        json!({"account_sid": SID_A, "auth_token": "token-a", "phone_number": "+14155550101"}),
    )
    .await;
    connect(&env, "agent-b", "sms", "twilio", json!({"account_sid": SID_B, "auth_token": "token-b", "messaging_service_sid": "MG0000000000000000000000000000000b"})).await;

    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let mut jobs = Vec::new();
    for i in 0..10 {
        let agent = if i % 2 == 0 { "agent-a" } else { "agent-b" };
        let job = sms_job(agent, "+14155550123");
        publisher.publish(&job).await;
        jobs.push((agent, job));
    }
    for (agent, job) in &jobs {
        let row = env.wait_for_status(job_id(job), "sent").await;
        let expected = if *agent == "agent-a" { "SMa" } else { "SMb" };
        assert_eq!(
            row.provider_message_id.as_deref(),
            Some(expected),
            "{agent}"
        );
    }
    worker.stop().await;

    let requests = twilio_requests(&server).await;
    assert_eq!(requests.len(), 10, "each job sent exactly once");
    for (p, form) in &requests {
        if p == &twilio_path(SID_A) {
            assert_eq!(field(form, "From"), Some("+14155550101"));
        } else {
            assert_eq!(p, &twilio_path(SID_B));
            assert_eq!(
                field(form, "MessagingServiceSid"),
                Some("MG0000000000000000000000000000000b")
            );
            assert_eq!(field(form, "From"), None);
        }
    }
}

#[tokio::test]
async fn the_same_job_id_published_twice_is_sent_once() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    platform_twilio(&mut env, &server);
    Mock::given(method("POST"))
        .and(path(twilio_path(SID_PLATFORM)))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMonce", "status": "queued"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let publisher = env.publisher().await;
    let job = sms_job("agent-d", "+14155550123");
    // Both copies are in the queue before the worker starts, so they may be
    // processed at the same time.
    publisher.publish(&job).await;
    publisher.publish(&job).await;
    let worker = env.start_worker();
    env.wait_for_status(job_id(&job), "sent").await;
    wait_until("both deliveries acked", || async {
        let depth = publisher.queue_depth().await;
        (worker.ctx.metrics.jobs_consumed.get() == 2
            && depth == 0
            && worker.ctx.metrics.jobs_in_flight.get() == 0)
            .then_some(())
    })
    .await;
    worker.stop().await;
    let events = env.events(job_id(&job)).await;
    assert_eq!(
        events.iter().filter(|e| *e == "sent").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "queued").count(),
        1,
        "{events:?}"
    );
    server.verify().await;
}

#[tokio::test]
async fn malformed_jobs_are_dead_lettered_with_their_reasons_and_recorded() {
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_SIMULATE", "true");
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    publisher.publish_raw("agent-x", b"{this is not json").await;
    let mut missing_to = sms_job("agent-x", "+14155550123");
    missing_to.as_object_mut().unwrap().remove("to");
    publisher.publish(&missing_to).await;
    let mut bad_channel = sms_job("agent-x", "+14155550123");
    bad_channel["channel"] = "fax".into();
    publisher.publish(&bad_channel).await;
    // A good job after the bad ones still goes through: no crash, no stall.
    let good = sms_job("agent-x", "+14155550123");
    publisher.publish(&good).await;

    let mut dead = publisher.take_dead_letters(3).await;
    dead.sort_by(|a, b| a.1.cmp(&b.1));
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("missing required field `to`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("must be one of email, sms, whatsapp, voice")),
        "{reasons:?}"
    );
    // The original body is kept.
    assert!(dead.iter().any(|(body, _)| body == b"{this is not json"));

    let row = env.wait_for_status(job_id(&missing_to), "rejected").await;
    assert!(
        row.last_error
            .unwrap()
            .contains("missing required field `to`")
    );
    assert_eq!(row.agent_id.as_deref(), Some("agent-x"));
    env.wait_for_status(job_id(&bad_channel), "rejected").await;
    assert_eq!(env.events(job_id(&missing_to)).await, vec!["rejected"]);
    env.wait_for_status(job_id(&good), "sent").await;
    worker.stop().await;
}

#[tokio::test]
async fn a_429_then_success_is_sent_with_two_attempts_recorded() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    platform_twilio(&mut env, &server);
    // Twilio's "too many concurrent requests": documented as never
    // processed, so safe to retry (a 5xx is not: see tests/guarantees.rs).
    Mock::given(method("POST"))
        .and(path(twilio_path(SID_PLATFORM)))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({
            "code": 20429, "message": "Too Many Requests", "status": 429
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_twilio(&server, SID_PLATFORM, "platform-token", "SMretry").await;

    let worker = env.start_worker();
    let job = sms_job("agent-r", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(row.attempts, 2);
    assert_eq!(row.provider_message_id.as_deref(), Some("SMretry"));
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "attempt_failed", "sent"]
    );
    assert_eq!(twilio_requests(&server).await.len(), 2);
}

#[tokio::test]
async fn a_permanent_400_fails_after_one_attempt_with_the_providers_code() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    platform_twilio(&mut env, &server);
    Mock::given(method("POST"))
        .and(path(twilio_path(SID_PLATFORM)))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211, "message": "The 'To' number +14155550123 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400
        })))
        .expect(1)
        .mount(&server)
        .await;

    let worker = env.start_worker();
    let job = sms_job("agent-f", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "failed").await;
    worker.stop().await;
    assert_eq!(row.attempts, 1);
    let err = row.last_error.unwrap();
    assert!(
        err.contains("21211") && err.contains("not a valid phone number"),
        "{err}"
    );
    assert!(!err.contains("platform-token"));
    server.verify().await;
}

#[tokio::test]
async fn transient_failures_that_never_end_fail_and_are_dead_lettered() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    platform_twilio(&mut env, &server);
    // A 5xx from Twilio may have sent the message; only an operator's
    // at-least-once choice makes switchboard retry it. Not the default 5
    // attempts: at the defaults the 5th failure of a lone job also opens the
    // account's circuit (threshold 5) and defers it, so "retries exhausted"
    // needs fewer attempts than the threshold; that is what this setting
    // does, and the count it asserts follows from it. (The test env's short
    // backoff only makes it quicker: retries are counted, not timed.)
    env.set("SWITCHBOARD_MAX_ATTEMPTS", "3")
        .set("SWITCHBOARD_AT_LEAST_ONCE", "twilio");
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"code": 20500, "message": "Internal Server Error"})),
        )
        .expect(3)
        .mount(&server)
        .await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let job = sms_job("agent-e", "+14155550123");
    publisher.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "failed").await;
    assert_eq!(row.attempts, 3);
    let dead = publisher.take_dead_letters(1).await;
    assert!(
        dead[0].1.contains("retries exhausted after 3 attempts"),
        "{}",
        dead[0].1
    );
    worker.stop().await;
    server.verify().await;
}

#[tokio::test]
async fn resend_gets_its_exact_request_format_and_the_job_id_as_idempotency_key() {
    let server = MockServer::start().await;
    // Default settings: a test env's short retry ceiling would cap the
    // provider's Retry-After and hide whether it is honoured.
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri());
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    // First a 429 with Retry-After: 2, then success: the retry waits 2 s.
    let seen = arrivals.clone();
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(move |_: &wiremock::Request| {
            seen.lock().unwrap().push(std::time::Instant::now());
            ResponseTemplate::new(429)
                .insert_header("retry-after", "2")
                .set_body_json(json!({"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests"}))
        })
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let seen = arrivals.clone();
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(header("authorization", "Bearer re_agent_key_123456"))
        .and(header("content-type", "application/json"))
        .respond_with(move |_: &wiremock::Request| {
            seen.lock().unwrap().push(std::time::Instant::now());
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}))
        })
        .mount(&server)
        .await;
    connect(
        &env,
        "agent-e",
        "email",
        "resend",
        json!({"api_key": "re_agent_key_123456", "from_email": "jane@realty.test", "from_name": "Jane Realty"}),
    )
    .await;
    let worker = env.start_worker();
    let mut job = email_job("agent-e", "buyer@example.com");
    job["reply_to"] = "office@realty.test".into();
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(
        row.provider_message_id.as_deref(),
        Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794")
    );
    assert_eq!(row.attempts, 2);
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_secs(2),
        "the retry came {:?} after the 429 asked for 2 s",
        arrivals[1] - arrivals[0]
    );

    let spec = spec("resend.json");
    let schema = request_schema(&spec, "/emails", "post", "application/json");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        let key = r.headers.get("idempotency-key").unwrap().to_str().unwrap();
        assert_eq!(
            key,
            job_id(&job).to_string(),
            "both attempts carry the same key"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_valid_against_spec(&spec, &schema, &body);
        assert_eq!(body["from"], "\"Jane Realty\" <jane@realty.test>");
        assert_eq!(body["to"], json!(["buyer@example.com"]));
        assert_eq!(body["subject"], "New listing near you");
        assert_eq!(body["html"], "<p>3 bed, 2 bath</p>");
        assert_eq!(body["text"], "3 bed, 2 bath");
        assert_eq!(body["reply_to"], "office@realty.test");
        let tags = body["tags"].as_array().unwrap();
        assert!(
            tags.contains(&json!({"name": "listing", "value": "L-77"})),
            "{tags:?}"
        );
    }
}

/// A mock provider that answers only once `n` requests are waiting at the
/// same time. A worker that sent one job at a time would never get an answer
/// and the test would time out; no clock is involved.
async fn barrier_provider(n: usize) -> (String, Arc<AtomicUsize>) {
    use axum::routing::post;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{sid}/Messages.json",
        post(move || {
            let barrier = barrier.clone();
            let served = s.clone();
            async move {
                barrier.wait().await;
                let i = served.fetch_add(1, Ordering::SeqCst);
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(json!({"sid": format!("SMc{i}"), "status": "queued"})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, served)
}

#[tokio::test]
async fn many_sends_are_in_flight_at_once() {
    const IN_FLIGHT: usize = 100;
    let (url, served) = barrier_provider(IN_FLIGHT).await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", url)
        .set("TWILIO_ACCOUNT_SID", SID_PLATFORM)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000")
        .set("SWITCHBOARD_PREFETCH", "256")
        .set("SWITCHBOARD_DB_POOL_SIZE", "16")
        .set("SWITCHBOARD_PROVIDER_TIMEOUT_MS", "120000");
    let publisher = env.publisher().await;
    let mut ids = Vec::new();
    for i in 0..IN_FLIGHT * 2 {
        let job = sms_job(&format!("agent-{}", i % 7), "+14155550123");
        ids.push(job_id(&job));
        publisher.publish(&job).await;
    }
    let worker = env.start_worker();
    let client = env.db.client().await;
    wait_until("every job sent", || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM outbound_messages WHERE status = 'sent'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n as usize == ids.len()).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(served.load(Ordering::SeqCst), IN_FLIGHT * 2);
}

#[tokio::test]
async fn whatsapp_through_twilio_uses_whatsapp_addresses_and_content_templates() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    mount_twilio(&server, SID_A, "token-a", "SMwa").await;
    connect(
        &env,
        "agent-w",
        "whatsapp",
        "twilio",
        json!({"account_sid": SID_A, "auth_token": "token-a", "whatsapp_number": "+14155550100"}),
    )
    .await;
    // WhatsApp's 24-hour rule: free-form text goes only after the recipient
    // wrote (tests/messaging_providers.rs tests the rule itself).
    let client = env.db.client().await;
    let now = chrono::Utc::now();
    switchboard::store::whatsapp_windows::touch(&client, Some("agent-w"), "+14155550123", now)
        .await
        .unwrap();
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let mut text = sms_job("agent-w", "+14155550123");
    text["channel"] = "whatsapp".into();
    text["media_urls"] = json!(["https://cdn.example.test/house.jpg"]);
    let mut template = sms_job("agent-w", "+14155550123");
    template["channel"] = "whatsapp".into();
    template.as_object_mut().unwrap().remove("text");
    template["template"] = json!({"content_sid": "HX0000000000000000000000000000000a", "variables": {"1": "Saturday"}});
    publisher.publish(&text).await;
    env.wait_for_status(job_id(&text), "sent").await;
    publisher.publish(&template).await;
    env.wait_for_status(job_id(&template), "sent").await;
    worker.stop().await;

    let requests = twilio_requests(&server).await;
    assert_eq!(requests.len(), 2);
    let (_, form) = &requests[0];
    assert_eq!(field(form, "To"), Some("whatsapp:+14155550123"));
    assert_eq!(field(form, "From"), Some("whatsapp:+14155550100"));
    assert_eq!(field(form, "Body"), Some("Open house on Saturday at 10am"));
    assert_eq!(
        field(form, "MediaUrl"),
        Some("https://cdn.example.test/house.jpg")
    );
    let (_, form) = &requests[1];
    assert_eq!(
        field(form, "ContentSid"),
        Some("HX0000000000000000000000000000000a")
    );
    assert_eq!(field(form, "ContentVariables"), Some(r#"{"1":"Saturday"}"#));
    assert_eq!(field(form, "Body"), None);
}
