//! The one place adapters' HTTP requests are executed: turns transport
//! failures into transient errors and reads `Retry-After`.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::ProviderError;

/// A provider's answer, whatever its status.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `Retry-After` as delta-seconds or an HTTP date.
    pub fn retry_after(&self) -> Option<Duration> {
        let raw = self.headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
        if let Ok(secs) = raw.parse::<f64>() {
            return (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs));
        }
        let when = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
        let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
        Some(delta.to_std().unwrap_or(Duration::ZERO))
    }

    /// The body as text for an error message, shortened: providers sometimes
    /// answer errors with whole HTML pages.
    pub fn body_snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.chars().count() > 300 {
            format!("{}…", text.chars().take(300).collect::<String>())
        } else if text.is_empty() {
            "(empty body)".to_string()
        } else {
            text.to_string()
        }
    }
}

/// Sends the request and reads the whole answer. Only a failure to get an
/// answer is an error here; HTTP error statuses are for the adapter to read.
pub async fn execute(request: reqwest::RequestBuilder) -> Result<Reply, ProviderError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport_error)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A request that got no answer may or may not have reached the provider;
/// retrying is right because a timeout is far likelier before the provider
/// acted than after. Where the provider takes an idempotency key, a retry
/// after a late success is harmless.
fn transport_error(e: reqwest::Error) -> ProviderError {
    // Strip the URL: it is ours, not news, and may carry an account id.
    let e = e.without_url();
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ProviderError::transient(format!("{what}: {e}"))
}
