//! Amazon SES and SMTP end to end: a job published to RabbitMQ reaches a
//! mock SES whose request signature this file recomputes the way AWS does
//! (SigV4 written here from AWS's description, not by the code under test),
//! or a real SMTP server started here, and is recorded with the message id.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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

/// SigV4 verification as AWS describes it ("Create a signed AWS API
/// request"): canonical request, string to sign, derived key, HMAC.
mod sigv4 {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
        m.update(data.as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// Whether `request` carries a valid signature by `secret` for the
    /// `ses` service in `region`, made within 15 minutes of now.
    pub fn verify(
        request: &wiremock::Request,
        key_id: &str,
        secret: &str,
        region: &str,
    ) -> Result<(), String> {
        let header = |n: &str| {
            request
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or(format!("no {n} header"))
        };
        let auth = header("authorization")?;
        let rest = auth
            .strip_prefix("AWS4-HMAC-SHA256 ")
            .ok_or("not AWS4-HMAC-SHA256")?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for part in rest.split(", ") {
            let (k, v) = part.split_once('=').ok_or("malformed authorization")?;
            match k {
                "Credential" => credential = Some(v),
                "SignedHeaders" => signed_headers = Some(v),
                "Signature" => signature = Some(v),
                _ => return Err(format!("unexpected {k}")),
            }
        }
        let (credential, signed_headers, signature) = (
            credential.ok_or("no Credential")?,
            signed_headers.ok_or("no SignedHeaders")?,
            signature.ok_or("no Signature")?,
        );
        let amz_date = header("x-amz-date")?;
        let date = &amz_date[..8];
        let scope = format!("{date}/{region}/ses/aws4_request");
        if credential != format!("{key_id}/{scope}") {
            return Err(format!("credential scope {credential}"));
        }
        let when = chrono::NaiveDateTime::parse_from_str(&amz_date, "%Y%m%dT%H%M%SZ")
            .map_err(|e| e.to_string())?
            .and_utc();
        if (chrono::Utc::now() - when).num_minutes().abs() > 15 {
            return Err("request time too skewed".into());
        }
        let names: Vec<&str> = signed_headers.split(';').collect();
        for required in ["host", "x-amz-date"] {
            if !names.contains(&required) {
                return Err(format!("{required} is not signed"));
            }
        }
        if !request.body.is_empty() && !names.contains(&"content-type") {
            return Err("content-type is not signed".into());
        }
        let mut canonical_headers = String::new();
        for n in &names {
            let v = header(n)?;
            canonical_headers.push_str(&format!("{n}:{}\n", v.trim()));
        }
        let mut query: Vec<_> = request.url.query_pairs().collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            request.method,
            request.url.path(),
            canonical_query,
            canonical_headers,
            signed_headers,
            hex::encode(Sha256::digest(&request.body))
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let k = hmac(format!("AWS4{secret}").as_bytes(), date);
        let k = hmac(&k, region);
        let k = hmac(&k, "ses");
        let k = hmac(&k, "aws4_request");
        let expected = hex::encode(hmac(&k, &to_sign));
        if expected == signature {
            Ok(())
        } else {
            Err("signature does not match".into())
        }
    }
}

const SES_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SES_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn ses_settings() -> serde_json::Value {
    json!({"access_key_id": SES_KEY_ID, "secret_access_key": SES_SECRET, "region": "eu-west-1",
           "from_email": "jane@realty.test", "from_name": "Jane Realty",
           "configuration_set": "switchboard-events"})
}

#[tokio::test]
async fn ses_gets_a_sigv4_signed_send_email_and_its_message_id_is_recorded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/email/outbound-emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"MessageId": "010201933f8a3a5e-2e8c-4d2f-9c7b-5a0f3e1d2c4b-000000"}),
        ))
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SES_BASE_URL", server.uri());
    env.connect_integration("agent-ses", "email", "ses", ses_settings())
        .await;
    let worker = env.start_worker();
    let mut job = email_job("agent-ses", "buyer@example.com");
    job["reply_to"] = "office@realty.test".into();
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "sent");
    assert_eq!(
        row.provider_message_id.as_deref(),
        Some("010201933f8a3a5e-2e8c-4d2f-9c7b-5a0f3e1d2c4b-000000")
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    sigv4::verify(request, SES_KEY_ID, SES_SECRET, "eu-west-1").unwrap();
    assert_eq!(
        request.headers.get("content-type").unwrap(),
        "application/json"
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({
            "FromEmailAddress": "\"Jane Realty\" <jane@realty.test>",
            "Destination": {"ToAddresses": ["buyer@example.com"]},
            "ReplyToAddresses": ["office@realty.test"],
            "Content": {"Simple": {
                "Subject": {"Data": "New listing near you", "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": "3 bed, 2 bath", "Charset": "UTF-8"},
                    "Html": {"Data": "<p>3 bed, 2 bath</p>", "Charset": "UTF-8"}
                }
            }},
            "EmailTags": [{"Name": "switchboard_job_id", "Value": job_id(&job).to_string()}],
            "ConfigurationSetName": "switchboard-events"
        })
    );
    // The verifier is not a formality: one changed byte of the body, or
    // another secret, fails it.
    let mut tampered = request.clone();
    tampered.body[10] ^= 1;
    assert!(sigv4::verify(&tampered, SES_KEY_ID, SES_SECRET, "eu-west-1").is_err());
    assert!(sigv4::verify(request, SES_KEY_ID, "another-secret", "eu-west-1").is_err());
}

