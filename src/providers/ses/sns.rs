//! Amazon SNS messages, as SES event publishing delivers them to an HTTPS
//! subscription: parsing, the signature check, and confirming a
//! subscription. Written from AWS's "Verifying the signatures of Amazon SNS
//! messages" and the host rule of AWS's own validators (the SNS message
//! validator of the AWS SDK for PHP, `sns-validator` for JavaScript).
//!
//! SNS signs a canonical "string to sign" (each signed field's name and
//! value on lines of their own, in a fixed order that depends on the
//! message type) with the private key of a certificate it publishes at
//! `SigningCertURL`: `SignatureVersion` 1 is SHA1withRSA, 2 is
//! SHA256withRSA. What makes a certificate SNS's is where it comes from: an
//! `https://sns.<region>.amazonaws.com[.cn]/….pem` URL, fetched over TLS
//! that checks that host's certificate. So the URL is checked *before*
//! anything is fetched (another host — `sns.evil.com`,
//! `sns.us-east-1.amazonaws.com.evil.com`, an S3 bucket on amazonaws.com —
//! is refused unfetched), redirects are not followed, and the
//! `SubscribeURL` of a confirmation obeys the same rule.
//!
//! This module must never fetch a URL the message names without checking
//! it first, nor accept a message whose signature it could not check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

/// The three message types SNS posts to an HTTP(S) endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

/// One SNS message, with the fields that are signed kept as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// SNS's id of this message: the same on every retry of its delivery.
    pub message_id: String,
    pub topic_arn: String,
    /// For a notification, what was published (for SES, the event JSON).
    pub message: String,
    pub subject: Option<String>,
    pub timestamp: String,
    /// Confirmations only.
    pub token: Option<String>,
    /// Confirmations only: the URL that confirms the subscription.
    pub subscribe_url: Option<String>,
    signature_version: String,
    signature: String,
    pub signing_cert_url: String,
}

/// Why a message is refused. Every one of these is answered 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not an SNS message: {0}")]
    Malformed(String),
    #[error("SignatureVersion `{0}` is not 1 or 2")]
    SignatureVersion(String),
    #[error("the URL `{0}` is not an https://sns.<region>.amazonaws.com address")]
    NotSns(String),
    #[error("the signing certificate is unusable: {0}")]
    Certificate(String),
    #[error("the signature does not match the message")]
    Signature,
}

/// A failure to check a message at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The message is not SNS's: 401, nothing written.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// SNS could not be reached for its certificate (or the confirmation):
    /// answering 5xx makes SNS deliver the message again later.
    #[error("SNS unreachable: {0}")]
    Unavailable(String),
}

impl Message {
    /// Reads a POST body. Every field that the message type signs must be
    /// present: a message without them could not have been signed by SNS.
    pub fn parse(body: &[u8]) -> Result<Self, Invalid> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Invalid::Malformed(format!("body is not JSON: {e}")))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let required =
            |k: &'static str| field(k).ok_or_else(|| Invalid::Malformed(format!("no `{k}`")));
        let kind = match required("Type")?.as_str() {
            "Notification" => Kind::Notification,
            "SubscriptionConfirmation" => Kind::SubscriptionConfirmation,
            "UnsubscribeConfirmation" => Kind::UnsubscribeConfirmation,
            other => return Err(Invalid::Malformed(format!("unknown Type `{other}`"))),
        };
        let confirmation = kind != Kind::Notification;
        let message = Message {
            kind,
            message_id: required("MessageId")?,
            topic_arn: required("TopicArn")?,
            message: required("Message")?,
            subject: field("Subject"),
            timestamp: required("Timestamp")?,
            token: if confirmation {
                Some(required("Token")?)
            } else {
                None
            },
            subscribe_url: if confirmation {
                Some(required("SubscribeURL")?)
            } else {
                None
            },
            signature_version: required("SignatureVersion")?,
            signature: required("Signature")?,
            signing_cert_url: required("SigningCertURL")?,
        };
        Ok(message)
    }

    /// The string SNS signed, as AWS documents it: for a notification
    /// `Message`, `MessageId`, `Subject` (only when the message has one),
    /// `Timestamp`, `TopicArn`, `Type`; for the two confirmations `Message`,
    /// `MessageId`, `SubscribeURL`, `Timestamp`, `Token`, `TopicArn`,
    /// `Type`. Each as its name, a newline, its value, a newline.
    pub fn string_to_sign(&self) -> String {
        let kind = match self.kind {
            Kind::Notification => "Notification",
            Kind::SubscriptionConfirmation => "SubscriptionConfirmation",
            Kind::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        };
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        match self.kind {
            Kind::Notification => {
                if let Some(subject) = &self.subject {
                    fields.push(("Subject", subject));
                }
                fields.push(("Timestamp", &self.timestamp));
            }
            Kind::SubscriptionConfirmation | Kind::UnsubscribeConfirmation => {
                fields.push(("SubscribeURL", self.subscribe_url.as_deref().unwrap_or("")));
                fields.push(("Timestamp", &self.timestamp));
                fields.push(("Token", self.token.as_deref().unwrap_or("")));
            }
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", kind));
        fields.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect()
    }

    /// Checks the signature with the certificate's RSA public key
    /// (`RSAPublicKey` DER, as the certificate carries it).
    pub fn verify_with(&self, public_key: &[u8]) -> Result<(), Invalid> {
        let algorithm = match self.signature_version.as_str() {
            "1" => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &RSA_PKCS1_2048_8192_SHA256,
            other => return Err(Invalid::SignatureVersion(other.to_string())),
        };
        let signature = BASE64
            .decode(self.signature.trim())
            .map_err(|_| Invalid::Signature)?;
        UnparsedPublicKey::new(algorithm, public_key)
            .verify(self.string_to_sign().as_bytes(), &signature)
            .map_err(|_| Invalid::Signature)
    }
}

