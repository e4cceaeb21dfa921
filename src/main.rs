//! The `switchboard` binary: parse the command line, load settings, run the
//! subcommand from the library, exit.

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::app::{self, IntegrationCommand, Parts, PolicyCommand};
use switchboard::config::{LogFormat, Settings};
use switchboard::domain::Channel;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Sends email, SMS, WhatsApp and voice for many agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations (safe to run any number of times).
    Migrate,
    /// Consume jobs from RabbitMQ and send them.
    Worker,
    /// Serve HTTP: /metrics, /healthz, /readyz.
    Serve,
    /// Worker and HTTP server in one process.
    Run,
    /// Publish jobs from a file (or `-` for stdin): one JSON object or an array.
    Enqueue {
        file: String,
        /// Publish even if a job does not validate (to exercise dead-lettering).
        #[arg(long)]
        no_validate: bool,
    },
    /// Connect, list, enable, disable or disconnect agents' provider accounts.
    Integrations {
        #[command(subcommand)]
        command: IntegrationsCli,
    },
    /// Add, list or remove opt-outs (suppressions).
    OptOuts {
        #[command(subcommand)]
        command: OptOutsCli,
    },
    /// Set or show an agent's time zone, send window, limits and branding.
    Agents {
        #[command(subcommand)]
        command: AgentsCli,
    },
    /// Create, list or revoke agent-scoped API tokens.
    Tokens {
        #[command(subcommand)]
        command: switchboard::cli::tokens::TokensCli,
    },
    /// An agent's messages by channel and status, cost and quota use (JSON).
    Usage(switchboard::cli::stats::UsageArgs),
    /// Campaign statistics per channel (JSON).
    Campaigns {
        #[command(subcommand)]
        command: switchboard::cli::stats::CampaignsCli,
    },
    /// Cancel campaign sequences.
    Sequences {
        #[command(subcommand)]
        command: SequencesCli,
    },
    /// List or replay the jobs in switchboard.dead.
    DeadLetters {
        #[command(subcommand)]
        command: switchboard::ops::DeadLettersCli,
    },
    /// Send failed jobs again once their cause is fixed.
    Messages {
        #[command(subcommand)]
        command: switchboard::ops::MessagesCli,
    },
}

