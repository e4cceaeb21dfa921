//! Encryption of integration secrets at rest (AES-256-GCM).
//!
//! Each write uses a fresh random 96-bit nonce, stored in front of the
//! ciphertext. The row's identity (integration id, agent id and channel) is
//! bound in as associated data, so a ciphertext copied onto another
//! integration's row, or a row moved to another agent or channel, fails to
//! decrypt instead of handing one agent's credentials to another. Every
//! ciphertext records the id of the key that made it, so that during a
//! rotation old rows decrypt with an old key while new rows are written with
//! the new one (`SWITCHBOARD_ENCRYPTION_KEYS`: the first key encrypts, every
//! key decrypts; `switchboard rotate-keys` rewrites rows under the first).
//!
//! Two ciphertext formats exist. Version 2 (written now) is
//! `"sbv2" || nonce || ciphertext` with the associated data of
//! [`SecretBinding`]. Legacy rows (written before the version marker) are
//! `nonce || ciphertext` bound to the integration id alone; they still
//! decrypt, and `rotate-keys` rewrites them as version 2.
//!
//! This module never logs, and its errors never contain plaintext or keys
//! (a key id is a 4-byte fingerprint: it names a key without revealing it).

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const NONCE_LEN: usize = 12;
/// Starts every version-2 ciphertext. A legacy ciphertext starts with its
/// random nonce instead, so about one legacy row in 2^32 starts with these
/// bytes by chance: for such a row the version-2 reading fails
/// authentication and the legacy reading is tried, so it still decrypts
/// (AES-GCM authenticates, so a wrong reading can fail but never yield
/// wrong plaintext).
const V2_HEADER: &[u8; 4] = b"sbv2";
/// Prefixes version 2's associated data, so it can never equal a legacy
/// one (16 bytes of integration id) or another use of the same key.
const V2_AAD_DOMAIN: &[u8] = b"switchboard/integration-secrets/v2\0";

/// The variable holding the single key (the original setting).
pub const KEY_VAR: &str = "SWITCHBOARD_ENCRYPTION_KEY";
/// The variable holding the key list used for rotation.
pub const KEYS_VAR: &str = "SWITCHBOARD_ENCRYPTION_KEYS";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "SWITCHBOARD_ENCRYPTION_KEY is not set, nor SWITCHBOARD_ENCRYPTION_KEYS: a key is the \
         base64 of 32 random bytes (for example `head -c 32 /dev/urandom | base64`)"
    )]
    Missing,
    /// `what` names the variable (and the entry of a list).
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: &'static str },
    #[error(
        "SWITCHBOARD_ENCRYPTION_KEY (key `{single}`) differs from the first entry of \
         SWITCHBOARD_ENCRYPTION_KEYS (key `{first}`), so which key encrypts is ambiguous: \
         unset SWITCHBOARD_ENCRYPTION_KEY (the list is enough) or make it the list's first entry"
    )]
    Disagree { single: String, first: String },
    #[error(
        "secrets were encrypted with key `{0}`, which this process does not have \
         (add it to SWITCHBOARD_ENCRYPTION_KEYS)"
    )]
    UnknownKey(String),
    #[error("stored secrets could not be decrypted (wrong key or tampered row)")]
    Undecryptable,
}

/// What a ciphertext is bound to: the row it belongs to. Decrypting with
/// any other binding fails.
#[derive(Debug, Clone, Copy)]
pub struct SecretBinding<'a> {
    pub integration_id: Uuid,
    pub agent_id: &'a str,
    pub channel: &'a str,
}

impl SecretBinding<'_> {
    /// Version 2's associated data. Each variable-length part is
    /// length-prefixed so that no two bindings encode alike (agent `a:b`
    /// with channel `c` is not agent `a` with channel `b:c`).
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            V2_AAD_DOMAIN.len() + 16 + 8 + self.agent_id.len() + self.channel.len(),
        );
        aad.extend_from_slice(V2_AAD_DOMAIN);
        aad.extend_from_slice(self.integration_id.as_bytes());
        for part in [self.agent_id, self.channel] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Which format a ciphertext was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Bound to the integration id only, no version marker.
    Legacy,
    /// `"sbv2" || nonce || ciphertext`, bound to [`SecretBinding`].
    V2,
}

/// A decrypted secret, and whether its row should be rewritten.
pub struct Opened {
    pub plaintext: Vec<u8>,
    pub format: Format,
    /// Written under the current key in the current format: nothing for
    /// `rotate-keys` to do.
    pub current: bool,
}

