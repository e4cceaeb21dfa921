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
/// DATA, RSET, NOOP, QUIT; STARTTLS per RFC 3207) that records what it was
/// given. It refuses recipients at `gone@` with 550, as a real server
/// refuses unknown mailboxes. It speaks plain text, offers STARTTLS (and
/// takes nothing but EHLO, STARTTLS and QUIT before it), or speaks TLS from
/// the first byte (implicit TLS, RFC 8314).
mod smtp_server {
    use super::*;
    use base64::Engine;
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

    #[derive(Debug, Clone, Default)]
    pub struct Received {
        pub auth: Option<String>,
        pub mail_from: String,
        pub rcpt_to: Vec<String>,
        pub data: String,
        /// Whether the session was encrypted when the message came.
        pub tls: bool,
    }

    #[derive(Clone)]
    pub enum Mode {
        Plain,
        StartTls(tokio_rustls::TlsAcceptor),
        Implicit(tokio_rustls::TlsAcceptor),
    }

    pub async fn start() -> (u16, Arc<Mutex<Vec<Received>>>) {
        start_with(Mode::Plain).await
    }

    pub async fn start_with(mode: Mode) -> (u16, Arc<Mutex<Vec<Received>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(vec![]));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(connection(socket, mode.clone(), store.clone()));
            }
        });
        (port, received)
    }

    async fn connection(
        mut socket: tokio::net::TcpStream,
        mode: Mode,
        store: Arc<Mutex<Vec<Received>>>,
    ) {
        match mode {
            Mode::Plain => session(socket, store, true, false).await,
            Mode::Implicit(acceptor) => {
                if let Ok(tls) = acceptor.accept(socket).await {
                    session(tls, store, true, true).await;
                }
            }
            Mode::StartTls(acceptor) => {
                // Before TLS: the greeting, EHLO offering STARTTLS, and
                // STARTTLS itself; anything else is refused (RFC 3207 §4).
                socket.write_all(b"220 mx.test ESMTP\r\n").await.unwrap();
                let mut lines = BufReader::new(&mut socket);
                let mut line = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.trim_end().to_ascii_uppercase();
                    let answer: &[u8] = if upper.starts_with("EHLO") {
                        b"250-mx.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
                    } else if upper == "STARTTLS" {
                        break;
                    } else if upper == "QUIT" {
                        return;
                    } else {
                        b"530 5.7.0 Must issue a STARTTLS command first\r\n"
                    };
                    lines.get_mut().write_all(answer).await.unwrap();
                }
                drop(lines);
                socket
                    .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                    .await
                    .unwrap();
                if let Ok(tls) = acceptor.accept(socket).await {
                    // The client starts over with EHLO, without a greeting.
                    session(tls, store, false, true).await;
                }
            }
        }
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        stream: S,
        store: Arc<Mutex<Vec<Received>>>,
        greet: bool,
        tls: bool,
    ) {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read);
        if greet {
            write.write_all(b"220 mx.test ESMTP\r\n").await.unwrap();
        }
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
                    tls,
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

/// Sender identity (issue 12) for SES and SMTP, on each route: what the
/// provider receives is decided by `providers::sender`, as for every other
/// email adapter. The platform route cannot be reached through the worker
/// here (the platform's email account is Resend or SendGrid), so these call
/// the adapters directly with the request the worker would build.
mod sender_identity {
    use super::*;
    use switchboard::domain::{Route, SendJob};
    use switchboard::providers::sender::Branding;
    use switchboard::providers::{Provider, ProviderSettings, SendRequest};

    pub fn branding() -> Branding {
        Branding::from_agent_row(Some(&json!({
            "from_name": null, "company_name": "Realty Co",
            "reply_email": "jane@realty.test"
        })))
    }

    pub fn job() -> SendJob {
        let job = email_job("agent-branded", "buyer@example.com");
        SendJob::parse(&serde_json::to_vec(&job).unwrap()).unwrap()
    }

