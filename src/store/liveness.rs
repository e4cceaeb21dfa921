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
//! connection. It then takes a lock on a *new* key: jobs claimed under the
//! old key look abandoned (so the job's own task can claim them again under
//! the new key before calling a provider, see `worker::job`), while a second
//! copy of a job claimed under the new key still sees a live owner. This
//! module never decides a job's fate; it only answers "which key do I hold
//! now".

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
    /// The key of the lock held now; 0 while none is held.
    key: watch::Receiver<i32>,
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
        let (tx, key) = watch::channel(0);
        tokio::spawn(hold(Arc::new(cfg), tx, shutdown));
        Ok(Self { key })
    }

    /// The key of the lock held now, to record as a claimed row's `owner`;
    /// waits while no lock is held. `None` on shutdown.
    pub async fn held(&self, shutdown: &CancellationToken) -> Option<i32> {
        let mut rx = self.key.clone();
        tokio::select! {
            r = rx.wait_for(|k| *k != 0) => r.ok().map(|k| *k),
            _ = shutdown.cancelled() => None,
        }
    }

    /// Whether the lock on `key` is still held.
    pub fn still(&self, key: i32) -> bool {
        *self.key.borrow() == key
    }
}

/// A fresh key: positive, so that it reads the same as an int4 and as the
/// oid `pg_locks` shows.
fn new_key() -> i32 {
    (rand::random::<u32>() >> 1).max(1) as i32
}

async fn hold(
    cfg: Arc<tokio_postgres::Config>,
    tx: watch::Sender<i32>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match cfg.connect(NoTls).await {
            Ok((client, connection)) => {
                let mut connection = std::pin::pin!(connection);
                // The lock is taken on this session and lives as long as it.
                // A new key each time: `pg_try_advisory_lock` answers false
                // only when another session took the same key by chance.
                let key = new_key();
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
                        tx.send_replace(key);
                        delay = Duration::from_millis(100);
                        tracing::debug!(key, "holding the worker lock");
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