#[derive(Clone)]
struct NamedKey {
    id: String,
    cipher: Aes256Gcm,
    /// Kept only to tell two variables' keys apart when both are set.
    fingerprint: [u8; 32],
}

/// The keys this process can use: the first encrypts, all decrypt.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<NamedKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn parse_key(encoded: &str, what: impl Fn() -> String) -> Result<NamedKey, KeyringError> {
    let malformed = |reason| KeyringError::Malformed {
        what: what(),
        reason,
    };
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|_| malformed("not valid base64"))?;
    if bytes.len() != 32 {
        return Err(malformed("must decode to exactly 32 bytes"));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&Sha256::digest(&bytes));
    // The id is a short fingerprint: it names the key without revealing it.
    let id = hex::encode(&digest[..4]);
    let key = Key::<Aes256Gcm>::try_from(bytes.as_slice())
        .map_err(|_| malformed("must decode to exactly 32 bytes"))?;
    Ok(NamedKey {
        id,
        cipher: Aes256Gcm::new(&key),
        fingerprint: digest,
    })
}

impl Keyring {
    /// One key, as `SWITCHBOARD_ENCRYPTION_KEY` holds it.
    pub fn from_base64(encoded: &str) -> Result<Self, KeyringError> {
        if encoded.trim().is_empty() {
            return Err(KeyringError::Missing);
        }
        let key = parse_key(encoded, || KEY_VAR.to_string())?;
        Ok(Self { keys: vec![key] })
    }

    /// The keyring from the two variables' values (`None` or blank: unset).
    /// `Ok(None)` when neither is set: commands that need no key still run.
    ///
    /// When both are set they must agree on the key that encrypts (the
    /// single key is the list's first): an operator who added the list and
    /// left the old variable behind would otherwise not know which key new
    /// rows are written under.
    pub fn from_env_values(
        single: Option<&str>,
        list: Option<&str>,
    ) -> Result<Option<Self>, KeyringError> {
        let single = single.map(str::trim).filter(|s| !s.is_empty());
        let list = list.map(str::trim).filter(|s| !s.is_empty());
        let Some(list) = list else {
            return single.map(Self::from_base64).transpose();
        };
        let mut keys: Vec<NamedKey> = Vec::new();
        for (i, entry) in list.split(',').enumerate() {
            let what = || format!("{KEYS_VAR} (entry {})", i + 1);
            if entry.trim().is_empty() {
                return Err(KeyringError::Malformed {
                    what: what(),
                    reason: "is empty (the list is comma-separated base64 keys)",
                });
            }
            let key = parse_key(entry, what)?;
            match keys.iter().find(|k| k.id == key.id) {
                // The same key twice is harmless: keep the first place.
                Some(k) if k.fingerprint == key.fingerprint => {}
                Some(_) => {
                    return Err(KeyringError::Malformed {
                        what: what(),
                        reason: "shares its key id with an earlier entry; generate another key",
                    });
                }
                None => keys.push(key),
            }
        }
        if let Some(single) = single {
            let single = parse_key(single, || KEY_VAR.to_string())?;
            if single.fingerprint != keys[0].fingerprint {
                return Err(KeyringError::Disagree {
                    single: single.id,
                    first: keys[0].id.clone(),
                });
            }
        }
        Ok(Some(Self { keys }))
    }

    /// The id of the key that encrypts.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Every key id, the current one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// Encrypts `plaintext` bound to `binding` under the current key, in
    /// the current format. Returns the key id and the ciphertext.
    pub fn encrypt(&self, binding: &SecretBinding<'_>, plaintext: &[u8]) -> (String, Vec<u8>) {
        let key = &self.keys[0];
        let nonce = Nonce::generate();
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &binding.aad(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(V2_HEADER.len() + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(V2_HEADER);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ciphertext);
        (key.id.clone(), out)
    }

    /// Decrypts a ciphertext written by [`Keyring::encrypt`] (or in the
    /// legacy format) for the row `binding` names.
    pub fn decrypt(
        &self,
        key_id: &str,
        binding: &SecretBinding<'_>,
        blob: &[u8],
    ) -> Result<Vec<u8>, KeyringError> {
        self.open(key_id, binding, blob).map(|o| o.plaintext)
    }

    /// Like [`Keyring::decrypt`], saying also which format the ciphertext
    /// was in and whether it is current.
    pub fn open(
        &self,
        key_id: &str,
        binding: &SecretBinding<'_>,
        blob: &[u8],
    ) -> Result<Opened, KeyringError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| KeyringError::UnknownKey(key_id.to_string()))?;
        let opened = |plaintext: Vec<u8>, format: Format| Opened {
            plaintext,
            format,
            current: format == Format::V2 && key_id == self.current_key_id(),
        };
        if let Some(rest) = blob.strip_prefix(V2_HEADER.as_slice())
            && let Some(plaintext) = open_with(&key.cipher, &binding.aad(), rest)
        {
            return Ok(opened(plaintext, Format::V2));
        }
        open_with(&key.cipher, binding.integration_id.as_bytes(), blob)
            .map(|plaintext| opened(plaintext, Format::Legacy))
            .ok_or(KeyringError::Undecryptable)
    }
}

