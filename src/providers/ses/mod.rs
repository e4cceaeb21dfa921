//! Amazon SES v2: `SendEmail` with simple content
//! (`POST /v2/email/outbound-emails`, REST-JSON), SigV4-signed by the
//! maintained `aws-sigv4` crate with the integration's access key and
//! region (`../shared/providers.md` §5). The job id travels as the
//! `switchboard_job_id` email tag, and `ConfigurationSetName` is the
//! integration's `configuration_set` (which is also where SES event
//! publishing to SNS is configured). The connection test is `GetAccount`.
//!
//! SES names its errors in `x-amzn-ErrorType` (or the body's `__type`):
//! throttling is rate limited, refusals of the message or the account are
//! permanent, refused credentials mark the integration unverified. SES takes
//! no idempotency key: this adapter does not deduplicate.
//!
//! Delivery events come back through Amazon SNS ([`sns`] checks the
//! signature, [`webhook`] reads the SES event); `sns_topic_arn`, when set,
//! is the only topic whose messages the integration's webhook accepts.
//!
//! It must never put the secret key anywhere but the signing call.

mod sign;
pub mod sns;
pub mod webhook;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::http::{Reply, execute};
use super::sender::{Sender, sender};
use super::{
    Accepted, ErrorKind, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec,
};
use crate::domain::Channel;

pub const NAME: &str = "ses";

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::required("access_key_id"),
    SettingSpec::secret("secret_access_key"),
    SettingSpec::required("region"),
    SettingSpec::required("from_email"),
    SettingSpec::optional("from_name"),
    SettingSpec::optional("configuration_set"),
    SettingSpec::optional("sns_topic_arn"),
];

/// The tag that carries the job id; SES returns it on every event.
pub const JOB_TAG: &str = "switchboard_job_id";

pub struct Ses {
    http: reqwest::Client,
    /// `SWITCHBOARD_SES_BASE_URL`: one endpoint for every region (a proxy or
    /// a test mock); `None` means each integration's regional endpoint.
    base_url: Option<String>,
}

impl Ses {
    pub fn new(http: reqwest::Client, base_url: Option<&str>) -> Self {
        Self {
            http,
            base_url: base_url.map(|u| u.trim_end_matches('/').to_string()),
        }
    }

    fn endpoint(&self, region: &str) -> String {
        self.base_url
            .clone()
            .unwrap_or_else(|| format!("https://email.{region}.amazonaws.com"))
    }

    /// One signed request to the SES v2 API.
    async fn call(
        &self,
        settings: &ProviderSettings,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ProviderError> {
        let region = region(settings)?;
        let url = format!("{}{path}", self.endpoint(region));
        let mut headers = vec![];
        if body.is_some() {
            headers.push(("content-type", "application/json".to_string()));
        }
        let signed = sign::sign(
            sign::Credentials {
                access_key_id: settings.require("access_key_id")?,
                secret_access_key: settings.require("secret_access_key")?,
                region,
            },
            method.as_str(),
            &url,
            &headers,
            body.as_deref().unwrap_or_default(),
            std::time::SystemTime::now(),
        )?;
        let mut builder = self.http.request(method, &url);
        for (name, value) in headers
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .chain(signed)
        {
            builder = builder.header(name, value);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        execute(builder).await
    }
}

fn region(settings: &ProviderSettings) -> Result<&str, ProviderError> {
    let region = settings.require("region")?;
    // The region becomes part of a host name and of the signature scope.
    if region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(ProviderError::misconfigured(
            "setting `region` is not an AWS region (like `us-east-1`)",
        ));
    }
    Ok(region)
}

fn charset_data(data: &str) -> Value {
    json!({"Data": data, "Charset": "UTF-8"})
}

/// The `SendEmail` body for one job.
pub fn body(request: &SendRequest<'_>) -> Result<Value, ProviderError> {
    let job = request.job;
    super::email::refuse_template(request, "SES")?;
    // From and Reply-To as every adapter decides them (the agent's own
    // account, or the platform's address with the agent's branding).
    let Sender { from, reply_to } = sender(request)?;
    let mut email_body = Map::new();
    if let Some(text) = &job.content.text {
        email_body.insert("Text".into(), charset_data(text));
    }
    if let Some(html) = &job.content.html {
        email_body.insert("Html".into(), charset_data(html));
    }
    let mut b = Map::new();
    b.insert("FromEmailAddress".into(), from.header().into());
    b.insert(
        "Destination".into(),
        json!({"ToAddresses": [job.recipient.as_str()]}),
    );
    if let Some(reply_to) = reply_to {
        b.insert("ReplyToAddresses".into(), json!([reply_to]));
    }
    b.insert(
        "Content".into(),
        json!({"Simple": {
            "Subject": charset_data(job.content.subject.as_deref().unwrap_or_default()),
            "Body": email_body,
        }}),
    );
    b.insert(
        "EmailTags".into(),
        json!([{"Name": JOB_TAG, "Value": job.id.to_string()}]),
    );
    if let Some(set) = request
        .settings
        .get("configuration_set")
        .filter(|s| !s.is_empty())
    {
        b.insert("ConfigurationSetName".into(), set.into());
    }
    Ok(Value::Object(b))
}

#[async_trait]
impl Provider for Ses {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Email => SETTINGS,
            _ => &[],
        }
    }

    fn check_settings(&self, _channel: Channel, settings: &ProviderSettings) -> Result<(), String> {
        region(settings).map(|_| ()).map_err(|e| e.message)
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let body = serde_json::to_vec(&body(request)?)
            .map_err(|e| ProviderError::misconfigured(format!("SES body: {e}")))?;
        let reply = self
            .call(
                request.settings,
                reqwest::Method::POST,
                "/v2/email/outbound-emails",
                Some(body),
            )
            .await?;
        if !reply.is_success() {
            return Err(error(&reply));
        }
        let id = reply
            .json()
            .as_ref()
            .and_then(|j| j.get("MessageId"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Accepted {
            provider_message_id: id,
            detail: json!({}),
        })
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        settings: &ProviderSettings,
    ) -> Result<String, ProviderError> {
        let reply = self
            .call(settings, reqwest::Method::GET, "/v2/email/account", None)
            .await?;
        if !reply.is_success() {
            return Err(error(&reply));
        }
        let json = reply.json().unwrap_or_default();
        let enabled = json.get("SendingEnabled").and_then(Value::as_bool);
        let production = json.get("ProductionAccessEnabled").and_then(Value::as_bool);
        Ok(format!(
            "SES account in {}: sending {}, {}",
            region(settings)?,
            if enabled == Some(false) {
                "paused"
            } else {
                "enabled"
            },
            if production == Some(true) {
                "production"
            } else {
                "sandbox"
            },
        ))
    }
}

