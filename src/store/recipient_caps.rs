//! `recipient_sends`: the marketing messages each agent sent to each person,
//! for the per-recipient frequency cap (`policy::frequency_cap`).
//!
//! Counting and reserving happen in one transaction under advisory locks on
//! the person's address and contact id, so two workers admitting two jobs
//! for one person at once cannot both take the last place. A reservation is
//! keyed by the message id: a job that comes back (parked by a rate limit,
//! redelivered after a crash) takes its own place again instead of a second
//! one, moved to the time it is admitted again.

use chrono::{DateTime, Utc};

use super::StoreError;
use crate::policy::frequency_cap::{CapWindow, over_cap};

/// Who a message goes to, for counting.
pub struct Person<'a> {
    pub agent_id: &'a str,
    pub address: &'a str,
    pub contact_id: Option<&'a str>,
}

/// Reserves a place for `message_id` in every window, or none:
/// `Ok(None)` when it was admitted, `Ok(Some(window))` with the full window
/// that ends last.
pub async fn reserve(
    client: &mut deadpool_postgres::Client,
    person: &Person<'_>,
    message_id: uuid::Uuid,
    windows: &[CapWindow],
    now: DateTime<Utc>,
) -> Result<Option<CapWindow>, StoreError> {
    let Some(earliest) = windows.iter().map(|w| w.start).min() else {
        return Ok(None);
    };
    let tx = client.transaction().await?;
    // Locks in a fixed order (address, then contact) so two jobs for one
    // person never wait on each other the other way round.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('recipient:' || $1 || ':' || $2, 0))",
        &[&person.agent_id, &person.address],
    )
    .await?;
    if let Some(contact) = person.contact_id {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('contact:' || $1 || ':' || $2, 0))",
            &[&person.agent_id, &contact],
        )
        .await?;
    }
    let times: Vec<DateTime<Utc>> = tx
        .query(
            "SELECT sent_at FROM recipient_sends
              WHERE agent_id = $1 AND sent_at >= $2 AND message_id <> $3
                AND (address = $4 OR ($5::text IS NOT NULL AND contact_id = $5))",
            &[
                &person.agent_id,
                &earliest,
                &message_id,
                &person.address,
                &person.contact_id,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let counts: Vec<u32> = windows
        .iter()
        .map(|w| {
            times
                .iter()
                .filter(|t| **t >= w.start && **t < w.end)
                .count() as u32
        })
        .collect();
    if let Some(full) = over_cap(windows, &counts) {
        tx.commit().await?;
        return Ok(Some(full));
    }
    tx.execute(
        "INSERT INTO recipient_sends (message_id, agent_id, address, contact_id, sent_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (message_id) DO UPDATE SET sent_at = EXCLUDED.sent_at",
        &[
            &message_id,
            &person.agent_id,
            &person.address,
            &person.contact_id,
            &now,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(None)
}

/// Gives a message's place back: it ended without being sent.
pub async fn release(
    client: &impl deadpool_postgres::GenericClient,
    message_id: uuid::Uuid,
) -> Result<(), StoreError> {
    client
        .execute(
            "DELETE FROM recipient_sends WHERE message_id = $1",
            &[&message_id],
        )
        .await?;
    Ok(())
}
