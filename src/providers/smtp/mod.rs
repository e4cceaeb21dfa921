//! SMTP through `lettre`: an agent's own mail server or a local relay, with
//! `tls` = `starttls` (default, port 587), `tls` (implicit TLS, port 465) or
//! `none` (plain, for relays on a trusted network), and AUTH when
//! `username` is set. One pooled transport per distinct connection setting
//! (host, port, tls, credentials), reused by every job of the integrations
//! that share them, so that a campaign does not open a session per email.
//!
//! The `Message-ID` we set, `<job-id@sender-domain>`, is the provider
//! message id: SMTP servers give no id of their own that a later event
//! could be matched on.
//!
//! Classification follows the reply code: 4xx transient, 5xx permanent,
//! 550/551/553 (mailbox unavailable, not local, name not allowed) a refusal
//! of the recipient that becomes a `provider_rejected` opt-out, 530/534/535
//! refused credentials. Failing to connect is transient and cannot have sent
//! anything; losing the session later can have happened after the message
//! was handed over, so that failure is `maybe_sent`.
//!
//! It must never log or return the password.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use lettre::message::{Mailbox as LettreMailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::email::Mailbox;
use super::sender::{Sender, sender};
use super::{
    Accepted, ErrorKind, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec,
};
use crate::domain::Channel;

pub const NAME: &str = "smtp";

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::required("host"),
    SettingSpec::optional("port"),
    SettingSpec::optional("username"),
    SettingSpec::optional_secret("password"),
    SettingSpec::optional("tls"),
    SettingSpec::required("from_email"),
    SettingSpec::optional("from_name"),
];

type Transport = AsyncSmtpTransport<Tokio1Executor>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    StartTls,
    Implicit,
    Plain,
}

impl Security {
    fn parse(s: &ProviderSettings) -> Result<Self, ProviderError> {
        match s.get("tls").map(str::to_ascii_lowercase).as_deref() {
            None | Some("starttls") => Ok(Self::StartTls),
            Some("tls") => Ok(Self::Implicit),
            Some("none") => Ok(Self::Plain),
            Some(_) => Err(ProviderError::misconfigured(
                "SMTP `tls` must be `starttls`, `tls` or `none`",
            )),
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::StartTls => 587,
            Self::Implicit => 465,
            Self::Plain => 25,
        }
    }
}

/// The pooled transports, by a hash of the settings that make a connection
/// (the integration id is not part of a send; two integrations with the same
/// server and account may share a pool). The password enters only the hash.
#[derive(Default)]
pub struct Smtp {
    pools: Mutex<HashMap<[u8; 32], Transport>>,
    /// CA certificates (DER) trusted besides the system's
    /// (`SWITCHBOARD_EXTRA_ROOT_CERTS`): servers behind a private CA.
    extra_roots: Vec<Vec<u8>>,
}

fn port(s: &ProviderSettings, security: Security) -> Result<u16, ProviderError> {
    match s.get("port") {
        None => Ok(security.default_port()),
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| ProviderError::misconfigured("SMTP `port` is not a port number")),
    }
}

impl Smtp {
    pub fn new(extra_roots: Vec<Vec<u8>>) -> Self {
        Self {
            pools: Mutex::default(),
            extra_roots,
        }
    }

