//! Per-function configuration and secrets (`ledge config`, `/v1/functions/{name}/config`):
//! stored in `functions/NAME/config.json` (mode 0600), served to guests through
//! `wasi:config/store` and as environment variables, applied to new requests at once.
//!
//! Secrets are sealed with AES-256-GCM under the node's secrets key (`<data-dir>/keys/
//! secrets.key`, or `--secrets-key FILE`), with the function and key names as associated data,
//! so a sealed value cannot be moved to another function or key. The data dir alone holds
//! secret *names* and ciphertext; with the key file too, everything.
//!
//! Invariants: keys are `[A-Za-z_][A-Za-z0-9_]*` (at most 128 bytes); a function holds at most
//! [`MAX_KEYS`] entries of at most [`MAX_VALUE`] bytes; a secret's value never appears in a
//! listing, a log line or an error.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Registry, RegistryError, validate_name};
use crate::runtime::GuestConfig;
use crate::storage::write_durably;

/// Entries one function may hold.
pub const MAX_KEYS: usize = 256;
/// Bytes of one value.
pub const MAX_VALUE: usize = 64 << 10;

/// `config.json`: plain values, and sealed secrets (base64 of nonce and ciphertext).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    values: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

/// What `GET /v1/functions/{name}/config` shows: values, and secrets by name only.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigListing {
    pub values: BTreeMap<String, String>,
    pub secrets: Vec<String>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid config key `{0}`: use letters, digits and '_', not starting with a digit, at most 128 bytes")]
    InvalidKey(String),
    #[error("a config value may be at most {MAX_VALUE} bytes of UTF-8 text")]
    InvalidValue,
    #[error("a function may hold at most {MAX_KEYS} config entries")]
    TooManyKeys,
    #[error("function `{function}` has no config key `{key}`")]
    NoSuchKey { function: String, key: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The node's key for sealing secrets.
pub struct SecretsKey(LessSafeKey);

impl SecretsKey {
    /// Loads the key at `path`, creating it (32 random bytes, hex, mode 0600) if missing.
    pub fn open(path: &Path) -> io::Result<SecretsKey> {
        let hex_key = match fs::read_to_string(path) {
            Ok(text) => text.trim().to_string(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new().fill(&mut bytes).map_err(|_| io::Error::other("no randomness"))?;
                let text = hex::encode(bytes);
                if let Some(dir) = path.parent() {
                    crate::storage::create_private_dir(dir)?;
                }
                write_durably(path, format!("{text}\n").as_bytes())?;
                text
            }
            Err(error) => return Err(error),
        };
        let bytes =
            hex::decode(&hex_key).map_err(|_| io::Error::other(format!("{} is not a hex key", path.display())))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| io::Error::other(format!("{} must hold 32 bytes", path.display())))?;
        Ok(SecretsKey(LessSafeKey::new(key)))
    }

    fn seal(&self, function: &str, key: &str, value: &str) -> io::Result<String> {
        let mut nonce = [0u8; 12];
        SystemRandom::new().fill(&mut nonce).map_err(|_| io::Error::other("no randomness"))?;
        let mut sealed = value.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), place(function, key), &mut sealed)
            .map_err(|_| io::Error::other("sealing failed"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode([nonce.as_slice(), &sealed].concat()))
    }

    fn open_sealed(&self, function: &str, key: &str, sealed: &str) -> io::Result<String> {
        let bad = || io::Error::other(format!("the secret `{key}` of `{function}` does not open with this node's key"));
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| bad())?;
        if bytes.len() < 12 {
            return Err(bad());
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut ciphertext = ciphertext.to_vec();
        let plain = self.0.open_in_place(nonce, place(function, key), &mut ciphertext).map_err(|_| bad())?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad())
    }
}

/// Associated data binding a sealed value to its function and key.
fn place(function: &str, key: &str) -> Aad<Vec<u8>> {
    Aad::from(format!("ledge-config\0{function}\0{key}").into_bytes())
}