    pub async fn send(
        provider: &dyn Provider,
        settings: serde_json::Value,
        route: Route,
    ) -> switchboard::providers::Accepted {
        let job = job();
        let settings = ProviderSettings::new(settings.as_object().unwrap().clone());
        provider
            .send(&SendRequest {
                job: &job,
                settings: &settings,
                status_callback: None,
                idempotency_key: job.id.to_string(),
                route,
                branding: branding(),
            })
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn ses_sends_from_the_agents_account_or_with_its_branding_on_the_platforms() {
    use switchboard::domain::Route;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/email/outbound-emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"MessageId": "m-1"})))
        .mount(&server)
        .await;
    let ses = switchboard::providers::ses::Ses::new(reqwest::Client::new(), Some(&server.uri()));

    // The agent's own account: its own sender, no branding, no Reply-To.
    sender_identity::send(&ses, ses_settings(), Route::Agent).await;
    // The platform's account: the agent's company name on the platform's
    // address, and the agent's reply_email as Reply-To.
    let mut platform = ses_settings();
    platform["from_email"] = "Acme Homes <no-reply@acme.test>".into();
    platform.as_object_mut().unwrap().remove("from_name");
    sender_identity::send(&ses, platform, Route::Platform).await;

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let bodies: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            sigv4::verify(r, SES_KEY_ID, SES_SECRET, "eu-west-1").unwrap();
            serde_json::from_slice(&r.body).unwrap()
        })
        .collect();
    assert_eq!(
        bodies[0]["FromEmailAddress"],
        "\"Jane Realty\" <jane@realty.test>"
    );
    assert_eq!(bodies[0].get("ReplyToAddresses"), None);
    assert_eq!(
        bodies[1]["FromEmailAddress"],
        "\"Realty Co\" <no-reply@acme.test>"
    );
    assert_eq!(bodies[1]["ReplyToAddresses"], json!(["jane@realty.test"]));
}

#[tokio::test]
async fn smtp_sends_from_the_agents_account_or_with_its_branding_on_the_platforms() {
    use switchboard::domain::Route;
    let (port, received) = smtp_server::start().await;
    let smtp = switchboard::providers::smtp::Smtp::default();
    let settings = |from: &str| json!({"host": "127.0.0.1", "port": port.to_string(), "tls": "none", "from_email": from});
    let mut own = settings("jane@realty.test");
    own["from_name"] = "Jane Realty".into();
    sender_identity::send(&smtp, own, Route::Agent).await;
    sender_identity::send(
        &smtp,
        settings("Acme Homes <no-reply@acme.test>"),
        Route::Platform,
    )
    .await;

    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let headers = |m: &smtp_server::Received| -> Vec<String> {
        let (head, _) = m.data.split_once("\r\n\r\n").unwrap();
        head.split("\r\n").map(str::to_string).collect()
    };
    let own = headers(&got[0]);
    assert_eq!(got[0].mail_from, "<jane@realty.test>");
    assert!(
        own.contains(&"From: \"Jane Realty\" <jane@realty.test>".to_string()),
        "{own:?}"
    );
    assert!(!own.iter().any(|h| h.starts_with("Reply-To:")), "{own:?}");
    let platform = headers(&got[1]);
    assert_eq!(got[1].mail_from, "<no-reply@acme.test>");
    assert!(
        platform.contains(&"From: \"Realty Co\" <no-reply@acme.test>".to_string()),
        "{platform:?}"
    );
    assert!(
        platform.contains(&"Reply-To: jane@realty.test".to_string()),
        "{platform:?}"
    );
}

// ---------------------------------------------------------------------------
// SES events through Amazon SNS

/// A certificate authority made for one test: TLS certificates for local
/// servers, trusted by switchboard only through `SWITCHBOARD_EXTRA_ROOT_CERTS`.
mod test_ca {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    pub struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    impl TestCa {
        pub fn new() -> Self {
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            ca.distinguished_name
                .push(DnType::CommonName, "switchboard test CA");
            let key = KeyPair::generate().unwrap();
            let pem = ca.self_signed(&key).unwrap().pem();
            Self {
                issuer: Issuer::new(ca, key),
                pem,
            }
        }

