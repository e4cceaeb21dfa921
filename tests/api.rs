//! The `/v1` HTTP API end to end: real HTTP (reqwest) against a server on a
//! free port, over a fresh Postgres database and RabbitMQ vhost per test.
//! Every response body is kept, so each test can assert that no stored
//! secret ever came back.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use switchboard::http::{self, HttpState};
use switchboard::metrics::Metrics;
use switchboard::store;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN: &str = "sb-test-token-7f3a9c1e5b";
const AUTH_TOKEN: &str = "twilio-auth-SECRET-4d8e2a7c";
const RESEND_KEY: &str = "re_SECRET_api_key_93kd82";
const WEBHOOK_SECRET: &str = "whsec_U0VDUkVULXdlYmhvb2stc2lnbmluZw==";
const SID: &str = "AC00000000000000000000000000000001";

/// A running API server and a client that remembers every body it got.
struct Api {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    seen: std::sync::Mutex<Vec<String>>,
}

impl Api {
    /// Serves `env`'s settings on a pool of the server's own.
    async fn start(env: &Env) -> Self {
        let settings = env.settings();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = store::pool(&settings.database_url, http::HTTP_DB_POOL_SIZE).unwrap();
        let state = HttpState::new(pool, Metrics::new(), &settings);
        let stop = CancellationToken::new();
        let server = tokio::spawn(http::serve(
            format!("127.0.0.1:{port}").parse().unwrap(),
            state,
            stop.clone(),
        ));
        let api = Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            stop,
            server,
            seen: Default::default(),
        };
        let url = format!("{}/healthz", api.base);
        wait_until("the HTTP server to listen", || async {
            api.http.get(&url).send().await.ok().map(|_| ())
        })
        .await;
        api
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
    }

    /// Sends with the platform token; returns the status and the JSON body
    /// (`Null` when empty).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(TOKEN, method, path, body).await
    }

    /// Like [`Api::call`], with `token` instead of the platform's.
    async fn call_with(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    /// No response so far contained any of `secrets`.
    fn assert_never_returned(&self, secrets: &[&str]) {
        let seen = self.seen.lock().unwrap();
        assert!(!seen.is_empty());
        for body in seen.iter() {
            for secret in secrets {
                assert!(!body.contains(secret), "a response leaked a secret: {body}");
            }
        }
    }
}

/// The error shape every refusal has; returns its code.
fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(error["message"].is_string(), "no error message in {body}");
    assert!(error["details"].is_object(), "no error details in {body}");
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {body}"))
}

async fn env_with_token() -> Env {
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_API_TOKEN", TOKEN);
    env
}

#[tokio::test]
async fn requests_without_the_right_token_are_refused_with_401() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let url = format!("{}/v1/agents/a1", api.base);

    let (status, body) = api.send(api.http.get(&url)).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "unauthorized");

    let (status, body) = api.send(api.http.get(&url).bearer_auth("wrong")).await;
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let (status, _) = api
        .send(api.http.get(&url).bearer_auth(format!("{TOKEN}x")))
        .await;
    assert_eq!(status, 401);
    let (status, _) = api
        .send(api.http.get(&url).basic_auth("platform", Some(TOKEN)))
        .await;
    assert_eq!(status, 401);
    let response = api.http.get(&url).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    // Unknown routes are authenticated too, and answer in the same shape.
    let (status, _) = api
        .send(api.http.get(format!("{}/v1/nothing", api.base)))
        .await;
    assert_eq!(status, 401);
    let (status, body) = api.get("/v1/nothing").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = api.call(Method::POST, "/v1/agents/a1", None).await;
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));

    // The right token, in any case of the scheme.
    let (status, _) = api
        .send(
            api.http
                .get(&url)
                .header("authorization", format!("bearer {TOKEN}")),
        )
        .await;
    assert_eq!(status, 404, "a1 does not exist yet");
    // Health and metrics stay open.
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    api.assert_never_returned(&[TOKEN]);
    api.stop().await;
}

