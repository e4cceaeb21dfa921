//! What the benchmark sends: the jobs, and the agents' accounts, limits and
//! suppression lists they meet.
//!
//! `pure` measures the worker's bare path (transactional jobs for agents
//! without limits, one number and one address), so that a change to the
//! core shows up undiluted. `realistic` measures what a platform sends: most
//! jobs marketing, so quiet hours are evaluated in each recipient's zone; a
//! share of agents with per-second and daily limits; a suppression list that
//! a few percent of jobs hit; four email providers and Twilio; distinct
//! recipients; and a mock that fails 1 % of requests transiently.

use anyhow::Context;
use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use switchboard::domain::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    Pure,
    Realistic,
}

pub fn agent(i: usize) -> String {
    format!("bench-agent-{i}")
}

/// Every how-manyth job of the realistic mix is addressed to a suppressed
/// recipient (3 %).
const SUPPRESSED_EVERY: usize = 33;
/// Every how-manyth agent of the realistic mix has per-second and daily
/// limits (20 %).
const LIMITED_EVERY: usize = 5;
/// Email providers that agents with their own account bring, in turn.
const EMAIL_PROVIDERS: [&str; 4] = ["resend", "sendgrid", "mailgun", "postmark"];

/// Zones recipients live in; a run uses those where it is daytime now, so
/// that quiet hours are evaluated on every marketing job without deferring
/// any (a deferred job would end the run only the next morning).
const RECIPIENT_ZONES: [&str; 16] = [
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Africa/Lagos",
    "Africa/Nairobi",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Pacific/Honolulu",
];

fn daytime_zones(now: DateTime<Utc>) -> Vec<&'static str> {
    let zones: Vec<_> = RECIPIENT_ZONES
        .into_iter()
        .filter(|name| {
            let tz: chrono_tz::Tz = name.parse().expect("a valid IANA zone");
            // Inside the default 09:00–20:00 window with an hour to spare
            // at each end for the run itself.
            (10..19).contains(&now.with_timezone(&tz).hour())
        })
        .collect();
    if zones.is_empty() {
        // Sixteen zones around the globe always leave a few in daytime.
        unreachable!("no recipient zone in daytime at {now}")
    }
    zones
}

/// Distinct valid San Francisco numbers: exchanges 200–999, so a million
/// recipients before one repeats.
fn phone(n: usize) -> String {
    let exchange = 200 + (n / 10_000) % 800;
    format!("+1415{exchange:03}{:04}", n % 10_000)
}

fn email(n: usize) -> String {
    format!("buyer{n}@example.com")
}

pub fn make_jobs(mix: Mix, jobs: usize, agents: usize, now: DateTime<Utc>) -> Vec<Value> {
    let agents = agents.max(1);
    let zones = daytime_zones(now);
    (0..jobs)
        .map(|i| {
            let id = Uuid::new_v4();
            let agent_id = agent(i % agents);
            let sms = i % 2 == 0;
            match mix {
                Mix::Pure if sms => json!({
                    "id": id, "agent_id": agent_id, "channel": "sms", "to": "+14155550123",
                    "text": "Open house Saturday 10am at 12 Elm St. Reply STOP to opt out.",
                    "category": "transactional", "campaign_id": "bench"}),
                Mix::Pure => json!({
                    "id": id, "agent_id": agent_id, "channel": "email", "to": "buyer@example.com",
                    "subject": "New listing near you", "text": "3 bed, 2 bath, garden.",
                    "category": "transactional", "campaign_id": "bench"}),
                Mix::Realistic => {
                    // Recipient n belongs to one agent, so a suppressed
                    // recipient is suppressed for the agent that sends.
                    let recipient = if i % SUPPRESSED_EVERY == 0 {
                        suppressed_recipient(i % agents)
                    } else {
                        i
                    };
                    let category = if i % 10 < 8 {
                        "marketing"
                    } else {
                        "transactional"
                    };
                    let mut job = if sms {
                        json!({"channel": "sms", "to": phone(recipient),
                               "text": "Price drop on 12 Elm St: now $449k. Reply STOP to opt out."})
                    } else {
                        json!({"channel": "email", "to": email(recipient),
                               "subject": "New listing near you",
                               "text": "3 bed, 2 bath, garden.",
                               "html": "<p>3 bed, 2 bath, <b>garden</b>.</p>"})
                    };
                    let fields = job.as_object_mut().expect("an object");
                    fields.insert("id".into(), json!(id));
                    fields.insert("agent_id".into(), json!(agent_id));
                    fields.insert("category".into(), json!(category));
                    fields.insert("campaign_id".into(), json!(format!("spring-{}", i % 7)));
                    fields.insert("timezone".into(), json!(zones[i % zones.len()]));
                    fields.insert("metadata".into(), json!({"lead_id": format!("lead-{i}")}));
                    job
                }
            }
        })
        .collect()
}

/// The recipient number (and address) that `agent` has on its suppression
/// list: past every job's own index, so no other job hits it.
fn suppressed_recipient(agent: usize) -> usize {
    9_000_000 + agent
}

