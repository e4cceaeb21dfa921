//! Provider webhooks end to end: signed status callbacks move messages,
//! STOP and START replies change opt-outs, and forged, misdirected, replayed
//! or cross-tenant requests change nothing.
//!
//! Requests are signed by `reference`, an implementation written here from
//! the providers' own descriptions (twilio-python's `RequestValidator`, the
//! Svix / Standard Webhooks scheme) and checked against their published
//! example vectors, never by the code under test: a bug shared by signer and
//! verifier would otherwise pass unnoticed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use serde_json::json;
use switchboard::domain::Channel;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Signers written from the providers' documentation, independent of
/// `switchboard::webhooks`.
mod reference {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use hmac::{Hmac, KeyInit, Mac};

    /// `X-Twilio-Signature` as twilio-python's `RequestValidator` computes it:
    /// the full URL, then for each parameter name in sorted order, each of its
    /// values in sorted order as `name + value`, all HMAC-SHA1'd with the auth
    /// token, base64.
    pub fn twilio(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
        let mut names: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
        names.sort_unstable();
        names.dedup();
        let mut data = url.to_string();
        for name in names {
            let mut values: Vec<&str> = params
                .iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .collect();
            values.sort_unstable();
            for value in values {
                data.push_str(name);
                data.push_str(value);
            }
        }
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).unwrap();
        mac.update(data.as_bytes());
        BASE64.encode(mac.finalize().into_bytes())
    }

    /// `svix-signature` as Svix signs: HMAC-SHA256 keyed by the base64 after
    /// `whsec_`, over `{id}.{timestamp}.{body}`, as `v1,<base64>`.
    pub fn svix(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
        let key = BASE64
            .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
            .unwrap();
        svix_with_key(&key, id, timestamp, body)
    }

    pub fn svix_with_key(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

#[test]
fn the_reference_signers_reproduce_the_providers_published_vectors() {
    // Twilio's "Validating requests" documentation: auth token 12345.
    let params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675310"),
        ("Digits", "1234"),
        ("From", "+14158675310"),
        ("To", "+18005551212"),
    ];
    assert_eq!(
        reference::twilio(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params
        ),
        "GvWf1cFY/Q7PnoempGyD5oXAezc="
    );
    // The Svix / Standard Webhooks reference vector.
    assert_eq!(
        reference::svix(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

const SID_A: &str = "AC0000000000000000000000000000000a";
const SID_B: &str = "AC0000000000000000000000000000000b";
const SID_PLATFORM: &str = "AC00000000000000000000000000000999";
const PUBLIC: &str = "https://hooks.example.test";

/// Answers each accepted send with a new id, `make(n)` for the n-th (from 1),
/// as a provider does: tests must find a message by the id it really got.
struct Ids(AtomicUsize, fn(usize) -> serde_json::Value, u16);

impl Respond for Ids {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(self.2).set_body_json((self.1)(n))
    }
}

/// A Twilio message SID: `SM` and 32 hex digits, here `prefix` then `n`.
fn twilio_sid(prefix: char, n: usize) -> String {
    format!("SM{prefix}{n:031x}")
}

/// A Twilio account that takes messages only on its own path with its own
/// credentials (anything else gets wiremock's 404, which fails the send).
async fn mount_twilio(server: &MockServer, account_sid: &str, auth_token: &str, prefix: char) {
    let make: fn(usize) -> serde_json::Value = match prefix {
        'a' => |n| json!({"sid": twilio_sid('a', n), "status": "queued"}),
        'b' => |n| json!({"sid": twilio_sid('b', n), "status": "queued"}),
        _ => |n| json!({"sid": twilio_sid('f', n), "status": "queued"}),
    };
    Mock::given(method("POST"))
        .and(path(format!(
            "/2010-04-01/Accounts/{account_sid}/Messages.json"
        )))
        .and(header("authorization", basic_auth(account_sid, auth_token)))
        .respond_with(Ids(AtomicUsize::new(0), make, 201))
        .mount(server)
        .await;
}

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

    /// Stops the HTTP server, then the worker.
    async fn stop(self, worker: RunningWorker) {
        self.token.cancel();
        worker.stop().await;
    }

    /// Posts as Twilio would: signed over the public URL it was given.
    async fn twilio(&self, path: &str, auth_token: &str, params: &[(&str, &str)]) -> (u16, String) {
        let signature = reference::twilio(auth_token, &format!("{PUBLIC}{path}"), params);
        self.twilio_signed(path, &signature, params).await
    }

    async fn twilio_signed(
        &self,
        path: &str,
        signature: &str,
        params: &[(&str, &str)],
    ) -> (u16, String) {
        let r = wait_until("the webhook server answers", || async {
            self.http
                .post(format!("{}{path}", self.base))
                .header("x-twilio-signature", signature)
                .form(params)
                .send()
                .await
                .ok()
        })
        .await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Posts a Svix-signed delivery; 0 when no HTTP answer came back (the
    /// handler panicked or the connection dropped).
    async fn svix(
        &self,
        path: &str,
        svix_id: &str,
        timestamp: &str,
        signature: &str,
        body: &serde_json::Value,
    ) -> u16 {
        // The server is up once /healthz answers; from then on a failed
        // request is the handler's doing, not a race with start-up.
        wait_until("the webhook server answers", || async {
            self.http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .ok()
        })
        .await;
        match self
            .http
            .post(format!("{}{path}", self.base))
            .header("svix-id", svix_id)
            .header("svix-timestamp", timestamp)
            .header("svix-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// A delivery signed now with `secret`, as Resend would send it.
    async fn resend(
        &self,
        path: &str,
        secret: &str,
        svix_id: &str,
        body: &serde_json::Value,
    ) -> u16 {
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = reference::svix(secret, svix_id, &ts, body.to_string().as_bytes());
        self.svix(path, svix_id, &ts, &sig, body).await
    }
}

/// Twilio set up for agent `agent-h` (its own account A) and the platform.
async fn setup() -> (MockServer, Env, uuid::Uuid) {
    let server = MockServer::start().await;
    mount_twilio(&server, SID_A, "token-a", 'a').await;
    mount_twilio(&server, SID_PLATFORM, "platform-token", 'f').await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("SWITCHBOARD_PUBLIC_URL", PUBLIC)
        .set("TWILIO_ACCOUNT_SID", SID_PLATFORM)
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

/// Waits for the job to be sent or suppressed, whichever happens: a test
/// that expects one must fail at once, not time out, when the other happens.
async fn wait_for_outcome(env: &Env, id: uuid::Uuid) -> switchboard::store::messages::MessageRow {
    let client = env.db.client().await;
    wait_for(
        &format!("message {id} to be sent or suppressed"),
        || async {
            let row = switchboard::store::messages::get(&client, id)
                .await
                .unwrap()
                .ok_or("no row")?;
            match row.status.as_str() {
                "sent" | "suppressed" | "failed" => Ok(row),
                other => Err(other.to_string()),
            }
        },
    )
    .await
}

/// What became of a new transactional SMS from `agent-h` to the number
/// that replies in these tests.
async fn next_sms_outcome(env: &Env) -> switchboard::store::messages::MessageRow {
    let job = sms_job("agent-h", "+14155550123");
    env.publisher().await.publish(&job).await;
    wait_for_outcome(env, job_id(&job)).await
}

#[tokio::test]
async fn signed_status_callbacks_mark_messages_delivered_and_forgeries_get_401() {
    let (_server, env, integration) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let job = sms_job("agent-h", "+14155550123");
    let sid = send(&env, &job).await;
    assert_eq!(sid, twilio_sid('a', 1));
    let path = format!("/webhooks/twilio/{integration}");
    let delivered = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
        ("AccountSid", SID_A),
        ("To", "+14155550123"),
    ];

    // Signed with a token that is nobody's: refused, nothing recorded.
    let (status, _) = hooks.twilio(&path, "someone-elses-token", &delivered).await;
    assert_eq!(status, 401);
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));
    // Unknown integration.
    let (status, _) = hooks
        .twilio(
            &format!("/webhooks/twilio/{}", uuid::Uuid::new_v4()),
            "token-a",
            &delivered,
        )
        .await;
    assert_eq!(status, 404);

    let (status, body) = hooks.twilio(&path, "token-a", &delivered).await;
    assert_eq!(status, 200);
    assert!(body.contains("<Response>"), "{body}");
    env.wait_for_status(job_id(&job), "delivered").await;
    // A late "undelivered" for the same message does not undo delivered.
    let (status, _) = hooks
        .twilio(
            &path,
            "token-a",
            &[
                ("MessageSid", sid.as_str()),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30003"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    hooks.stop(worker).await;
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
    let sid = send(&env, &job).await;
    let (status, _) = hooks
        .twilio(
            "/webhooks/twilio/platform",
            "platform-token",
            &[
                ("MessageSid", sid.as_str()),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30006"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let row = env.wait_for_status(job_id(&job), "failed").await;
    hooks.stop(worker).await;
    assert!(row.last_error.unwrap().contains("30006"));
}

/// An incoming SMS, as Twilio posts it; each has its own MessageSid.
fn reply<'a>(sid: &'a str, body: &'a str) -> [(&'a str, &'a str); 6] {
    [
        ("MessageSid", sid),
        ("SmsStatus", "received"),
        ("AccountSid", SID_A),
        ("From", "+14155550123"),
        ("To", "+14155550100"),
        ("Body", body),
    ]
}

#[tokio::test]
async fn a_stop_reply_opts_the_sender_out_and_start_opts_them_back_in() {
    let (server, env, integration) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let path = format!("/webhooks/twilio/{integration}");
    let stop = twilio_sid('1', 1);
    let (status, _) = hooks.twilio(&path, "token-a", &reply(&stop, "Stop")).await;
    assert_eq!(status, 200);
    let job = sms_job("agent-h", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "suppressed").await;
    assert_eq!(row.last_error.as_deref(), Some("stop_keyword"));

    let start = twilio_sid('1', 2);
    let (status, _) = hooks
        .twilio(&path, "token-a", &reply(&start, "START"))
        .await;
    assert_eq!(status, 200);
    let again = sms_job("agent-h", "+14155550123");
    env.publisher().await.publish(&again).await;
    env.wait_for_status(job_id(&again), "sent").await;
    hooks.stop(worker).await;
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "only the job after START was sent"
    );
    let received = count(
        &env,
        "SELECT count(*) FROM outbound_events WHERE event = 'received' AND agent_id = 'agent-h'",
    )
    .await;
    assert_eq!(received, 2);
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_B: &str = "whsec_c2VjcmV0LW9mLWFnZW50LWItcmVzZW5kLWFjY291bnQ=";

/// A Resend account that takes emails only with its own API key.
async fn mount_resend(server: &MockServer, api_key: &str, prefix: char) {
    let make: fn(usize) -> serde_json::Value = match prefix {
        'a' => |n| json!({"id": format!("4ef9a417-02e9-4d39-ad75-{n:012}")}),
        _ => |n| json!({"id": format!("5ef9a417-02e9-4d39-ad75-{n:012}")}),
    };
    Mock::given(method("POST"))
        .and(path("/emails"))
        .and(header("authorization", format!("Bearer {api_key}")))
        .respond_with(Ids(AtomicUsize::new(0), make, 200))
        .mount(server)
        .await;
}

async fn connect_resend(env: &Env, agent: &str, api_key: &str, secret: &str) -> uuid::Uuid {
    env.connect_integration(
        agent,
        "email",
        "resend",
        json!({"api_key": api_key, "from_email": "jane@realty.test", "webhook_secret": secret}),
    )
    .await
}

/// Resend set up for agent `agent-r`, its webhooks signed with `secret`.
async fn resend_setup(secret: &str) -> (MockServer, Env, uuid::Uuid) {
    let server = MockServer::start().await;
    mount_resend(&server, "re_key_1234567890", 'a').await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri());
    let integration = connect_resend(&env, "agent-r", "re_key_1234567890", secret).await;
    (server, env, integration)
}

/// Publishes `job`, waits for it to be sent, returns the provider's id for it.
async fn send(env: &Env, job: &serde_json::Value) -> String {
    env.publisher().await.publish(job).await;
    env.wait_for_status(job_id(job), "sent")
        .await
        .provider_message_id
        .expect("the provider's id is recorded")
}

fn resend_event(kind: &str, email_id: &str, to: &str) -> serde_json::Value {
    let mut data = json!({"email_id": email_id, "to": [to], "subject": "New listing near you",
        "created_at": "2026-11-23T10:00:00Z"});
    if kind == "email.bounced" {
        data["bounce"] = json!({"type": "Permanent", "message": "mailbox does not exist"});
    }
    json!({"type": kind, "created_at": "2026-11-23T10:00:01Z", "data": data})
}

#[tokio::test]
async fn resend_bounces_mark_the_message_and_suppress_the_address_even_for_transactional() {
    let (server, env, integration) = resend_setup(WHSEC).await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let job = email_job("agent-r", "Buyer@Example.com");
    let email_id = send(&env, &job).await;

    let path = format!("/webhooks/resend/{integration}");
    let delivered = resend_event("email.delivered", &email_id, "buyer@example.com");
    let bounced = resend_event("email.bounced", &email_id, "buyer@example.com");

    let other_secret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(
        hooks.resend(&path, other_secret, "msg_1", &delivered).await,
        401,
        "another secret"
    );
    let ten_minutes_ago = (chrono::Utc::now().timestamp() - 600).to_string();
    let stale = reference::svix(
        WHSEC,
        "msg_1",
        &ten_minutes_ago,
        delivered.to_string().as_bytes(),
    );
    assert_eq!(
        hooks
            .svix(&path, "msg_1", &ten_minutes_ago, &stale, &delivered)
            .await,
        401,
        "a replay ten minutes later"
    );
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));
    assert_eq!(hooks.resend(&path, WHSEC, "msg_1", &delivered).await, 204);
    env.wait_for_status(job_id(&job), "delivered").await;
    assert_eq!(hooks.resend(&path, WHSEC, "msg_2", &bounced).await, 204);
    env.wait_for_status(job_id(&job), "bounced").await;

    // A hard bounce stops even transactional mail to the address.
    let mut receipt = email_job("agent-r", "buyer@example.com");
    receipt["category"] = "transactional".into();
    env.publisher().await.publish(&receipt).await;
    let row = wait_for_outcome(&env, job_id(&receipt)).await;
    hooks.stop(worker).await;
    assert_eq!(row.status, "suppressed");
    assert_eq!(row.last_error.as_deref(), Some("hard_bounce"));
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered", "bounced"]
    );
}

// ---------------------------------------------------------------------------
// Issue 10 #8: an agent's own valid secret, on its own URL, reaches nothing
// but the messages sent through that integration.

#[tokio::test]
async fn another_integrations_valid_twilio_token_cannot_touch_its_messages() {
    let (server, env, integration_a) = setup().await;
    mount_twilio(&server, SID_B, "token-b", 'b').await;
    let integration_b = env
        .connect_integration(
            "agent-b",
            "sms",
            "twilio",
            json!({"account_sid": SID_B, "auth_token": "token-b", "phone_number": "+14155550200"}),
        )
        .await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    // One message through agent B's own account, one through the platform's.
    let via_b = sms_job("agent-b", "+14155550123");
    let via_platform = sms_job("agent-c", "+14155550124");
    let sid_b = send(&env, &via_b).await;
    let sid_platform = send(&env, &via_platform).await;

    // Agent A signs, validly, with its own token on its own URL.
    let path_a = format!("/webhooks/twilio/{integration_a}");
    for sid in [&sid_b, &sid_platform] {
        let (status, _) = hooks
            .twilio(
                &path_a,
                "token-a",
                &[
                    ("MessageSid", sid),
                    ("MessageStatus", "undelivered"),
                    ("ErrorCode", "30003"),
                ],
            )
            .await;
        assert_eq!(status, 200, "a valid signature is answered");
    }
    // The owners' own reports still apply (they could not if the forged
    // `failed` had been applied first: status only moves forward).
    for (path, token, sid) in [
        (
            format!("/webhooks/twilio/{integration_b}"),
            "token-b",
            &sid_b,
        ),
        (
            "/webhooks/twilio/platform".to_string(),
            "platform-token",
            &sid_platform,
        ),
    ] {
        let delivered = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
        let (status, _) = hooks.twilio(&path, token, &delivered).await;
        assert_eq!(status, 200);
    }
    let b = wait_for_settled(&env, job_id(&via_b)).await;
    let platform = wait_for_settled(&env, job_id(&via_platform)).await;
    hooks.stop(worker).await;
    assert_eq!(b.status, "delivered", "{b:?}");
    assert_eq!(platform.status, "delivered", "{platform:?}");
    for job in [&via_b, &via_platform] {
        assert_eq!(
            env.events(job_id(job)).await,
            vec!["queued", "sent", "delivered"]
        );
    }
}

/// Waits until a provider report has moved the message past `sent`.
async fn wait_for_settled(env: &Env, id: uuid::Uuid) -> switchboard::store::messages::MessageRow {
    let client = env.db.client().await;
    wait_for(&format!("message {id} to leave sent"), || async {
        let row = switchboard::store::messages::get(&client, id)
            .await
            .unwrap()
            .ok_or("no row")?;
        match row.status.as_str() {
            "delivered" | "failed" | "bounced" => Ok(row),
            other => Err(other.to_string()),
        }
    })
    .await
}

#[tokio::test]
async fn another_integrations_valid_svix_secret_cannot_touch_its_messages_or_recipients() {
    let server = MockServer::start().await;
    mount_resend(&server, "re_key_agent_a_000", 'a').await;
    mount_resend(&server, "re_key_agent_b_000", 'b').await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_RESEND_BASE_URL", server.uri());
    let integration_a = connect_resend(&env, "agent-a", "re_key_agent_a_000", WHSEC).await;
    let integration_b = connect_resend(&env, "agent-b", "re_key_agent_b_000", WHSEC_B).await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let mut job = email_job("agent-b", "buyer@example.com");
    job["category"] = "transactional".into();
    let email_id = send(&env, &job).await;

    // Agent A, with its own valid secret on its own URL, reports B's email
    // as hard-bounced and complained about.
    let path_a = format!("/webhooks/resend/{integration_a}");
    for (i, kind) in ["email.bounced", "email.complained"].iter().enumerate() {
        let forged = resend_event(kind, &email_id, "buyer@example.com");
        let status = hooks
            .resend(&path_a, WHSEC, &format!("msg_forged_{i}"), &forged)
            .await;
        assert_eq!(status, 204, "a valid signature is answered");
    }
    // B's own report still applies.
    let delivered = resend_event("email.delivered", &email_id, "buyer@example.com");
    let path_b = format!("/webhooks/resend/{integration_b}");
    assert_eq!(
        hooks.resend(&path_b, WHSEC_B, "msg_b_1", &delivered).await,
        204
    );
    let row = wait_for_settled(&env, job_id(&job)).await;
    assert_eq!(row.status, "delivered");
    // And B can still write to its recipient, transactional included.
    let mut next = email_job("agent-b", "buyer@example.com");
    next["category"] = "transactional".into();
    env.publisher().await.publish(&next).await;
    let next_row = wait_for_outcome(&env, job_id(&next)).await;
    hooks.stop(worker).await;
    assert_eq!(next_row.status, "sent", "{next_row:?}");
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered"]
    );
}

// ---------------------------------------------------------------------------
// Issue 10 #11: Twilio behind TLS without SWITCHBOARD_PUBLIC_URL; Svix replays.

#[tokio::test]
async fn twilio_webhooks_without_a_public_url_get_a_clear_error_not_a_silent_401() {
    let server = MockServer::start().await;
    let mut env = Env::new().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    let integration = env
        .connect_integration(
            "agent-h",
            "sms",
            "twilio",
            json!({"account_sid": SID_A, "auth_token": "token-a", "phone_number": "+14155550100"}),
        )
        .await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    // Twilio called https://hooks.example.test through a TLS-terminating
    // proxy; the request reaches us as plain HTTP.
    let path = format!("/webhooks/twilio/{integration}");
    let sid = twilio_sid('1', 1);
    let params = reply(&sid, "STOP");
    let signature = reference::twilio("token-a", &format!("{PUBLIC}{path}"), &params);
    let (status, body) = hooks.twilio_signed(&path, &signature, &params).await;
    hooks.stop(worker).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("SWITCHBOARD_PUBLIC_URL"), "{body}");
}

