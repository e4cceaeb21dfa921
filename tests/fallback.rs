//! Channel fallback end to end (README, "Channel fallback"): a job that
//! cannot be delivered on its channel sends its `fallback` entry as a linked
//! job (`parent_id`), through every policy check of the new channel. Real
//! Postgres and RabbitMQ at default settings; Twilio is a wiremock server
//! that accepts only the exact request of the account.

mod common;

use common::*;
use serde_json::json;
use switchboard::store::provider_events::Account;
use switchboard::webhooks::inbox::{self, Delivery, ProviderEvent};
use uuid::Uuid;
use wiremock::matchers::body_string_contains;
use wiremock::{MockServer, ResponseTemplate};

const SID: &str = "AC0000000000000000000000000000f11b";
const TOKEN: &str = "token-fallback";
const CONTENT_SID: &str = "HX0000000000000000000000000000f11b";

/// Defaults, with the agent's Twilio account connected for SMS and WhatsApp.
async fn env_with_twilio(server: &MockServer, agent: &str) -> (Env, Uuid) {
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    let sms = env
        .connect_integration(
            agent,
            "sms",
            "twilio",
            json!({"account_sid": SID, "auth_token": TOKEN, "phone_number": "+14155550100"}),
        )
        .await;
    env.connect_integration(
        agent,
        "whatsapp",
        "twilio",
        json!({"account_sid": SID, "auth_token": TOKEN, "whatsapp_number": "+14155550100"}),
    )
    .await;
    (env, sms)
}

/// Twilio refuses the SMS with `code` and takes the WhatsApp template.
async fn sms_refused_whatsapp_accepted(server: &MockServer, code: u32, message: &str) {
    twilio_create_message(SID, TOKEN)
        .and(body_string_contains("To=%2B14155550123"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": code, "message": message, "status": 400,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}")
        })))
        .mount(server)
        .await;
    twilio_create_message(SID, TOKEN)
        .and(body_string_contains("To=whatsapp%3A%2B14155550123"))
        .and(body_string_contains(format!("ContentSid={CONTENT_SID}")))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMwhatsapp", "status": "queued"})),
        )
        .mount(server)
        .await;
}

/// An SMS to +1 415 555 0123 that falls back to a WhatsApp template.
fn sms_with_whatsapp_fallback(agent: &str) -> serde_json::Value {
    let mut job = sms_job(agent, "+14155550123");
    job["campaign_id"] = json!("spring");
    job["fallback"] = json!([{"channel": "whatsapp",
        "template": {"content_sid": CONTENT_SID, "variables": {"1": "Saturday"}}}]);
    job
}

async fn parent_of(env: &Env, id: Uuid) -> Option<Uuid> {
    env.db
        .client()
        .await
        .query_one(
            "SELECT parent_id FROM outbound_messages WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

/// The Done-means case of issue 17: Twilio 21614 (the number is a landline)
/// fails the SMS at once, and the WhatsApp entry is sent as a linked job.
#[tokio::test]
async fn an_sms_to_a_landline_falls_back_to_whatsapp_as_a_linked_message() {
    let server = MockServer::start().await;
    sms_refused_whatsapp_accepted(&server, 21614, "'To' number is not a valid mobile number").await;
    let (env, _) = env_with_twilio(&server, "agent-fb").await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let job = sms_with_whatsapp_fallback("agent-fb");
    publisher.publish(&job).await;
    let parent = env.wait_for_status(job_id(&job), "failed").await;
    assert!(parent.last_error.unwrap().contains("21614"));

    let events = env.event_details(job_id(&job)).await;
    let fallback = &events
        .iter()
        .find(|(e, _)| e == "fallback")
        .expect("a fallback event on the parent")
        .1;
    assert_eq!(fallback["channel"], "whatsapp");
    let child_id = Uuid::parse_str(fallback["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        child_id,
        switchboard::domain::fallback::child_id(job_id(&job))
    );

    let child = env.wait_for_status(child_id, "sent").await;
    worker.stop().await;
    assert_eq!(child.channel.as_deref(), Some("whatsapp"));
    assert_eq!(child.recipient.as_deref(), Some("+14155550123"));
    assert_eq!(child.provider_message_id.as_deref(), Some("SMwhatsapp"));
    assert_eq!(child.campaign_id.as_deref(), Some("spring"));
    assert_eq!(child.parent_id, Some(job_id(&job)));
    assert_eq!(parent_of(&env, child_id).await, Some(job_id(&job)));
    // One call each: the refusal is permanent, so the SMS is not retried.
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

/// A bad number is bad on every channel: Twilio 21211 (invalid `To`) fails
/// the SMS and parks no fallback.
#[tokio::test]
async fn an_invalid_number_does_not_fall_back() {
    let server = MockServer::start().await;
    sms_refused_whatsapp_accepted(
        &server,
        21211,
        "The 'To' number is not a valid phone number.",
    )
    .await;
    let (env, _) = env_with_twilio(&server, "agent-fb2").await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let job = sms_with_whatsapp_fallback("agent-fb2");
    publisher.publish(&job).await;
    env.wait_for_status(job_id(&job), "failed").await;
    worker.stop().await;
    assert!(!env.events(job_id(&job)).await.contains(&"fallback".into()));
    let parked: i64 = env
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM scheduled_jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, 0);
    assert_eq!(
        env.status(switchboard::domain::fallback::child_id(job_id(&job)))
            .await,
        None
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

/// A failure the provider reports later (here Twilio's status callback
/// saying the SMS failed, as for an unreachable handset) falls back the
/// same way, from the webhook inbox, once however often it is reported.
#[tokio::test]
async fn a_failure_reported_by_webhook_falls_back_once() {
    let server = MockServer::start().await;
    twilio_create_message(SID, TOKEN)
        .and(body_string_contains("To=%2B14155550123"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMfirst", "status": "queued"})),
        )
        .mount(&server)
        .await;
    sms_refused_whatsapp_accepted(&server, 21614, "unused").await;
    let (env, integration) = env_with_twilio(&server, "agent-fb3").await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let job = sms_with_whatsapp_fallback("agent-fb3");
    publisher.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;

    // What the Twilio webhook handler files for a `failed` status callback
    // (its parsing and signature are tested in tests/webhooks.rs); sent
    // twice, as providers retry.
    let pool = switchboard::store::pool(&env.db.url, 2).unwrap();
    for delivery_id in ["SMfirst-failed", "SMfirst-failed-again"] {
        let delivery = Delivery {
            provider: "twilio",
            account: Account::Integration(integration),
            agent_id: Some("agent-fb3"),
            delivery_id,
            event: ProviderEvent::Status {
                provider_message_id: "SMfirst".into(),
                event: "failed".into(),
                error: Some("30006: Landline or unreachable carrier".into()),
                detail: json!({"error_code": "30006"}),
                opt_out: None,
            },
        };
        inbox::accept(&pool, delivery).await.unwrap();
    }
    env.wait_for_status(job_id(&job), "failed").await;
    let child_id = switchboard::domain::fallback::child_id(job_id(&job));
    let child = env.wait_for_status(child_id, "sent").await;
    worker.stop().await;
    assert_eq!(child.parent_id, Some(job_id(&job)));
    assert_eq!(child.channel.as_deref(), Some("whatsapp"));
    let fallbacks = env
        .events(job_id(&job))
        .await
        .into_iter()
        .filter(|e| e == "fallback")
        .count();
    assert_eq!(fallbacks, 1, "the second report moved nothing");
    let whatsapp_calls = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("whatsapp%3A"))
        .count();
    assert_eq!(whatsapp_calls, 1);
}