#[tokio::test]
async fn without_a_token_the_api_answers_503_and_serve_refuses_a_public_address() {
    let env = Env::with_defaults().await;
    let api = Api::start(&env).await;
    let (status, body) = api
        .send(api.http.get(format!("{}/v1/agents/a1", api.base)))
        .await;
    assert_eq!((status, error_code(&body)), (503, "unavailable"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SWITCHBOARD_API_TOKEN")
    );
    api.stop().await;

    let mut public = Env::with_defaults().await;
    public.set("SWITCHBOARD_HTTP_ADDR", "0.0.0.0:0");
    let parts = switchboard::app::Parts {
        worker: false,
        http: true,
    };
    let err = switchboard::app::start(public.settings(), parts, CancellationToken::new())
        .await
        .expect_err("no public listener without a token");
    assert!(err.to_string().contains("SWITCHBOARD_API_TOKEN"), "{err}");
}

#[tokio::test]
async fn an_integration_is_connected_shown_masked_disabled_listed_and_disconnected() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let path = "/v1/agents/agent-i/integrations/sms";
    let settings =
        json!({"account_sid": SID, "auth_token": AUTH_TOKEN, "phone_number": "+14155550100"});

    let (status, body) = api
        .call(
            Method::PUT,
            path,
            Some(json!({"provider": "twilio", "settings": settings})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["provider"], "twilio");
    assert_eq!(body["active"], true);
    assert_eq!(body["settings"]["account_sid"], SID);
    assert_eq!(body["settings"]["auth_token"], "****2a7c");
    let id = body["id"].as_str().unwrap().to_string();

    let (status, shown) = api.get(path).await;
    assert_eq!(status, 200);
    assert_eq!(shown["id"], id.as_str());

    let (status, body) = api
        .call(Method::PATCH, path, Some(json!({"active": false})))
        .await;
    assert_eq!((status, &body["active"]), (200, &json!(false)));

    // An email integration too, connected disabled from the start.
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/agents/agent-i/integrations/email",
            Some(json!({
                "provider": "resend",
                "settings": {"api_key": RESEND_KEY, "from_email": "jane@realty.test",
                             "webhook_secret": WEBHOOK_SECRET},
                "active": false,
            })),
        )
        .await;
    assert_eq!((status, &body["active"]), (200, &json!(false)), "{body}");

    let (status, body) = api.get("/v1/agents/agent-i/integrations").await;
    assert_eq!(status, 200);
    let channels: Vec<&str> = body["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["email", "sms"]);

    // The store holds ciphertext only.
    let row = env
        .db
        .client()
        .await
        .query_one(
            "SELECT string_agg(config::text || coalesce(encode(secrets_ciphertext, 'escape'), ''), '')
               FROM integrations",
            &[],
        )
        .await
        .unwrap();
    let stored: String = row.get(0);
    for secret in [AUTH_TOKEN, RESEND_KEY, WEBHOOK_SECRET] {
        assert!(!stored.contains(secret));
    }

    let (status, body) = api.call(Method::DELETE, path, None).await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = api.get(path).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, _) = api.call(Method::DELETE, path, None).await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(Method::PATCH, path, Some(json!({"active": true})))
        .await;
    assert_eq!(status, 404);

    api.assert_never_returned(&[AUTH_TOKEN, RESEND_KEY, WEBHOOK_SECRET]);
    api.stop().await;
}

#[tokio::test]
async fn bad_integrations_are_refused_naming_the_keys_and_the_providers() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let path = "/v1/agents/agent-b/integrations/sms";
    let put = |body: Value| api.call(Method::PUT, path, Some(body));

    let (status, body) = put(json!({"provider": "twilio",
        "settings": {"account_sid": SID, "phone_number": "+14155550100"}}))
    .await;
    assert_eq!((status, error_code(&body)), (422, "invalid"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auth_token")
    );
    assert!(
        body["error"]["details"]["providers_for_channel"]
            .as_array()
            .unwrap()
            .contains(&json!("twilio"))
    );
    assert!(
        body["error"]["details"]["settings"]
            .as_array()
            .unwrap()
            .contains(&json!({"key": "auth_token", "required": true, "secret": true}))
    );

    let (status, body) = put(json!({"provider": "twilio",
        "settings": {"account_sid": SID, "auth_token": AUTH_TOKEN, "phone_number": "+14155550100",
                     "auth_tokn": "typo"}}))
    .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auth_tokn")
    );

    let (status, body) = put(json!({"provider": "carrier-pigeon", "settings": {}})).await;
    assert_eq!(status, 422);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("carrier-pigeon") && message.contains("twilio"),
        "{message}"
    );

    let (status, body) = put(json!({"provider": "simulation"})).await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SWITCHBOARD_SIMULATE")
    );

    let (status, body) = put(json!({"provider": "twilio", "settings": [], "colour": "red"})).await;
    assert_eq!((status, error_code(&body)), (422, "invalid"));
    let (status, body) = put(json!({"provider": "twilio", "settings": "not an object"})).await;
    assert_eq!(status, 422, "{body}");

    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/agents/agent-b/integrations/fax",
            Some(json!({"provider": "twilio"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));

    let (status, body) = api
        .send(
            api.http
                .put(format!("{}{path}", api.base))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "bad_request"));

    let huge = "x".repeat(switchboard::api::BODY_LIMIT + 1);
    let (status, body) =
        put(json!({"provider": "twilio", "settings": {"account_sid": huge}})).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"));

    let (status, _) = api
        .call(Method::PATCH, path, Some(json!({"active": "yes"})))
        .await;
    assert_eq!(status, 422);

    let stored = count(&env, "SELECT count(*) FROM integrations").await;
    assert_eq!(stored, 0, "nothing refused was stored");
    api.assert_never_returned(&[AUTH_TOKEN]);
    api.stop().await;
}