#[tokio::test]
async fn a_resend_delivery_replayed_within_the_tolerance_is_applied_once() {
    let (_server, env, integration) = resend_setup(WHSEC).await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let job = email_job("agent-r", "buyer@example.com");
    let email_id = send(&env, &job).await;
    let path = format!("/webhooks/resend/{integration}");
    let opened = resend_event("email.opened", &email_id, "buyer@example.com");
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = reference::svix(WHSEC, "msg_open_1", &ts, opened.to_string().as_bytes());
    // Resend's delivery, then the same bytes captured and sent again.
    assert_eq!(
        hooks.svix(&path, "msg_open_1", &ts, &sig, &opened).await,
        204
    );
    assert_eq!(
        hooks.svix(&path, "msg_open_1", &ts, &sig, &opened).await,
        204
    );
    // A second, genuine open is another event.
    assert_eq!(hooks.resend(&path, WHSEC, "msg_open_2", &opened).await, 204);
    hooks.stop(worker).await;
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "opened", "opened"]
    );
}

// ---------------------------------------------------------------------------
// Issue 10 #14: START lifts only STOP's opt-out, once per incoming message.

#[tokio::test]
async fn start_lifts_only_an_opt_out_that_stop_set() {
    let (_server, env, integration) = setup().await;
    {
        let mut client = env.db.client().await;
        switchboard::store::opt_outs::add(
            &mut client,
            Some("agent-h"),
            Channel::Sms,
            "+14155550123",
            "manual",
            Some("operator"),
        )
        .await
        .unwrap();
    }
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let path = format!("/webhooks/twilio/{integration}");
    let (status, _) = hooks
        .twilio(&path, "token-a", &reply(&twilio_sid('1', 1), "START"))
        .await;
    assert_eq!(status, 200);
    let row = next_sms_outcome(&env).await;
    hooks.stop(worker).await;
    assert_eq!(row.status, "suppressed");
    assert_eq!(row.last_error.as_deref(), Some("manual"));
}

