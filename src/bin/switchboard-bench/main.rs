//! `switchboard-bench`: how fast switchboard moves jobs on this machine, and
//! against what ceiling.
//!
//! ```text
//! cargo run --release --bin switchboard-bench -- --jobs 20000 --agents 100 --latency-ms 100 \
//!     [--rate 1000] [--mix pure|realistic] [--worker-env KEY=VALUE]…
//! ```
//!
//! In one run it (1) starts a local mock provider (Twilio-, Resend-,
//! SendGrid-, Mailgun- and Postmark-shaped) answering after `--latency-ms`; (2) measures the raw RabbitMQ ceiling:
//! publish → consume → ack of the same number of messages of the same size,
//! with no work; (3) publishes the jobs of `--mix` (`mix.rs`) over
//! `--agents` agents (half with their own integration, half on the platform
//! account; SMS and email mixed), runs the real worker in a child process, and waits until every
//! job is recorded in Postgres; (4) prints one JSON line. It makes its own
//! database and vhost and removes them, so it can run beside a running
//! switchboard.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::json;
use uuid::Uuid;

mod mix;
mod mock;

use mix::Mix;
use mock::MockProvider;

#[derive(Parser, Debug)]
#[command(about = "Measures switchboard's throughput and latency against the raw AMQP ceiling")]
struct Args {
    /// Jobs to send.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Agents the jobs are spread over.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Mock provider response time.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Publish this many jobs per second, steadily; default: as fast as possible.
    #[arg(long)]
    rate: Option<u64>,
    /// The worker's prefetch (jobs in flight).
    #[arg(long, default_value_t = switchboard::config::DEFAULT_PREFETCH)]
    prefetch: u16,
    /// The worker's Postgres pool size.
    #[arg(long, default_value_t = 32)]
    db_pool: usize,
    /// Postgres to create the benchmark database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_admin_url: String,
    /// RabbitMQ host:port (guest/guest); a vhost is made with rabbitmqctl.
    #[arg(long, default_value = "127.0.0.1:5672")]
    amqp_host: String,
    /// Worker processes consuming the one queue (each with `--prefetch`).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Leave agent rows to be created by their first job (measures first use).
    #[arg(long)]
    new_agents: bool,
    /// What the jobs are: `pure` (transactional, no limits: the bare path)
    /// or `realistic` (marketing in recipients' zones, limits, suppression
    /// hits, five providers, 1 % transient errors).
    #[arg(long, value_enum, default_value_t = Mix::Pure)]
    mix: Mix,
    /// A worker environment variable, `KEY=VALUE` (repeatable), to compare
    /// settings. The worker otherwise starts with only the benchmark's own
    /// wiring, whatever the calling shell exports.
    #[arg(long = "worker-env", value_parser = key_value)]
    worker_env: Vec<(String, String)>,
    /// Internal: run as the worker child process.
    #[arg(long, hide = true)]
    worker_child: bool,
}

