//! Settings, read once from the environment (names fixed in DESIGN.md) into a
//! typed struct. Every default is documented on its field.
//!
//! Secrets are held as [`SecretString`] so that `Debug` output and logs never
//! show them. Nothing else in the crate reads environment variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use crate::crypto::{Keyring, KeyringError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error(transparent)]
    Key(#[from] KeyringError),
}

/// Where each provider's API is reached. Tests point these at local mocks.
#[derive(Debug, Clone)]
pub struct ProviderUrls {
    /// `SWITCHBOARD_RESEND_BASE_URL`, default `https://api.resend.com`.
    pub resend: String,
    /// `SWITCHBOARD_SENDGRID_BASE_URL`, default `https://api.sendgrid.com`.
    pub sendgrid: String,
    /// `SWITCHBOARD_MAILGUN_BASE_URL`, default `https://api.mailgun.net`.
    pub mailgun: String,
    /// `SWITCHBOARD_POSTMARK_BASE_URL`, default `https://api.postmarkapp.com`.
    pub postmark: String,
    /// `SWITCHBOARD_SES_BASE_URL`, default: the region's endpoint.
    pub ses: Option<String>,
    /// `SWITCHBOARD_TWILIO_BASE_URL`, default `https://api.twilio.com`.
    pub twilio: String,
    /// `SWITCHBOARD_AFRICASTALKING_BASE_URL`, default `https://api.africastalking.com`.
    pub africastalking: String,
    /// `SWITCHBOARD_WHATSAPP_BASE_URL`, default `https://graph.facebook.com/v21.0`.
    pub whatsapp: String,
    /// `SWITCHBOARD_VAPI_BASE_URL`, default `https://api.vapi.ai`.
    pub vapi: String,
    /// `SWITCHBOARD_EXTRA_ROOT_CERTS`, default none: the path of a PEM file
    /// of CA certificates trusted in addition to the system's on the way to
    /// a provider: an SMTP server behind a private CA, or a TLS-inspecting
    /// egress proxy in front of Amazon SNS. Read once at start; held as DER.
    pub extra_root_certs: Vec<Vec<u8>>,
}

/// The platform's own provider accounts, used when an agent has none.
#[derive(Debug, Clone, Default)]
pub struct PlatformAccounts {
    /// `RESEND_API_KEY`
    pub resend_api_key: Option<SecretString>,
    /// `SENDGRID_API_KEY`: with `EMAIL_FROM`, the platform's email account
    /// when `RESEND_API_KEY` is not set (Resend wins when both are: it
    /// deduplicates on the job id, SendGrid does not).
    pub sendgrid_api_key: Option<SecretString>,
    /// `SENDGRID_WEBHOOK_PUBLIC_KEY`: the verification key (base64 DER) of
    /// the platform account's signed Event Webhook, for
    /// `/webhooks/sendgrid/platform`. Public, so not a secret.
    pub sendgrid_webhook_public_key: Option<String>,
    /// `EMAIL_FROM`: the platform's sender address, e.g. `Acme <no-reply@acme.test>`.
    pub email_from: Option<String>,
    /// `TWILIO_ACCOUNT_SID`
    pub twilio_account_sid: Option<String>,
    /// `TWILIO_AUTH_TOKEN`
    pub twilio_auth_token: Option<SecretString>,
    /// `TWILIO_PHONE_NUMBER`
    pub twilio_phone_number: Option<String>,
    /// `TWILIO_MESSAGING_SERVICE_SID`: used instead of a phone number when set.
    pub twilio_messaging_service_sid: Option<String>,
    /// `RESEND_WEBHOOK_SECRET`: the `whsec_…` signing secret of the platform's
    /// Resend webhook, for `/webhooks/resend/platform`.
    pub resend_webhook_secret: Option<SecretString>,
}

/// Jobs in flight per worker unless `SWITCHBOARD_PREFETCH` says otherwise.
/// With a provider answering in 100 ms, each job holds its slot for about
/// 120 ms (the claim and the outcome write included), so 256 allowed only
/// just over 2,000 jobs/s; 512 reached 3,600–3,800 in the benchmark, and its
/// larger batches also cut Postgres CPU per job by a third with an instant
/// provider. Peak RSS stays under 70 MB.
pub const DEFAULT_PREFETCH: u16 = 512;

/// `SWITCHBOARD_LOG_FORMAT`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `text` (the default): one human-readable line per event, for a
    /// terminal or journald.
    #[default]
    Text,
    /// `json`: one JSON object per line, for log shippers; a job's lines
    /// carry its ids as fields of the `job` span.
    Json,
}

