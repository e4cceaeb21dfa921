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

/// A fresh environment (at default settings when `defaults`) whose
/// `base_url_var` points at `server`, with agent's integration connected.
async fn env_with(
    defaults: bool,
    base_url_var: &str,
    server: &MockServer,
    (agent, channel, provider): (&str, &str, &str),
    settings: serde_json::Value,
) -> (Env, uuid::Uuid) {
    let mut env = if defaults {
        Env::with_defaults().await
    } else {
        Env::new().await
    };
    env.set(base_url_var, server.uri());
    let id = env
        .connect_integration(agent, channel, provider, settings)
        .await;
    (env, id)
}

// ---------------------------------------------------------------- Africa's Talking

const AT_KEY: &str = "atsk_0123456789abcdef0123456789abcdef";
const AT_TOKEN: &str = "at-callback-token-5f2c9e1b";

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
        json!({"username": "acme", "api_key": AT_KEY, "sender_id": "ACME",
               "webhook_token": AT_TOKEN}),
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
    assert_eq!(sent["provider_response"]["num_segments"], 1);
    assert_eq!(sent["provider_response"]["encoding"], "GSM-7");
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

// ---------------------------------------------------------------- webhooks, shared

/// Signers written from the providers' documentation, independent of
/// `switchboard::providers::*::webhook`.
mod reference {
    use hmac::{Hmac, KeyInit, Mac};

    /// Hex HMAC-SHA256 of `body` keyed by `key`: Meta's `X-Hub-Signature-256`
    /// (after `sha256=`, as the official Node SDK's `generateXHub256Sig`),
    /// and VAPI's HMAC credential with a body-only payload.
    pub fn hmac_sha256_hex(key: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }
}

#[test]
fn the_reference_signer_reproduces_rfc_4231() {
    // RFC 4231, test case 2.
    assert_eq!(
        reference::hmac_sha256_hex("Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// The HTTP server of a test, posting as a provider would.
struct Server {
    base: String,
    token: tokio_util::sync::CancellationToken,
    http: reqwest::Client,
}

impl Server {
    async fn start(env: &Env, worker: &RunningWorker) -> Self {
        let (base, token, _) = env.start_http(worker);
        let http = reqwest::Client::new();
        wait_until("the HTTP server answers", || async {
            http.get(format!("{base}/healthz")).send().await.ok()
        })
        .await;
        Self { base, token, http }
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap().status().as_u16()
    }

    async fn stop(self, worker: RunningWorker) {
        self.token.cancel();
        worker.stop().await;
    }
}

/// Waits until `sql` (a `SELECT count(*)`) counts one row.
async fn wait_for_one(env: &Env, what: &str, sql: &str) {
    wait_until(what, || async {
        (count(env, sql).await == 1).then_some(())
    })
    .await;
}

async fn events_named(env: &Env, event: &str) -> i64 {
    env.db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM outbound_events WHERE event = $1",
            &[&event],
        )
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------- Meta WhatsApp

const PHONE_NUMBER_ID: &str = "106540352242922";
const META_TOKEN: &str = "EAAG-test-access-token";
const APP_SECRET: &str = "meta-app-secret-0123456789";
const VERIFY_TOKEN: &str = "meta-verify-token";
const WA_TO: &str = "+14155550123";

/// Accepts only a send the Cloud API takes: `messaging_product`
/// `whatsapp`, a recipient, and either a `text` with a body or a
/// `template` with a name and a language code, nothing unknown on top.
struct CloudApiMessage;

impl wiremock::Match for CloudApiMessage {
    fn matches(&self, r: &wiremock::Request) -> bool {
        let Ok(b) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            return false;
        };
        let known = [
            "messaging_product",
            "recipient_type",
            "to",
            "type",
            "text",
            "template",
        ];
        let Some(o) = b.as_object() else { return false };
        if o.keys().any(|k| !known.contains(&k.as_str())) {
            return false;
        }
        let s = |p: &str| b.pointer(p).and_then(|v| v.as_str());
        let ok_type = match s("/type") {
            Some("text") => {
                s("/text/body").is_some_and(|t| !t.is_empty()) && o.get("template").is_none()
            }
            Some("template") => {
                s("/template/name").is_some()
                    && s("/template/language/code").is_some()
                    && o.get("text").is_none()
                    && b.pointer("/template/components").is_none_or(|c| {
                        c.as_array().is_some_and(|a| {
                            a.iter().all(|c| {
                                matches!(c["type"].as_str(), Some("header" | "body" | "button"))
                                    && c["parameters"].is_array()
                            })
                        })
                    })
            }
            _ => false,
        };
        s("/messaging_product") == Some("whatsapp") && s("/to").is_some() && ok_type
    }
}

/// Answers each accepted send with a new wamid.
struct Wamids(std::sync::atomic::AtomicUsize);

impl wiremock::Respond for Wamids {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": WA_TO, "wa_id": "14155550123"}],
            "messages": [{"id": format!("wamid.HBgL{n:04}"), "message_status": "accepted"}]
        }))
    }
}

