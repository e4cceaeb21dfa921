//! `switchboard usage` and `switchboard campaigns stats`: the figures of
//! `GET /v1/agents/{id}/usage` and `GET /v1/campaigns/{id}/stats`, as JSON,
//! from the same queries (`store::stats`).

use chrono::{DateTime, Duration, Utc};
use clap::{Args, Subcommand};

use crate::config::Settings;
use crate::store;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The agent whose usage to show.
    #[arg(long)]
    agent: String,
    /// Start of the period (RFC 3339); default 30 days before --to.
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// End of the period (RFC 3339); default now.
    #[arg(long)]
    to: Option<DateTime<Utc>>,
}

#[derive(Debug, Subcommand)]
pub enum CampaignsCli {
    /// A campaign's funnel per channel: messages, sent, delivered, opened,
    /// clicked, replied, bounced, failed, cost and the rates between them.
    /// Reads DATABASE_URL.
    Stats {
        /// The jobs' `campaign_id`.
        #[arg(long)]
        campaign: String,
        /// Only this agent's messages of the campaign.
        #[arg(long)]
        agent: Option<String>,
    },
}

/// Messages by channel and status in the period, their cost, and the
/// agent's quota use now, as pretty JSON. Reads DATABASE_URL.
pub async fn usage(settings: &Settings, args: UsageArgs) -> anyhow::Result<String> {
    let now = Utc::now();
    let to = args.to.unwrap_or(now);
    let from = args.from.unwrap_or(to - Duration::days(30));
    anyhow::ensure!(from < to, "--from must be before --to");
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    let usage = store::stats::usage(&client, args.agent.trim(), from, to, now).await?;
    Ok(serde_json::to_string_pretty(&usage)? + "\n")
}

pub async fn campaigns(settings: &Settings, command: CampaignsCli) -> anyhow::Result<String> {
    let CampaignsCli::Stats { campaign, agent } = command;
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    let stats = store::stats::campaign(&client, &campaign, agent.as_deref()).await?;
    Ok(serde_json::to_string_pretty(&stats)? + "\n")
}
