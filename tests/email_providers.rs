//! Email providers end to end: a job published to RabbitMQ reaches a mock
//! SendGrid / Mailgun / Postmark in exactly the format the real API takes
//! (SendGrid's checked against its official OpenAPI file in `tests/specs`),
//! its outcome is recorded with the provider's real message id, and the
//! provider's webhooks, signed the provider's way, move it on; forged,
//! tampered or stale ones get 401 and change nothing.
//!
//! Webhooks are signed by `reference`, written here from the providers' own
//! descriptions (SendGrid's SDK `EventWebhook`, Mailgun's "Securing
//! Webhooks"), never by the code under test, and checked against the
//! published examples where there are any.

mod common;

use common::*;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod reference {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use p256::ecdsa::signature::{Signer, Verifier};
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p256::pkcs8::{DecodePublicKey, EncodePublicKey};

    /// A SendGrid account's signing key (ours, for tests) and the
    /// verification key the dashboard would show for it: base64 DER SPKI.
    pub fn sendgrid_key(seed: u8) -> (SigningKey, String) {
        let signing = SigningKey::from_slice(&[seed; 32]).unwrap();
        let der = signing.verifying_key().to_public_key_der().unwrap();
        (signing, BASE64.encode(der.as_bytes()))
    }

    /// `X-Twilio-Email-Event-Webhook-Signature` as SendGrid makes it: ECDSA
    /// P-256 with SHA-256 over `timestamp + body`, DER, base64.
    pub fn sendgrid_sign(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let sig: Signature = key.sign(&signed);
        BASE64.encode(sig.to_der().as_bytes())
    }

    /// The SDK's `verify_signature`, to check this signer's reading of the
    /// algorithm against SendGrid's published example.
    pub fn sendgrid_verify(public_key: &str, sig: &str, timestamp: &str, body: &[u8]) -> bool {
        let key = VerifyingKey::from_public_key_der(&BASE64.decode(public_key).unwrap()).unwrap();
        let sig = Signature::from_der(&BASE64.decode(sig).unwrap()).unwrap();
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        key.verify(&signed, &sig).is_ok()
    }
}

#[test]
fn the_reference_signers_agree_with_the_providers_published_examples() {
    // sendgrid/sendgrid-python test/unit/test_eventwebhook.py.
    let body = "[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\",\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\",\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\",\"timestamp\":1600112492}]\r\n";
    assert!(reference::sendgrid_verify(
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==",
        "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=",
        "1600112502",
        body.as_bytes()
    ));
    // And what this signer makes, the same verifier accepts.
    let (key, public) = reference::sendgrid_key(7);
    let sig = reference::sendgrid_sign(&key, "1600112502", body.as_bytes());
    assert!(reference::sendgrid_verify(
        &public,
        &sig,
        "1600112502",
        body.as_bytes()
    ));
    assert!(!reference::sendgrid_verify(
        &public,
        &sig,
        "1600112503",
        body.as_bytes()
    ));
}

/// Publishes `job` and waits for its settled row (sent, failed, unknown or
/// suppressed): a test expecting one fails at once when another happens.
async fn outcome(env: &Env, job: &serde_json::Value) -> switchboard::store::messages::MessageRow {
    env.publisher().await.publish(job).await;
    let client = env.db.client().await;
    let id = job_id(job);
    wait_for(&format!("message {id} to settle"), || async {
        let row = switchboard::store::messages::get(&client, id)
            .await
            .unwrap()
            .ok_or("no row")?;
        match row.status.as_str() {
            "sent" | "failed" | "unknown" | "suppressed" => Ok(row),
            other => Err(other.to_string()),
        }
    })
    .await
}

