//! One-time webhook tokens (`webhook_tokens`): a signed token is accepted
//! once; the same token again is a replay.

use deadpool_postgres::GenericClient;

use super::StoreError;

/// How long a token is remembered: well past any provider's timestamp
/// tolerance, after which a replay is refused as stale instead.
const KEEP: &str = "1 hour";

/// Records `token` as seen. `false`: it was seen before (a replay).
pub async fn claim(
    client: &impl GenericClient,
    provider: &str,
    token: &str,
) -> Result<bool, StoreError> {
    client
        .execute(
            &format!("DELETE FROM webhook_tokens WHERE seen_at < now() - interval '{KEEP}'"),
            &[],
        )
        .await?;
    let inserted = client
        .execute(
            "INSERT INTO webhook_tokens (provider, token) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&provider, &token],
        )
        .await?;
    Ok(inserted == 1)
}

/// Forgets a claimed token whose request could not be stored, so that the
/// provider's retry of the same request is not refused as a replay.
pub async fn release(
    client: &impl GenericClient,
    provider: &str,
    token: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "DELETE FROM webhook_tokens WHERE provider = $1 AND token = $2",
            &[&provider, &token],
        )
        .await?;
    Ok(())
}
