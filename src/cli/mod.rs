//! Command-line subcommands that live in the library, so `main.rs` stays a
//! dispatcher and tests can call them. Each module owns one command group:
//! its clap definition, its help text and what it prints.

pub mod stats;
pub mod tokens;
