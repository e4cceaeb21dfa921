//! Connection tests (`switchboard integrations test`, `POST
//! /v1/agents/{agent}/integrations/{channel}/test`, `PUT …?verify=true`) and
//! connecting by a key's shape.
//!
//! Each provider's test is checked against a local mock that answers only
//! the request the real provider takes (method, path, auth exactly, no
//! body) and is expected to be called exactly once, so that a refusal in a
//! test can never be the mock's 404 for a request it did not recognise.
//! The end-to-end tests run over a fresh Postgres database with default
//! settings.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use switchboard::config::Settings;
use switchboard::domain::Channel;
use switchboard::http::{self, HttpState};
use switchboard::integrations::{self, ConnectRequest};
use switchboard::metrics::Metrics;
use switchboard::providers::{Registry, Verdict, VerdictKind, http_client};
use switchboard::store;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "twilio-auth-SECRET-4d8e2a7c";
const SG_KEY: &str = "SG.SECRETsendgridkey.0123456789abcdef";
const RESEND_KEY: &str = "re_SECRET_resend_93kd82";
const MAILGUN_KEY: &str = "key-SECRETmailgun0123456789";
const POSTMARK_TOKEN: &str = "00000000-SECRET-postmark-token";
const META_TOKEN: &str = "EAAGSECRETmetatoken0123";
const PHONE_NUMBER_ID: &str = "106540352242922";
const AT_KEY: &str = "atsk_SECRET_africastalking_0123";
const VAPI_KEY: &str = "vapi-SECRET-0000-private-key";
const API_TOKEN: &str = "sb-test-token-conn-5e1f";

/// Every provider's base URL pointed at `mock` (Meta's with its version,
/// as the real default carries one).
fn provider_vars(mock: &MockServer) -> Vec<(&'static str, String)> {
    let uri = mock.uri();
    vec![
        ("SWITCHBOARD_TWILIO_BASE_URL", uri.clone()),
        ("SWITCHBOARD_RESEND_BASE_URL", uri.clone()),
        ("SWITCHBOARD_SENDGRID_BASE_URL", uri.clone()),
        ("SWITCHBOARD_MAILGUN_BASE_URL", uri.clone()),
        ("SWITCHBOARD_POSTMARK_BASE_URL", uri.clone()),
        ("SWITCHBOARD_AFRICASTALKING_BASE_URL", uri.clone()),
        ("SWITCHBOARD_WHATSAPP_BASE_URL", format!("{uri}/v21.0")),
        ("SWITCHBOARD_VAPI_BASE_URL", uri),
    ]
}

fn registry(mock: &MockServer) -> Registry {
    let vars: HashMap<&str, String> = provider_vars(mock).into_iter().collect();
    let settings = Settings::from_lookup(|k| vars.get(k).cloned()).unwrap();
    Registry::new(
        http_client(settings.provider_timeout),
        &settings.provider_urls,
    )
}

/// Runs `provider`'s connection test with `settings` against `mock`.
async fn check(mock: &MockServer, provider: &str, channel: Channel, settings: Value) -> Verdict {
    let settings =
        switchboard::providers::ProviderSettings::new(settings.as_object().unwrap().clone());
    let result = registry(mock)
        .get(provider)
        .unwrap()
        .check_connection(channel, &settings)
        .await;
    Verdict::from_result(result)
}

/// The one request the mock got: a body-less read.
async fn only_request(mock: &MockServer) -> Request {
    let mut requests = mock.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = requests.remove(0);
    assert!(r.body.is_empty(), "a connection test sends no body");
    r
}