impl LogFormat {
    /// Reads `SWITCHBOARD_LOG_FORMAT` alone: logging starts before the
    /// other settings are read, so that their errors are logged in it.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        match lookup("SWITCHBOARD_LOG_FORMAT")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(ConfigError::Invalid {
                name: "SWITCHBOARD_LOG_FORMAT",
                message: format!("expected text or json, got `{other}`"),
            }),
        }
    }
}

/// `Debug` is written by hand (below) so that URL passwords are redacted.
#[derive(Clone)]
pub struct Settings {
    /// `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/switchboard`.
    pub database_url: String,
    /// `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// `SWITCHBOARD_HTTP_ADDR`, default `127.0.0.1:8080`.
    pub http_addr: SocketAddr,
    /// `SWITCHBOARD_METRICS_ADDR`, default unset. When set, `/metrics` (and
    /// `/healthz`) are served on a listener of their own at this address,
    /// by every subcommand that runs (`worker` too), and `/metrics` is no
    /// longer served on `http_addr`, which may face providers' webhooks.
    /// Unset, `/metrics` stays on `http_addr`: its default is loopback, so
    /// nothing is exposed by default, and a second listener with a fixed
    /// default port would collide when several processes share a host.
    pub metrics_addr: Option<SocketAddr>,
    /// `SWITCHBOARD_LOG_FORMAT`, default `text`.
    pub log_format: LogFormat,
    /// `SWITCHBOARD_ENCRYPTION_KEYS`: comma-separated base64 keys of 32
    /// bytes each; the first encrypts, every one decrypts (README, "Rotating
    /// the encryption key"). When unset, `SWITCHBOARD_ENCRYPTION_KEY` (one
    /// key); when both are set, the single key must be the list's first.
    /// Required by every command that reads or writes integrations.
    pub keyring: Option<Keyring>,
    /// `SWITCHBOARD_SIMULATE`, default false: lets the simulation provider be
    /// the last fallback.
    pub simulate: bool,
    /// `SWITCHBOARD_API_TOKEN`: bearer token for `/v1`.
    pub api_token: Option<SecretString>,
    /// `SWITCHBOARD_PUBLIC_URL`: where providers reach our webhooks. Without
    /// it no status-callback URL is sent to providers.
    pub public_url: Option<String>,
    pub provider_urls: ProviderUrls,
    pub platform: PlatformAccounts,
    /// `SWITCHBOARD_PREFETCH`, default [`DEFAULT_PREFETCH`]: unacked deliveries
    /// per worker, and so the number of jobs in flight at once.
    pub prefetch: u16,
    /// `SWITCHBOARD_MAX_ATTEMPTS`, default 5: provider calls per job before a
    /// transient failure becomes `failed`.
    pub max_attempts: u32,
    /// `SWITCHBOARD_AT_LEAST_ONCE`, default empty: providers (comma-separated
    /// names) whose ambiguous failures (a timeout or 5xx after which the
    /// provider may have sent the message) are retried anyway, accepting a
    /// possible duplicate over a possibly unsent message. Providers that
    /// deduplicate on the job id (Resend) are always retried; for the others
    /// such a failure is recorded as status `unknown` and never resent.
    pub at_least_once: Vec<String>,
    /// `SWITCHBOARD_RETRY_BASE_MS`, default 500: first backoff delay.
    pub retry_base: Duration,
    /// `SWITCHBOARD_RETRY_MAX_MS`, default 30000: longest single wait,
    /// including a provider's `Retry-After`.
    pub retry_max: Duration,
    /// `SWITCHBOARD_PROVIDER_TIMEOUT_MS`, default 15000: one provider request.
    pub provider_timeout: Duration,
    /// `SWITCHBOARD_LEASE_SECS`, default 300: how long a worker owns a job it
    /// is sending. A redelivered copy waits this long for the owner to finish
    /// before taking over (the owner died).
    pub lease: Duration,
    /// `SWITCHBOARD_SHUTDOWN_GRACE_SECS`, default 30: how long in-flight jobs
    /// may finish after SIGTERM; the rest stay unacked and are redelivered.
    pub shutdown_grace: Duration,
    /// `SWITCHBOARD_DB_POOL_SIZE`, default 32.
    pub db_pool_size: usize,
    /// `SWITCHBOARD_DB_BATCH_WAIT_MS`, default 2: how long a batched write
    /// waits for more jobs' rows to join it when fewer are ready than fill a
    /// statement. Trades at most twice this in latency per job (claim and
    /// outcome) for fewer, larger statements at moderate rates; 0 sends
    /// whatever is ready at once.
    pub db_batch_wait: Duration,
    /// `SWITCHBOARD_RETRY_PARK_AFTER_MS`, default 5000: a provider's
    /// Retry-After longer than this parks the job in `scheduled_jobs` instead
    /// of holding a prefetch slot while waiting.
    pub retry_park_after: Duration,
    /// `SWITCHBOARD_RATE_WAIT_MAX_MS`, default 1000: the longest a job waits
    /// in memory for a per-second limit; longer, and it is parked.
    pub rate_wait_max: Duration,
    /// `SWITCHBOARD_CIRCUIT_THRESHOLD`, default 5: consecutive failures of a
    /// provider account (5xx, timeouts) that open its circuit.
    pub circuit_threshold: u32,
    /// `SWITCHBOARD_CIRCUIT_COOLDOWN_MS`, default 30000: how long an open
    /// circuit defers jobs before one probe is let through.
    pub circuit_cooldown: Duration,
    /// `SWITCHBOARD_SCHEDULER_INTERVAL_MS`, default 1000: how often due
    /// parked jobs are looked for.
    pub scheduler_interval: Duration,
}

