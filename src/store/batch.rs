//! Groups concurrent single-job writes into one statement.
//!
//! Hundreds of jobs in flight each need a claim and an outcome write; one
//! statement per job spends most of Postgres' time on per-statement overhead.
//! A [`Batcher`] takes every request that arrived while its previous
//! statement ran and sends them as one (no timer: an idle worker gets
//! single-row latency, a busy one gets batches). Each caller still waits for
//! its own row to be committed before it goes on, so "acked only after
//! recorded" holds exactly as with single statements.

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::StoreError;

/// One kind of batched statement.
pub trait BatchOp: Send + Sync + 'static {
    type Req: Send + 'static;
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
    /// statement. They end when the batcher is dropped.
    pub fn spawn(op: Op, pool: Pool, max_batch: usize, parallel: usize) -> Self {
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
                        while batch.len() < max_batch {
                            match rx.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(_) => break,
                            }
                        }
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
        match op.run(&client, &reqs).await {
            Ok(resps) if resps.len() == replies.len() => {
                for (resp, reply) in resps.into_iter().zip(replies) {
                    let _ = reply.send(Ok(resp));
                }
            }
            Ok(resps) => {
                let e = StoreError::shared(
                    format!(
                        "batch returned {} rows for {} requests",
                        resps.len(),
                        replies.len()
                    ),
                    false,
                );
                for reply in replies {
                    let _ = reply.send(Err(e.to_shared()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_shared()));
                }
            }
        }
    }
}
