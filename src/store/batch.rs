//! Groups concurrent single-job writes into one statement.
//!
//! Hundreds of jobs in flight each need a claim and an outcome write; one
//! statement per job spends most of Postgres' time on per-statement overhead.
//! A [`Batcher`] takes every request that arrived while its previous
//! statement ran and sends them as one. When fewer are ready than fill a
//! statement it waits a little (`wait`, 2 ms by default) for more: at a
//! moderate rate (1,000 jobs/s) requests otherwise trickle in one or two per
//! statement, and Postgres spends its time on per-statement overhead. A
//! busy worker fills statements without waiting. Each caller still waits for
//! its own row to be committed before it goes on, so "acked only after
//! recorded" holds exactly as with single statements.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::StoreError;

/// One kind of batched statement.
pub trait BatchOp: Send + Sync + 'static {
    type Req: Send + Sync + 'static;
    type Resp: Send + 'static;

    /// Requests with the same key never share a statement (Postgres refuses
    /// to touch one row twice in an `ON CONFLICT DO UPDATE`).
    fn key(req: &Self::Req) -> Uuid;

    /// Runs the statement for `reqs` (unique keys) and returns one response
    /// per request, in order.
    fn run(
        &self,
        client: &deadpool_postgres::Client,
        reqs: &[Self::Req],
    ) -> impl Future<Output = Result<Vec<Self::Resp>, StoreError>> + Send;
}

type Pending<Op> = (
    <Op as BatchOp>::Req,
    oneshot::Sender<Result<<Op as BatchOp>::Resp, StoreError>>,
);

pub struct Batcher<Op: BatchOp> {
    tx: mpsc::UnboundedSender<Pending<Op>>,
}

impl<Op: BatchOp> Batcher<Op> {
    /// Starts `parallel` loops, each sending up to `max_batch` rows per
    /// statement, waiting up to `wait` after the first row for others to
    /// join it. They end when the batcher is dropped.
    pub fn spawn(op: Op, pool: Pool, max_batch: usize, wait: Duration, parallel: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<Pending<Op>>();
        let rx = Arc::new(Mutex::new(rx));
        let op = Arc::new(op);
        for _ in 0..parallel.max(1) {
            let (rx, op, pool) = (rx.clone(), op.clone(), pool.clone());
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(p) => batch.push(p),
                            None => return,
                        }
                        collect(&mut rx, &mut batch, max_batch, wait).await;
                    }
                    run_batch(op.as_ref(), &pool, batch).await;
                }
            });
        }
        Self { tx }
    }

    /// Queues one request and waits for its own result.
    pub async fn call(&self, req: Op::Req) -> Result<Op::Resp, StoreError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send((req, reply))
            .map_err(|_| StoreError::shared("the batch writer has stopped", false))?;
        result
            .await
            .unwrap_or_else(|_| Err(StoreError::shared("the batch writer has stopped", false)))
    }
}

/// Adds to `batch` what is ready, then what arrives within `wait` of now,
/// up to `max_batch` requests.
async fn collect<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    batch: &mut Vec<T>,
    max_batch: usize,
    wait: Duration,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) if wait.is_zero() => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    // Closed, or the wait is over: send what we have.
                    Ok(None) | Err(_) => return,
                }
            }
        }
    }
}

async fn run_batch<Op: BatchOp>(op: &Op, pool: &Pool, mut batch: Vec<Pending<Op>>) {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::from(e);
            for (_, reply) in batch {
                let _ = reply.send(Err(e.to_shared()));
            }
            return;
        }
    };
    while !batch.is_empty() {
        // Split off repeats of a key for the next round.
        let mut seen = std::collections::HashSet::new();
        let (round, rest): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(req, _)| seen.insert(Op::key(req)));
        batch = rest;
        let (reqs, replies): (Vec<_>, Vec<_>) = round.into_iter().unzip();
        match run_checked(op, &client, &reqs).await {
            Ok(resps) => {
                for (resp, reply) in resps.into_iter().zip(replies) {
                    let _ = reply.send(Ok(resp));
                }
            }
            // An error no retry can fix is about one row (a value Postgres
            // refuses, a constraint): it must not fail the other jobs of the
            // statement, which were sent and only need recording. Each row
            // is tried alone, so only the culprit gets the error.
            Err(e) if !e.is_retriable() && reqs.len() > 1 => {
                tracing::warn!(error = %e, rows = reqs.len(), "a batched write failed; writing its rows one by one");
                for (req, reply) in reqs.into_iter().zip(replies) {
                    let one = std::slice::from_ref(&req);
                    let result = run_checked(op, &client, one).await.map(|mut r| r.remove(0));
                    let _ = reply.send(result);
                }
            }
            // A retriable error (the connection, a restart) is shared by the
            // whole statement: every caller waits it out and tries again.
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_shared()));
                }
            }
        }
    }
}

/// Runs the statement and checks that it answered every request.
async fn run_checked<Op: BatchOp>(
    op: &Op,
    client: &deadpool_postgres::Client,
    reqs: &[Op::Req],
) -> Result<Vec<Op::Resp>, StoreError> {
    let resps = op.run(client, reqs).await?;
    if resps.len() != reqs.len() {
        return Err(StoreError::shared(
            format!(
                "batch returned {} rows for {} requests",
                resps.len(),
                reqs.len()
            ),
            false,
        ));
    }
    Ok(resps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_late_requests_until_its_wait_is_over() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(1).unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.send(2).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            late.send(3).unwrap();
        });
        let mut batch = Vec::new();
        let started = tokio::time::Instant::now();
        collect(&mut rx, &mut batch, 10, Duration::from_millis(2)).await;
        assert_eq!(
            batch,
            [1, 2],
            "the request after the wait goes in the next batch"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_or_no_wait_goes_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let started = tokio::time::Instant::now();
        let mut full = Vec::new();
        collect(&mut rx, &mut full, 3, Duration::from_secs(1)).await;
        assert_eq!(full, [0, 1, 2]);
        let mut ready = Vec::new();
        collect(&mut rx, &mut ready, 10, Duration::ZERO).await;
        assert_eq!(ready, [3, 4]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
