//! The encryption keys against the stored secrets: the start-up check that
//! this process holds every key the `integrations` rows were written with,
//! and `switchboard rotate-keys`, which rewrites every row under the current
//! key (the first of `SWITCHBOARD_ENCRYPTION_KEYS`) in the current format.
//!
//! Rotation is safe while workers send and while operators edit
//! integrations: each row is rewritten with a compare-and-swap on the
//! ciphertext it read, so a concurrent change is never overwritten (the row
//! is read again instead), and a reader always sees a whole row, old or new,
//! which its keyring (holding the old and the new key) decrypts either way.
//! It is resumable: a rerun finds rows already current and leaves them.
//!
//! Plaintext exists only in memory between decrypting and re-encrypting;
//! nothing here logs or prints a secret or a key (key ids are fingerprints).

use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::crypto::{Format, Keyring, KeyringError};
use crate::integrations::binding;
use crate::store::{self, StoreError, integrations::IntegrationRow};

/// Rows read and rewritten per round trip: small, so that a pass over a
/// large table holds no long transaction and competes little with workers.
pub const DEFAULT_BATCH: i64 = 100;

/// A row changed under us this many times in a row is left for a rerun.
const MAX_ATTEMPTS: usize = 5;

/// Why the stored secrets cannot be used by this process; start-up stops.
#[derive(Debug, thiserror::Error)]
pub enum StartupKeyError {
    #[error(
        "refusing to start: integrations' secrets are encrypted with key {ids}, and neither \
         SWITCHBOARD_ENCRYPTION_KEYS nor SWITCHBOARD_ENCRYPTION_KEY is set; every job through \
         them would fail. Set the key(s) these rows were written with"
    )]
    NoKeyring { ids: String },
    #[error(
        "refusing to start: integration {integration} is encrypted with key `{missing}`, which \
         this process does not have (it has {have}); every job through such integrations would \
         fail. Add that key to SWITCHBOARD_ENCRYPTION_KEYS (after the current one while \
         rotating), or restore the key that was removed too early"
    )]
    MissingKey {
        missing: String,
        have: String,
        integration: Uuid,
    },
    #[error("checking the encryption keys against stored integrations: {0}")]
    Store(#[from] StoreError),
}

fn quoted<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    ids.map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decrypts one stored integration per key id it finds, so that a missing
/// or wrong key stops the process at start instead of failing every job
/// later. A row whose key is held but which does not decrypt (moved to
/// another agent, tampered with) is that row's problem, not the keyring's:
/// it is logged (its id, never its contents) and start-up continues.
pub async fn check_startup(pool: &Pool, keyring: Option<&Keyring>) -> Result<(), StartupKeyError> {
    let client = pool.get().await.map_err(StoreError::from)?;
    let rows = store::integrations::one_per_key(&client).await?;
    let Some(keyring) = keyring else {
        if rows.is_empty() {
            return Ok(());
        }
        let ids = quoted(
            rows.iter()
                .filter_map(|r| r.secrets.as_ref())
                .map(|s| s.0.as_str()),
        );
        return Err(StartupKeyError::NoKeyring { ids });
    };
    for row in &rows {
        let Some((key_id, blob)) = &row.secrets else {
            continue;
        };
        match keyring.decrypt(key_id, &binding(row), blob) {
            Ok(_) => {}
            Err(KeyringError::UnknownKey(missing)) => {
                return Err(StartupKeyError::MissingKey {
                    missing,
                    have: quoted(keyring.key_ids()),
                    integration: row.id,
                });
            }
            Err(e) => tracing::warn!(
                integration = %row.id,
                key_id = %key_id,
                error = %e,
                "an integration's secrets do not decrypt with the key that made them: \
                 the row was altered; reconnect it"
            ),
        }
    }
    Ok(())
}