/// Whether `raw` is an `https://sns.<region>.amazonaws.com` (or, for the
/// China regions, `….amazonaws.com.cn`) URL: the only hosts from which a
/// signing certificate is fetched or a subscription confirmed. Userinfo and
/// ports other than 443 are refused too: SNS sends neither.
pub fn is_sns_url(raw: &str) -> bool {
    let Ok(url) = url::Url::parse(raw) else {
        return false;
    };
    if url.scheme() != "https"
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port().is_some_and(|p| p != 443)
    {
        return false;
    }
    let Some(url::Host::Domain(host)) = url.host() else {
        return false;
    };
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    let Some(region) = rest.and_then(|r| r.strip_prefix("sns.")) else {
        return false;
    };
    // A region is one label, like `us-east-1` or `us-gov-west-1`.
    region.len() >= 3
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `raw` may be fetched as a signing certificate: an SNS URL of a
/// `.pem` file.
pub fn is_cert_url(raw: &str) -> bool {
    is_sns_url(raw)
        && url::Url::parse(raw)
            .map(|u| u.path().ends_with(".pem"))
            .unwrap_or(false)
}

/// A signing certificate's RSA public key and the end of its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// `RSAPublicKey` DER.
    pub public_key: Vec<u8>,
    /// `notAfter`, in seconds since the epoch.
    pub not_after: i64,
}

impl SigningKey {
    fn is_current(&self) -> bool {
        chrono::Utc::now().timestamp() <= self.not_after
    }
}