async fn opt_out_reason(env: &Env, agent: &str, address: &str) -> Option<String> {
    env.db
        .client()
        .await
        .query_opt(
            "SELECT reason FROM opt_outs WHERE agent_id = $1 AND channel = 'email' AND address = $2",
            &[&agent, &address],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// The webhook endpoint of a running worker's HTTP server.
struct Hooks {
    base: String,
    token: tokio_util::sync::CancellationToken,
    http: reqwest::Client,
}

impl Hooks {
    async fn start(env: &Env, worker: &RunningWorker) -> Self {
        let (base, token, _) = env.start_http(worker);
        let http = reqwest::Client::new();
        wait_until("the webhook server answers", || async {
            http.get(format!("{base}/healthz")).send().await.ok()
        })
        .await;
        Self { base, token, http }
    }

    async fn stop(self, worker: RunningWorker) {
        self.token.cancel();
        worker.stop().await;
    }

    async fn post(&self, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> u16 {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    }

    /// A SendGrid Event Webhook request signed with `key` at `timestamp`.
    async fn sendgrid(
        &self,
        path: &str,
        key: &p256::ecdsa::SigningKey,
        timestamp: i64,
        body: &[u8],
    ) -> u16 {
        let ts = timestamp.to_string();
        let sig = reference::sendgrid_sign(key, &ts, body);
        self.post(
            path,
            &[
                ("x-twilio-email-event-webhook-signature", sig),
                ("x-twilio-email-event-webhook-timestamp", ts),
            ],
            body.to_vec(),
        )
        .await
    }
}

// ---------------------------------------------------------------------------
// SendGrid

const SG_KEY: &str = "SG.agent-key.0123456789";

async fn mount_sendgrid(server: &MockServer, api_key: &str, message_id: &str) {
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .and(header("authorization", format!("Bearer {api_key}")))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(202).insert_header("x-message-id", message_id))
        .mount(server)
        .await;
}

/// Every request SendGrid received, checked against its official spec, as
/// JSON bodies.
async fn sendgrid_bodies(server: &MockServer) -> Vec<serde_json::Value> {
    let spec = spec("sendgrid_mail_v3.json");
    let schema = request_schema(&spec, "/v3/mail/send", "post", "application/json");
    let mut out = Vec::new();
    for r in server.received_requests().await.unwrap() {
        assert_eq!(r.url.path(), "/v3/mail/send");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let names: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
        assert_fields_match_schema(&schema, &names);
        assert_valid_against_spec(&spec, &schema, &body);
        // What the schema leaves loose: every personalization has a
        // recipient, and content (when given) is text before html.
        for p in body["personalizations"].as_array().unwrap() {
            assert!(!p["to"].as_array().unwrap().is_empty());
        }
        out.push(body);
    }
    out
}

async fn connect_sendgrid(env: &Env, agent: &str, public_key: &str) -> uuid::Uuid {
    env.connect_integration(
        agent,
        "email",
        "sendgrid",
        json!({"api_key": SG_KEY, "from_email": "jane@realty.test", "from_name": "Jane Realty",
               "webhook_public_key": public_key}),
    )
    .await
}

#[tokio::test]
async fn sendgrid_gets_its_exact_request_and_the_x_message_id_is_recorded() {
    let server = MockServer::start().await;
    mount_sendgrid(&server, SG_KEY, "W86EgYT6SQKk0lRflfLRsA").await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SENDGRID_BASE_URL", server.uri());
    let (_, public) = reference::sendgrid_key(1);
    let integration = connect_sendgrid(&env, "agent-sg", &public).await;
    let worker = env.start_worker();
    let mut job = email_job("agent-sg", "Buyer@Example.com");
    job["reply_to"] = "office@realty.test".into();
    job["campaign_id"] = "spring-open-houses".into();
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "sent");
    assert_eq!(row.route.as_deref(), Some("agent"));
    assert_eq!(row.provider.as_deref(), Some("sendgrid"));
    assert_eq!(row.integration_id, Some(integration));
    assert_eq!(
        row.provider_message_id.as_deref(),
        Some("W86EgYT6SQKk0lRflfLRsA")
    );

    let bodies = sendgrid_bodies(&server).await;
    assert_eq!(bodies.len(), 1);
    let b = &bodies[0];
    assert_eq!(
        b["from"],
        json!({"email": "jane@realty.test", "name": "Jane Realty"})
    );
    assert_eq!(b["reply_to"], json!({"email": "office@realty.test"}));
    assert_eq!(b["subject"], "New listing near you");
    assert_eq!(
        b["content"],
        json!([{"type": "text/plain", "value": "3 bed, 2 bath"},
               {"type": "text/html", "value": "<p>3 bed, 2 bath</p>"}])
    );
    assert_eq!(b["categories"], json!(["spring-open-houses"]));
    let p = &b["personalizations"][0];
    assert_eq!(p["to"], json!([{"email": "buyer@example.com"}]));
    assert_eq!(
        p["custom_args"],
        json!({"switchboard_job_id": job_id(&job).to_string(), "listing": "L-77"})
    );
}

#[tokio::test]
async fn the_platform_sendgrid_account_sends_when_no_resend_key_is_set() {
    let server = MockServer::start().await;
    mount_sendgrid(&server, "SG.platform-key", "PlatformMsgId000000001").await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SENDGRID_BASE_URL", server.uri())
        .set("SENDGRID_API_KEY", "SG.platform-key")
        .set("EMAIL_FROM", "Acme Homes <no-reply@acme.test>");
    let worker = env.start_worker();
    let job = email_job("agent-without-account", "buyer@example.com");
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "sent");
    assert_eq!(row.route.as_deref(), Some("platform"));
    assert_eq!(row.provider.as_deref(), Some("sendgrid"));
    assert_eq!(
        row.provider_message_id.as_deref(),
        Some("PlatformMsgId000000001")
    );
    let bodies = sendgrid_bodies(&server).await;
    assert_eq!(
        bodies[0]["from"],
        json!({"email": "no-reply@acme.test", "name": "Acme Homes"})
    );
}

