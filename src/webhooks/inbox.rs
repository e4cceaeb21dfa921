//! Accepting provider notifications durably, then applying them.
//!
//! A provider that gets an error from us may never call again (Twilio does
//! not retry a 5xx by default), and a status report can arrive before our
//! batched write of the send's outcome has committed. So once a request's
//! signature is verified, the notification, already reduced to what it means
//! for switchboard ([`ProviderEvent`]), is written to `webhook_inbox` in one
//! INSERT and the provider is answered; applying it comes after. A report
//! whose message is not found yet stays pending and the sweeper ([`sweep`])
//! retries it with backoff for [`ORPHAN_WINDOW`], then keeps it as an event
//! without a message, as a report for an unknown message always was.
//!
//! The inbox is keyed by the provider's own id for each notification, per
//! account: a retry whose answer was lost, or a captured request sent again,
//! is acknowledged and applied once. Every effect is scoped to the account
//! whose URL and secret the notification came in on. This module must never
//! apply a notification that was not verified, nor look a message up by
//! provider id alone.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::domain::{Channel, EmailAddress, PhoneNumber, mask};
use crate::store::messages::{StatusMove, record_account_event};
use crate::store::provider_events::{self as store, Account, NewDelivery, Report};
use crate::store::{StoreError, opt_outs, whatsapp_windows};

/// How long a report for a message we cannot find is retried. Long enough
/// for an outcome write held up by a database outage (the worker keeps
/// retrying it), short enough that reports for messages that will never be
/// found (sent by some other system through the same account) do not pile
/// up.
pub const ORPHAN_WINDOW: Duration = Duration::from_secs(60 * 60);

/// How often the sweeper looks for due rows. Finding none is one index probe
/// of an empty partial index.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Retries of an unmatched report back off from 1 s to this.
const MAX_RETRY_SECS: f64 = 60.0;

/// Applied status reports are kept this long to recognise replays.
const KEEP_STATUS_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// A person's keyword reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keyword {
    /// Stop all messages to this number (the providers' opt-out words).
    Stop,
    /// Resume after a stop.
    Start,
}

impl Keyword {
    /// The keyword a reply is, if it is one: the carriers' and Twilio's
    /// default opt-out and opt-in words, case and spacing ignored.
    pub fn from_reply(text: &str) -> Option<Keyword> {
        const STOP: [&str; 6] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
        const START: [&str; 3] = ["START", "YES", "UNSTOP"];
        let word = text.trim().to_ascii_uppercase();
        if STOP.contains(&word.as_str()) {
            Some(Keyword::Stop)
        } else if START.contains(&word.as_str()) {
            Some(Keyword::Start)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::Stop => "stop",
            Keyword::Start => "start",
        }
    }
}

/// What a verified notification means for switchboard, provider-neutral:
/// this is what the inbox stores and the sweeper applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderEvent {
    /// A report about a message we sent.
    Status {
        provider_message_id: String,
        /// Our event name: `delivered`, `failed`, `bounced`, `opened`…
        event: String,
        /// Recorded as the message's `last_error` when it moves.
        error: Option<String>,
        detail: Value,
        /// Addresses the report says must not be written to again (a hard
        /// bounce, a complaint), and why. Applied on the first attempt
        /// whether or not the message is found yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opt_out: Option<EmailOptOut>,
    },
    /// A person wrote to one of the account's numbers.
    Inbound {
        channel: Channel,
        from: PhoneNumber,
        keyword: Option<Keyword>,
    },
    /// The provider reported, after the send, that a number must not be
    /// written to again (Meta 131026 undeliverable, Africa's Talking
    /// `UserInBlacklist`): an opt-out of the account's agent. Filed like a
    /// reply from that person (`from`): kept for good, and applied in order
    /// with their replies.
    PhoneOptOut {
        channel: Channel,
        from: PhoneNumber,
        /// One of `opt_outs::REASONS`, e.g. `provider_rejected`.
        reason: String,
        /// `opt_outs.source`, e.g. `meta:131026`.
        source: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailOptOut {
    /// One of `opt_outs::REASONS`.
    pub reason: String,
    pub addresses: Vec<EmailAddress>,
    /// `opt_outs.source`, e.g. `resend:webhook`.
    pub source: String,
}

impl ProviderEvent {
    fn kind(&self) -> &'static str {
        match self {
            ProviderEvent::Status { .. } => "status",
            // Inbound rows are kept for good and ordered per person.
            ProviderEvent::Inbound { .. } | ProviderEvent::PhoneOptOut { .. } => "inbound",
        }
    }
}

