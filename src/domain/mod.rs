//! Domain types: what a job, a recipient, a channel and a route are.
//!
//! Pure data and validation. Nothing in here performs I/O; everything that
//! talks to RabbitMQ, Postgres or a provider takes these types as input.

mod address;
pub mod fallback;
mod job;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use address::{EmailAddress, PhoneNumber, Recipient, mask};
pub use job::{
    CampaignRef, CapMode, Category, Content, Rejection, SendJob, SendJobV1, metadata_pairs,
};

/// The ways switchboard can reach a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Whatsapp,
    Voice,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Email,
        Channel::Sms,
        Channel::Whatsapp,
        Channel::Voice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Voice => "voice",
        }
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown channel `{s}` (email, sms, whatsapp, voice)"))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose provider account a message went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The agent connected their own account.
    Agent,
    /// The platform's account, configured from the environment.
    Platform,
    /// Nothing leaves the process (development only).
    Simulation,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Agent => "agent",
            Route::Platform => "platform",
            Route::Simulation => "simulation",
        }
    }
}
