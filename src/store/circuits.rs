//! Open circuits shared by every worker process (`circuit_states`), so that
//! an account that is down is opened once for all and every process stops
//! calling it, not each after its own count of failures. The breaker logic
//! stays in memory (`policy::circuit`); this is its shared memory.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::StoreError;

/// Marks `key` open until `until` unless another process already holds it
/// open (as of `now`). True when this call opened it: the caller records
/// `circuit_opened`. False: it was open already; [`open_until`] tells until
/// when.
pub async fn open(
    client: &impl GenericClient,
    key: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let row = client
        .query_opt(
            "INSERT INTO circuit_states (key, open_until) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE
                 SET open_until = EXCLUDED.open_until, opened_at = now()
                 WHERE circuit_states.open_until <= $3
             RETURNING key",
            &[&key, &until, &now],
        )
        .await?;
    Ok(row.is_some())
}

/// The probe closed `key`: true when this call removed the shared opening
/// (the caller records `circuit_closed`), false when another process's probe
/// already did.
pub async fn close(client: &impl GenericClient, key: &str) -> Result<bool, StoreError> {
    let n = client
        .execute("DELETE FROM circuit_states WHERE key = $1", &[&key])
        .await?;
    Ok(n > 0)
}

/// Circuits open as of `now`, with their ends.
pub async fn open_now(
    client: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let rows = client
        .query(
            "SELECT key, open_until FROM circuit_states WHERE open_until > $1",
            &[&now],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Until when `key` is open, if it is.
pub async fn open_until(
    client: &impl GenericClient,
    key: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row = client
        .query_opt(
            "SELECT open_until FROM circuit_states WHERE key = $1",
            &[&key],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Circuits open as of `now`, counted by provider: an agent's account
/// (`integration:ID`) is named by its integration's provider, the
/// platform's (`platform:NAME`) by its name; one whose integration was
/// since deleted counts as `unknown` (a label must never carry an id). For
/// the `switchboard_circuits_open` gauge.
pub async fn open_by_provider(
    client: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = client
        .query(
            "SELECT CASE WHEN c.key LIKE 'platform:%' THEN substr(c.key, length('platform:') + 1)
                         ELSE COALESCE(i.provider, 'unknown') END AS provider,
                    count(*)
               FROM circuit_states c
               LEFT JOIN integrations i ON c.key = 'integration:' || i.id::text
              WHERE c.open_until > $1
              GROUP BY 1",
            &[&now],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