/// The public key of a PEM certificate, if it is an RSA certificate valid now.
pub fn rsa_public_key(pem: &[u8]) -> Result<SigningKey, Invalid> {
    let bad = |why: String| Invalid::Certificate(why);
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    if !cert.validity().is_valid() {
        return Err(bad("expired or not yet valid".into()));
    }
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
        return Err(bad("not an RSA key".into()));
    }
    Ok(SigningKey {
        public_key: spki.subject_public_key.data.to_vec(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Certificates larger than this are not SNS's (theirs are about 2 KB).
const MAX_CERT_BYTES: usize = 64 * 1024;
/// Distinct certificate URLs kept. SNS uses one per region and rotates it
/// rarely; the bound only keeps a flood of (refused) URLs from growing it.
const MAX_CACHED: usize = 64;

/// Fetches and caches SNS signing certificates, and confirms
/// subscriptions. One per HTTP server.
pub struct Sns {
    http: reqwest::Client,
    /// Signing keys by certificate URL.
    keys: Mutex<HashMap<String, Arc<SigningKey>>>,
}

/// The HTTP client for SNS: the system's roots plus `extra_roots` (DER; the
/// operator's `SWITCHBOARD_EXTRA_ROOT_CERTS`), no redirects (a certificate
/// must come from the host that was checked), short timeouts (SNS waits 15
/// seconds for our answer).
pub fn client_builder(extra_roots: &[Vec<u8>]) -> reqwest::ClientBuilder {
    let roots = extra_roots
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok());
    reqwest::Client::builder()
        .tls_certs_merge(roots)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
}

impl Sns {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that `message` was signed by SNS.
    pub async fn verify(&self, message: &Message) -> Result<(), CheckError> {
        let key = self.signing_key(&message.signing_cert_url).await?;
        Ok(message.verify_with(&key.public_key)?)
    }

    async fn signing_key(&self, url: &str) -> Result<Arc<SigningKey>, CheckError> {
        if !is_cert_url(url) {
            return Err(Invalid::NotSns(url.to_string()).into());
        }
        {
            let mut keys = self.keys.lock().expect("never poisoned");
            match keys.get(url) {
                Some(key) if key.is_current() => return Ok(key.clone()),
                // Expired since it was fetched: fetch again (SNS serves a
                // renewed certificate at a new URL; this one will refuse).
                Some(_) => {
                    keys.remove(url);
                }
                None => {}
            }
        }
        let pem = self.get(url).await?;
        if pem.len() > MAX_CERT_BYTES {
            return Err(Invalid::Certificate("too large".into()).into());
        }
        let key = Arc::new(rsa_public_key(&pem)?);
        let mut keys = self.keys.lock().expect("never poisoned");
        if keys.len() >= MAX_CACHED {
            keys.clear();
        }
        keys.insert(url.to_string(), key.clone());
        Ok(key)
    }

    /// Confirms a verified `SubscriptionConfirmation` by visiting its
    /// `SubscribeURL` (which must be SNS's too).
    pub async fn confirm(&self, message: &Message) -> Result<(), CheckError> {
        let url = message.subscribe_url.as_deref().unwrap_or_default();
        if !is_sns_url(url) {
            return Err(Invalid::NotSns(url.to_string()).into());
        }
        self.get(url).await.map(|_| ())
    }

    /// GETs an SNS URL. A 4xx means SNS has nothing there (the message
    /// named a certificate or subscription that does not exist): refused.
    /// Anything else that is not a success can pass: try again later.
    async fn get(&self, url: &str) -> Result<bytes::Bytes, CheckError> {
        let unavailable = |e: reqwest::Error| CheckError::Unavailable(e.without_url().to_string());
        let response = self.http.get(url).send().await.map_err(unavailable)?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_CERT_BYTES as u64)
        {
            return Err(Invalid::Certificate(format!("{url} is too large")).into());
        }
        let status = response.status();
        if status.is_client_error() {
            return Err(Invalid::Certificate(format!("SNS answered {status} for {url}")).into());
        }
        if !status.is_success() {
            return Err(CheckError::Unavailable(format!(
                "SNS answered {status} for {url}"
            )));
        }
        response.bytes().await.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_are_fetched() {
        for good in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.us-gov-west-1.amazonaws.com/x.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
            "https://SNS.EU-WEST-1.amazonaws.com:443/x.pem",
        ] {
            assert!(is_cert_url(good), "{good}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://s3.amazonaws.com/sns.us-east-1/x.pem",
            "https://bucket.s3.us-east-1.amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://sns.us_east.amazonaws.com/x.pem",
            "https://x.sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.pem.txt",
            "https://sns.us-east-1.amazonaws.com/",
            "https://54.239.28.85/x.pem",
            "not a url",
        ] {
            assert!(!is_cert_url(bad), "{bad}");
        }
        assert!(is_sns_url(
            "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37"
        ));
    }

    /// The example notification of AWS's "HTTP/HTTPS notification JSON
    /// format" page, and the string to sign the documentation describes.
    #[test]
    fn the_string_to_sign_follows_the_documented_order() {
        let body = br#"{
          "Type" : "Notification",
          "MessageId" : "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
          "TopicArn" : "arn:aws:sns:us-west-2:123456789012:MyTopic",
          "Subject" : "My First Message",
          "Message" : "Hello world!\nline two",
          "Timestamp" : "2012-05-02T00:54:06.655Z",
          "SignatureVersion" : "1",
          "Signature" : "EXAMPLEw6JRN",
          "SigningCertURL" : "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
          "UnsubscribeURL" : "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-west-2:123456789012:MyTopic:c9135db0"
        }"#;
        let m = Message::parse(body).unwrap();
        assert_eq!(
            m.string_to_sign(),
            "Message\nHello world!\nline two\nMessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n\
             Subject\nMy First Message\nTimestamp\n2012-05-02T00:54:06.655Z\n\
             TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nNotification\n"
        );
        let confirmation = br#"{
          "Type" : "SubscriptionConfirmation",
          "MessageId" : "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
          "Token" : "2336412f37",
          "TopicArn" : "arn:aws:sns:us-west-2:123456789012:MyTopic",
          "Message" : "You have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic.",
          "SubscribeURL" : "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37",
          "Timestamp" : "2012-04-26T20:45:04.751Z",
          "SignatureVersion" : "1",
          "Signature" : "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
          "SigningCertURL" : "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
        }"#;
        let m = Message::parse(confirmation).unwrap();
        assert_eq!(m.kind, Kind::SubscriptionConfirmation);
        assert_eq!(
            m.string_to_sign(),
            "Message\nYou have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic.\n\
             MessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n\
             SubscribeURL\nhttps://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37\n\
             Timestamp\n2012-04-26T20:45:04.751Z\nToken\n2336412f37\n\
             TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nSubscriptionConfirmation\n"
        );
    }

    #[test]
    fn messages_missing_a_signed_field_or_version_are_refused() {
        let base = serde_json::json!({
            "Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "x",
            "Timestamp": "2026-01-01T00:00:00Z", "SignatureVersion": "3", "Signature": "AAAA",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem"
        });
        let m = Message::parse(base.to_string().as_bytes()).unwrap();
        assert_eq!(
            m.verify_with(b"unused"),
            Err(Invalid::SignatureVersion("3".into()))
        );
        for field in [
            "Type",
            "MessageId",
            "TopicArn",
            "Message",
            "Timestamp",
            "Signature",
        ] {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(field);
            assert!(Message::parse(v.to_string().as_bytes()).is_err(), "{field}");
        }
        // A confirmation signs its Token and SubscribeURL: without them it
        // cannot be SNS's.
        let mut v = base.clone();
        v["Type"] = "SubscriptionConfirmation".into();
        assert!(Message::parse(v.to_string().as_bytes()).is_err());
    }
}
