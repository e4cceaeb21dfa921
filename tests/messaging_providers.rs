//! Issue 13's providers end to end: Africa's Talking SMS, Meta's WhatsApp
//! Cloud API and VAPI calls. A job published to RabbitMQ reaches a wiremock
//! standing in for the provider, which accepts only the request the real
//! API takes (method, path, auth, encoding, required fields); the outcome is
//! read back from Postgres. Webhooks are signed by `reference`, written here
//! from the providers' own descriptions, never by the code under test.

mod common;

use common::*;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------- Africa's Talking

const AT_KEY: &str = "atsk_0123456789abcdef0123456789abcdef";

fn at_answer(status: &str, code: i64, id: &str) -> serde_json::Value {
    json!({"SMSMessageData": {
        "Message": "Sent to 1/1 Total Cost: KES 0.8000",
        "Recipients": [{"statusCode": code, "number": "+254711000001", "status": status,
                        "cost": "KES 0.8000", "messageId": id}]}})
}

/// Africa's Talking's messaging endpoint: only a form post with the key in
/// `apiKey` is answered; anything else falls through to wiremock's 404.
async fn mount_at(server: &MockServer, answer: serde_json::Value) {
    Mock::given(method("POST"))
        .and(path("/version1/messaging"))
        .and(header("apikey", AT_KEY))
        .and(header("accept", "application/json"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(201).set_body_json(answer))
        .mount(server)
        .await;
}

/// The fields the SDK's `SMS.send` posts: `username`, `to`, `message`
/// required, `from` optional; nothing else from us.
fn assert_at_request(body: &[u8]) -> Vec<(String, String)> {
    let pairs = form_pairs(body);
    for required in ["username", "to", "message"] {
        assert!(
            field(&pairs, required).is_some(),
            "{required} missing: {pairs:?}"
        );
    }
    for (k, _) in &pairs {
        assert!(
            ["username", "to", "message", "from"].contains(&k.as_str()),
            "unexpected field {k}"
        );
    }
    pairs
}

async fn connect_at(env: &Env, agent: &str) -> uuid::Uuid {
    env.connect_integration(
        agent,
        "sms",
        "africastalking",
        json!({"username": "acme", "api_key": AT_KEY, "sender_id": "ACME"}),
    )
    .await
}

#[tokio::test]
async fn africastalking_sms_is_sent_with_its_id_and_cost() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_AFRICASTALKING_BASE_URL", server.uri());
    mount_at(&server, at_answer("Success", 101, "ATXid_abc123")).await;
    let integration = connect_at(&env, "agent-ke").await;

    let worker = env.start_worker();
    let job = sms_job("agent-ke", "+254 711 000001");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;

    assert_eq!(row.provider.as_deref(), Some("africastalking"));
    assert_eq!(row.integration_id, Some(integration));
    assert_eq!(row.provider_message_id.as_deref(), Some("ATXid_abc123"));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let pairs = assert_at_request(&requests[0].body);
    assert_eq!(field(&pairs, "username"), Some("acme"));
    assert_eq!(field(&pairs, "to"), Some("+254711000001"));
    assert_eq!(
        field(&pairs, "message"),
        Some("Open house on Saturday at 10am")
    );
    assert_eq!(field(&pairs, "from"), Some("ACME"));
    let events = env.event_details(job_id(&job)).await;
    let sent = &events.iter().find(|(e, _)| e == "sent").unwrap().1;
    assert_eq!(sent["provider_response"]["cost"], "KES 0.8000");
    assert_eq!(sent["provider_response"]["status"], "Success");
}

/// A `201` that refuses the recipient is a failure, not a send; a
/// blacklisting sender-side opt-out is remembered, so the next job to that
/// number is suppressed without a call. At default settings: this is a
/// guarantee, not a tuning.
#[tokio::test]
async fn africastalking_refusals_inside_a_201_fail_and_a_blacklist_opts_out() {
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_AFRICASTALKING_BASE_URL", server.uri());
    mount_at(&server, at_answer("UserInBlacklist", 406, "None")).await;
    connect_at(&env, "agent-ke").await;

    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let first = sms_job("agent-ke", "+254711000001");
    publisher.publish(&first).await;
    let row = env.wait_for_status(job_id(&first), "failed").await;
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("UserInBlacklist"),
        "{:?}",
        row.last_error
    );
    assert_eq!(row.provider_message_id, None);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM opt_outs WHERE agent_id = 'agent-ke' AND channel = 'sms'
               AND address = '+254711000001' AND reason = 'provider_rejected'"
        )
        .await,
        1
    );
    let second = sms_job("agent-ke", "+254711000001");
    publisher.publish(&second).await;
    env.wait_for_status(job_id(&second), "suppressed").await;
    worker.stop().await;
    // One call: the refusal was not retried, the second job never called.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn africastalking_insufficient_balance_fails_without_retry() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_AFRICASTALKING_BASE_URL", server.uri());
    mount_at(&server, at_answer("InsufficientBalance", 405, "None")).await;
    connect_at(&env, "agent-ke").await;

    let worker = env.start_worker();
    let job = sms_job("agent-ke", "+254711000001");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "failed").await;
    worker.stop().await;
    assert_eq!(row.attempts, 1);
    assert!(row.last_error.unwrap().contains("InsufficientBalance"));
    assert_eq!(
        count(&env, "SELECT count(*) FROM opt_outs").await,
        0,
        "an account problem is not the recipient's opt-out"
    );
}
