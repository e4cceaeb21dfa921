//! SigV4 for SES requests, by the maintained `aws-sigv4` crate: this module
//! only adapts our request parts to it and returns the headers to add.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign as sigv4};
use aws_sigv4::sign::v4;

use crate::providers::ProviderError;

/// The signing name of the SES v2 API.
const SERVICE: &str = "ses";

pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
}

/// The headers (`authorization`, `x-amz-date`, …) that sign a request with
/// `headers` and `body` to `url`. `host` is signed too: it is taken from the
/// URL exactly as the HTTP client will send it.
pub fn sign(
    credentials: Credentials<'_>,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, ProviderError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| ProviderError::misconfigured(format!("SES endpoint: {e}")))?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(ProviderError::misconfigured("SES endpoint has no host")),
    };
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id,
        credentials.secret_access_key,
        None,
        None,
        "switchboard",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(credentials.region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ProviderError::misconfigured(format!("SigV4 parameters: {e}")))?
        .into();
    let all_headers: Vec<(&str, &str)> = std::iter::once(("host", host.as_str()))
        .chain(headers.iter().map(|(n, v)| (*n, v.as_str())))
        .collect();
    let signable = SignableRequest::new(
        method,
        url,
        all_headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| ProviderError::misconfigured(format!("SigV4 request: {e}")))?;
    let (instructions, _) = sigv4(signable, &params)
        .map_err(|e| ProviderError::misconfigured(format!("SigV4 signing: {e}")))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect())
}