/// The status change a report causes: forward only, so a late or repeated
/// report never undoes a later state. A bounce can follow a delivery report
/// (the receiving server took the message, then returned it).
fn status_move(event: &str) -> Option<StatusMove<'_>> {
    match event {
        "delivered" | "failed" => Some(StatusMove {
            to: event,
            from: &["sent"],
        }),
        "bounced" => Some(StatusMove {
            to: "bounced",
            from: &["sent", "delivered"],
        }),
        _ => None,
    }
}

/// A verified notification, ready to be accepted.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub provider: &'static str,
    pub account: Account,
    /// The agent that owns `account` (`None` for the platform's account).
    pub agent_id: Option<&'a str>,
    /// The provider's id for this notification, unique per account.
    pub delivery_id: &'a str,
    pub event: ProviderEvent,
}

/// What became of an accepted notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored (and applied, or left for the sweeper).
    Stored,
    /// The account sent this delivery id before: nothing done.
    Duplicate,
}

/// Stores the notification, then applies it. `Err` only when it could not
/// be stored: then nothing was done and the provider must be told to retry.
/// A failure to apply after storing is logged and left to the sweeper.
pub async fn accept(pool: &Pool, delivery: Delivery<'_>) -> Result<Accepted, StoreError> {
    let event = serde_json::to_value(&delivery.event).expect("events serialise");
    let provider_message_id = match &delivery.event {
        ProviderEvent::Status {
            provider_message_id,
            ..
        } => Some(provider_message_id.as_str()),
        ProviderEvent::Inbound { .. } | ProviderEvent::PhoneOptOut { .. } => None,
    };
    let mut client = pool.get().await?;
    let new = NewDelivery {
        provider: delivery.provider,
        account: delivery.account,
        agent_id: delivery.agent_id,
        delivery_id: delivery.delivery_id,
        kind: delivery.event.kind(),
        provider_message_id,
        event: &event,
    };
    let Some(id) = store::insert(&client, &new).await? else {
        return Ok(Accepted::Duplicate);
    };
    if let Err(e) = apply(&mut client, id).await {
        tracing::warn!(error = %e, provider = delivery.provider, inbox_id = id,
            "webhook stored but not applied yet; the sweeper will retry");
    }
    Ok(Accepted::Stored)
}

/// What one attempt at applying an inbox row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Done with (applied, or kept as an unmatched event after the window).
    Done,
    /// Its message is not found yet: retried later.
    Waiting,
    /// Already done, or being applied by someone else right now.
    Skipped,
}

