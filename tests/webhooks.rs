//! Twilio's webhooks end to end: signed status callbacks move messages to
//! delivered / failed, STOP and START replies change opt-outs, and forged or
//! misdirected requests are refused without changing anything.

mod common;

use common::*;
use serde_json::json;
use switchboard::webhooks::twilio::sign;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const SID_A: &str = "AC0000000000000000000000000000000a";
const PUBLIC: &str = "https://hooks.example.test";

struct Hooks {
    base: String,
    token: tokio_util::sync::CancellationToken,
    http: reqwest::Client,
}

impl Hooks {
    fn start(env: &Env, worker: &RunningWorker) -> Self {
        let (base, token, _) = env.start_http(worker);
        Self {
            base,
            token,
            http: reqwest::Client::new(),
        }
    }

    /// Posts as Twilio would: signed over the public URL it was given.
    async fn post(&self, path: &str, auth_token: &str, params: &[(&str, &str)]) -> (u16, String) {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let signature = sign(auth_token, &format!("{PUBLIC}{path}"), &owned);
        let r = wait_until("the webhook server answers", || async {
            self.http
                .post(format!("{}{path}", self.base))
                .header("x-twilio-signature", &signature)
                .form(&owned)
                .send()
                .await
                .ok()
        })
        .await;
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

async fn setup() -> (MockServer, Env, uuid::Uuid) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMhook", "status": "queued"})),
        )
        .mount(&server)
        .await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("SWITCHBOARD_PUBLIC_URL", PUBLIC)
        .set("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000999")
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
    let id = env
        .connect_integration(
            "agent-h",
            "sms",
            "twilio",
            json!({"account_sid": SID_A, "auth_token": "token-a", "phone_number": "+14155550100"}),
        )
        .await;
    (server, env, id)
}

#[tokio::test]
async fn signed_status_callbacks_mark_messages_delivered_and_forgeries_get_401() {
    let (_server, env, integration) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let job = sms_job("agent-h", "+14155550123");
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    let path = format!("/webhooks/twilio/{integration}");
    let delivered = [
        ("MessageSid", "SMhook"),
        ("MessageStatus", "delivered"),
        ("AccountSid", SID_A),
        ("To", "+14155550123"),
    ];

    // Signed with another account's token: refused, nothing recorded.
    let (status, _) = hooks.post(&path, "someone-elses-token", &delivered).await;
    assert_eq!(status, 401);
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));
    // Unknown integration.
    let (status, _) = hooks
        .post(
            &format!("/webhooks/twilio/{}", uuid::Uuid::new_v4()),
            "token-a",
            &delivered,
        )
        .await;
    assert_eq!(status, 404);

    let (status, body) = hooks.post(&path, "token-a", &delivered).await;
    assert_eq!(status, 200);
    assert!(body.contains("<Response>"), "{body}");
    env.wait_for_status(job_id(&job), "delivered").await;
    // A late "undelivered" for the same message does not undo delivered.
    let (status, _) = hooks
        .post(
            &path,
            "token-a",
            &[
                ("MessageSid", "SMhook"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30003"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    hooks.token.cancel();
    worker.stop().await;
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("delivered"));
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered", "failed"]
    );
}

#[tokio::test]
async fn platform_account_failures_are_recorded_with_twilios_error_code() {
    let (_server, env, _) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let job = sms_job("agent-without-integration", "+14155550123");
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    let (status, _) = hooks
        .post(
            "/webhooks/twilio/platform",
            "platform-token",
            &[
                ("MessageSid", "SMhook"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30006"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let row = env.wait_for_status(job_id(&job), "failed").await;
    hooks.token.cancel();
    worker.stop().await;
    assert!(row.last_error.unwrap().contains("30006"));
}

#[tokio::test]
async fn a_stop_reply_opts_the_sender_out_and_start_opts_them_back_in() {
    let (server, env, integration) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let path = format!("/webhooks/twilio/{integration}");
    let reply = |body: &'static str| {
        [
            ("MessageSid", "SMin1"),
            ("SmsStatus", "received"),
            ("From", "+14155550123"),
            ("To", "+14155550100"),
            ("Body", body),
        ]
    };
    let (status, _) = hooks.post(&path, "token-a", &reply("Stop")).await;
    assert_eq!(status, 200);
    let job = sms_job("agent-h", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "suppressed").await;
    assert_eq!(row.last_error.as_deref(), Some("stop_keyword"));

    let (status, _) = hooks.post(&path, "token-a", &reply("START")).await;
    assert_eq!(status, 200);
    let again = sms_job("agent-h", "+14155550123");
    env.publisher().await.publish(&again).await;
    env.wait_for_status(job_id(&again), "sent").await;
    hooks.token.cancel();
    worker.stop().await;
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "only the job after START was sent"
    );
    let received: i64 = env
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM outbound_events WHERE event = 'received' AND agent_id = 'agent-h'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(received, 2);
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn resend_bounces_mark_the_message_and_suppress_the_address_even_for_transactional() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "em_1"})))
        .mount(&server)
        .await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri());
    let integration = env
        .connect_integration("agent-r", "email", "resend", json!({"api_key": "re_key_1234567890", "from_email": "jane@realty.test", "webhook_secret": WHSEC}))
        .await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let job = email_job("agent-r", "Buyer@Example.com");
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;

    let path = format!("{}/webhooks/resend/{integration}", hooks.base);
    let post = |body: serde_json::Value, secret: &'static str, age_secs: i64| {
        let http = hooks.http.clone();
        let path = path.clone();
        async move {
            let body = body.to_string();
            let ts = (chrono::Utc::now().timestamp() - age_secs).to_string();
            let sig = switchboard::webhooks::resend::sign(secret, "msg_1", &ts, body.as_bytes());
            http.post(&path)
                .header("svix-id", "msg_1")
                .header("svix-timestamp", ts)
                .header("svix-signature", sig)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let delivered = json!({"type": "email.delivered", "created_at": "2026-11-23T10:00:00Z",
        "data": {"email_id": "em_1", "to": ["buyer@example.com"], "subject": "New listing near you"}});
    let bounced = json!({"type": "email.bounced", "created_at": "2026-11-23T10:01:00Z",
        "data": {"email_id": "em_1", "to": ["buyer@example.com"], "bounce": {"type": "Permanent", "message": "mailbox does not exist"}}});

    assert_eq!(
        post(
            delivered.clone(),
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            0
        )
        .await,
        401,
        "another secret"
    );
    assert_eq!(
        post(delivered.clone(), WHSEC, 600).await,
        401,
        "a replay ten minutes later"
    );
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));
    assert_eq!(post(delivered, WHSEC, 0).await, 204);
    env.wait_for_status(job_id(&job), "delivered").await;
    assert_eq!(post(bounced, WHSEC, 0).await, 204);
    env.wait_for_status(job_id(&job), "bounced").await;

    // A hard bounce stops even transactional mail to the address.
    let mut receipt = email_job("agent-r", "buyer@example.com");
    receipt["category"] = "transactional".into();
    env.publisher().await.publish(&receipt).await;
    let row = env.wait_for_status(job_id(&receipt), "suppressed").await;
    hooks.token.cancel();
    worker.stop().await;
    assert_eq!(row.last_error.as_deref(), Some("hard_bounce"));
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered", "bounced"]
    );
}
