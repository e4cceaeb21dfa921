//! The one place adapters' HTTP requests are executed: turns transport
//! failures into transient errors and reads `Retry-After`.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::ProviderError;

/// The longest wait a provider's `Retry-After` can impose (a day).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

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

    /// `Retry-After` as delta-seconds or an HTTP date, capped at
    /// [`MAX_RETRY_AFTER`]: a provider's header must not be able to overflow
    /// a time computation or park a job for years.
    pub fn retry_after(&self) -> Option<Duration> {
        let raw = self.headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
        if let Ok(secs) = raw.parse::<f64>() {
            if secs.is_nan() || secs < 0.0 {
                return None;
            }
            return Some(
                Duration::try_from_secs_f64(secs)
                    .map_or(MAX_RETRY_AFTER, |d| d.min(MAX_RETRY_AFTER)),
            );
        }
        let when = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
        let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
        Some(
            delta
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(MAX_RETRY_AFTER),
        )
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
    let body = match response.bytes().await {
        Ok(body) => body,
        // The provider said yes and the body got lost on the way: it is
        // sent. The adapter reads an empty body as "accepted, id unknown";
        // retrying would send it again.
        Err(e) if (200..300).contains(&status) => {
            tracing::warn!(error = %e.without_url(), status, "could not read the body of a success answer");
            bytes::Bytes::new()
        }
        Err(e) => return Err(transport_error(e)),
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A request that could not connect never reached the provider: safe to
/// retry. Any other failure (a timeout, a reset after the request was
/// written) may have reached it and been acted on: `maybe_sent`, which the
/// worker retries only where the provider deduplicates on our key.
fn transport_error(e: reqwest::Error) -> ProviderError {
    // Strip the URL: it is ours, not news, and may carry an account id.
    let e = e.without_url();
    if e.is_connect() {
        return ProviderError::transient(format!("connection failed: {e}"));
    }
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    ProviderError::ambiguous(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_with_retry_after(v: &str) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, v.parse().unwrap());
        Reply {
            status: 429,
            headers,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_huge_or_odd_retry_after_is_capped_not_a_panic() {
        assert_eq!(
            reply_with_retry_after("1e20").retry_after(),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            reply_with_retry_after("inf").retry_after(),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(reply_with_retry_after("NaN").retry_after(), None);
        assert_eq!(reply_with_retry_after("-3").retry_after(), None);
        assert_eq!(
            reply_with_retry_after("2.5").retry_after(),
            Some(Duration::from_millis(2500))
        );
    }

    /// The classification does not depend on the timeout's length: any
    /// request that was written and got no answer is `maybe_sent`.
    #[tokio::test]
    async fn a_timeout_is_maybe_sent_and_a_refused_connection_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept and read, never answer: the provider got the request.
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                held.push(sock);
            }
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let err = execute(client.post(format!("http://{addr}/x")).body("hi"))
            .await
            .err()
            .unwrap();
        assert!(err.is_retriable() && err.maybe_sent, "{err:?}");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let err = execute(client.post(format!("http://{closed_addr}/x")))
            .await
            .err()
            .unwrap();
        assert!(err.is_retriable() && !err.maybe_sent, "{err:?}");
    }
}