/// Applies one inbox row in one transaction: its effects and its `finish`
/// commit together, so a crash in between leaves it pending, never half
/// applied, and it is never applied twice.
pub async fn apply(client: &mut deadpool_postgres::Client, id: i64) -> Result<Applied, StoreError> {
    let tx = client.transaction().await?;
    let Some(row) = store::lock_pending(&tx, id).await? else {
        return Ok(Applied::Skipped);
    };
    let event: ProviderEvent = match serde_json::from_value(row.event.clone()) {
        Ok(event) => event,
        Err(e) => {
            // Written by another version of switchboard and unreadable by
            // this one: keep it visible rather than retry it forever.
            tracing::error!(error = %e, inbox_id = id, "unreadable webhook_inbox row; dropped");
            store::finish(&tx, id).await?;
            tx.commit().await?;
            return Ok(Applied::Done);
        }
    };
    let agent_id = row.agent_id.as_deref();
    let outcome = match event {
        ProviderEvent::Inbound {
            channel,
            from,
            keyword,
        } => {
            let address = from.as_str();
            if store::earlier_reply_pending(&tx, &row, address).await? {
                // The sweeper applies the earlier one first (it goes by
                // id), then this one.
                return Ok(Applied::Waiting);
            }
            match keyword {
                Some(Keyword::Stop) => {
                    let source = format!("{}:reply", row.provider);
                    opt_outs::add_in(
                        &tx,
                        agent_id,
                        channel,
                        address,
                        "stop_keyword",
                        Some(&source),
                    )
                    .await?;
                }
                Some(Keyword::Start) => {
                    opt_outs::lift_stop_keyword(&tx, agent_id, channel, address).await?;
                }
                None => {}
            }
            // Any message opens WhatsApp's 24-hour window (policy::whatsapp_window).
            if channel == Channel::Whatsapp {
                whatsapp_windows::touch(&tx, agent_id, address, row.received_at).await?;
            }
            // Any reply ends the agent's sequences to this person, on every
            // channel: they answered, so the next automated step would talk
            // past them. Only for a known agent: a reply to a platform
            // number says nothing about which agent's sequence it answers.
            if let Some(agent) = agent_id {
                let filter = crate::store::scheduled::StepFilter {
                    agent_id: Some(agent),
                    recipient: Some(address),
                    ..Default::default()
                };
                let why = json!({"reason": "replied", "channel": channel.as_str()});
                crate::store::scheduled::cancel_steps(&tx, &filter, &why).await?;
            }
            let detail = json!({"from": mask(address), "keyword": keyword.map(Keyword::as_str)});
            record_account_event(&tx, agent_id, channel, "received", &row.provider, &detail)
                .await?;
            if let Some(agent) = agent_id {
                store::credit_reply(&tx, agent, channel, address, &row.provider, &detail).await?;
            }
            store::finish(&tx, id).await?;
            Applied::Done
        }
        ProviderEvent::PhoneOptOut {
            channel,
            from,
            reason,
            source,
        } => {
            let address = from.as_str();
            if store::earlier_reply_pending(&tx, &row, address).await? {
                return Ok(Applied::Waiting);
            }
            opt_outs::add_in(&tx, agent_id, channel, address, &reason, Some(&source)).await?;
            store::finish(&tx, id).await?;
            Applied::Done
        }
        ProviderEvent::Status {
            provider_message_id,
            event,
            error,
            detail,
            opt_out,
        } => {
            if let Some(o) = &opt_out {
                for address in &o.addresses {
                    opt_outs::add_in(
                        &tx,
                        agent_id,
                        Channel::Email,
                        address.as_str(),
                        &o.reason,
                        Some(&o.source),
                    )
                    .await?;
                }
            }
            let report = Report {
                provider: &row.provider,
                provider_message_id: &provider_message_id,
                event: &event,
                status_move: status_move(&event),
                error: error.as_deref(),
                detail: &detail,
            };
            let applied = store::apply_provider_event(&tx, row.account, &report).await?;
            if let Some(job) = &applied.moved_job
                && matches!(report.status_move, Some(m) if m.to == "failed" || m.to == "bounced")
            {
                fall_back(&tx, job, &event).await?;
            }
            let waited = chrono::Utc::now() - row.received_at;
            if applied.found {
                store::finish(&tx, id).await?;
                Applied::Done
            } else if waited.to_std().unwrap_or_default() >= ORPHAN_WINDOW {
                store::record_unmatched_event(&tx, &report).await?;
                store::finish(&tx, id).await?;
                Applied::Done
            } else {
                // The opt-outs are done: keep only what is left to apply.
                let rest = ProviderEvent::Status {
                    provider_message_id,
                    event,
                    error,
                    detail,
                    opt_out: None,
                };
                let rest = serde_json::to_value(&rest).expect("events serialise");
                let backoff = 2f64.powi(row.attempts.min(16)).min(MAX_RETRY_SECS);
                store::postpone(&tx, id, &rest, backoff).await?;
                Applied::Waiting
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// A message the provider reports failed or bounced after it was sent (a
/// hard bounce, an unanswered call, a number without WhatsApp): its job's
/// fallback, if it names one, is parked for the scheduler in the same
/// transaction as the status move, so it is parked exactly once
/// (`domain::fallback`, `worker::fallback`).
async fn fall_back(
    tx: &impl deadpool_postgres::GenericClient,
    job: &Value,
    event: &str,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(job).expect("a Value serialises");
    let Ok(parent) = crate::domain::SendJob::parse(&body) else {
        // Rows of rejected jobs are never sent, so never reported on.
        return Ok(());
    };
    if parent.fallback.is_empty() {
        return Ok(());
    }
    if let Some(mut detail) =
        crate::store::scheduled::park_fallback(tx, &parent, chrono::Utc::now()).await?
    {
        detail["after"] = json!(event);
        crate::store::messages::record_event(
            tx,
            parent.id,
            &parent.agent_id,
            parent.channel,
            "fallback",
            &detail,
        )
        .await?;
    }
    Ok(())
}

/// One pass: applies every due inbox row. Returns how many were done with.
pub async fn sweep_once(pool: &Pool) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    let mut done = 0;
    for id in store::due(&client, 100).await? {
        match apply(&mut client, id).await {
            Ok(Applied::Done) => done += 1,
            Ok(Applied::Waiting | Applied::Skipped) => {}
            // The database is away: the whole pass can wait.
            Err(e) if e.is_retriable() => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, inbox_id = id, "could not apply a stored webhook; will retry");
                store::retry_later(&client, id).await?;
            }
        }
    }
    Ok(done)
}

/// Runs until `shutdown`: applies what requests could not (reports that
/// came before their message's outcome was recorded, rows whose apply met a
/// database error), and now and then forgets old status reports. Every
/// process serving webhooks runs one; row locks keep them from applying the
/// same row twice.
pub async fn sweep(pool: Pool, shutdown: CancellationToken) {
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = sweep_once(&pool).await {
            tracing::warn!(error = %e, "webhook inbox sweep failed; retrying");
            continue;
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(tokio::time::Instant::now());
            let pruned = match pool.get().await {
                Ok(client) => store::prune(&client, KEEP_STATUS_SECS).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "could not prune the webhook inbox");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_inbox_format() {
        let events = [
            ProviderEvent::Status {
                provider_message_id: "SM1".into(),
                event: "failed".into(),
                error: Some("twilio undelivered: error 30003".into()),
                detail: json!({"error_code": "30003"}),
                opt_out: None,
            },
            ProviderEvent::Status {
                provider_message_id: "em_1".into(),
                event: "complained".into(),
                error: None,
                detail: json!({}),
                opt_out: Some(EmailOptOut {
                    reason: "complaint".into(),
                    addresses: vec![EmailAddress::parse("a@b.co").unwrap()],
                    source: "resend:webhook".into(),
                }),
            },
            ProviderEvent::Inbound {
                channel: Channel::Whatsapp,
                from: PhoneNumber::parse("+14155550123").unwrap(),
                keyword: Some(Keyword::Stop),
            },
            ProviderEvent::PhoneOptOut {
                channel: Channel::Whatsapp,
                from: PhoneNumber::parse("+14155550123").unwrap(),
                reason: "provider_rejected".into(),
                source: "meta:131026".into(),
            },
        ];
        for e in events {
            let v = serde_json::to_value(&e).unwrap();
            // The serde tag names the variant; the inbox's `kind` column
            // files a provider's opt-out with the person's replies.
            let tag = v["kind"].as_str().unwrap();
            assert_eq!(tag.replace("phone_opt_out", "inbound"), e.kind());
            assert_eq!(serde_json::from_value::<ProviderEvent>(v).unwrap(), e);
        }
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(status_move("opened").is_none());
        assert_eq!(status_move("delivered").unwrap().from, ["sent"]);
        assert_eq!(status_move("bounced").unwrap().from, ["sent", "delivered"]);
    }
}
