//! Functions' config and secrets in the cluster (`ledge config` through any node): the entries
//! live in the function's record, secrets sealed under the cluster's secrets key.
//!
//! The secrets key is a random 32-byte key at [`SECRETS_KEY`] in etcd, created by the first
//! node that finds none (put-if-absent), so every node seals and opens with the same one. Each
//! node caches it (mode 0600) beside its own key ([`super::SECRETS_KEY_CACHE`]), so a node
//! restarting while etcd is away still opens its functions' secrets. Whoever reads etcd reads
//! this key, as they read the root key ring: etcd is part of the trusted control plane (give it
//! client TLS, `--etcd-ca/--etcd-cert/--etcd-key`).
//!
//! Invariants: a secret is sealed only under the cluster's key (a node that has not adopted it
//! yet refuses to seal); a record never grows past [`super::control::MAX_RECORD_BYTES`]
//! (config values count toward it).

use std::sync::atomic::Ordering;

use super::{Cluster, ClusterError};
use crate::etcd::EtcdError;
use crate::registry::config::{ConfigListing, SecretsKey};
use crate::registry::{RegistryError, validate_name};

/// Where the cluster's secrets key lives in etcd.
pub(super) const SECRETS_KEY: &str = "/ledge/secrets-key";

impl Cluster {
    /// Creates the cluster's secrets key when there is none, and adopts it.
    pub(super) async fn create_secrets_key(&self) -> Result<(), EtcdError> {
        let stored = self.etcd.shared_secret(SECRETS_KEY).await?;
        self.adopt_secrets_key(Some(&stored)).await;
        Ok(())
    }

    /// Seals and opens secrets under the cluster's key from now on (cached in the data dir).
    pub(super) async fn adopt_secrets_key(&self, value: Option<&[u8]>) {
        // Deleted from etcd: keep sealing with the key last seen.
        let Some(value) = value else { return };
        let hex_key = String::from_utf8_lossy(value).trim().to_string();
        let cached = std::fs::read_to_string(&self.secrets_cache).ok();
        if self.secrets_ready.load(Ordering::Relaxed) && cached.as_deref().map(str::trim) == Some(hex_key.as_str()) {
            return;
        }
        match SecretsKey::keep(&self.secrets_cache, &hex_key) {
            Ok(key) => {
                self.registry.use_secrets_key(key).await;
                self.secrets_ready.store(true, Ordering::Relaxed);
                tracing::info!(cache = %self.secrets_cache.display(), "sealing secrets with the cluster's key");
            }
            Err(error) => tracing::error!(%error, "cannot adopt the cluster's secrets key"),
        }
    }

    /// Sets `key` of function `name` on every node (sealed under the cluster's key when
    /// `secret`).
    pub async fn set_config(&self, name: &str, key: &str, value: &str, secret: bool) -> Result<(), ClusterError> {
        validate_name(name)?;
        if secret && !self.secrets_ready.load(Ordering::Relaxed) {
            let why = "this node has not read the cluster's secrets key from etcd yet";
            return Err(EtcdError::Unreachable(why.into()).into());
        }
        let sealing = self.registry.secrets_key();
        let (_, revision) = self
            .update_record(name, None, |current| {
                let mut record = current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                record.config.set(name, key, value, secret, &sealing)?;
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await
    }

    /// Removes `key` of function `name` on every node.
    pub async fn remove_config(&self, name: &str, key: &str) -> Result<(), ClusterError> {
        validate_name(name)?;
        let (_, revision) = self
            .update_record(name, None, |current| {
                let mut record = current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                record.config.remove(name, key)?;
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await
    }

    /// Function `name`'s config as last seen (values, and secrets by name).
    pub fn list_config(&self, name: &str) -> Result<ConfigListing, ClusterError> {
        self.with_serving(name, |record| record.config.listing())
    }
}