fn refused(verdict: &Verdict) -> &switchboard::providers::ProviderError {
    match verdict {
        Verdict::Refused(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn twilio_settings() -> Value {
    json!({"account_sid": SID, "auth_token": TWILIO_TOKEN, "phone_number": "+14155550100"})
}

#[tokio::test]
async fn twilio_fetches_the_account_with_basic_auth() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/2010-04-01/Accounts/{SID}.json")))
        .and(header("authorization", basic_auth(SID, TWILIO_TOKEN)))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sid": SID, "friendly_name": "Realty Co", "status": "active", "type": "Full",
            "auth_token": TWILIO_TOKEN, "owner_account_sid": SID
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "twilio", Channel::Sms, twilio_settings()).await;
    let Verdict::Verified(detail) = &verdict else {
        panic!("{verdict:?}")
    };
    assert!(
        detail.contains("Realty Co") && detail.contains("active"),
        "{detail}"
    );
    assert!(
        !detail.contains(TWILIO_TOKEN),
        "the answer's auth_token is never read out"
    );
    only_request(&mock).await;
}

#[tokio::test]
async fn twilio_refused_credentials_and_a_suspended_account_are_refusals() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/2010-04-01/Accounts/{SID}.json")))
        .and(header("authorization", basic_auth(SID, TWILIO_TOKEN)))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "code": 20003, "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "twilio", Channel::Sms, twilio_settings()).await;
    let e = refused(&verdict);
    assert!(e.credentials_refused && !e.is_retriable());
    assert_eq!(verdict.message(), "HTTP 401 [20003] Authenticate");

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/2010-04-01/Accounts/{SID}.json")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"sid": SID, "friendly_name": "x", "status": "suspended"})),
        )
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "twilio", Channel::Sms, twilio_settings()).await;
    assert!(refused(&verdict).message.contains("suspended"));
}

fn resend_settings() -> Value {
    json!({"api_key": RESEND_KEY, "from_email": "Realty <hello@realty.test>"})
}

#[tokio::test]
async fn resend_lists_domains_with_the_bearer_key() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/domains"))
        .and(header("authorization", format!("Bearer {RESEND_KEY}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "list", "has_more": false,
            "data": [{"id": "d91cd9bd-1176-453e-8fc1-35364d380206", "name": "realty.test",
                      "status": "verified", "created_at": "2023-04-26 20:21:26.347412+00",
                      "region": "us-east-1"}]
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "resend", Channel::Email, resend_settings()).await;
    assert_eq!(verdict.kind(), VerdictKind::Verified);
    assert!(
        verdict
            .message()
            .contains("sender domain realty.test is verified"),
        "{}",
        verdict.message()
    );
    only_request(&mock).await;
}

#[tokio::test]
async fn resend_refuses_an_invalid_key_and_accepts_a_sending_only_one() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/domains"))
        .and(header("authorization", format!("Bearer {RESEND_KEY}")))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "statusCode": 403, "name": "invalid_api_key", "message": "API key is invalid"
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "resend", Channel::Email, resend_settings()).await;
    assert!(refused(&verdict).credentials_refused);
    assert_eq!(
        verdict.message(),
        "HTTP 403 [invalid_api_key] API key is invalid"
    );

    // A key with "sending access" may not list domains; Resend said it is
    // valid, which is what sending needs.
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/domains"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "statusCode": 401, "name": "restricted_api_key",
            "message": "This API key is restricted to only send emails"
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "resend", Channel::Email, resend_settings()).await;
    assert_eq!(verdict.kind(), VerdictKind::Verified, "{verdict:?}");
}

fn sendgrid_settings() -> Value {
    json!({"api_key": SG_KEY, "from_email": "hello@realty.test"})
}

#[tokio::test]
async fn sendgrid_reads_the_keys_scopes_and_needs_mail_send() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/scopes"))
        .and(header("authorization", format!("Bearer {SG_KEY}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"scopes": ["mail.send", "alerts.read"]})),
        )
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "sendgrid", Channel::Email, sendgrid_settings()).await;
    assert_eq!(verdict.kind(), VerdictKind::Verified, "{verdict:?}");
    only_request(&mock).await;

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/scopes"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"scopes": ["alerts.read"]})))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "sendgrid", Channel::Email, sendgrid_settings()).await;
    let e = refused(&verdict);
    assert_eq!(e.code.as_deref(), Some("missing_scope"));
    assert!(e.message.contains("mail.send"));
}

