//! Shared test harness: a fresh Postgres database and a fresh RabbitMQ vhost
//! per test, settings built without touching the process environment, an
//! in-process worker, and checks of provider requests against the official
//! OpenAPI specs in `tests/specs` (copies, with their licences).
#![allow(dead_code)]

pub mod proxy;

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use switchboard::config::Settings;
use switchboard::metrics::Metrics;
use switchboard::store;
use switchboard::worker::{self, WorkerContext};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const TEST_KEY: [u8; 32] = [42u8; 32];

pub fn test_key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(TEST_KEY)
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("sb_test_{}", Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(PG_ADMIN_URL, tokio_postgres::NoTls)
            .await
            .expect("Postgres on 127.0.0.1:5432 (run scripts/test.sh, which starts it)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        store::migrate(&url).await.expect("migrations apply");
        Self { name, url }
    }

    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }

    pub async fn client(&self) -> deadpool_postgres::Client {
        store::pool(&self.url, 1)
            .unwrap()
            .get()
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A RabbitMQ vhost that exists for one test, so the fixed queue names of
/// DESIGN.md never collide between tests or with a running switchboard.
pub struct TestVhost {
    pub name: String,
    pub url: String,
}

impl TestVhost {
    pub fn new() -> Self {
        let name = format!("sb-test-{}", Uuid::new_v4().simple());
        run_rabbitmqctl(&["add_vhost", &name]);
        run_rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{name}");
        Self { name, url }
    }

    pub fn url_via(&self, port: u16) -> String {
        format!("amqp://guest:guest@127.0.0.1:{port}/{}", self.name)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

fn run_rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed (scripts/test.sh installs RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Environment for one test: fresh database and vhost, fast retries.
pub struct Env {
    pub db: TestDb,
    pub vhost: TestVhost,
    pub vars: HashMap<String, String>,
}

impl Env {
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let vhost = TestVhost::new();
        let mut vars = HashMap::new();
        vars.insert("DATABASE_URL".into(), db.url.clone());
        vars.insert("AMQP_URL".into(), vhost.url.clone());
        vars.insert("SWITCHBOARD_ENCRYPTION_KEY".into(), test_key_b64());
        vars.insert("SWITCHBOARD_RETRY_BASE_MS".into(), "20".into());
        vars.insert("SWITCHBOARD_RETRY_MAX_MS".into(), "200".into());
        vars.insert("SWITCHBOARD_PROVIDER_TIMEOUT_MS".into(), "5000".into());
        vars.insert("SWITCHBOARD_LEASE_SECS".into(), "5".into());
        vars.insert("SWITCHBOARD_SHUTDOWN_GRACE_SECS".into(), "10".into());
        vars.insert("SWITCHBOARD_DB_POOL_SIZE".into(), "8".into());
        Self { db, vhost, vars }
    }

    /// An environment with switchboard's default settings: only the
    /// connections and the credential key are set. Guarantees are tested
    /// with this, so that what passes is what users run.
    pub async fn with_defaults() -> Self {
        let db = TestDb::new().await;
        let vhost = TestVhost::new();
        let mut vars = HashMap::new();
        vars.insert("DATABASE_URL".into(), db.url.clone());
        vars.insert("AMQP_URL".into(), vhost.url.clone());
        vars.insert("SWITCHBOARD_ENCRYPTION_KEY".into(), test_key_b64());
        Self { db, vhost, vars }
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.vars.insert(key.into(), value.into());
        self
    }

    pub fn settings(&self) -> Settings {
        Settings::from_lookup(|k| self.vars.get(k).cloned()).expect("test settings are valid")
    }

    /// Starts an in-process worker; stop it with the returned handle.
    pub fn start_worker(&self) -> RunningWorker {
        self.start_worker_with_clock(Arc::new(switchboard::clock::SystemClock))
    }

    /// Starts an in-process worker whose policy time is `clock`.
    pub fn start_worker_with_clock(
        &self,
        clock: Arc<dyn switchboard::clock::Clock>,
    ) -> RunningWorker {
        let ctx = WorkerContext::with_clock(self.settings(), Metrics::new(), clock)
            .expect("worker context");
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker::run(ctx.clone(), token.clone()));
        RunningWorker { ctx, token, handle }
    }

    /// Connects an agent's own provider account, as `integrations connect` does.
    pub async fn connect_integration(
        &self,
        agent: &str,
        channel: &str,
        provider: &str,
        settings: serde_json::Value,
    ) -> Uuid {
        let s = self.settings();
        let pool = store::pool(&s.database_url, 2).unwrap();
        let registry = switchboard::providers::Registry::new(
            switchboard::providers::http_client(s.provider_timeout),
            &s.provider_urls,
        );
        switchboard::integrations::connect(
            &pool,
            s.keyring.as_ref().unwrap(),
            &registry,
            agent,
            channel.parse().unwrap(),
            provider,
            &settings,
        )
        .await
        .unwrap()
    }

    /// Serves the HTTP endpoints over the worker's pool on a free port;
    /// returns the base URL and the token that stops the server.
    pub fn start_http(
        &self,
        worker: &RunningWorker,
    ) -> (
        String,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        self.start_http_with(worker, |_| {})
    }

    /// [`Env::start_http`], with the server's state adjusted first (a test
    /// that must reach a fixed public host, like Amazon SNS's, gives the
    /// state a client whose DNS answers with a local server).
    pub fn start_http_with(
        &self,
        worker: &RunningWorker,
        adjust: impl FnOnce(&mut switchboard::http::HttpState),
    ) -> (
        String,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut state = switchboard::http::HttpState::new(
            worker.ctx.pool.clone(),
            worker.ctx.metrics.clone(),
            &self.settings(),
        );
        adjust(&mut state);
        let token = CancellationToken::new();
        let server = tokio::spawn(switchboard::http::serve(
            format!("127.0.0.1:{port}").parse().unwrap(),
            state,
            token.clone(),
        ));
        (format!("http://127.0.0.1:{port}"), token, server)
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher::connect(&self.vhost.url).await
    }

    pub async fn status(&self, id: Uuid) -> Option<String> {
        let client = self.db.client().await;
        client
            .query_opt("SELECT status FROM outbound_messages WHERE id = $1", &[&id])
            .await
            .unwrap()
            .map(|r| r.get(0))
    }

    /// Waits until the message has `status`, or panics after a generous
    /// deadline (a slow, busy machine must still pass).
    pub async fn wait_for_status(&self, id: Uuid, status: &str) -> store::messages::MessageRow {
        let client = self.db.client().await;
        wait_until(&format!("message {id} to be {status}"), || async {
            let row = store::messages::get(&client, id).await.unwrap()?;
            (row.status == status).then_some(row)
        })
        .await
    }

    pub async fn event_details(&self, id: Uuid) -> Vec<(String, serde_json::Value)> {
        let client = self.db.client().await;
        store::messages::events(&client, id).await.unwrap()
    }

    pub async fn events(&self, id: Uuid) -> Vec<String> {
        let client = self.db.client().await;
        store::messages::events(&client, id)
            .await
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect()
    }
}

pub struct RunningWorker {
    pub ctx: Arc<WorkerContext>,
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker stops within its grace period")
            .unwrap();
    }
}

/// Polls `check` until it returns `Some`, for at most 90 seconds.
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for(what, || {
        let seen = check();
        async move { seen.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}

/// Like [`wait_until`], but the check says what it saw when not yet
/// satisfied, and a timeout reports the last thing it saw.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if tokio::time::Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Publishes jobs the way an application service would.
pub struct Publisher {
    pub conn: lapin::Connection,
    pub channel: lapin::Channel,
}

impl Publisher {
    pub async fn connect(url: &str) -> Self {
        let conn = switchboard::amqp::connect(url, "test-publisher")
            .await
            .unwrap();
        switchboard::amqp::declare_topology(&conn).await.unwrap();
        let channel = switchboard::amqp::confirm_channel(&conn).await.unwrap();
        Self { conn, channel }
    }

    pub async fn publish(&self, job: &serde_json::Value) {
        let id = job["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_default();
        let agent = job["agent_id"].as_str().unwrap_or("unknown");
        switchboard::amqp::publish_job(&self.channel, id, agent, job.to_string().as_bytes())
            .await
            .unwrap();
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        switchboard::amqp::publish_confirmed(
            &self.channel,
            switchboard::amqp::JOBS_EXCHANGE,
            routing_key,
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    }

    /// Messages ready in `switchboard.send`.
    pub async fn queue_depth(&self) -> u32 {
        self.channel
            .queue_declare(
                switchboard::amqp::SEND_QUEUE.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Takes `n` messages from `switchboard.dead`: (body, reason header).
    pub async fn take_dead_letters(&self, n: usize) -> Vec<(Vec<u8>, String)> {
        let ch = self.conn.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                switchboard::amqp::DEAD_QUEUE.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let d = tokio::time::timeout(Duration::from_secs(60), consumer.next())
                .await
                .expect("a dead letter arrives")
                .unwrap()
                .unwrap();
            let reason = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(switchboard::amqp::REASON_HEADER).cloned())
                .map(|v| match v {
                    AMQPValue::LongString(s) => s.to_string(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            d.ack(BasicAckOptions::default()).await.unwrap();
            out.push((d.data.clone(), reason));
        }
        out
    }
}

pub fn sms_job(agent: &str, to: &str) -> serde_json::Value {
    serde_json::json!({
        "id": Uuid::new_v4().to_string(),
        "agent_id": agent,
        "channel": "sms",
        "to": to,
        "text": "Open house on Saturday at 10am",
        "category": "transactional",
    })
}

pub fn email_job(agent: &str, to: &str) -> serde_json::Value {
    serde_json::json!({
        "id": Uuid::new_v4().to_string(),
        "agent_id": agent,
        "channel": "email",
        "to": to,
        "subject": "New listing near you",
        "html": "<p>3 bed, 2 bath</p>",
        "text": "3 bed, 2 bath",
        "category": "marketing",
        "metadata": {"listing": "L-77"}
    })
}

pub fn job_id(job: &serde_json::Value) -> Uuid {
    Uuid::parse_str(job["id"].as_str().unwrap()).unwrap()
}

/// An official OpenAPI file: the copy in `tests/specs` (with its licence in
/// `tests/specs/LICENSES.md`), else `../shared/specs`.
pub fn spec(file: &str) -> serde_json::Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ours = root.join("tests/specs").join(file);
    let path = if ours.exists() {
        ours
    } else {
        root.join("../shared/specs").join(file)
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The request-body schema of `method path` for `content_type`, with a
/// top-level `$ref` resolved.
pub fn request_schema(
    spec: &serde_json::Value,
    path: &str,
    method: &str,
    content_type: &str,
) -> serde_json::Value {
    let body = &spec["paths"][path][method]["requestBody"];
    let body = resolve(spec, body);
    let schema = &body["content"][content_type]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} has a {content_type} body in the spec"
    );
    resolve(spec, schema).clone()
}

fn resolve<'a>(spec: &'a serde_json::Value, v: &'a serde_json::Value) -> &'a serde_json::Value {
    match v.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            spec.pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {r}"))
        }
        None => v,
    }
}

/// Every field sent is declared by the schema and every required field is
/// sent. Returns the field names for further checks.
pub fn assert_fields_match_schema(schema: &serde_json::Value, sent: &[String]) {
    let props = schema["properties"]
        .as_object()
        .expect("schema has properties");
    for f in sent {
        assert!(
            props.contains_key(f),
            "field `{f}` is not in the provider's OpenAPI schema"
        );
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let r = r.as_str().unwrap();
        assert!(
            sent.iter().any(|f| f == r),
            "required field `{r}` was not sent"
        );
    }
}

/// Parses an `application/x-www-form-urlencoded` body into ordered pairs.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Validates `instance` against a schema of the spec at `pointer`
/// (`/components/schemas/SendEmailRequest`), with the spec's own `$ref`s
/// resolvable. Panics with every violation listed.
pub fn assert_valid_against_spec(
    spec: &serde_json::Value,
    schema: &serde_json::Value,
    instance: &serde_json::Value,
) {
    let mut root = schema.clone();
    if let Some(obj) = root.as_object_mut() {
        obj.insert("components".into(), spec["components"].clone());
    }
    let validator = jsonschema::validator_for(&root).expect("the provider's schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "request does not match the provider's OpenAPI schema: {errors:#?}\nrequest: {instance}"
    );
}

/// Twilio's form as the JSON object its OpenAPI schema describes
/// (repeated `MediaUrl` become an array).
pub fn twilio_form_as_json(pairs: &[(String, String)]) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    for (k, v) in pairs {
        if k == "MediaUrl" {
            obj.entry(k.clone())
                .or_insert_with(|| serde_json::Value::Array(vec![]))
                .as_array_mut()
                .unwrap()
                .push(v.clone().into());
        } else {
            obj.insert(k.clone(), v.clone().into());
        }
    }
    serde_json::Value::Object(obj)
}

/// The single number a query such as `SELECT count(*) …` returns.
pub async fn count(env: &Env, sql: &str) -> i64 {
    env.db
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// A mock of Twilio's CreateMessage that matches only the request Twilio
/// would accept from this account: the path, HTTP basic auth with its auth
/// token, and a form body. Anything else gets wiremock's 404, and the test
/// sees the job fail.
pub fn twilio_create_message(sid: &str, token: &str) -> wiremock::MockBuilder {
    use wiremock::matchers::{header, method, path};
    wiremock::Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{sid}/Messages.json")))
        .and(header("authorization", basic_auth(sid, token).as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
}
