//! Read-only figures for the platforms' dashboards: an agent's usage over a
//! period (messages by channel and status, cost, and where its quotas stand
//! now) and a campaign's funnel per channel. Nothing here writes.
//!
//! Cost is what providers reported, kept in event details: VAPI's
//! end-of-call `cost` (a number, in US dollars) and Africa's Talking's
//! `cost` in the sent event's provider response (a string like
//! `KES 0.8000`), read by the SQL function `switchboard_event_cost` (V21).
//! Costs are summed per currency and never converted.
//!
//! Campaign stats read the rollup `campaign_stages` (one row per campaign
//! message that reached a stage, kept by a trigger on `outbound_events`),
//! not the events themselves: a million-message campaign has millions of
//! events (README "Campaign stats" gives the timing).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{Value, json};

use super::StoreError;
use super::quotas::Window;

/// `{currency: amount}` from rows of (currency, amount as text).
fn costs(rows: impl Iterator<Item = (Option<String>, Option<String>)>) -> Value {
    let mut out = serde_json::Map::new();
    for (currency, amount) in rows {
        if let (Some(c), Some(a)) = (currency, amount) {
            out.insert(c, json!(a));
        }
    }
    Value::Object(out)
}

/// An agent's messages created in `[from, to)`, by channel and status, the
/// cost providers reported for them, and the agent's quota use now.
pub async fn usage(
    client: &impl GenericClient,
    agent: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Value, StoreError> {
    let counts = client
        .query(
            "SELECT channel, status, count(*) FROM outbound_messages
              WHERE agent_id = $1 AND created_at >= $2 AND created_at < $3
              GROUP BY 1, 2 ORDER BY 1, 2",
            &[&agent, &from, &to],
        )
        .await?;
    let mut by_channel = serde_json::Map::new();
    for r in &counts {
        let channel: String = r.get(0);
        let status: String = r.get(1);
        let n: i64 = r.get(2);
        let entry = by_channel
            .entry(channel)
            .or_insert_with(|| json!({"total": 0, "by_status": {}}));
        entry["by_status"][status] = json!(n);
        entry["total"] = json!(entry["total"].as_i64().unwrap_or(0) + n);
    }
    let cost_rows = client
        .query(
            "SELECT c.currency, sum(c.amount)::text
               FROM outbound_messages m
               JOIN outbound_events e ON e.message_id = m.id
              CROSS JOIN LATERAL switchboard_event_cost(e.detail) c
              WHERE m.agent_id = $1 AND m.created_at >= $2 AND m.created_at < $3
                AND (e.detail ? 'cost' OR e.detail->'provider_response' ? 'cost')
                AND c.currency IS NOT NULL
              GROUP BY 1 ORDER BY 1",
            &[&agent, &from, &to],
        )
        .await?;
    let cost = costs(cost_rows.iter().map(|r| (r.get(0), r.get(1))));
    let quotas = quota_use(client, agent, now).await?;
    Ok(json!({
        "agent_id": agent,
        "from": from,
        "to": to,
        "channels": by_channel,
        "cost": cost,
        "quotas": quotas,
    }))
}

/// Where each of the agent's hour / day quotas stands in the current window:
/// its own per channel (`agents.limits`) and its accounts'
/// (`integrations.config.rate_limit`), with the share used, so a platform
/// can warn before a quota runs out.
async fn quota_use(
    client: &impl GenericClient,
    agent: &str,
    now: DateTime<Utc>,
) -> Result<Value, StoreError> {
    let limits: Option<Value> = client
        .query_opt("SELECT limits FROM agents WHERE id = $1", &[&agent])
        .await?
        .and_then(|r| r.get(0));
    let mut keys: Vec<(String, Value, Value)> = Vec::new();
    if let Some(Value::Object(per_channel)) = &limits {
        for (channel, limit) in per_channel {
            if channel.parse::<crate::domain::Channel>().is_ok() {
                keys.push((
                    format!("agent:{agent}:{channel}"),
                    json!({"scope": "agent", "channel": channel}),
                    limit.clone(),
                ));
            }
        }
    }
    for r in client
        .query(
            "SELECT id, channel, provider, config->'rate_limit' FROM integrations
              WHERE agent_id = $1 AND config ? 'rate_limit' ORDER BY channel, priority",
            &[&agent],
        )
        .await?
    {
        let id: uuid::Uuid = r.get(0);
        let channel: String = r.get(1);
        let provider: String = r.get(2);
        let limit: Value = r.get(3);
        keys.push((
            format!("integration:{id}"),
            json!({"scope": "integration", "integration_id": id, "channel": channel,
                   "provider": provider}),
            limit,
        ));
    }
    let mut out = Vec::new();
    for (key, mut about, limit) in keys {
        for (window, field) in [(Window::Hour, "per_hour"), (Window::Day, "per_day")] {
            let Some(allowed) = limit.get(field).and_then(Value::as_i64) else {
                continue;
            };
            let (start, end) = window.bounds(now);
            let used: i64 = client
                .query_opt(
                    "SELECT count FROM rate_counters
                      WHERE key = $1 AND span = $2 AND window_start = $3",
                    &[&key, &window.as_str(), &start],
                )
                .await?
                .map_or(0, |r| r.get::<_, i32>(0).into());
            about["window"] = json!(window.as_str());
            about["limit"] = json!(allowed);
            about["used"] = json!(used);
            about["share_used"] =
                json!((used as f64 / allowed.max(1) as f64 * 1000.0).round() / 1000.0);
            about["resets_at"] = json!(end);
            out.push(about.clone());
        }
    }
    Ok(Value::Array(out))
}

/// A campaign's funnel per channel: messages, and how many of them reached
/// each stage (each message counted once per stage however many events it
/// had), the cost reported, and the rates between stages. `agent` narrows
/// it to one agent's messages.
pub async fn campaign(
    client: &impl GenericClient,
    campaign: &str,
    agent: Option<&str>,
) -> Result<Value, StoreError> {
    let rows = client
        .query(
            "SELECT m.channel,
                    count(*),
                    count(*) FILTER (WHERE m.status IN ('sent', 'delivered', 'bounced')
                                        OR s.sent),
                    count(*) FILTER (WHERE m.status = 'delivered' OR s.delivered),
                    count(*) FILTER (WHERE s.opened),
                    count(*) FILTER (WHERE s.clicked),
                    count(*) FILTER (WHERE s.replied),
                    count(*) FILTER (WHERE m.status = 'bounced' OR s.bounced),
                    count(*) FILTER (WHERE m.status = 'failed'),
                    count(*) FILTER (WHERE m.status IN ('suppressed', 'capped', 'cancelled'))
               FROM outbound_messages m
               LEFT JOIN campaign_stages s ON s.message_id = m.id
              WHERE m.campaign_id = $1 AND ($2::text IS NULL OR m.agent_id = $2)
              GROUP BY 1 ORDER BY 1",
            &[&campaign, &agent],
        )
        .await?;
    let cost_rows = client
        .query(
            "SELECT channel, cost_currency, sum(cost_amount)::text
               FROM campaign_stages
              WHERE campaign_id = $1 AND ($2::text IS NULL OR agent_id = $2)
                AND cost_currency IS NOT NULL
              GROUP BY 1, 2",
            &[&campaign, &agent],
        )
        .await?;
    let rate = |part: i64, whole: i64| {
        if whole == 0 {
            Value::Null
        } else {
            json!((part as f64 / whole as f64 * 10_000.0).round() / 10_000.0)
        }
    };
    let mut channels = serde_json::Map::new();
    for r in &rows {
        let channel: String = r.get(0);
        let n = |i: usize| r.get::<_, i64>(i);
        let (messages, sent, delivered) = (n(1), n(2), n(3));
        let (opened, clicked, replied, bounced, failed, held) =
            (n(4), n(5), n(6), n(7), n(8), n(9));
        let cost = costs(
            cost_rows
                .iter()
                .filter(|c| c.get::<_, String>(0) == channel)
                .map(|c| (c.get(1), c.get(2))),
        );
        channels.insert(
            channel,
            json!({
                "messages": messages, "sent": sent, "delivered": delivered,
                "opened": opened, "clicked": clicked, "replied": replied,
                "bounced": bounced, "failed": failed, "not_sent": held,
                "cost": cost,
                "rates": {
                    "delivery": rate(delivered, sent),
                    "open": rate(opened, delivered),
                    "click": rate(clicked, opened),
                    "reply": rate(replied, delivered),
                    "bounce": rate(bounced, sent),
                    "failure": rate(failed, messages),
                },
            }),
        );
    }
    Ok(json!({"campaign_id": campaign, "agent_id": agent, "channels": channels}))
}
