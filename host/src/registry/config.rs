//! Per-function configuration and secrets (`ledge config`, `/v1/functions/{name}/config`):
//! stored in `functions/NAME/config.json` (mode 0600), served to guests through
//! `wasi:config/store` and as environment variables, applied to new requests at once.
//!
//! Secrets are sealed with AES-256-GCM under the node's secrets key (`<data-dir>/keys/
//! secrets.key`, or `--secrets-key FILE`), with the function and key names as associated data,
//! so a sealed value cannot be moved to another function or key. The data dir alone holds
//! secret *names* and ciphertext; with the key file too, everything.
//!
//! In cluster mode the entries live in the function's record in etcd, secrets sealed under the
//! cluster's key (kept in etcd, cached in the data dir next to the node's own key); each node
//! writes the record's entries to its `config.json` as they are.
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

/// `config.json` (and, in cluster mode, the record's `config`): plain values, and sealed secrets
/// (base64 of nonce and ciphertext).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEntries {
    #[serde(default)]
    values: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

impl ConfigEntries {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.secrets.is_empty()
    }

    /// Sets `key` of `function` (sealed under `secrets` when `secret`), within the bounds.
    pub fn set(
        &mut self,
        function: &str,
        key: &str,
        value: &str,
        secret: bool,
        secrets: &SecretsKey,
    ) -> Result<(), ConfigError> {
        if !is_valid_key(key) {
            return Err(ConfigError::InvalidKey(key.chars().take(128).collect()));
        }
        if value.len() > MAX_VALUE {
            return Err(ConfigError::InvalidValue);
        }
        self.values.remove(key);
        self.secrets.remove(key);
        if self.values.len() + self.secrets.len() >= MAX_KEYS {
            return Err(ConfigError::TooManyKeys);
        }
        if secret {
            let sealed = secrets.seal(function, key, value).map_err(RegistryError::Io)?;
            self.secrets.insert(key.to_string(), sealed);
        } else {
            self.values.insert(key.to_string(), value.to_string());
        }
        Ok(())
    }

    /// Removes `key` of `function`.
    pub fn remove(&mut self, function: &str, key: &str) -> Result<(), ConfigError> {
        let removed = self.values.remove(key).is_some() | self.secrets.remove(key).is_some();
        if removed {
            Ok(())
        } else {
            Err(ConfigError::NoSuchKey { function: function.to_string(), key: key.to_string() })
        }
    }

    /// Values, and secrets by name only.
    pub fn listing(&self) -> ConfigListing {
        ConfigListing { values: self.values.clone(), secrets: self.secrets.keys().cloned().collect() }
    }
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
        match fs::read_to_string(path) {
            Ok(text) => SecretsKey::from_hex(text.trim(), &path.display().to_string()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => SecretsKey::keep(path, &random_hex_key()?),
            Err(error) => Err(error),
        }
    }

    /// Writes `hex_key` to `path` (mode 0600, fsynced) and returns it as a key: how a cluster
    /// node caches the cluster's key.
    pub fn keep(path: &Path, hex_key: &str) -> io::Result<SecretsKey> {
        let key = SecretsKey::from_hex(hex_key, "the key")?;
        if let Some(dir) = path.parent() {
            crate::storage::create_private_dir(dir)?;
        }
        write_durably(path, format!("{hex_key}\n").as_bytes())?;
        Ok(key)
    }

    /// A key from its hex text; `source` names it in errors.
    pub fn from_hex(hex_key: &str, source: &str) -> io::Result<SecretsKey> {
        let bytes = hex::decode(hex_key).map_err(|_| io::Error::other(format!("{source} is not a hex key")))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| io::Error::other(format!("{source} must hold 32 bytes")))?;
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

/// 32 random bytes as hex: a new secrets key.
pub fn random_hex_key() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| io::Error::other("no randomness"))?;
    Ok(hex::encode(bytes))
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

