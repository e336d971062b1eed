//! Versions and canaries in the cluster: `ledge versions`, and the writes that move the live
//! version (`ledge rollback`, `ledge promote`).
//!
//! Invariants: a version made live is one the record keeps; a rollback or a promotion leaves
//! the record without a canary.

use super::FunctionRecord;
use crate::cluster::{Cluster, ClusterError};
use crate::registry::versions::Versions;
use crate::registry::{RegistryError, validate_name};

impl Cluster {
    /// `ledge versions` of a deployed function as last seen.
    pub fn versions(&self, name: &str) -> Result<Versions, ClusterError> {
        self.with_serving(name, |record| record.versions(name))
    }

    /// With a canary and no `version`: drops the canary. Else makes `version` (default: the
    /// newest kept version older than the live one) live, dropping any canary.
    pub async fn rollback(&self, name: &str, version: Option<u64>) -> Result<Versions, ClusterError> {
        validate_name(name)?;
        self.change_versions(name, |record| {
            let target = match (version, record.canary) {
                (None, Some(_)) => record.live,
                (Some(version), _) => version,
                (None, None) => {
                    record.versions.iter().map(|v| v.version).filter(|v| *v < record.live).max().ok_or_else(|| {
                        ClusterError::Versions(format!("`{name}` has no kept version older than {}", record.live))
                    })?
                }
            };
            if !record.versions.iter().any(|v| v.version == target) {
                return Err(ClusterError::Versions(format!("`{name}` keeps no version {target}")));
            }
            Ok(target)
        })
        .await
    }

    /// Makes the canary the live version.
    pub async fn promote(&self, name: &str) -> Result<Versions, ClusterError> {
        validate_name(name)?;
        self.change_versions(name, |record| {
            let canary =
                record.canary.ok_or_else(|| ClusterError::Versions(format!("`{name}` has no canary to promote")))?;
            Ok(canary.version)
        })
        .await
    }

    /// Makes the version `choose` picks live, without a canary, on every node.
    async fn change_versions(
        &self,
        name: &str,
        choose: impl Fn(&FunctionRecord) -> Result<u64, ClusterError>,
    ) -> Result<Versions, ClusterError> {
        let (record, revision) = self
            .update_record(name, None, |current| {
                let mut record = current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                (record.live, record.canary) = (choose(&record)?, None);
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await?;
        Ok(record.versions(name))
    }
}
