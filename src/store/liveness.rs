//! Which worker owns a job, known rather than guessed from a timer.
//!
//! Each worker process holds a session-level Postgres advisory lock on its
//! own key, on a connection of its own, for as long as it lives. A claim
//! records that key as the message row's `owner`. A redelivered copy of a
//! job may take it over exactly when the owner's lock is no longer held:
//! the owner's process died (the kernel closes its socket and Postgres
//! drops the session at once) or its host vanished (Postgres notices within
//! the TCP keepalive time set on the lock session, about 11 s). A live owner
//! is never overtaken however long its provider takes.
//!
//! The one case where a live worker loses its lock is losing its Postgres
//! connection. Then [`Liveness::epoch`] changes, and a job claimed under the
//! old lock re-checks its claim before calling a provider (see
//! `worker::job`). This module never decides a job's fate; it only answers
//! "do I still hold my lock, and since when".

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::StoreError;

/// The first key of every worker's two-key advisory lock ("SW"), so that our
/// locks are told apart from anyone else's in `pg_locks`.
pub const LOCK_NAMESPACE: i32 = 0x5357;

/// Server-side TCP keepalive for the lock session: a worker whose host
/// vanished loses its lock after about idle + interval × count = 11 s.
const KEEPALIVE_OPTIONS: &str =
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3";

/// This process's ownership of the jobs it claims.
#[derive(Clone)]
pub struct Liveness {
    key: i32,
    /// 0 while the lock is not held; otherwise a number that changes each
    /// time it is taken again.
    epoch: watch::Receiver<u64>,
}

impl Liveness {
    /// Starts holding a lock on a fresh random key; keeps re-taking it after
    /// a lost connection until `shutdown`.
    pub fn start(database_url: &str, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let mut cfg = tokio_postgres::Config::from_str(database_url)
            .map_err(|e| StoreError::Url(e.to_string()))?;
        cfg.connect_timeout(Duration::from_secs(5));
        cfg.application_name("switchboard-liveness");
        cfg.keepalives_idle(Duration::from_secs(5));
        let options = match cfg.get_options() {
            Some(given) => format!("{given} {KEEPALIVE_OPTIONS}"),
            None => KEEPALIVE_OPTIONS.to_string(),
        };
        cfg.options(&options);
        // Positive, so that it reads the same as an int4 and as an oid.
        let key = (rand::random::<u32>() >> 1).max(1) as i32;
        let (tx, epoch) = watch::channel(0);
        tokio::spawn(hold(Arc::new(cfg), key, tx, shutdown));
        Ok(Self { key, epoch })
    }

    /// The key recorded as `owner` on the rows this process claims.
    pub fn key(&self) -> i32 {
        self.key
    }

    /// The current epoch, waiting while the lock is not held.
    pub async fn held(&self, shutdown: &CancellationToken) -> Option<u64> {
        let mut rx = self.epoch.clone();
        tokio::select! {
            r = rx.wait_for(|e| *e != 0) => r.ok().map(|e| *e),
            _ = shutdown.cancelled() => None,
        }
    }

    /// Whether the lock taken at `epoch` is still held.
    pub fn still(&self, epoch: u64) -> bool {
        *self.epoch.borrow() == epoch
    }
}

async fn hold(
    cfg: Arc<tokio_postgres::Config>,
    key: i32,
    tx: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut taken = 0u64;
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match cfg.connect(NoTls).await {
            Ok((client, connection)) => {
                let mut connection = std::pin::pin!(connection);
                // The lock is taken on this session and lives as long as it.
                // `pg_try_advisory_lock` answers false while an earlier
                // session of ours is still held open by a half-dead
                // connection; then we wait for Postgres to drop it.
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                    [&LOCK_NAMESPACE, &key];
                let lock = client.query_one("SELECT pg_try_advisory_lock($1, $2)", &params);
                let got = tokio::select! {
                    r = lock => r.map(|row| row.get::<_, bool>(0)),
                    r = &mut connection => {
                        tracing::warn!(error = ?r.err(), "liveness connection ended before the lock was taken");
                        Ok(false)
                    }
                };
                match got {
                    Ok(true) => {
                        taken += 1;
                        tx.send_replace(taken);
                        delay = Duration::from_millis(100);
                        tracing::debug!(key, epoch = taken, "holding the worker lock");
                        tokio::select! {
                            r = &mut connection => {
                                tx.send_replace(0);
                                tracing::warn!(error = ?r.err(), "lost the worker lock's connection; jobs wait until it is taken again");
                            }
                            _ = shutdown.cancelled() => {
                                // Dropping the client ends the session and
                                // releases the lock.
                                tx.send_replace(0);
                                return;
                            }
                        }
                    }
                    Ok(false) => {
                        tracing::info!(key, "worker lock still held by an old session; waiting")
                    }
                    Err(e) => tracing::warn!(error = %e, "could not take the worker lock"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach Postgres for the worker lock"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_claim_looks_for_this_namespace() {
        let needle = format!("l.classid = {}::oid", super::LOCK_NAMESPACE);
        assert!(
            super::super::messages::CLAIM_SQL.contains(&needle),
            "{needle}"
        );
    }
}