#[tokio::test]
async fn a_replayed_start_does_not_lift_a_later_stop() {
    let (_server, env, integration) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let path = format!("/webhooks/twilio/{integration}");
    let (stop1, start, stop2) = (twilio_sid('1', 1), twilio_sid('1', 2), twilio_sid('1', 3));
    for (sid, body) in [(&stop1, "STOP"), (&start, "START"), (&stop2, "STOP")] {
        let (status, _) = hooks.twilio(&path, "token-a", &reply(sid, body)).await;
        assert_eq!(status, 200);
    }
    // Someone who captured the START request sends it again.
    let (status, _) = hooks
        .twilio(&path, "token-a", &reply(&start, "START"))
        .await;
    assert_eq!(status, 200, "a duplicate is acknowledged, not retried");
    let row = next_sms_outcome(&env).await;
    hooks.stop(worker).await;
    assert_eq!(row.status, "suppressed");
    assert_eq!(row.last_error.as_deref(), Some("stop_keyword"));
    let received = count(
        &env,
        "SELECT count(*) FROM outbound_events WHERE event = 'received'",
    )
    .await;
    assert_eq!(received, 3, "one event per incoming message");
}

// ---------------------------------------------------------------------------
// Issue 10 #15: Svix input that must be refused before any arithmetic, and a
// secret that signs nothing.

