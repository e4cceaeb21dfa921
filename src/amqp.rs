//! RabbitMQ: the fixed topology of DESIGN.md, connecting, and publishing with
//! publisher confirms.
//!
//! Declarations are idempotent, so every worker declares on start. When a
//! queue or exchange already exists with other arguments (declared by an
//! operator, or by a later version with quorum queues), we use it as it is
//! instead of failing: the names are the contract, the arguments are not.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;
use uuid::Uuid;

/// Where publishers send jobs; routing key = agent id.
pub const JOBS_EXCHANGE: &str = "switchboard.jobs";
/// Where workers consume jobs.
pub const SEND_QUEUE: &str = "switchboard.send";
/// Jobs that cannot be processed, with the reason in [`REASON_HEADER`].
pub const DEAD_QUEUE: &str = "switchboard.dead";
pub const REASON_HEADER: &str = "x-switchboard-reason";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("the message could not be routed to any queue (is {0} bound?)")]
    Unroutable(String),
    #[error("RabbitMQ did not answer within {0:?}")]
    TimedOut(Duration),
}

/// How long any wait on a broker reply (confirm, ack) may last. lapin drops
/// a command without resolving its promise when the connection dies at the
/// wrong moment, so an unbounded wait can hang a task forever; the timeout
/// turns that into an ordinary error (the message is then redelivered or
/// republished, and the job id keeps that harmless).
pub const BROKER_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Bounds a wait on the broker by [`BROKER_REPLY_TIMEOUT`].
pub async fn bounded<T, E>(reply: impl Future<Output = Result<T, E>>) -> Result<T, BrokerError>
where
    BrokerError: From<E>,
{
    match tokio::time::timeout(BROKER_REPLY_TIMEOUT, reply).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BrokerError::TimedOut(BROKER_REPLY_TIMEOUT)),
    }
}

pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// Declares the exchange, both queues and the binding. Safe to call from
/// every process at every start.
pub async fn declare_topology(conn: &Connection) -> lapin::Result<()> {
    declare_exchange(conn).await?;
    declare_queue(conn, SEND_QUEUE).await?;
    declare_queue(conn, DEAD_QUEUE).await?;
    let ch = conn.create_channel().await?;
    // A topic exchange with `#` sends every agent's jobs to the one queue
    // today, and lets agent-sharded queues be bound beside it later.
    ch.queue_bind(
        SEND_QUEUE.into(),
        JOBS_EXCHANGE.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "topology declared".into()).await;
    Ok(())
}

/// Declares something durable with `declare(channel, passive)`; when it
/// already exists with other arguments, accepts it as it is after checking
/// (passively, on a fresh channel: a failed declare closes its channel) that
/// it exists at all. An exchange of another type is refused: its type is how
/// it routes, so a `direct` or `fanout` `switchboard.jobs` would confirm
/// every publish and route jobs by other rules, or to no queue at all.
async fn declare_or_accept<F, Fut>(conn: &Connection, what: &str, declare: F) -> lapin::Result<()>
where
    F: Fn(Channel, bool) -> Fut,
    Fut: std::future::Future<Output = lapin::Result<()>>,
{
    let ch = conn.create_channel().await?;
    if let Err(e) = declare(ch.clone(), false).await {
        if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
            && amqp
                .get_message()
                .as_str()
                .contains("inequivalent arg 'type'")
        {
            // RabbitMQ says "inequivalent arg 'type' for exchange … received
            // 'topic' but current is 'direct'"; say what to do about it too.
            // (The reply must stay an AMQP short string: 255 bytes at most.)
            let advice = "delete it so switchboard can declare it";
            tracing::error!(what, error = %e, advice, "existing exchange has the wrong type");
            let message = format!("{}; {advice}", amqp.get_message());
            return Err(match lapin::types::ShortString::try_new(message) {
                Ok(message) => lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
                    amqp.kind().clone(),
                    message,
                ))
                .into(),
                Err(_) => e,
            });
        }
        let ch = conn.create_channel().await?;
        declare(ch.clone(), true).await?;
        tracing::warn!(what, "exists with other arguments; using it as it is");
        let _ = ch.close(200, "declared".into()).await;
        return Ok(());
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