#[tokio::test]
async fn a_posted_job_is_sent_by_the_worker_and_read_back_with_its_events() {
    let mut env = env_with_token().await;
    env.set("SWITCHBOARD_SIMULATE", "true");
    let worker = env.start_worker();
    let api = Api::start(&env).await;

    let job = email_job("agent-m", "Buyer@Example.com");
    let id = job_id(&job);
    let (status, body) = api
        .call(Method::POST, "/v1/messages", Some(job.clone()))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ids"], json!([id]));
    assert_eq!(body["messages"][0]["existing"], false);
    env.wait_for_status(id, "sent").await;

    let (status, message) = api.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(message["status"], "sent");
    assert_eq!(message["route"], "simulation");
    assert_eq!(message["provider"], "simulation");
    assert_eq!(message["provider_message_id"], format!("sim-{id}"));
    assert_eq!(message["recipient"], "buyer@example.com");
    assert_eq!(message["attempts"], 1);
    let events: Vec<&str> = message["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["queued", "sent"]);

    // The same job again: answered with the message, not sent again.
    let (status, body) = api
        .call(Method::POST, "/v1/messages", Some(job.clone()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["messages"][0],
        json!({"id": id, "status": "sent", "existing": true})
    );
    // Another job under that id is a conflict, whoever sends it.
    let mut other = job.clone();
    other["subject"] = "Something else".into();
    let (status, body) = api.call(Method::POST, "/v1/messages", Some(other)).await;
    assert_eq!((status, error_code(&body)), (409, "conflict"));
    let mut stolen = job.clone();
    stolen["agent_id"] = "agent-x".into();
    let (status, _) = api.call(Method::POST, "/v1/messages", Some(stolen)).await;
    assert_eq!(status, 409);

    let (status, _) = api.get(&format!("/v1/messages/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/v1/messages/not-a-uuid").await;
    assert_eq!(status, 404);

    worker.stop().await;
    assert_eq!(env.events(id).await, ["queued", "sent"], "sent once");
    api.stop().await;
}

#[tokio::test]
async fn an_invalid_batch_is_refused_whole_with_each_reason_and_nothing_is_published() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let publisher = env.publisher().await;

    let good = sms_job("agent-v", "+14155550123");
    let mut no_to = sms_job("agent-v", "+14155550124");
    no_to.as_object_mut().unwrap().remove("to");
    let bad_channel = json!({"id": Uuid::new_v4(), "agent_id": "agent-v", "channel": "fax",
                             "to": "+14155550125"});
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/messages",
            Some(json!([good, no_to, bad_channel, "not a job"])),
        )
        .await;
    assert_eq!((status, error_code(&body)), (422, "invalid"), "{body}");
    let problems = body["error"]["details"]["jobs"].as_array().unwrap();
    let indexes: Vec<u64> = problems
        .iter()
        .map(|p| p["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3]);
    assert!(problems[0]["reason"].as_str().unwrap().contains("to"));
    assert!(problems[1]["reason"].as_str().unwrap().contains("fax"));

    let (status, body) = api
        .call(Method::POST, "/v1/messages", Some(json!([good, good])))
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["details"]["jobs"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("repeats")
    );
    let (status, _) = api
        .call(Method::POST, "/v1/messages", Some(json!([])))
        .await;
    assert_eq!(status, 422);
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"id": Uuid::new_v4(), "agent_id": "a", "channel": "sms", "to": "+14155550123", "text": "x"}))
        .collect();
    let (status, body) = api
        .call(Method::POST, "/v1/messages", Some(Value::Array(too_many)))
        .await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"));

    assert_eq!(publisher.queue_depth().await, 0, "nothing was published");
    assert_eq!(
        count(&env, "SELECT count(*) FROM outbound_messages").await,
        0
    );

    // A valid batch is published whole.
    let batch: Vec<Value> = (0..3)
        .map(|i| sms_job("agent-v", &format!("+1415555020{i}")))
        .collect();
    let (status, body) = api
        .call(Method::POST, "/v1/messages", Some(Value::Array(batch)))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 3);
    wait_until("three jobs in the queue", || async {
        (publisher.queue_depth().await == 3).then_some(())
    })
    .await;
    api.stop().await;
}