#[tokio::test]
async fn a_resend_timestamp_far_out_of_range_gets_401_not_a_panic() {
    let mut env = Env::new().await;
    env.set("RESEND_WEBHOOK_SECRET", WHSEC);
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let body = resend_event("email.delivered", "e1", "buyer@example.com");
    for ts in ["-9223372036854775808", "9223372036854775807"] {
        let status = hooks
            .svix(
                "/webhooks/resend/platform",
                "msg_1",
                ts,
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                &body,
            )
            .await;
        assert_eq!(status, 401, "timestamp {ts}");
    }
    hooks.stop(worker).await;
}

#[tokio::test]
async fn an_empty_whsec_secret_verifies_nothing() {
    let (_server, env, integration) = resend_setup("whsec_").await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let job = email_job("agent-r", "buyer@example.com");
    let email_id = send(&env, &job).await;
    // Anyone can compute an HMAC with an empty key.
    let body = resend_event("email.bounced", &email_id, "buyer@example.com");
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = reference::svix_with_key(b"", "msg_1", &ts, body.to_string().as_bytes());
    let status = hooks
        .svix(
            &format!("/webhooks/resend/{integration}"),
            "msg_1",
            &ts,
            &sig,
            &body,
        )
        .await;
    hooks.stop(worker).await;
    assert_eq!(status, 401);
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));
}

