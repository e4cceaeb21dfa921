//! What ships beside the code, checked rather than trusted: the publishing
//! examples run against the real broker, the published job schema agrees with
//! the worker's parser, and every deploy file parses and names only metrics
//! that switchboard exports, so a renamed metric breaks the build instead of
//! a dashboard.
//!
//! The examples need `python3` with pika and `node` with amqplib;
//! `scripts/test.sh` installs both and sets `SWITCHBOARD_REQUIRE_EXAMPLES=1`,
//! which turns a missing one into a failure. Run alone, those tests say they
//! skipped. `promtool` checks run only where it is installed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeclareOptions};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard::domain::SendJob;

const JOBS_EXCHANGE: &str = "switchboard.jobs";
const SEND_QUEUE: &str = "switchboard.send";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every file under `dir`, recursively, as paths relative to the repository.
fn files_under(dir: &str) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &repo().join(dir), &mut out);
    out.sort();
    out
}

// --- publishing examples ------------------------------------------------------------

/// A missing interpreter or client library fails the test under
/// `scripts/test.sh` (which installs them) and skips it otherwise.
fn unavailable(what: &str) {
    if std::env::var("SWITCHBOARD_REQUIRE_EXAMPLES").as_deref() == Ok("1") {
        panic!("{what} (scripts/test.sh installs it)");
    }
    eprintln!("skipped: {what}; scripts/test.sh installs it");
}

fn runs_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `target/pyenv/bin/python` (where scripts/test.sh installs pika), else a
/// `python3` that can import pika.
fn python_with_pika() -> Option<PathBuf> {
    [repo().join("target/pyenv/bin/python"), "python3".into()]
        .into_iter()
        .find(|py| runs_ok(Command::new(py).args(["-c", "import pika"])))
}

fn node_with_amqplib() -> Option<PathBuf> {
    let node = PathBuf::from("node");
    runs_ok(
        Command::new(&node)
            .args(["-e", "require('amqplib')"])
            .current_dir(repo().join("examples")),
    )
    .then_some(node)
}