/// Sender identity, case (b): an agent without its own account but with
/// branding gets its name on the platform's address and its reply_email as
/// Reply-To, in the request the provider receives.
#[tokio::test]
async fn the_platform_account_sends_with_the_agents_name_and_reply_to() {
    let server = MockServer::start().await;
    mount_sendgrid(&server, "SG.platform-key", "PlatformMsgId000000002").await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SENDGRID_BASE_URL", server.uri())
        .set("SENDGRID_API_KEY", "SG.platform-key")
        .set("EMAIL_FROM", "Acme Homes <no-reply@acme.test>");
    switchboard::app::set_agent(
        &env.settings(),
        switchboard::app::AgentSettings {
            agent: "agent-branded".into(),
            company_name: Some("Realty Co".into()),
            reply_email: Some("jane@realty.test".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let worker = env.start_worker();
    let job = email_job("agent-branded", "buyer@example.com");
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "sent");
    assert_eq!(row.route.as_deref(), Some("platform"));
    let bodies = sendgrid_bodies(&server).await;
    assert_eq!(
        bodies[0]["from"],
        json!({"email": "no-reply@acme.test", "name": "Realty Co"})
    );
    assert_eq!(bodies[0]["reply_to"], json!({"email": "jane@realty.test"}));
}

/// SendGrid takes no idempotency key: a 5xx may have been sent, so it is
/// recorded `unknown` and never sent again (at default settings).
#[tokio::test]
async fn a_sendgrid_5xx_is_recorded_unknown_and_not_sent_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"errors": [{"field": null, "message": "internal error"}]})),
        )
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SENDGRID_BASE_URL", server.uri());
    let (_, public) = reference::sendgrid_key(1);
    connect_sendgrid(&env, "agent-sg", &public).await;
    let worker = env.start_worker();
    let job = email_job("agent-sg", "buyer@example.com");
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "unknown");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_sendgrid_400_fails_at_once_with_the_field_it_names() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"errors": [
            {"message": "The from address does not match a verified Sender Identity.", "field": "from", "help": null}
        ]})))
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SENDGRID_BASE_URL", server.uri());
    let (_, public) = reference::sendgrid_key(1);
    connect_sendgrid(&env, "agent-sg", &public).await;
    let worker = env.start_worker();
    let job = email_job("agent-sg", "buyer@example.com");
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 1);
    let error = row.last_error.unwrap();
    assert!(error.contains("HTTP 400 [from]"), "{error}");
    assert!(!error.contains(SG_KEY));
}

fn sendgrid_events(message_id: &str, events: &[(&str, &str, &str)]) -> Vec<u8> {
    let events: Vec<_> = events
        .iter()
        .map(|(event_id, event, extra_type)| {
            let mut e = json!({
                "email": "buyer@example.com", "timestamp": 1700000000, "event": event,
                "sg_event_id": event_id,
                "sg_message_id": format!("{message_id}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"),
                "smtp-id": format!("<{message_id}@ismtpd0039p1iad1.sendgrid.net>"),
                "switchboard_job_id": "ignored-by-switchboard",
            });
            if !extra_type.is_empty() {
                e["type"] = (*extra_type).into();
                e["reason"] = "550 5.1.1 The email account that you tried to reach does not exist".into();
            }
            e
        })
        .collect();
    // SendGrid's bodies end with CRLF, as in the SDK example.
    let mut body = serde_json::to_vec(&events).unwrap();
    body.extend_from_slice(b"\r\n");
    body
}

