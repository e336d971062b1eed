//! Each function's effective policy: uploaded (`PUT /v1/functions/{name}/policy`), else
//! `policies/NAME.toml`, else the default (`policies/default.toml` over the built-in one);
//! the files are watched and a change applies to new requests.
//!
//! Invariant: a policy file that does not parse never replaces the policy in force.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::{PolicyChange, PolicyError, Registry, RegistryError, validate_name};
use crate::access::policy::{Ceilings, Policy, PolicyFile};
use crate::storage::write_durably;

impl Registry {
    /// The default policy (`policies/default.toml` over the built-in one).
    pub(super) fn default_policy(&self) -> Policy {
        self.default_policy.read().expect("policy lock poisoned").clone()
    }

    /// Reads the policy files again and applies what changed to new requests. A file that does
    /// not parse (or exceeds a ceiling) is reported and ignored: the policy it would have
    /// replaced stays in force. Files are read before the live map is locked, so requests never
    /// wait on the file system.
    pub async fn reload_policies(&self) {
        let _change = self.changes.lock().await;
        if let Some(path) = self.policies_dir.as_ref().map(|dir| dir.join("default.toml")) {
            let parsed = if path.exists() {
                read_policy_file(&path, &Policy::default().within(&self.ceilings), &self.ceilings)
            } else {
                Ok(Policy::default().within(&self.ceilings))
            };
            match parsed {
                Ok(policy) => *self.default_policy.write().expect("policy lock poisoned") = policy,
                Err(error) => return tracing::error!(%error, "policy file refused; keeping the policies in force"),
            }
        }
        let names: Vec<String> = self.live.read().expect("registry lock poisoned").keys().cloned().collect();
        let mut changed = Vec::new();
        for name in names {
            match self.policy_for(&name) {
                Ok(policy) => changed.push((name, policy)),
                Err(error) => {
                    tracing::error!(function = %name, %error, "policy file refused; keeping the function's policy")
                }
            }
        }
        let mut live = self.live.write().expect("registry lock poisoned");
        for (name, policy) in changed {
            let Some(deployment) = live.get_mut(&name) else { continue };
            if policy != *deployment.policy {
                tracing::info!(function = %name, "policy changed");
                *deployment = Arc::new(deployment.with_policy(policy));
            }
        }
        drop(live);
        self.rebuild_routes();
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

    /// The effective policy: uploaded, else `policies/NAME.toml`, else the default.
    pub(super) fn policy_for(&self, name: &str) -> anyhow::Result<Policy> {
        let uploaded = self.function_dir(name).join("policy.toml");
        let file = self.policies_dir.as_ref().map(|dir| dir.join(format!("{name}.toml")));
        for path in [Some(uploaded), file].into_iter().flatten() {
            if path.exists() {
                return read_policy_file(&path, &self.default_policy(), &self.ceilings);
            }
        }
        Ok(self.default_policy())
    }

    /// Parses an uploaded policy for `name`, holds it to the server's ceilings and, for a
    /// confined token, refuses any field that widens what the function has now. Call with the
    /// change lock held, so that "now" cannot move before the policy is applied.
    pub(super) fn check_upload(&self, name: &str, text: &str, who: PolicyChange) -> Result<Policy, PolicyError> {
        let policy = PolicyFile::parse(text).map_err(PolicyError::Invalid)?.resolve(&self.default_policy());
        policy.check_ceilings(&self.ceilings).map_err(PolicyError::Invalid)?;
        self.check_routes(name, &policy.routes)?;
        if who == PolicyChange::OnlyTighten {
            let current = match self.lookup(name) {
                Some(deployment) => (*deployment.policy).clone(),
                None => self.policy_for(name).map_err(|error| PolicyError::Invalid(format!("{error:#}")))?,
            };
            let widened = current.widened_by(&policy);
            if !widened.is_empty() {
                return Err(PolicyError::Widens(widened));
            }
        }
        Ok(policy)
    }

    /// Checks an uploaded policy as [`Registry::set_policy`] would, without applying it (a
    /// cluster node checks a policy so before it publishes it).
    pub async fn check_policy(&self, name: &str, text: &str, who: PolicyChange) -> Result<Policy, PolicyError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        self.check_upload(name, text, who)
    }

    /// Stores an uploaded policy for a deployed function and applies it to new requests at once.
    pub async fn set_policy(&self, name: &str, text: &str, who: PolicyChange) -> Result<Policy, PolicyError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let Some(current) = self.lookup(name) else {
            return Err(RegistryError::NotFound(name.to_string()).into());
        };
        let policy = self.check_upload(name, text, who)?;
        write_durably(&self.function_dir(name).join("policy.toml"), text.as_bytes()).map_err(RegistryError::Io)?;
        let updated = Arc::new(current.with_policy(policy.clone()));
        self.live.write().expect("registry lock poisoned").insert(name.to_string(), updated);
        self.rebuild_routes();
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

/// Reads a policy file, resolves it over `base` and holds it to `ceilings`; errors name the file.
pub(super) fn read_policy_file(path: &Path, base: &Policy, ceilings: &Ceilings) -> anyhow::Result<Policy> {
    let text = fs::read_to_string(path)?;
    let policy =
        PolicyFile::parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?.resolve(base);
    policy.check_ceilings(ceilings).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok(policy)
}
