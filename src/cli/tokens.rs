//! `switchboard tokens create|list|revoke`: agent-scoped API tokens. A new
//! token is printed once and never again: only its SHA-256 is stored.

use clap::Subcommand;
use serde_json::json;
use uuid::Uuid;

use crate::config::Settings;
use crate::store::{self, api_tokens};

#[derive(Debug, Subcommand)]
pub enum TokensCli {
    /// Creates a token that reaches only AGENT's resources through the HTTP
    /// API and prints it once (store it now: it cannot be shown again).
    /// Reads DATABASE_URL.
    Create {
        /// The agent the token is for.
        #[arg(long)]
        agent: String,
        /// Print {"id", "agent_id", "token"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists tokens (id, agent, created, revoked), never the tokens
    /// themselves. Reads DATABASE_URL.
    List {
        /// Only this agent's tokens.
        #[arg(long)]
        agent: Option<String>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a token by its id; requests with it are refused from then on.
    /// Reads DATABASE_URL.
    Revoke {
        /// The token's id, from `tokens create` or `tokens list`.
        id: Uuid,
        /// Print {"id", "revoked"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `tokens` subcommand; returns what to print.
pub async fn run(settings: &Settings, command: TokensCli) -> anyhow::Result<String> {
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    match command {
        TokensCli::Create { agent, json } => {
            let agent = agent.trim();
            if agent.is_empty() || agent.len() > 255 || agent.chars().any(char::is_control) {
                anyhow::bail!("--agent must be 1 to 255 bytes without control characters");
            }
            let (id, token) = api_tokens::create(&client, agent).await?;
            Ok(if json {
                json!({"id": id, "agent_id": agent, "token": token}).to_string() + "\n"
            } else {
                format!("{token}\n(token {id} for agent `{agent}`: shown once, store it now)\n")
            })
        }
        TokensCli::List { agent, json } => {
            let rows = api_tokens::list(&client, agent.as_deref()).await?;
            if json {
                return Ok(serde_json::to_string_pretty(&rows)? + "\n");
            }
            Ok(rows
                .iter()
                .map(|t| {
                    let state = match t.revoked_at {
                        Some(at) => format!("revoked {at}"),
                        None => "active".into(),
                    };
                    format!(
                        "{}  {}  created {}  {state}\n",
                        t.id, t.agent_id, t.created_at
                    )
                })
                .collect())
        }
        TokensCli::Revoke { id, json } => {
            if !api_tokens::revoke(&client, id).await? {
                anyhow::bail!("no live token {id} (already revoked, or never created)");
            }
            Ok(if json {
                json!({"id": id, "revoked": true}).to_string() + "\n"
            } else {
                format!("revoked {id}\n")
            })
        }
    }
}