impl std::fmt::Debug for Settings {
    /// Like a derived `Debug`, with the passwords in `DATABASE_URL`,
    /// `AMQP_URL` and `SWITCHBOARD_PUBLIC_URL` replaced by `****` (secrets
    /// proper are [`SecretString`]s and the keyring shows only key ids), so
    /// settings can be logged whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Exhaustive on purpose: a new field does not compile until it is
        // added here, so nobody adds a secret that `Debug` then prints.
        let Settings {
            database_url,
            amqp_url,
            http_addr,
            metrics_addr,
            log_format,
            keyring,
            simulate,
            api_token,
            public_url,
            provider_urls,
            platform,
            prefetch,
            max_attempts,
            at_least_once,
            retry_base,
            retry_max,
            provider_timeout,
            lease,
            shutdown_grace,
            db_pool_size,
            db_batch_wait,
            retry_park_after,
            rate_wait_max,
            circuit_threshold,
            circuit_cooldown,
            scheduler_interval,
        } = self;
        f.debug_struct("Settings")
            .field("database_url", &redact_url(database_url))
            .field("amqp_url", &redact_url(amqp_url))
            .field("public_url", &public_url.as_deref().map(redact_url))
            .field("http_addr", http_addr)
            .field("metrics_addr", metrics_addr)
            .field("log_format", log_format)
            .field("keyring", keyring)
            .field("simulate", simulate)
            .field("api_token", api_token)
            .field("provider_urls", provider_urls)
            .field("platform", platform)
            .field("prefetch", prefetch)
            .field("max_attempts", max_attempts)
            .field("at_least_once", at_least_once)
            .field("retry_base", retry_base)
            .field("retry_max", retry_max)
            .field("provider_timeout", provider_timeout)
            .field("lease", lease)
            .field("shutdown_grace", shutdown_grace)
            .field("db_pool_size", db_pool_size)
            .field("db_batch_wait", db_batch_wait)
            .field("retry_park_after", retry_park_after)
            .field("rate_wait_max", rate_wait_max)
            .field("circuit_threshold", circuit_threshold)
            .field("circuit_cooldown", circuit_cooldown)
            .field("scheduler_interval", scheduler_interval)
            .finish()
    }
}

