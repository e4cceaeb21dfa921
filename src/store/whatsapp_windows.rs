//! `whatsapp_windows`: when each person last wrote to an agent's (or the
//! platform's) WhatsApp number, for the 24-hour customer-service window
//! (`policy::whatsapp_window`).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::StoreError;

/// Records an inbound message from `address` at `at`. Only moves forward:
/// an older message applied late never shortens the window.
pub async fn touch(
    client: &impl GenericClient,
    agent_id: Option<&str>,
    address: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO whatsapp_windows (agent_id, address, last_inbound_at)
             VALUES ($1, $2, $3)
             ON CONFLICT (agent_id, address) DO UPDATE
                SET last_inbound_at = GREATEST(whatsapp_windows.last_inbound_at,
                                               EXCLUDED.last_inbound_at)",
            &[&agent_id, &address, &at],
        )
        .await?;
    Ok(())
}

/// When `address` last wrote to `agent_id`'s number or to the platform's
/// (a job may be routed through either), if ever.
pub async fn last_inbound(
    client: &impl GenericClient,
    agent_id: &str,
    address: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row = client
        .query_one(
            "SELECT max(last_inbound_at) FROM whatsapp_windows
              WHERE address = $2 AND (agent_id = $1 OR agent_id IS NULL)",
            &[&agent_id, &address],
        )
        .await?;
    Ok(row.get(0))
}
