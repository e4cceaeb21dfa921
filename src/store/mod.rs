//! Postgres access: the connection pool, migrations, and one submodule per
//! table group. SQL lives beside the code that needs it, as plain strings a
//! reader can paste into psql.
//!
//! Nothing here decides policy; functions take domain types, run one
//! statement (or one transaction) and return what the caller needs to branch on.

pub mod agents;
pub mod api_tokens;
pub mod batch;
pub mod circuits;
pub mod integrations;
pub mod liveness;
pub mod messages;
pub mod opt_outs;
pub mod provider_events;
pub mod quotas;
pub mod rate_slots;
pub mod recipient_caps;
pub mod retry;
pub mod scheduled;
pub mod stats;
pub mod webhook_tokens;
pub mod whatsapp_windows;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// Arbitrary but fixed: every `switchboard migrate` takes this advisory lock,
/// so two processes migrating at once run one after the other.
const MIGRATION_LOCK_ID: i64 = 0x5357_4254_4d49_4752; // "SWBTMIGR"

mod embedded {
    refinery::embed_migrations!("migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid DATABASE_URL: {0}")]
    Url(String),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    /// An error reported to every request of a batched statement.
    #[error("database: {message}")]
    Shared { message: String, retriable: bool },
}

impl StoreError {
    pub fn shared(message: impl Into<String>, retriable: bool) -> Self {
        StoreError::Shared {
            message: message.into(),
            retriable,
        }
    }

    /// A copy for each waiter of a failed batch, keeping whether a retry helps.
    pub fn to_shared(&self) -> Self {
        StoreError::shared(self.to_string(), self.is_retriable())
    }

    /// Whether trying again later can help. A connection that dropped or a
    /// pool that timed out can; a constraint violation or bad SQL cannot.
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Url(_) | StoreError::Migration(_) => false,
            StoreError::Shared { retriable, .. } => *retriable,
            StoreError::Pool(_) => true,
            StoreError::Db(e) => match e.code() {
                None => true,
                Some(code) => {
                    let c = code.code();
                    // Class 08 connection exception, 53 insufficient
                    // resources, 57 operator intervention (shutdown), 40
                    // serialization failure / deadlock.
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c.starts_with("40")
                }
            },
        }
    }
}

fn pg_config(database_url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg = tokio_postgres::Config::from_str(database_url)
        .map_err(|e| StoreError::Url(e.to_string()))?;
    cfg.connect_timeout(Duration::from_secs(5));
    cfg.application_name("switchboard");
    Ok(cfg)
}

const PLANNER_OPTIONS: &str = "-c enable_seqscan=off -c plan_cache_mode=force_generic_plan";

/// A pool whose operations fail within seconds when Postgres is away,
/// instead of hanging: callers decide how to wait and retry.
pub fn pool(database_url: &str, max_size: usize) -> Result<Pool, StoreError> {
    let mut cfg = pg_config(database_url)?;
    // Every query switchboard makes is a keyed lookup. On a table that has
    // not been analyzed yet (a fresh deployment, or one that just grew fast)
    // the planner prices a sequential scan as cheaper, and a prepared
    // statement keeps that generic plan after the table has grown: the
    // batched outcome UPDATE then read all of outbound_messages for every
    // batch. With seq scans as a last resort the plans stay on the indexes,
    // and then the generic plan is always the right one, so it is used from
    // the first execution instead of planning each small batch again.
    // Measured with the benchmark at a steady 1,000 jobs/s: Postgres CPU per
    // job went from about 1,000 µs to about 500 µs.
    let options = match cfg.get_options() {
        Some(given) => format!("{given} {PLANNER_OPTIONS}"),
        None => PLANNER_OPTIONS.to_string(),
    };
    cfg.options(&options);
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Url(e.to_string()))
}

/// Applies the SQL files in `migrations/` in order, once each, recorded in
/// refinery's history table. Safe to run twice and from two processes at
/// once: the second waits on an advisory lock, then finds nothing to do.
/// Returns the names of the migrations it applied.
pub async fn migrate(database_url: &str) -> Result<Vec<String>, StoreError> {
    let (mut client, connection) = pg_config(database_url)?.connect(NoTls).await?;
    let conn_task = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_ID])
        .await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    // Closing the session would release the lock too; unlock explicitly so a
    // pooled connection could never keep it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_ID])
        .await;
    drop(client);
    let _ = conn_task.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
