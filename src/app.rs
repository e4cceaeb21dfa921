//! The subcommands, as library functions: `main.rs` only parses the command
//! line and calls these, so tests can run exactly what the binary runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp;
use crate::config::Settings;
use crate::domain::{Channel, SendJob};
use crate::http::{self, HttpState};
use crate::integrations;
use crate::metrics::Metrics;
use crate::providers::{Registry, http_client};
use crate::store;
use crate::worker::{self, WorkerContext};

/// Cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        #[cfg(unix)]
        let term = term.recv();
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown requested; finishing in-flight jobs");
        t.cancel();
    });
    token
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let applied = store::migrate(&settings.database_url)
        .await
        .context("applying migrations")?;
    if applied.is_empty() {
        tracing::info!("database schema is up to date");
    } else {
        tracing::info!(?applied, "applied migrations");
    }
    Ok(())
}

/// Applies migrations, waiting for Postgres to come up: a worker started
/// together with its database should wait for it, not crash.
async fn migrate_when_reachable(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(250);
    loop {
        match store::migrate(&settings.database_url).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, ?delay, "Postgres is not reachable yet; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => anyhow::bail!("shut down while waiting for Postgres"),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("applying migrations"),
        }
    }
}

/// `worker`, `serve` and `run`: which halves of the process to start.
pub struct Parts {
    pub worker: bool,
    pub http: bool,
}

pub async fn start(
    settings: Settings,
    parts: Parts,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if parts.worker {
        // The worker decrypts integrations: refuse to start without a key
        // rather than fail every agent-routed job later.
        settings.require_keyring()?;
    }
    if parts.http {
        crate::api::check_exposure(settings.http_addr, &settings).map_err(anyhow::Error::msg)?;
    }
    migrate_when_reachable(&settings, &shutdown).await?;
    let metrics = Metrics::new();
    let ctx: Arc<WorkerContext> = WorkerContext::new(settings.clone(), metrics.clone())?;
    tracing::info!(
        simulate = settings.simulate,
        platform_channels = ?ctx.router.platform_channels(),
        prefetch = settings.prefetch,
        "switchboard starting"
    );

    let mut tasks = tokio::task::JoinSet::new();
    if parts.worker {
        tasks.spawn(worker::run(ctx.clone(), shutdown.clone()));
    } else {
        // Without a worker, keep a connection open so /readyz reports RabbitMQ.
        tasks.spawn(watch_amqp(
            settings.amqp_url.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    if parts.http {
        // A pool of its own: a flood of requests waits for these few
        // connections and never for the worker's.
        let pool = store::pool(&settings.database_url, http::HTTP_DB_POOL_SIZE)?;
        let state = HttpState::new(pool, metrics.clone(), &settings);
        let addr = settings.http_addr;
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = http::serve(addr, state, token.clone()).await {
                tracing::error!(error = %e, %addr, "HTTP server failed");
                token.cancel();
            }
        });
    }
    if let Some(addr) = settings.metrics_addr {
        let metrics = metrics.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = http::serve_metrics(addr, metrics, token.clone()).await {
                tracing::error!(error = %e, %addr, "metrics listener failed");
                token.cancel();
            }
        });
    } else if parts.http && !settings.http_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %settings.http_addr,
            "/metrics is served on the public listener; set SWITCHBOARD_METRICS_ADDR to serve it apart"
        );
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!("switchboard stopped");
    Ok(())
}