async fn mount_meta(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(format!("/{PHONE_NUMBER_ID}/messages")))
        .and(header(
            "authorization",
            format!("Bearer {META_TOKEN}").as_str(),
        ))
        .and(header("content-type", "application/json"))
        .and(CloudApiMessage)
        .respond_with(Wamids(Default::default()))
        .mount(server)
        .await;
}

async fn meta_env(server: &MockServer, defaults: bool) -> (Env, uuid::Uuid) {
    let settings = json!({"phone_number_id": PHONE_NUMBER_ID, "access_token": META_TOKEN,
        "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN,
        "business_account_id": "102290129340398"});
    let owner = ("agent-wa", "whatsapp", "meta");
    env_with(
        defaults,
        "SWITCHBOARD_WHATSAPP_BASE_URL",
        server,
        owner,
        settings,
    )
    .await
}

fn wa_job(extra: serde_json::Value) -> serde_json::Value {
    let mut job = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "agent_id": "agent-wa",
        "channel": "whatsapp",
        "to": WA_TO,
        "category": "transactional",
    });
    job.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    job
}

fn open_house_template(fallback: bool) -> serde_json::Value {
    let mut t = json!({"name": "open_house", "language": "en_US", "body_params": ["Jane", "Saturday"],
        "header": {"type": "image", "link": "https://cdn.example.test/house.jpg"}});
    if fallback {
        t["fallback"] = json!(true);
    }
    t
}

/// A webhook body as Meta sends it, for one change value.
fn meta_body(value: serde_json::Value) -> String {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": value}]}]})
    .to_string()
}

fn inbound(message_id: &str, text: &str) -> String {
    meta_body(json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "14155550123"}],
        "messages": [{"from": "14155550123", "id": message_id, "timestamp": "1700000000",
                      "type": "text", "text": {"body": text}}]}))
}

async fn meta_post(server: &Server, integration: uuid::Uuid, secret: &str, body: &str) -> u16 {
    let sig = format!(
        "sha256={}",
        reference::hmac_sha256_hex(secret, body.as_bytes())
    );
    server
        .post(
            &format!("/webhooks/meta/{integration}"),
            &[("x-hub-signature-256", sig.as_str())],
            body,
        )
        .await
}

/// Meta's own OpenAPI for the WhatsApp Business Platform (facebook/openapi,
/// copied to tests/specs), read once.
fn meta_spec() -> &'static serde_json::Value {
    static SPEC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/specs/business-messaging-api_v23.0.yaml"
        );
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// The bodies Meta received, each checked against its OpenAPI: the send
/// operation takes a `Message`; the common properties are required, every
/// top-level field is declared for the message's type, and the `text` or
/// `template` object validates against its schema. (The spec's `allOf` with
/// `additionalProperties: false` would refuse every real text message if
/// validated whole, so the parts are checked one by one.)
async fn meta_bodies(server: &MockServer) -> Vec<serde_json::Value> {
    let spec = meta_spec();
    let op = &spec["paths"]["/{Version}/{Phone-Number-ID}/messages"]["post"];
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Message"
    );
    let schemas = &spec["components"]["schemas"];
    let base = &schemas["BaseMessageProperties"];
    let sent = bodies(server).await;
    for b in &sent {
        let kind = b["type"].as_str().unwrap();
        let branch = match kind {
            "text" => &schemas["TextMessage"]["allOf"][1],
            "template" => &schemas["TemplateMessage"]["allOf"][1],
            other => panic!("unexpected message type {other}"),
        };
        let mut declared = base.clone();
        let props = declared["properties"].as_object_mut().unwrap();
        props.extend(branch["properties"].as_object().unwrap().clone());
        let fields: Vec<String> = b.as_object().unwrap().keys().cloned().collect();
        let mut required = base["required"].as_array().unwrap().clone();
        required.extend(branch["required"].as_array().unwrap().iter().cloned());
        declared["required"] = required.into();
        assert_fields_match_schema(&declared, &fields);
        assert_valid_against_spec(spec, &branch["properties"][kind], &b[kind]);
    }
    sent
}

async fn bodies(server: &MockServer) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn meta_template_messages_carry_name_language_params_and_header_media() {
    let mock = MockServer::start().await;
    mount_meta(&mock).await;
    let (env, integration) = meta_env(&mock, false).await;
    let worker = env.start_worker();
    let job =
        wa_job(json!({"template": open_house_template(false), "metadata": {"listing": "L-9"}}));
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;

    assert_eq!(row.provider.as_deref(), Some("meta"));
    assert_eq!(row.integration_id, Some(integration));
    assert_eq!(row.provider_message_id.as_deref(), Some("wamid.HBgL0001"));
    let sent = meta_bodies(&mock).await;
    assert_eq!(sent.len(), 1);
    // The spec check has teeth: a template without its language code fails.
    let schema = &meta_spec()["components"]["schemas"]["TemplateMessage"]["allOf"][1];
    let mut wrong = sent[0]["template"].clone();
    wrong["language"] = json!({"policy": "deterministic"});
    let refused = std::panic::catch_unwind(|| {
        assert_valid_against_spec(meta_spec(), &schema["properties"]["template"], &wrong)
    });
    assert!(
        refused.is_err(),
        "the spec took a template without a language code"
    );
    assert_eq!(
        sent[0],
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_TO,
            "type": "template",
            "template": {"name": "open_house",
                "language": {"policy": "deterministic", "code": "en_US"}, "components": [
                {"type": "header", "parameters": [{"type": "image",
                    "image": {"link": "https://cdn.example.test/house.jpg"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Jane"},
                                                {"type": "text", "text": "Saturday"}]}]}})
    );
}