/// The SES error name: `x-amzn-ErrorType` without its `:uri` suffix, else
/// the body's `__type` without its `namespace#` prefix, else `code`.
fn error_name(reply: &Reply, json: Option<&Value>) -> Option<String> {
    let from_header = reply
        .headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_string());
    let from_body = || {
        json.and_then(|j| j.get("__type").or_else(|| j.get("code")))
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
    };
    from_header.or_else(from_body).filter(|n| !n.is_empty())
}

/// SES and STS names for refused credentials or signatures.
const CREDENTIAL_ERRORS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "AccessDeniedException",
    "MissingAuthenticationTokenException",
];
const THROTTLING: &[&str] = &[
    "TooManyRequestsException",
    "ThrottlingException",
    "Throttling",
];
const REFUSED: &[&str] = &[
    "MessageRejected",
    "AccountSuspendedException",
    "MailFromDomainNotVerifiedException",
    "SendingPausedException",
    "NotFoundException",
    "BadRequestException",
    "LimitExceededException",
];

fn error(reply: &Reply) -> ProviderError {
    let json = reply.json();
    let name = error_name(reply, json.as_ref());
    let message = json
        .as_ref()
        .and_then(|j| j.get("message").or_else(|| j.get("Message")))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| reply.body_snippet());
    let mut err =
        ProviderError::from_status(reply.status, name.clone(), message, reply.retry_after());
    match name.as_deref() {
        Some(n) if THROTTLING.contains(&n) => {
            // Throttled requests were not acted on.
            err.kind = ErrorKind::Transient;
            err.maybe_sent = false;
        }
        Some(n) if CREDENTIAL_ERRORS.contains(&n) => {
            err.kind = ErrorKind::Permanent;
            err.credentials_refused = true;
        }
        Some(n) if REFUSED.contains(&n) => err.kind = ErrorKind::Permanent,
        _ => {}
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn reply(status: u16, error_type: Option<&str>, body: &str) -> Reply {
        let mut headers = HeaderMap::new();
        if let Some(t) = error_type {
            headers.insert("x-amzn-ErrorType", HeaderValue::from_str(t).unwrap());
        }
        Reply {
            status,
            headers,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn errors_are_classified_as_ses_sends_them() {
        let e = error(&reply(
            429,
            Some("TooManyRequestsException:http://internal.amazon.com/coral/com.amazonaws.sesv2/"),
            r#"{"message":"Too Many Requests"}"#,
        ));
        assert!(e.is_retriable() && !e.maybe_sent);
        assert_eq!(e.code.as_deref(), Some("TooManyRequestsException"));
        let e = error(&reply(
            400,
            None,
            r#"{"__type":"com.amazonaws.sesv2#ThrottlingException","message":"Maximum sending rate exceeded."}"#,
        ));
        assert!(e.is_retriable() && !e.maybe_sent);
        for (name, status) in [
            ("MessageRejected", 400),
            ("AccountSuspendedException", 400),
            ("MailFromDomainNotVerifiedException", 400),
            ("BadRequestException", 400),
        ] {
            let e = error(&reply(
                status,
                Some(name),
                r#"{"message":"Email address is not verified."}"#,
            ));
            assert!(!e.is_retriable() && !e.credentials_refused, "{name}");
            assert_eq!(e.message, "Email address is not verified.");
        }
        for (name, status) in [
            ("UnrecognizedClientException", 403),
            ("InvalidSignatureException", 403),
            ("AccessDeniedException", 403),
        ] {
            let e = error(&reply(
                status,
                Some(name),
                r#"{"message":"The security token included in the request is invalid."}"#,
            ));
            assert!(!e.is_retriable() && e.credentials_refused, "{name}");
        }
        let e = error(&reply(
            500,
            Some("InternalFailure"),
            r#"{"message":"internal error"}"#,
        ));
        assert!(e.is_retriable() && e.maybe_sent);
        let e = error(&reply(503, Some("ServiceUnavailable"), ""));
        assert!(e.is_retriable() && !e.maybe_sent);
    }
}
