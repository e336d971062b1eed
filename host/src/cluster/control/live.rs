//! The live build of a function this node does not run (placed elsewhere by `[placement]
//! replicas`), for deploy verification here: its component from etcd, compiled, and its config
//! from the record.
//!
//! Invariants: the component is the record's live version, read back through `blobs.rs` (its
//! SHA-256 checked); nothing is installed or served: the build is compiled as a deploy's
//! candidate is (`Registry::check_component`).

use std::sync::Arc;

use crate::cluster::{Cluster, ClusterError};
use crate::registry::RegistryError;
use crate::runtime::{FunctionPre, GuestConfig};

impl Cluster {
    /// The live build of `name` as the cluster's record says, with the config its guests see;
    /// `None` when the cluster serves no such function.
    pub async fn live_build(&self, name: &str) -> Result<Option<(FunctionPre, Arc<GuestConfig>)>, ClusterError> {
        let serving = self.records.read().get(name).and_then(|known| {
            let live = known.record.serving()?;
            Some((live.sha256.clone(), known.record.config.clone()))
        });
        let Some((sha256, config)) = serving else { return Ok(None) };
        let bytes = self.fetch_blob(&sha256).await?;
        let pre = self.registry.check_component(bytes).await?;
        let config = self.registry.guest_config(name, &config).map_err(RegistryError::Io)?;
        Ok(Some((pre, config)))
    }
}