/// Runs an example against `amqp_url`, with a job file or without one (its
/// sample job), and returns the job id it printed.
fn run_example(interpreter: &Path, script: &str, amqp_url: &str, job: Option<&Path>) -> String {
    let mut cmd = Command::new(interpreter);
    cmd.arg(repo().join(script))
        .env("AMQP_URL", amqp_url)
        .current_dir(repo().join("examples"));
    if let Some(job) = job {
        cmd.arg(job);
    }
    let out = cmd.output().expect("run the example");
    assert!(
        out.status.success(),
        "{script} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Publishes with the example twice on a fresh vhost where no worker ever
/// ran (the sample job, then a job from a file), and checks both jobs wait in
/// `switchboard.send` as DESIGN.md asks publishers to send them, and that
/// the topology the example declared is the one the worker accepts.
async fn example_publishes_jobs_the_worker_accepts(interpreter: &Path, script: &str) {
    let vhost = common::TestVhost::new();
    let sample_id = run_example(interpreter, script, &vhost.url, None);

    // Declaring again is harmless, and an id the publisher chose is kept.
    let chosen = uuid::Uuid::new_v4().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.json");
    let job = json!({
        "id": chosen, "agent_id": "agent-from-file", "channel": "sms",
        "to": "+14155550123", "text": "hello", "category": "transactional"
    });
    std::fs::write(&file, job.to_string()).unwrap();
    assert_eq!(
        run_example(interpreter, script, &vhost.url, Some(&file)),
        chosen
    );

    let conn = switchboard::amqp::connect(&vhost.url, "deploy-test")
        .await
        .expect("connect to the test vhost");
    let ch = conn.create_channel().await.unwrap();
    let mut seen = Vec::new();
    for expected_id in [&sample_id, &chosen] {
        let msg = ch
            .basic_get(SEND_QUEUE.into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{script}: job {expected_id} is not in {SEND_QUEUE}"));
        let d = &msg.delivery;
        let p = &d.properties;
        let parsed = SendJob::parse(&d.data)
            .unwrap_or_else(|r| panic!("{script}: the worker rejects its job: {}", r.reason));
        assert_eq!(parsed.id.to_string(), *expected_id, "{script}: body id");
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(expected_id.as_str()),
            "{script}: message_id = job id"
        );
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json"),
            "{script}: content_type"
        );
        assert_eq!(*p.delivery_mode(), Some(2), "{script}: persistent delivery");
        assert_eq!(d.exchange.as_str(), JOBS_EXCHANGE, "{script}: exchange");
        assert_eq!(
            d.routing_key.as_str(),
            parsed.agent_id,
            "{script}: routing key = agent_id"
        );
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        seen.push(parsed.agent_id);
    }
    assert!(
        ch.basic_get(SEND_QUEUE.into(), BasicGetOptions::default())
            .await
            .unwrap()
            .is_none(),
        "{script}: one message per run"
    );
    assert_eq!(seen[1], "agent-from-file");

    // The same declarations with the worker's arguments succeed only when
    // what the example made is equivalent (durable topic exchange, durable
    // queue); RabbitMQ closes the channel otherwise.
    ch.exchange_declare(
        JOBS_EXCHANGE.into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the example's exchange is a durable topic exchange");
    ch.queue_declare(
        SEND_QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the example's queue is durable with default arguments");
    ch.queue_bind(
        SEND_QUEUE.into(),
        JOBS_EXCHANGE.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    switchboard::amqp::declare_topology(&conn)
        .await
        .expect("the worker starts on the topology the example declared");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn the_python_example_publishes_a_job_before_any_worker_ran() {
    match python_with_pika() {
        Some(py) => example_publishes_jobs_the_worker_accepts(&py, "examples/publish.py").await,
        None => unavailable("python3 with pika is not installed"),
    }
}

#[tokio::test]
async fn the_node_example_publishes_a_job_before_any_worker_ran() {
    match node_with_amqplib() {
        Some(node) => example_publishes_jobs_the_worker_accepts(&node, "examples/publish.js").await,
        None => unavailable("node with amqplib (npm install in examples/) is not installed"),
    }
}

// --- the job schema -----------------------------------------------------------------

fn job_schema() -> Value {
    serde_json::from_str(&read("docs/job.schema.json")).expect("docs/job.schema.json is JSON")
}

const ID: &str = "0b6f7f0e-6a39-4c39-8d59-6a0f0a6f5f11";

/// `base` with `changes` applied: a `null` in `changes` removes the field,
/// so tests can say "without `to`"; `Value::Null` as a value is spelled
/// `json!({"field": {"$null": true}})`.
fn with(base: &Value, changes: Value) -> Value {
    let mut v = base.clone();
    let obj = v.as_object_mut().unwrap();
    for (k, change) in changes.as_object().unwrap() {
        match change {
            Value::Null => {
                obj.remove(k);
            }
            Value::Object(o) if o.get("$null") == Some(&Value::Bool(true)) => {
                obj.insert(k.clone(), Value::Null);
            }
            other => {
                obj.insert(k.clone(), other.clone());
            }
        }
    }
    v
}

#[test]
fn the_job_schema_is_a_valid_schema_of_exactly_the_v1_fields() {
    let schema = job_schema();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "docs/job.schema.json is a valid JSON Schema"
    );
    jsonschema::validator_for(&schema).expect("the schema compiles");

    // The wire struct with every field set names every field the worker reads.
    let all_null: serde_json::Map<String, Value> = [
        "id",
        "agent_id",
        "channel",
        "to",
        "category",
        "subject",
        "text",
        "html",
        "reply_to",
        "media_urls",
        "template",
        "send_at",
        "timezone",
        "campaign_id",
        "sequence_id",
        "step",
        "metadata",
        "contact_id",
        "cap",
        "fallback",
        "parent_id",
    ]
    .into_iter()
    .map(|k| (k.to_string(), json!(1)))
    .collect();
    let wire: switchboard::domain::SendJobV1 =
        serde_json::from_value(Value::Object(all_null)).unwrap();
    let wire_fields: BTreeSet<String> = serde_json::to_value(&wire)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let schema_fields: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        schema_fields, wire_fields,
        "the schema describes exactly the fields of SendJobV1"
    );
    assert_eq!(
        schema["required"],
        json!(["id", "agent_id", "channel", "to"]),
        "required fields as in DESIGN.md"
    );
    assert_eq!(
        schema["additionalProperties"],
        json!(true),
        "unknown fields are ignored, as DESIGN.md promises"
    );
}

#[test]
fn the_worker_and_the_schema_agree_on_a_corpus_of_jobs() {
    let validator = jsonschema::validator_for(&job_schema()).unwrap();
    let email = json!({"id": ID, "agent_id": "agent-42", "channel": "email",
                       "to": "buyer@example.com", "subject": "New listing", "text": "3 bed"});
    let sms = json!({"id": ID, "agent_id": "agent-42", "channel": "sms",
                     "to": "+14155550123", "text": "hello"});
    let whatsapp = json!({"id": ID, "agent_id": "agent-42", "channel": "whatsapp",
                          "to": "whatsapp:+14155550123", "text": "hello"});
    let voice = json!({"id": ID, "agent_id": "agent-42", "channel": "voice", "to": "+14155550123"});
    let set_null = json!({"$null": true});
    let long = "x".repeat(999);

    let valid: Vec<(&str, Value)> = vec![
        ("email with text", email.clone()),
        (
            "email with html only",
            with(&email, json!({"text": null, "html": "<p>hi</p>"})),
        ),
        (
            "email with a template only",
            with(
                &email,
                json!({"subject": null, "text": null, "template": {"id": "welcome"}}),
            ),
        ),
        ("sms with text", sms.clone()),
        (
            "sms with media only",
            with(
                &sms,
                json!({"text": null, "media_urls": ["https://example.com/a.jpg"]}),
            ),
        ),
        ("whatsapp with text", whatsapp.clone()),
        (
            "whatsapp with a template",
            with(
                &whatsapp,
                json!({"text": null, "template": {"name": "hello_world", "language": "en"}}),
            ),
        ),
        (
            "whatsapp with media",
            with(
                &whatsapp,
                json!({"text": null, "media_urls": ["HTTPS://example.com/a.jpg"]}),
            ),
        ),
        ("voice with no content", voice.clone()),
        (
            "every field",
            with(
                &email,
                json!({
            "category": "transactional", "html": "<p>3 bed</p>", "reply_to": "agent@example.com",
            "media_urls": ["https://example.com/a.jpg"], "template": {"id": "t"},
            "send_at": "2026-12-01T09:30:00.250+01:00", "timezone": "Europe/Berlin",
            "campaign_id": "spring", "sequence_id": "seq-1", "step": 2,
            "metadata": {"listing": "L-9981", "n": 3}}),
            ),
        ),
        (
            "optional fields null",
            with(
                &sms,
                json!({
            "category": set_null, "subject": set_null, "html": set_null, "reply_to": set_null,
            "media_urls": set_null, "template": set_null, "send_at": set_null,
            "timezone": set_null, "campaign_id": set_null, "sequence_id": set_null,
            "step": set_null, "metadata": set_null}),
            ),
        ),
        (
            "marketing category",
            with(&sms, json!({"category": "marketing"})),
        ),
        (
            "unknown fields",
            with(&sms, json!({"priority": "high", "x": [1, 2]})),
        ),
        (
            "simple uuid",
            with(&sms, json!({"id": "0b6f7f0e6a394c398d596a0f0a6f5f11"})),
        ),
        (
            "braced uuid",
            with(&sms, json!({"id": format!("{{{ID}}}")})),
        ),
        (
            "urn uuid",
            with(&sms, json!({"id": format!("urn:uuid:{ID}")})),
        ),
        (
            "upper-case uuid",
            with(&sms, json!({"id": ID.to_uppercase()})),
        ),
        (
            "send_at in UTC",
            with(&sms, json!({"send_at": "2026-12-01T09:30:00Z"})),
        ),
        (
            "agent id with spaces around it",
            with(&sms, json!({"agent_id": "  agent-42 "})),
        ),
        (
            "subject of 998 characters",
            with(&email, json!({"subject": "s".repeat(998)})),
        ),
        ("negative step", with(&sms, json!({"step": -1}))),
        (
            "a contact id and a cap mode",
            with(&sms, json!({"contact_id": "lead-77", "cap": "drop"})),
        ),
        ("cap defer", with(&sms, json!({"cap": "defer"}))),
        (
            "a fallback to whatsapp, then email",
            with(
                &sms,
                json!({"fallback": [{"channel": "whatsapp"},
                                    {"channel": "email", "to": "lead@example.com",
                                     "subject": "Open house", "text": "Saturday"}]}),
            ),
        ),
        (
            "a parent id",
            with(
                &sms,
                json!({"parent_id": "6f1c1c7e-3f55-4b9e-9d57-0f0e6f1a2b3c"}),
            ),
        ),
    ];
    let invalid: Vec<(&str, Value)> = vec![
        ("cap not a mode", with(&sms, json!({"cap": "skip"}))),
        (
            "fallback not an array",
            with(&sms, json!({"fallback": {"channel": "sms"}})),
        ),
        (
            "fallback without a channel",
            with(&sms, json!({"fallback": [{"to": "+14155550123"}]})),
        ),
        (
            "fallback setting the category",
            with(
                &sms,
                json!({"fallback": [{"channel": "sms", "category": "marketing"}]}),
            ),
        ),
        (
            "fallback to an unknown channel",
            with(&sms, json!({"fallback": [{"channel": "fax"}]})),
        ),
        (
            "five fallbacks",
            with(
                &sms,
                json!({"fallback": [{"channel": "sms"}, {"channel": "sms"},
                {"channel": "sms"}, {"channel": "sms"}, {"channel": "sms"}]}),
            ),
        ),
        (
            "parent id not a uuid",
            with(&sms, json!({"parent_id": "job-1"})),
        ),
        ("contact id a number", with(&sms, json!({"contact_id": 7}))),
        (
            "contact id with a line break",
            with(&sms, json!({"contact_id": "a\nb"})),
        ),
        ("no id", with(&sms, json!({"id": null}))),
        ("no agent_id", with(&sms, json!({"agent_id": null}))),
        ("no channel", with(&sms, json!({"channel": null}))),
        ("no to", with(&sms, json!({"to": null}))),
        ("id not a uuid", with(&sms, json!({"id": "job-1"}))),
        ("id a number", with(&sms, json!({"id": 7}))),
        ("id null", with(&sms, json!({"id": set_null.clone()}))),
        ("agent_id empty", with(&sms, json!({"agent_id": ""}))),
        ("agent_id blank", with(&sms, json!({"agent_id": "   "}))),
        ("agent_id a number", with(&sms, json!({"agent_id": 42}))),
        (
            "agent_id of 256 bytes",
            with(&sms, json!({"agent_id": "a".repeat(256)})),
        ),
        ("unknown channel", with(&sms, json!({"channel": "fax"}))),
        ("channel in capitals", with(&sms, json!({"channel": "SMS"}))),
        (
            "channel null",
            with(&sms, json!({"channel": set_null.clone()})),
        ),
        ("to a number", with(&sms, json!({"to": 14155550123u64}))),
        ("to null", with(&sms, json!({"to": set_null.clone()}))),
        ("to empty", with(&sms, json!({"to": ""}))),
        ("unknown category", with(&sms, json!({"category": "promo"}))),
        (
            "subject with a line break",
            with(&email, json!({"subject": "a\r\nBcc: x@example.com"})),
        ),
        (
            "subject of 999 characters",
            with(&email, json!({"subject": long})),
        ),
        ("subject a number", with(&email, json!({"subject": 1}))),
        ("text with a NUL", with(&sms, json!({"text": "a\u{0}b"}))),
        ("html a number", with(&email, json!({"html": 5}))),
        (
            "email without subject",
            with(&email, json!({"subject": null})),
        ),
        (
            "email with a blank body",
            with(&email, json!({"text": "  "})),
        ),
        (
            "email with a subject only",
            with(&email, json!({"text": null})),
        ),
        ("sms without text", with(&sms, json!({"text": null}))),
        ("sms with blank text", with(&sms, json!({"text": " \n "}))),
        (
            "sms with no media",
            with(&sms, json!({"text": null, "media_urls": []})),
        ),
        (
            "whatsapp with nothing",
            with(&whatsapp, json!({"text": null})),
        ),
        (
            "media_urls a string",
            with(&sms, json!({"media_urls": "https://example.com/a.jpg"})),
        ),
        (
            "media_urls ftp",
            with(&sms, json!({"media_urls": ["ftp://example.com/a.jpg"]})),
        ),
        (
            "media_urls not a url",
            with(&sms, json!({"media_urls": ["a.jpg"]})),
        ),
        (
            "media_urls a number",
            with(&sms, json!({"media_urls": [5]})),
        ),
        (
            "template a string",
            with(&whatsapp, json!({"template": "hello_world"})),
        ),
        (
            "template an array",
            with(&whatsapp, json!({"template": ["hello_world"]})),
        ),
        (
            "send_at in words",
            with(&sms, json!({"send_at": "tomorrow"})),
        ),
        (
            "send_at without a zone",
            with(&sms, json!({"send_at": "2026-12-01T09:30:00"})),
        ),
        (
            "send_at a number",
            with(&sms, json!({"send_at": 1_790_000_000})),
        ),
        ("timezone a number", with(&sms, json!({"timezone": 1}))),
        (
            "campaign_id with a tab",
            with(&sms, json!({"campaign_id": "a\tb"})),
        ),
        (
            "sequence_id too long",
            with(&sms, json!({"sequence_id": "q".repeat(999)})),
        ),
        ("step a string", with(&sms, json!({"step": "3"}))),
        ("step a fraction", with(&sms, json!({"step": 1.5}))),
        ("metadata an array", with(&sms, json!({"metadata": ["a"]}))),
        ("metadata a string", with(&sms, json!({"metadata": "a=b"}))),
        ("an array of jobs", json!([sms.clone()])),
        ("a string", json!("job")),
        ("a number", json!(5)),
        ("null", Value::Null),
    ];
    // What only the worker can check: the schema accepts these, the worker
    // rejects them (the schema's description lists them). Never the other
    // way: the schema must not refuse a job the worker would send.
    let worker_only: Vec<(&str, Value)> = vec![
        (
            "email to a non-address",
            with(&email, json!({"to": "not-an-address"})),
        ),
        (
            "sms to a number without a country code",
            with(&sms, json!({"to": "4155550123"})),
        ),
        (
            "reply_to a non-address",
            with(&email, json!({"reply_to": "nope"})),
        ),
        (
            "timezone not in the tz database",
            with(&sms, json!({"timezone": "Mars/Olympus_Mons"})),
        ),
        (
            "send_at an impossible date",
            with(&sms, json!({"send_at": "2026-13-45T09:30:00Z"})),
        ),
        (
            "a NUL inside metadata",
            with(&sms, json!({"metadata": {"a": {"b": "x\u{0}"}}})),
        ),
        (
            "a NUL inside a template",
            with(&whatsapp, json!({"template": {"name": "x\u{0}"}})),
        ),
        ("step written as 2.0", with(&sms, json!({"step": 2.0}))),
    ];

    let mut disagreements = Vec::new();
    let mut check = |name: &str, job: &Value, worker_ok: bool, schema_ok: bool| {
        let worker = SendJob::parse(job.to_string().as_bytes());
        let schema = validator.is_valid(job);
        if worker.is_ok() != worker_ok || schema != schema_ok {
            disagreements.push(format!(
                "{name}: worker {} (expected {}), schema {} (expected {}); {job}",
                match &worker {
                    Ok(_) => "accepts".to_string(),
                    Err(r) => format!("rejects ({})", r.reason),
                },
                if worker_ok { "accept" } else { "reject" },
                if schema { "accepts" } else { "rejects" },
                if schema_ok { "accept" } else { "reject" },
            ));
        }
    };
    for (name, job) in &valid {
        check(name, job, true, true);
    }
    for (name, job) in &invalid {
        check(name, job, false, false);
    }
    for (name, job) in &worker_only {
        check(name, job, false, true);
    }
    assert!(
        disagreements.is_empty(),
        "the worker's parser and docs/job.schema.json disagree:\n{}",
        disagreements.join("\n")
    );
    // The schema's own example is a job the worker takes.
    for example in job_schema()["examples"].as_array().unwrap() {
        assert!(validator.is_valid(example));
        SendJob::parse(example.to_string().as_bytes()).expect("the schema's example parses");
    }
}

// --- metrics ------------------------------------------------------------------------

/// The metric names `src/metrics.rs` defines, read as text: every string
/// literal that starts with `switchboard_`.
fn names_in_metrics_rs() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let mut names = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find("\"switchboard_") {
        let tail = &rest[at + 1..];
        let end = tail.find('"').unwrap();
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    assert!(!names.is_empty(), "src/metrics.rs defines metrics");
    names
}

/// Metric family names and types in a Prometheus text exposition.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut parts = l.split_whitespace();
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or("untyped").to_string(),
            )
        })
        .collect()
}

