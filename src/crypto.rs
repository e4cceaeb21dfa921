//! Encryption of integration secrets at rest (AES-256-GCM).
//!
//! Each write uses a fresh random 96-bit nonce, stored in front of the
//! ciphertext. The integration's id is bound in as associated data, so a
//! ciphertext copied onto another integration's row fails to decrypt instead
//! of handing one agent's credentials to another. Every ciphertext records the
//! id of the key that made it, so a later rotation can decrypt old rows with
//! the old key while writing new rows with the new one.
//!
//! This module never logs, and its errors never contain plaintext or keys.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "SWITCHBOARD_ENCRYPTION_KEY is not set: it must be the base64 of 32 random bytes \
         (for example `head -c 32 /dev/urandom | base64`)"
    )]
    Missing,
    #[error("SWITCHBOARD_ENCRYPTION_KEY is malformed: {0}")]
    Malformed(&'static str),
    #[error("secrets were encrypted with key `{0}`, which this process does not have")]
    UnknownKey(String),
    #[error("stored secrets could not be decrypted (wrong key or tampered row)")]
    Undecryptable,
}

/// The keys this process can use. Holds the current key; old keys for
/// rotation are looked up by id.
#[derive(Clone)]
pub struct Keyring {
    current_id: String,
    current: Aes256Gcm,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current_id", &self.current_id)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn from_base64(encoded: &str) -> Result<Self, KeyringError> {
        if encoded.is_empty() {
            return Err(KeyringError::Missing);
        }
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| KeyringError::Malformed("not valid base64"))?;
        if bytes.len() != 32 {
            return Err(KeyringError::Malformed("must decode to exactly 32 bytes"));
        }
        // The id is a short fingerprint: it names the key without revealing it.
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let key = Key::<Aes256Gcm>::try_from(bytes.as_slice())
            .map_err(|_| KeyringError::Malformed("must decode to exactly 32 bytes"))?;
        Ok(Self {
            current_id: id,
            current: Aes256Gcm::new(&key),
        })
    }

    pub fn current_key_id(&self) -> &str {
        &self.current_id
    }

    /// Encrypts `plaintext` bound to `context` (the integration id). Returns
    /// the key id and `nonce || ciphertext`.
    pub fn encrypt(&self, context: &[u8], plaintext: &[u8]) -> (String, Vec<u8>) {
        let nonce = Nonce::generate();
        let ciphertext = self
            .current
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ciphertext);
        (self.current_id.clone(), out)
    }

    pub fn decrypt(
        &self,
        key_id: &str,
        context: &[u8],
        blob: &[u8],
    ) -> Result<Vec<u8>, KeyringError> {
        if key_id != self.current_id {
            return Err(KeyringError::UnknownKey(key_id.to_string()));
        }
        if blob.len() < NONCE_LEN {
            return Err(KeyringError::Undecryptable);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| KeyringError::Undecryptable)?;
        self.current
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| KeyringError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Keyring {
        Keyring::from_base64(&BASE64.encode([byte; 32])).unwrap()
    }

    #[test]
    fn round_trips_with_a_fresh_nonce_each_time() {
        let k = key(7);
        let (id, a) = k.encrypt(b"ctx", b"secret");
        let (_, b) = k.encrypt(b"ctx", b"secret");
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.decrypt(&id, b"ctx", &a).unwrap(), b"secret");
    }

    #[test]
    fn wrong_context_or_key_fails() {
        let k = key(7);
        let (id, blob) = k.encrypt(b"integration-a", b"secret");
        assert!(k.decrypt(&id, b"integration-b", &blob).is_err());
        let other = key(8);
        assert!(matches!(
            other.decrypt(&id, b"integration-a", &blob),
            Err(KeyringError::UnknownKey(_))
        ));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(matches!(
            Keyring::from_base64(""),
            Err(KeyringError::Missing)
        ));
        assert!(Keyring::from_base64("!!!").is_err());
        assert!(Keyring::from_base64(&BASE64.encode([1u8; 16])).is_err());
    }
}