#[tokio::test]
async fn meta_handshake_echoes_the_challenge_only_for_the_verify_token() {
    let mock = MockServer::start().await;
    let (env, integration) = meta_env(&mock, false).await;
    let worker = env.start_worker();
    let server = Server::start(&env, &worker).await;
    let get = |token: &str| {
        let url = format!(
            "{}/webhooks/meta/{integration}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}",
            server.base
        );
        let http = server.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get(VERIFY_TOKEN).await, (200, "1158201444".to_string()));
    assert_eq!(get("guess").await.0, 403);
    server.stop(worker).await;
}

/// At default settings: a status signed with the app secret moves the
/// message to `delivered`; a forged one gets 401 and writes nothing; the
/// same status twice is stored once.
#[tokio::test]
async fn meta_signed_status_moves_to_delivered_and_a_wrong_signature_gets_401() {
    let mock = MockServer::start().await;
    mount_meta(&mock).await;
    let (env, integration) = meta_env(&mock, true).await;
    let worker = env.start_worker();
    let server = Server::start(&env, &worker).await;
    let job = wa_job(json!({"template": open_house_template(false)}));
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    let wamid = row.provider_message_id.unwrap();

    let delivered = meta_body(json!({"messaging_product": "whatsapp",
        "statuses": [{"id": wamid, "status": "delivered", "timestamp": "1700000100",
                      "recipient_id": "14155550123",
                      "pricing": {"billable": true, "category": "utility"}}]}));
    assert_eq!(
        meta_post(&server, integration, "not-the-app-secret", &delivered).await,
        401
    );
    let unsigned = server
        .post(&format!("/webhooks/meta/{integration}"), &[], &delivered)
        .await;
    assert_eq!(unsigned, 401);
    assert_eq!(events_named(&env, "delivered").await, 0);
    assert_eq!(env.status(job_id(&job)).await.as_deref(), Some("sent"));

    assert_eq!(
        meta_post(&server, integration, APP_SECRET, &delivered).await,
        200
    );
    env.wait_for_status(job_id(&job), "delivered").await;
    assert_eq!(
        meta_post(&server, integration, APP_SECRET, &delivered).await,
        200
    );
    server.stop(worker).await;
    assert_eq!(events_named(&env, "delivered").await, 1);
    let events = env.event_details(job_id(&job)).await;
    let d = &events.iter().find(|(e, _)| e == "delivered").unwrap().1;
    assert_eq!(d["pricing_category"], "utility");
}

/// The 24-hour rule with an injected clock: free-form text goes only
/// within 24 hours of the recipient's last message (known from a signed
/// inbound webhook), is refused before any call outside it, and is
/// replaced by its fallback template when the job names one.
#[tokio::test]
async fn whatsapp_free_form_needs_the_24_hour_window_or_a_fallback_template() {
    let mock = MockServer::start().await;
    mount_meta(&mock).await;
    let (env, integration) = meta_env(&mock, false).await;
    let start = chrono::Utc::now();
    let clock = std::sync::Arc::new(switchboard::clock::ManualClock::new(start));
    let worker = env.start_worker_with_clock(clock.clone());
    let server = Server::start(&env, &worker).await;
    let publisher = env.publisher().await;
    let text = || wa_job(json!({"text": "Are you free for a viewing?"}));

    // Never wrote: refused, nothing sent.
    let never = text();
    publisher.publish(&never).await;
    let row = env.wait_for_status(job_id(&never), "failed").await;
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .starts_with("outside_whatsapp_window: "),
        "{:?}",
        row.last_error
    );
    assert!(mock.received_requests().await.unwrap().is_empty());

    // The recipient writes: the window opens.
    assert_eq!(
        meta_post(
            &server,
            integration,
            APP_SECRET,
            &inbound("wamid.IN1", "Hi, is it still available?")
        )
        .await,
        200
    );
    wait_until("the reply is applied", || async {
        (events_named(&env, "received").await == 1).then_some(())
    })
    .await;
    let inside = text();
    publisher.publish(&inside).await;
    env.wait_for_status(job_id(&inside), "sent").await;

    // 25 hours later: closed.
    clock.set(start + chrono::Duration::hours(25));
    let outside = text();
    publisher.publish(&outside).await;
    env.wait_for_status(job_id(&outside), "failed").await;
    let with_fallback = wa_job(json!({"text": "Are you free for a viewing?",
                                      "template": open_house_template(true)}));
    publisher.publish(&with_fallback).await;
    env.wait_for_status(job_id(&with_fallback), "sent").await;
    server.stop(worker).await;

    let sent = meta_bodies(&mock).await;
    assert_eq!(sent.len(), 2, "refused jobs never reach Meta");
    assert_eq!(sent[0]["type"], "text");
    assert_eq!(sent[0]["text"]["body"], "Are you free for a viewing?");
    assert_eq!(sent[1]["type"], "template");
    assert_eq!(sent[1]["template"]["name"], "open_house");
    assert!(sent[1].get("text").is_none());
}

