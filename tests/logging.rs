//! `SWITCHBOARD_LOG_FORMAT=json`, as a log shipper reads it: the real
//! binary's stderr, every line one JSON object, every line of a job's work
//! carrying the job's ids, and no secret anywhere in it.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};
use wiremock::{MockServer, ResponseTemplate};

const SID: &str = "AC00000000000000000000000000000777";
const AUTH_TOKEN: &str = "twilio-auth-token-must-not-be-logged";
const API_TOKEN: &str = "api-token-must-not-be-logged-0123456789";
const TO: &str = "+14155550123";

/// The spawned binary, killed if the test ends before it exited.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `switchboard run` with `vars` and collects its stderr on a
/// thread (so a full pipe never blocks it); the thread's result is the
/// whole of stderr once the process has exited.
fn spawn_run(vars: &HashMap<String, String>) -> (Running, std::thread::JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("run")
        .env_clear()
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard run");
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stderr.read_to_string(&mut out).unwrap();
        // `run` prints nothing on stdout; whatever it did would be logged
        // outside the format, so it is checked too.
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        out.push_str(&rest);
        out
    });
    (Running(child), reader)
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "SIGTERM exits 0");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("switchboard did not exit within 60 s of SIGTERM");
}

/// One SMS through the platform's Twilio account, refused once with a 429
/// (so the job logs a retry inside its span at the default level) and then
/// accepted. Every line of stderr is a JSON object; the job's lines carry
/// `job_id`, `agent_id`, `channel` and `message_id`; neither Twilio's auth
/// token (nor the Basic credentials made from it), the API token, the
/// credential key nor the recipient's full number appears anywhere.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_jobs_ids_and_no_secrets() {
    let server = MockServer::start().await;
    twilio_create_message(SID, AUTH_TOKEN)
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    twilio_create_message(SID, AUTH_TOKEN)
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"sid": "SMlog", "status": "queued"})),
        )
        .mount(&server)
        .await;

    let mut env = Env::with_defaults().await;
    // The listen address and the log format and filter decide where the
    // process listens and what it writes to stderr, never what a job does.
    // `debug` for switchboard itself makes more lines to search for
    // secrets in than the default `info`.
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .set("TWILIO_PHONE_NUMBER", "+14155550000")
        .set("SWITCHBOARD_API_TOKEN", API_TOKEN)
        .set(
            "SWITCHBOARD_HTTP_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .set("SWITCHBOARD_LOG_FORMAT", "json")
        .set("RUST_LOG", "info,switchboard=debug");
    let (mut child, stderr) = spawn_run(&env.vars);

    let job = sms_job("agent-logs", TO);
    let id = job_id(&job);
    env.publisher().await.publish(&job).await;
    env.wait_for_status(id, "sent").await;
    terminate(&mut child.0);
    let output = stderr.join().unwrap();

    let mut lines = Vec::new();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(value.is_object(), "one object per line: {line}");
        for key in ["timestamp", "level", "target"] {
            assert!(value.get(key).is_some(), "every line has {key}: {line}");
        }
        lines.push(value);
    }
    assert!(
        lines.iter().any(|l| l["message"] == "switchboard starting"),
        "the start-up line is there: {output}"
    );

    let job_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "job" && l["span"]["job_id"] == id.to_string())
        .collect();
    assert!(
        job_lines
            .iter()
            .any(|l| l["message"] == "transient provider failure; retrying"),
        "the 429's retry is logged inside the job's span: {output}"
    );
    for line in &job_lines {
        let span = &line["span"];
        assert_eq!(span["agent_id"], "agent-logs", "{line}");
        assert_eq!(span["channel"], "sms", "{line}");
        assert_eq!(span["message_id"], id.to_string(), "{line}");
    }
    // No line in any job span lacks the ids (the span only gains them once
    // the body is parsed, and this body parses).
    for line in lines.iter().filter(|l| l["span"]["name"] == "job") {
        assert_eq!(line["span"]["job_id"], id.to_string(), "{line}");
    }

    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{AUTH_TOKEN}"));
    for (what, secret) in [
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_string()),
        ("the Basic credentials", basic),
        ("SWITCHBOARD_API_TOKEN", API_TOKEN.to_string()),
        ("SWITCHBOARD_ENCRYPTION_KEY", test_key_b64()),
        ("the recipient's full number", TO.to_string()),
    ] {
        assert!(!output.contains(&secret), "{what} appears in the logs");
    }
}

/// A bad setting ends the process with its reason as a JSON line too, so a
/// log shipper does not drop the one line that says why it stopped.
#[tokio::test]
async fn a_fatal_error_is_logged_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("migrate")
        .env_clear()
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .env("SWITCHBOARD_PREFETCH", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line: Value = serde_json::from_str(stderr.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stderr}"));
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("SWITCHBOARD_PREFETCH"),
        "{line}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("migrate")
        .env_clear()
        .env("SWITCHBOARD_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("SWITCHBOARD_LOG_FORMAT") && stderr.contains("text or json"),
        "{stderr}"
    );
}