#[tokio::test]
async fn sendgrid_refused_key_is_refused_and_a_5xx_is_inconclusive() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/scopes"))
        .and(header("authorization", format!("Bearer {SG_KEY}")))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "errors": [{"field": null, "message": "The provided authorization grant is invalid, expired, or revoked"}]
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "sendgrid", Channel::Email, sendgrid_settings()).await;
    assert!(refused(&verdict).credentials_refused);

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/scopes"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "sendgrid", Channel::Email, sendgrid_settings()).await;
    assert_eq!(verdict.kind(), VerdictKind::Inconclusive, "{verdict:?}");
}

fn mailgun_settings() -> Value {
    json!({"api_key": MAILGUN_KEY, "domain": "mg.realty.test", "region": "eu",
           "from_email": "hello@mg.realty.test"})
}

#[tokio::test]
async fn mailgun_reads_the_domain_with_basic_api_auth() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/domains/mg.realty.test"))
        .and(header("authorization", basic_auth("api", MAILGUN_KEY)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "domain": {"name": "mg.realty.test", "state": "active", "type": "custom"},
            "receiving_dns_records": [], "sending_dns_records": []
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "mailgun", Channel::Email, mailgun_settings()).await;
    assert_eq!(verdict.message(), "Mailgun domain mg.realty.test (active)");
    only_request(&mock).await;
}

#[tokio::test]
async fn mailgun_refuses_a_wrong_key_and_a_domain_of_another_region() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/domains/mg.realty.test"))
        .and(header("authorization", basic_auth("api", MAILGUN_KEY)))
        .respond_with(ResponseTemplate::new(401).set_body_string("Forbidden"))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "mailgun", Channel::Email, mailgun_settings()).await;
    assert!(refused(&verdict).credentials_refused);

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/domains/mg.realty.test"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!({"message": "Domain not found"})),
        )
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "mailgun", Channel::Email, mailgun_settings()).await;
    let e = refused(&verdict);
    assert!(!e.credentials_refused);
    assert!(e.message.contains("EU region"), "{}", e.message);
}

fn postmark_settings() -> Value {
    json!({"server_token": POSTMARK_TOKEN, "from_email": "hello@realty.test"})
}

#[tokio::test]
async fn postmark_reads_the_server_with_its_token_header() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/server"))
        .and(header("x-postmark-server-token", POSTMARK_TOKEN))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ID": 1, "Name": "Realty Production", "ApiTokens": [POSTMARK_TOKEN], "Color": "red"
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "postmark", Channel::Email, postmark_settings()).await;
    assert_eq!(
        verdict.message(),
        "Postmark server \"Realty Production\" accepted the token"
    );
    only_request(&mock).await;

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/server"))
        .and(header("x-postmark-server-token", POSTMARK_TOKEN))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "ErrorCode": 10, "Message": "The Server Token you provided in the X-Postmark-Server-Token request header was invalid."
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "postmark", Channel::Email, postmark_settings()).await;
    assert!(refused(&verdict).credentials_refused);
}

fn meta_settings() -> Value {
    json!({"phone_number_id": PHONE_NUMBER_ID, "access_token": META_TOKEN,
           "app_secret": "meta-app-SECRET", "verify_token": "meta-verify-SECRET"})
}

#[tokio::test]
async fn meta_reads_the_phone_number_with_the_bearer_token() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v21.0/{PHONE_NUMBER_ID}")))
        .and(header("authorization", format!("Bearer {META_TOKEN}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "verified_name": "Realty Co", "code_verification_status": "VERIFIED",
            "display_phone_number": "+1 415-555-0100", "quality_rating": "GREEN",
            "id": PHONE_NUMBER_ID
        })))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "meta", Channel::Whatsapp, meta_settings()).await;
    assert_eq!(
        verdict.message(),
        "WhatsApp number +1 415-555-0100 (Realty Co), quality GREEN"
    );
    only_request(&mock).await;

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v21.0/{PHONE_NUMBER_ID}")))
        .and(header("authorization", format!("Bearer {META_TOKEN}")))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": "Error validating access token: Session has expired.",
            "type": "OAuthException", "code": 190, "error_subcode": 463, "fbtrace_id": "AbCd"}})))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "meta", Channel::Whatsapp, meta_settings()).await;
    let e = refused(&verdict);
    assert!(e.credentials_refused);
    assert_eq!(e.code.as_deref(), Some("190"));
}

