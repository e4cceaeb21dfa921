//! The worker: consumes `switchboard.send`, processes each job in its own
//! task, and acks only after the outcome is in Postgres.
//!
//! [`consumer`] owns the RabbitMQ side (connection, reconnects, prefetch,
//! shutdown); [`job`] owns one job's path from body to recorded outcome and
//! can be driven from tests without a broker. The mapping from outcome to
//! broker action lives in [`broker_action`] and nowhere else.

pub mod consumer;
mod failover;
mod fallback;
pub mod gauges;
pub mod job;
mod limits;
pub mod scheduler;
mod send;

use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::policy::circuit::Circuits;
use crate::providers::{Registry, http_client};
use crate::routing::Router;
use crate::store::StoreError;
use crate::store::batch::Batcher;
use crate::store::liveness::Liveness;
use crate::store::messages::{ClaimOp, RecordOp};

pub use consumer::run;
pub use job::{Outcome, process};

/// Everything a job needs, shared by all tasks of one worker.
pub struct WorkerContext {
    pub settings: Settings,
    pub pool: Pool,
    pub router: Router,
    pub metrics: Metrics,
    /// Policy time (quiet hours, send_at, limits, circuits, due jobs).
    pub clock: Arc<dyn Clock>,
    pub circuits: Circuits,
    /// Claims and outcomes of concurrent jobs, written a batch per statement.
    pub claims: Batcher<ClaimOp>,
    /// This process's lock, which makes it the live owner of what it claims.
    pub liveness: Liveness,
    /// Stops holding the lock: cancelled when the worker has stopped.
    pub liveness_stop: tokio_util::sync::CancellationToken,
    pub outcomes: Batcher<RecordOp>,
}

impl WorkerContext {
    pub fn new(settings: Settings, metrics: Metrics) -> Result<Arc<Self>, StoreError> {
        Self::with_clock(settings, metrics, Arc::new(SystemClock))
    }

    pub fn with_clock(
        settings: Settings,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let pool = crate::store::pool(&settings.database_url, settings.db_pool_size)?;
        let registry = Registry::new(
            http_client(settings.provider_timeout),
            &settings.provider_urls,
        );
        let router = Router::new(
            registry,
            settings.keyring.clone(),
            &settings.platform,
            settings.simulate,
        );
        // Two statements of each kind in flight at once keep both of a small
        // machine's cores busy without starving the pool.
        let liveness_stop = tokio_util::sync::CancellationToken::new();
        let liveness = Liveness::start(&settings.database_url, liveness_stop.clone())?;
        let claims = Batcher::spawn(
            ClaimOp {
                lease: settings.lease,
            },
            pool.clone(),
            BATCH_ROWS,
            settings.db_batch_wait,
            2,
        );
        let outcomes = Batcher::spawn(
            RecordOp,
            pool.clone(),
            BATCH_ROWS,
            settings.db_batch_wait,
            2,
        );
        Ok(Arc::new(Self {
            claims,
            liveness,
            liveness_stop,
            outcomes,
            circuits: Circuits::new(
                clock.clone(),
                settings.circuit_threshold,
                settings.circuit_cooldown,
            ),
            clock,
            settings,
            pool,
            router,
            metrics,
        }))
    }
}

/// Most rows per batched statement.
const BATCH_ROWS: usize = 200;

/// What to tell RabbitMQ about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAction {
    /// The outcome is recorded: remove the job from the queue.
    Ack,
    /// Copy the job to `switchboard.dead` with this reason, then ack. When
    /// the message row records that it owes a dead letter (`owed_by`), the
    /// debt is cleared once the copy is confirmed.
    DeadLetter {
        reason: String,
        owed_by: Option<uuid::Uuid>,
    },
    /// Nothing was recorded (shutdown came first): leave the delivery unacked
    /// so RabbitMQ gives it to another worker.
    LeaveUnacked,
}

/// The single mapping from a job's outcome to the broker action.
pub fn broker_action(outcome: &Outcome) -> BrokerAction {
    match outcome {
        Outcome::Sent
        | Outcome::Duplicate
        | Outcome::Suppressed
        | Outcome::Cancelled
        | Outcome::Capped
        | Outcome::Unknown => BrokerAction::Ack,
        Outcome::Deferred { .. } => BrokerAction::Ack,
        Outcome::Failed {
            dead_letter: None, ..
        } => BrokerAction::Ack,
        Outcome::Failed {
            dead_letter: Some(id),
            reason,
        } => BrokerAction::DeadLetter {
            reason: reason.clone(),
            owed_by: Some(*id),
        },
        // A rejection needs no debt on the row: a redelivered copy is
        // rejected (and dead-lettered) again.
        Outcome::Rejected { reason } => BrokerAction::DeadLetter {
            reason: reason.clone(),
            owed_by: None,
        },
        Outcome::Unrecordable { reason } => BrokerAction::DeadLetter {
            reason: reason.clone(),
            owed_by: None,
        },
        Outcome::Abandoned => BrokerAction::LeaveUnacked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_one_action() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(broker_action(&Outcome::Sent), BrokerAction::Ack);
        assert_eq!(broker_action(&Outcome::Duplicate), BrokerAction::Ack);
        assert_eq!(broker_action(&Outcome::Unknown), BrokerAction::Ack);
        assert_eq!(
            broker_action(&Outcome::Failed {
                dead_letter: None,
                reason: "x".into()
            }),
            BrokerAction::Ack
        );
        assert_eq!(
            broker_action(&Outcome::Failed {
                dead_letter: Some(id),
                reason: "x".into()
            }),
            BrokerAction::DeadLetter {
                reason: "x".into(),
                owed_by: Some(id)
            }
        );
        assert_eq!(
            broker_action(&Outcome::Rejected {
                reason: "bad".into(),
            }),
            BrokerAction::DeadLetter {
                reason: "bad".into(),
                owed_by: None
            }
        );
        assert_eq!(
            broker_action(&Outcome::Abandoned),
            BrokerAction::LeaveUnacked
        );
    }
}