fn key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{raw}` is not KEY=VALUE"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if args.worker_child {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .init();
        return runtime.block_on(async {
            let settings = switchboard::config::Settings::from_env()?;
            switchboard::app::start(
                settings,
                switchboard::app::Parts {
                    worker: true,
                    http: false,
                },
                switchboard::app::shutdown_on_signals(),
            )
            .await
        });
    }
    runtime.block_on(bench(args))
}

const PLATFORM_SID: &str = "AC99999999999999999999999999999999";

async fn bench(args: Args) -> anyhow::Result<()> {
    let env = BenchEnv::create(&args).await?;
    let result = run(&args, &env).await;
    env.remove().await;
    let line = result?;
    println!("{line}");
    Ok(())
}

async fn run(args: &Args, env: &BenchEnv) -> anyhow::Result<serde_json::Value> {
    let fail_every = match args.mix {
        Mix::Pure => 0,
        Mix::Realistic => 100,
    };
    let provider = mock::start(Duration::from_millis(args.latency_ms), fail_every).await?;
    let jobs = mix::make_jobs(args.mix, args.jobs, args.agents, Utc::now());
    let body_size = jobs[0].to_string().len();

    let rabbitmq = rabbitmq_pid();
    let rabbitmq_cpu = || rabbitmq.and_then(cpu_seconds).unwrap_or(f64::NAN);
    let machine_cpu = || machine_busy_seconds().unwrap_or(f64::NAN);
    let ceiling_cpu_before = rabbitmq_cpu();
    let ceiling_machine_before = machine_cpu();
    let ceiling = amqp_ceiling(
        &env.amqp_url,
        args.jobs,
        body_size,
        args.prefetch,
        Ceiling::KeepingUp,
    )
    .await?;
    let ceiling_rabbitmq_cpu_s = rabbitmq_cpu() - ceiling_cpu_before;
    let ceiling_machine_cpu_s = machine_cpu() - ceiling_machine_before;
    eprintln!(
        "raw AMQP ceiling: {ceiling:.0} msgs/s ({} messages of {body_size} bytes)",
        args.jobs
    );
    let backlog_cpu_before = rabbitmq_cpu();
    let backlog_machine_before = machine_cpu();
    let backlog_ceiling = amqp_ceiling(
        &env.amqp_url,
        args.jobs,
        body_size,
        args.prefetch,
        Ceiling::Backlog,
    )
    .await?;
    let backlog_rabbitmq_cpu_s = rabbitmq_cpu() - backlog_cpu_before;
    let backlog_machine_cpu_s = machine_cpu() - backlog_machine_before;
    eprintln!("raw AMQP ceiling with the queue backed up: {backlog_ceiling:.0} msgs/s");

    {
        let settings = settings_for(env, &provider, args)?;
        let pool = switchboard::store::pool(&env.db_url, 4)?;
        let registry = switchboard::providers::Registry::new(
            switchboard::providers::http_client(settings.provider_timeout),
            &settings.provider_urls,
        );
        let keyring = settings.keyring.as_ref().context("bench key")?;
        mix::prepare_agents(
            args.mix,
            args.agents,
            &pool,
            keyring,
            &registry,
            !args.new_agents,
        )
        .await?;
    }
    let pool = switchboard::store::pool(&env.db_url, 2)?;
    let client = pool.get().await?;
    let commits_before = commits(&client).await?;
    let run_cpu_before = rabbitmq_cpu();
    let own_cpu = || cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let own_cpu_before = own_cpu();
    let run_machine_before = machine_cpu();
    let mut workers = (0..args.workers.max(1))
        .map(|_| spawn_worker(args, env, &provider))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let conn = switchboard::amqp::connect(&env.amqp_url, "bench-publisher").await?;
    switchboard::amqp::declare_topology(&conn).await?;
    let channel = switchboard::amqp::confirm_channel(&conn).await?;
    let started = Instant::now();
    let published_at = publish_jobs(&channel, &jobs, args.rate).await?;
    eprintln!(
        "published {} jobs in {:.2}s",
        jobs.len(),
        started.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done: i64 = client
            .query_one(
                "SELECT count(*) FROM outbound_messages
                  WHERE status NOT IN ('queued', 'scheduled', 'deferred')",
                &[],
            )
            .await?
            .get(0);
        if done as usize >= jobs.len() {
            break;
        }
        for worker in &mut workers {
            if let Ok(Some(status)) = worker.try_wait() {
                bail!("a worker exited early: {status}");
            }
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {} jobs recorded after 30 minutes",
                jobs.len()
            );
        }
        // The count is a scan of the table: polling more often than this
        // would take CPU from the run it measures (the rates come from
        // updated_at, not from when the poll noticed).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Peak RSS of the largest worker; CPU of all of them.
    let peak_rss_mb = workers
        .iter()
        .filter_map(|w| peak_rss_mb(w.id()))
        .fold(-1.0, f64::max);
    let worker_cpu_s: f64 = workers
        .iter()
        .map(|w| cpu_seconds(w.id()).unwrap_or(0.0))
        .sum();
    let run_rabbitmq_cpu_s = rabbitmq_cpu() - run_cpu_before;
    let publisher_and_mock_cpu_s = own_cpu() - own_cpu_before;
    let run_machine_cpu_s = machine_cpu() - run_machine_before;
    // The Postgres backends serving the worker, read before they exit.
    let backends = client
        .query(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await?;
    let postgres_cpu_s: f64 = backends
        .iter()
        .filter_map(|r| cpu_seconds(r.get::<_, i32>(0) as u32))
        .sum();
    for worker in &mut workers {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status();
    }
    for worker in &mut workers {
        let _ = worker.wait();
    }
    // Backends report their counts when they exit; give that a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commits_after = commits(&client).await?;

    let rows = client
        .query("SELECT id, status, updated_at FROM outbound_messages", &[])
        .await?;
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &rows {
        *outcomes.entry(r.get::<_, String>(1)).or_default() += 1;
    }
    let failed = outcomes.get("failed").copied().unwrap_or(0);
    let mut latencies: Vec<f64> = Vec::with_capacity(rows.len());
    let mut last_recorded = *published_at.values().next().context("no jobs")?;
    for r in &rows {
        let id: Uuid = r.get(0);
        let recorded: DateTime<Utc> = r.get(2);
        last_recorded = last_recorded.max(recorded);
        if let Some(sent) = published_at.get(&id) {
            latencies.push((recorded - *sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let first_published = published_at.values().min().copied().context("no jobs")?;
    let elapsed = (last_recorded - first_published)
        .num_microseconds()
        .unwrap_or(1) as f64
        / 1e6;
    let msgs_per_s = jobs.len() as f64 / elapsed;
    let served = provider.served.load(Ordering::Relaxed);
    Ok(json!({
        "mix": format!("{:?}", args.mix).to_lowercase(),
        "jobs": jobs.len(),
        "agents": args.agents,
        "latency_ms": args.latency_ms,
        "rate": args.rate,
        "prefetch": args.prefetch,
        "workers": args.workers.max(1),
        "msgs_per_s": round(msgs_per_s),
        "p50_ms": round(percentile(&latencies, 0.50)),
        "p99_ms": round(percentile(&latencies, 0.99)),
        "max_ms": round(latencies.last().copied().unwrap_or(0.0)),
        "peak_rss_mb": round(peak_rss_mb),
        // The worker's own CPU (user + system) per job: steadier than
        // msgs_per_s, which moves with everything else on the machine.
        "worker_cpu_us_per_job": (worker_cpu_s * 1e6 / jobs.len() as f64).round(),
        // Postgres backends' CPU per job, and transactions per job (2 per
        // job without batching; the batcher's rows per statement follow).
        "postgres_cpu_us_per_job": (postgres_cpu_s * 1e6 / jobs.len() as f64).round(),
        "db_commits_per_job": ((commits_after - commits_before) as f64 / jobs.len() as f64 * 1000.0).round() / 1000.0,
        // RabbitMQ's own CPU per message, in the ceiling and in this run
        // (the broker serves the whole machine, so other users add to it).
        "rabbitmq_cpu_us_per_job": (run_rabbitmq_cpu_s * 1e6 / jobs.len() as f64).round(),
        // This process during the run: the publisher and the mock provider.
        "publisher_and_mock_cpu_us_per_job": (publisher_and_mock_cpu_s * 1e6 / jobs.len() as f64).round(),
        "amqp_ceiling_rabbitmq_cpu_us_per_msg": (ceiling_rabbitmq_cpu_s * 1e6 / jobs.len() as f64).round(),
        // All the machine's CPU per job (every process and the kernel): on a
        // machine where everything shares the cores, the throughput ratio
        // follows the ratio of these.
        "machine_cpu_us_per_job": (run_machine_cpu_s * 1e6 / jobs.len() as f64).round(),
        "amqp_ceiling_machine_cpu_us_per_msg": (ceiling_machine_cpu_s * 1e6 / jobs.len() as f64).round(),
        "amqp_backlog_ceiling_machine_cpu_us_per_msg": (backlog_machine_cpu_s * 1e6 / jobs.len() as f64).round(),
        "amqp_ceiling_msgs_per_s": round(ceiling),
        "ratio": (msgs_per_s / ceiling * 1000.0).round() / 1000.0,
        // The same raw publish → consume → ack, but with every message
        // queued before the first is consumed: what RabbitMQ alone manages
        // when its queue is backed up, as it is in this run whenever the
        // worker is slower than the publisher.
        "amqp_backlog_ceiling_msgs_per_s": round(backlog_ceiling),
        "amqp_backlog_ceiling_rabbitmq_cpu_us_per_msg": (backlog_rabbitmq_cpu_s * 1e6 / jobs.len() as f64).round(),
        "ratio_to_backlog_ceiling": (msgs_per_s / backlog_ceiling * 1000.0).round() / 1000.0,
        "failed": failed,
        "outcomes": outcomes,
        "provider_requests": served,
    }))
}

/// The local RabbitMQ node's process (the Erlang VM), if there is one.
fn rabbitmq_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            (comm.trim() == "beam.smp" && cmdline.contains("rabbit")).then_some(pid)
        })
}

/// Transactions committed in the bench's database so far.
async fn commits(client: &deadpool_postgres::Client) -> anyhow::Result<i64> {
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .try_get(0)
        .context("pg_stat_database.xact_commit")
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The worker's peak resident set (VmHWM), read before it exits.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The worker's CPU time so far (utime + stime from /proc, in clock ticks
/// of 1/100 s, Linux's USER_HZ).
/// CPU seconds the whole machine has been busy (every core, every process,
/// the kernel included), from the first line of /proc/stat.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy / 100.0)
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

struct BenchEnv {
    db_name: String,
    db_url: String,
    pg_admin_url: String,
    vhost: String,
    amqp_url: String,
}

impl BenchEnv {
    async fn create(args: &Args) -> anyhow::Result<Self> {
        let tag = Uuid::new_v4().simple().to_string();
        let db_name = format!("sb_bench_{tag}");
        let (admin, conn) = tokio_postgres::connect(&args.pg_admin_url, tokio_postgres::NoTls)
            .await
            .context("connecting to Postgres")?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await?;
        let mut admin_url = url::Url::parse(&args.pg_admin_url)?;
        admin_url.set_path(&db_name);
        let db_url = admin_url.to_string();
        switchboard::store::migrate(&db_url).await?;
        let vhost = format!("sb-bench-{tag}");
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        let amqp_url = format!("amqp://guest:guest@{}/{vhost}", args.amqp_host);
        Ok(Self {
            db_name,
            db_url,
            pg_admin_url: args.pg_admin_url.clone(),
            vhost,
            amqp_url,
        })
    }

    async fn remove(&self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
        if let Ok((admin, conn)) =
            tokio_postgres::connect(&self.pg_admin_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.db_name
                ))
                .await;
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("running rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The worker's environment: the benchmark's own wiring, plus only what
/// `--worker-env` adds (the worker starts with a clean environment, so a
/// `SWITCHBOARD_*` variable left in the calling shell cannot skew a run).
fn worker_env(env: &BenchEnv, provider: &MockProvider, args: &Args) -> HashMap<String, String> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let wiring = [
        ("DATABASE_URL", env.db_url.clone()),
        ("AMQP_URL", env.amqp_url.clone()),
        ("SWITCHBOARD_ENCRYPTION_KEY", key),
        ("SWITCHBOARD_TWILIO_BASE_URL", provider.url.clone()),
        ("SWITCHBOARD_RESEND_BASE_URL", provider.url.clone()),
        ("SWITCHBOARD_SENDGRID_BASE_URL", provider.url.clone()),
        ("SWITCHBOARD_MAILGUN_BASE_URL", provider.url.clone()),
        ("SWITCHBOARD_POSTMARK_BASE_URL", provider.url.clone()),
        ("TWILIO_ACCOUNT_SID", PLATFORM_SID.into()),
        ("TWILIO_AUTH_TOKEN", "platform-token".into()),
        ("TWILIO_PHONE_NUMBER", "+14155550000".into()),
        ("RESEND_API_KEY", "re_platform".into()),
        ("EMAIL_FROM", "Platform <no-reply@bench.test>".into()),
        ("SWITCHBOARD_PREFETCH", args.prefetch.to_string()),
        ("SWITCHBOARD_DB_POOL_SIZE", args.db_pool.to_string()),
        ("SWITCHBOARD_PROVIDER_TIMEOUT_MS", "60000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v));
    wiring.chain(args.worker_env.iter().cloned()).collect()
}

fn settings_for(
    env: &BenchEnv,
    provider: &MockProvider,
    args: &Args,
) -> anyhow::Result<switchboard::config::Settings> {
    let vars = worker_env(env, provider, args);
    Ok(switchboard::config::Settings::from_lookup(|k| {
        vars.get(k).cloned()
    })?)
}

fn spawn_worker(
    args: &Args,
    env: &BenchEnv,
    provider: &MockProvider,
) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    Ok(std::process::Command::new(exe)
        .arg("--worker-child")
        .env_clear()
        .envs(worker_env(env, provider, args))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// Publishes every job, pipelining confirms (waiting for them in batches),
/// steadily at `rate` per second when given. Returns each job's publish time.
async fn publish_jobs(
    channel: &lapin::Channel,
    jobs: &[serde_json::Value],
    rate: Option<u64>,
) -> anyhow::Result<HashMap<Uuid, DateTime<Utc>>> {
    let mut published_at = HashMap::with_capacity(jobs.len());
    let mut pending = Vec::new();
    let tick = Duration::from_millis(10);
    let per_tick = rate.map(|r| (r as f64 * tick.as_secs_f64()).max(1.0) as usize);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for chunk in jobs.chunks(per_tick.unwrap_or(500)) {
        if per_tick.is_some() {
            interval.tick().await;
        }
        for job in chunk {
            let id: Uuid = serde_json::from_value(job["id"].clone())?;
            let agent = job["agent_id"].as_str().unwrap_or_default();
            published_at.insert(id, Utc::now());
            let confirm = channel
                .basic_publish(
                    switchboard::amqp::JOBS_EXCHANGE.into(),
                    agent.into(),
                    BasicPublishOptions::default(),
                    job.to_string().as_bytes(),
                    switchboard::amqp::job_properties(id),
                )
                .await?;
            pending.push(confirm);
        }
        if pending.len() >= 500 || per_tick.is_some() {
            switchboard::amqp::await_confirms(pending.drain(..)).await?;
        }
    }
    switchboard::amqp::await_confirms(pending).await?;
    Ok(published_at)
}

/// How the ceiling's consumer runs relative to its publisher.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ceiling {
    /// Consuming while publishing: the consumer keeps up, so RabbitMQ can
    /// hand most messages on (and drop them at the ack) before it has
    /// written them to disk.
    KeepingUp,
    /// Publishing everything first, then consuming: the queue holds all `n`
    /// messages, as it does whenever consumers are slower than publishers.
    /// RabbitMQ then writes, keeps and garbage-collects them all, which costs
    /// it more CPU per message.
    Backlog,
}

/// Raw RabbitMQ: publish `n` messages of `size` bytes with confirms to a
/// queue and consume them with manual acks and the same prefetch, doing no
/// work. Returns messages per second, first publish to last ack.
async fn amqp_ceiling(
    url: &str,
    n: usize,
    size: usize,
    prefetch: u16,
    mode: Ceiling,
) -> anyhow::Result<f64> {
    let conn = switchboard::amqp::connect(url, "bench-ceiling").await?;
    let queue = format!("bench.ceiling.{}", Uuid::new_v4().simple());
    let consume_channel = conn.create_channel().await?;
    consume_channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    consume_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publish_channel = switchboard::amqp::confirm_channel(&conn).await?;
    let body = vec![b'x'; size];
    let published = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let consume = {
        let published = published.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            if mode == Ceiling::Backlog {
                published.notified().await;
            }
            let mut consumer = consume_channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let mut seen = 0;
            while seen < n {
                match consumer.next().await {
                    Some(Ok(d)) => {
                        d.ack(BasicAckOptions::default()).await?;
                        seen += 1;
                    }
                    Some(Err(e)) => return Err(anyhow::Error::from(e)),
                    None => bail!("consumer ended"),
                }
            }
            Ok(Instant::now())
        })
    };
    let mut pending = Vec::new();
    for _ in 0..n {
        let confirm = publish_channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                switchboard::amqp::job_properties(Uuid::new_v4()),
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= 500 {
            switchboard::amqp::await_confirms(pending.drain(..)).await?;
        }
    }
    switchboard::amqp::await_confirms(pending).await?;
    // A stored permit: the consumer proceeds even if it is not waiting yet.
    published.notify_one();
    let finished = consume.await??;
    let _ = publish_channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    Ok(n as f64 / (finished - started).as_secs_f64())
}