#[tokio::test]
async fn africastalking_reads_the_user_with_the_api_key_header() {
    let settings = json!({"username": "acme", "api_key": AT_KEY});
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/version1/user"))
        .and(query_param("username", "acme"))
        .and(header("apikey", AT_KEY))
        .and(header("accept", "application/json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"UserData": {"balance": "KES 1250.0000"}})),
        )
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "africastalking", Channel::Sms, settings.clone()).await;
    assert_eq!(
        verdict.message(),
        "Africa's Talking account acme, balance KES 1250.0000"
    );
    let r = only_request(&mock).await;
    assert_eq!(r.url.query(), Some("username=acme"));

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/version1/user"))
        .and(header("apikey", AT_KEY))
        .respond_with(
            ResponseTemplate::new(401).set_body_string("The supplied authentication is invalid"),
        )
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "africastalking", Channel::Sms, settings).await;
    assert!(refused(&verdict).credentials_refused);
}

fn vapi_settings() -> Value {
    json!({"api_key": VAPI_KEY, "assistant_id": "asst-1", "phone_number_id": "pn-1"})
}

#[tokio::test]
async fn vapi_reads_the_assistant_and_the_phone_number_with_the_bearer_key() {
    let mock = MockServer::start().await;
    for (p, body) in [
        (
            "/assistant/asst-1",
            json!({"id": "asst-1", "orgId": "org", "name": "Open house caller"}),
        ),
        (
            "/phone-number/pn-1",
            json!({"id": "pn-1", "orgId": "org", "provider": "twilio", "number": "+14155550100"}),
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(p))
            .and(header("authorization", format!("Bearer {VAPI_KEY}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&mock)
            .await;
    }
    let verdict = check(&mock, "vapi", Channel::Voice, vapi_settings()).await;
    assert_eq!(
        verdict.message(),
        "VAPI assistant \"Open house caller\" and phone number +14155550100"
    );

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/assistant/asst-1"))
        .and(header("authorization", format!("Bearer {VAPI_KEY}")))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"message": "Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa.", "error": "Unauthorized", "statusCode": 401}),
        ))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "vapi", Channel::Voice, vapi_settings()).await;
    assert!(refused(&verdict).credentials_refused);

    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/assistant/asst-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "asst-1"})))
        .expect(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/phone-number/pn-1"))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"message": "Not Found", "error": "Not Found", "statusCode": 404}),
        ))
        .expect(1)
        .mount(&mock)
        .await;
    let verdict = check(&mock, "vapi", Channel::Voice, vapi_settings()).await;
    let e = refused(&verdict);
    assert!(!e.credentials_refused);
    assert!(e.message.contains("phone-number `pn-1`"), "{}", e.message);
}

// ---- end to end: stored verdicts, the CLI, the API ----

/// An environment with default settings whose providers are `mock`.
async fn env_for(mock: &MockServer) -> Env {
    let mut env = Env::with_defaults().await;
    for (k, v) in provider_vars(mock) {
        env.set(k, v);
    }
    env.set("SWITCHBOARD_API_TOKEN", API_TOKEN);
    env
}

async fn pool_and_registry(env: &Env) -> (deadpool_postgres::Pool, Registry) {
    let s = env.settings();
    let pool = store::pool(&s.database_url, 2).unwrap();
    let registry = Registry::new(http_client(s.provider_timeout), &s.provider_urls);
    (pool, registry)
}

