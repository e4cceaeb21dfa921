//! `/v1/agents/{agent_id}/integrations[/{channel}]`: an agent's own provider
//! accounts. Validation, encryption and masking are
//! [`crate::integrations`]'s, the same as `switchboard integrations`; this
//! file maps its answers to HTTP. Responses carry secrets masked only.
//!
//! `POST …/{channel}/test` runs the provider's connection test on the
//! stored integration and answers 200 with the verdict, whatever it is (the
//! test ran; `verdict` says what it found). `PUT …?verify=true` runs the
//! same test on the given settings first and stores nothing unless it
//! passes: 422 when the provider refused them, 502 when it could not be
//! asked.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiQuery, ApiState, agent_id, channel_in_path};
use crate::domain::Channel;
use crate::integrations::{self, ConnectRequest, IntegrationError, IntegrationView};
use crate::providers::VerdictKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    /// Omitted: the provider a credential's shape names (`SG.` SendGrid…).
    #[serde(default)]
    provider: Option<String>,
    #[serde(default = "empty_object")]
    settings: Value,
    #[serde(default = "enabled")]
    active: bool,
}

fn empty_object() -> Value {
    json!({})
}

fn enabled() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    /// Store only once the provider accepted the settings.
    #[serde(default)]
    verify: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct TestQuery {
    /// The slot to test: 0 (default) the primary, 1, 2, … the backups.
    #[serde(default)]
    priority: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    active: bool,
}

/// What a caller needs to fix a refused integration: the providers that
/// serve the channel and, for a known provider, its keys.
fn refused(state: &ApiState, e: IntegrationError, channel: Channel, provider: &str) -> ApiError {
    match e {
        IntegrationError::Invalid(message) => {
            let keys: Vec<Value> = state
                .registry
                .get(provider)
                .map(|p| {
                    p.settings(channel)
                        .iter()
                        .map(|s| json!({"key": s.key, "required": s.required, "secret": s.secret}))
                        .collect()
                })
                .unwrap_or_default();
            ApiError::invalid(message).with_details(json!({
                "channel": channel.as_str(),
                "provider": provider,
                "providers_for_channel": state.registry.names_for(channel),
                "settings": keys,
            }))
        }
        other => from_error(other),
    }
}

pub(super) fn from_error(e: IntegrationError) -> ApiError {
    match e {
        IntegrationError::Invalid(message) => ApiError::invalid(message),
        IntegrationError::NotFound { .. } => ApiError::not_found(e.to_string()),
        // A write without a key, or a stored key this process lacks.
        IntegrationError::Key(e) => ApiError::unavailable(e.to_string()),
        IntegrationError::Store(e) => e.into(),
        IntegrationError::NotVerified { verdict, .. } => {
            let (status, code) = match verdict {
                VerdictKind::Refused => (StatusCode::UNPROCESSABLE_ENTITY, "connection_refused"),
                _ => (StatusCode::BAD_GATEWAY, "connection_untested"),
            };
            ApiError::new(status, code, e.to_string())
                .with_details(json!({"verdict": verdict.as_str()}))
        }
        IntegrationError::ChangedDuringTest { .. } => ApiError::conflict(e.to_string()),
    }
}

/// The view with where the provider should send webhooks, when known.
fn shown(state: &ApiState, view: IntegrationView) -> Value {
    let webhook_url = state
        .public_url
        .as_ref()
        .map(|base| format!("{base}{}", view.webhook_path));
    let mut v = serde_json::to_value(view).expect("an integration view serialises");
    v["webhook_url"] = webhook_url.into();
    v
}

/// `PUT`: connects or replaces the channel's integration; with
/// `?verify=true`, only once the provider accepted the settings.
pub async fn connect(
    State(state): State<ApiState>,
    Path((agent, channel)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<ConnectQuery>,
    ApiJson(body): ApiJson<ConnectBody>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = channel_in_path(&channel)?;
    let keyring = state.keyring()?;
    let provider = integrations::resolve_provider(
        &state.registry,
        channel,
        body.provider.as_deref(),
        &body.settings,
    )
    .map_err(|e| refused(&state, e, channel, body.provider.as_deref().unwrap_or("")))?;
    integrations::check_provider_allowed(&provider, state.simulate)
        .map_err(|e| refused(&state, e, channel, &provider))?;
    let request = ConnectRequest {
        agent_id: agent,
        channel,
        provider: &provider,
        settings: &body.settings,
        active: body.active,
        priority: 0,
    };
    let report = if query.verify {
        let (_, report) =
            integrations::connect_verified(&state.pool, keyring, &state.registry, request)
                .await
                .map_err(|e| refused(&state, e, channel, &provider))?;
        Some(report)
    } else {
        integrations::connect_with(&state.pool, keyring, &state.registry, request)
            .await
            .map_err(|e| refused(&state, e, channel, &provider))?;
        None
    };
    let view = integrations::show(&state.pool, keyring, &state.registry, agent, channel)
        .await
        .map_err(from_error)?;
    let mut answer = shown(&state, view);
    if let Some(report) = report {
        answer["connection_test"] = serde_json::to_value(report).expect("a report serialises");
    }
    Ok(Json(answer))
}

/// `POST …/test`: the connection test of the stored integration, its
/// verdict stored and returned.
pub async fn test(
    State(state): State<ApiState>,
    Path((agent, channel)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<TestQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = channel_in_path(&channel)?;
    if query.priority < 0 {
        return Err(ApiError::bad_request(
            "priority must be 0 (primary) or more (backup)",
        ));
    }
    let report = integrations::test(
        &state.pool,
        state.keyring()?,
        &state.registry,
        agent,
        (channel, query.priority),
    )
    .await
    .map_err(from_error)?;
    Ok(Json(report))
}

/// `GET` one, masked.
pub async fn show(
    State(state): State<ApiState>,
    Path((agent, channel)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = channel_in_path(&channel)?;
    let view = integrations::show(
        &state.pool,
        state.keyring()?,
        &state.registry,
        agent,
        channel,
    )
    .await
    .map_err(from_error)?;
    Ok(Json(shown(&state, view)))
}

/// `GET` all of an agent's, masked.
pub async fn list(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let views = integrations::list(&state.pool, state.keyring()?, &state.registry, agent)
        .await
        .map_err(from_error)?;
    let shown: Vec<Value> = views.into_iter().map(|v| shown(&state, v)).collect();
    Ok(Json(json!({ "integrations": shown })))
}

/// `PATCH {active}`: enables or disables without touching the settings.
pub async fn patch(
    State(state): State<ApiState>,
    Path((agent, channel)): Path<(String, String)>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = channel_in_path(&channel)?;
    let keyring = state.keyring()?;
    integrations::set_active(&state.pool, agent, channel, body.active)
        .await
        .map_err(from_error)?;
    let view = integrations::show(&state.pool, keyring, &state.registry, agent, channel)
        .await
        .map_err(from_error)?;
    Ok(Json(shown(&state, view)))
}

/// `DELETE`: removes the integration and its secrets.
pub async fn disconnect(
    State(state): State<ApiState>,
    Path((agent, channel)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = channel_in_path(&channel)?;
    integrations::disconnect(&state.pool, agent, channel)
        .await
        .map_err(from_error)?;
    Ok(StatusCode::NO_CONTENT)
}
