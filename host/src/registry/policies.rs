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
use crate::access::policy::{Ceilings, Policy, PolicyFile, UploadCeilings};
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
            match read_default_file(&path, &self.ceilings) {
                Ok((policy, ceilings)) => {
                    *self.default_policy.write().expect("policy lock poisoned") = policy;
                    *self.upload_ceilings.write().expect("policy lock poisoned") = ceilings;
                }
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
        match self.function_dir(name).join("policy.toml") {
            uploaded if uploaded.exists() => read_policy_file(&uploaded, &self.default_policy(), &self.ceilings),
            _ => self.policy_from_files(name),
        }
    }

    /// The policy the operator's files give `name`: `policies/NAME.toml`, else the default.
    fn policy_from_files(&self, name: &str) -> anyhow::Result<Policy> {
        match self.policies_dir.as_ref().map(|dir| dir.join(format!("{name}.toml"))) {
            Some(path) if path.exists() => read_policy_file(&path, &self.default_policy(), &self.ceilings),
            _ => Ok(self.default_policy()),
        }
    }

    /// Parses an uploaded policy for `name`, holds it to the server's ceilings and, for anyone
    /// but an unconfined manage token, refuses any field that widens what the function has now
    /// (this node's view of it). Call with the change lock held, so that "now" cannot move
    /// before the policy is applied.
    pub(super) fn check_upload(&self, name: &str, text: &str, who: PolicyChange) -> Result<Policy, PolicyError> {
        let current = || match self.lookup(name) {
            Some(deployment) => Ok((*deployment.policy).clone()),
            None => self.policy_for(name).map_err(|error| PolicyError::Invalid(format!("{error:#}"))),
        };
        self.check_upload_over(name, text, who, current)
    }

    /// [`Registry::check_upload`] against the function's policy as a cluster record has it:
    /// `uploaded` (the record's policy text) over this node's default, else the operator's
    /// files, whether or not this node hosts the function.
    pub fn check_upload_for_record(
        &self,
        name: &str,
        text: &str,
        who: PolicyChange,
        uploaded: Option<&str>,
    ) -> Result<Policy, PolicyError> {
        let current = || match uploaded {
            Some(current) => {
                Ok(PolicyFile::parse(current).map_err(PolicyError::Invalid)?.resolve(&self.default_policy()))
            }
            None => self.policy_from_files(name).map_err(|error| PolicyError::Invalid(format!("{error:#}"))),
        };
        self.check_upload_over(name, text, who, current)
    }

    fn check_upload_over(
        &self,
        name: &str,
        text: &str,
        who: PolicyChange,
        current: impl FnOnce() -> Result<Policy, PolicyError>,
    ) -> Result<Policy, PolicyError> {
        let file = PolicyFile::parse(text).map_err(PolicyError::Invalid)?;
        if file.ceilings.is_some() {
            return Err(PolicyError::Invalid(CEILINGS_ONLY_IN_DEFAULT.into()));
        }
        let policy = file.resolve(&self.default_policy());
        policy.check_ceilings(&self.ceilings).map_err(PolicyError::Invalid)?;
        let ceilings = *self.upload_ceilings.read().expect("policy lock poisoned");
        policy.check_upload_ceilings(&ceilings).map_err(PolicyError::Invalid)?;
        self.check_routes(name, &policy.routes)?;
        self.check_queues(name, &policy)?;
        if who == PolicyChange::OnlyTighten {
            let widened = current()?.widened_by(&policy);
            if !widened.is_empty() {
                return Err(PolicyError::Widens(widened));
            }
        }
        Ok(policy)
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

/// Why a `[ceilings]` table anywhere else is refused.
const CEILINGS_ONLY_IN_DEFAULT: &str =
    "[ceilings] belongs in the operator's policies/default.toml, not in a function's policy";

/// Reads a policy file, resolves it over `base` and holds it to `ceilings`; errors name the file.
pub(super) fn read_policy_file(path: &Path, base: &Policy, ceilings: &Ceilings) -> anyhow::Result<Policy> {
    let (file, policy) = read_file(path, base, ceilings)?;
    if file.ceilings.is_some() {
        anyhow::bail!("{}: {CEILINGS_ONLY_IN_DEFAULT}", path.display());
    }
    Ok(policy)
}

/// `policies/default.toml` (or the built-in default where there is none): the default policy
/// and the ceilings on uploaded policies its `[ceilings]` table sets.
pub(super) fn read_default_file(path: &Path, ceilings: &Ceilings) -> anyhow::Result<(Policy, UploadCeilings)> {
    let base = Policy::default().within(ceilings);
    if !path.exists() {
        return Ok((base, UploadCeilings::default()));
    }
    let (file, policy) = read_file(path, &base, ceilings)?;
    let section = file.ceilings.unwrap_or_default();
    let upload = section.resolve().map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok((policy, upload))
}

fn read_file(path: &Path, base: &Policy, ceilings: &Ceilings) -> anyhow::Result<(PolicyFile, Policy)> {
    let text = fs::read_to_string(path)?;
    let file = PolicyFile::parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    let policy = file.resolve(base);
    policy.check_ceilings(ceilings).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok((file, policy))
}
