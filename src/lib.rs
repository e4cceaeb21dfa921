//! switchboard: a queue-driven worker that sends email, SMS, WhatsApp and
//! voice messages for many agents, each through their own provider account
//! or the platform's, and records every outcome in Postgres.
//!
//! See `docs/DESIGN.md` for the contract (queues, tables, settings) and
//! `README.md` for running it.

pub mod amqp;
pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod http;
pub mod integrations;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod providers;
pub mod routing;
pub mod store;
pub mod webhooks;
pub mod worker;