#[tokio::test]
async fn ses_message_rejected_fails_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/email/outbound-emails"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("x-amzn-ErrorType", "MessageRejected:http://internal.amazon.com/coral/com.amazonaws.sesv2/")
                .set_body_json(json!({"message": "Email address is not verified. The following identities failed the check in region EU-WEST-1: jane@realty.test"})),
        )
        .mount(&server)
        .await;
    let mut env = Env::with_defaults().await;
    env.set("SWITCHBOARD_SES_BASE_URL", server.uri());
    env.connect_integration("agent-ses", "email", "ses", ses_settings())
        .await;
    let worker = env.start_worker();
    let job = email_job("agent-ses", "buyer@example.com");
    let row = outcome(&env, &job).await;
    worker.stop().await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("MessageRejected"),
        "{:?}",
        row.last_error
    );
}

#[tokio::test]
async fn the_ses_connection_test_is_a_signed_get_account() {
    use switchboard::providers::{Provider, ProviderSettings};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/email/account"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "DedicatedIpAutoWarmupEnabled": false, "EnforcementStatus": "HEALTHY",
            "ProductionAccessEnabled": true, "SendingEnabled": true,
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 12.0}
        })))
        .mount(&server)
        .await;
    let ses = switchboard::providers::ses::Ses::new(reqwest::Client::new(), Some(&server.uri()));
    let settings = ProviderSettings::new(ses_settings().as_object().unwrap().clone());
    let verdict = ses
        .check_connection(switchboard::domain::Channel::Email, &settings)
        .await
        .unwrap();
    assert_eq!(
        verdict,
        "SES account in eu-west-1: sending enabled, production"
    );
    let requests = server.received_requests().await.unwrap();
    sigv4::verify(&requests[0], SES_KEY_ID, SES_SECRET, "eu-west-1").unwrap();
}

/// A small SMTP server (RFC 5321 subset: EHLO, AUTH PLAIN, MAIL, RCPT,
/// DATA, RSET, NOOP, QUIT) that records what it was given. It refuses
/// recipients at `gone@` with 550, as a real server refuses unknown mailboxes.
mod smtp_server {
    use super::*;
    use base64::Engine;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[derive(Debug, Clone, Default)]
    pub struct Received {
        pub auth: Option<String>,
        pub mail_from: String,
        pub rcpt_to: Vec<String>,
        pub data: String,
    }

