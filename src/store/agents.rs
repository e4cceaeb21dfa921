//! `agents`: branding, time zone, send window and limits per agent. Rows are
//! created on first use (by the claim) with the table's defaults; this
//! module changes and reads them.

use chrono::NaiveTime;
use deadpool_postgres::GenericClient;

use super::StoreError;

/// Fields to change; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct AgentUpdate {
    pub company_name: Option<String>,
    pub reply_email: Option<String>,
    pub from_name: Option<String>,
    pub timezone: Option<String>,
    pub send_window: Option<(NaiveTime, NaiveTime)>,
    pub calling_hours: Option<(NaiveTime, NaiveTime)>,
    pub quiet_hours_email: Option<bool>,
    pub limits: Option<serde_json::Value>,
    /// Whether a job may fail over to the platform's account when every
    /// account of the agent's own is refusing (see `worker::failover`).
    pub allow_platform_fallback: Option<bool>,
}

/// Creates the agent if needed and applies the update; returns the row.
pub async fn update(
    client: &impl GenericClient,
    id: &str,
    u: &AgentUpdate,
) -> Result<serde_json::Value, StoreError> {
    let (start, end) = u.send_window.unzip();
    let (call_start, call_end) = u.calling_hours.unzip();
    let row = client
        .query_one(
            "INSERT INTO agents AS a (id) VALUES ($1)
             ON CONFLICT (id) DO UPDATE SET updated_at = now()
             RETURNING id",
            &[&id],
        )
        .await?;
    let id: String = row.get(0);
    client
        .execute(
            "UPDATE agents SET
                company_name = COALESCE($2, company_name),
                reply_email = COALESCE($3, reply_email),
                from_name = COALESCE($4, from_name),
                timezone = COALESCE($5, timezone),
                send_window_start = COALESCE($6, send_window_start),
                send_window_end = COALESCE($7, send_window_end),
                quiet_hours_email = COALESCE($8, quiet_hours_email),
                limits = COALESCE($9, limits),
                calling_hours_start = COALESCE($10, calling_hours_start),
                calling_hours_end = COALESCE($11, calling_hours_end),
                allow_platform_fallback = COALESCE($12, allow_platform_fallback),
                updated_at = now()
              WHERE id = $1",
            &[
                &id,
                &u.company_name,
                &u.reply_email,
                &u.from_name,
                &u.timezone,
                &start,
                &end,
                &u.quiet_hours_email,
                &u.limits,
                &call_start,
                &call_end,
                &u.allow_platform_fallback,
            ],
        )
        .await?;
    Ok(get(client, &id).await?.expect("the row was just written"))
}

/// The agent's row as JSON.
pub async fn get(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let row = client
        .query_opt(
            "SELECT row_to_json(a)::jsonb FROM agents a WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
