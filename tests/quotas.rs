//! Hour and day quotas count sends, not tries, and never hold back a
//! transactional message behind marketing (issue 18, findings 2 and 6). Run
//! with the default settings: retry backoff, circuit threshold (5) and
//! cool-down (30 s) are what users get.

mod common;

use common::*;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID: &str = "AC0000000000000000000000000000000q";

fn twilio_path() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

async fn day_count(env: &Env, key_prefix: &str) -> i64 {
    env.db
        .client()
        .await
        .query_one(
            "SELECT COALESCE(sum(count), 0)::int8 FROM rate_counters
              WHERE span = 'day' AND key LIKE $1 || '%'",
            &[&key_prefix],
        )
        .await
        .unwrap()
        .get(0)
}

/// `per_day=4` on the agent's Twilio account; three SMS meet an outage long
/// enough to open the circuit (parked, woken, parked again), then a fourth
/// job comes. Before the fix the outage spent the day: nothing was sent
/// after it and the fourth job was deferred to midnight.
#[tokio::test]
async fn a_provider_outage_spends_none_of_the_days_quota() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    // The outage: Twilio's "service unavailable" (not acted on, so retried),
    // long enough for the breaker to open.
    Mock::given(method("POST"))
        .and(path(twilio_path()))
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({
            "code": 20503, "message": "Service Unavailable", "status": 503
        })))
        .up_to_n_times(6)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(twilio_path()))
        .and(header("authorization", basic_auth(SID, "tok").as_str()))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMq", "status": "queued"})),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    env.connect_integration(
        "agent-q",
        "sms",
        "twilio",
        json!({"account_sid": SID, "auth_token": "tok", "phone_number": "+14155550100",
               "rate_limit": {"per_day": 4}}),
    )
    .await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let jobs: Vec<_> = (0..3).map(|_| sms_job("agent-q", "+14155550123")).collect();
    for job in &jobs {
        publisher.publish(job).await;
    }
    for job in &jobs {
        env.wait_for_status(job_id(job), "sent").await;
    }
    let fourth = sms_job("agent-q", "+14155550123");
    publisher.publish(&fourth).await;
    env.wait_for_status(job_id(&fourth), "sent").await;
    worker.stop().await;
    assert_eq!(
        day_count(&env, "integration:").await,
        4,
        "the day counts the four sends, not the tries"
    );
}

/// A marketing blast on an account with `per_day=4` stops at 3 and leaves
/// the last unit to transactional mail; an agent-level marketing quota does
/// not hold back a one-time code at all.
#[tokio::test]
async fn a_one_time_code_goes_out_after_a_marketing_blast_spent_the_quota() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri());
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(header("authorization", "Bearer re_agent_key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "re-1"})))
        .mount(&server)
        .await;
    env.connect_integration(
        "agent-m",
        "email",
        "resend",
        json!({"api_key": "re_agent_key", "from_email": "jane@realty.test",
               "rate_limit": {"per_day": 4}}),
    )
    .await;
    // The agent's own marketing pace: 2 a day.
    env.db
        .client()
        .await
        .execute(
            "INSERT INTO agents (id, limits) VALUES ('agent-m', $1)
             ON CONFLICT (id) DO UPDATE SET limits = EXCLUDED.limits",
            &[&json!({"email": {"per_day": 2}})],
        )
        .await
        .unwrap();
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let blast: Vec<_> = (0..4)
        .map(|i| email_job("agent-m", &format!("lead{i}@example.com")))
        .collect();
    for job in &blast {
        publisher.publish(job).await;
    }
    let mut sent = 0;
    let mut deferred = 0;
    for job in &blast {
        let status = wait_until("each blast job to be decided", || async {
            env.status(job_id(job))
                .await
                .filter(|s| s == "sent" || s == "deferred")
        })
        .await;
        if status == "sent" {
            sent += 1;
        } else {
            deferred += 1;
        }
    }
    assert_eq!((sent, deferred), (2, 2), "the agent's marketing pace holds");

    for i in 0..2 {
        let mut code = email_job("agent-m", &format!("buyer{i}@example.com"));
        code["category"] = json!("transactional");
        code["subject"] = json!("Your code is 123456");
        publisher.publish(&code).await;
        env.wait_for_status(job_id(&code), "sent").await;
    }
    // The account has 4 a day: the blast took 2, the codes 2; a third code
    // would now wait, like any message over the provider's quota.
    let mut third = email_job("agent-m", "buyer3@example.com");
    third["category"] = json!("transactional");
    publisher.publish(&third).await;
    env.wait_for_status(job_id(&third), "deferred").await;
    worker.stop().await;
}

/// The account's own quota: marketing alone can use 3 of 4.
#[tokio::test]
async fn marketing_leaves_a_share_of_the_accounts_quota_to_transactional() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri());
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "re-2"})))
        .mount(&server)
        .await;
    env.connect_integration(
        "agent-s",
        "email",
        "resend",
        json!({"api_key": "re_agent_key", "from_email": "jane@realty.test",
               "rate_limit": {"per_day": 4}}),
    )
    .await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let blast: Vec<_> = (0..4)
        .map(|i| email_job("agent-s", &format!("lead{i}@example.com")))
        .collect();
    for job in &blast {
        publisher.publish(job).await;
    }
    let mut statuses = Vec::new();
    for job in &blast {
        statuses.push(
            wait_until("each blast job to be decided", || async {
                env.status(job_id(job))
                    .await
                    .filter(|s| s == "sent" || s == "deferred")
            })
            .await,
        );
    }
    assert_eq!(statuses.iter().filter(|s| *s == "sent").count(), 3);
    let mut code = email_job("agent-s", "buyer@example.com");
    code["category"] = json!("transactional");
    publisher.publish(&code).await;
    env.wait_for_status(job_id(&code), "sent").await;
    worker.stop().await;
}