// ---------------------------------------------------------------------------
// Issue 10 #7: a report that arrives before the send is recorded.

#[tokio::test]
async fn a_status_callback_that_arrives_before_the_send_is_recorded_still_applies() {
    let (_server, env, integration) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    // Twilio can call back before switchboard's batched write of the send's
    // outcome commits: here, before the job is even published. The first
    // message account A takes gets this SID.
    let sid = twilio_sid('a', 1);
    let (status, _) = hooks
        .twilio(
            &format!("/webhooks/twilio/{integration}"),
            "token-a",
            &[("MessageSid", sid.as_str()), ("MessageStatus", "delivered")],
        )
        .await;
    assert_eq!(status, 200);
    let job = sms_job("agent-h", "+14155550123");
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "delivered").await;
    hooks.stop(worker).await;
    assert_eq!(row.provider_message_id.as_deref(), Some(sid.as_str()));
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered"]
    );
    let orphans = count(
        &env,
        "SELECT count(*) FROM outbound_events WHERE message_id IS NULL AND event = 'delivered'",
    )
    .await;
    assert_eq!(orphans, 0, "the report was not also kept as an orphan");
}

// ---------------------------------------------------------------------------
// Issue 18 #7: a later, weaker opt-out never replaces a stronger one.

#[tokio::test]
async fn a_later_unsubscribe_does_not_weaken_a_stop_and_transactional_stays_blocked() {
    let (_server, env, integration) = setup().await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker);
    let (status, _) = hooks
        .twilio(
            &format!("/webhooks/twilio/{integration}"),
            "token-a",
            &reply(&twilio_sid('1', 1), "STOP"),
        )
        .await;
    assert_eq!(status, 200);
    {
        // A marketing-list unsubscribe for the same number, later.
        let mut client = env.db.client().await;
        switchboard::store::opt_outs::add(
            &mut client,
            Some("agent-h"),
            Channel::Sms,
            "+14155550123",
            "unsubscribe",
            Some("list"),
        )
        .await
        .unwrap();
    }
    let row = next_sms_outcome(&env).await;
    hooks.stop(worker).await;
    assert_eq!(row.status, "suppressed");
    assert_eq!(row.last_error.as_deref(), Some("stop_keyword"));
}

