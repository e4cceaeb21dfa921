//! `POST /v1/messages`, `GET /v1/messages/{id}` and
//! `GET /v1/agents/{agent_id}/messages`: enqueueing for services that do not
//! speak AMQP, and reading back what happened.
//!
//! A posted job is parsed by [`SendJob::parse`], the worker's own parser, so
//! what the API accepts the worker accepts. A batch is all or nothing: one
//! invalid job refuses the request and nothing is published. The job id is
//! the idempotency key: an id already recorded answers with that message
//! instead of publishing again (and a copy published twice by a race is
//! still sent once: the worker's claim is keyed by the same id).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::Principal;
use super::{
    ApiError, ApiJson, ApiQuery, ApiState, MAX_BATCH, agent_id, channel_in_input, next_cursor,
    page_size,
};
use crate::amqp::OutgoingJob;
use crate::domain::SendJob;
use crate::store::messages::{self, MessageFilter, MessageRow};

/// A message as the API shows it.
fn message_json(m: &MessageRow) -> Value {
    json!({
        "id": m.id,
        "agent_id": m.agent_id,
        "channel": m.channel,
        "recipient": m.recipient,
        "status": m.status,
        "route": m.route,
        "provider": m.provider,
        "integration_id": m.integration_id,
        "provider_message_id": m.provider_message_id,
        "attempts": m.attempts,
        "last_error": m.last_error,
        "campaign_id": m.campaign_id,
        "parent_id": m.parent_id,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}

/// `POST /v1/messages`: one job object or an array of up to [`MAX_BATCH`].
/// 202 with each job's id when any was published; 200 when every id was
/// already known (nothing published).
pub async fn create(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let items = match body {
        Value::Array(items) => items,
        other => vec![other],
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "no jobs: send one job object or an array of them",
        ));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{} jobs in one request; at most {MAX_BATCH}", items.len()),
        ));
    }

    // Parse every job exactly as the worker will; report every problem at
    // once so a caller fixes a batch in one round.
    let mut jobs = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    let mut seen = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let body = serde_json::to_vec(item).expect("a JSON value serialises");
        match SendJob::parse(&body) {
            Ok(job) => {
                if let Some(first) = seen.insert(job.id, index) {
                    problems.push(json!({
                        "index": index, "id": job.id,
                        "reason": format!("id repeats job #{first} of this request"),
                    }));
                }
                jobs.push((job, body));
            }
            Err(rejection) => problems.push(json!({
                "index": index, "id": rejection.id, "reason": rejection.reason,
            })),
        }
    }
    // An agent token sends only as its own agent; another agent is
    // answered as if it did not exist, like every route of another agent.
    let foreign: Vec<Value> = jobs
        .iter()
        .enumerate()
        .filter(|(_, (job, _))| !principal.reaches(&job.agent_id))
        .map(|(index, (job, _))| json!({"index": index, "id": job.id}))
        .collect();
    if !foreign.is_empty() {
        return Err(ApiError::not_found(format!(
            "{} of {} jobs name an agent this token does not reach; nothing was published",
            foreign.len(),
            items.len()
        ))
        .with_details(json!({ "jobs": foreign })));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(format!(
            "{} of {} jobs are invalid; nothing was published",
            problems.len(),
            items.len()
        ))
        .with_details(json!({ "jobs": problems })));
    }

    // Ids already recorded: the same job again is answered, not resent;
    // another job under a used id is refused, as the worker would refuse it.
    let ids: Vec<Uuid> = jobs.iter().map(|(j, _)| j.id).collect();
    let client = state.pool.get().await?;
    let known: HashMap<Uuid, messages::KnownJob> = messages::known(&client, &ids)
        .await?
        .into_iter()
        .map(|k| (k.id, k))
        .collect();
    drop(client);
    let mut conflicts = Vec::new();
    for (index, (job, _)) in jobs.iter().enumerate() {
        if let Some(k) = known.get(&job.id) {
            let same_agent = k.agent_id.as_deref() == Some(job.agent_id.as_str());
            let same_job = k.job.as_ref().is_none_or(|stored| *stored == job.to_wire());
            if !(same_agent && same_job) {
                conflicts.push(json!({
                    "index": index, "id": job.id,
                    "reason": "this id is already used by another job (another agent's, or \
                               different content): ids must be unique",
                }));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ApiError::conflict(format!(
            "{} of {} job ids are already used by other jobs; nothing was published",
            conflicts.len(),
            jobs.len()
        ))
        .with_details(json!({ "jobs": conflicts })));
    }

    let outgoing: Vec<OutgoingJob<'_>> = jobs
        .iter()
        .filter(|(job, _)| !known.contains_key(&job.id))
        .map(|(job, body)| OutgoingJob {
            id: job.id,
            agent_id: &job.agent_id,
            body: body.clone(),
        })
        .collect();
    if !outgoing.is_empty() {
        state.publisher.publish(&outgoing).await.map_err(|e| {
            tracing::warn!(error = %e, jobs = outgoing.len(), "API publish failed");
            ApiError::unavailable(
                "RabbitMQ did not confirm the jobs; send the same request again (the job ids \
                 make a repeat harmless)",
            )
        })?;
    }
    let answer: Vec<Value> = jobs
        .iter()
        .map(|(job, _)| match known.get(&job.id) {
            Some(k) => json!({"id": job.id, "status": k.status, "existing": true}),
            None => json!({"id": job.id, "status": "queued", "existing": false}),
        })
        .collect();
    let status = if outgoing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({
            "ids": ids,
            "messages": answer,
        })),
    ))
}

