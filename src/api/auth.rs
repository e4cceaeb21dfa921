//! Who is calling the API and what they may reach. The platform's token
//! (`SWITCHBOARD_API_TOKEN`) reaches everything; an agent token (`switchboard
//! tokens create --agent A`) reaches only agent A's resources, and anything
//! else answers 404 as if it did not exist, so a token cannot probe other
//! agents. Failed attempts are counted per client address and an address
//! that fails too often is refused with 429 for a while.
//!
//! This module must never log a presented token.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::{ApiError, ApiState};
use crate::store::api_tokens::{self, TOKEN_PREFIX};

/// Failed attempts an address may make per [`FAILURE_WINDOW`] before it is
/// refused: enough for a person mistyping, far too few to guess anything.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond this, expired windows are dropped.
const TRACKED_ADDRESSES: usize = 10_000;

/// The authenticated caller, put in each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Platform,
    Agent(String),
}

impl Principal {
    /// Whether this caller may see or change `agent`'s resources.
    pub fn reaches(&self, agent: &str) -> bool {
        match self {
            Principal::Platform => true,
            Principal::Agent(own) => own == agent,
        }
    }
}

/// Failed attempts per client address, in fixed windows.
#[derive(Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// How long `ip` must still wait, when it has failed too often.
    fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let windows = self.windows.lock().expect("limiter lock");
        let (start, failures) = *windows.get(&ip)?;
        let left = FAILURE_WINDOW
            .checked_sub(start.elapsed())
            .filter(|left| !left.is_zero())?;
        (failures >= MAX_FAILURES).then_some(left)
    }

    fn record_failure(&self, ip: IpAddr) {
        let mut windows = self.windows.lock().expect("limiter lock");
        if windows.len() >= TRACKED_ADDRESSES {
            windows.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
        }
        let now = Instant::now();
        let entry = windows.entry(ip).or_insert((now, 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// Lets a request through only with a valid `Authorization: Bearer
/// <token>`, and an agent token only to its own agent's routes. Runs before
/// any body is read.
pub async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.token_digest else {
        return ApiError::unavailable(
            "the API is disabled on this server: set SWITCHBOARD_API_TOKEN to enable it",
        )
        .into_response();
    };
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    if let Some(wait) = state.auth_failures.blocked(ip) {
        return too_many_failures(wait);
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let principal = match given {
        Some(token) if bool::from(api_tokens::digest(token).ct_eq(expected)) => {
            Some(Principal::Platform)
        }
        Some(token) if token.starts_with(TOKEN_PREFIX) => {
            let found = match state.pool.get().await {
                Ok(client) => api_tokens::agent_of(&client, token)
                    .await
                    .map_err(Into::into),
                Err(e) => Err(ApiError::from(e)),
            };
            match found {
                Ok(agent) => agent.map(Principal::Agent),
                Err(e) => return e.into_response(),
            }
        }
        _ => None,
    };
    let Some(principal) = principal else {
        state.auth_failures.record_failure(ip);
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    if let Principal::Agent(agent) = &principal
        && !agent_may_route(agent, request.uri().path())
    {
        return ApiError::not_found("no such resource").into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The routes an agent token may use at all: its own agent's, and messages
/// (whose handlers check the message's agent). Everything else, including
/// routes added later, is closed to agent tokens until allowed here.
fn agent_may_route(agent: &str, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["messages"] | ["messages", _] => true,
        // Their handlers narrow these to the token's agent.
        ["campaigns", _, "stats"] | ["sequences", _, "cancel"] => true,
        ["agents", id, ..] => percent_encoding::percent_decode_str(id)
            .decode_utf8()
            .is_ok_and(|id| id == agent),
        _ => false,
    }
}

fn too_many_failures(wait: Duration) -> Response {
    let seconds = wait.as_secs().max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many failed authentication attempts from this address; try again in {seconds} s"
        ),
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits are a header value"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_tokens_reach_only_their_agents_paths_and_messages() {
        assert!(agent_may_route("a1", "/agents/a1"));
        assert!(agent_may_route("a1", "/agents/a1/integrations/sms"));
        assert!(agent_may_route("a1", "/agents/a%31/opt-outs"));
        assert!(agent_may_route("a b", "/agents/a%20b"));
        assert!(!agent_may_route("a1", "/agents/a2/integrations"));
        assert!(!agent_may_route("a1", "/agents/a10"));
        assert!(!agent_may_route("a1", "/agents/%ff"));
        assert!(!agent_may_route("a1", "/integrations/import"));
        assert!(agent_may_route("a1", "/campaigns/c1/stats"));
        assert!(!agent_may_route("a1", "/campaigns/c1"));
        assert!(agent_may_route("a1", "/messages/x"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_is_refused_after_too_many_failures_until_its_window_ends() {
        let limiter = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            limiter.record_failure(ip);
        }
        assert_eq!(limiter.blocked(ip), None);
        limiter.record_failure(ip);
        assert_eq!(limiter.blocked(ip), Some(FAILURE_WINDOW));
        assert_eq!(limiter.blocked(other), None);
        tokio::time::advance(FAILURE_WINDOW).await;
        assert_eq!(limiter.blocked(ip), None);
        limiter.record_failure(ip);
        assert_eq!(limiter.blocked(ip), None, "a new window starts from zero");
    }
}