async fn watch_amqp(url: String, metrics: Metrics, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Ok(conn) = amqp::connect(&url, "switchboard-http").await {
            metrics.amqp_connected.set(1);
            while conn.status().connected() && !shutdown.is_cancelled() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        metrics.amqp_connected.set(0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Publishes jobs (one JSON object, or an array of them) with publisher
/// confirms. Jobs are validated first unless `validate` is false (useful to
/// exercise the dead-letter path); a missing `id` is filled in. Returns the
/// ids published, in order.
pub async fn enqueue(
    settings: &Settings,
    input: &str,
    validate: bool,
) -> anyhow::Result<Vec<Uuid>> {
    let value: serde_json::Value =
        serde_json::from_str(input).context("the input is not valid JSON")?;
    let mut jobs = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    let mut ids = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter_mut().enumerate() {
        let obj = job
            .as_object_mut()
            .with_context(|| format!("job #{i} is not a JSON object"))?;
        if !obj.contains_key("id") {
            obj.insert("id".into(), Uuid::new_v4().to_string().into());
        }
        if validate {
            SendJob::parse(job.to_string().as_bytes())
                .map_err(|r| anyhow::anyhow!("job #{i} is invalid: {}", r.reason))?;
        }
        let id = job["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(Uuid::nil);
        ids.push(id);
    }
    let conn = amqp::connect(&settings.amqp_url, "switchboard-enqueue")
        .await
        .context("connecting to RabbitMQ")?;
    amqp::declare_topology(&conn)
        .await
        .context("declaring the topology")?;
    let channel = amqp::confirm_channel(&conn).await?;
    for (job, id) in jobs.iter().zip(&ids) {
        let agent = job["agent_id"].as_str().unwrap_or_default();
        amqp::publish_job(&channel, *id, agent, job.to_string().as_bytes())
            .await
            .with_context(|| format!("publishing job {id}"))?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(ids)
}

/// What `switchboard integrations …` was asked to do.
pub enum IntegrationCommand {
    Connect {
        agent: String,
        channel: Channel,
        /// `None`: the provider a credential's shape names.
        provider: Option<String>,
        settings: serde_json::Value,
        /// 0: primary; 1, 2, …: backups (failover order).
        priority: i32,
        /// Store the settings only once the provider accepted them in a
        /// connection test.
        verify: bool,
    },
    List {
        agent: String,
    },
    Enable {
        agent: String,
        channel: Channel,
    },
    Disable {
        agent: String,
        channel: Channel,
    },
    Disconnect {
        agent: String,
        channel: Channel,
    },
}

/// Runs an integrations command and returns what to print.
pub async fn integrations_command(
    settings: &Settings,
    command: IntegrationCommand,
) -> anyhow::Result<String> {
    migrate(settings).await?;
    let pool = store::pool(&settings.database_url, 2)?;
    let registry = Registry::new(
        http_client(settings.provider_timeout),
        &settings.provider_urls,
    );
    Ok(match command {
        IntegrationCommand::Connect {
            agent,
            channel,
            provider,
            settings: values,
            priority,
            verify,
        } => {
            let keyring = settings.require_keyring()?;
            let provider =
                integrations::resolve_provider(&registry, channel, provider.as_deref(), &values)?;
            integrations::check_provider_allowed(&provider, settings.simulate)?;
            let request = integrations::ConnectRequest {
                agent_id: &agent,
                channel,
                provider: &provider,
                settings: &values,
                active: true,
                priority,
            };
            let (id, tested) = if verify {
                let (id, report) =
                    integrations::connect_verified(&pool, keyring, &registry, request).await?;
                (id, Some(report))
            } else {
                let id = integrations::connect_with(&pool, keyring, &registry, request).await?;
                (id, None)
            };
            let role = if priority == 0 {
                String::new()
            } else {
                format!(" (backup, priority {priority})")
            };
            let mut out = format!(
                "connected {provider} for {channel} of agent {agent}{role}: integration {id}\n"
            );
            if let Some(report) = tested {
                out.push_str(&report.render());
            }
            if let Some(base) = &settings.public_url {
                out.push_str(&format!("webhook URL: {base}/webhooks/{provider}/{id}\n"));
            }
            out
        }
        IntegrationCommand::List { agent } => {
            let keyring = settings.require_keyring()?;
            let list = integrations::list(&pool, keyring, &registry, &agent).await?;
            serde_json::to_string_pretty(&list)? + "\n"
        }
        IntegrationCommand::Enable { agent, channel } => {
            integrations::set_active(&pool, &agent, channel, true).await?;
            format!("enabled the {channel} integration of agent {agent}\n")
        }
        IntegrationCommand::Disable { agent, channel } => {
            integrations::set_active(&pool, &agent, channel, false).await?;
            format!("disabled the {channel} integration of agent {agent}\n")
        }
        IntegrationCommand::Disconnect { agent, channel } => {
            integrations::disconnect(&pool, &agent, channel).await?;
            format!("disconnected the {channel} integration of agent {agent}\n")
        }
    })
}

/// `switchboard integrations test`: runs the connection test of the
/// agent's integration in the slot (channel, priority) and stores its
/// verdict. The report says what to print and the exit status.
pub async fn test_integration(
    settings: &Settings,
    agent: &str,
    channel: Channel,
    priority: i32,
) -> anyhow::Result<integrations::TestReport> {
    migrate(settings).await?;
    let pool = store::pool(&settings.database_url, 2)?;
    let registry = Registry::new(
        http_client(settings.provider_timeout),
        &settings.provider_urls,
    );
    let keyring = settings.require_keyring()?;
    Ok(integrations::test(&pool, keyring, &registry, agent, (channel, priority)).await?)
}

/// What `switchboard opt-outs …` and `switchboard sequences …` were asked to do.
pub enum PolicyCommand {
    OptOutAdd {
        /// `None`: platform-wide.
        agent: Option<String>,
        channel: Channel,
        address: String,
        reason: String,
    },
    OptOutList {
        agent: String,
    },
    OptOutRemove {
        agent: Option<String>,
        channel: Channel,
        address: String,
    },
    CancelSequence {
        agent: String,
        sequence: String,
        to: Option<String>,
    },
}

/// Runs an opt-out or sequence command and returns what to print.
pub async fn policy_command(settings: &Settings, command: PolicyCommand) -> anyhow::Result<String> {
    migrate(settings).await?;
    let pool = store::pool(&settings.database_url, 2)?;
    let mut client = pool.get().await?;
    let normalise = |channel: Channel, address: &str| {
        crate::domain::Recipient::parse(channel, address)
            .map(|r| r.as_str().to_string())
            .map_err(|e| anyhow::anyhow!(e))
    };
    Ok(match command {
        PolicyCommand::OptOutAdd {
            agent,
            channel,
            address,
            reason,
        } => {
            let reason = store::opt_outs::parse_reason(&reason).map_err(|e| anyhow::anyhow!(e))?;
            let address = normalise(channel, &address)?;
            let cancelled = store::opt_outs::add(
                &mut client,
                agent.as_deref(),
                channel,
                &address,
                reason,
                Some("cli"),
            )
            .await?;
            format!(
                "opted out {address} from {channel}; cancelled {cancelled} scheduled sequence steps\n"
            )
        }
        PolicyCommand::OptOutList { agent } => {
            serde_json::to_string_pretty(&store::opt_outs::list(&client, &agent).await?)? + "\n"
        }
        PolicyCommand::OptOutRemove {
            agent,
            channel,
            address,
        } => {
            let address = normalise(channel, &address)?;
            if !store::opt_outs::remove(&client, agent.as_deref(), channel, &address).await? {
                anyhow::bail!("{address} is not opted out of {channel}");
            }
            format!("removed the opt-out of {address} from {channel}\n")
        }
        PolicyCommand::CancelSequence {
            agent,
            sequence,
            to,
        } => {
            // The address is compared as stored: normalise it for either kind.
            let to = to.map(|t| crate::domain::Recipient::normalise_any(&t));
            let n = store::scheduled::cancel_sequence(
                &mut client,
                &agent,
                &sequence,
                to.as_deref(),
                "manual",
            )
            .await?;
            format!(
                "cancelled {n} scheduled steps of sequence {sequence}; later steps will be cancelled as they arrive\n"
            )
        }
    })
}

/// `switchboard agents set`: what to change (all optional).
#[derive(Debug, Default)]
pub struct AgentSettings {
    pub agent: String,
    pub timezone: Option<String>,
    /// `HH:MM-HH:MM`, the recipient-local window for marketing.
    pub send_window: Option<String>,
    /// `HH:MM-HH:MM`, the recipient-local hours voice calls may ring.
    pub calling_hours: Option<String>,
    pub quiet_hours_email: Option<bool>,
    pub allow_platform_fallback: Option<bool>,
    pub limits: Option<String>,
    pub company_name: Option<String>,
    pub reply_email: Option<String>,
    pub from_name: Option<String>,
}

/// Changes to an agent as the API takes them (and the CLI, once its flags
/// are read): every field optional, unknown fields refused so that a typo
/// is an error rather than a change silently not made.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentChanges {
    pub company_name: Option<String>,
    pub reply_email: Option<String>,
    pub from_name: Option<String>,
    /// IANA zone, the fallback for recipients whose zone is unknown.
    pub timezone: Option<String>,
    /// `HH:MM-HH:MM`, the recipient-local window for marketing.
    pub send_window: Option<String>,
    /// `HH:MM-HH:MM`, the recipient-local hours voice calls may ring, for
    /// every category (default 08:00-21:00).
    pub calling_hours: Option<String>,
    pub quiet_hours_email: Option<bool>,
    /// Per channel, like `{"sms": {"per_second": 2, "per_day": 500}}`.
    pub limits: Option<serde_json::Value>,
    /// May a job fall back to the platform's account when the agent's own
    /// accounts refuse (off by default: the agent pays for its sends).
    pub allow_platform_fallback: Option<bool>,
}

impl AgentChanges {
    /// Checks every field; the error says which one is wrong and how.
    pub fn validate(self) -> Result<store::agents::AgentUpdate, String> {
        let mut update = store::agents::AgentUpdate {
            company_name: self.company_name,
            from_name: self.from_name,
            quiet_hours_email: self.quiet_hours_email,
            allow_platform_fallback: self.allow_platform_fallback,
            ..Default::default()
        };
        if let Some(tz) = self.timezone {
            tz.parse::<chrono_tz::Tz>()
                .map_err(|_| format!("`{tz}` is not an IANA time zone (like Europe/Paris)"))?;
            update.timezone = Some(tz);
        }
        let hours = |window: &str, what: &str| {
            let parse = |t: &str| chrono::NaiveTime::parse_from_str(t.trim(), "%H:%M");
            window
                .split_once('-')
                .and_then(|(s, e)| Some((parse(s).ok()?, parse(e).ok()?)))
                .ok_or_else(|| format!("{what} must look like 09:00-20:00"))
        };
        if let Some(window) = self.send_window {
            update.send_window = Some(hours(&window, "send window")?);
        }
        if let Some(window) = self.calling_hours {
            update.calling_hours = Some(hours(&window, "calling_hours")?);
        }
        if let Some(email) = self.reply_email {
            update.reply_email = Some(crate::domain::EmailAddress::parse(&email)?.to_string());
        }
        if let Some(limits) = self.limits {
            crate::policy::RateLimit::check_agent_limits(&limits)?;
            update.limits = Some(limits);
        }
        Ok(update)
    }
}

/// Validates and applies agent settings; returns the row as JSON.
pub async fn set_agent(settings: &Settings, a: AgentSettings) -> anyhow::Result<String> {
    let limits = a
        .limits
        .map(|l| serde_json::from_str(&l).context("--limits is not valid JSON"))
        .transpose()?;
    let update = AgentChanges {
        company_name: a.company_name,
        reply_email: a.reply_email,
        from_name: a.from_name,
        timezone: a.timezone,
        send_window: a.send_window,
        calling_hours: a.calling_hours,
        quiet_hours_email: a.quiet_hours_email,
        limits,
        allow_platform_fallback: a.allow_platform_fallback,
    }
    .validate()
    .map_err(|e| anyhow::anyhow!(e))?;
    migrate(settings).await?;
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    let row = store::agents::update(&client, a.agent.trim(), &update).await?;
    Ok(serde_json::to_string_pretty(&row)? + "\n")
}

pub async fn show_agent(settings: &Settings, agent: &str) -> anyhow::Result<String> {
    let pool = store::pool(&settings.database_url, 1)?;
    let client = pool.get().await?;
    match store::agents::get(&client, agent).await? {
        Some(row) => Ok(serde_json::to_string_pretty(&row)? + "\n"),
        None => anyhow::bail!(
            "no agent `{agent}` (agents are created by their first job or by `agents set`)"
        ),
    }
}
