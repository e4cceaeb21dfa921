//! `switchboard rotate-keys`: re-encrypts every integration's secrets under
//! the current key (README, "Rotating the encryption key"). Counts go to
//! stdout; progress per batch to stderr.

use anyhow::Context;
use clap::Args;

use crate::config::Settings;
use crate::keys::{self, DEFAULT_BATCH};
use crate::store;

#[derive(Debug, Args)]
pub struct RotateKeysArgs {
    /// Integrations read and rewritten per batch.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: i64,
    /// Print the counts as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs a pass; returns what to print, or an error (after the counts) when
/// some rows are not under the current key yet.
pub async fn run(settings: &Settings, args: RotateKeysArgs) -> anyhow::Result<String> {
    let keyring = settings.require_keyring()?;
    crate::app::migrate(settings).await?;
    let pool = store::pool(&settings.database_url, 1)?;
    let report = keys::rotate(&pool, keyring, args.batch_size, |so_far| {
        eprintln!("rotate-keys: {}", so_far.summary());
    })
    .await
    .context("re-encrypting integrations")?;
    let out = if args.json {
        serde_json::to_string(&report)? + "\n"
    } else {
        format!("rotate-keys: {}\n", report.summary())
    };
    if report.complete() {
        return Ok(out);
    }
    print!("{out}");
    let mut why: Vec<String> = report
        .unreadable
        .iter()
        .map(|(id, e)| format!("integration {id}: {e}"))
        .collect();
    why.extend(
        report
            .contended
            .iter()
            .map(|id| format!("integration {id}: kept changing during the pass; run again")),
    );
    anyhow::bail!(
        "not every integration is under key `{}` yet; keep the old keys until a rerun \
         reports none unreadable:\n{}",
        report.key_id,
        why.join("\n")
    )
}