    fn transport(&self, s: &ProviderSettings) -> Result<Transport, ProviderError> {
        let host = s.require("host")?.trim();
        let security = Security::parse(s)?;
        let port = port(s, security)?;
        let username = s.get("username").filter(|u| !u.is_empty());
        let password = s.get("password").unwrap_or_default();
        let mut hasher = Sha256::new();
        for part in [
            host,
            &port.to_string(),
            &format!("{security:?}"),
            username.unwrap_or_default(),
            password,
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let key: [u8; 32] = hasher.finalize().into();
        let mut pools = self
            .pools
            .lock()
            .expect("the SMTP pool map is never poisoned");
        if let Some(t) = pools.get(&key) {
            return Ok(t.clone());
        }
        let tls = || {
            let misconfigured = |e: lettre::transport::smtp::Error| {
                ProviderError::misconfigured(format!("SMTP TLS parameters for {host}: {e}"))
            };
            let mut builder = TlsParameters::builder(host.to_string());
            for der in &self.extra_roots {
                builder = builder.add_root_certificate(
                    Certificate::from_der(der.clone()).map_err(misconfigured)?,
                );
            }
            builder.build().map_err(misconfigured)
        };
        let mut builder = Transport::builder_dangerous(host)
            .port(port)
            .tls(match security {
                Security::StartTls => Tls::Required(tls()?),
                Security::Implicit => Tls::Wrapper(tls()?),
                Security::Plain => Tls::None,
            });
        if let Some(user) = username {
            builder = builder.credentials(Credentials::new(user.to_string(), password.to_string()));
        }
        let transport = builder.build();
        pools.insert(key, transport.clone());
        Ok(transport)
    }
}

/// The `Message-ID` of a job's email: unique per job, on the sender's domain.
pub fn message_id(job_id: uuid::Uuid, from: &Mailbox) -> String {
    let domain = from
        .email
        .rsplit('@')
        .next()
        .unwrap_or("switchboard.invalid");
    format!("<{job_id}@{domain}>")
}

/// The MIME message for one job: text and html as `multipart/alternative`
/// (text first, as RFC 2046 orders the plainest part first).
pub fn message(request: &SendRequest<'_>) -> Result<(Message, String), ProviderError> {
    let job = request.job;
    if job.content.template.is_some() {
        return Err(ProviderError {
            code: Some("invalid_template".into()),
            ..ProviderError::misconfigured("SMTP has no templates; send subject and text or html")
        });
    }
    // From and Reply-To as every adapter decides them (the agent's own
    // account, or the platform's address with the agent's branding).
    let Sender { from, reply_to } = sender(request)?;
    let id = message_id(job.id, &from);
    let address = |a: &str, what: &str| {
        a.parse()
            .map_err(|e| ProviderError::misconfigured(format!("SMTP {what} address: {e}")))
    };
    let mut builder = Message::builder()
        .message_id(Some(id.clone()))
        .from(LettreMailbox::new(
            from.name.clone(),
            address(&from.email, "sender")?,
        ))
        .to(LettreMailbox::new(
            None,
            address(job.recipient.as_str(), "recipient")?,
        ))
        .subject(job.content.subject.clone().unwrap_or_default());
    if let Some(reply_to) = reply_to {
        builder = builder.reply_to(LettreMailbox::new(None, address(&reply_to, "Reply-To")?));
    }
    let text = job.content.text.clone();
    let html = job.content.html.clone();
    let built = match (text, html) {
        (Some(text), Some(html)) => {
            builder.multipart(MultiPart::alternative_plain_html(text, html))
        }
        (None, Some(html)) => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html),
        ),
        (text, None) => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text.unwrap_or_default()),
        ),
    };
    let message = built.map_err(|e| ProviderError::misconfigured(format!("SMTP message: {e}")))?;
    Ok((message, id))
}

#[async_trait]
impl Provider for Smtp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Email => SETTINGS,
            _ => &[],
        }
    }

    fn check_settings(&self, _channel: Channel, s: &ProviderSettings) -> Result<(), String> {
        let security = Security::parse(s).map_err(|e| e.message)?;
        port(s, security).map_err(|e| e.message)?;
        if s.get("username").is_some() != s.get("password").is_some() {
            return Err("SMTP `username` and `password` go together".into());
        }
        Ok(())
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let (message, id) = message(request)?;
        let transport = self.transport(request.settings)?;
        let response = transport.send(message).await.map_err(|e| error(&e))?;
        Ok(Accepted {
            provider_message_id: Some(id),
            detail: json!({
                "smtp_code": response.code().to_string(),
                "smtp_reply": response.message().collect::<Vec<_>>().join(" "),
            }),
        })
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        settings: &ProviderSettings,
    ) -> Result<String, ProviderError> {
        let transport = self.transport(settings)?;
        match transport.test_connection().await {
            Ok(true) => Ok(format!(
                "SMTP server {} accepted the session",
                settings.require("host")?
            )),
            Ok(false) => Err(ProviderError::transient(
                "the SMTP server did not answer NOOP",
            )),
            Err(e) => Err(error(&e)),
        }
    }
}

/// Reply codes that refuse the recipient's mailbox.
const MAILBOX_REFUSED: &[&str] = &["550", "551", "553"];
/// Reply codes that refuse the login.
const AUTH_REFUSED: &[&str] = &["530", "534", "535"];

fn error(e: &lettre::transport::smtp::Error) -> ProviderError {
    let message = e.to_string();
    if let Some(code) = e.status().map(|c| c.to_string()) {
        let mut err = if e.is_transient() {
            ProviderError::transient(message)
        } else {
            ProviderError {
                kind: ErrorKind::Permanent,
                ..ProviderError::transient(message)
            }
        };
        err.recipient_opted_out = MAILBOX_REFUSED.contains(&code.as_str());
        err.credentials_refused = AUTH_REFUSED.contains(&code.as_str());
        err.code = Some(code);
        return err;
    }
    if e.is_tls() || certificate_refused(e) {
        // A certificate the server presents will not change on a retry.
        return ProviderError {
            code: Some("tls".into()),
            ..ProviderError::misconfigured(message)
        };
    }
    // lettre reports failing to reach the server (resolve, connect) as its
    // "Connection" kind, which only its Display names: nothing was sent.
    if message.starts_with("Connection error") {
        return ProviderError {
            code: Some("connect".into()),
            ..ProviderError::transient(message)
        };
    }
    // The session broke (network, timeout, an unreadable reply): possibly
    // after the server took the message.
    ProviderError::ambiguous(message)
}

/// Whether the TLS handshake refused the server's certificate (an unknown
/// issuer, another name, expired). lettre reports a handshake that fails
/// inside the connection as its "Connection" kind, with rustls's error
/// further down the source chain; only a certificate refusal is picked out
/// here, as it comes before anything is sent and no retry changes it.
fn certificate_refused(e: &lettre::transport::smtp::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(
            tls,
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        ) {
            return true;
        }
        cause = err.source();
    }
    false
}