        /// The CA certificate as a PEM file, for `SWITCHBOARD_EXTRA_ROOT_CERTS`.
        pub fn file(&self) -> tempfile::NamedTempFile {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut file, self.pem.as_bytes()).unwrap();
            file
        }

        /// A TLS server configuration with a certificate for `names`.
        pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
            Arc::new(config)
        }

        /// A certificate (PEM) for someone else's public key.
        pub fn issue_for(&self, public: &impl rcgen::PublicKeyData, name: &str) -> String {
            let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.signed_by(public, &self.issuer).unwrap().pem()
        }
    }
}

/// Amazon SNS, played by this test: an RSA signing key and its certificate,
/// served over HTTPS as `https://sns.us-east-1.amazonaws.com/….pem` by a
/// local server whose TLS certificate a test CA issued. switchboard trusts
/// that CA only through `SWITCHBOARD_EXTRA_ROOT_CERTS` (the setting operators
/// behind a private CA use), and its SNS client gets a DNS answer for the
/// SNS host (and for two look-alike hosts, which also present a valid
/// certificate, so that only the host rule can refuse them) that points at
/// the local server. Nothing about the host rule or TLS is relaxed: the
/// production client builder is used as it is, plus `resolve`.
///
/// The signatures are made here as AWS's "Verifying the signatures of Amazon
/// SNS messages" describes SNS making them, not by the code under test.
mod sns {
    use super::*;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub const HOST: &str = "sns.us-east-1.amazonaws.com";
    /// Hosts that look like SNS's and are not.
    pub const EVIL_HOSTS: [&str; 2] = ["sns.evil.com", "sns.us-east-1.amazonaws.com.evil.com"];
    pub const CERT_PATH: &str = "/SimpleNotificationService-7506a1e35b36ef5a444dd1a8e7cc3ed8.pem";
    pub const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:switchboard-ses-events";

    pub struct Sns {
        addr: SocketAddr,
        ca_file: tempfile::NamedTempFile,
        key: rsa::PrivateKey,
        /// `host target` of every request the server answered.
        requests: Arc<Mutex<Vec<String>>>,
    }

    /// The RSA public key, as rcgen puts it in a certificate.
    struct RsaPublic(Vec<u8>);

