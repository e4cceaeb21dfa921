//! Provider failover end to end (README, "Provider failover"): an agent's
//! backup account takes the job when the primary's circuit is open or the
//! primary refuses the account; a refusal of the recipient never fails over.
//! Real Postgres and RabbitMQ at default settings; Twilio is a wiremock
//! server that accepts only the exact request of each account.

mod common;

use common::*;
use serde_json::json;
use switchboard::integrations::{self, ConnectRequest};
use uuid::Uuid;
use wiremock::matchers::body_string_contains;
use wiremock::{MockServer, ResponseTemplate};

const PRIMARY_SID: &str = "AC000000000000000000000000000000a1";
const BACKUP_SID: &str = "AC000000000000000000000000000000b2";

/// Connects a Twilio SMS account for `agent` at `priority` (0: primary).
async fn connect_twilio(env: &Env, agent: &str, sid: &str, from: &str, priority: i32) -> Uuid {
    let s = env.settings();
    let pool = switchboard::store::pool(&s.database_url, 2).unwrap();
    let registry = switchboard::providers::Registry::new(
        switchboard::providers::http_client(s.provider_timeout),
        &s.provider_urls,
    );
    let settings =
        json!({"account_sid": sid, "auth_token": format!("token-{sid}"), "phone_number": from});
    let request = ConnectRequest {
        agent_id: agent,
        channel: "sms".parse().unwrap(),
        provider: "twilio",
        settings: &settings,
        active: true,
        priority,
    };
    integrations::connect_with(&pool, s.keyring.as_ref().unwrap(), &registry, request)
        .await
        .unwrap()
}

/// Defaults, with Twilio's API at the mock and a primary and a backup account.
async fn env_with_backup(server: &MockServer, agent: &str) -> (Env, Uuid, Uuid) {
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    let primary = connect_twilio(&env, agent, PRIMARY_SID, "+14155550001", 0).await;
    let backup = connect_twilio(&env, agent, BACKUP_SID, "+14155550002", 1).await;
    (env, primary, backup)
}

/// The backup account accepts only requests sent from its own number.
async fn backup_accepts(server: &MockServer) {
    twilio_create_message(BACKUP_SID, &format!("token-{BACKUP_SID}"))
        .and(body_string_contains("From=%2B14155550002"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMbackup", "status": "queued"})),
        )
        .mount(server)
        .await;
}

fn primary(response: ResponseTemplate) -> wiremock::Mock {
    twilio_create_message(PRIMARY_SID, &format!("token-{PRIMARY_SID}"))
        .and(body_string_contains("From=%2B14155550001"))
        .respond_with(response)
}

async fn calls_to(server: &MockServer, sid: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().contains(sid))
        .count()
}

async fn integration_of(env: &Env, id: Uuid) -> Option<Uuid> {
    env.db
        .client()
        .await
        .query_one(
            "SELECT integration_id FROM outbound_messages WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn failovers(env: &Env, id: Uuid) -> Vec<serde_json::Value> {
    env.event_details(id)
        .await
        .into_iter()
        .filter(|(e, _)| e == "failover")
        .map(|(_, d)| d)
        .collect()
}

#[tokio::test]
async fn a_primary_that_503s_until_its_circuit_opens_fails_over_to_the_backup() {
    let server = MockServer::start().await;
    let (env, primary_id, backup_id) = env_with_backup(&server, "agent-fo").await;
    primary(ResponseTemplate::new(503)).mount(&server).await;
    backup_accepts(&server).await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let jobs: Vec<_> = (0..3)
        .map(|i| sms_job("agent-fo", &format!("+1415555012{i}")))
        .collect();
    for job in &jobs {
        publisher.publish(job).await;
    }
    for job in &jobs {
        env.wait_for_status(job_id(job), "sent").await;
    }
    let metrics = worker.ctx.metrics.render();
    worker.stop().await;

    // One acceptance per job, all by the backup; the primary never accepted.
    assert_eq!(calls_to(&server, BACKUP_SID).await, jobs.len());
    assert!(
        calls_to(&server, PRIMARY_SID).await >= 5,
        "the default threshold is 5"
    );
    let opened = count(
        &env,
        "SELECT count(*) FROM outbound_events WHERE event = 'circuit_opened'",
    )
    .await;
    assert_eq!(opened, 1);
    for job in &jobs {
        let id = job_id(job);
        assert_eq!(integration_of(&env, id).await, Some(backup_id));
        let failovers = failovers(&env, id).await;
        assert_eq!(failovers.len(), 1, "{failovers:?}");
        assert_eq!(failovers[0]["reason"], "circuit_open");
        assert_eq!(failovers[0]["from"]["integration_id"], json!(primary_id));
        assert_eq!(failovers[0]["to"]["integration_id"], json!(backup_id));
        assert_eq!(failovers[0]["to"]["provider"], "twilio");
        let events = env.events(id).await;
        assert_eq!(
            events.last().map(String::as_str),
            Some("sent"),
            "{events:?}"
        );
    }
    assert!(
        metrics.contains(
            r#"switchboard_failovers_total{channel="sms",from_provider="twilio",reason="circuit_open",to_provider="twilio"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_revoked_key_fails_over_to_the_backup() {
    let server = MockServer::start().await;
    let (env, primary_id, backup_id) = env_with_backup(&server, "agent-rk").await;
    primary(ResponseTemplate::new(401).set_body_json(json!({
        "code": 20003, "message": "Authenticate", "status": 401,
        "more_info": "https://www.twilio.com/docs/errors/20003"
    })))
    .mount(&server)
    .await;
    backup_accepts(&server).await;
    let worker = env.start_worker();
    let job = sms_job("agent-rk", "+14155550123");
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;

    assert_eq!(calls_to(&server, PRIMARY_SID).await, 1);
    assert_eq!(calls_to(&server, BACKUP_SID).await, 1);
    assert_eq!(integration_of(&env, job_id(&job)).await, Some(backup_id));
    let failovers = failovers(&env, job_id(&job)).await;
    assert_eq!(failovers.len(), 1);
    assert_eq!(failovers[0]["reason"], "account_refused");
    assert_eq!(failovers[0]["from"]["integration_id"], json!(primary_id));
    assert_eq!(failovers[0]["error"]["http_status"], 401);
}

#[tokio::test]
async fn a_refused_recipient_never_fails_over() {
    let server = MockServer::start().await;
    let (env, primary_id, _) = env_with_backup(&server, "agent-rr").await;
    primary(ResponseTemplate::new(400).set_body_json(json!({
        "code": 21211, "message": "The 'To' number +14155550123 is not a valid phone number.",
        "status": 400
    })))
    .mount(&server)
    .await;
    backup_accepts(&server).await;
    let worker = env.start_worker();
    let job = sms_job("agent-rr", "+14155550123");
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "failed").await;
    worker.stop().await;

    assert_eq!(calls_to(&server, PRIMARY_SID).await, 1);
    assert_eq!(calls_to(&server, BACKUP_SID).await, 0);
    assert_eq!(integration_of(&env, job_id(&job)).await, Some(primary_id));
    assert!(failovers(&env, job_id(&job)).await.is_empty());
}
