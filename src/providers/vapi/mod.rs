//! VAPI outbound calls: `POST /call` with `Authorization: Bearer <api_key>`
//! and JSON `{"assistantId", "phoneNumberId", "customer": {"number"}}`; the
//! call object's `id` is the provider message id (`../shared/providers.md`
//! §9, VapiAI/skills `create-call`).
//!
//! The job's `text` becomes the assistant's first message and its
//! `template.variables` the assistant's template variables
//! (`assistantOverrides.firstMessage` / `.variableValues`); the job's
//! `metadata` and ids go into `assistantOverrides.metadata`, which VAPI
//! returns on the call object in every webhook. VAPI's OpenAPI
//! (VapiAI/docs, `tests/specs/openapi.json`) declares no idempotency key or
//! header for `POST /call`, so [`Provider::deduplicates`] stays false: a
//! timeout after the request was written is `unknown`, never a second call.
//!
//! The connection test reads the integration's assistant and phone number
//! (`GET /assistant/{id}`, `GET /phone-number/{id}`): both must exist in the
//! key's organisation for a call to be placed.

pub mod webhook;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::connection::refusal;
use super::http::{Reply, execute};
use super::{Accepted, Provider, ProviderError, ProviderSettings, SendRequest, SettingSpec};
use crate::domain::Channel;

const SETTINGS: &[SettingSpec] = &[
    SettingSpec::secret("api_key"),
    SettingSpec::required("phone_number_id"),
    SettingSpec::required("assistant_id"),
    // Optional like Resend's: calls can be placed before the Server URL is
    // set up; without it `/webhooks/vapi/{id}` refuses everything.
    SettingSpec::optional_secret("webhook_secret"),
];

pub struct Vapi {
    http: reqwest::Client,
    base_url: String,
}

impl Vapi {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }
}

fn body(request: &SendRequest<'_>) -> Result<Value, ProviderError> {
    let job = request.job;
    let s = request.settings;
    let mut metadata: Map<String, Value> = job.metadata.clone();
    metadata.insert("switchboard_job_id".into(), job.id.to_string().into());
    metadata.insert("agent_id".into(), job.agent_id.clone().into());
    for (k, v) in [
        ("campaign_id", &job.campaign.campaign_id),
        ("sequence_id", &job.campaign.sequence_id),
    ] {
        if let Some(v) = v {
            metadata.insert(k.into(), v.clone().into());
        }
    }
    if let Some(step) = job.campaign.step {
        metadata.insert("step".into(), step.into());
    }
    let mut overrides = Map::new();
    if let Some(text) = &job.content.text {
        overrides.insert("firstMessage".into(), text.clone().into());
    }
    if let Some(vars) = job
        .content
        .template
        .as_ref()
        .and_then(|t| t.get("variables"))
    {
        if !vars.is_object() {
            return Err(ProviderError {
                code: Some("invalid_template".into()),
                ..ProviderError::misconfigured("`template.variables` must be an object")
            });
        }
        overrides.insert("variableValues".into(), vars.clone());
    }
    overrides.insert("metadata".into(), metadata.into());
    Ok(json!({
        "assistantId": s.require("assistant_id")?,
        "phoneNumberId": s.require("phone_number_id")?,
        "customer": {"number": job.recipient.as_str()},
        "assistantOverrides": overrides,
        // "For your own reference" (at most 40 characters): the job id.
        "name": job.id.to_string(),
    }))
}

#[async_trait]
impl Provider for Vapi {
    fn name(&self) -> &'static str {
        "vapi"
    }

    fn settings(&self, channel: Channel) -> &'static [SettingSpec] {
        match channel {
            Channel::Voice => SETTINGS,
            _ => &[],
        }
    }

    async fn send(&self, request: &SendRequest<'_>) -> Result<Accepted, ProviderError> {
        let api_key = request.settings.require("api_key")?;
        let reply = execute(
            self.http
                .post(format!("{}/call", self.base_url))
                .bearer_auth(api_key)
                .json(&body(request)?),
        )
        .await?;
        if reply.is_success() {
            let json = reply.json();
            let field = |k: &str| json.as_ref().and_then(|j| j.get(k)).cloned();
            Ok(Accepted {
                provider_message_id: field("id").and_then(|v| v.as_str().map(str::to_string)),
                detail: json!({"status": field("status")}),
            })
        } else {
            Err(error(&reply))
        }
    }

    async fn check_connection(
        &self,
        _channel: Channel,
        s: &ProviderSettings,
    ) -> Result<String, ProviderError> {
        let assistant = self
            .read(s, "assistant", s.require("assistant_id")?)
            .await?;
        let number = self
            .read(s, "phone-number", s.require("phone_number_id")?)
            .await?;
        let label = |v: &Value, keys: &[&str]| {
            keys.iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str))
                .unwrap_or("unnamed")
                .to_string()
        };
        Ok(format!(
            "VAPI assistant \"{}\" and phone number {}",
            label(&assistant, &["name"]),
            label(&number, &["number", "name"]),
        ))
    }
}

impl Vapi {
    /// One `GET /{resource}/{id}` of the connection test; a 404 names what
    /// is missing.
    async fn read(
        &self,
        s: &ProviderSettings,
        resource: &str,
        id: &str,
    ) -> Result<Value, ProviderError> {
        let reply = execute(
            self.http
                .get(format!("{}/{resource}/{id}", self.base_url))
                .bearer_auth(s.require("api_key")?),
        )
        .await?;
        if reply.is_success() {
            return Ok(reply.json().unwrap_or_default());
        }
        let mut err = refusal(error(&reply));
        if reply.status == 404 {
            err.message = format!(
                "no {resource} `{id}` in this VAPI organisation: {}",
                err.message
            );
        }
        Err(err)
    }
}

/// VAPI's errors are NestJS-shaped: `{"message": "…" | ["…"], "error":
/// "Bad Request", "statusCode": 400}`; classified by HTTP status.
fn error(reply: &Reply) -> ProviderError {
    let json = reply.json();
    let message = match json.as_ref().and_then(|j| j.get("message")) {
        Some(Value::String(m)) => m.clone(),
        Some(Value::Array(ms)) => ms
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; "),
        _ => reply.body_snippet(),
    };
    let code = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string);
    ProviderError::from_status(reply.status, code, message, reply.retry_after())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nest_errors_are_read() {
        let r = Reply {
            status: 400,
            headers: Default::default(),
            body: json!({"message": ["customer.number must be a valid phone number"],
                         "error": "Bad Request", "statusCode": 400})
            .to_string()
            .into(),
        };
        let e = error(&r);
        assert!(!e.is_retriable());
        assert_eq!(
            e.to_string(),
            "HTTP 400 [Bad Request] customer.number must be a valid phone number"
        );
    }
}