pub fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    matches!(bytes.first(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.len() <= 128
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn read_stored(dir: &Path) -> io::Result<Stored> {
    match fs::read(dir.join("config.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Stored::default()),
        Err(error) => Err(error),
    }
}

impl Registry {
    /// The config guests of `name` see, decrypted (at start and after every change).
    pub(super) fn load_config(&self, name: &str) -> io::Result<Arc<GuestConfig>> {
        let stored = read_stored(&self.function_dir(name))?;
        let mut pairs: Vec<(String, String)> = stored.values.into_iter().collect();
        let mut secrets = Vec::with_capacity(stored.secrets.len());
        for (key, sealed) in stored.secrets {
            let value = self.secrets.open_sealed(name, &key, &sealed)?;
            secrets.push(key.clone());
            pairs.push((key, value));
        }
        Ok(Arc::new(GuestConfig::new(pairs, secrets)))
    }

    /// Sets `key` of function `name` (sealed when `secret`); new requests see it at once.
    pub async fn set_config(&self, name: &str, key: &str, value: &str, secret: bool) -> Result<(), ConfigError> {
        if !is_valid_key(key) {
            return Err(ConfigError::InvalidKey(key.chars().take(128).collect()));
        }
        if value.len() > MAX_VALUE {
            return Err(ConfigError::InvalidValue);
        }
        self.change_config(name, |stored, secrets| {
            stored.values.remove(key);
            stored.secrets.remove(key);
            if stored.values.len() + stored.secrets.len() >= MAX_KEYS {
                return Err(ConfigError::TooManyKeys);
            }
            if secret {
                let sealed = secrets.seal(name, key, value).map_err(RegistryError::Io)?;
                stored.secrets.insert(key.to_string(), sealed);
            } else {
                stored.values.insert(key.to_string(), value.to_string());
            }
            Ok(())
        })
        .await
    }

    /// Removes `key` of function `name`.
    pub async fn remove_config(&self, name: &str, key: &str) -> Result<(), ConfigError> {
        self.change_config(name, |stored, _| {
            let removed = stored.values.remove(key).is_some() | stored.secrets.remove(key).is_some();
            if removed {
                Ok(())
            } else {
                Err(ConfigError::NoSuchKey { function: name.to_string(), key: key.to_string() })
            }
        })
        .await
    }

    /// Function `name`'s config: values, and secrets by name.
    pub fn list_config(&self, name: &str) -> Result<ConfigListing, ConfigError> {
        validate_name(name)?;
        self.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let stored = read_stored(&self.function_dir(name)).map_err(RegistryError::Io)?;
        Ok(ConfigListing { values: stored.values, secrets: stored.secrets.into_keys().collect() })
    }

    async fn change_config(
        &self,
        name: &str,
        change: impl FnOnce(&mut Stored, &SecretsKey) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let current = self.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let dir = self.function_dir(name);
        let mut stored = read_stored(&dir).map_err(RegistryError::Io)?;
        change(&mut stored, &self.secrets)?;
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| RegistryError::Io(io::Error::other(e)))?;
        write_durably(&dir.join("config.json"), &bytes).map_err(RegistryError::Io)?;
        let config = self.load_config(name).map_err(RegistryError::Io)?;
        let updated = Arc::new(current.with_config(config));
        self.live.write().expect("registry lock poisoned").insert(name.to_string(), updated);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_in_its_own_place_and_with_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretsKey::open(&dir.path().join("keys/secrets.key")).unwrap();
        let sealed = key.seal("billing", "API_KEY", "sk-live-123").unwrap();
        assert!(!sealed.contains("sk-live"));
        assert_eq!(key.open_sealed("billing", "API_KEY", &sealed).unwrap(), "sk-live-123");
        assert!(key.open_sealed("other", "API_KEY", &sealed).is_err(), "moved to another function");
        assert!(key.open_sealed("billing", "TOKEN", &sealed).is_err(), "moved to another key");
        let reopened = SecretsKey::open(&dir.path().join("keys/secrets.key")).unwrap();
        assert_eq!(reopened.open_sealed("billing", "API_KEY", &sealed).unwrap(), "sk-live-123");
        let stranger = SecretsKey::open(&dir.path().join("other.key")).unwrap();
        assert!(stranger.open_sealed("billing", "API_KEY", &sealed).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("keys/secrets.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn keys_follow_the_environment_variable_rule() {
        for good in ["API_KEY", "_x", "a1"] {
            assert!(is_valid_key(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "ä"] {
            assert!(!is_valid_key(bad), "{bad}");
        }
        assert!(!is_valid_key(&"A".repeat(129)));
    }
}
