//! The `switchboard` binary as operators run it: killed with SIGKILL in the
//! middle of a batch, stopped with SIGTERM, driven from the command line.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

use wiremock::{MockServer, ResponseTemplate};

const SID: &str = "AC00000000000000000000000000000999";

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
}

/// A spawned switchboard that is killed when the test ends, passed or
/// panicked, so that no test leaves a process behind.
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn(args: &[&str], vars: &HashMap<String, String>) -> Running {
    Running(
        binary()
            .args(args)
            .env_clear()
            .envs(vars)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchboard"),
    )
}

fn run_cli(
    args: &[&str],
    vars: &HashMap<String, String>,
    stdin: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    let mut child = binary()
        .args(args)
        .env_clear()
        .envs(vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("switchboard did not exit within 60 s of SIGTERM");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGKILL with the default settings (prefetch 512, lease 300 s): the
/// restarted worker takes the dead one's jobs over at once (its advisory
/// lock died with it), instead of waiting out the lease, and only jobs that
/// were at the provider when the process died can have been sent twice.
/// Finishing inside `wait_until`'s 90 s proves the 300 s lease was not
/// waited out; no timing is asserted.
#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_after_restart() {
    kill_one_worker_mid_batch(1).await;
}

/// Issue 11: one of three workers is SIGKILLed mid-batch; the two others
/// take over its jobs (no restart), none lost, none sent twice except those
/// at the provider when it died.
#[tokio::test]
async fn when_one_of_three_workers_dies_the_others_finish_its_jobs() {
    kill_one_worker_mid_batch(3).await;
}

/// Runs `workers` worker processes on 300 jobs against a provider that
/// takes 1.5 s, SIGKILLs the first once 100 requests reached the provider,
/// starts a replacement only when it was the only one, and checks that
/// every job is sent, recorded once, and at most twice at the provider —
/// twice only if it was at the provider, unrecorded, when the worker died.
async fn kill_one_worker_mid_batch(workers: usize) {
    const JOBS: usize = 300;
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMkill", "status": "queued"}))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");

    let publisher = env.publisher().await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let mut job = sms_job("agent-k", "+14155550123");
        job["text"] = json!(format!("job {i}"));
        ids.push(job_id(&job));
        publisher.publish(&job).await;
    }
    let bodies = |reqs: &[wiremock::Request]| -> Vec<String> {
        reqs.iter()
            .filter_map(|r| {
                form_pairs(&r.body)
                    .into_iter()
                    .find(|(k, _)| k == "Body")
                    .map(|(_, v)| v)
            })
            .collect()
    };

    let mut running: Vec<Running> = (0..workers)
        .map(|_| spawn(&["worker"], &env.vars))
        .collect();
    // Kill while requests are at the provider and some outcomes recorded.
    wait_until("jobs at the provider before the kill", || async {
        (server.received_requests().await.unwrap().len() >= 100).then_some(())
    })
    .await;
    let mut victim = running.remove(0);
    victim.kill().unwrap(); // SIGKILL: no chance to clean up
    victim.wait().unwrap();
    let at_kill = bodies(&server.received_requests().await.unwrap());
    let client = env.db.client().await;
    let sent_at_kill: std::collections::HashSet<String> = client
        .query(
            "SELECT job->>'text' FROM outbound_messages WHERE status = 'sent'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sent_at_kill.len() < JOBS, "the kill must land mid-batch");
    // The window: at the provider, outcome not committed.
    let in_window: std::collections::HashSet<&String> = at_kill
        .iter()
        .filter(|b| !sent_at_kill.contains(*b))
        .collect();

    if running.is_empty() {
        running.push(spawn(&["worker"], &env.vars));
    }
    wait_until("every job to be sent", || async {
        (count(
            &env,
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent'",
        )
        .await as usize
            == JOBS)
            .then_some(())
    })
    .await;
    for mut w in running {
        assert!(terminate(&mut w).success(), "SIGTERM exits 0");
    }

    for id in &ids {
        let sent_events: i64 = client
            .query_one(
                "SELECT count(*) FROM outbound_events WHERE message_id = $1 AND event = 'sent'",
                &[id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(sent_events, 1, "job {id} recorded as sent exactly once");
    }
    let all = bodies(&server.received_requests().await.unwrap());
    let mut per_job = HashMap::new();
    for b in &all {
        *per_job.entry(b.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_job.len(), JOBS, "every job reached the provider");
    for (body, n) in &per_job {
        assert!(*n <= 2, "{body} sent {n} times");
        if *n == 2 {
            assert!(
                in_window.contains(body),
                "{body} was sent twice but was not at the provider when the worker died"
            );
        }
    }
    let depth = publisher.queue_depth().await;
    assert_eq!(depth, 0, "nothing left unacked or queued");
}

#[tokio::test]
async fn run_serves_health_metrics_and_sends_an_enqueued_job_then_stops_on_sigterm() {
    let mut env = Env::new().await;
    let port = free_port();
    env.set("SWITCHBOARD_SIMULATE", "true")
        .set("SWITCHBOARD_HTTP_ADDR", format!("127.0.0.1:{port}"));
    let mut child = spawn(&["run"], &env.vars);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until("readyz 200", || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let job = email_job("agent-cli", "buyer@example.com");
    let (ok, out, err) = run_cli(&["enqueue", "-"], &env.vars, Some(&job.to_string()));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), job["id"].as_str().unwrap());
    env.wait_for_status(job_id(&job), "sent").await;

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_jobs_consumed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"switchboard_messages_total{channel="email",outcome="sent",provider="simulation",route="simulation"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_provider_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_jobs_in_flight 0"),
        "{metrics}"
    );
    assert!(terminate(&mut child).success(), "SIGTERM exits 0");
}