    impl rcgen::PublicKeyData for RsaPublic {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_RSA_SHA256
        }
    }

    impl Sns {
        pub async fn start() -> Self {
            use rsa::pkcs1::EncodeRsaPublicKey;
            let ca = test_ca::TestCa::new();
            let mut names = vec![HOST];
            names.extend(EVIL_HOSTS);
            let config = ca.server_config(&names);

            // SNS's signing certificate: for an RSA key, as SNS's is.
            let key = rsa::PrivateKey::new(&mut rand::rng(), 2048).unwrap();
            let public = RsaPublic(
                key.to_public_key()
                    .to_pkcs1_der()
                    .unwrap()
                    .as_bytes()
                    .to_vec(),
            );
            let signing_pem = ca.issue_for(&public, HOST);
            let ca_file = ca.file();

            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(vec![]));
            let seen = requests.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let seen = seen.clone();
                    let pem = signing_pem.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(socket).await else {
                            return;
                        };
                        let mut head = vec![];
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&head).to_string();
                        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        let host = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("host: ")
                                    .or_else(|| l.strip_prefix("Host: "))
                            })
                            .unwrap_or("")
                            .trim()
                            .to_string();
                        seen.lock().unwrap().push(format!("{host} {target}"));
                        let (status, body) = if target == CERT_PATH {
                            ("200 OK", pem)
                        } else if target.starts_with("/?Action=ConfirmSubscription&") {
                            ("200 OK", "<ConfirmSubscriptionResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><ConfirmSubscriptionResult><SubscriptionArn>arn:aws:sns:us-east-1:123456789012:switchboard-ses-events:0ab1</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>".to_string())
                        } else {
                            ("404 Not Found", String::new())
                        };
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
            Self {
                addr,
                ca_file,
                key,
                requests,
            }
        }

        pub fn ca_path(&self) -> String {
            self.ca_file.path().display().to_string()
        }

        /// Requests the server answered, as `host target`.
        pub fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }

        /// The production SNS client, with DNS answers for the SNS host and
        /// its look-alikes pointing at this server.
        pub fn client(&self, settings: &switchboard::config::Settings) -> reqwest::Client {
            let mut builder = switchboard::providers::ses::sns::client_builder(
                &settings.provider_urls.extra_root_certs,
            )
            .resolve(HOST, self.addr);
            for evil in EVIL_HOSTS {
                builder = builder.resolve(evil, self.addr);
            }
            builder.build().unwrap()
        }

        /// Signs `message` as SNS does with SignatureVersion `version`.
        pub fn sign(&self, message: &mut serde_json::Value, version: u8) {
            let m = message.as_object_mut().unwrap();
            m.insert("SignatureVersion".into(), version.to_string().into());
            m.entry("SigningCertURL")
                .or_insert_with(|| format!("https://{HOST}{CERT_PATH}").into());
            let keys: &[&str] = if m["Type"] == "Notification" {
                &[
                    "Message",
                    "MessageId",
                    "Subject",
                    "Timestamp",
                    "TopicArn",
                    "Type",
                ]
            } else {
                &[
                    "Message",
                    "MessageId",
                    "SubscribeURL",
                    "Timestamp",
                    "Token",
                    "TopicArn",
                    "Type",
                ]
            };
            let mut to_sign = String::new();
            for k in keys {
                if let Some(v) = m.get(*k).and_then(|v| v.as_str()) {
                    to_sign.push_str(&format!("{k}\n{v}\n"));
                }
            }
            let signature = match version {
                1 => SigningKey::<sha1::Sha1>::new(self.key.clone())
                    .sign(to_sign.as_bytes())
                    .to_vec(),
                _ => SigningKey::<sha2::Sha256>::new(self.key.clone())
                    .sign(to_sign.as_bytes())
                    .to_vec(),
            };
            use base64::Engine;
            m.insert(
                "Signature".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(signature)
                    .into(),
            );
        }

        /// A notification carrying an SES event, signed.
        pub fn notification(
            &self,
            message_id: &str,
            event: &serde_json::Value,
            version: u8,
        ) -> serde_json::Value {
            let mut m = json!({
                "Type": "Notification",
                "MessageId": message_id,
                "TopicArn": TOPIC,
                "Message": event.to_string(),
                "Timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "UnsubscribeURL": format!("https://{HOST}/?Action=Unsubscribe&SubscriptionArn={TOPIC}:0ab1"),
            });
            self.sign(&mut m, version);
            m
        }

        /// A subscription confirmation, signed.
        pub fn confirmation(&self, token: &str) -> serde_json::Value {
            let mut m = json!({
                "Type": "SubscriptionConfirmation",
                "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
                "Token": token,
                "TopicArn": TOPIC,
                "Message": format!("You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
                "SubscribeURL": format!("https://{HOST}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}"),
                "Timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            self.sign(&mut m, 1);
            m
        }
    }

    /// An SES event as event publishing writes it.
    pub fn ses_event(
        kind: &str,
        message_id: &str,
        section: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let mut e = json!({
            "eventType": kind,
            "mail": {
                "timestamp": "2026-12-06T03:00:00.000Z",
                "source": "jane@realty.test",
                "sendingAccountId": "123456789012",
                "messageId": message_id,
                "destination": ["buyer@example.com"],
                "tags": {"ses:configuration-set": ["switchboard-events"]}
            }
        });
        e[section] = body;
        e
    }
}

/// The SES mock: accepts every SendEmail, with `ses-{job id}` as its id.
async fn ses_mock() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/email/outbound-emails"))
        .respond_with(|request: &wiremock::Request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            let job = body["EmailTags"][0]["Value"].as_str().unwrap().to_string();
            ResponseTemplate::new(200).set_body_json(json!({"MessageId": format!("ses-{job}")}))
        })
        .mount(&server)
        .await;
    server
}