#[tokio::test]
async fn meta_stop_reply_opts_out_and_undeliverable_is_a_provider_opt_out() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/{PHONE_NUMBER_ID}/messages")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#131026) Message undeliverable", "type": "OAuthException",
            "code": 131026, "error_data": {"messaging_product": "whatsapp",
            "details": "Message Undeliverable."}, "fbtrace_id": "AbCd"}})))
        .mount(&mock)
        .await;
    let (env, integration) = meta_env(&mock, false).await;
    let worker = env.start_worker();
    let server = Server::start(&env, &worker).await;
    let job = wa_job(json!({"to": "+14155550199", "template": open_house_template(false)}));
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "failed").await;
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM opt_outs WHERE channel = 'whatsapp'
                      AND address = '+14155550199' AND reason = 'provider_rejected'"
        )
        .await,
        1
    );
    assert_eq!(
        meta_post(
            &server,
            integration,
            APP_SECRET,
            &inbound("wamid.IN2", "STOP")
        )
        .await,
        200
    );
    wait_for_one(
        &env,
        "the STOP is applied",
        "SELECT count(*) FROM opt_outs WHERE channel = 'whatsapp'
           AND address = '+14155550123' AND reason = 'stop_keyword'",
    )
    .await;
    server.stop(worker).await;
    assert_eq!(mock.received_requests().await.unwrap().len(), 1);
}

// ---------------------------------------------------------------- VAPI

const VAPI_KEY: &str = "vapi-private-key-0123";
const VAPI_PHONE: &str = "2f8c7b6a-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const VAPI_ASSISTANT: &str = "5b0a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d";
const VAPI_SECRET: &str = "vapi-webhook-secret-xyz";

/// VAPI's own OpenAPI (VapiAI/docs, copied to tests/specs), read once.
fn vapi_spec() -> &'static serde_json::Value {
    static SPEC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/specs/openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

async fn vapi_env(server: &MockServer, defaults: bool) -> (Env, uuid::Uuid) {
    let settings = json!({"api_key": VAPI_KEY, "phone_number_id": VAPI_PHONE,
        "assistant_id": VAPI_ASSISTANT, "webhook_secret": VAPI_SECRET});
    let owner = ("agent-cre", "voice", "vapi");
    env_with(
        defaults,
        "SWITCHBOARD_VAPI_BASE_URL",
        server,
        owner,
        settings,
    )
    .await
}

async fn mount_vapi(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/call"))
        .and(header(
            "authorization",
            format!("Bearer {VAPI_KEY}").as_str(),
        ))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": "call_7c1d", "orgId": "org_1", "type": "outboundPhoneCall",
            "status": "queued", "assistantId": VAPI_ASSISTANT, "phoneNumberId": VAPI_PHONE
        })))
        .mount(server)
        .await;
}

/// Calls ring only inside calling hours in the recipient's zone (the job's
/// +1 415 is Los Angeles): tests of what a call sends run at noon there.
fn daytime_in_los_angeles() -> std::sync::Arc<switchboard::clock::ManualClock> {
    let noon = "2026-01-15T20:00:00Z".parse().unwrap();
    std::sync::Arc::new(switchboard::clock::ManualClock::new(noon))
}

fn call_job() -> serde_json::Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "agent_id": "agent-cre",
        "channel": "voice",
        "to": "+14155550123",
        "category": "transactional",
        "text": "Hi, this is Ava from Harbor Realty about 12 Pier St.",
        "template": {"variables": {"listing": "12 Pier St"}},
        "campaign_id": "cmp-1", "sequence_id": "seq-1", "step": 1,
        "metadata": {"listing": "L-12"}
    })
}