#[tokio::test]
async fn opt_outs_only_get_stronger() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    // Weakest first: `unsubscribe` stops marketing only; `stop_keyword`
    // stops everything but the person can lift it with START; the rest stop
    // everything until an operator removes them.
    let cases = [
        ("unsubscribe", "stop_keyword", "stop_keyword"),
        ("stop_keyword", "unsubscribe", "stop_keyword"),
        ("hard_bounce", "unsubscribe", "hard_bounce"),
        ("complaint", "unsubscribe", "complaint"),
        ("complaint", "stop_keyword", "complaint"),
        ("stop_keyword", "complaint", "complaint"),
        ("manual", "hard_bounce", "manual"),
        ("provider_rejected", "stop_keyword", "provider_rejected"),
        ("unsubscribe", "unsubscribe", "unsubscribe"),
    ];
    for (i, (first, then, kept)) in cases.iter().enumerate() {
        let address = format!("+1415555{:04}", 1000 + i);
        for reason in [first, then] {
            switchboard::store::opt_outs::add(
                &mut client,
                Some("agent-o"),
                Channel::Sms,
                &address,
                reason,
                Some(reason),
            )
            .await
            .unwrap();
        }
        let row = client
            .query_one(
                "SELECT reason, source FROM opt_outs WHERE agent_id = 'agent-o' AND address = $1",
                &[&address],
            )
            .await
            .unwrap();
        let (reason, source): (String, Option<String>) = (row.get(0), row.get(1));
        assert_eq!(&reason, kept, "{first} then {then}");
        assert_eq!(
            source.as_deref(),
            Some(*kept),
            "the source goes with the reason"
        );
    }
}