#[tokio::test]
async fn enqueue_refuses_an_invalid_job_unless_told_not_to_validate() {
    let env = Env::new().await;
    let (ok, _, err) = run_cli(
        &["enqueue", "-"],
        &env.vars,
        Some(r#"{"agent_id":"a","channel":"sms"}"#),
    );
    assert!(!ok);
    assert!(err.contains("missing required field `to`"), "{err}");
    let (ok, out, err) = run_cli(
        &["enqueue", "--no-validate", "-"],
        &env.vars,
        Some(r#"{"agent_id":"a","channel":"sms"}"#),
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "an id was filled in: {out}");
}

#[tokio::test]
async fn integrations_from_the_command_line_keep_secrets_encrypted_and_masked() {
    let env = Env::new().await;
    let token = "tok_live_9f8e7d6c5b4a3210";
    let settings = json!({"account_sid": "AC0000000000000000000000000000000a", "auth_token": token, "phone_number": "+14155550100"}).to_string();
    let (ok, out, err) = run_cli(
        &[
            "integrations",
            "connect",
            "--agent",
            "agent-c",
            "--channel",
            "sms",
            "--provider",
            "twilio",
            "--settings",
            &settings,
        ],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("integration"), "{out}");
    assert!(!out.contains(token) && !err.contains(token));

    let (ok, out, _) = run_cli(
        &["integrations", "list", "--agent", "agent-c"],
        &env.vars,
        None,
    );
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["provider"], "twilio");
    assert_eq!(list[0]["active"], true);
    assert_eq!(list[0]["settings"]["auth_token"], "****3210");
    assert_eq!(list[0]["settings"]["phone_number"], "+14155550100");
    assert!(!out.contains(token));

    // The database holds ciphertext only.
    let client = env.db.client().await;
    let row = client
        .query_one(
            "SELECT config::text, secrets_ciphertext, secrets_key_id FROM integrations",
            &[],
        )
        .await
        .unwrap();
    let config: String = row.get(0);
    let blob: Vec<u8> = row.get(1);
    assert!(!config.contains(token));
    assert!(!blob.windows(token.len()).any(|w| w == token.as_bytes()));
    let dump: String = client
        .query_one("SELECT string_agg(t::text, ' ') FROM integrations t", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!dump.contains(token));

    for (cmd, active) in [("disable", false), ("enable", true)] {
        let (ok, _, err) = run_cli(
            &[
                "integrations",
                cmd,
                "--agent",
                "agent-c",
                "--channel",
                "sms",
            ],
            &env.vars,
            None,
        );
        assert!(ok, "{err}");
        let (_, out, _) = run_cli(
            &["integrations", "list", "--agent", "agent-c"],
            &env.vars,
            None,
        );
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(list[0]["active"], active);
    }
    let (ok, _, err) = run_cli(
        &[
            "integrations",
            "disconnect",
            "--agent",
            "agent-c",
            "--channel",
            "sms",
        ],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    let (_, out, _) = run_cli(
        &["integrations", "list", "--agent", "agent-c"],
        &env.vars,
        None,
    );
    assert_eq!(out.trim(), "[]");
    let (ok, _, err) = run_cli(
        &[
            "integrations",
            "disable",
            "--agent",
            "agent-c",
            "--channel",
            "sms",
        ],
        &env.vars,
        None,
    );
    assert!(!ok);
    assert!(err.contains("has no sms integration"), "{err}");
}

#[tokio::test]
async fn bad_settings_and_missing_keys_are_clear_errors() {
    let env = Env::new().await;
    let connect = |settings: &str, vars: &HashMap<String, String>| {
        run_cli(
            &[
                "integrations",
                "connect",
                "--agent",
                "a",
                "--channel",
                "sms",
                "--provider",
                "twilio",
                "--settings",
                settings,
            ],
            vars,
            None,
        )
    };
    let (ok, _, err) = connect(
        r#"{"account_sid":"AC1","auth_tokn":"x","phone_number":"+14155550100"}"#,
        &env.vars,
    );
    assert!(!ok);
    assert!(err.contains("unknown setting `auth_tokn`"), "{err}");
    let (ok, _, err) = connect(r#"{"account_sid":"AC1","auth_token":"x"}"#, &env.vars);
    assert!(!ok);
    assert!(err.contains("phone_number"), "{err}");

    let mut no_key = env.vars.clone();
    no_key.remove("SWITCHBOARD_ENCRYPTION_KEY");
    let (ok, _, err) = connect(
        r#"{"account_sid":"AC1","auth_token":"x","phone_number":"+14155550100"}"#,
        &no_key,
    );
    assert!(!ok);
    assert!(
        err.contains("SWITCHBOARD_ENCRYPTION_KEY is not set"),
        "{err}"
    );
    no_key.insert(
        "SWITCHBOARD_ENCRYPTION_KEY".into(),
        "bm90LTMyLWJ5dGVz".into(),
    );
    let (ok, _, err) = run_cli(&["worker"], &no_key, None);
    assert!(!ok, "a worker with a malformed key must not start");
    assert!(
        err.contains("SWITCHBOARD_ENCRYPTION_KEY is malformed"),
        "{err}"
    );
}

#[tokio::test]
async fn migrate_is_safe_twice_and_from_two_processes_at_once() {
    let db = TestDb::new().await; // already migrated once by the harness
    let client = db.client().await;
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .await
        .unwrap();
    let mut vars = HashMap::new();
    vars.insert("DATABASE_URL".to_string(), db.url.clone());
    let a = spawn(&["migrate"], &vars);
    let b = spawn(&["migrate"], &vars);
    for mut child in [a, b] {
        assert!(child.wait().unwrap().success());
    }
    let (ok, _, err) = run_cli(&["migrate"], &vars, None);
    assert!(ok, "{err}");
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, files);
    for table in [
        "agents",
        "integrations",
        "outbound_messages",
        "outbound_events",
        "opt_outs",
        "scheduled_jobs",
    ] {
        client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
}

#[tokio::test]
async fn opt_outs_from_the_command_line() {
    let env = Env::new().await;
    let (ok, out, err) = run_cli(
        &[
            "opt-outs",
            "add",
            "--agent",
            "agent-o",
            "--channel",
            "sms",
            "--address",
            "+1 (415) 555-0123",
            "--reason",
            "stop_keyword",
        ],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("+14155550123"), "stored normalised: {out}");
    // One agent's or everyone's, never both at once: refused, not half-done.
    let both = [
        "opt-outs",
        "add",
        "--agent",
        "agent-o",
        "--platform",
        "--channel",
        "sms",
        "--address",
        "+14155550124",
    ];
    let (ok, _, err) = run_cli(&both, &env.vars, None);
    assert!(!ok);
    assert!(
        err.contains("--platform") && err.contains("--agent"),
        "{err}"
    );
    let (ok, _, err) = run_cli(
        &[
            "opt-outs",
            "add",
            "--platform",
            "--channel",
            "email",
            "--address",
            "Bounced@Example.com",
            "--reason",
            "hard_bounce",
        ],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run_cli(
        &[
            "opt-outs",
            "add",
            "--agent",
            "a",
            "--channel",
            "sms",
            "--address",
            "+14155550123",
            "--reason",
            "bored",
        ],
        &env.vars,
        None,
    );
    assert!(!ok);
    assert!(err.contains("unknown reason `bored`"), "{err}");
    let (ok, out, _) = run_cli(&["opt-outs", "list", "--agent", "agent-o"], &env.vars, None);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "the agent's and the platform-wide one: {out}"
    );
    assert!(out.contains("bounced@example.com"));
    let (ok, _, err) = run_cli(
        &[
            "opt-outs",
            "remove",
            "--agent",
            "agent-o",
            "--channel",
            "sms",
            "--address",
            "+14155550123",
        ],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    let (_, out, _) = run_cli(&["opt-outs", "list", "--agent", "agent-o"], &env.vars, None);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn agent_settings_from_the_command_line() {
    let env = Env::new().await;
    let (ok, out, err) = run_cli(
        &[
            "agents",
            "set",
            "--agent",
            "agent-set",
            "--timezone",
            "Europe/Paris",
            "--send-window",
            "08:30-19:00",
            "--limits",
            r#"{"sms": {"per_second": 2, "per_day": 500}}"#,
            "--company-name",
            "Maison Realty",
        ],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(row["timezone"], "Europe/Paris");
    assert_eq!(row["send_window_start"], "08:30:00");
    assert_eq!(row["limits"]["sms"]["per_day"], 500);
    // Changing one field leaves the others.
    let (ok, _, err) = run_cli(
        &[
            "agents",
            "set",
            "--agent",
            "agent-set",
            "--quiet-hours-email",
            "true",
            "--calling-hours",
            "09:00-20:00",
            "--allow-platform-fallback",
            "true",
        ],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, _) = run_cli(&["agents", "show", "--agent", "agent-set"], &env.vars, None);
    assert!(ok);
    let row: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(row["quiet_hours_email"], true);
    assert_eq!(row["company_name"], "Maison Realty");
    assert_eq!(row["calling_hours_start"], "09:00:00");
    assert_eq!(row["calling_hours_end"], "20:00:00");
    assert_eq!(row["allow_platform_fallback"], true);
    for (args, expected) in [
        (vec!["--timezone", "Mars/Base"], "not an IANA time zone"),
        (vec!["--send-window", "9-5"], "09:00-20:00"),
        (
            vec!["--calling-hours", "8am-9pm"],
            "calling_hours must look like",
        ),
        (
            vec!["--limits", r#"{"fax": {"per_second": 1}}"#],
            "unknown channel `fax`",
        ),
        (
            vec!["--limits", r#"{"sms": {"per_minute": 1}}"#],
            "unknown key limits.sms.per_minute",
        ),
    ] {
        let mut all = vec!["agents", "set", "--agent", "agent-set"];
        all.extend(args);
        let (ok, _, err) = run_cli(&all, &env.vars, None);
        assert!(!ok);
        assert!(err.contains(expected), "{err}");
    }
}

/// Issue 11: three `switchboard worker` processes share one queue; an agent
/// limited to 2/s sends its 30 jobs spaced as one process would, because
/// the slots come from Postgres: the slots handed out are exactly 500 ms
/// apart (never three in one second), and the sends, which can only be
/// later than their slots, span at least 14.5 s. Another agent's jobs are
/// not held back.
#[tokio::test]
async fn three_workers_keep_an_agents_per_second_limit_exact() {
    const LIMITED: usize = 30;
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMlim", "status": "queued"})),
        )
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
    env.db
        .client()
        .await
        .execute(
            r#"INSERT INTO agents (id, limits) VALUES ('agent-2ps', '{"sms": {"per_second": 2}}')"#,
            &[],
        )
        .await
        .unwrap();
    let workers: Vec<Running> = (0..3).map(|_| spawn(&["worker"], &env.vars)).collect();
    let publisher = env.publisher().await;
    for i in 0..LIMITED {
        let mut job = sms_job("agent-2ps", "+14155550123");
        job["text"] = json!(format!("limited {i}"));
        publisher.publish(&job).await;
        let mut other = sms_job("agent-free", "+14155550123");
        other["text"] = json!(format!("free {i}"));
        publisher.publish(&other).await;
    }
    wait_until("every job to be sent", || async {
        (count(
            &env,
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent'",
        )
        .await as usize
            == 2 * LIMITED)
            .then_some(())
    })
    .await;
    for mut w in workers {
        assert!(terminate(&mut w).success());
    }
    let client = env.db.client().await;
    // When each limited job was sent, and the slot it was given, by the
    // worker's own record.
    let rows = client
        .query(
            "SELECT (e.detail->>'at')::timestamptz, (e.detail->>'rate_slot')::timestamptz
               FROM outbound_events e JOIN outbound_messages m ON m.id = e.message_id
              WHERE m.agent_id = 'agent-2ps' AND e.event = 'sent' ORDER BY 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), LIMITED);
    let slots: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|r| r.get(1)).collect();
    for w in slots.windows(2) {
        assert!(
            w[1] - w[0] >= chrono::Duration::milliseconds(500),
            "slots closer than 1/2 s: {w:?}"
        );
    }
    let mut sent: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|r| r.get(0)).collect();
    sent.sort();
    for (at, slot) in rows.iter().map(|r| {
        (
            r.get::<_, chrono::DateTime<chrono::Utc>>(0),
            r.get::<_, chrono::DateTime<chrono::Utc>>(1),
        )
    }) {
        assert!(at >= slot, "sent at {at}, before its slot {slot}");
    }
    let spread = sent[LIMITED - 1] - sent[0];
    assert!(
        spread >= chrono::Duration::milliseconds(14_500),
        "30 jobs at 2/s over {spread}"
    );
    let times = sent;
    let free_last: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT max((e.detail->>'at')::timestamptz) FROM outbound_events e
               JOIN outbound_messages m ON m.id = e.message_id
              WHERE m.agent_id = 'agent-free' AND e.event = 'sent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        free_last < times[LIMITED - 1],
        "the unlimited agent finished before the limited one"
    );
}

/// Issue 11: with three worker processes on one queue, an account that is
/// down has its circuit opened once for all (one `circuit_opened`), and
/// every process defers its jobs instead of failing them.
#[tokio::test]
async fn three_workers_open_a_failing_accounts_circuit_once() {
    const JOBS: usize = 30;
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({
            "code": 20503, "message": "Service Unavailable", "status": 503
        })))
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
    let workers: Vec<Running> = (0..3).map(|_| spawn(&["worker"], &env.vars)).collect();
    let publisher = env.publisher().await;
    for _ in 0..JOBS {
        publisher
            .publish(&sms_job("agent-down", "+14155550123"))
            .await;
    }
    wait_until("every job to be deferred", || async {
        (count(
            &env,
            "SELECT count(*) FROM outbound_messages WHERE status = 'deferred'",
        )
        .await as usize
            == JOBS)
            .then_some(())
    })
    .await;
    for mut w in workers {
        assert!(terminate(&mut w).success());
    }
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM outbound_events WHERE event = 'circuit_opened'"
        )
        .await,
        1,
        "opened once for all three processes"
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM outbound_messages WHERE status = 'failed'"
        )
        .await,
        0
    );
}

/// `switchboard usage` and `campaigns stats` print the API's figures as
/// JSON: an SMS sent through the simulation is counted for its agent and
/// its campaign.
#[tokio::test]
async fn usage_and_campaign_stats_from_the_command_line() {
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SIMULATE", "true");
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let mut job = sms_job("agent-u", "+14155550123");
    job["campaign_id"] = "autumn".into();
    publisher.publish(&job).await;
    env.wait_for_status(job_id(&job), "sent").await;
    worker.stop().await;

    let (ok, out, err) = run_cli(&["usage", "--agent", "agent-u"], &env.vars, None);
    assert!(ok, "{err}");
    let usage: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["channels"]["sms"]["by_status"]["sent"], 1);
    let (ok, out, err) = run_cli(
        &["campaigns", "stats", "--campaign", "autumn"],
        &env.vars,
        None,
    );
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["channels"]["sms"]["messages"], 1);
    assert_eq!(stats["channels"]["sms"]["sent"], 1);
    let (ok, _, err) = run_cli(
        &["usage", "--agent", "agent-u", "--from", "yesterday"],
        &env.vars,
        None,
    );
    assert!(!ok);
    assert!(err.contains("--from"), "{err}");
}