async fn declare_exchange(conn: &Connection) -> lapin::Result<()> {
    declare_or_accept(conn, JOBS_EXCHANGE, |ch, passive| async move {
        let options = ExchangeDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        };
        ch.exchange_declare(
            JOBS_EXCHANGE.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
    })
    .await
}

async fn declare_queue(conn: &Connection, name: &str) -> lapin::Result<()> {
    declare_or_accept(conn, name, |ch, passive| async move {
        let options = QueueDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        };
        ch.queue_declare(name.into(), options, FieldTable::default())
            .await
            .map(|_| ())
    })
    .await
}

/// A channel in confirm mode: every publish waits for the broker to have
/// taken responsibility for the message.
pub async fn confirm_channel(conn: &Connection) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// The properties DESIGN.md asks publishers to set on a job.
pub fn job_properties(job_id: Uuid) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(job_id.to_string().into())
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
}

/// Publishes and waits for the broker's confirm. `mandatory` makes an
/// unroutable message an error instead of silently dropped.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let publish = channel.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body,
        properties,
    );
    let confirm = bounded(async { publish.await?.await }).await?;
    match confirm {
        lapin::Confirmation::Ack(None) => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => {
            Err(BrokerError::Unroutable(format!("{exchange}/{routing_key}")))
        }
        lapin::Confirmation::Nack(_) => Err(BrokerError::Nacked),
        lapin::Confirmation::NotRequested => Ok(()),
    }
}

/// Waits for the confirms of messages published back to back (one round of
/// waiting for many publishes); any nack is an error.
pub async fn await_confirms(
    confirms: impl IntoIterator<Item = lapin::PublisherConfirm>,
) -> Result<(), BrokerError> {
    bounded(async {
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                return Err(BrokerError::Nacked);
            }
        }
        Ok::<(), BrokerError>(())
    })
    .await
}

/// Publishes a job to `switchboard.jobs` with routing key = agent id.
pub async fn publish_job(
    channel: &Channel,
    job_id: Uuid,
    agent_id: &str,
    body: &[u8],
) -> Result<(), BrokerError> {
    publish_confirmed(
        channel,
        JOBS_EXCHANGE,
        agent_id,
        body,
        job_properties(job_id),
    )
    .await
}

/// Longest reason header we write. Headers travel in one AMQP frame (128 KB
/// by default); a header that does not fit closes the whole connection, so a
/// reason must never grow with what the publisher sent.
pub const MAX_REASON_BYTES: usize = 1024;

/// `reason` cut to [`MAX_REASON_BYTES`] on a character boundary.
pub fn short_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Copies a delivery to `switchboard.dead` with its original body and
/// properties plus the reason header.
pub async fn dead_letter(
    channel: &Channel,
    body: &[u8],
    original: &BasicProperties,
    reason: &str,
) -> Result<(), BrokerError> {
    let mut headers = original.headers().clone().unwrap_or_default();
    // AMQP short strings are limited to 255 bytes; long reasons go as long strings.
    headers.insert(
        ShortString::from(REASON_HEADER),
        AMQPValue::LongString(short_reason(reason).into()),
    );
    let props = original.clone().with_headers(headers).with_delivery_mode(2);
    publish_confirmed(channel, "", DEAD_QUEUE, body, props).await
}