/// Every family the library registers, rendered in process with one sample
/// in each labelled family (an unlabelled vector renders nothing).
fn rendered_families() -> BTreeMap<String, String> {
    let m = switchboard::metrics::Metrics::new();
    m.message_outcome("email", "resend", "agent", "sent");
    m.provider_request_duration
        .with_label_values(&["resend", "success"])
        .observe(0.1);
    m.circuit_transitions
        .with_label_values(&["twilio", "circuit_opened"])
        .inc();
    m.webhooks.with_label_values(&["twilio", "accepted"]).inc();
    m.failovers
        .with_label_values(&["sms", "twilio", "twilio", "circuit_open"])
        .inc();
    m.jobs_parked.with_label_values(&["send_at"]).set(1);
    m.circuits_open.with_label_values(&["twilio"]).set(1);
    m.quota_use_ratio
        .with_label_values(&["agent", "sms", "day"])
        .set(0.5);
    families(&m.render())
}

#[test]
fn the_metric_names_read_from_metrics_rs_are_exactly_the_ones_registered() {
    let rendered: BTreeSet<String> = rendered_families().into_keys().collect();
    assert_eq!(
        names_in_metrics_rs(),
        rendered,
        "a metric was added or renamed in src/metrics.rs: give it a sample in rendered_families()"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the spawned process when the test ends, passed or panicked.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_live_serve_exports_only_metrics_that_metrics_rs_defines() {
    let env = common::Env::with_defaults().await;
    let port = free_port();
    let _serve = Running(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env_clear()
            .envs(&env.vars)
            .env("SWITCHBOARD_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn switchboard serve"),
    );
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = None;
    for _ in 0..300 {
        if let Ok(r) = http.get(&url).send().await
            && r.status() == 200
        {
            body = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = body.expect("switchboard serve answers /metrics within 30 s");
    let live = families(&body);
    assert!(
        live.contains_key("switchboard_jobs_in_flight"),
        "a fresh serve exports its unlabelled metrics: {body}"
    );
    let defined = names_in_metrics_rs();
    for name in live.keys().filter(|n| n.starts_with("switchboard_")) {
        assert!(
            defined.contains(name),
            "/metrics exports {name}, which src/metrics.rs does not define"
        );
    }
}

/// GETs `url` until it answers 200 (the process is starting), then
/// returns the body.
async fn get_when_up(http: &reqwest::Client, url: &str) -> String {
    common::wait_until(&format!("{url} to answer"), || async {
        let r = http.get(url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// `SWITCHBOARD_METRICS_ADDR` set: `/metrics` (and `/healthz`) on their own
/// listener and not on `SWITCHBOARD_HTTP_ADDR`, which keeps `/healthz`,
/// `/readyz` and the rest; and the gauges of shared state read from
/// Postgres: a job parked until tomorrow, open circuits of the platform's
/// Twilio account and of an agent's, an agent at 90% of its daily SMS quota
/// and its account at half its hourly one.
#[tokio::test]
async fn the_metrics_listener_serves_metrics_apart_with_the_shared_state_gauges() {
    let env = common::Env::with_defaults().await;
    let client = env.db.client().await;
    client
        .batch_execute(
            r#"
            INSERT INTO scheduled_jobs (id, agent_id, channel, job, due_at, reason)
            VALUES (gen_random_uuid(), 'agent-g', 'sms', '{}', now() + interval '1 day', 'send_at');
            INSERT INTO circuit_states (key, open_until)
            VALUES ('platform:twilio', now() + interval '1 day');
            INSERT INTO agents (id, limits) VALUES ('agent-g', '{"sms": {"per_day": 10}}');
            -- Today's and tomorrow's windows: whichever day the worker reads
            -- in, the agent has used 9 of 10.
            INSERT INTO rate_counters (key, span, window_start, count)
            SELECT 'agent:agent-g:sms', 'day', d, 9
              FROM unnest(ARRAY[date_trunc('day', now(), 'UTC'),
                                date_trunc('day', now(), 'UTC') + interval '1 day']) AS d;
            -- An agent's own Twilio account at half its hourly quota, its
            -- circuit open too.
            INSERT INTO integrations (id, agent_id, channel, provider, config)
            VALUES ('00000000-0000-4000-8000-00000000000a', 'agent-g', 'sms', 'twilio',
                    '{"rate_limit": {"per_hour": 100}}');
            INSERT INTO rate_counters (key, span, window_start, count)
            SELECT 'integration:00000000-0000-4000-8000-00000000000a', 'hour', h, 50
              FROM unnest(ARRAY[date_trunc('hour', now(), 'UTC'),
                                date_trunc('hour', now(), 'UTC') + interval '1 hour']) AS h;
            INSERT INTO circuit_states (key, open_until)
            VALUES ('integration:00000000-0000-4000-8000-00000000000a', now() + interval '1 day');
            "#,
        )
        .await
        .unwrap();
    let (http_port, metrics_port) = (free_port(), free_port());
    // Where the listeners are is what this test is about; neither address
    // can change what a job does.
    let _run = Running(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("run")
            .env_clear()
            .envs(&env.vars)
            .env("SWITCHBOARD_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env(
                "SWITCHBOARD_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn switchboard run"),
    );
    let http = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    get_when_up(&http, &format!("http://127.0.0.1:{metrics_port}/healthz")).await;
    get_when_up(&http, &format!("http://127.0.0.1:{http_port}/healthz")).await;
    let public = http
        .get(format!("http://127.0.0.1:{http_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404, "no /metrics on the public listener");

    let expected = [
        r#"switchboard_jobs_parked{reason="send_at"} 1"#,
        "switchboard_jobs_parked_overdue 0",
        r#"switchboard_circuits_open{provider="twilio"} 2"#,
        r#"switchboard_quota_use_ratio{channel="sms",scope="agent",window="day"} 0.9"#,
        r#"switchboard_quota_use_ratio{channel="sms",scope="account",window="hour"} 0.5"#,
    ];
    common::wait_for("the shared-state gauges", || async {
        let body = http
            .get(&metrics_url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        if expected.iter().all(|line| body.lines().any(|l| l == *line)) {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
}

/// The series a PromQL expression names with one of `prefixes`.
fn series_in(expr: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let token = &expr[start..i];
            if prefixes.iter().any(|p| token.starts_with(p)) {
                out.insert(token.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every PromQL expression in the dashboard and the alert rules.
fn deploy_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push((
                format!("{DASHBOARD}: {}", panel["title"]),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(ALERTS)).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push((
                format!("{ALERTS}: {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    exprs
}

const DASHBOARD: &str = "deploy/grafana/dashboards/switchboard.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";

/// RabbitMQ's Prometheus plugin (rabbitmq_prometheus, /metrics/per-object)
/// series the deploy files may use. The plugin is not enabled on the test
/// broker, so these are checked against this list, not scraped.
const RABBITMQ_SERIES: [&str; 4] = [
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
];

#[test]
fn the_dashboard_and_alerts_use_only_metrics_switchboard_exports() {
    let families = rendered_families();
    let mut series = BTreeSet::new();
    for (name, kind) in &families {
        series.insert(name.clone());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                series.insert(format!("{name}{suffix}"));
            }
        }
    }
    let exprs = deploy_expressions();
    assert!(exprs.len() >= 20, "dashboard panels and alert rules found");
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for (whence, expr) in &exprs {
        for name in series_in(expr, &["switchboard_"]) {
            if !series.contains(&name) {
                unknown.push(format!("{whence}: {name}"));
            }
            used.insert(name);
        }
        for name in series_in(expr, &["rabbitmq_"]) {
            if !RABBITMQ_SERIES.contains(&name.as_str()) {
                unknown.push(format!(
                    "{whence}: {name} (not a known rabbitmq_prometheus series)"
                ));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "series that switchboard does not export:\n{}",
        unknown.join("\n")
    );
    // Every family switchboard exports is on the dashboard or in a rule.
    for family in families.keys() {
        assert!(
            used.iter().any(|u| u.starts_with(family.as_str())),
            "{family} is exported but neither the dashboard nor an alert uses it"
        );
    }
}

// --- deploy files -------------------------------------------------------------------

#[test]
fn every_json_and_yaml_deploy_file_parses() {
    let files = files_under("deploy");
    let mut parsed = 0;
    for file in &files {
        let text = read(file);
        if file.ends_with(".json") {
            serde_json::from_str::<Value>(&text)
                .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
            parsed += 1;
        } else if file.ends_with(".yml") || file.ends_with(".yaml") {
            // Kubernetes files may hold several documents.
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                serde_yaml_ng::Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
            }
            parsed += 1;
        }
    }
    assert!(parsed >= 6, "found the deploy files: {files:?}");
    serde_json::from_str::<Value>(&read("docs/job.schema.json")).unwrap();
}

fn yaml(file: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&read(file)).unwrap()
}

#[test]
fn compose_runs_migrate_then_run_and_mounts_what_exists() {
    let compose = yaml("deploy/compose.yaml");
    let services = &compose["services"];
    for name in [
        "postgres",
        "rabbitmq",
        "switchboard-migrate",
        "switchboard",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.get(name).is_some(),
            "compose has the {name} service"
        );
    }
    assert_eq!(
        services["switchboard-migrate"]["command"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[migrate]").unwrap()
    );
    assert_eq!(
        services["switchboard"]["command"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[run]").unwrap()
    );
    assert_eq!(
        services["switchboard"]["depends_on"]["switchboard-migrate"]["condition"].as_str(),
        Some("service_completed_successfully"),
        "run starts only after migrate succeeded"
    );
    // The YAML alias gives both the same environment, key included.
    let env = &services["switchboard"]["environment"];
    assert_eq!(env, &services["switchboard-migrate"]["environment"]);
    for key in ["DATABASE_URL", "AMQP_URL", "SWITCHBOARD_ENCRYPTION_KEY"] {
        assert!(env.get(key).is_some(), "switchboard gets {key}");
    }
    assert_eq!(
        services["switchboard-migrate"]["build"]["dockerfile"].as_str(),
        Some("deploy/Containerfile")
    );
    // Every bind mount's source exists beside the compose file.
    for (name, service) in services.as_mapping().unwrap() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    repo().join("deploy").join(source).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            }
        }
    }
    let plugins = read("deploy/rabbitmq/enabled_plugins");
    assert!(plugins.contains("rabbitmq_management") && plugins.contains("rabbitmq_prometheus"));

    // Prometheus loads the rules where compose mounts them and scrapes both.
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let mounts = format!("{:?}", services["prometheus"]["volumes"]);
    for rule_file in prometheus["rule_files"].as_sequence().unwrap() {
        assert!(mounts.contains(rule_file.as_str().unwrap()));
    }
    let jobs: Vec<&str> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["switchboard", "rabbitmq"]);

    // Grafana finds the dashboard where compose mounts it, on the
    // provisioned data source.
    let provider = yaml("deploy/grafana/provisioning/dashboards/switchboard.yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(format!("{:?}", services["grafana"]["volumes"]).contains(path));
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
    }
}

#[test]
fn the_containerfile_builds_what_exists_and_runs_as_non_root() {
    let text = read("deploy/Containerfile");
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a build stage and a runtime stage");
    let runtime = &text[text.rfind("\nFROM ").unwrap()..];
    let user = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    assert!(
        !matches!(user.split(':').next().unwrap().trim(), "root" | "0"),
        "runs as non-root"
    );
    assert!(
        text.contains("cargo build --release --locked --bin switchboard"),
        "the image builds the binary as a native release build does"
    );
    assert!(runtime.contains("switchboard\", \"--version\""));
    // Every file the build copies from the context exists.
    for line in text.lines().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "the Containerfile copies {source}, which does not exist"
            );
        }
    }
}

#[test]
fn the_systemd_unit_and_env_example_are_safe_defaults() {
    let unit = read("deploy/switchboard.service");
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit sets {key}"))
            .to_string()
    };
    assert!(setting("LimitNOFILE").parse::<u64>().unwrap() >= 65536);
    assert_ne!(setting("User"), "root");
    assert_eq!(setting("EnvironmentFile"), "/etc/switchboard/env");
    assert!(
        unit.contains("0600"),
        "the unit says how to protect the env file"
    );
    // systemd's stop timeout outlasts the default shutdown grace (30 s).
    let stop: u64 = setting("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > 30,
        "TimeoutStopSec {stop} > SWITCHBOARD_SHUTDOWN_GRACE_SECS"
    );

    // Every variable env.example sets or shows is one switchboard reads, and
    // none is set to an empty credential key (an invalid key that stops
    // every subcommand).
    let config = read("src/config.rs");
    let env = read("deploy/env.example");
    let mut names = 0;
    for line in env.lines() {
        let assignment = line.strip_prefix('#').unwrap_or(line);
        let Some((name, value)) = assignment.split_once('=') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue;
        }
        names += 1;
        assert!(
            name == "RUST_LOG" || config.contains(&format!("\"{name}\"")),
            "env.example sets {name}, which src/config.rs does not read"
        );
        if name == "SWITCHBOARD_ENCRYPTION_KEY" {
            assert!(
                line.starts_with('#') || value.trim().len() >= 40,
                "env.example must not ship an empty or placeholder key: {line}"
            );
        }
    }
    assert!(names >= 8);
    assert!(env.contains("head -c 32 /dev/urandom | base64"));
}

#[test]
fn promtool_accepts_the_rules_and_the_prometheus_config() {
    if !runs_ok(Command::new("promtool").arg("--version")) {
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join(ALERTS))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The config names the rules by their path inside the container.
    let dir = tempfile::tempdir().unwrap();
    let config = read("deploy/prometheus/prometheus.yml").replace(
        "/etc/prometheus/alerts.yml",
        repo().join(ALERTS).to_str().unwrap(),
    );
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- Kubernetes ---------------------------------------------------------------------

const KUBERNETES: &str = "deploy/kubernetes";
/// The Kubernetes release the manifests are validated against: old enough
/// that most clusters in service run it or newer, and shipped with the
/// pinned kubernetes-validate (scripts/test.sh).
const KUBERNETES_VERSION: &str = "1.30.0";

/// `target/pyenv/bin/kubernetes-validate` (scripts/test.sh installs it
/// there) or one on the PATH. Missing, the test fails: the manifests are
/// not checked unless it runs.
fn kubernetes_validate() -> PathBuf {
    [
        repo().join("target/pyenv/bin/kubernetes-validate"),
        "kubernetes-validate".into(),
    ]
    .into_iter()
    .find(|v| runs_ok(Command::new(v).arg("--version")))
    .unwrap_or_else(|| {
        panic!(
            "kubernetes-validate is not installed, so the Kubernetes manifests cannot be \
             checked: run scripts/test.sh, which installs it into target/pyenv \
             (or: target/pyenv/bin/pip install kubernetes-validate)"
        )
    })
}

/// Every manifest in deploy/kubernetes, as (file, document).
fn kubernetes_documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for file in files_under(KUBERNETES) {
        assert!(file.ends_with(".yaml"), "{file}: manifests end in .yaml");
        for doc in serde_yaml_ng::Deserializer::from_str(&read(&file)) {
            let value = serde_yaml_ng::Value::deserialize(doc).unwrap();
            docs.push((file.clone(), serde_json::to_value(value).unwrap()));
        }
    }
    docs
}

/// The one document of `kind`.
fn manifest(docs: &[(String, Value)], kind: &str) -> Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in {KUBERNETES}");
    found[0].clone()
}

/// Every Kubernetes manifest passes kubernetes-validate's strict check
/// (unknown fields are errors) against the schemas it ships, offline. KEDA's
/// kinds are not Kubernetes' own, so it has no schema for them; they are
/// checked structurally in the next test, and nothing else may lack one.
#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validator = kubernetes_validate();
    let files: Vec<PathBuf> = files_under(KUBERNETES)
        .iter()
        .map(|f| repo().join(f))
        .collect();
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate: {report}");
    let docs = kubernetes_documents();
    for (file, doc) in &docs {
        let api = doc["apiVersion"].as_str().unwrap();
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        if api.starts_with("keda.sh/") {
            assert!(
                report.contains(&format!("Couldn't find schema for kind {kind}")),
                "{report}"
            );
            continue;
        }
        let passed = format!("passed for resource {}/{name}", kind.to_ascii_lowercase());
        assert!(
            report.contains(&passed),
            "{file}: kubernetes-validate did not check {kind} {name}: {report}"
        );
    }
    for line in report.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            line.contains("api version keda.sh/"),
            "only KEDA's kinds may lack a schema: {line}"
        );
    }
}

/// The entry of a container's env that sets `name`.
fn env_value<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("the container sets {name}"))
}

/// The port of an `ADDR:PORT` setting.
fn port_of(addr: &Value) -> u64 {
    let addr: std::net::SocketAddr = addr.as_str().unwrap().parse().unwrap();
    u64::from(addr.port())
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("the container has a port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// What the schemas cannot say: the probes ask for paths switchboard
/// answers (asked of its router in process, not read from a list), on the
/// port it listens on; the metrics port is the one `/metrics` is served on,
/// and the HTTP port does not serve it; the kubelet waits longer than the
/// default drain; the pod runs as the image's non-root user; the keys come
/// from the Secret; the migration Job, Service, PodDisruptionBudget and
/// KEDA's ScaledObject point at the Deployment and the queue it consumes.
#[tokio::test]
async fn the_kubernetes_manifests_agree_with_what_switchboard_serves() {
    use tower::ServiceExt;

    let docs = kubernetes_documents();
    let deployment = manifest(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["args"], json!(["run"]));

    // Listen addresses and ports.
    let http_port = port_of(&env_value(container, "SWITCHBOARD_HTTP_ADDR")["value"]);
    let metrics_port = port_of(&env_value(container, "SWITCHBOARD_METRICS_ADDR")["value"]);
    assert_eq!(container_port(container, "http"), http_port);
    assert_eq!(container_port(container, "metrics"), metrics_port);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        metrics_port.to_string()
    );

    // The probes: the port named `http`, paths the HTTP router answers.
    let settings = switchboard::config::Settings::from_lookup(|k| match k {
        "SWITCHBOARD_METRICS_ADDR" => Some(format!("0.0.0.0:{metrics_port}")),
        // Never connected to: /readyz may answer 503, just not 404.
        "DATABASE_URL" => Some("postgres://nobody@127.0.0.1:1/none".into()),
        _ => None,
    })
    .unwrap();
    let pool = switchboard::store::pool(&settings.database_url, 1).unwrap();
    let router = switchboard::http::router(switchboard::http::HttpState::new(
        pool,
        switchboard::metrics::Metrics::new(),
        &settings,
    ));
    let status = |router: axum::Router, path: String| async move {
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap().status().as_u16()
    };
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "http", "{probe} asks the HTTP listener");
        assert_ne!(
            status(router.clone(), path.to_string()).await,
            404,
            "{probe}: switchboard serves {path}"
        );
    }
    assert_eq!(
        status(router.clone(), "/metrics".into()).await,
        404,
        "with SWITCHBOARD_METRICS_ADDR set, the HTTP port does not serve /metrics"
    );
    let metrics = switchboard::http::metrics_router(switchboard::metrics::Metrics::new());
    assert_eq!(status(metrics, "/metrics".into()).await, 200);

    // Shutdown: the kubelet's SIGKILL comes after switchboard's drain.
    let drain = match container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SWITCHBOARD_SHUTDOWN_GRACE_SECS")
    {
        Some(e) => e["value"].as_str().unwrap().parse().unwrap(),
        None => settings.shutdown_grace.as_secs(),
    };
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} > SWITCHBOARD_SHUTDOWN_GRACE_SECS {drain}"
    );

    // Non-root, as the image's user.
    let containerfile = read("deploy/Containerfile");
    let image_uid: u64 = containerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let job = manifest(&docs, "Job");
    let job_pod = &job["spec"]["template"];
    for (what, spec) in [("Deployment", &pod["spec"]), ("Job", &job_pod["spec"])] {
        let security = &spec["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{what}");
        assert_eq!(
            security["runAsUser"], image_uid,
            "{what} runs as the image's user"
        );
        let c = &spec["containers"][0];
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{what}"
        );
        assert!(c["resources"]["requests"]["memory"].is_string(), "{what}");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
    }

    // Secrets by reference, never inline; every variable is one
    // switchboard reads.
    let config = read("src/config.rs");
    let secret_ref = |c: &Value, name: &str| {
        let r = &env_value(c, name)["valueFrom"]["secretKeyRef"];
        assert!(r.is_object(), "{name} comes from a Secret");
        (
            r["name"].as_str().unwrap().to_string(),
            r["key"].as_str().unwrap().to_string(),
        )
    };
    for name in [
        "DATABASE_URL",
        "AMQP_URL",
        "SWITCHBOARD_ENCRYPTION_KEY",
        "SWITCHBOARD_API_TOKEN",
    ] {
        secret_ref(container, name);
    }
    let job_container = &job_pod["spec"]["containers"][0];
    for c in [container, job_container] {
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(
                name == "RUST_LOG" || config.contains(&format!("\"{name}\"")),
                "the manifests set {name}, which src/config.rs does not read"
            );
        }
    }

    // The migration Job: the same image, `migrate`, the same database.
    assert_eq!(job_container["image"], container["image"]);
    assert_eq!(job_container["args"], json!(["migrate"]));
    assert_eq!(
        secret_ref(job_container, "DATABASE_URL"),
        secret_ref(container, "DATABASE_URL")
    );

    // Service and PodDisruptionBudget select the Deployment's pods.
    let labels = &pod["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let service = manifest(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    let service_ports: BTreeMap<String, (u64, String)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                (
                    p["port"].as_u64().unwrap(),
                    p["targetPort"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(service_ports["http"], (http_port, "http".to_string()));
    assert_eq!(
        service_ports["metrics"],
        (metrics_port, "metrics".to_string())
    );
    let pdb = manifest(&docs, "PodDisruptionBudget");
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the PodDisruptionBudget selects the pods");
    }

    // KEDA scales the Deployment on the depth of the queue it consumes,
    // with the broker URL from the pods' Secret, and never below two pods
    // (one could not be drained under the PodDisruptionBudget).
    let scaled = manifest(&docs, "ScaledObject");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    assert!(scaled["spec"]["minReplicaCount"].as_u64().unwrap() >= 2);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "rabbitmq");
    assert_eq!(
        trigger["metadata"]["queueName"],
        switchboard::amqp::SEND_QUEUE
    );
    assert_eq!(trigger["metadata"]["mode"], "QueueLength");
    assert!(
        trigger["metadata"]["value"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    let auth = manifest(&docs, "TriggerAuthentication");
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let host = &auth["spec"]["secretTargetRef"][0];
    assert_eq!(host["parameter"], "host");
    assert_eq!(
        (
            host["name"].as_str().unwrap().to_string(),
            host["key"].as_str().unwrap().to_string()
        ),
        secret_ref(container, "AMQP_URL")
    );
}