#[tokio::test]
async fn an_agents_messages_are_listed_newest_first_in_pages_and_filtered() {
    let mut env = env_with_token().await;
    env.set("SWITCHBOARD_SIMULATE", "true");
    let worker = env.start_worker();
    let api = Api::start(&env).await;

    let mut jobs: Vec<Value> = (0..5)
        .map(|i| sms_job("agent-l", &format!("+1415555030{i}")))
        .collect();
    jobs[0]["campaign_id"] = "spring".into();
    jobs.push(email_job("agent-l", "buyer@example.com"));
    jobs.push(sms_job("agent-other", "+14155550399"));
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/messages",
            Some(Value::Array(jobs.clone())),
        )
        .await;
    assert_eq!(status, 202);
    for job in &jobs {
        env.wait_for_status(job_id(job), "sent").await;
    }
    worker.stop().await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/agents/agent-l/messages?limit=4".to_string(),
            Some(c) => format!("/v1/agents/agent-l/messages?limit=4&cursor={c}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().unwrap() {
            seen.push((
                m["created_at"].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "every message of agent-l once: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    let times = |v: &[(String, String)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(times(&seen), times(&sorted), "newest first");

    let (_, page) = api
        .get("/v1/agents/agent-l/messages?channel=email&status=sent")
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    let (_, page) = api
        .get("/v1/agents/agent-l/messages?campaign_id=spring")
        .await;
    assert_eq!(page["messages"][0]["id"], jobs[0]["id"]);
    let (_, page) = api.get("/v1/agents/agent-l/messages?status=failed").await;
    assert_eq!(page["messages"], json!([]));

    let (status, body) = api.get("/v1/agents/agent-l/messages?cursor=bogus").await;
    assert_eq!((status, error_code(&body)), (400, "bad_request"));
    let (status, _) = api.get("/v1/agents/agent-l/messages?channel=fax").await;
    assert_eq!(status, 422);
    let (status, _) = api.get("/v1/agents/agent-l/messages?colour=red").await;
    assert_eq!(status, 400);
    api.stop().await;
}

#[tokio::test]
async fn opt_outs_are_added_normalised_listed_in_pages_and_removed() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let path = "/v1/agents/agent-o/opt-outs";

    let (status, body) = api
        .call(
            Method::POST,
            path,
            Some(
                json!({"channel": "sms", "address": "+1 (415) 555-0142", "reason": "stop_keyword"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["opt_out"]["address"], "+14155550142");
    assert_eq!(body["opt_out"]["reason"], "stop_keyword");
    assert_eq!(body["opt_out"]["source"], "api");
    let (status, body) = api
        .call(
            Method::POST,
            path,
            Some(json!({"channel": "email", "address": "Buyer@Example.com"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["opt_out"]["address"], "buyer@example.com");
    assert_eq!(body["opt_out"]["reason"], "manual");
    // Another agent's opt-out is not this agent's.
    api.call(
        Method::POST,
        "/v1/agents/agent-p/opt-outs",
        Some(json!({"channel": "sms", "address": "+14155550999"})),
    )
    .await;

    let (status, page) = api.get(&format!("{path}?limit=1")).await;
    assert_eq!(status, 200);
    assert_eq!(page["opt_outs"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_i64().unwrap();
    let (_, page) = api.get(&format!("{path}?limit=1&cursor={cursor}")).await;
    assert_eq!(page["opt_outs"][0]["address"], "buyer@example.com");
    let cursor = page["next_cursor"].as_i64().unwrap();
    let (_, page) = api.get(&format!("{path}?limit=1&cursor={cursor}")).await;
    assert_eq!(
        (page["opt_outs"].clone(), page["next_cursor"].clone()),
        (json!([]), Value::Null)
    );

    let (_, page) = api
        .get(&format!(
            "{path}?channel=sms&address=%2B1%20415%20555%200142"
        ))
        .await;
    assert_eq!(page["opt_outs"].as_array().unwrap().len(), 1);
    let (_, page) = api.get(&format!("{path}?address=BUYER@example.com")).await;
    assert_eq!(page["opt_outs"][0]["channel"], "email");

    let (status, body) = api
        .call(
            Method::POST,
            path,
            Some(json!({"channel": "sms", "address": "+14155550142", "reason": "because"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (422, "invalid"));
    let (status, _) = api
        .call(
            Method::POST,
            path,
            Some(json!({"channel": "sms", "address": "not a number"})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = api
        .call(Method::POST, path, Some(json!({"channel": "sms"})))
        .await;
    assert_eq!(status, 422);

    let remove = format!("{path}?channel=sms&address=%2B1%20415%20555%200142");
    let (status, _) = api.call(Method::DELETE, &remove, None).await;
    assert_eq!(status, 204);
    let (status, body) = api.call(Method::DELETE, &remove, None).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, _) = api.call(Method::DELETE, path, None).await;
    assert_eq!(status, 400, "channel and address are required");
    assert_eq!(count(&env, "SELECT count(*) FROM opt_outs").await, 2);
    api.stop().await;
}

#[tokio::test]
async fn an_agent_is_created_updated_and_read() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let path = "/v1/agents/agent-a";

    let (status, body) = api.get(path).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, _) = api
        .call(Method::PATCH, path, Some(json!({"from_name": "Jane"})))
        .await;
    assert_eq!(status, 404, "PATCH does not create");

    let (status, body) = api
        .call(
            Method::PUT,
            path,
            Some(json!({
                "company_name": "Realty Co", "reply_email": "Jane@Realty.test",
                "timezone": "Europe/Paris", "send_window": "08:30-19:00",
                "limits": {"sms": {"per_second": 2, "per_day": 500}},
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["timezone"], "Europe/Paris");
    assert_eq!(body["send_window_start"], "08:30:00");
    assert_eq!(body["reply_email"], "jane@realty.test");

    let (status, body) = api
        .call(
            Method::PATCH,
            path,
            Some(json!({"quiet_hours_email": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["quiet_hours_email"], true);
    assert_eq!(
        body["company_name"], "Realty Co",
        "unchanged fields are kept"
    );
    let (_, shown) = api.get(path).await;
    assert_eq!(shown, body);

    for bad in [
        json!({"timezone": "Mars/Olympus"}),
        json!({"send_window": "9 to 5"}),
        json!({"reply_email": "nobody"}),
        json!({"limits": {"sms": {"per_minute": 3}}}),
        json!({"time_zone": "Europe/Paris"}),
    ] {
        let (status, body) = api.call(Method::PUT, path, Some(bad.clone())).await;
        assert_eq!((status, error_code(&body)), (422, "invalid"), "{bad}");
    }
    let (status, _) = api.get(&format!("/v1/agents/{}", "a".repeat(300))).await;
    assert_eq!(status, 404);
    api.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_by_the_server() {
    use tokio::io::AsyncReadExt;
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Only that it is closed is asserted (the server's header timeout);
    // the generous bound just keeps a broken server from hanging the test.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(120), idle.read(&mut buf))
        .await
        .expect("the server closes an idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The server still answers others.
    let (status, _) = api.get("/v1/agents/nobody").await;
    assert_eq!(status, 404);
    api.stop().await;
}

/// The status of a call with `token` instead of the platform's.
async fn call_as(api: &Api, token: &str, method: Method, path: &str, body: Option<Value>) -> u16 {
    api.call_with(token, method, path, body).await.0
}

#[tokio::test]
async fn an_agent_token_reaches_only_its_own_agent_on_every_route() {
    let mut env = env_with_token().await;
    env.set("SWITCHBOARD_SIMULATE", "true");
    let worker = env.start_worker();
    let api = Api::start(&env).await;
    let pool = store::pool(&env.settings().database_url, 1).unwrap();
    let client = pool.get().await.unwrap();
    let (_, token_a) = store::api_tokens::create(&client, "agent-a").await.unwrap();
    let (revoked_id, revoked) = store::api_tokens::create(&client, "agent-a").await.unwrap();
    assert!(
        store::api_tokens::revoke(&client, revoked_id)
            .await
            .unwrap()
    );
    // Only the digest is stored.
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM api_tokens WHERE token_hash::text LIKE '%' || $1 || '%'",
            &[&token_a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    // Each agent has a message; b also an integration and an opt-out.
    let job_a = sms_job("agent-a", "+14155550401");
    let job_b = sms_job("agent-b", "+14155550402");
    let (status, _) = api
        .call(Method::POST, "/v1/messages", Some(json!([job_a, job_b])))
        .await;
    assert_eq!(status, 202);
    env.wait_for_status(job_id(&job_a), "sent").await;
    env.wait_for_status(job_id(&job_b), "sent").await;
    worker.stop().await;
    let sim = json!({"provider": "simulation", "settings": {}, "active": true});
    let opt_out = json!({"channel": "sms", "address": "+14155550499"});
    for agent in ["agent-a", "agent-b"] {
        let path = format!("/v1/agents/{agent}/integrations/sms");
        assert_eq!(api.call(Method::PUT, &path, Some(sim.clone())).await.0, 200);
        let path = format!("/v1/agents/{agent}/opt-outs");
        let (status, _) = api.call(Method::POST, &path, Some(opt_out.clone())).await;
        assert!(status < 300, "{status}");
    }

    // Every agent-scoped route, with b in place of a: a's token gets 404;
    // with a itself it is let through.
    let routes = |agent: &str| -> Vec<(Method, String, Option<Value>)> {
        vec![
            (Method::GET, format!("/v1/agents/{agent}"), None),
            (
                Method::PATCH,
                format!("/v1/agents/{agent}"),
                Some(json!({"company_name": "X"})),
            ),
            (
                Method::PUT,
                format!("/v1/agents/{agent}"),
                Some(json!({"from_name": "X"})),
            ),
            (Method::GET, format!("/v1/agents/{agent}/messages"), None),
            (
                Method::GET,
                format!("/v1/agents/{agent}/integrations"),
                None,
            ),
            (
                Method::GET,
                format!("/v1/agents/{agent}/integrations/sms"),
                None,
            ),
            (
                Method::PATCH,
                format!("/v1/agents/{agent}/integrations/sms"),
                Some(json!({"active": true})),
            ),
            (
                Method::PUT,
                format!("/v1/agents/{agent}/integrations/sms"),
                Some(sim.clone()),
            ),
            (Method::GET, format!("/v1/agents/{agent}/opt-outs"), None),
            (
                Method::POST,
                format!("/v1/agents/{agent}/opt-outs"),
                Some(opt_out.clone()),
            ),
            (
                Method::DELETE,
                format!("/v1/agents/{agent}/opt-outs?channel=sms&address=%2B14155550499"),
                None,
            ),
            (
                Method::DELETE,
                format!("/v1/agents/{agent}/integrations/sms"),
                None,
            ),
        ]
    };
    for (method, path, body) in routes("agent-b") {
        let status = call_as(&api, &token_a, method.clone(), &path, body).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    for (method, path, body) in routes("agent-a") {
        let status = call_as(&api, &token_a, method.clone(), &path, body).await;
        assert!(status < 300, "{method} {path}: {status}");
    }
    // b's rows are untouched: its integration and opt-out are still there.
    let (_, b_integration) = api.get("/v1/agents/agent-b/integrations/sms").await;
    assert_eq!(b_integration["provider"], "simulation");
    let (_, b) = api.get("/v1/agents/agent-b").await;
    assert_ne!(b["company_name"], "X");

    // Messages by id, and sending as another agent.
    let a_path = format!("/v1/messages/{}", job_id(&job_a));
    let b_path = format!("/v1/messages/{}", job_id(&job_b));
    assert_eq!(
        call_as(&api, &token_a, Method::GET, &a_path, None).await,
        200
    );
    assert_eq!(
        call_as(&api, &token_a, Method::GET, &b_path, None).await,
        404
    );
    let new_b = sms_job("agent-b", "+14155550403");
    assert_eq!(
        call_as(&api, &token_a, Method::POST, "/v1/messages", Some(new_b)).await,
        404
    );
    assert_eq!(
        api.get(&b_path).await.0,
        200,
        "the platform reaches every agent"
    );
    // A route outside any agent is closed to agent tokens.
    assert_eq!(
        call_as(&api, &token_a, Method::GET, "/v1/nothing", None).await,
        404
    );
    // A revoked token is no token.
    assert_eq!(
        call_as(&api, &revoked, Method::GET, &a_path, None).await,
        401
    );
    api.assert_never_returned(&[TOKEN, &token_a]);
    api.stop().await;
}

#[tokio::test]
async fn an_address_failing_authentication_too_often_gets_429_with_retry_after() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let url = format!("{}/v1/agents/a1", api.base);
    for _ in 0..switchboard::api::auth::MAX_FAILURES {
        let (status, _) = api.send(api.http.get(&url).bearer_auth("sbt_guess")).await;
        assert_eq!(status, 401);
    }
    let response = api.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(
        response.status(),
        429,
        "even the right token waits out the window"
    );
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1 && wait <= switchboard::api::auth::FAILURE_WINDOW.as_secs());
    api.stop().await;
}

/// A message row of campaign `spring` with its events, as the worker and
/// the webhooks leave them.
async fn seed_message(
    env: &Env,
    agent: &str,
    channel: &str,
    to: &str,
    status: &str,
    events: &[(&str, Value)],
) -> Uuid {
    let client = env.db.client().await;
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO outbound_messages
                 (id, agent_id, channel, recipient, category, status, campaign_id, job)
             VALUES ($1, $2, $3, $4, 'marketing', $5, 'spring', '{}')",
            &[&id, &agent, &channel, &to, &status],
        )
        .await
        .unwrap();
    for (event, detail) in events {
        client
            .execute(
                "INSERT INTO outbound_events (message_id, agent_id, channel, event, detail)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &agent, &channel, event, detail],
            )
            .await
            .unwrap();
    }
    id
}

/// `GET /v1/campaigns/{id}/stats` counts each message once per stage, with
/// the replies the inbox credits to the latest message, the costs providers
/// reported (per currency), and rates; `GET /v1/agents/{id}/usage` counts
/// by channel and status and shows quota use; an agent token sees only its
/// own share.
#[tokio::test]
async fn campaign_stats_and_usage_count_each_stage_cost_and_quota() {
    let env = env_with_token().await;
    env.db
        .client()
        .await
        .batch_execute("INSERT INTO agents (id) VALUES ('agent-s1'), ('agent-s2')")
        .await
        .unwrap();
    let sent = json!({"provider_response": {"cost": "KES 0.8000"}});
    seed_message(
        &env,
        "agent-s1",
        "sms",
        "+254711000001",
        "delivered",
        &[
            ("sent", sent.clone()),
            ("delivered", json!({})),
            ("delivered", json!({})),
        ],
    )
    .await;
    seed_message(
        &env,
        "agent-s1",
        "sms",
        "+254711000002",
        "sent",
        &[("sent", sent.clone())],
    )
    .await;
    seed_message(
        &env,
        "agent-s1",
        "sms",
        "+254711000003",
        "failed",
        &[("failed", json!({}))],
    )
    .await;
    seed_message(
        &env,
        "agent-s1",
        "email",
        "a@example.com",
        "delivered",
        &[
            ("sent", json!({})),
            ("delivered", json!({})),
            ("opened", json!({})),
            ("opened", json!({})),
            ("clicked", json!({})),
        ],
    )
    .await;
    seed_message(
        &env,
        "agent-s1",
        "email",
        "b@example.com",
        "bounced",
        &[("sent", json!({})), ("bounced", json!({}))],
    )
    .await;
    seed_message(
        &env,
        "agent-s1",
        "voice",
        "+14155550123",
        "delivered",
        &[
            ("sent", json!({})),
            ("end-of-call-report", json!({"cost": 0.11})),
        ],
    )
    .await;
    seed_message(
        &env,
        "agent-s2",
        "sms",
        "+254711000009",
        "delivered",
        &[("sent", sent)],
    )
    .await;
    // The first SMS's recipient writes back: the inbox credits the reply to
    // agent-s1's latest message to them.
    let pool = store::pool(&env.db.url, 2).unwrap();
    let reply = switchboard::webhooks::inbox::Delivery {
        provider: "africastalking",
        account: store::provider_events::Account::Platform,
        agent_id: Some("agent-s1"),
        delivery_id: "ATXid_reply_1",
        event: switchboard::webhooks::inbox::ProviderEvent::Inbound {
            channel: switchboard::domain::Channel::Sms,
            from: switchboard::domain::PhoneNumber::parse("+254711000001").unwrap(),
            keyword: None,
        },
    };
    switchboard::webhooks::inbox::accept(&pool, reply)
        .await
        .unwrap();
    let client = env.db.client().await;
    client
        .batch_execute(
            r#"UPDATE agents SET limits = '{"sms": {"per_day": 500}}' WHERE id = 'agent-s1'"#,
        )
        .await
        .unwrap();
    let (today, _) = switchboard::store::quotas::Window::Day.bounds(chrono::Utc::now());
    client
        .execute(
            "INSERT INTO rate_counters (key, span, window_start, count)
             VALUES ('agent:agent-s1:sms', 'day', $1, 125)",
            &[&today],
        )
        .await
        .unwrap();
    let api = Api::start(&env).await;

    let (status, stats) = api
        .get("/v1/campaigns/spring/stats?agent_id=agent-s1")
        .await;
    assert_eq!(status, 200, "{stats}");
    let sms = &stats["channels"]["sms"];
    assert_eq!(
        (
            sms["messages"].clone(),
            sms["sent"].clone(),
            sms["delivered"].clone()
        ),
        (json!(3), json!(2), json!(1))
    );
    assert_eq!(
        (sms["replied"].clone(), sms["failed"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(sms["cost"], json!({"KES": "1.6000"}));
    assert_eq!(sms["rates"]["delivery"], json!(0.5));
    assert_eq!(sms["rates"]["reply"], json!(1.0));
    let email = &stats["channels"]["email"];
    assert_eq!(
        (
            email["sent"].clone(),
            email["delivered"].clone(),
            email["opened"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    assert_eq!(
        (email["clicked"].clone(), email["bounced"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(email["rates"]["bounce"], json!(0.5));
    assert_eq!(stats["channels"]["voice"]["cost"], json!({"USD": "0.11"}));
    // Both agents together.
    let (_, all) = api.get("/v1/campaigns/spring/stats").await;
    assert_eq!(all["channels"]["sms"]["messages"], 4);

    // An agent token sees its own share, and nobody else's.
    let (_, own) = switchboard::store::api_tokens::create(&client, "agent-s2")
        .await
        .unwrap();
    let (status, mine) = api
        .call_with(&own, Method::GET, "/v1/campaigns/spring/stats", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(mine["channels"]["sms"]["messages"], 1);
    assert!(mine["channels"].get("email").is_none());
    let (status, _) = api
        .call_with(
            &own,
            Method::GET,
            "/v1/campaigns/spring/stats?agent_id=agent-s1",
            None,
        )
        .await;
    assert_eq!(status, 404);

    let (status, usage) = api.get("/v1/agents/agent-s1/usage").await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["channels"]["sms"]["total"], 3);
    assert_eq!(usage["channels"]["sms"]["by_status"]["failed"], 1);
    assert_eq!(usage["channels"]["email"]["by_status"]["bounced"], 1);
    assert_eq!(usage["cost"], json!({"KES": "1.6000", "USD": "0.11"}));
    let quota = &usage["quotas"][0];
    assert_eq!(
        (
            quota["scope"].clone(),
            quota["window"].clone(),
            quota["used"].clone()
        ),
        (json!("agent"), json!("day"), json!(125))
    );
    assert_eq!(quota["share_used"], json!(0.25));
    let (status, empty) = api
        .get("/v1/agents/agent-s1/usage?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z")
        .await;
    assert_eq!(status, 200);
    assert_eq!(empty["channels"], json!({}));
    let (status, body) = api.get("/v1/agents/agent-s1/usage?from=yesterday").await;
    assert_eq!((status, error_code(&body)), (400, "bad_request"));
    let (status, _) = api
        .call_with(&own, Method::GET, "/v1/agents/agent-s1/usage", None)
        .await;
    assert_eq!(status, 404);
    api.stop().await;
}

/// `POST /v1/sequences/{id}/cancel` cancels the parked steps now and the
/// queued ones as they arrive, for one recipient or all; an agent token
/// cancels only its own agent's sequences.
#[tokio::test]
async fn a_sequence_is_cancelled_over_the_api() {
    let env = env_with_token().await;
    let api = Api::start(&env).await;
    let client = env.db.client().await;
    let step = json!({"id": Uuid::new_v4(), "agent_id": "agent-q", "channel": "sms",
                      "to": "+14155550123", "text": "Step 2", "sequence_id": "seq-1"});
    client
        .execute(
            "INSERT INTO scheduled_jobs (id, agent_id, channel, job, due_at, reason)
             VALUES ($1, 'agent-q', 'sms', $2, now() + interval '1 day', 'send_at')",
            &[&job_id(&step), &step],
        )
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO agents (id) VALUES ('agent-q'), ('agent-other')")
        .await
        .unwrap();
    let (_, other) = switchboard::store::api_tokens::create(&client, "agent-other")
        .await
        .unwrap();
    let body = json!({"agent_id": "agent-q", "to": "+1 (415) 555-0123"});
    let (status, _) = api
        .call_with(
            &other,
            Method::POST,
            "/v1/sequences/seq-1/cancel",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 404);
    let (status, answer) = api
        .call(Method::POST, "/v1/sequences/seq-1/cancel", Some(body))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cancelled_parked_steps"], 1);
    assert_eq!(answer["to"], "+14155550123");
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM sequence_cancellations
              WHERE agent_id = 'agent-q' AND sequence_id = 'seq-1' AND recipient = '+14155550123'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/sequences/seq-1/cancel",
            Some(json!({"to": "x"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (422, "invalid"));
    api.stop().await;
}