/// `url` with its password (and a `password` query parameter, which
/// libpq also accepts) replaced by `****`. A value that is not a URL (a
/// libpq `key=value` string) is hidden whole if it mentions a password,
/// since its quoting rules make a partial redaction easy to get wrong.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("****"));
            }
            if parsed
                .query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"))
            {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k.eq_ignore_ascii_case("password") {
                            "****".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) if url.to_ascii_lowercase().contains("password") => {
            "[not a URL; hidden because it holds a password]".to_string()
        }
        Err(_) => url.to_string(),
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_lookup(|k| vars.get(k).cloned())
    }

    /// Reads settings through `lookup`, so tests can build settings without
    /// touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let secret = |k: &str| get(k).map(SecretString::from);
        let url = |k: &'static str, default: &str| {
            provider_base_url(k, &get(k).unwrap_or_else(|| default.to_string()))
        };
        let ms = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            number(name, get(name), default).map(Duration::from_millis)
        };

        let http_addr = get("SWITCHBOARD_HTTP_ADDR")
            .unwrap_or_else(|| "127.0.0.1:8080".into())
            .parse()
            .map_err(|e| ConfigError::Invalid {
                name: "SWITCHBOARD_HTTP_ADDR",
                message: format!("not a socket address: {e}"),
            })?;
        let metrics_addr = get("SWITCHBOARD_METRICS_ADDR")
            .map(|a| {
                a.parse().map_err(|e| ConfigError::Invalid {
                    name: "SWITCHBOARD_METRICS_ADDR",
                    message: format!("not a socket address: {e}"),
                })
            })
            .transpose()?;
        // An empty value (an env file's `KEY=` line) is no key, not a bad
        // one: commands that need no key (migrate, enqueue) still run.
        let keyring = Keyring::from_env_values(
            lookup("SWITCHBOARD_ENCRYPTION_KEY").as_deref(),
            lookup("SWITCHBOARD_ENCRYPTION_KEYS").as_deref(),
        )?;
        let simulate = match get("SWITCHBOARD_SIMULATE").as_deref() {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "SWITCHBOARD_SIMULATE",
                    message: format!("expected true or false, got `{other}`"),
                });
            }
        };
        let public_url = get("SWITCHBOARD_PUBLIC_URL")
            .map(|u| {
                url::Url::parse(&u)
                    .map(|_| u.trim_end_matches('/').to_string())
                    .map_err(|e| ConfigError::Invalid {
                        name: "SWITCHBOARD_PUBLIC_URL",
                        message: format!("not a URL: {e}"),
                    })
            })
            .transpose()?;

        Ok(Settings {
            database_url: get("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/switchboard".into()),
            amqp_url: get("AMQP_URL")
                .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            http_addr,
            metrics_addr,
            log_format: LogFormat::from_lookup(&lookup)?,
            keyring,
            simulate,
            api_token: secret("SWITCHBOARD_API_TOKEN"),
            public_url,
            provider_urls: ProviderUrls {
                resend: url("SWITCHBOARD_RESEND_BASE_URL", "https://api.resend.com")?,
                sendgrid: url("SWITCHBOARD_SENDGRID_BASE_URL", "https://api.sendgrid.com")?,
                mailgun: url("SWITCHBOARD_MAILGUN_BASE_URL", "https://api.mailgun.net")?,
                postmark: url(
                    "SWITCHBOARD_POSTMARK_BASE_URL",
                    "https://api.postmarkapp.com",
                )?,
                ses: get("SWITCHBOARD_SES_BASE_URL")
                    .map(|u| provider_base_url("SWITCHBOARD_SES_BASE_URL", &u))
                    .transpose()?,
                twilio: url("SWITCHBOARD_TWILIO_BASE_URL", "https://api.twilio.com")?,
                africastalking: url(
                    "SWITCHBOARD_AFRICASTALKING_BASE_URL",
                    "https://api.africastalking.com",
                )?,
                whatsapp: url(
                    "SWITCHBOARD_WHATSAPP_BASE_URL",
                    "https://graph.facebook.com/v21.0",
                )?,
                vapi: url("SWITCHBOARD_VAPI_BASE_URL", "https://api.vapi.ai")?,
                extra_root_certs: match get("SWITCHBOARD_EXTRA_ROOT_CERTS") {
                    None => vec![],
                    Some(path) => extra_root_certs(&path)?,
                },
            },
            platform: PlatformAccounts {
                resend_api_key: secret("RESEND_API_KEY"),
                sendgrid_api_key: secret("SENDGRID_API_KEY"),
                sendgrid_webhook_public_key: get("SENDGRID_WEBHOOK_PUBLIC_KEY"),
                email_from: get("EMAIL_FROM"),
                twilio_account_sid: get("TWILIO_ACCOUNT_SID"),
                twilio_auth_token: secret("TWILIO_AUTH_TOKEN"),
                twilio_phone_number: get("TWILIO_PHONE_NUMBER"),
                twilio_messaging_service_sid: get("TWILIO_MESSAGING_SERVICE_SID"),
                resend_webhook_secret: secret("RESEND_WEBHOOK_SECRET"),
            },
            prefetch: number(
                "SWITCHBOARD_PREFETCH",
                get("SWITCHBOARD_PREFETCH"),
                u64::from(DEFAULT_PREFETCH),
            )?
            .clamp(1, u16::MAX as u64) as u16,
            max_attempts: number(
                "SWITCHBOARD_MAX_ATTEMPTS",
                get("SWITCHBOARD_MAX_ATTEMPTS"),
                5,
            )?
            .clamp(1, 100) as u32,
            at_least_once: get("SWITCHBOARD_AT_LEAST_ONCE")
                .unwrap_or_default()
                .split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
            retry_base: ms("SWITCHBOARD_RETRY_BASE_MS", 500)?,
            retry_max: ms("SWITCHBOARD_RETRY_MAX_MS", 30_000)?,
            provider_timeout: ms("SWITCHBOARD_PROVIDER_TIMEOUT_MS", 15_000)?,
            lease: Duration::from_secs(number(
                "SWITCHBOARD_LEASE_SECS",
                get("SWITCHBOARD_LEASE_SECS"),
                300,
            )?),
            shutdown_grace: Duration::from_secs(number(
                "SWITCHBOARD_SHUTDOWN_GRACE_SECS",
                get("SWITCHBOARD_SHUTDOWN_GRACE_SECS"),
                30,
            )?),
            db_pool_size: number(
                "SWITCHBOARD_DB_POOL_SIZE",
                get("SWITCHBOARD_DB_POOL_SIZE"),
                32,
            )?
            .max(2) as usize,
            db_batch_wait: ms("SWITCHBOARD_DB_BATCH_WAIT_MS", 2)?.min(Duration::from_secs(1)),
            retry_park_after: ms("SWITCHBOARD_RETRY_PARK_AFTER_MS", 5_000)?,
            rate_wait_max: ms("SWITCHBOARD_RATE_WAIT_MAX_MS", 1_000)?,
            circuit_threshold: number(
                "SWITCHBOARD_CIRCUIT_THRESHOLD",
                get("SWITCHBOARD_CIRCUIT_THRESHOLD"),
                5,
            )?
            .clamp(1, 1_000) as u32,
            circuit_cooldown: ms("SWITCHBOARD_CIRCUIT_COOLDOWN_MS", 30_000)?,
            scheduler_interval: ms("SWITCHBOARD_SCHEDULER_INTERVAL_MS", 1_000)?
                .max(Duration::from_millis(10)),
        })
    }

    /// The keyring, or the start-up error that says how to provide one.
    pub fn require_keyring(&self) -> Result<&Keyring, ConfigError> {
        self.keyring
            .as_ref()
            .ok_or(ConfigError::Key(KeyringError::Missing))
    }
}

