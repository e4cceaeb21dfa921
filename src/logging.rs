//! Where log lines go and in what shape: human-readable text by default,
//! one JSON object per line with `SWITCHBOARD_LOG_FORMAT=json`.
//!
//! In JSON, an event's fields are top-level keys (`message`, `error`, …)
//! and the fields of the span it happened in are under `span`: inside a
//! job that is the worker's `job` span, with `job_id`, `agent_id`,
//! `channel` and `message_id` (`worker::consumer`), so a log shipper can
//! gather every line of one job. Both shapes go to stderr; stdout is kept
//! for what commands print (`enqueue`'s ids, `integrations list`).
//!
//! Nothing here may log a setting's value: secrets are kept out of log
//! lines where they are held (`config`), not filtered here.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// What `RUST_LOG` defaults to: our `info`, but only warnings from the
/// broker and database clients, whose `info` lines are per connection.
const DEFAULT_FILTER: &str = "info,lapin=warn,tokio_postgres=warn";

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            // The job span is the only span; the list would repeat it.
            .with_span_list(false)
            .init(),
    }
}

/// Reports the error that ends the process, in the chosen format. Written
/// directly rather than through `tracing`, so that a `RUST_LOG` that
/// silences errors still leaves the reason the process stopped.
pub fn fatal(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Text => eprintln!("switchboard: {error:#}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "target": "switchboard",
                "message": format!("switchboard: {error:#}"),
            })
        ),
    }
}