/// `nonce || ciphertext` opened with `aad`; `None` when it does not
/// authenticate.
fn open_with(cipher: &Aes256Gcm, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
    if blob.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    let nonce = Nonce::try_from(nonce).ok()?;
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(byte: u8) -> String {
        BASE64.encode([byte; 32])
    }

    fn key(byte: u8) -> Keyring {
        Keyring::from_base64(&b64(byte)).unwrap()
    }

    fn ring(list: &str) -> Keyring {
        Keyring::from_env_values(None, Some(list)).unwrap().unwrap()
    }

    const ID: Uuid = Uuid::from_u128(0x1234);

    fn binding<'a>(agent: &'a str, channel: &'a str) -> SecretBinding<'a> {
        SecretBinding {
            integration_id: ID,
            agent_id: agent,
            channel,
        }
    }

    /// A ciphertext as this module wrote it before the version marker: the
    /// integration id as the only associated data.
    fn legacy(byte: u8, id: Uuid, plaintext: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::try_from([byte; 32].as_slice()).unwrap());
        let nonce = Nonce::generate();
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: id.as_bytes(),
                },
            )
            .unwrap();
        [nonce.as_slice(), ct.as_slice()].concat()
    }

    #[test]
    fn round_trips_with_a_fresh_nonce_each_time() {
        let k = key(7);
        let b = binding("agent-a", "sms");
        let (id, one) = k.encrypt(&b, b"secret");
        let (_, two) = k.encrypt(&b, b"secret");
        assert_ne!(one, two, "nonces must differ");
        assert!(!one.windows(6).any(|w| w == b"secret"));
        assert!(one.starts_with(V2_HEADER));
        let opened = k.open(&id, &b, &one).unwrap();
        assert_eq!(opened.plaintext, b"secret");
        assert_eq!(opened.format, Format::V2);
        assert!(opened.current);
    }

    #[test]
    fn a_row_moved_to_another_agent_channel_or_id_does_not_decrypt() {
        let k = key(7);
        let (id, blob) = k.encrypt(&binding("agent-a", "sms"), b"secret");
        for other in [
            binding("agent-b", "sms"),
            binding("agent-a", "email"),
            SecretBinding {
                integration_id: Uuid::from_u128(0x5678),
                ..binding("agent-a", "sms")
            },
            // Length prefixes: the same bytes split differently differ.
            binding("agent-as", "ms"),
        ] {
            assert!(
                matches!(
                    k.decrypt(&id, &other, &blob),
                    Err(KeyringError::Undecryptable)
                ),
                "{other:?}"
            );
        }
    }

    #[test]
    fn wrong_key_is_named() {
        let (id, blob) = key(7).encrypt(&binding("a", "sms"), b"secret");
        let err = key(8)
            .decrypt(&id, &binding("a", "sms"), &blob)
            .unwrap_err();
        assert!(matches!(&err, KeyringError::UnknownKey(k) if *k == id));
        assert!(err.to_string().contains(&id), "{err}");
    }

    #[test]
    fn legacy_ciphertexts_still_decrypt_and_are_not_current() {
        let k = key(7);
        let blob = legacy(7, ID, b"old secret");
        let opened = k
            .open(k.current_key_id(), &binding("a", "sms"), &blob)
            .unwrap();
        assert_eq!(opened.plaintext, b"old secret");
        assert_eq!(opened.format, Format::Legacy);
        assert!(!opened.current, "rotate-keys must rewrite a legacy row");
        // Still bound to the integration id.
        let elsewhere = SecretBinding {
            integration_id: Uuid::from_u128(9),
            ..binding("a", "sms")
        };
        assert!(k.decrypt(k.current_key_id(), &elsewhere, &blob).is_err());
    }

    #[test]
    fn a_legacy_nonce_that_looks_like_the_version_marker_still_decrypts() {
        // One legacy row in 2^32 starts with the marker by chance; build one.
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::try_from([7u8; 32].as_slice()).unwrap());
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes[..4].copy_from_slice(V2_HEADER);
        let nonce = Nonce::try_from(nonce_bytes.as_slice()).unwrap();
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: b"unlucky".as_slice(),
                    aad: ID.as_bytes(),
                },
            )
            .unwrap();
        let blob = [nonce_bytes.as_slice(), ct.as_slice()].concat();
        let k = key(7);
        let opened = k
            .open(k.current_key_id(), &binding("a", "sms"), &blob)
            .unwrap();
        assert_eq!(opened.plaintext, b"unlucky");
        assert_eq!(opened.format, Format::Legacy);
    }

    #[test]
    fn the_first_key_of_a_list_encrypts_and_every_key_decrypts() {
        let old = key(1);
        let (old_id, old_blob) = old.encrypt(&binding("a", "sms"), b"s1");
        let both = ring(&format!("{}, {}", b64(2), b64(1)));
        assert_eq!(both.key_ids().collect::<Vec<_>>().len(), 2);
        let opened = both.open(&old_id, &binding("a", "sms"), &old_blob).unwrap();
        assert_eq!(opened.plaintext, b"s1");
        assert!(
            !opened.current,
            "written under a key that is no longer first"
        );
        let (new_id, new_blob) = both.encrypt(&binding("a", "sms"), b"s2");
        assert_eq!(new_id, key(2).current_key_id());
        assert!(
            both.open(&new_id, &binding("a", "sms"), &new_blob)
                .unwrap()
                .current
        );
        // Once the old key is removed, only its rows stop decrypting.
        let new_only = ring(&b64(2));
        assert!(
            new_only
                .decrypt(&new_id, &binding("a", "sms"), &new_blob)
                .is_ok()
        );
        assert!(matches!(
            new_only.decrypt(&old_id, &binding("a", "sms"), &old_blob),
            Err(KeyringError::UnknownKey(_))
        ));
    }

    #[test]
    fn the_two_variables_must_agree_on_the_encrypting_key() {
        let (one, two) = (b64(1), b64(2));
        // Neither: no keyring. The single variable alone still works.
        assert!(Keyring::from_env_values(None, Some(" ")).unwrap().is_none());
        let single = Keyring::from_env_values(Some(&one), None).unwrap().unwrap();
        assert_eq!(single.current_key_id(), key(1).current_key_id());
        // Both, agreeing: the list wins (it may hold more keys).
        let list = format!("{one},{two}");
        let agreed = Keyring::from_env_values(Some(&one), Some(&list))
            .unwrap()
            .unwrap();
        assert_eq!(agreed.key_ids().count(), 2);
        // Both, disagreeing: refused, naming both key ids and the fix.
        let err = Keyring::from_env_values(Some(&two), Some(&list))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key(2).current_key_id()), "{err}");
        assert!(err.contains(key(1).current_key_id()), "{err}");
        assert!(err.contains("unset SWITCHBOARD_ENCRYPTION_KEY"), "{err}");
        assert!(
            !err.contains(&one) && !err.contains(&two),
            "keys leak: {err}"
        );
    }

    #[test]
    fn malformed_keys_are_refused_naming_the_entry() {
        assert!(matches!(
            Keyring::from_base64(""),
            Err(KeyringError::Missing)
        ));
        assert!(Keyring::from_base64("!!!").is_err());
        let err = Keyring::from_base64(&BASE64.encode([1u8; 16])).unwrap_err();
        assert!(err.to_string().starts_with(KEY_VAR), "{err}");
        let err = Keyring::from_env_values(None, Some(&format!("{},short", b64(1))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SWITCHBOARD_ENCRYPTION_KEYS (entry 2)"),
            "{err}"
        );
        let err = Keyring::from_env_values(None, Some(&format!("{},", b64(1))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 2"), "{err}");
        // The same key twice is tolerated.
        assert_eq!(ring(&format!("{},{}", b64(1), b64(1))).key_ids().count(), 1);
    }
}