/// A worker with its webhook server, SES at a mock and SNS played by `sns`.
struct SesHooks {
    env: Env,
    worker: Option<common::RunningWorker>,
    base: String,
    token: tokio_util::sync::CancellationToken,
    path: String,
    http: reqwest::Client,
    _ses: MockServer,
}

impl SesHooks {
    async fn start(sns: &sns::Sns, topic: Option<&str>) -> Self {
        let ses = ses_mock().await;
        let mut env = Env::with_defaults().await;
        env.set("SWITCHBOARD_SES_BASE_URL", ses.uri())
            .set("SWITCHBOARD_EXTRA_ROOT_CERTS", sns.ca_path());
        let mut settings = ses_settings();
        if let Some(topic) = topic {
            settings["sns_topic_arn"] = topic.into();
        }
        let integration = env
            .connect_integration("agent-ses", "email", "ses", settings)
            .await;
        let worker = env.start_worker();
        let client = sns.client(&env.settings());
        let (base, token, _) = env.start_http_with(&worker, |state| {
            state.sns = Arc::new(switchboard::providers::ses::sns::Sns::new(client));
        });
        let http = reqwest::Client::new();
        wait_until("the webhook server answers", || async {
            http.get(format!("{base}/healthz")).send().await.ok()
        })
        .await;
        Self {
            env,
            worker: Some(worker),
            base,
            token,
            path: format!("/webhooks/ses/{integration}"),
            http,
            _ses: ses,
        }
    }

    /// Sends a job and waits for it to be sent; returns its SES message id.
    async fn sent(&self, to: &str) -> (uuid::Uuid, String) {
        let job = email_job("agent-ses", to);
        let row = outcome(&self.env, &job).await;
        assert_eq!(row.status, "sent");
        (job_id(&job), row.provider_message_id.unwrap())
    }