#[tokio::test]
async fn vapi_calls_carry_assistant_number_customer_and_job_metadata() {
    let mock = MockServer::start().await;
    mount_vapi(&mock).await;
    let (env, integration) = vapi_env(&mock, false).await;
    let worker = env.start_worker_with_clock(daytime_in_los_angeles());
    let job = call_job();
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(row.provider.as_deref(), Some("vapi"));
    assert_eq!(row.integration_id, Some(integration));
    assert_eq!(row.provider_message_id.as_deref(), Some("call_7c1d"));
    let sent = bodies(&mock).await;
    assert_eq!(sent.len(), 1);
    let b = &sent[0];
    // VAPI's own OpenAPI (VapiAI/docs, copied to tests/specs): the body is a
    // valid CreateCallDTO, every field declared.
    let spec = vapi_spec();
    let schema = request_schema(spec, "/call", "post", "application/json");
    let fields: Vec<String> = b.as_object().unwrap().keys().cloned().collect();
    assert_fields_match_schema(&schema, &fields);
    assert_valid_against_spec(spec, &schema, b);
    // The check has teeth: a number where the spec wants a string fails it.
    let mut wrong = b.clone();
    wrong["customer"]["number"] = json!(14155550123u64);
    let refused =
        std::panic::catch_unwind(|| assert_valid_against_spec(spec, &schema, &wrong)).is_err();
    assert!(refused, "the spec accepted a numeric customer.number");
    let overrides = &spec["components"]["schemas"]["AssistantOverrides"]["properties"];
    for k in b["assistantOverrides"].as_object().unwrap().keys() {
        assert!(
            overrides.get(k).is_some(),
            "assistantOverrides.{k} is not in the spec"
        );
    }
    assert_eq!(b["assistantId"], VAPI_ASSISTANT);
    assert_eq!(b["phoneNumberId"], VAPI_PHONE);
    assert_eq!(b["customer"], json!({"number": "+14155550123"}));
    let o = &b["assistantOverrides"];
    assert_eq!(o["firstMessage"], job["text"]);
    assert_eq!(o["variableValues"], json!({"listing": "12 Pier St"}));
    assert_eq!(o["metadata"]["switchboard_job_id"], job["id"]);
    assert_eq!(o["metadata"]["listing"], "L-12");
    assert_eq!(o["metadata"]["sequence_id"], "seq-1");
}

/// At default settings: an end-of-call report with the secret is stored
/// with its cost, duration, summary and recording, and the call counts as
/// delivered; a wrong secret gets 401 and writes nothing; an HMAC-signed
/// report is accepted too, and a repeat is stored once.
#[tokio::test]
async fn vapi_end_of_call_report_is_stored_with_cost_and_duration() {
    let mock = MockServer::start().await;
    mount_vapi(&mock).await;
    let (env, integration) = vapi_env(&mock, true).await;
    let worker = env.start_worker_with_clock(daytime_in_los_angeles());
    let server = Server::start(&env, &worker).await;
    let job = call_job();
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    let path = format!("/webhooks/vapi/{integration}");
    let message = json!({"type": "end-of-call-report",
        "endedReason": "customer-ended-call", "cost": 0.2375,
        "startedAt": "2026-11-25T15:00:00.000Z", "endedAt": "2026-11-25T15:01:33.400Z",
        "analysis": {"summary": "Booked a viewing for Saturday."},
        "artifact": {"recordingUrl": "https://storage.vapi.test/call_7c1d.wav"},
        "call": {"id": "call_7c1d", "orgId": "org_1", "type": "outboundPhoneCall",
                 "createdAt": "2026-11-25T14:59:58.000Z", "updatedAt": "2026-11-25T15:01:34.000Z"}});
    // The fixture is what VAPI's OpenAPI says an end-of-call report is.
    let schema = &vapi_spec()["components"]["schemas"]["ServerMessageEndOfCallReport"];
    assert_valid_against_spec(vapi_spec(), schema, &message);
    let report = json!({"message": message}).to_string();

    assert_eq!(
        server
            .post(&path, &[("x-vapi-secret", "wrong")], &report)
            .await,
        401
    );
    assert_eq!(server.post(&path, &[], &report).await, 401);
    assert_eq!(events_named(&env, "ended").await, 0);

    assert_eq!(
        server
            .post(&path, &[("x-vapi-secret", VAPI_SECRET)], &report)
            .await,
        200
    );
    env.wait_for_status(job_id(&job), "delivered").await;
    let sig = reference::hmac_sha256_hex(VAPI_SECRET, report.as_bytes());
    assert_eq!(
        server
            .post(&path, &[("x-vapi-signature", sig.as_str())], &report)
            .await,
        200
    );
    server.stop(worker).await;

    let events = env.event_details(job_id(&job)).await;
    let ended: Vec<_> = events.iter().filter(|(e, _)| e == "ended").collect();
    assert_eq!(ended.len(), 1, "{events:?}");
    let d = &ended[0].1;
    assert_eq!(d["cost"], 0.2375);
    assert_eq!(d["duration_seconds"], 93.4);
    assert_eq!(d["summary"], "Booked a viewing for Saturday.");
    assert_eq!(
        d["recording_url"],
        "https://storage.vapi.test/call_7c1d.wav"
    );
    assert_eq!(d["ended_reason"], "customer-ended-call");
}

#[tokio::test]
async fn vapi_busy_or_unanswered_calls_fail() {
    let mock = MockServer::start().await;
    mount_vapi(&mock).await;
    let (env, integration) = vapi_env(&mock, false).await;
    let worker = env.start_worker_with_clock(daytime_in_los_angeles());
    let server = Server::start(&env, &worker).await;
    let job = call_job();
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    let report = json!({"message": {"type": "end-of-call-report", "endedReason": "customer-busy",
        "cost": 0.01, "analysis": {}, "artifact": {}, "call": {"id": "call_7c1d"}}})
    .to_string();
    let status = server
        .post(
            &format!("/webhooks/vapi/{integration}"),
            &[("authorization", &format!("Bearer {VAPI_SECRET}"))],
            &report,
        )
        .await;
    assert_eq!(status, 200);
    let row = env.wait_for_status(job_id(&job), "failed").await;
    server.stop(worker).await;
    assert!(row.last_error.unwrap().contains("customer-busy"));
}