/// (verification_status, verified_at set, last_tested_at set, last_error)
async fn stored(env: &Env, id: uuid::Uuid) -> (String, bool, bool, Option<String>) {
    let r = env
        .db
        .client()
        .await
        .query_one(
            "SELECT verification_status, verified_at IS NOT NULL, last_tested_at IS NOT NULL,
                    last_error
               FROM integrations WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn scopes_mock(status: u16, body: Value) -> Mock {
    Mock::given(method("GET"))
        .and(path("/v3/scopes"))
        .and(header("authorization", format!("Bearer {SG_KEY}")))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
}

#[tokio::test]
async fn a_test_stores_verified_then_failed_without_the_secret_then_leaves_it_when_unanswered() {
    let mock = MockServer::start().await;
    let env = env_for(&mock).await;
    let id = env
        .connect_integration("agent-t", "email", "sendgrid", sendgrid_settings())
        .await;
    assert_eq!(
        stored(&env, id).await,
        ("unverified".into(), false, false, None)
    );
    let settings = env.settings();

    let ok = scopes_mock(200, json!({"scopes": ["mail.send"]}))
        .up_to_n_times(1)
        .mount_as_scoped(&mock)
        .await;
    let report = switchboard::app::test_integration(&settings, "agent-t", Channel::Email, 0)
        .await
        .unwrap();
    drop(ok);
    assert_eq!(report.verdict, VerdictKind::Verified);
    assert_eq!(report.exit_code(), 0);
    assert!(
        report
            .render()
            .starts_with("verified: sendgrid email integration of agent agent-t")
    );
    assert_eq!(
        stored(&env, id).await,
        ("verified".into(), true, true, None)
    );

    // The key was revoked; SendGrid's answer quotes it back.
    let refused = scopes_mock(
        401,
        json!({"errors": [{"field": null, "message": format!("API key {SG_KEY} is revoked")}]}),
    )
    .up_to_n_times(1)
    .mount_as_scoped(&mock)
    .await;
    let report = switchboard::app::test_integration(&settings, "agent-t", Channel::Email, 0)
        .await
        .unwrap();
    drop(refused);
    assert_eq!(report.verdict, VerdictKind::Refused);
    assert!(report.credentials_refused && !report.retryable);
    assert_eq!(report.exit_code(), 1);
    let (status, verified_at, tested_at, last_error) = stored(&env, id).await;
    assert_eq!(
        (status.as_str(), verified_at, tested_at),
        ("failed", false, true)
    );
    let last_error = last_error.unwrap();
    assert!(
        last_error.contains("HTTP 401") && last_error.contains("revoked"),
        "{last_error}"
    );
    assert!(!last_error.contains(SG_KEY) && !report.message.contains(SG_KEY));
    assert!(!report.render().contains(SG_KEY));

    // SendGrid is down: the verdict stays `failed`, the reason is new.
    let _down = scopes_mock(503, json!({"errors": [{"message": "service unavailable"}]}))
        .mount_as_scoped(&mock)
        .await;
    let report = switchboard::app::test_integration(&settings, "agent-t", Channel::Email, 0)
        .await
        .unwrap();
    assert_eq!(report.verdict, VerdictKind::Inconclusive);
    assert!(report.retryable);
    assert_eq!(report.exit_code(), 75);
    assert_eq!(report.verification_status, "failed");
    let (status, _, tested_at, last_error) = stored(&env, id).await;
    assert_eq!((status.as_str(), tested_at), ("failed", true));
    assert!(last_error.unwrap().contains("HTTP 503"));

    // Connecting again forgets the old verdict: new settings are untested.
    env.connect_integration("agent-t", "email", "sendgrid", sendgrid_settings())
        .await;
    assert_eq!(
        stored(&env, id).await,
        ("unverified".into(), false, false, None)
    );

    // No integration: a clear error.
    let err = switchboard::app::test_integration(&settings, "agent-none", Channel::Email, 0)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("has no email integration"),
        "{err}"
    );
}

/// Runs the binary to its end (off the test's runtime, which keeps serving
/// the mock) and returns its exit status and standard output.
async fn run_cli(env: &Env, args: &[&str]) -> (i32, String) {
    let vars = env.vars.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&args)
            .env_clear()
            .envs(&vars)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run switchboard")
    })
    .await
    .unwrap();
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_prints_the_verdict_and_exits_0_when_verified_and_1_when_refused() {
    let mock = MockServer::start().await;
    let env = env_for(&mock).await;
    env.connect_integration("agent-c", "sms", "twilio", twilio_settings())
        .await;
    let account = |status: u16, body: Value| {
        Mock::given(method("GET"))
            .and(path(format!("/2010-04-01/Accounts/{SID}.json")))
            .and(header("authorization", basic_auth(SID, TWILIO_TOKEN)))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .up_to_n_times(1)
    };
    let args = [
        "integrations",
        "test",
        "--agent",
        "agent-c",
        "--channel",
        "sms",
    ];
    let ok = account(
        200,
        json!({"sid": SID, "friendly_name": "Realty", "status": "active"}),
    )
    .mount_as_scoped(&mock)
    .await;
    let (code, out) = run_cli(&env, &args).await;
    drop(ok);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("verified: twilio sms integration of agent agent-c"),
        "{out}"
    );
    assert!(out.contains("is active"), "{out}");

    let _refused = account(
        401,
        json!({"code": 20003, "message": "Authenticate", "status": 401}),
    )
    .mount_as_scoped(&mock)
    .await;
    let (code, out) = run_cli(&env, &args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("refused: twilio sms integration"), "{out}");
    assert!(out.contains("HTTP 401 [20003] Authenticate"), "{out}");
    assert!(!out.contains(TWILIO_TOKEN));
}