#[tokio::test]
async fn the_sweeper_applies_what_requests_left_pending_and_gives_up_on_orphans_after_the_window() {
    let db = TestDb::new().await;
    let pool = switchboard::store::pool(&db.url, 2).unwrap();
    let client = pool.get().await.unwrap();
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO outbound_messages
                (id, agent_id, channel, recipient, status, route, provider, provider_message_id)
             VALUES ($1, 'agent-s', 'sms', '+14155550123', 'sent', 'platform', 'twilio', 'SMswept')",
            &[&id],
        )
        .await
        .unwrap();
    // As a request leaves them when its process stops between storing and
    // applying: one for a message that exists, one for a message that never
    // appeared and has been waited for longer than the window.
    let event = |sid: &str| {
        json!({"kind": "status", "provider_message_id": sid, "event": "delivered",
               "error": null, "detail": {}})
    };
    client
        .execute(
            "INSERT INTO webhook_inbox
                (provider, delivery_id, kind, provider_message_id, event, received_at)
             VALUES ('twilio', 'SMswept:delivered', 'status', 'SMswept', $1, now()),
                    ('twilio', 'SMnever:delivered', 'status', 'SMnever', $2,
                     now() - make_interval(secs => $3))",
            &[
                &event("SMswept"),
                &event("SMnever"),
                &(switchboard::webhooks::inbox::ORPHAN_WINDOW.as_secs_f64() + 60.0),
            ],
        )
        .await
        .unwrap();
    let done = switchboard::webhooks::inbox::sweep_once(&pool)
        .await
        .unwrap();
    assert_eq!(done, 2);
    let row = switchboard::store::messages::get(&client, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "delivered");
    let unmatched: i64 = client
        .query_one(
            "SELECT count(*) FROM outbound_events
              WHERE message_id IS NULL AND provider_message_id = 'SMnever'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unmatched, 1, "kept as an event without a message");
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM webhook_inbox WHERE processed_at IS NULL OR event IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "both done, their content forgotten");
}