// ---------------------------------------------------------------- Twilio WhatsApp

/// Twilio WhatsApp keeps the same 24-hour rule: free-form text to someone
/// who never wrote is refused before any call; a Content template goes.
#[tokio::test]
async fn twilio_whatsapp_free_form_outside_the_window_is_refused_before_any_call() {
    const SID: &str = "AC0000000000000000000000000000000c";
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{SID}/Messages.json")))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMwa", "status": "queued"})),
        )
        .mount(&mock)
        .await;
    let settings =
        json!({"account_sid": SID, "auth_token": "token-c", "whatsapp_number": "+14155550100"});
    let owner = ("agent-wa", "whatsapp", "twilio");
    let (env, _) = env_with(false, "SWITCHBOARD_TWILIO_BASE_URL", &mock, owner, settings).await;
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let text = wa_job(json!({"text": "Are you free for a viewing?"}));
    publisher.publish(&text).await;
    let row = env.wait_for_status(job_id(&text), "failed").await;
    assert!(
        row.last_error
            .unwrap()
            .starts_with("outside_whatsapp_window: ")
    );
    let template =
        wa_job(json!({"template": {"content_sid": "HX0000000000000000000000000000000a"}}));
    publisher.publish(&template).await;
    env.wait_for_status(job_id(&template), "sent").await;
    worker.stop().await;
    let sent = mock.received_requests().await.unwrap();
    assert_eq!(sent.len(), 1);
    assert!(field(&form_pairs(&sent[0].body), "ContentSid").is_some());
}

/// Meta 190 (bad or expired access token): the job fails without retry and
/// the integration is marked unverified with the reason, not the token.
#[tokio::test]
async fn meta_bad_token_fails_and_marks_the_integration_unverified() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/{PHONE_NUMBER_ID}/messages")))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": "Error validating access token: Session has expired.",
            "type": "OAuthException", "code": 190, "error_subcode": 463,
            "fbtrace_id": "AbCd"}})))
        .mount(&mock)
        .await;
    let (env, integration) = meta_env(&mock, false).await;
    let client = env.db.client().await;
    client
        .execute(
            "UPDATE integrations SET verification_status = 'verified', verified_at = now()
              WHERE id = $1",
            &[&integration],
        )
        .await
        .unwrap();
    let worker = env.start_worker();
    let job = wa_job(json!({"template": open_house_template(false)}));
    env.publisher().await.publish(&job).await;
    let row = env.wait_for_status(job_id(&job), "failed").await;
    worker.stop().await;
    assert_eq!(row.attempts, 1);
    let r = client
        .query_one(
            "SELECT verification_status, last_error FROM integrations WHERE id = $1",
            &[&integration],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "unverified");
    let last_error: String = r.get(1);
    assert!(
        last_error.contains("reconnect the integration"),
        "{last_error}"
    );
    assert!(!last_error.contains(META_TOKEN));
}

// ---------------------------------------------------------------- Africa's Talking callbacks