/// `GET /v1/messages/{id}`: the message and its events, oldest first.
pub async fn show(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::not_found(format!("no message `{id}`"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let client = state.pool.get().await?;
    let message = messages::get(&client, uuid)
        .await?
        .filter(|m| {
            // A message rejected before its agent was known belongs to
            // no agent: only the platform sees it.
            principal == Principal::Platform
                || m.agent_id.as_deref().is_some_and(|a| principal.reaches(a))
        })
        .ok_or_else(not_found)?;
    let events = messages::event_history(&client, uuid).await?;
    let mut out = message_json(&message);
    out["events"] = serde_json::to_value(events).expect("events serialise");
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    channel: Option<String>,
    campaign_id: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

/// The opaque cursor: the last row's `(created_at, id)`.
fn encode_cursor(m: &MessageRow) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", m.created_at.timestamp_micros(), m.id))
}

fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_request("`cursor` is not one this API gave out");
    let text = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

/// `GET /v1/agents/{agent_id}/messages`: newest first, keyset-paged.
pub async fn list(
    State(state): State<ApiState>,
    Path(agent): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let agent = agent_id(&agent)?;
    let channel = q.channel.as_deref().map(channel_in_input).transpose()?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = page_size(q.limit);
    let filter = MessageFilter {
        status: q.status.as_deref(),
        channel,
        campaign_id: q.campaign_id.as_deref(),
    };
    let client = state.pool.get().await?;
    let rows = messages::page_for_agent(&client, agent, &filter, after, limit).await?;
    let next_cursor = next_cursor(&rows, limit, encode_cursor);
    let shown: Vec<Value> = rows.iter().map(message_json).collect();
    Ok(Json(json!({
        "messages": shown,
        "next_cursor": next_cursor,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let row = MessageRow {
            id: Uuid::new_v4(),
            agent_id: None,
            channel: None,
            recipient: None,
            status: "sent".into(),
            route: None,
            provider: None,
            integration_id: None,
            provider_message_id: None,
            attempts: 0,
            last_error: None,
            campaign_id: None,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            updated_at: Utc::now(),
            parent_id: None,
        };
        let (at, id) = decode_cursor(&encode_cursor(&row)).unwrap();
        assert_eq!((at, id), (row.created_at, row.id));
        assert!(decode_cursor("not-a-cursor").is_err());
    }
}
