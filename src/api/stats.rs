//! Figures for the platforms' dashboards and the sequence switch:
//! `GET /v1/agents/{agent_id}/usage`, `GET /v1/campaigns/{campaign_id}/stats`
//! and `POST /v1/sequences/{sequence_id}/cancel`. The numbers come from
//! `store::stats`; an agent token sees only its own agent's.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use super::auth::Principal;
use super::{ApiError, ApiJson, ApiQuery, ApiState, agent_id};
use crate::store;

/// Longest period one usage request may cover.
const MAX_USAGE_DAYS: i64 = 366;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// RFC 3339; default 30 days before `to`.
    from: Option<String>,
    /// RFC 3339; default now.
    to: Option<String>,
}

fn time(raw: &Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "`{name}` must be an RFC 3339 time, like 2026-12-01T00:00:00Z"
                    ))
                })
        })
        .transpose()
}

/// `GET /v1/agents/{agent_id}/usage?from=&to=`: messages by channel and
/// status created in the period, the cost providers reported, and each
/// hour / day quota's use in its current window.
pub async fn usage(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let now = Utc::now();
    let to = time(&q.to, "to")?.unwrap_or(now);
    let from = time(&q.from, "from")?.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    if to - from > Duration::days(MAX_USAGE_DAYS) {
        return Err(ApiError::bad_request(format!(
            "a usage period may cover at most {MAX_USAGE_DAYS} days"
        )));
    }
    let client = state.pool.get().await?;
    Ok(Json(
        store::stats::usage(&client, agent, from, to, now).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignQuery {
    agent_id: Option<String>,
}

/// `GET /v1/campaigns/{campaign_id}/stats?agent_id=`: the campaign's funnel
/// per channel. An agent token gets its own agent's share of it.
pub async fn campaign(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(campaign): Path<String>,
    ApiQuery(q): ApiQuery<CampaignQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = match (&principal, q.agent_id.as_deref()) {
        (Principal::Platform, a) => a.map(agent_id).transpose()?,
        (Principal::Agent(own), None) => Some(own.as_str()),
        (Principal::Agent(own), Some(a)) if a == own => Some(own.as_str()),
        (Principal::Agent(_), Some(_)) => return Err(ApiError::not_found("no such resource")),
    };
    let client = state.pool.get().await?;
    Ok(Json(
        store::stats::campaign(&client, &campaign, agent).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelSequence {
    agent_id: String,
    /// One recipient's steps only; all of the sequence's when absent.
    to: Option<String>,
}

/// `POST /v1/sequences/{sequence_id}/cancel` `{agent_id, to?}`: the parked
/// steps are cancelled now, and steps still in the queue when they arrive
/// (as `switchboard sequences cancel`).
pub async fn cancel_sequence(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(sequence): Path<String>,
    ApiJson(body): ApiJson<CancelSequence>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&body.agent_id).map_err(|e| ApiError::invalid(e.message))?;
    if !principal.reaches(agent) {
        return Err(ApiError::not_found("no such resource"));
    }
    if sequence.trim().is_empty() || sequence.chars().any(char::is_control) {
        return Err(ApiError::not_found("not a sequence id"));
    }
    let to = body
        .to
        .as_deref()
        .map(crate::domain::Recipient::normalise_any);
    let mut client = state.pool.get().await?;
    let cancelled =
        store::scheduled::cancel_sequence(&mut client, agent, &sequence, to.as_deref(), "api")
            .await?;
    Ok(Json(json!({
        "sequence_id": sequence,
        "agent_id": agent,
        "to": to,
        "cancelled_parked_steps": cancelled,
    })))
}