#[derive(Subcommand)]
enum OptOutsCli {
    /// Stops messages to an address (for one agent, or with --platform for all).
    Add {
        #[arg(long, required_unless_present = "platform")]
        agent: Option<String>,
        /// Platform-wide (every agent); not with --agent.
        #[arg(long, conflicts_with = "agent")]
        platform: bool,
        #[arg(long)]
        channel: Channel,
        #[arg(long)]
        address: String,
        /// stop_keyword, unsubscribe, hard_bounce, complaint, manual, provider_rejected
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// An agent's opt-outs and the platform-wide ones.
    List {
        #[arg(long)]
        agent: String,
    },
    Remove {
        #[arg(long, required_unless_present = "platform")]
        agent: Option<String>,
        /// Platform-wide (every agent); not with --agent.
        #[arg(long, conflicts_with = "agent")]
        platform: bool,
        #[arg(long)]
        channel: Channel,
        #[arg(long)]
        address: String,
    },
}

#[derive(Subcommand)]
enum AgentsCli {
    /// Changes only what is given; creates the agent if needed.
    Set {
        #[arg(long)]
        agent: String,
        /// IANA zone, the fallback for recipients whose zone is unknown.
        #[arg(long)]
        timezone: Option<String>,
        /// Recipient-local window for marketing, like 09:00-20:00.
        #[arg(long)]
        send_window: Option<String>,
        /// Recipient-local hours voice calls may ring, for every category,
        /// like 09:00-20:00 (default 08:00-21:00, the US rule).
        #[arg(long)]
        calling_hours: Option<String>,
        /// Apply quiet hours to marketing email too.
        #[arg(long)]
        quiet_hours_email: Option<bool>,
        /// Let jobs fall back to the platform's account when every account
        /// of the agent's own refuses (revoked key, circuit open).
        #[arg(long)]
        allow_platform_fallback: Option<bool>,
        /// Per channel, like '{"sms": {"per_second": 2, "per_day": 500}}'.
        #[arg(long)]
        limits: Option<String>,
        #[arg(long)]
        company_name: Option<String>,
        #[arg(long)]
        reply_email: Option<String>,
        #[arg(long)]
        from_name: Option<String>,
    },
    Show {
        #[arg(long)]
        agent: String,
    },
}

#[derive(Subcommand)]
enum SequencesCli {
    /// Cancels a sequence's later steps (for one recipient with --to).
    Cancel {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        sequence: String,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum IntegrationsCli {
    Connect {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        channel: Channel,
        /// Optional when a key's shape names its provider (`SG.` sendgrid,
        /// `re_` resend, `key-` mailgun, `AC…` account SID twilio).
        #[arg(long)]
        provider: Option<String>,
        /// The provider's settings as a JSON object (docs/DESIGN.md lists the keys).
        #[arg(long)]
        settings: String,
        /// 0 (the default) is the channel's primary account; 1, 2, … are
        /// backups tried in that order when it cannot send.
        #[arg(long, default_value_t = 0, conflicts_with = "backup")]
        priority: i32,
        /// The same as `--priority 1`.
        #[arg(long)]
        backup: bool,
        /// Store the settings only if the provider accepts them in a
        /// connection test (as `integrations test` runs it).
        #[arg(long)]
        verify: bool,
    },
    /// Tests an integration's credentials with the provider's cheapest
    /// authenticated read and stores the verdict. Exit status: 0 verified,
    /// 1 refused, 75 could not tell (try again later).
    Test {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        channel: Channel,
        /// 0 (the default) is the primary account; 1, 2, … the backups.
        #[arg(long, default_value_t = 0)]
        priority: i32,
    },
    /// Lists an agent's integrations with secrets masked.
    List {
        #[arg(long)]
        agent: String,
    },
    Enable {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        channel: Channel,
    },
    Disable {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        channel: Channel,
    },
    Disconnect {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        channel: Channel,
    },
}

/// A connection test that did not pass: its verdict is printed already, so
/// only the exit status is left to give.
#[derive(Debug)]
struct Verdict(u8);

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the connection test did not pass")
    }
}

impl std::error::Error for Verdict {}

fn main() -> ExitCode {
    let format = match LogFormat::from_env() {
        Ok(format) => format,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::FAILURE;
        }
    };
    switchboard::logging::init(format);
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Verdict>() => {
            ExitCode::from(e.downcast_ref::<Verdict>().map_or(1, |v| v.0))
        }
        Err(e) => {
            switchboard::logging::fatal(format, &e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let start = |worker, http| {
        let settings = settings.clone();
        async move { app::start(settings, Parts { worker, http }, app::shutdown_on_signals()).await }
    };
    match cli.command {
        Command::Migrate => app::migrate(&settings).await,
        Command::Usage(args) => {
            print!("{}", switchboard::cli::stats::usage(&settings, args).await?);
            Ok(())
        }
        Command::Campaigns { command } => {
            print!(
                "{}",
                switchboard::cli::stats::campaigns(&settings, command).await?
            );
            Ok(())
        }
        Command::Tokens { command } => {
            print!(
                "{}",
                switchboard::cli::tokens::run(&settings, command).await?
            );
            Ok(())
        }
        Command::Worker => start(true, false).await,
        Command::Serve => start(false, true).await,
        Command::Run => start(true, true).await,
        Command::Enqueue { file, no_validate } => {
            let input = if file == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?
            };
            for id in app::enqueue(&settings, &input, !no_validate).await? {
                println!("{id}");
            }
            Ok(())
        }
        Command::Integrations { command } => {
            let command = match command {
                IntegrationsCli::Connect {
                    agent,
                    channel,
                    provider,
                    settings: raw,
                    priority,
                    backup,
                    verify,
                } => IntegrationCommand::Connect {
                    agent,
                    channel,
                    provider,
                    verify,
                    priority: if backup { 1 } else { priority },
                    settings: serde_json::from_str(&raw)
                        .map_err(|e| anyhow::anyhow!("--settings is not valid JSON: {e}"))?,
                },
                IntegrationsCli::List { agent } => IntegrationCommand::List { agent },
                IntegrationsCli::Enable { agent, channel } => {
                    IntegrationCommand::Enable { agent, channel }
                }
                IntegrationsCli::Disable { agent, channel } => {
                    IntegrationCommand::Disable { agent, channel }
                }
                IntegrationsCli::Disconnect { agent, channel } => {
                    IntegrationCommand::Disconnect { agent, channel }
                }
                IntegrationsCli::Test {
                    agent,
                    channel,
                    priority,
                } => {
                    let report =
                        app::test_integration(&settings, &agent, channel, priority).await?;
                    print!("{}", report.render());
                    return match report.exit_code() {
                        0 => Ok(()),
                        code => Err(Verdict(code).into()),
                    };
                }
            };
            print!("{}", app::integrations_command(&settings, command).await?);
            Ok(())
        }
        Command::OptOuts { command } => {
            let command = match command {
                OptOutsCli::Add {
                    agent,
                    platform,
                    channel,
                    address,
                    reason,
                } => PolicyCommand::OptOutAdd {
                    agent: agent.filter(|_| !platform),
                    channel,
                    address,
                    reason,
                },
                OptOutsCli::List { agent } => PolicyCommand::OptOutList { agent },
                OptOutsCli::Remove {
                    agent,
                    platform,
                    channel,
                    address,
                } => PolicyCommand::OptOutRemove {
                    agent: agent.filter(|_| !platform),
                    channel,
                    address,
                },
            };
            print!("{}", app::policy_command(&settings, command).await?);
            Ok(())
        }
        Command::Agents {
            command:
                AgentsCli::Set {
                    agent,
                    timezone,
                    send_window,
                    calling_hours,
                    quiet_hours_email,
                    allow_platform_fallback,
                    limits,
                    company_name,
                    reply_email,
                    from_name,
                },
        } => {
            let update = app::AgentSettings {
                agent,
                timezone,
                send_window,
                calling_hours,
                quiet_hours_email,
                allow_platform_fallback,
                limits,
                company_name,
                reply_email,
                from_name,
            };
            print!("{}", app::set_agent(&settings, update).await?);
            Ok(())
        }
        Command::Agents {
            command: AgentsCli::Show { agent },
        } => {
            print!("{}", app::show_agent(&settings, &agent).await?);
            Ok(())
        }
        Command::Sequences {
            command:
                SequencesCli::Cancel {
                    agent,
                    sequence,
                    to,
                },
        } => {
            let command = PolicyCommand::CancelSequence {
                agent,
                sequence,
                to,
            };
            print!("{}", app::policy_command(&settings, command).await?);
            Ok(())
        }
        Command::DeadLetters { command } => {
            switchboard::ops::dead_letters(&settings, command).await
        }
        Command::Messages { command } => switchboard::ops::messages(&settings, command).await,
    }
}