async fn at_post(server: &Server, path: &str, form: &[(&str, &str)]) -> u16 {
    server
        .http
        .post(format!("{}{path}", server.base))
        .form(form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Africa's Talking connected for `agent-ke` (with a webhook token), one
/// SMS sent and answered with `message_id`, the HTTP server up.
async fn at_sent(
    defaults: bool,
    message_id: &str,
) -> (
    MockServer,
    Env,
    uuid::Uuid,
    RunningWorker,
    Server,
    serde_json::Value,
) {
    let mock = MockServer::start().await;
    mount_at(&mock, at_answer("Success", 101, message_id)).await;
    let settings = json!({"username": "acme", "api_key": AT_KEY, "webhook_token": AT_TOKEN});
    let owner = ("agent-ke", "sms", "africastalking");
    let base_url = "SWITCHBOARD_AFRICASTALKING_BASE_URL";
    let (env, integration) = env_with(defaults, base_url, &mock, owner, settings).await;
    let worker = env.start_worker();
    let server = Server::start(&env, &worker).await;
    let job = sms_job("agent-ke", "+254711000001");
    env.publisher().await.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    (mock, env, integration, worker, server, job)
}

/// At default settings: a delivery report with the integration's token
/// moves the SMS to `delivered`; without it, or with another, 401 and
/// nothing written; a STOP reply opts the sender out; repeats count once.
#[tokio::test]
async fn africastalking_callbacks_need_the_token_and_apply_once() {
    let (_mock, env, integration, worker, server, job) = at_sent(true, "ATXid_abc123").await;

    let report = [
        ("id", "ATXid_abc123"),
        ("status", "Success"),
        ("phoneNumber", "+254711000001"),
        ("networkCode", "63902"),
    ];
    let base = format!("/webhooks/africastalking/{integration}");
    assert_eq!(at_post(&server, &base, &report).await, 401);
    assert_eq!(
        at_post(&server, &format!("{base}?token=guess"), &report).await,
        401
    );
    assert_eq!(events_named(&env, "delivered").await, 0);
    let signed = format!("{base}?token={AT_TOKEN}");
    assert_eq!(at_post(&server, &signed, &report).await, 200);
    env.wait_for_status(job_id(&job), "delivered").await;
    assert_eq!(at_post(&server, &signed, &report).await, 200);

    let stop = [
        ("id", "in-77"),
        ("from", "+254711000001"),
        ("to", "12345"),
        ("text", "STOP"),
        ("date", "2026-11-25 10:00:00"),
        ("linkId", "abc"),
    ];
    assert_eq!(at_post(&server, &signed, &stop).await, 200);
    assert_eq!(at_post(&server, &signed, &stop).await, 200);
    wait_for_one(
        &env,
        "the STOP is applied",
        "SELECT count(*) FROM opt_outs WHERE agent_id = 'agent-ke' AND channel = 'sms'
               AND address = '+254711000001' AND reason = 'stop_keyword'",
    )
    .await;
    server.stop(worker).await;
    assert_eq!(events_named(&env, "delivered").await, 1);
    assert_eq!(events_named(&env, "received").await, 1);
}

/// Meta often reports 131026 (undeliverable) only afterwards, in a status:
/// the message fails and the number is opted out like a refused send.
#[tokio::test]
async fn meta_undeliverable_status_fails_the_message_and_opts_the_number_out() {
    let mock = MockServer::start().await;
    mount_meta(&mock).await;
    let (env, integration) = meta_env(&mock, false).await;
    let worker = env.start_worker();
    let server = Server::start(&env, &worker).await;
    let job = wa_job(json!({"template": open_house_template(false)}));
    env.publisher().await.publish(&job).await;
    let wamid = env
        .wait_for_status(job_id(&job), "sent")
        .await
        .provider_message_id
        .unwrap();
    let failed = meta_body(json!({"messaging_product": "whatsapp",
        "statuses": [{"id": wamid, "status": "failed", "timestamp": "1700000100",
                      "recipient_id": "14155550123",
                      "errors": [{"code": 131026, "title": "Message undeliverable"}]}]}));
    assert_eq!(
        meta_post(&server, integration, APP_SECRET, &failed).await,
        200
    );
    let row = env.wait_for_status(job_id(&job), "failed").await;
    assert!(row.last_error.unwrap().contains("131026"));
    wait_for_one(
        &env,
        "the opt-out is applied",
        "SELECT count(*) FROM opt_outs WHERE agent_id = 'agent-wa' AND channel = 'whatsapp'
               AND address = '+14155550123' AND reason = 'provider_rejected'
               AND source = 'meta:131026'",
    )
    .await;
    server.stop(worker).await;
}

#[tokio::test]
async fn africastalking_blacklisted_report_fails_the_message_and_opts_the_number_out() {
    let (_mock, env, integration, worker, server, job) = at_sent(false, "ATXid_b1").await;
    let report = [
        ("id", "ATXid_b1"),
        ("status", "Failed"),
        ("phoneNumber", "+254711000001"),
        ("failureReason", "UserInBlacklist"),
    ];
    let path = format!("/webhooks/africastalking/{integration}?token={AT_TOKEN}");
    assert_eq!(at_post(&server, &path, &report).await, 200);
    let row = env.wait_for_status(job_id(&job), "failed").await;
    assert!(row.last_error.unwrap().contains("UserInBlacklist"));
    wait_for_one(
        &env,
        "the opt-out is applied",
        "SELECT count(*) FROM opt_outs WHERE agent_id = 'agent-ke' AND channel = 'sms'
               AND address = '+254711000001' AND reason = 'provider_rejected'",
    )
    .await;
    server.stop(worker).await;
}

async fn parked_until(env: &Env, id: uuid::Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
    env.db
        .client()
        .await
        .query_opt("SELECT due_at FROM scheduled_jobs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// At default settings: a call, transactional too, waits for 08:00 in the
/// recipient's zone (from the number's area code: 415 is Los Angeles) and
/// rings then; an agent that widens its calling hours is called at once.
#[tokio::test]
async fn vapi_calls_wait_for_calling_hours_in_the_recipients_zone() {
    let mock = MockServer::start().await;
    mount_vapi(&mock).await;
    let (env, _) = vapi_env(&mock, true).await;
    // 05:00 UTC on 15 January: 21:00 in Los Angeles (PST), calls just over.
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let clock = std::sync::Arc::new(switchboard::clock::ManualClock::new(at(
        "2026-01-15T05:00:00Z",
    )));
    let worker = env.start_worker_with_clock(clock.clone());
    let publisher = env.publisher().await;
    let job = call_job();
    assert_eq!(job["category"], "transactional");
    publisher.publish(&job).await;
    env.wait_for_status(job_id(&job), "deferred").await;
    // 08:00 PST = 16:00 UTC.
    assert_eq!(
        parked_until(&env, job_id(&job)).await,
        Some(at("2026-01-15T16:00:00Z"))
    );
    let events = env.event_details(job_id(&job)).await;
    let deferred = &events.iter().find(|(e, _)| e == "deferred").unwrap().1;
    assert_eq!(deferred["reason"], "calling_hours");
    assert_eq!(deferred["recipient_timezone"], "America/Los_Angeles");
    assert_eq!(deferred["timezone_source"], "phone_prefix");
    assert!(mock.received_requests().await.unwrap().is_empty());

    // The agent widens its hours to 07:00-22:00: a new call rings at once
    // (21:00 in Los Angeles), the parked one still waits for its time.
    let client = env.db.client().await;
    client
        .execute(
            "UPDATE agents SET calling_hours_start = '07:00', calling_hours_end = '22:00'
              WHERE id = 'agent-cre'",
            &[],
        )
        .await
        .unwrap();
    let widened = call_job();
    publisher.publish(&widened).await;
    env.wait_for_status(job_id(&widened), "sent").await;

    clock.set(at("2026-01-15T16:00:00Z"));
    let row = env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;
    assert_eq!(row.provider_message_id.as_deref(), Some("call_7c1d"));
    assert_eq!(bodies(&mock).await.len(), 2);
    assert_eq!(
        env.events(job_id(&job)).await,
        vec!["queued", "deferred", "sent"]
    );
}

/// A job of a sequence parked for later (its `send_at`), to `to`.
fn later_step(agent: &str, channel: &str, to: &str) -> serde_json::Value {
    json!({"id": uuid::Uuid::new_v4().to_string(), "agent_id": agent, "channel": channel,
           "to": to, "text": "Following up on the house", "category": "transactional",
           "sequence_id": "seq-follow-up", "step": 2, "send_at": "2099-01-01T00:00:00Z"})
}

/// At default settings: any WhatsApp reply through Meta (not only STOP) is
/// a `received` event and cancels the sender's parked sequence steps of the
/// integration's agent, on every channel, and no one else's.
#[tokio::test]
async fn a_meta_reply_cancels_the_senders_sequences() {
    let mock = MockServer::start().await;
    mount_meta(&mock).await;
    let (env, integration) = meta_env(&mock, true).await;
    let worker = env.start_worker();
    let server = Server::start(&env, &worker).await;
    let publisher = env.publisher().await;
    let whatsapp = later_step("agent-wa", "whatsapp", WA_TO);
    let sms = later_step("agent-wa", "sms", WA_TO);
    let someone_else = later_step("agent-wa", "sms", "+14155550188");
    let other_agent = later_step("agent-other", "sms", WA_TO);
    for job in [&whatsapp, &sms, &someone_else, &other_agent] {
        publisher.publish(job).await;
        env.wait_for_status(job_id(job), "scheduled").await;
    }
    let reply = inbound("wamid.IN9", "Yes, Saturday works");
    assert_eq!(
        meta_post(&server, integration, APP_SECRET, &reply).await,
        200
    );
    env.wait_for_status(job_id(&whatsapp), "cancelled").await;
    env.wait_for_status(job_id(&sms), "cancelled").await;
    server.stop(worker).await;
    assert_eq!(events_named(&env, "received").await, 1);
    let events = env.event_details(job_id(&sms)).await;
    let cancelled = &events.iter().find(|(e, _)| e == "cancelled").unwrap().1;
    assert_eq!(cancelled["reason"], "replied");
    for job in [&someone_else, &other_agent] {
        assert!(parked_until(&env, job_id(job)).await.is_some());
    }
    assert_eq!(
        count(&env, "SELECT count(*) FROM opt_outs").await,
        0,
        "a reply is not an opt-out"
    );
    assert!(mock.received_requests().await.unwrap().is_empty());
}

/// At default settings: an inbound SMS through Africa's Talking cancels the
/// sender's parked sequence steps of the integration's agent.
#[tokio::test]
async fn an_africastalking_reply_cancels_the_senders_sequences() {
    let (_mock, env, integration, worker, server, _) = at_sent(true, "ATXid_seq1").await;
    let publisher = env.publisher().await;
    let step = later_step("agent-ke", "sms", "+254711000001");
    let someone_else = later_step("agent-ke", "sms", "+254711000002");
    for job in [&step, &someone_else] {
        publisher.publish(job).await;
        env.wait_for_status(job_id(job), "scheduled").await;
    }
    let reply = [
        ("id", "in-88"),
        ("from", "+254711000001"),
        ("to", "12345"),
        ("text", "Call me tomorrow"),
        ("date", "2026-11-25 10:00:00"),
        ("linkId", "abd"),
    ];
    let signed = format!("/webhooks/africastalking/{integration}?token={AT_TOKEN}");
    assert_eq!(at_post(&server, &signed, &reply).await, 200);
    env.wait_for_status(job_id(&step), "cancelled").await;
    server.stop(worker).await;
    assert_eq!(events_named(&env, "received").await, 1);
    assert!(parked_until(&env, job_id(&someone_else)).await.is_some());
}
