//! The encryption keys of integration secrets: `switchboard rotate-keys`
//! while a worker sends, ciphertexts bound to their agent and channel (and
//! legacy rows upgraded), and a missing or wrong key refused at start.
//! Real Postgres, real RabbitMQ, the real binary where operators use it,
//! Twilio replaced by wiremock checking each account's credentials.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use common::*;
use serde_json::json;
use switchboard::crypto::Keyring;
use switchboard::integrations;
use switchboard::keys;
use switchboard::store;
use uuid::Uuid;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The key rows are rotated to; the old one is common's `TEST_KEY`.
const NEW_KEY: [u8; 32] = [7u8; 32];

fn b64(key: [u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn key_id(key: [u8; 32]) -> String {
    Keyring::from_base64(&b64(key))
        .unwrap()
        .current_key_id()
        .to_string()
}

fn sid(i: usize) -> String {
    format!("AC{i:032x}")
}

fn token(i: usize) -> String {
    format!("auth-token-of-agent-{i}")
}

/// Twilio's CreateMessage for account `i`, answering only requests made
/// with that account's own credentials (so a secret decrypted wrongly, or
/// another agent's, gets no 201).
async fn mount_twilio(server: &MockServer, i: usize) {
    Mock::given(method("POST"))
        .and(path(format!(
            "/2010-04-01/Accounts/{}/Messages.json",
            sid(i)
        )))
        .and(header(
            "authorization",
            basic_auth(&sid(i), &token(i)).as_str(),
        ))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "sid": format!("SM{i:032x}"), "status": "queued", "num_segments": "1",
            "account_sid": sid(i)
        })))
        .mount(server)
        .await;
}

async fn connect_agent(env: &Env, i: usize) -> Uuid {
    env.connect_integration(
        &format!("agent-{i}"),
        "sms",
        "twilio",
        json!({"account_sid": sid(i), "auth_token": token(i), "phone_number": "+14155550100"}),
    )
    .await
}

/// A distinct recipient per job, so each provider request names its job.
fn job_to(n: usize) -> String {
    format!("+1415555{:04}", 1000 + n)
}

/// Waits until every job is `sent`; panics at once if one ends otherwise.
async fn wait_all_sent(env: &Env, ids: &[Uuid]) {
    let client = env.db.client().await;
    wait_for(&format!("{} jobs to be sent", ids.len()), || async {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'sent'),
                        count(*) FILTER (WHERE status IN ('failed', 'unknown', 'rejected'))
                   FROM outbound_messages WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap();
        let (sent, bad): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(bad, 0, "a job ended badly during rotation");
        if sent as usize == ids.len() {
            Ok(())
        } else {
            Err(format!("{sent} sent"))
        }
    })
    .await
}

