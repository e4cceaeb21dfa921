//! `/v1/agents/{agent_id}/opt-outs`: who this agent must not message.
//! Addresses are normalised by [`Recipient::parse`], as the job parser
//! normalises `to`, so an opt-out given here matches the jobs it must stop.
//! A listing includes the platform-wide opt-outs (`agent_id` null), which
//! apply to the agent too; adding and removing touch only the agent's own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{
    ApiError, ApiJson, ApiQuery, ApiState, agent_id, channel_in_input, next_cursor, page_size,
};
use crate::domain::{Channel, Recipient};
use crate::store::opt_outs::{self, OptOutFilter};

fn normalise(channel: Channel, address: &str) -> Result<String, ApiError> {
    Recipient::parse(channel, address)
        .map(|r| r.as_str().to_string())
        .map_err(ApiError::invalid)
}

/// An address to filter by without a channel: a phone number when it reads
/// as one, else an email address, else as given (it then matches nothing).
fn normalise_any(address: &str) -> String {
    normalise(Channel::Sms, address)
        .or_else(|_| normalise(Channel::Email, address))
        .unwrap_or_else(|_| address.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    channel: Option<String>,
    address: Option<String>,
    cursor: Option<i64>,
    limit: Option<i64>,
}

/// `GET`: oldest first, paged by `cursor` (the `next_cursor` of the page
/// before).
pub async fn list(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = q.channel.as_deref().map(channel_in_input).transpose()?;
    let address = match (&q.address, channel) {
        (None, _) => None,
        (Some(a), Some(c)) => Some(normalise(c, a)?),
        (Some(a), None) => Some(normalise_any(a)),
    };
    let limit = page_size(q.limit);
    let filter = OptOutFilter {
        channel,
        address: address.as_deref(),
    };
    let client = state.pool.get().await?;
    let rows = opt_outs::page(&client, agent, &filter, q.cursor, limit).await?;
    let next_cursor = next_cursor(&rows, limit, |r| r.id);
    Ok(Json(json!({"opt_outs": rows, "next_cursor": next_cursor})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    channel: String,
    address: String,
    #[serde(default = "manual")]
    reason: String,
    source: Option<String>,
}

fn manual() -> String {
    "manual".into()
}

/// `POST`: records the opt-out (a stronger existing reason is kept) and
/// cancels the address's parked sequence steps. 201 with the stored row.
pub async fn add(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    ApiJson(body): ApiJson<AddBody>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = channel_in_input(&body.channel)?;
    let address = normalise(channel, &body.address)?;
    let reason = opt_outs::parse_reason(&body.reason).map_err(ApiError::invalid)?;
    let source = body.source.as_deref().unwrap_or("api");
    let mut client = state.pool.get().await?;
    let cancelled = opt_outs::add(
        &mut client,
        Some(agent),
        channel,
        &address,
        reason,
        Some(source),
    )
    .await?;
    let filter = OptOutFilter {
        channel: Some(channel),
        address: Some(&address),
    };
    let stored = opt_outs::page(&client, agent, &filter, None, 2)
        .await?
        .into_iter()
        .find(|o| o.agent_id.as_deref() == Some(agent));
    Ok((
        StatusCode::CREATED,
        Json(json!({"opt_out": stored, "cancelled_steps": cancelled})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    channel: String,
    address: String,
}

/// `DELETE ?channel=&address=`: lifts the agent's own opt-out, whatever its
/// reason (an operator's decision). 204, or 404 when there was none.
pub async fn remove(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = channel_in_input(&q.channel)?;
    let address = normalise(channel, &q.address)?;
    let client = state.pool.get().await?;
    if opt_outs::remove(&client, Some(agent), channel, &address).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "agent `{agent}` has no {channel} opt-out for that address"
        )))
    }
}