#[tokio::test]
async fn sendgrid_signed_events_move_the_message_and_forgeries_change_nothing() {
    let server = MockServer::start().await;
    mount_sendgrid(&server, SG_KEY, "LRzXl_NHStOGhQ4kofSm_A").await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SENDGRID_BASE_URL", server.uri());
    let (key, public) = reference::sendgrid_key(1);
    let (other_key, _) = reference::sendgrid_key(2);
    let integration = connect_sendgrid(&env, "agent-sg", &public).await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker).await;
    let job = email_job("agent-sg", "buyer@example.com");
    assert_eq!(outcome(&env, &job).await.status, "sent");

    let path = format!("/webhooks/sendgrid/{integration}");
    let now = chrono::Utc::now().timestamp();
    let delivered = sendgrid_events(
        "LRzXl_NHStOGhQ4kofSm_A",
        &[
            ("ev-processed", "processed", ""),
            ("ev-delivered", "delivered", ""),
        ],
    );
    let bounced = sendgrid_events(
        "LRzXl_NHStOGhQ4kofSm_A",
        &[("ev-bounce", "bounce", "bounce")],
    );

    // Refused, with nothing written: another account's key, one flipped
    // byte, no signature, a capture replayed eleven minutes later.
    assert_eq!(
        hooks.sendgrid(&path, &other_key, now, &delivered).await,
        401
    );
    let ts = now.to_string();
    let sig = reference::sendgrid_sign(&key, &ts, &delivered);
    let mut tampered = delivered.clone();
    let at = tampered.iter().position(|b| *b == b'd').unwrap();
    tampered[at] = b'D';
    let signed = [
        ("x-twilio-email-event-webhook-signature", sig.clone()),
        ("x-twilio-email-event-webhook-timestamp", ts.clone()),
    ];
    assert_eq!(hooks.post(&path, &signed, tampered).await, 401);
    assert_eq!(hooks.post(&path, &[], delivered.clone()).await, 401);
    assert_eq!(
        hooks.sendgrid(&path, &key, now - 11 * 60, &delivered).await,
        401
    );
    assert_eq!(count(&env, "SELECT count(*) FROM webhook_inbox").await, 0);
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));

    // Signed by the account's key: applied, and once only.
    assert_eq!(hooks.post(&path, &signed, delivered.clone()).await, 200);
    env.wait_for_status(job_id(&job), "delivered").await;
    assert_eq!(hooks.sendgrid(&path, &key, now, &delivered).await, 200);
    assert_eq!(hooks.sendgrid(&path, &key, now, &bounced).await, 200);
    env.wait_for_status(job_id(&job), "bounced").await;
    assert_eq!(
        opt_out_reason(&env, "agent-sg", "buyer@example.com")
            .await
            .as_deref(),
        Some("hard_bounce")
    );
    // A hard bounce stops even transactional mail to the address.
    let mut receipt = email_job("agent-sg", "buyer@example.com");
    receipt["category"] = "transactional".into();
    let row = outcome(&env, &receipt).await;
    hooks.stop(worker).await;
    assert_eq!(row.status, "suppressed");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered", "bounced"]
    );
}