/// Runs the real binary to completion: (exit success, stdout, stderr).
/// The loop only guards against a hang; it asserts nothing about time.
fn run_binary(args: &[&str], vars: &HashMap<String, String>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env_clear()
        .envs(vars)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard");
    for _ in 0..1200 {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("switchboard {args:?} did not exit within two minutes");
}

/// Every integration row: (key id, starts with the version-2 marker).
async fn row_formats(env: &Env) -> Vec<(String, bool)> {
    let client = env.db.client().await;
    client
        .query(
            "SELECT secrets_key_id, substring(secrets_ciphertext FROM 1 FOR 4) = 'sbv2'::bytea
               FROM integrations",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The runbook, with a worker sending throughout: rows written under the
/// old key; every process restarted with `KEYS=new,old`; a rotation that
/// runs two batches and stops (as if interrupted), a round of jobs
/// published before each batch so that they are sent while it rewrites
/// rows and are checked with the rows half old, half new; then the real
/// `switchboard rotate-keys` (default batch size) finishing the pass while
/// another round is sent, skipping the rows already done; a rerun that finds
/// nothing to do; the old key removed, and jobs still send. Each job reaches
/// Twilio exactly once, with its agent's own credentials (the mock answers
/// nothing else), and none ends `failed`.
#[tokio::test]
async fn rotating_keys_while_a_worker_sends_sends_every_job_exactly_once() {
    const AGENTS: usize = 150;
    // The interrupted pass's batch size. It only sets how many rows one
    // read returns; each row is rewritten by its own compare-and-swap, so it
    // cannot change which rows end under the new key. Small, so the rows
    // are half rotated between rounds; the binary then runs at its default.
    const BATCH: i64 = 50;
    let server = MockServer::start().await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri());
    for i in 0..AGENTS {
        mount_twilio(&server, i).await;
        connect_agent(&env, i).await;
    }
    let old_id = key_id(TEST_KEY);
    let new_id = key_id(NEW_KEY);
    assert!(row_formats(&env).await.iter().all(|(k, _)| *k == old_id));

    // Step 1 of the runbook: every process gets the list, new key first.
    env.vars.remove("SWITCHBOARD_ENCRYPTION_KEY");
    env.set(
        "SWITCHBOARD_ENCRYPTION_KEYS",
        format!("{},{}", b64(NEW_KEY), b64(TEST_KEY)),
    );
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    let mut ids = Vec::new();
    let mut n = 0;
    // One job per agent, each to its own recipient.
    let mut round = || {
        (0..AGENTS)
            .map(|i| {
                n += 1;
                let mut j = sms_job(&format!("agent-{i}"), &job_to(n));
                j["text"] = json!(format!("job {n}"));
                j
            })
            .collect::<Vec<_>>()
    };

    // Step 2, interrupted after two batches.
    let settings = env.settings();
    let keyring = settings.keyring.as_ref().unwrap();
    let client = env.db.client().await;
    let mut report = keys::RotationReport::new(keyring);
    let mut after = Uuid::nil();
    for _ in 0..2 {
        let jobs = round();
        for j in &jobs {
            publisher.publish(j).await;
            ids.push(job_id(j));
        }
        after = keys::rotate_batch(&client, keyring, after, BATCH, &mut report)
            .await
            .unwrap()
            .expect("rows are left");
        wait_all_sent(&env, &ids).await;
    }
    assert_eq!(report.rekeyed, 2 * BATCH as u64);
    let formats = row_formats(&env).await;
    assert_eq!(
        formats.iter().filter(|(k, _)| *k == new_id).count(),
        2 * BATCH as usize
    );

    // The rerun, through the binary, while the next round is sent.
    let jobs = round();
    ids.extend(jobs.iter().map(job_id));
    let vhost_url = env.vhost.url.clone();
    let publishing = tokio::spawn(async move {
        let publisher = Publisher::connect(&vhost_url).await;
        for j in &jobs {
            publisher.publish(j).await;
        }
    });
    let vars = env.vars.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || run_binary(&["rotate-keys"], &vars))
        .await
        .unwrap();
    assert!(ok, "rotate-keys failed: {err}");
    let left = AGENTS - 2 * BATCH as usize;
    assert!(
        out.contains(&format!(
            "{AGENTS} integrations with secrets: {left} re-encrypted from an older key"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} already under key `{new_id}`", 2 * BATCH)),
        "{out}"
    );
    assert!(out.contains("0 unreadable"), "{out}");
    assert!(err.contains("rotate-keys: "), "progress per batch: {err}");
    publishing.await.unwrap();
    wait_all_sent(&env, &ids).await;
    assert!(
        row_formats(&env)
            .await
            .iter()
            .all(|(k, v2)| *k == new_id && *v2),
        "every row is under the new key in the current format"
    );

    // Another rerun is a no-op, and says so.
    let (ok, out, err) = run_binary(&["rotate-keys", "--json"], &env.vars);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["scanned"], AGENTS);
    assert_eq!(report["already_current"], AGENTS);
    assert_eq!(report["rekeyed"], 0);
    assert_eq!(report["key_id"], new_id.as_str());
    worker.stop().await;

    // Step 3: the old key is removed; jobs still send.
    env.set("SWITCHBOARD_ENCRYPTION_KEYS", b64(NEW_KEY));
    let worker = env.start_worker();
    for j in &round() {
        publisher.publish(j).await;
        ids.push(job_id(j));
    }
    wait_all_sent(&env, &ids).await;
    worker.stop().await;

    // Every request is a CreateMessage the official spec accepts.
    let spec = spec("twilio_api_v2010.json");
    let schema = request_schema(
        &spec,
        "/2010-04-01/Accounts/{AccountSid}/Messages.json",
        "post",
        "application/x-www-form-urlencoded",
    );
    let requests = server.received_requests().await.unwrap();
    let mut per_recipient: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        let pairs = form_pairs(&r.body);
        let names: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
        assert_fields_match_schema(&schema, &names);
        assert_valid_against_spec(&spec, &schema, &twilio_form_as_json(&pairs));
        let to = pairs
            .into_iter()
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v)
            .expect("a To field");
        *per_recipient.entry(to).or_default() += 1;
    }
    assert_eq!(requests.len(), ids.len(), "one request per job");
    for n in 1..=ids.len() {
        assert_eq!(per_recipient.get(&job_to(n)), Some(&1), "job {n}");
    }
}

