//! `api_tokens`: agent-scoped bearer tokens for the HTTP API. A token is
//! shown once, when created; this module stores and looks up only its
//! SHA-256 and must never store or return the token itself.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::StoreError;

/// Prefix of every agent token, so one found in a log or a repository is
/// recognisable (and secret scanners can match it).
pub const TOKEN_PREFIX: &str = "sbt_";

/// A token as listed: never the token, only what identifies it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub id: Uuid,
    pub agent_id: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The digest stored for `token`.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Creates a token for `agent`; returns its id and the token, which exists
/// nowhere else from then on.
pub async fn create(
    client: &impl GenericClient,
    agent: &str,
) -> Result<(Uuid, String), StoreError> {
    use base64::Engine;
    let random: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO api_tokens (id, agent_id, token_hash) VALUES ($1, $2, $3)",
            &[&id, &agent, &digest(&token).as_slice()],
        )
        .await?;
    Ok((id, token))
}

/// Tokens, newest first; one agent's when `agent` is given.
pub async fn list(
    client: &impl GenericClient,
    agent: Option<&str>,
) -> Result<Vec<TokenRow>, StoreError> {
    let rows = client
        .query(
            "SELECT id, agent_id, created_at, revoked_at FROM api_tokens
             WHERE $1::text IS NULL OR agent_id = $1
             ORDER BY created_at DESC, id",
            &[&agent],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TokenRow {
            id: r.get(0),
            agent_id: r.get(1),
            created_at: r.get(2),
            revoked_at: r.get(3),
        })
        .collect())
}

/// Revokes a token; `false` when no live token has that id.
pub async fn revoke(client: &impl GenericClient, id: Uuid) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

/// The agent a live token belongs to. Looked up by digest: an index lookup
/// on a hash of 256 random bits tells a timing observer nothing about any
/// stored token.
pub async fn agent_of(
    client: &impl GenericClient,
    token: &str,
) -> Result<Option<String>, StoreError> {
    let row = client
        .query_opt(
            "SELECT agent_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
            &[&digest(token).as_slice()],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