#[tokio::test]
async fn another_sendgrid_accounts_valid_key_cannot_touch_its_messages() {
    let server = MockServer::start().await;
    mount_sendgrid(&server, SG_KEY, "MsgOfAgentA00000000001").await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SENDGRID_BASE_URL", server.uri());
    let (_, public_a) = reference::sendgrid_key(1);
    let (key_b, public_b) = reference::sendgrid_key(2);
    connect_sendgrid(&env, "agent-a", &public_a).await;
    let integration_b = connect_sendgrid(&env, "agent-b", &public_b).await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker).await;
    let job = email_job("agent-a", "buyer@example.com");
    assert_eq!(outcome(&env, &job).await.status, "sent");
    // Agent B signs, correctly, a spam report about agent A's message.
    let forged = sendgrid_events("MsgOfAgentA00000000001", &[("ev-spam", "spamreport", "")]);
    let path_b = format!("/webhooks/sendgrid/{integration_b}");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(hooks.sendgrid(&path_b, &key_b, now, &forged).await, 200);
    // Its row is stored for B's account, and touches nothing of A's.
    wait_until("B's event is stored", || async {
        (count(&env, "SELECT count(*) FROM webhook_inbox").await == 1).then_some(())
    })
    .await;
    hooks.stop(worker).await;
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));
    assert_eq!(
        opt_out_reason(&env, "agent-a", "buyer@example.com").await,
        None
    );
    assert_eq!(env.events(job_id(&job)).await, vec!["queued", "sent"]);
}

// ---------------------------------------------------------------------------
// Mailgun

const MG_KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";
const MG_SIGNING: &str = "whk-9b1f0b3c7e2d4a68a1c5e7f9d2b4c6e8";

/// `multipart/form-data` fields as (name, value), in order, read with no
/// help from the code under test.
fn multipart_fields(content_type: &str, body: &[u8]) -> Vec<(String, String)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a multipart boundary")
        .trim_matches('"');
    let text = String::from_utf8(body.to_vec()).unwrap();
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for part in text.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let (head, value) = part
            .trim_start_matches("\r\n")
            .split_once("\r\n\r\n")
            .unwrap();
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        out.push((name.to_string(), value.trim_end_matches("\r\n").to_string()));
    }
    out
}

fn mailgun_sign(key: &str, timestamp: &str, token: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn mailgun_event(ts: i64, token: &str, key: &str, event: serde_json::Value) -> Vec<u8> {
    let ts = ts.to_string();
    json!({
        "signature": {"timestamp": ts, "token": token, "signature": mailgun_sign(key, &ts, token)},
        "event-data": event,
    })
    .to_string()
    .into_bytes()
}

async fn connect_mailgun(env: &Env, agent: &str) -> uuid::Uuid {
    env.connect_integration(
        agent,
        "email",
        "mailgun",
        json!({"api_key": MG_KEY, "domain": "mg.realty.test", "region": "eu",
               "from_email": "jane@realty.test", "from_name": "Jane Realty",
               "webhook_signing_key": MG_SIGNING}),
    )
    .await
}

async fn mount_mailgun(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v3/mg.realty.test/messages"))
        .and(header("authorization", basic_auth("api", MG_KEY).as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "<20261125101500.1.5B2C7D1E@mg.realty.test>",
            "message": "Queued. Thank you."
        })))
        .mount(server)
        .await;
}