/// A confirm channel on a connection of its own, opened on first use and
/// opened again on the next use after a failure. One publisher keeps one
/// channel instead of a connection per publish.
pub struct ReconnectingChannel {
    url: String,
    name: &'static str,
    /// Declare the topology on each new connection (publishers of jobs must
    /// find `switchboard.jobs` bound to `switchboard.send`).
    declare: bool,
    slot: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl ReconnectingChannel {
    pub fn new(url: &str, name: &'static str, declare: bool) -> Self {
        Self {
            url: url.to_string(),
            name,
            declare,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The open channel, or a new one on a new connection.
    pub async fn get(&self) -> Result<Channel, BrokerError> {
        let mut slot = self.slot.lock().await;
        if let Some((conn, ch)) = &*slot
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let (conn, ch) = bounded(async {
            let conn = connect(&self.url, self.name).await?;
            if self.declare {
                declare_topology(&conn).await?;
            }
            let ch = confirm_channel(&conn).await?;
            Ok::<_, lapin::Error>((conn, ch))
        })
        .await?;
        *slot = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// Drops the connection after a failed publish: the next [`Self::get`]
    /// opens a new one rather than reuse a channel in an unknown state.
    pub async fn reset(&self, why: &str) {
        if let Some((conn, _)) = self.slot.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, why.into())).await;
        }
    }

    pub async fn close(&self) {
        if let Some((conn, _)) = self.slot.lock().await.take() {
            let _ = bounded(conn.close(200, "shutting down".into())).await;
        }
    }
}

/// The dead-letter publisher: its own connection, so that a dead letter the
/// broker refuses (or a broker that closes the connection over it) never
/// takes the consumer's connection, and every unacked job with it, down.
/// Reconnects on the next use after a failure.
pub struct DeadLetters {
    channel: ReconnectingChannel,
}

impl DeadLetters {
    pub fn new(url: &str) -> Self {
        Self {
            channel: ReconnectingChannel::new(url, "switchboard-dead-letters", false),
        }
    }

    /// Publishes with confirm; after an error the connection is dropped and
    /// the next call opens a new one.
    pub async fn publish(
        &self,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let channel = self.channel.get().await?;
        let result = dead_letter(&channel, body, original, reason).await;
        if result.is_err() {
            self.channel.reset("dead-letter publish failed").await;
        }
        result
    }

    pub async fn close(&self) {
        self.channel.close().await;
    }
}

/// One job ready to publish: its id, routing key (the agent) and body.
pub struct OutgoingJob<'a> {
    pub id: Uuid,
    pub agent_id: &'a str,
    pub body: Vec<u8>,
}

/// Publishes jobs for the HTTP API over one long-lived confirm channel.
pub struct JobPublisher {
    channel: ReconnectingChannel,
}

impl JobPublisher {
    pub fn new(url: &str) -> Self {
        Self {
            channel: ReconnectingChannel::new(url, "switchboard-api", true),
        }
    }

    /// Publishes every job, then waits for all their confirms in one round
    /// (a thousand jobs cost one wait, not a thousand). `Ok` means the
    /// broker took every one; on `Err` some may have been taken, which is
    /// harmless: the ids make a second publish of the same job a no-op.
    pub async fn publish(&self, jobs: &[OutgoingJob<'_>]) -> Result<(), BrokerError> {
        let channel = self.channel.get().await?;
        let result: Result<(), BrokerError> = async {
            let mut confirms = Vec::with_capacity(jobs.len());
            for job in jobs {
                let publish = channel.basic_publish(
                    JOBS_EXCHANGE.into(),
                    job.agent_id.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &job.body,
                    job_properties(job.id),
                );
                confirms.push(bounded(publish).await?);
            }
            bounded(async {
                for confirm in confirms {
                    match confirm.await? {
                        lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => {}
                        lapin::Confirmation::Ack(Some(_)) => {
                            return Err(BrokerError::Unroutable(JOBS_EXCHANGE.into()));
                        }
                        lapin::Confirmation::Nack(_) => return Err(BrokerError::Nacked),
                    }
                }
                Ok::<(), BrokerError>(())
            })
            .await
        }
        .await;
        if result.is_err() {
            self.channel.reset("job publish failed").await;
        }
        result
    }

    pub async fn close(&self) {
        self.channel.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = short_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
        assert_eq!(short_reason("short"), "short");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_never_comes_becomes_an_error() {
        // What lapin does when the connection dies at the wrong moment: the
        // promise is never resolved.
        let never = std::future::pending::<lapin::Result<()>>();
        let started = tokio::time::Instant::now();
        let result = bounded(never).await;
        assert!(
            matches!(result, Err(BrokerError::TimedOut(_))),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), BROKER_REPLY_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_in_time_passes_through() {
        let nacked = async { Err::<(), _>(BrokerError::Nacked) };
        assert!(matches!(bounded(nacked).await, Err(BrokerError::Nacked)));
        assert_eq!(bounded(async { Ok::<_, BrokerError>(7) }).await.unwrap(), 7);
    }
}