/// What a `rotate-keys` pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RotationReport {
    /// The key every row is now under.
    pub key_id: String,
    /// Integrations with secrets looked at.
    pub scanned: u64,
    /// Rewritten from an older key.
    pub rekeyed: u64,
    /// Rewritten from the legacy format (bound to the integration id only)
    /// under the current key.
    pub upgraded: u64,
    /// Already under the current key and format: left alone.
    pub already_current: u64,
    /// Changed by someone else after being read: read again and handled.
    pub changed_meanwhile: u64,
    /// Deleted (or their secrets removed) during the pass.
    pub gone: u64,
    /// Rows that could not be decrypted: (integration id, why). Left as
    /// they are; the pass fails so that nobody removes an old key
    /// believing every row is under the new one.
    pub unreadable: Vec<(Uuid, String)>,
    /// Rows that kept changing under us; a rerun handles them.
    pub contended: Vec<Uuid>,
}

impl RotationReport {
    /// True when every row that holds secrets is now under the current key
    /// in the current format.
    pub fn complete(&self) -> bool {
        self.unreadable.is_empty() && self.contended.is_empty()
    }

    /// One line of counts, for people.
    pub fn summary(&self) -> String {
        format!(
            "{} integrations with secrets: {} re-encrypted from an older key, {} upgraded from the \
             legacy format, {} already under key `{}`, {} changed by someone else meanwhile \
             (re-read), {} deleted meanwhile, {} unreadable, {} still changing",
            self.scanned,
            self.rekeyed,
            self.upgraded,
            self.already_current,
            self.key_id,
            self.changed_meanwhile,
            self.gone,
            self.unreadable.len(),
            self.contended.len()
        )
    }
}

/// Rewrites every integration's secrets under the current key, `batch`
/// rows at a time; `progress` is called after each batch with the counts
/// so far.
pub async fn rotate(
    pool: &Pool,
    keyring: &Keyring,
    batch: i64,
    mut progress: impl FnMut(&RotationReport),
) -> Result<RotationReport, StoreError> {
    let client = pool.get().await?;
    let mut report = RotationReport::new(keyring);
    let mut after = Uuid::nil();
    while let Some(next) = rotate_batch(&client, keyring, after, batch, &mut report).await? {
        after = next;
        progress(&report);
    }
    Ok(report)
}

impl RotationReport {
    /// Nothing counted yet, for a pass to `keyring`'s current key.
    pub fn new(keyring: &Keyring) -> Self {
        Self {
            key_id: keyring.current_key_id().to_string(),
            ..Default::default()
        }
    }
}

/// One batch of a pass: up to `batch` rows with ids after `after` (start
/// with `Uuid::nil()`). Returns the id to continue after, or `None` when no
/// rows were left.
pub async fn rotate_batch(
    client: &deadpool_postgres::Client,
    keyring: &Keyring,
    after: Uuid,
    batch: i64,
    report: &mut RotationReport,
) -> Result<Option<Uuid>, StoreError> {
    let rows =
        store::integrations::page_with_secrets(client, after, batch.clamp(1, 10_000)).await?;
    let Some(last) = rows.last().map(|r| r.id) else {
        return Ok(None);
    };
    for row in rows {
        report.scanned += 1;
        rotate_row(client, keyring, row, report).await?;
    }
    Ok(Some(last))
}

async fn rotate_row(
    client: &deadpool_postgres::Client,
    keyring: &Keyring,
    mut row: IntegrationRow,
    report: &mut RotationReport,
) -> Result<(), StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let Some((key_id, blob)) = &row.secrets else {
            report.gone += 1;
            return Ok(());
        };
        let opened = match keyring.open(key_id, &binding(&row), blob) {
            Ok(o) => o,
            Err(e) => {
                report.unreadable.push((row.id, e.to_string()));
                return Ok(());
            }
        };
        if opened.current {
            report.already_current += 1;
            return Ok(());
        }
        let (new_key_id, new_blob) = keyring.encrypt(&binding(&row), &opened.plaintext);
        if store::integrations::replace_secrets(client, &row, &new_key_id, &new_blob).await? {
            if opened.format == Format::Legacy {
                report.upgraded += 1;
            } else {
                report.rekeyed += 1;
            }
            return Ok(());
        }
        // Someone rewrote the row since we read it: read it again, since
        // what they wrote may be under an old key too.
        report.changed_meanwhile += 1;
        match store::integrations::get(client, row.id).await? {
            Some(fresh) => row = fresh,
            None => {
                report.gone += 1;
                return Ok(());
            }
        }
    }
    report.contended.push(row.id);
    Ok(())
}