/// The certificates of the PEM file at `path`: at least one, each a
/// parseable X.509 certificate, so that a wrong path or file fails at start
/// rather than as a TLS error on the first connection.
fn extra_root_certs(path: &str) -> Result<Vec<Vec<u8>>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        name: "SWITCHBOARD_EXTRA_ROOT_CERTS",
        message,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    let mut certs = vec![];
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        let block = block.map_err(|e| invalid(format!("{path}: not PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| invalid(format!("{path}: not an X.509 certificate: {e}")))?;
        certs.push(block.contents);
    }
    if certs.is_empty() {
        return Err(invalid(format!("{path} holds no CERTIFICATE block")));
    }
    Ok(certs)
}

fn number(name: &'static str, raw: Option<String>, default: u64) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
            name,
            message: format!("expected a whole number, got `{v}`"),
        }),
    }
}

/// A provider's base URL: https, or plain http only to a loopback host (a
/// local mock), so that a typo or a hostile setting cannot send
/// credentials over the network in clear text.
fn provider_base_url(name: &'static str, raw: &str) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { name, message };
    let parsed = url::Url::parse(raw).map_err(|e| invalid(format!("not a URL: {e}")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        other => {
            return Err(invalid(format!(
                "must be an https URL (`{other}` is allowed only for http on a loopback \
                 address, for a local mock)"
            )));
        }
    }
    Ok(raw.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {

    #[test]
    fn provider_base_urls_are_https_or_a_local_mock() {
        let ok = |u: &str| provider_base_url("SWITCHBOARD_TWILIO_BASE_URL", u);
        assert_eq!(
            ok("https://api.twilio.com/").unwrap(),
            "https://api.twilio.com"
        );
        assert!(ok("http://127.0.0.1:8081").is_ok());
        assert!(ok("http://[::1]:8081").is_ok());
        assert!(ok("http://localhost:8081").is_ok());
        for bad in [
            "http://api.twilio.com",
            "http://10.0.0.5",
            "ftp://127.0.0.1",
            "api.twilio.com",
        ] {
            let e = ok(bad).unwrap_err().to_string();
            assert!(e.contains("SWITCHBOARD_TWILIO_BASE_URL"), "{bad}: {e}");
        }
    }
    use super::*;
    use secrecy::ExposeSecret;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_point_at_local_services() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert!(s.database_url.contains("127.0.0.1:5432"));
        assert!(!s.simulate);
        assert!(s.keyring.is_none());
        assert_eq!(s.provider_urls.twilio, "https://api.twilio.com");
        assert_eq!(s.prefetch, 512);
        assert_eq!(s.metrics_addr, None);
        assert_eq!(s.log_format, LogFormat::Text);
        let s = settings(&[
            ("SWITCHBOARD_LOG_FORMAT", "JSON"),
            ("SWITCHBOARD_METRICS_ADDR", "0.0.0.0:9184"),
        ])
        .unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.metrics_addr.unwrap().port(), 9184);
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let err = settings(&[("SWITCHBOARD_PREFETCH", "lots")]).unwrap_err();
        assert!(err.to_string().starts_with("SWITCHBOARD_PREFETCH"), "{err}");
        let err = settings(&[("SWITCHBOARD_ENCRYPTION_KEY", "short")]).unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD_ENCRYPTION_KEY"),
            "{err}"
        );
        let err = settings(&[("SWITCHBOARD_SIMULATE", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("SWITCHBOARD_SIMULATE"), "{err}");
        let err = settings(&[("SWITCHBOARD_LOG_FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("SWITCHBOARD_LOG_FORMAT"), "{err}");
        let err = settings(&[("SWITCHBOARD_METRICS_ADDR", "9184")]).unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD_METRICS_ADDR"),
            "{err}"
        );
    }

    #[test]
    fn extra_root_certs_must_be_a_readable_pem_of_certificates() {
        assert!(
            settings(&[])
                .unwrap()
                .provider_urls
                .extra_root_certs
                .is_empty()
        );
        let missing = settings(&[("SWITCHBOARD_EXTRA_ROOT_CERTS", "/nonexistent/ca.pem")]);
        let err = missing.unwrap_err().to_string();
        assert!(err.starts_with("SWITCHBOARD_EXTRA_ROOT_CERTS"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let not_a_cert = dir.path().join("key.pem");
        std::fs::write(
            &not_a_cert,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = settings(&[("SWITCHBOARD_EXTRA_ROOT_CERTS", not_a_cert.to_str().unwrap())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = settings(&[("TWILIO_AUTH_TOKEN", "tok-very-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("tok-very-secret"));
        assert_eq!(
            s.platform.twilio_auth_token.unwrap().expose_secret(),
            "tok-very-secret"
        );
    }

    #[test]
    fn debug_output_redacts_url_passwords_tokens_and_keys() {
        let key = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
        let s = settings(&[
            (
                "DATABASE_URL",
                "postgres://sb:db-pass-1@db.internal:5432/sb?sslmode=require",
            ),
            ("AMQP_URL", "amqps://sb:mq-pass-2@mq.internal:5671/%2f"),
            (
                "SWITCHBOARD_PUBLIC_URL",
                "https://hook:pub-pass-3@sb.example",
            ),
            ("SWITCHBOARD_API_TOKEN", "api-token-4"),
            ("SWITCHBOARD_ENCRYPTION_KEYS", key),
            ("RESEND_API_KEY", "re_secret_5"),
            ("RESEND_WEBHOOK_SECRET", "whsec_secret_6"),
            ("SENDGRID_API_KEY", "SG.secret_7"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        for secret in [
            "db-pass-1",
            "mq-pass-2",
            "pub-pass-3",
            "api-token-4",
            key,
            "re_secret_5",
            "whsec_secret_6",
            "SG.secret_7",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // What is not secret stays readable, for debugging.
        assert!(shown.contains("postgres://sb:****@db.internal:5432/sb?sslmode=require"));
        assert!(shown.contains("mq.internal"), "{shown}");
        assert!(shown.contains(s.keyring.as_ref().unwrap().current_key_id()));

        assert_eq!(
            redact_url("postgres://sb@db/sb?password=hunter2&sslmode=require"),
            "postgres://sb@db/sb?password=****&sslmode=require"
        );
        assert!(!redact_url("host=db user=sb password='a b'").contains("a b"));
        assert_eq!(redact_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    #[test]
    fn missing_key_is_a_clear_error_when_required() {
        let s = settings(&[]).unwrap();
        let err = s.require_keyring().unwrap_err().to_string();
        assert!(err.contains("SWITCHBOARD_ENCRYPTION_KEY"), "{err}");
    }
}