fn read_stored(dir: &Path) -> io::Result<ConfigEntries> {
    match fs::read(dir.join("config.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(ConfigEntries::default()),
        Err(error) => Err(error),
    }
}

impl Registry {
    /// The config guests of `name` see, decrypted (at start and after every change).
    pub(super) fn load_config(&self, name: &str) -> io::Result<Arc<GuestConfig>> {
        self.guest_config(name, &read_stored(&self.function_dir(name))?)
    }

    /// The config guests of `name` see with `entries` (secrets sealed under this node's key),
    /// decrypted; also what deploy verification on a cluster node that does not run `name`
    /// gives it from the function's record.
    pub fn guest_config(&self, name: &str, entries: &ConfigEntries) -> io::Result<Arc<GuestConfig>> {
        let mut pairs: Vec<(String, String)> = entries.values.clone().into_iter().collect();
        let mut secrets = Vec::with_capacity(entries.secrets.len());
        let sealing = self.secrets_key();
        for (key, sealed) in &entries.secrets {
            let value = sealing.open_sealed(name, key, sealed)?;
            secrets.push(key.clone());
            pairs.push((key.clone(), value));
        }
        Ok(Arc::new(GuestConfig::new(pairs, secrets)))
    }

    /// Sets `key` of function `name` (sealed when `secret`); new requests see it at once.
    pub async fn set_config(&self, name: &str, key: &str, value: &str, secret: bool) -> Result<(), ConfigError> {
        self.change_config(name, |stored, secrets| stored.set(name, key, value, secret, secrets)).await
    }

    /// Removes `key` of function `name`.
    pub async fn remove_config(&self, name: &str, key: &str) -> Result<(), ConfigError> {
        self.change_config(name, |stored, _| stored.remove(name, key)).await
    }

    /// Function `name`'s config: values, and secrets by name.
    pub fn list_config(&self, name: &str) -> Result<ConfigListing, ConfigError> {
        validate_name(name)?;
        self.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        Ok(read_stored(&self.function_dir(name)).map_err(RegistryError::Io)?.listing())
    }

    /// Makes `entries` (a cluster record's, sealed under the cluster's key) the config of `name`
    /// when it runs here and its config differs.
    pub async fn apply_config(&self, name: &str, entries: &ConfigEntries) -> Result<(), ConfigError> {
        if self.lookup(name).is_none() {
            return Ok(());
        }
        let dir = self.function_dir(name);
        if read_stored(&dir).is_ok_and(|stored| &stored == entries) {
            return Ok(());
        }
        self.change_config(name, |stored, _| {
            *stored = entries.clone();
            Ok(())
        })
        .await
    }

    /// The key secrets are sealed under.
    pub fn secrets_key(&self) -> Arc<SecretsKey> {
        self.secrets.read().expect("secrets key lock poisoned").clone()
    }

    /// Seals and opens secrets under `key` from now on (a cluster node adopting the cluster's
    /// key), and reloads every function's config under it.
    pub async fn use_secrets_key(&self, key: SecretsKey) {
        let _change = self.changes.lock().await;
        *self.secrets.write().expect("secrets key lock poisoned") = Arc::new(key);
        let names: Vec<String> = self.live.read().expect("registry lock poisoned").keys().cloned().collect();
        for name in names {
            match self.load_config(&name) {
                Ok(config) => {
                    let mut live = self.live.write().expect("registry lock poisoned");
                    if let Some(current) = live.get(&name).cloned() {
                        live.insert(name, Arc::new(current.with_config(config)));
                    }
                }
                Err(error) => tracing::warn!(function = %name, %error, "config does not open with the new secrets key"),
            }
        }
    }

    async fn change_config(
        &self,
        name: &str,
        change: impl FnOnce(&mut ConfigEntries, &SecretsKey) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let current = self.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let dir = self.function_dir(name);
        let mut stored = read_stored(&dir).map_err(RegistryError::Io)?;
        change(&mut stored, &self.secrets_key())?;
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