/// The API on a free port, as `serve` runs it.
struct Api {
    base: String,
    http: reqwest::Client,
    stop: tokio_util::sync::CancellationToken,
}

impl Api {
    async fn start(env: &Env) -> Self {
        let settings = env.settings();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = store::pool(&settings.database_url, http::HTTP_DB_POOL_SIZE).unwrap();
        let state = HttpState::new(pool, Metrics::new(), &settings);
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(http::serve(
            format!("127.0.0.1:{port}").parse().unwrap(),
            state,
            stop.clone(),
        ));
        let api = Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            stop,
        };
        let url = format!("{}/healthz", api.base);
        wait_until("the HTTP server to listen", || async {
            api.http.get(&url).send().await.ok().map(|_| ())
        })
        .await;
        api
    }

    async fn call(&self, token: &str, m: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        for secret in [SG_KEY, RESEND_KEY, TWILIO_TOKEN] {
            assert!(!text.contains(secret), "a response leaked a secret: {text}");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn the_api_tests_an_integration_for_the_platform_and_its_own_agent_only() {
    let mock = MockServer::start().await;
    let env = env_for(&mock).await;
    let id = env
        .connect_integration("agent-a", "email", "sendgrid", sendgrid_settings())
        .await;
    scopes_mock(200, json!({"scopes": ["mail.send"]}))
        .mount(&mock)
        .await;
    let api = Api::start(&env).await;
    let client = env.db.client().await;
    let (_, token_a) = store::api_tokens::create(&client, "agent-a").await.unwrap();
    let (_, token_b) = store::api_tokens::create(&client, "agent-b").await.unwrap();
    let path = "/v1/agents/agent-a/integrations/email/test";

    let (status, body) = api.call(API_TOKEN, Method::POST, path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verdict"], "verified");
    assert_eq!(body["verification_status"], "verified");
    assert_eq!(body["integration_id"], id.to_string());
    assert_eq!(body["provider"], "sendgrid");
    assert!(body["tested_at"].is_string());

    let (status, body) = api.call(&token_a, Method::POST, path, None).await;
    assert_eq!((status, body["verdict"].as_str()), (200, Some("verified")));
    // Another agent's token: as if it did not exist.
    let (status, _) = api.call(&token_b, Method::POST, path, None).await;
    assert_eq!(status, 404);
    // No integration on that channel.
    let (status, body) = api
        .call(
            API_TOKEN,
            Method::POST,
            "/v1/agents/agent-a/integrations/sms/test",
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // The listing shows when it was tested.
    let (_, shown) = api
        .call(
            API_TOKEN,
            Method::GET,
            "/v1/agents/agent-a/integrations/email",
            None,
        )
        .await;
    assert_eq!(shown["verification_status"], "verified");
    assert!(shown["verified_at"].is_string() && shown["last_tested_at"].is_string());
}

#[tokio::test]
async fn a_verified_connect_stores_nothing_the_provider_refuses() {
    let mock = MockServer::start().await;
    let env = env_for(&mock).await;
    let api = Api::start(&env).await;
    let path = "/v1/agents/agent-v/integrations/email?verify=true";
    let body = json!({"provider": "sendgrid", "settings": sendgrid_settings()});

    let refused = scopes_mock(
        401,
        json!({"errors": [{"field": null, "message": "authorization required"}]}),
    )
    .mount_as_scoped(&mock)
    .await;
    let (status, answer) = api
        .call(API_TOKEN, Method::PUT, path, Some(body.clone()))
        .await;
    drop(refused);
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "connection_refused");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("authorization required")
    );
    assert_eq!(count(&env, "SELECT count(*) FROM integrations").await, 0);

    let down = scopes_mock(503, json!({})).mount_as_scoped(&mock).await;
    let (status, answer) = api
        .call(API_TOKEN, Method::PUT, path, Some(body.clone()))
        .await;
    drop(down);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (502, Some("connection_untested"))
    );
    assert_eq!(count(&env, "SELECT count(*) FROM integrations").await, 0);

    let _ok = scopes_mock(200, json!({"scopes": ["mail.send"]}))
        .mount_as_scoped(&mock)
        .await;
    let (status, answer) = api.call(API_TOKEN, Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["verification_status"], "verified");
    assert_eq!(answer["connection_test"]["verdict"], "verified");
    assert_eq!(answer["settings"]["api_key"], "****cdef");

    // `integrations connect --verify` takes the same path.
    drop(_ok);
    let _refused = scopes_mock(
        401,
        json!({"errors": [{"message": "authorization required"}]}),
    )
    .mount_as_scoped(&mock)
    .await;
    let err = switchboard::app::integrations_command(
        &env.settings(),
        switchboard::app::IntegrationCommand::Connect {
            agent: "agent-v2".into(),
            channel: Channel::Email,
            provider: None,
            settings: sendgrid_settings(),
            priority: 0,
            verify: true,
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the provider refused these settings: HTTP 401"),
        "{err}"
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM integrations WHERE agent_id = 'agent-v2'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_key_names_its_provider_when_none_is_given_and_is_refused_under_another() {
    let mock = MockServer::start().await;
    let env = env_for(&mock).await;
    let api = Api::start(&env).await;

    // API: no provider; the key says SendGrid.
    let (status, answer) = api
        .call(
            API_TOKEN,
            Method::PUT,
            "/v1/agents/agent-k/integrations/email",
            Some(json!({"settings": sendgrid_settings()})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["provider"], "sendgrid");

    // API: a SendGrid key under Resend is refused, naming SendGrid.
    let (status, answer) = api
        .call(
            API_TOKEN,
            Method::PUT,
            "/v1/agents/agent-k2/integrations/email",
            Some(json!({"provider": "resend", "settings": {
                "api_key": SG_KEY, "from_email": "hello@realty.test"}})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("looks like a SendGrid key"), "{message}");
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM integrations WHERE agent_id = 'agent-k2'"
        )
        .await,
        0
    );

    // No provider and no telling key: say what to do.
    let (status, answer) = api
        .call(
            API_TOKEN,
            Method::PUT,
            "/v1/agents/agent-k3/integrations/email",
            Some(json!({"settings": postmark_settings()})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("name the provider")
    );

    // CLI (library edge): an Account SID names Twilio.
    let settings = env.settings();
    let out = switchboard::app::integrations_command(
        &settings,
        switchboard::app::IntegrationCommand::Connect {
            agent: "agent-k4".into(),
            channel: Channel::Sms,
            provider: None,
            settings: twilio_settings(),
            priority: 0,
            verify: false,
        },
    )
    .await
    .unwrap();
    assert!(
        out.starts_with("connected twilio for sms of agent agent-k4"),
        "{out}"
    );

    // A Resend key under Mailgun, through the library call every path uses.
    let (pool, registry) = pool_and_registry(&env).await;
    let err = integrations::connect_with(
        &pool,
        settings.keyring.as_ref().unwrap(),
        &registry,
        ConnectRequest {
            agent_id: "agent-k5",
            channel: Channel::Email,
            provider: "mailgun",
            settings: &json!({"api_key": RESEND_KEY, "domain": "mg.realty.test",
                              "from_email": "a@mg.realty.test"}),
            active: true,
            priority: 0,
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("looks like a Resend key"), "{err}");
    // Nothing was asked of any provider.
    assert!(mock.received_requests().await.unwrap().is_empty());
}