#[tokio::test]
async fn replies_take_effect_in_the_order_they_came_even_when_one_had_to_be_retried() {
    let db = TestDb::new().await;
    let pool = switchboard::store::pool(&db.url, 2).unwrap();
    let client = pool.get().await.unwrap();
    let reply = |keyword: &str| json!({"kind": "inbound", "channel": "sms", "from": "+14155550123", "keyword": keyword});
    // START came first but its apply failed and waits for a retry; STOP came
    // second and is due now.
    client
        .execute(
            "INSERT INTO webhook_inbox
                (provider, agent_id, delivery_id, kind, event, next_attempt_at)
             VALUES ('twilio', NULL, 'SM1:received', 'inbound', $1, now() + interval '1 hour'),
                    ('twilio', NULL, 'SM2:received', 'inbound', $2, now())",
            &[&reply("start"), &reply("stop")],
        )
        .await
        .unwrap();
    let sweep = || switchboard::webhooks::inbox::sweep_once(&pool);
    assert_eq!(
        sweep().await.unwrap(),
        0,
        "STOP waits for the earlier START"
    );
    client
        .execute("UPDATE webhook_inbox SET next_attempt_at = now()", &[])
        .await
        .unwrap();
    let mut done = 0;
    while done < 2 {
        done += sweep().await.unwrap();
    }
    let reasons: Vec<String> = client
        .query(
            "SELECT reason FROM opt_outs WHERE address = '+14155550123'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["stop_keyword"], "the later STOP holds");
}
