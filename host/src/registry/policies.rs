//! Each function's effective policy: uploaded (`PUT /v1/functions/{name}/policy`), else
//! `policies/NAME.toml`, else the default (`policies/default.toml` over the built-in one);
//! the files are watched and a change applies to new requests.
//!
//! Invariant: a policy file that does not parse never replaces the policy in force.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::{PolicyError, Registry, RegistryError, validate_name};
use crate::access::policy::{Policy, PolicyFile};
use crate::storage::{create_private_dir, write_durably};

impl Registry {
    /// The effective policy: uploaded, else `policies/NAME.toml`, else the default.
    pub(super) fn default_policy(&self) -> Policy {
        self.default_policy.read().expect("policy lock poisoned").clone()
    }

    /// Reads the policy files again and applies what changed to new requests. A file that does
    /// not parse is reported and ignored: the policy it would have replaced stays in force.
    pub async fn reload_policies(&self) {
        let _change = self.changes.lock().await;
        if let Some(path) = self.policies_dir.as_ref().map(|dir| dir.join("default.toml")) {
            let parsed = if path.exists() {
                read_policy_file(&path).map(|f| f.resolve(&Policy::default()))
            } else {
                Ok(Policy::default())
            };
            match parsed {
                Ok(policy) => *self.default_policy.write().expect("policy lock poisoned") = policy,
                Err(error) => return tracing::error!(%error, "policy file refused; keeping the policies in force"),
            }
        }
        let mut live = self.live.write().expect("registry lock poisoned");
        for (name, deployment) in live.iter_mut() {
            match self.policy_for(name) {
                Ok(policy) if policy != *deployment.policy => {
                    tracing::info!(function = %name, "policy changed");
                    *deployment = Arc::new(deployment.with_policy(policy));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(function = %name, %error, "policy file refused; keeping the function's policy")
                }
            }
        }
    }

    /// Reloads policies whenever a file in the policies directory changes.
    pub fn spawn_policy_watcher(self: &Arc<Self>) {
        let Some(dir) = self.policies_dir.clone() else { return };
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = policy_files_state(&dir);
            loop {
                tokio::time::sleep(POLICY_WATCH_INTERVAL).await;
                let Some(registry) = registry.upgrade() else { return };
                let now = policy_files_state(&dir);
                if now != seen {
                    seen = now;
                    registry.reload_policies().await;
                }
            }
        });
    }

    pub(super) fn policy_for(&self, name: &str) -> anyhow::Result<Policy> {
        let uploaded = self.function_dir(name).join("policy.toml");
        let file = self.policies_dir.as_ref().map(|dir| dir.join(format!("{name}.toml")));
        for path in [Some(uploaded), file].into_iter().flatten() {
            if path.exists() {
                return Ok(read_policy_file(&path)?.resolve(&self.default_policy()));
            }
        }
        Ok(self.default_policy())
    }

    /// Stores an uploaded policy and applies it to new requests at once.
    pub async fn set_policy(&self, name: &str, text: &str) -> Result<Policy, PolicyError> {
        validate_name(name)?;
        let file = PolicyFile::parse(text).map_err(PolicyError::Invalid)?;
        let policy = file.resolve(&self.default_policy());
        let _change = self.changes.lock().await;
        let dir = self.function_dir(name);
        create_private_dir(&dir).map_err(RegistryError::Io)?;
        write_durably(&dir.join("policy.toml"), text.as_bytes()).map_err(RegistryError::Io)?;
        let mut live = self.live.write().expect("registry lock poisoned");
        if let Some(current) = live.get(name).cloned() {
            live.insert(name.to_string(), Arc::new(current.with_policy(policy.clone())));
        }
        Ok(policy)
    }
}

/// How often the policies directory is checked for changes.
const POLICY_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Names, sizes and modification times of the policy files: what the watcher compares.
fn policy_files_state(dir: &Path) -> Vec<(std::ffi::OsString, u64, Option<SystemTime>)> {
    let mut state: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let metadata = entry.metadata().ok()?;
            Some((entry.file_name(), metadata.len(), metadata.modified().ok()))
        })
        .collect();
    state.sort();
    state
}

pub(super) fn read_policy_file(path: &Path) -> anyhow::Result<PolicyFile> {
    let text = fs::read_to_string(path)?;
    PolicyFile::parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}
