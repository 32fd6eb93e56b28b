//! Message bodies encrypted at rest with AES-256-GCM.
//!
//! Each body gets a fresh random 96-bit nonce and is bound to its place
//! (room and message id as associated data), so a ciphertext copied to
//! another message does not decrypt. The stored document keeps the
//! ciphertext, the nonce and the id of the key; the first key of the ring
//! encrypts, every key decrypts, so keys rotate by putting a new one first
//! and keeping the old ones until nothing uses them.

use std::{collections::HashMap, fmt};

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, AeadCore as _, OsRng, Payload},
};
use agora_kit::config::ConfigError;
use base64::Engine as _;

/// One sealed body.
pub struct Sealed {
    pub kid: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The keys, by id; the first encrypts.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt a message body: {0}")]
pub struct DecryptError(&'static str);

impl Keyring {
    /// Parses `kid:base64key` pairs, comma-separated (whitespace and
    /// newlines allowed between them). `setting` names where they came from,
    /// for errors, which never repeat a key.
    pub fn parse(text: &str, setting: &str) -> Result<Self, ConfigError> {
        let mut current = None;
        let mut keys = HashMap::new();
        for entry in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (kid, encoded) = entry.split_once(':').ok_or_else(|| {
                ConfigError::invalid(setting, "each key must be written kid:base64key")
            })?;
            let kid = kid.trim();
            if kid.is_empty() || kid.len() > 64 {
                return Err(ConfigError::invalid(
                    setting,
                    "a key id must be 1 to 64 characters",
                ));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| {
                    ConfigError::invalid(setting, format!("key {kid:?} is not valid base64"))
                })?;
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| {
                ConfigError::invalid(
                    setting,
                    format!("key {kid:?} must be 32 bytes (AES-256), not {}", raw.len()),
                )
            })?;
            if keys.insert(kid.to_owned(), cipher).is_some() {
                return Err(ConfigError::invalid(
                    setting,
                    format!("key id {kid:?} appears twice"),
                ));
            }
            current.get_or_insert_with(|| kid.to_owned());
        }
        let current = current.ok_or_else(|| ConfigError::invalid(setting, "names no key"))?;
        Ok(Self { current, keys })
    }

    /// A ring of one key.
    pub fn single(kid: &str, key: &[u8]) -> anyhow::Result<Self> {
        let cipher = Aes256Gcm::new_from_slice(key)
            .map_err(|_| anyhow::anyhow!("a key must be 32 bytes"))?;
        Ok(Self {
            current: kid.to_owned(),
            keys: HashMap::from([(kid.to_owned(), cipher)]),
        })
    }

    /// A new random 256-bit key, base64.
    pub fn generate_key() -> String {
        base64::engine::general_purpose::STANDARD.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// Encrypts `body`, bound to `aad` (where it is stored).
    pub fn seal(&self, body: &str, aad: &str) -> anyhow::Result<Sealed> {
        let cipher = self
            .keys
            .get(&self.current)
            .ok_or_else(|| anyhow::anyhow!("the current key is missing"))?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: body.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        Ok(Sealed {
            kid: self.current.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts a body sealed with `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<String, DecryptError> {
        let cipher = self
            .keys
            .get(&sealed.kid)
            .ok_or(DecryptError("its key is not configured"))?;
        let nonce: [u8; 12] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| DecryptError("its nonce is malformed"))?;
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| DecryptError("it was altered or sealed with another key"))?;
        String::from_utf8(plain).map_err(|_| DecryptError("it is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_bound_to_their_place_and_old_keys_still_decrypt() {
        let old = Keyring::parse(&format!("k1:{}", Keyring::generate_key()), "K").expect("ring");
        let sealed = old.seal("hello", "room/1").expect("seals");
        assert!(!sealed.ciphertext.windows(5).any(|w| w == b"hello"));
        assert_eq!(old.open(&sealed, "room/1").expect("opens"), "hello");
        assert!(old.open(&sealed, "room/2").is_err(), "bound to its place");
    }

    #[test]
    fn rotation_encrypts_with_the_first_key_and_decrypts_with_any() {
        let (a, b) = (Keyring::generate_key(), Keyring::generate_key());
        let before = Keyring::parse(&format!("k1:{a}"), "K").expect("ring");
        let sealed = before.seal("older", "x").expect("seals");
        let after = Keyring::parse(&format!("k2:{b}, k1:{a}"), "K").expect("ring");
        assert_eq!(after.open(&sealed, "x").expect("old key opens"), "older");
        assert_eq!(after.seal("newer", "x").expect("seals").kid, "k2");
    }

    #[test]
    fn bad_keys_are_refused_naming_the_setting_and_never_the_key() {
        for bad in ["", "nokid", "k1:!!!", "k1:AAAA", "k1:a2V5,k1:a2V5"] {
            let err = Keyring::parse(bad, "AGORA_CHAT_ENCRYPTION_KEYS").expect_err(bad);
            let text = err.to_string();
            assert!(text.contains("AGORA_CHAT_ENCRYPTION_KEYS"), "{text}");
            assert!(!text.contains("a2V5"), "{text}");
        }
    }
}