    /// Posts `message` as SNS does (`text/plain`, its type in a header).
    async fn post_to(&self, path: &str, message: &serde_json::Value) -> u16 {
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", "text/plain; charset=UTF-8")
            .header(
                "x-amz-sns-message-type",
                message["Type"].as_str().unwrap_or_default(),
            )
            .body(message.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn post(&self, message: &serde_json::Value) -> u16 {
        self.post_to(&self.path, message).await
    }

    async fn stop(mut self) -> Env {
        self.token.cancel();
        self.worker.take().unwrap().stop().await;
        self.env
    }
}

#[tokio::test]
async fn ses_events_through_sns_are_verified_applied_once_and_bounces_and_complaints_opt_out() {
    let sns = sns::Sns::start().await;
    let hooks = SesHooks::start(&sns, Some(sns::TOPIC)).await;

    // SNS first asks us to confirm the subscription: we visit its
    // SubscribeURL, and store nothing.
    assert_eq!(hooks.post(&sns.confirmation("2336412f37fb687f")).await, 200);
    assert!(
        sns.requests().contains(&format!(
            "{} /?Action=ConfirmSubscription&TopicArn={}&Token=2336412f37fb687f",
            sns::HOST,
            sns::TOPIC
        )),
        "{:?}",
        sns.requests()
    );

    let (a, ses_a) = hooks.sent("buyer@example.com").await;
    let (b, ses_b) = hooks.sent("reader@example.com").await;
    let event = |kind: &str, id: &str, section: &str, body: serde_json::Value| {
        sns::ses_event(kind, id, section, body)
    };

    // Delivery (SignatureVersion 1), twice: SNS retries with the same
    // MessageId, and it is stored once.
    let delivered = sns.notification(
        "3f8a1c2e-delivery-a",
        &event(
            "Delivery",
            &ses_a,
            "delivery",
            json!({
                "timestamp": "2026-12-06T03:00:01.000Z", "processingTimeMillis": 912,
                "recipients": ["buyer@example.com"], "smtpResponse": "250 2.6.0 Message received",
                "reportingMTA": "a8-50.smtp-out.amazonses.com"
            }),
        ),
        1,
    );
    assert_eq!(hooks.post(&delivered).await, 200);
    hooks.env.wait_for_status(a, "delivered").await;
    assert_eq!(hooks.post(&delivered).await, 200);
    assert_eq!(
        count(&hooks.env, "SELECT count(*) FROM webhook_inbox").await,
        1
    );

    // A permanent bounce (SignatureVersion 2): bounced, and the address
    // opted out.
    let bounce = sns.notification(
        "3f8a1c2e-bounce-a",
        &event(
            "Bounce",
            &ses_a,
            "bounce",
            json!({
                "bounceType": "Permanent", "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": "buyer@example.com", "action": "failed",
                    "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                "timestamp": "2026-12-06T03:00:02.000Z", "feedbackId": "0100-bounce"
            }),
        ),
        2,
    );
    assert_eq!(hooks.post(&bounce).await, 200);
    hooks.env.wait_for_status(a, "bounced").await;
    assert_eq!(
        opt_out_reason(&hooks.env, "agent-ses", "buyer@example.com")
            .await
            .as_deref(),
        Some("hard_bounce")
    );

    // A transient bounce is an event only; opens and clicks are events; a
    // complaint opts the address out.
    for (sns_id, kind, section, body) in [
        (
            "3f8a1c2e-soft-b",
            "Bounce",
            "bounce",
            json!({
            "bounceType": "Transient", "bounceSubType": "MailboxFull",
            "bouncedRecipients": [{"emailAddress": "reader@example.com"}]}),
        ),
        (
            "3f8a1c2e-open-b",
            "Open",
            "open",
            json!({
            "ipAddress": "192.0.2.1", "timestamp": "2026-12-06T03:01:00.000Z", "userAgent": "Mozilla/5.0"}),
        ),
        (
            "3f8a1c2e-click-b",
            "Click",
            "click",
            json!({
            "link": "https://realty.test/listing/77", "timestamp": "2026-12-06T03:02:00.000Z"}),
        ),
    ] {
        let n = sns.notification(sns_id, &event(kind, &ses_b, section, body), 2);
        assert_eq!(hooks.post(&n).await, 200, "{kind}");
    }
    assert_eq!(
        opt_out_reason(&hooks.env, "agent-ses", "reader@example.com").await,
        None
    );
    let complaint = sns.notification(
        "3f8a1c2e-complaint-b",
        &event(
            "Complaint",
            &ses_b,
            "complaint",
            json!({
                "complainedRecipients": [{"emailAddress": "reader@example.com"}],
                "complaintFeedbackType": "abuse", "timestamp": "2026-12-06T03:03:00.000Z"
            }),
        ),
        1,
    );
    assert_eq!(hooks.post(&complaint).await, 200);
    wait_until("the complaint opts the reader out", || async {
        opt_out_reason(&hooks.env, "agent-ses", "reader@example.com")
            .await
            .filter(|r| r == "complaint")
    })
    .await;

    let env = hooks.stop().await;
    assert_eq!(
        env.events(a).await,
        vec!["queued", "sent", "delivered", "bounced"]
    );
    let events_b = env.events(b).await;
    for e in ["soft_bounced", "opened", "clicked", "complained"] {
        assert!(events_b.contains(&e.to_string()), "{e} in {events_b:?}");
    }
    assert_eq!(env.status(b).await.as_deref(), Some("sent"));
    // The signing certificate was fetched once and then cached.
    let fetched = sns
        .requests()
        .iter()
        .filter(|r| r.ends_with(sns::CERT_PATH))
        .count();
    assert_eq!(fetched, 1, "{:?}", sns.requests());
}

#[tokio::test]
async fn forged_tampered_unsigned_or_foreign_sns_messages_get_401_and_write_nothing() {
    let sns = sns::Sns::start().await;
    let hooks = SesHooks::start(&sns, Some(sns::TOPIC)).await;
    let (a, ses_a) = hooks.sent("buyer@example.com").await;
    let bounce = sns::ses_event(
        "Bounce",
        &ses_a,
        "bounce",
        json!({
            "bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "buyer@example.com"}]
        }),
    );

    for version in [1, 2] {
        let good = sns.notification("5e1d-bounce", &bounce, version);
        // One changed byte of the signed message.
        let mut tampered = good.clone();
        let text = tampered["Message"]
            .as_str()
            .unwrap()
            .replacen("Permanent", "Permanenu", 1);
        tampered["Message"] = text.into();
        assert_eq!(hooks.post(&tampered).await, 401, "tampered v{version}");
        // A signed field changed: the MessageId, the topic.
        let mut other_id = good.clone();
        other_id["MessageId"] = "5e1d-bounce-2".into();
        assert_eq!(hooks.post(&other_id).await, 401, "MessageId v{version}");
        // Unsigned, or an empty signature.
        let mut unsigned = good.clone();
        unsigned.as_object_mut().unwrap().remove("Signature");
        assert_eq!(hooks.post(&unsigned).await, 401, "unsigned v{version}");
        unsigned["Signature"] = "".into();
        assert_eq!(hooks.post(&unsigned).await, 401, "empty v{version}");
    }
    // A signature version SNS does not have.
    let mut v3 = sns.notification("5e1d-bounce", &bounce, 2);
    v3["SignatureVersion"] = "3".into();
    assert_eq!(hooks.post(&v3).await, 401);

    // A valid signature, with the certificate said to be elsewhere: the
    // look-alike hosts are never fetched from (they resolve to the same
    // server, with a valid certificate for their names: only the host rule
    // refuses them).
    for host in sns::EVIL_HOSTS {
        let mut m = json!({"Type": "Notification", "MessageId": "5e1d-bounce", "TopicArn": sns::TOPIC,
                           "Message": bounce.to_string(), "Timestamp": "2026-12-06T03:00:00.000Z",
                           "SigningCertURL": format!("https://{host}{}", sns::CERT_PATH)});
        sns.sign(&mut m, 1);
        assert_eq!(hooks.post(&m).await, 401, "{host}");
        // A confirmation whose SubscribeURL is not SNS's is not visited.
        let mut c = sns.confirmation("tok");
        c["SubscribeURL"] = format!("https://{host}/?Action=ConfirmSubscription&Token=tok").into();
        sns.sign(&mut c, 1);
        assert_eq!(hooks.post(&c).await, 401, "{host}");
    }
    let mut http = json!({"Type": "Notification", "MessageId": "5e1d-bounce", "TopicArn": sns::TOPIC,
                          "Message": bounce.to_string(), "Timestamp": "2026-12-06T03:00:00.000Z",
                          "SigningCertURL": format!("http://{}{}", sns::HOST, sns::CERT_PATH)});
    sns.sign(&mut http, 1);
    assert_eq!(hooks.post(&http).await, 401);

    // Signed by SNS, but for a topic that is not the integration's.
    let mut foreign = json!({"Type": "Notification", "MessageId": "5e1d-bounce",
                             "TopicArn": "arn:aws:sns:us-east-1:999999999999:someone-else",
                             "Message": bounce.to_string(), "Timestamp": "2026-12-06T03:00:00.000Z"});
    sns.sign(&mut foreign, 2);
    assert_eq!(hooks.post(&foreign).await, 401);
    // Not JSON at all; another integration; the platform (no SES account).
    assert_eq!(hooks.post(&json!("not an SNS message")).await, 401);
    let unknown = format!("/webhooks/ses/{}", uuid::Uuid::new_v4());
    let good = sns.notification("5e1d-bounce", &bounce, 1);
    assert_eq!(hooks.post_to(&unknown, &good).await, 404);
    assert_eq!(hooks.post_to("/webhooks/ses/platform", &good).await, 404);

    assert_eq!(
        count(&hooks.env, "SELECT count(*) FROM webhook_inbox").await,
        0
    );
    assert_eq!(count(&hooks.env, "SELECT count(*) FROM opt_outs").await, 0);
    assert_eq!(hooks.env.status(a).await.as_deref(), Some("sent"));
    for r in sns.requests() {
        assert_eq!(r.split(' ').next(), Some(sns::HOST), "fetched from {r}");
        assert!(!r.contains("ConfirmSubscription"), "visited {r}");
    }

    // The same message, untouched, is accepted.
    assert_eq!(hooks.post(&good).await, 200);
    hooks.env.wait_for_status(a, "bounced").await;
    hooks.stop().await;
}

// ---------------------------------------------------------------------------
// SMTP over TLS

/// An SMTP integration's settings for a local TLS server.
fn smtp_tls_settings(port: u16, tls: &str) -> serde_json::Value {
    json!({"host": "127.0.0.1", "port": port.to_string(), "tls": tls,
           "username": "jane", "password": "relay-pass-123",
           "from_email": "jane@realty.test", "from_name": "Jane Realty"})
}

/// `starttls` (RFC 3207) and `tls` (implicit TLS, RFC 8314) against real TLS
/// servers whose certificate (for 127.0.0.1) a test CA issued, trusted only
/// through `SWITCHBOARD_EXTRA_ROOT_CERTS`: the login and the message travel
/// inside TLS only (the STARTTLS server refuses everything but EHLO and
/// STARTTLS before it).
#[tokio::test]
async fn smtp_starttls_and_implicit_tls_deliver_inside_tls_to_a_server_the_extra_roots_trust() {
    use smtp_server::Mode;
    let ca = test_ca::TestCa::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
    let (starttls_port, starttls) = smtp_server::start_with(Mode::StartTls(acceptor.clone())).await;
    let (implicit_port, implicit) = smtp_server::start_with(Mode::Implicit(acceptor)).await;
    let ca_file = ca.file();
    let mut env = Env::with_defaults().await;
    env.set(
        "SWITCHBOARD_EXTRA_ROOT_CERTS",
        ca_file.path().display().to_string(),
    );
    env.connect_integration(
        "agent-starttls",
        "email",
        "smtp",
        smtp_tls_settings(starttls_port, "starttls"),
    )
    .await;
    env.connect_integration(
        "agent-tls",
        "email",
        "smtp",
        smtp_tls_settings(implicit_port, "tls"),
    )
    .await;
    let worker = env.start_worker();
    for (agent, received) in [("agent-starttls", &starttls), ("agent-tls", &implicit)] {
        let job = email_job(agent, "buyer@example.com");
        let row = outcome(&env, &job).await;
        assert_eq!(row.status, "sent", "{agent}: {:?}", row.last_error);
        let got = received.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{agent}");
        assert!(got[0].tls, "{agent}: the message came over TLS");
        assert_eq!(got[0].auth.as_deref(), Some("\0jane\0relay-pass-123"));
        assert_eq!(got[0].rcpt_to, vec!["<buyer@example.com>".to_string()]);
        let id = format!("Message-ID: <{}@realty.test>", job_id(&job));
        assert!(got[0].data.contains(&id), "{agent}: {}", got[0].data);
    }
    worker.stop().await;
}

/// The same servers without the test CA trusted (default settings): their
/// certificate is refused, the job fails at once as misconfigured, and
/// nothing (no login, no message) reaches the server.
#[tokio::test]
async fn smtp_tls_refuses_a_server_certificate_no_trusted_ca_issued() {
    use smtp_server::Mode;
    let ca = test_ca::TestCa::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
    let (starttls_port, starttls) = smtp_server::start_with(Mode::StartTls(acceptor.clone())).await;
    let (implicit_port, implicit) = smtp_server::start_with(Mode::Implicit(acceptor)).await;
    let env = Env::with_defaults().await;
    env.connect_integration(
        "agent-starttls",
        "email",
        "smtp",
        smtp_tls_settings(starttls_port, "starttls"),
    )
    .await;
    env.connect_integration(
        "agent-tls",
        "email",
        "smtp",
        smtp_tls_settings(implicit_port, "tls"),
    )
    .await;
    let worker = env.start_worker();
    for agent in ["agent-starttls", "agent-tls"] {
        let row = outcome(&env, &email_job(agent, "buyer@example.com")).await;
        assert_eq!(row.status, "failed", "{agent}");
        assert_eq!(row.attempts, 1, "{agent}: {:?}", row.last_error);
    }
    worker.stop().await;
    assert!(starttls.lock().unwrap().is_empty());
    assert!(implicit.lock().unwrap().is_empty());
}