/// An integration's ciphertext as switchboard wrote it before the version
/// marker: AES-256-GCM bound to the integration id alone.
fn legacy_ciphertext(key: [u8; 32], id: Uuid, plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::try_from(key.as_slice()).unwrap());
    let nonce = Nonce::generate();
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: id.as_bytes(),
            },
        )
        .unwrap();
    [nonce.as_slice(), ciphertext.as_slice()].concat()
}

async fn activate(env: &Env, id: Uuid) -> Result<String, String> {
    let client = env.db.client().await;
    let row = store::integrations::get(&client, id).await.unwrap();
    let settings = env.settings();
    match integrations::activate(settings.keyring.as_ref(), row) {
        Ok(active) => Ok(active
            .unwrap()
            .settings
            .require("auth_token")
            .unwrap()
            .to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A row moved to another agent (or channel) by a direct UPDATE no longer
/// decrypts; a row in the legacy format (bound to its id only) still does,
/// and `rotate-keys` rewrites it in the current format, after which moving
/// it fails too. The moved row is reported unreadable and left alone.
#[tokio::test]
async fn secrets_are_bound_to_agent_and_channel_and_legacy_rows_are_upgraded() {
    let env = Env::with_defaults().await;
    let moved = connect_agent(&env, 1).await;
    let legacy = connect_agent(&env, 2).await;
    let client = env.db.client().await;
    client
        .execute(
            "UPDATE integrations SET secrets_ciphertext = $2 WHERE id = $1",
            &[
                &legacy,
                &legacy_ciphertext(
                    TEST_KEY,
                    legacy,
                    json!({"auth_token": token(2)}).to_string().as_bytes(),
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(activate(&env, moved).await, Ok(token(1)));
    assert_eq!(
        activate(&env, legacy).await,
        Ok(token(2)),
        "legacy rows decrypt"
    );

    client
        .batch_execute(&format!(
            "INSERT INTO agents (id) VALUES ('agent-x');
             UPDATE integrations SET agent_id = 'agent-x' WHERE id = '{moved}'"
        ))
        .await
        .unwrap();
    let err = activate(&env, moved).await.unwrap_err();
    assert!(err.contains("could not be decrypted"), "{err}");
    client
        .execute(
            "UPDATE integrations SET agent_id = 'agent-1', channel = 'email' WHERE id = $1",
            &[&moved],
        )
        .await
        .unwrap();
    assert!(
        activate(&env, moved).await.is_err(),
        "moved to another channel"
    );

    let settings = env.settings();
    let pool = store::pool(&settings.database_url, 1).unwrap();
    let report = keys::rotate(
        &pool,
        settings.keyring.as_ref().unwrap(),
        keys::DEFAULT_BATCH,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.scanned, 2);
    assert_eq!(report.upgraded, 1);
    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(report.unreadable[0].0, moved);
    assert!(!report.complete());
    assert_eq!(activate(&env, legacy).await, Ok(token(2)));
    assert!(row_formats(&env).await.iter().all(|(_, v2)| *v2));

    // Upgraded, the legacy row is bound to its agent too.
    client
        .execute(
            "UPDATE integrations SET agent_id = 'agent-x' WHERE id = $1",
            &[&legacy],
        )
        .await
        .unwrap();
    assert!(activate(&env, legacy).await.is_err());
}

/// `rotate-keys` races an operator who reconnects an integration: the
/// compare-and-swap refuses to write secrets re-encrypted from the copy
/// read before the change, and the pass then finds the operator's row
/// already current. The operator's new secret is what stays.
#[tokio::test]
async fn rotation_never_overwrites_an_integration_changed_meanwhile() {
    let mut env = Env::with_defaults().await;
    let id = connect_agent(&env, 1).await;
    let client = env.db.client().await;
    let stale = store::integrations::get(&client, id)
        .await
        .unwrap()
        .unwrap();

    env.vars.remove("SWITCHBOARD_ENCRYPTION_KEY");
    env.set(
        "SWITCHBOARD_ENCRYPTION_KEYS",
        format!("{},{}", b64(NEW_KEY), b64(TEST_KEY)),
    );
    env.connect_integration(
        "agent-1",
        "sms",
        "twilio",
        json!({"account_sid": sid(1), "auth_token": "the-operators-new-token",
               "phone_number": "+14155550100"}),
    )
    .await;
    let settings = env.settings();
    let keyring = settings.keyring.as_ref().unwrap();
    let (key_id, blob) = stale.secrets.clone().unwrap();
    let old_plain = keyring
        .decrypt(&key_id, &integrations::binding(&stale), &blob)
        .unwrap();
    let (new_key_id, new_blob) = keyring.encrypt(&integrations::binding(&stale), &old_plain);
    assert!(
        !store::integrations::replace_secrets(&client, &stale, &new_key_id, &new_blob)
            .await
            .unwrap(),
        "a stale copy must not overwrite the operator's change"
    );

    let pool = store::pool(&settings.database_url, 1).unwrap();
    let report = keys::rotate(&pool, keyring, keys::DEFAULT_BATCH, |_| {})
        .await
        .unwrap();
    assert_eq!((report.scanned, report.already_current), (1, 1));
    assert!(report.complete());
    assert_eq!(
        activate(&env, id).await,
        Ok("the-operators-new-token".to_string())
    );
}

/// `run` and `serve` decrypt a stored integration before starting: with
/// the wrong key, or none, they exit non-zero naming the key id the rows
/// need, instead of starting and failing every job through them.
#[tokio::test]
async fn a_wrong_or_missing_key_stops_run_and_serve_at_start() {
    let env = Env::with_defaults().await;
    connect_agent(&env, 1).await;
    let needed = key_id(TEST_KEY);
    let wrong = [43u8; 32];

    for command in ["run", "serve", "worker"] {
        let mut vars = env.vars.clone();
        vars.insert("SWITCHBOARD_ENCRYPTION_KEY".into(), b64(wrong));
        vars.insert("SWITCHBOARD_HTTP_ADDR".into(), "127.0.0.1:0".into());
        let (ok, _, err) = run_binary(&[command], &vars);
        assert!(!ok, "`{command}` must not start with the wrong key");
        assert!(err.contains("refusing to start"), "{command}: {err}");
        assert!(err.contains(&format!("key `{needed}`")), "{command}: {err}");
        assert!(err.contains(&key_id(wrong)), "names the key it has: {err}");
        assert!(!err.contains(&b64(wrong)), "a key leaked: {err}");
    }

    let mut no_key = env.vars.clone();
    no_key.remove("SWITCHBOARD_ENCRYPTION_KEY");
    no_key.insert("SWITCHBOARD_HTTP_ADDR".into(), "127.0.0.1:0".into());
    let (ok, _, err) = run_binary(&["serve"], &no_key);
    assert!(!ok, "serve must not start without the key its rows need");
    assert!(err.contains(&format!("`{needed}`")), "{err}");

    // Both variables set and disagreeing: refused before anything runs.
    let mut both = env.vars.clone();
    both.insert(
        "SWITCHBOARD_ENCRYPTION_KEYS".into(),
        format!("{},{}", b64(NEW_KEY), b64(TEST_KEY)),
    );
    let (ok, _, err) = run_binary(&["run"], &both);
    assert!(!ok);
    assert!(err.contains("unset SWITCHBOARD_ENCRYPTION_KEY"), "{err}");
}