#[tokio::test]
async fn mailgun_gets_multipart_with_basic_auth_and_the_id_is_stored_without_brackets() {
    let server = MockServer::start().await;
    mount_mailgun(&server).await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_MAILGUN_BASE_URL", server.uri());
    connect_mailgun(&env, "agent-mg").await;
    let worker = env.start_worker();
    let mut job = email_job("agent-mg", "buyer@example.com");
    job["reply_to"] = "office@realty.test".into();
    job["campaign_id"] = "spring".into();
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "sent");
    assert_eq!(row.provider.as_deref(), Some("mailgun"));
    assert_eq!(
        row.provider_message_id.as_deref(),
        Some("20261125101500.1.5B2C7D1E@mg.realty.test")
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let ct = requests[0]
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let fields = multipart_fields(&ct, &requests[0].body);
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("from"), Some("\"Jane Realty\" <jane@realty.test>"));
    assert_eq!(get("to"), Some("buyer@example.com"));
    assert_eq!(get("subject"), Some("New listing near you"));
    assert_eq!(get("text"), Some("3 bed, 2 bath"));
    assert_eq!(get("html"), Some("<p>3 bed, 2 bath</p>"));
    assert_eq!(get("h:Reply-To"), Some("office@realty.test"));
    assert_eq!(get("o:tag"), Some("spring"));
    assert_eq!(get("v:listing"), Some("L-77"));
    let job_id_text = job_id(&job).to_string();
    assert_eq!(get("v:switchboard_job_id"), Some(job_id_text.as_str()));
    // Every field is one Mailgun documents (plain, or an o:/h:/v: option).
    for (name, _) in &fields {
        assert!(
            ["from", "to", "subject", "text", "html"].contains(&name.as_str())
                || name.starts_with("o:")
                || name.starts_with("h:")
                || name.starts_with("v:"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn mailgun_webhooks_are_verified_and_stale_or_replayed_tokens_are_refused() {
    let server = MockServer::start().await;
    mount_mailgun(&server).await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_MAILGUN_BASE_URL", server.uri());
    let integration = connect_mailgun(&env, "agent-mg").await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker).await;
    let job = email_job("agent-mg", "buyer@example.com");
    assert_eq!(outcome(&env, &job).await.status, "sent");
    let path = format!("/webhooks/mailgun/{integration}");
    let message = json!({"headers": {"message-id": "20261125101500.1.5B2C7D1E@mg.realty.test"}});
    let delivered = json!({"event": "delivered", "id": "ev-delivered-1",
        "recipient": "buyer@example.com", "message": message});
    let failed = json!({"event": "failed", "id": "ev-failed-1", "severity": "permanent",
        "reason": "bounce", "recipient": "buyer@example.com", "message": message,
        "delivery-status": {"code": 550, "description": "No such mailbox"}});
    let now = chrono::Utc::now().timestamp();

    // Another key, a tampered byte, a stale timestamp: 401, nothing written.
    let wrong = mailgun_event(now, "token-0001", "another-key", delivered.clone());
    assert_eq!(hooks.post(&path, &[], wrong).await, 401);
    let good = mailgun_event(now, "token-0001", MG_SIGNING, delivered.clone());
    let mut tampered = good.clone();
    let text = String::from_utf8(tampered.clone()).unwrap();
    let at = text.find("token-0001").unwrap() + "token-000".len();
    tampered[at] = b'2';
    assert_eq!(hooks.post(&path, &[], tampered).await, 401);
    let stale = mailgun_event(now - 10 * 60, "token-0003", MG_SIGNING, delivered.clone());
    assert_eq!(hooks.post(&path, &[], stale).await, 401);
    assert_eq!(count(&env, "SELECT count(*) FROM webhook_inbox").await, 0);

    assert_eq!(hooks.post(&path, &[], good.clone()).await, 200);
    env.wait_for_status(job_id(&job), "delivered").await;
    // The same request again: its token was used.
    assert_eq!(hooks.post(&path, &[], good).await, 401);
    let bounce = mailgun_event(now, "token-0004", MG_SIGNING, failed);
    assert_eq!(hooks.post(&path, &[], bounce).await, 200);
    env.wait_for_status(job_id(&job), "bounced").await;
    hooks.stop(worker).await;
    assert_eq!(
        opt_out_reason(&env, "agent-mg", "buyer@example.com")
            .await
            .as_deref(),
        Some("hard_bounce")
    );
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered", "bounced"]
    );
    assert_eq!(count(&env, "SELECT count(*) FROM webhook_inbox").await, 2);
}

// ---------------------------------------------------------------------------
// Postmark

const PM_TOKEN: &str = "b7d5a1e2-0c39-4f4e-9e0a-3c2f1d5e6a7b";
const PM_PASSWORD: &str = "hook-password-0123456789";

async fn connect_postmark(env: &Env, agent: &str) -> uuid::Uuid {
    env.connect_integration(
        agent,
        "email",
        "postmark",
        json!({"server_token": PM_TOKEN, "from_email": "jane@realty.test", "from_name": "Jane Realty",
               "webhook_password": PM_PASSWORD}),
    )
    .await
}

#[tokio::test]
async fn postmark_gets_its_exact_request_and_an_inactive_recipient_is_opted_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/email"))
        .and(header("x-postmark-server-token", PM_TOKEN))
        .and(header("content-type", "application/json"))
        .and(wiremock::matchers::body_partial_json(
            json!({"To": "gone@example.com"}),
        ))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "ErrorCode": 406,
            "Message": "You tried to send to recipient(s) that have been marked as inactive."
        })))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/email"))
        .and(header("x-postmark-server-token", PM_TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "To": "buyer@example.com", "SubmittedAt": "2026-11-25T10:15:00.0000000-05:00",
            "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817", "ErrorCode": 0, "Message": "OK"
        })))
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_POSTMARK_BASE_URL", server.uri());
    connect_postmark(&env, "agent-pm").await;
    let worker = env.start_worker();
    let mut job = email_job("agent-pm", "buyer@example.com");
    job["reply_to"] = "office@realty.test".into();
    job["campaign_id"] = "spring".into();
    let row = outcome(&env, &job).await;
    assert_eq!(row.status, "sent");
    assert_eq!(
        row.provider_message_id.as_deref(),
        Some("b7bc2f4a-e38e-4336-af7d-e6c392c2f817")
    );
    let body: serde_json::Value =
        serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "From": "\"Jane Realty\" <jane@realty.test>", "To": "buyer@example.com",
            "Subject": "New listing near you", "HtmlBody": "<p>3 bed, 2 bath</p>",
            "TextBody": "3 bed, 2 bath", "ReplyTo": "office@realty.test", "Tag": "spring",
            "Metadata": {"listing": "L-77", "switchboard_job_id": job_id(&job).to_string()},
            "MessageStream": "outbound"
        })
    );

    // 406: the address cannot receive; failed once, and later jobs to it
    // are suppressed without a call.
    let gone = email_job("agent-pm", "gone@example.com");
    let row = outcome(&env, &gone).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 1);
    assert_eq!(
        opt_out_reason(&env, "agent-pm", "gone@example.com")
            .await
            .as_deref(),
        Some("provider_rejected")
    );
    let again = email_job("agent-pm", "gone@example.com");
    let row = outcome(&env, &again).await;
    worker.stop().await;
    assert_eq!(row.status, "suppressed");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn postmark_webhooks_need_the_password_and_a_hard_bounce_opts_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/email"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "To": "buyer@example.com", "SubmittedAt": "2026-11-25T10:15:00Z",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "ErrorCode": 0, "Message": "OK"
        })))
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_POSTMARK_BASE_URL", server.uri());
    let integration = connect_postmark(&env, "agent-pm").await;
    let worker = env.start_worker();
    let hooks = Hooks::start(&env, &worker).await;
    let job = email_job("agent-pm", "buyer@example.com");
    assert_eq!(outcome(&env, &job).await.status, "sent");
    let path = format!("/webhooks/postmark/{integration}");
    let m = "883953f4-6105-42a2-a16a-77a8eac79483";
    let delivered = json!({"RecordType": "Delivery", "MessageID": m, "Recipient": "buyer@example.com",
        "DeliveredAt": "2026-11-25T10:15:02Z", "MessageStream": "outbound",
        "Metadata": {"switchboard_job_id": job_id(&job).to_string()}});
    let bounced = json!({"RecordType": "Bounce", "ID": 4323372036854775807u64, "Type": "HardBounce",
        "TypeCode": 1, "MessageID": m, "Email": "buyer@example.com",
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found)."});
    let auth = |p: &str| vec![("authorization", basic_auth("postmark", p))];
    let bytes = |v: &serde_json::Value| v.to_string().into_bytes();

    assert_eq!(hooks.post(&path, &[], bytes(&delivered)).await, 401);
    assert_eq!(
        hooks
            .post(&path, &auth("wrong-password"), bytes(&delivered))
            .await,
        401
    );
    assert_eq!(count(&env, "SELECT count(*) FROM webhook_inbox").await, 0);
    assert_eq!(
        hooks
            .post(&path, &auth(PM_PASSWORD), bytes(&delivered))
            .await,
        200
    );
    env.wait_for_status(job_id(&job), "delivered").await;
    // The same event again is stored once.
    assert_eq!(
        hooks
            .post(&path, &auth(PM_PASSWORD), bytes(&delivered))
            .await,
        200
    );
    assert_eq!(
        hooks.post(&path, &auth(PM_PASSWORD), bytes(&bounced)).await,
        200
    );
    env.wait_for_status(job_id(&job), "bounced").await;
    hooks.stop(worker).await;
    assert_eq!(
        opt_out_reason(&env, "agent-pm", "buyer@example.com")
            .await
            .as_deref(),
        Some("hard_bounce")
    );
    assert_eq!(count(&env, "SELECT count(*) FROM webhook_inbox").await, 2);
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "sent", "delivered", "bounced"]
    );
}
