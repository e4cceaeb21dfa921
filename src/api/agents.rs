//! `/v1/agents/{agent_id}`: branding, time zone, send window and limits.
//! Checked by [`crate::app::AgentChanges`], as `switchboard agents set` is.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;

use super::{ApiError, ApiJson, ApiState, agent_id};
use crate::app::AgentChanges;
use crate::store;

/// `PUT`: creates the agent if needed and applies the fields given (a field
/// left out keeps its value).
pub async fn put(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    ApiJson(changes): ApiJson<AgentChanges>,
) -> Result<impl IntoResponse, ApiError> {
    apply(&state, &agent, changes, false).await
}

/// `PATCH`: like `PUT`, for an agent that exists (404 otherwise), so a
/// mistyped id is not silently created.
pub async fn patch(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    ApiJson(changes): ApiJson<AgentChanges>,
) -> Result<impl IntoResponse, ApiError> {
    apply(&state, &agent, changes, true).await
}

async fn apply(
    state: &ApiState,
    agent: &str,
    changes: AgentChanges,
    must_exist: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = agent_id(agent)?;
    let update = changes.validate().map_err(ApiError::invalid)?;
    let client = state.pool.get().await?;
    if must_exist && store::agents::get(&client, agent).await?.is_none() {
        return Err(not_found(agent));
    }
    Ok(Json(store::agents::update(&client, agent, &update).await?))
}

pub async fn show(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let client = state.pool.get().await?;
    match store::agents::get(&client, agent).await? {
        Some(row) => Ok(Json(row)),
        None => Err(not_found(agent)),
    }
}

fn not_found(agent: &str) -> ApiError {
    ApiError::not_found(format!(
        "no agent `{agent}` (agents are created by their first job or by PUT)"
    ))
}