    pub async fn start() -> (u16, Arc<Mutex<Vec<Received>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(vec![]));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, store.clone()));
            }
        });
        (port, received)
    }

    async fn session(socket: tokio::net::TcpStream, store: Arc<Mutex<Vec<Received>>>) {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 mx.test ESMTP\r\n").await.unwrap();
        let mut auth = None;
        let mut current = Received::default();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let command = line.trim_end().to_string();
            let upper = command.to_ascii_uppercase();
            let answer: String = if upper.starts_with("EHLO") {
                "250-mx.test\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n".into()
            } else if let Some(b64) = upper.strip_prefix("AUTH PLAIN ").map(|_| &command[11..]) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap();
                auth = Some(String::from_utf8(raw).unwrap());
                "235 2.7.0 Authentication successful\r\n".into()
            } else if upper.starts_with("MAIL FROM:") {
                current = Received {
                    auth: auth.clone(),
                    mail_from: command[10..].split_whitespace().next().unwrap().to_string(),
                    ..Received::default()
                };
                "250 2.1.0 Ok\r\n".into()
            } else if upper.starts_with("RCPT TO:") {
                let to = command[8..].trim().to_string();
                if to.starts_with("<gone@") {
                    "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown\r\n"
                        .into()
                } else {
                    current.rcpt_to.push(to);
                    "250 2.1.5 Ok\r\n".into()
                }
            } else if upper == "DATA" {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .unwrap();
                let mut data = String::new();
                loop {
                    line.clear();
                    lines.read_line(&mut line).await.unwrap();
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(&line);
                }
                current.data = data;
                store.lock().unwrap().push(current.clone());
                "250 2.0.0 Ok: queued as 4F1A2B\r\n".into()
            } else if upper == "RSET" || upper == "NOOP" {
                "250 2.0.0 Ok\r\n".into()
            } else if upper == "QUIT" {
                let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            } else {
                "502 5.5.2 Error: command not recognized\r\n".into()
            };
            if write.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test]
async fn smtp_delivers_a_multipart_message_with_our_message_id_and_a_refused_mailbox_opts_out() {
    let (port, received) = smtp_server::start().await;
    let env = Env::with_defaults().await;
    env.connect_integration(
        "agent-smtp",
        "email",
        "smtp",
        json!({"host": "127.0.0.1", "port": port.to_string(), "tls": "none",
               "username": "jane", "password": "relay-pass-123",
               "from_email": "jane@realty.test", "from_name": "Jane Realty"}),
    )
    .await;
    let worker = env.start_worker();
    let mut job = email_job("agent-smtp", "buyer@example.com");
    job["reply_to"] = "office@realty.test".into();
    let row = outcome(&env, &job).await;
    assert_eq!(row.status, "sent");
    let id = format!("<{}@realty.test>", job_id(&job));
    assert_eq!(row.provider_message_id.as_deref(), Some(id.as_str()));

    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.auth.as_deref(), Some("\0jane\0relay-pass-123"));
    assert_eq!(m.mail_from, "<jane@realty.test>");
    assert_eq!(m.rcpt_to, vec!["<buyer@example.com>".to_string()]);
    let (head, body) = m.data.split_once("\r\n\r\n").unwrap();
    let headers: Vec<&str> = head.split("\r\n").collect();
    for expected in [
        format!("Message-ID: {id}"),
        "From: \"Jane Realty\" <jane@realty.test>".to_string(),
        "To: buyer@example.com".to_string(),
        "Reply-To: office@realty.test".to_string(),
        "Subject: New listing near you".to_string(),
        "MIME-Version: 1.0".to_string(),
    ] {
        assert!(
            headers.contains(&expected.as_str()),
            "{expected} in {headers:?}"
        );
    }
    let content_type = headers
        .iter()
        .find(|h| h.starts_with("Content-Type: "))
        .unwrap();
    assert!(
        content_type.starts_with("Content-Type: multipart/alternative;"),
        "{content_type}"
    );
    let text_at = body
        .find("Content-Type: text/plain; charset=utf-8")
        .unwrap();
    let html_at = body.find("Content-Type: text/html; charset=utf-8").unwrap();
    assert!(text_at < html_at, "text before html");
    assert!(body.contains("3 bed, 2 bath"));
    assert!(body.contains("<p>3 bed, 2 bath</p>"));

    // 550 at RCPT: the mailbox does not exist; failed once, opted out.
    let gone = email_job("agent-smtp", "gone@example.com");
    let row = outcome(&env, &gone).await;
    worker.stop().await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 1);
    assert_eq!(
        opt_out_reason(&env, "agent-smtp", "gone@example.com")
            .await
            .as_deref(),
        Some("provider_rejected")
    );
    assert_eq!(received.lock().unwrap().len(), 1);
}
