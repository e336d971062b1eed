//! The writes that change what a function is: a deploy (through any node), an uploaded
//! policy, a removal.
//!
//! Invariants: a deploy checks the component (and policy) on this node before storing it, and
//! names it in the record only once its blob is complete; each write returns once this node has
//! applied it; a removal leaves a tombstone record, so that nodes that were away remove the
//! function too, holding nothing of the function but that removal (its config and sealed
//! secrets, policy and versions leave etcd with it); `tombstones.rs` deletes it later.

use super::{FunctionRecord, Removal, VersionRecord};
use crate::access::policy::Policy;
use crate::cluster::{Cluster, ClusterError};
use crate::registry::versions::check_canary;
use crate::registry::{CanarySplit, Deployed, PolicyChange, RegistryError, sha256_hex, validate_name};

impl Cluster {
    /// Deploys through the cluster: checks the component (and policy) here, stores it, numbers
    /// the version in the record, then waits until this node has applied it.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        policy: Option<&str>,
        who: PolicyChange,
        canary: Option<u8>,
    ) -> Result<Deployed, ClusterError> {
        validate_name(name)?;
        // Checked before compiling (a live version assumed), and again against the record.
        check_canary(canary, true)?;
        // One round trip first, so that an etcd outage is refused before seconds of compiling;
        // the policy is checked against the record, here and in the compare-and-swap below.
        let (current, _) = self.read_record(name).await?;
        if let Some(text) = policy {
            self.check_policy_for_record(name, text, who, current.as_ref())?;
        }
        let sha256 = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        self.check_artifact_budget(&sha256, size)?;
        self.registry.check_component(bytes.clone()).await?;
        self.store_blob(&sha256, &bytes).await?;
        drop(bytes);
        let (keep, max_bytes) = self.registry.lookup(name).map_or_else(
            || (Policy::default().versions_keep, Policy::default().versions_max_bytes),
            |d| (d.policy.versions_keep, d.policy.versions_max_bytes),
        );
        let deployed_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let (record, revision) = self
            .update_record(name, Some(&sha256), |current| {
                check_canary(canary, current.is_some())?;
                if let Some(text) = policy {
                    self.check_policy_for_record(name, text, who, current.as_ref())?;
                }
                let mut record = current.unwrap_or_default();
                let newest = record.versions.iter().map(|v| v.version).chain(record.canary.map(|c| c.version)).max();
                let version = newest.unwrap_or(0) + 1;
                record.versions.push(VersionRecord {
                    version,
                    sha256: sha256.clone(),
                    size,
                    deployed_at: deployed_at.clone(),
                });
                match canary {
                    Some(percent) => record.canary = Some(CanarySplit { version, percent }),
                    None => (record.live, record.canary) = (version, None),
                }
                record.prune(keep, max_bytes);
                if let Some(text) = policy {
                    record.policy = Some(text.to_string());
                }
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await?;
        self.collect_blobs().await;
        let deployed = record.versions.last().expect("a deploy adds a version").meta(name);
        Ok(Deployed { created: deployed.version == 1, meta: deployed })
    }

    /// Publishes a function's uploaded policy.
    pub async fn set_policy(&self, name: &str, text: &str, who: PolicyChange) -> Result<(), ClusterError> {
        validate_name(name)?;
        let (_, revision) = self
            .update_record(name, None, |current| {
                let mut record = current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                self.check_policy_for_record(name, text, who, Some(&record))?;
                record.policy = Some(text.to_string());
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await
    }

    /// Removes a function from every node (a tombstone record, which keeps nothing else).
    pub async fn remove(&self, name: &str, keep_data: bool) -> Result<(), ClusterError> {
        validate_name(name)?;
        let (_, revision) = self
            .update_record(name, None, |current| {
                current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                Ok(FunctionRecord { removed: Some(Removal { keep_data }), ..FunctionRecord::default() })
            })
            .await?;
        self.wait_applied(revision).await?;
        self.collect_blobs().await;
        Ok(())
    }
}

impl Cluster {
    /// Checks an uploaded policy against the function's record in etcd (its uploaded policy,
    /// else the operator's files), the same on every node whether or not it hosts the function.
    fn check_policy_for_record(
        &self,
        name: &str,
        text: &str,
        who: PolicyChange,
        record: Option<&FunctionRecord>,
    ) -> Result<(), ClusterError> {
        let uploaded = record.filter(|r| r.removed.is_none()).and_then(|r| r.policy.as_deref());
        self.registry.check_upload_for_record(name, text, who, uploaded)?;
        Ok(())
    }
}