/// The agents' rows, accounts, limits and suppression lists. Half of the
/// agents bring their own accounts; the rest use the platform's.
pub async fn prepare_agents(
    mix: Mix,
    agents: usize,
    pool: &deadpool_postgres::Pool,
    keyring: &switchboard::crypto::Keyring,
    registry: &switchboard::providers::Registry,
    create_agents: bool,
) -> anyhow::Result<()> {
    let db = pool.get().await?;
    if create_agents {
        // A platform's agents exist before their jobs do: measure the steady
        // state, not each agent's first-use row.
        db.execute(
            "INSERT INTO agents (id) SELECT 'bench-agent-' || g FROM generate_series(0, $1 - 1) g
             ON CONFLICT DO NOTHING",
            &[&(agents as i32)],
        )
        .await?;
    }
    if mix == Mix::Realistic {
        let limits = json!({"sms": {"per_second": 20, "per_day": 1_000_000},
                            "email": {"per_second": 20, "per_day": 1_000_000}});
        db.execute(
            "INSERT INTO agents (id, limits)
             SELECT 'bench-agent-' || g, $2 FROM generate_series(0, $1 - 1, $3) g
             ON CONFLICT (id) DO UPDATE SET limits = EXCLUDED.limits",
            &[&(agents as i32), &limits, &(LIMITED_EVERY as i32)],
        )
        .await?;
        let agent_ids: Vec<String> = (0..agents).map(agent).collect();
        let numbers: Vec<String> = (0..agents)
            .map(|a| phone(suppressed_recipient(a)))
            .collect();
        let addresses: Vec<String> = (0..agents)
            .map(|a| email(suppressed_recipient(a)))
            .collect();
        db.execute(
            "INSERT INTO opt_outs (agent_id, channel, address, reason)
             SELECT agent_id, 'sms', number, 'manual' FROM unnest($1::text[], $2::text[]) s(agent_id, number)
             UNION ALL
             SELECT agent_id, 'email', address, 'manual' FROM unnest($1::text[], $3::text[]) e(agent_id, address)
             ON CONFLICT DO NOTHING",
            &[&agent_ids, &numbers, &addresses],
        )
        .await?;
    }
    for i in (0..agents).step_by(2) {
        let connect = |channel, provider: &'static str, settings: Value| async move {
            switchboard::integrations::connect(
                pool,
                keyring,
                registry,
                &agent(i),
                channel,
                provider,
                &settings,
            )
            .await
            .with_context(|| format!("connecting {provider} for {}", agent(i)))
        };
        connect(
            Channel::Sms,
            "twilio",
            json!({"account_sid": format!("AC{i:032}"), "auth_token": "bench-token",
                   "phone_number": "+14155550100"}),
        )
        .await?;
        let provider = match mix {
            Mix::Pure => "resend",
            Mix::Realistic => EMAIL_PROVIDERS[(i / 2) % EMAIL_PROVIDERS.len()],
        };
        let from = json!("agent@bench.test");
        let settings = match provider {
            "resend" => json!({"api_key": format!("re_bench_{i}"), "from_email": from}),
            "sendgrid" => json!({"api_key": format!("SG.bench{i}.key"), "from_email": from}),
            "mailgun" => json!({"api_key": format!("bench-mailgun-{i}"), "domain": "mg.bench.test",
                                "from_email": from, "webhook_signing_key": "bench-signing"}),
            _ => json!({"server_token": Uuid::new_v4(), "from_email": from,
                        "webhook_password": "bench-hook"}),
        };
        connect(Channel::Email, provider, settings).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_realistic_job_goes_to_a_zone_in_daytime() {
        let now = Utc::now();
        let jobs = make_jobs(Mix::Realistic, 200, 10, now);
        for job in &jobs {
            let tz: chrono_tz::Tz = job["timezone"].as_str().unwrap().parse().unwrap();
            assert!((10..19).contains(&now.with_timezone(&tz).hour()));
        }
        let suppressed: std::collections::HashSet<String> = (0..10)
            .flat_map(|a| {
                [
                    phone(suppressed_recipient(a)),
                    email(suppressed_recipient(a)),
                ]
            })
            .collect();
        let hits = jobs
            .iter()
            .filter(|j| suppressed.contains(j["to"].as_str().unwrap()))
            .count();
        assert_eq!(hits, 200usize.div_ceil(SUPPRESSED_EVERY));
    }

    #[test]
    fn recipients_are_distinct_valid_numbers() {
        let numbers: std::collections::HashSet<String> = (0..20_000).map(phone).collect();
        assert_eq!(numbers.len(), 20_000);
        assert!(!numbers.contains(&phone(suppressed_recipient(0))));
        for n in [0, 19_999, suppressed_recipient(9_999)] {
            let number: phonenumber::PhoneNumber = phone(n).parse().unwrap();
            assert!(phonenumber::is_valid(&number), "{}", phone(n));
        }
    }
}
