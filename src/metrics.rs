//! Every Prometheus metric switchboard exports, defined in one place.
//!
//! Labels are few and bounded (channel, provider, route, outcome). An agent
//! id or a recipient must never become a label: either would make the series
//! count grow with the customer base.
//!
//! Most metrics count what this process did. The gauges of shared state
//! (parked jobs, open circuits, quota use) are read from Postgres by every
//! worker ([`crate::worker::gauges`]), so each process reports the same
//! numbers: aggregate them with `max`, never `sum`.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Deliveries taken from `switchboard.send`, whatever became of them.
    pub jobs_consumed: IntCounter,
    /// Jobs being processed right now (claimed, not yet acked).
    pub jobs_in_flight: IntGauge,
    /// Final outcomes: `sent`, `failed`, `rejected`, `duplicate`, …
    pub messages: IntCounterVec,
    /// One provider HTTP call, by provider and outcome
    /// (`success`, `transient`, `permanent`).
    pub provider_request_duration: HistogramVec,
    /// Enqueue (AMQP timestamp) to recorded, when the publisher set a timestamp.
    pub job_latency: Histogram,
    /// Database operations that failed and were retried.
    pub db_retries: IntCounter,
    /// 1 while the worker has a live RabbitMQ connection.
    pub amqp_connected: IntGauge,
    /// RabbitMQ (re)connections made by the worker.
    pub amqp_connects: IntCounter,
    /// Circuit breakers opening and closing, by provider.
    pub circuit_transitions: IntCounterVec,
    /// Jobs moved to the next account, by channel, from / to provider and
    /// reason (`circuit_open`, `account_refused`).
    pub failovers: IntCounterVec,
    /// Parked jobs republished by the scheduler.
    pub scheduled_published: IntCounter,
    /// Provider webhooks by provider and outcome (`accepted`,
    /// `bad_signature`, `unknown_account`, `unavailable`).
    pub webhooks: IntCounterVec,
    /// Jobs waiting in `scheduled_jobs`, by why they were parked
    /// (`send_at`, `quiet_hours`, `quota`, `rate_limit`, `retry_after`,
    /// `circuit_open`, …: a fixed set in the code). All workers' view.
    pub jobs_parked: IntGaugeVec,
    /// Parked jobs that are due but not yet republished, for longer than
    /// a minute: the scheduler is not keeping up, or not running.
    pub jobs_parked_overdue: IntGauge,
    /// Provider accounts whose circuit is open, by provider.
    pub circuits_open: IntGaugeVec,
    /// The highest share of an hour or day quota used in the current
    /// window, by `scope` (`agent`, `account`), channel and window (`hour`,
    /// `day`); 1 means some agent or account has used all of it.
    pub quota_use_ratio: GaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let jobs_consumed = IntCounter::new(
            "switchboard_jobs_consumed_total",
            "Deliveries consumed from switchboard.send",
        )
        .expect("valid metric");
        let jobs_in_flight =
            IntGauge::new("switchboard_jobs_in_flight", "Jobs being processed now")
                .expect("valid metric");
        let messages = IntCounterVec::new(
            Opts::new(
                "switchboard_messages_total",
                "Job outcomes by channel, provider, route and outcome",
            ),
            &["channel", "provider", "route", "outcome"],
        )
        .expect("valid metric");
        let provider_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_provider_request_duration_seconds",
                "Duration of one provider API call",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let job_latency = Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_job_latency_seconds",
                "From the publisher's AMQP timestamp to the outcome being recorded",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        let db_retries = IntCounter::new(
            "switchboard_db_retries_total",
            "Database operations retried after an error",
        )
        .expect("valid metric");
        let amqp_connected = IntGauge::new(
            "switchboard_amqp_connected",
            "1 while the worker is connected to RabbitMQ",
        )
        .expect("valid metric");
        let amqp_connects = IntCounter::new(
            "switchboard_amqp_connects_total",
            "RabbitMQ connections opened by the worker",
        )
        .expect("valid metric");
        let circuit_transitions = IntCounterVec::new(
            Opts::new(
                "switchboard_circuit_transitions_total",
                "Provider-account circuit breakers opening (circuit_opened) and closing (circuit_closed)",
            ),
            &["provider", "transition"],
        )
        .expect("valid metric");
        let failovers = IntCounterVec::new(
            Opts::new(
                "switchboard_failovers_total",
                "Jobs moved to the next provider account because the current one could not send",
            ),
            &["channel", "from_provider", "to_provider", "reason"],
        )
        .expect("valid metric");
        let scheduled_published = IntCounter::new(
            "switchboard_scheduled_published_total",
            "Parked jobs republished to switchboard.jobs when due",
        )
        .expect("valid metric");
        let webhooks = IntCounterVec::new(
            Opts::new(
                "switchboard_webhooks_total",
                "Provider webhooks received, by outcome",
            ),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let jobs_parked = IntGaugeVec::new(
            Opts::new(
                "switchboard_jobs_parked",
                "Jobs parked in scheduled_jobs until due, by reason (every worker reports the same total)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let jobs_parked_overdue = IntGauge::new(
            "switchboard_jobs_parked_overdue",
            "Parked jobs due over a minute ago and not yet republished",
        )
        .expect("valid metric");
        let circuits_open = IntGaugeVec::new(
            Opts::new(
                "switchboard_circuits_open",
                "Provider accounts whose circuit breaker is open, by provider",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let quota_use_ratio = GaugeVec::new(
            Opts::new(
                "switchboard_quota_use_ratio",
                "Highest share of an hour or day quota used in the current window (1 = used up)",
            ),
            &["scope", "channel", "window"],
        )
        .expect("valid metric");
        for c in [
            Box::new(jobs_consumed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(jobs_in_flight.clone()),
            Box::new(messages.clone()),
            Box::new(provider_request_duration.clone()),
            Box::new(job_latency.clone()),
            Box::new(db_retries.clone()),
            Box::new(amqp_connected.clone()),
            Box::new(amqp_connects.clone()),
            Box::new(circuit_transitions.clone()),
            Box::new(failovers.clone()),
            Box::new(scheduled_published.clone()),
            Box::new(webhooks.clone()),
            Box::new(jobs_parked.clone()),
            Box::new(jobs_parked_overdue.clone()),
            Box::new(circuits_open.clone()),
            Box::new(quota_use_ratio.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            jobs_consumed,
            jobs_in_flight,
            messages,
            provider_request_duration,
            job_latency,
            db_retries,
            amqp_connected,
            amqp_connects,
            circuit_transitions,
            failovers,
            scheduled_published,
            webhooks,
            jobs_parked,
            jobs_parked_overdue,
            circuits_open,
            quota_use_ratio,
        }
    }

    pub fn message_outcome(&self, channel: &str, provider: &str, route: &str, outcome: &str) {
        self.messages
            .with_label_values(&[channel, provider, route, outcome])
            .inc();
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}
