//! How every node applies function records, from its watch or a fresh listing: where a
//! function is placed, installing its live version and canary, its config and uploaded policy,
//! and stopping serving it.
//!
//! Invariants: a node installs a component only after its SHA-256 matches the record's (it is
//! read back through `blobs.rs`, which checks it), and compiles only versions that do not run
//! here yet; a removed or unlisted function keeps its data unless its removal said otherwise;
//! a fresh listing is the whole truth: a function it lacks (its tombstone deleted while this
//! node was away) is no longer served nor known here.

use std::collections::HashSet;

use super::{FunctionRecord, Known, VersionRecord};
use crate::cluster::follow::{Change, Listed};
use crate::cluster::{Cluster, ClusterError};
use crate::etcd::EtcdError;
use crate::registry::PolicyChange;

impl Cluster {
    /// Applies a fresh listing of every record: removes what the cluster no longer has, then
    /// applies each record.
    pub(in crate::cluster) async fn apply_function_listing(&self, entries: &[Listed]) -> Result<(), EtcdError> {
        let listed: HashSet<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
        self.records.write().retain(|name, _| listed.contains(name.as_str()));
        let local: Vec<String> = self.registry.list().into_iter().map(|m| m.name).collect();
        for name in local.iter().filter(|name| !listed.contains(name.as_str())) {
            // Deployed here before this node joined, or removed while it was away (and its
            // tombstone deleted since): stop serving it, keep its data.
            tracing::warn!(function = %name, "not deployed in the cluster; no longer served here (data kept)");
            self.stop_serving(name, true).await;
        }
        for entry in entries {
            let change = Change { name: &entry.name, value: Some(&entry.value), revision: entry.revision };
            self.apply_function_change(change).await;
        }
        Ok(())
    }

    /// Installs again, from their records, the functions the start's loads left undeployed
    /// (their code could not be loaded): the first listing, applied while the code loaded,
    /// found them live.
    pub(in crate::cluster) async fn reinstall_failed_loads(&self) {
        for name in self.registry.take_failed_at_start() {
            let known = self.records.read().get(&name).map(|known| (known.record.clone(), known.replicas));
            if let Some((record, replicas)) = known.filter(|(record, _)| record.serving().is_some()) {
                tracing::info!(function = %name, "installing again from the cluster: its code could not be loaded");
                self.place(&name, &record, replicas).await;
            }
        }
    }

    /// Applies one record (or its deletion) a watch delivered.
    pub(in crate::cluster) async fn apply_function_change(&self, change: Change<'_>) {
        let name = change.name;
        let record = change.value.and_then(|value| match serde_json::from_slice::<FunctionRecord>(value) {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::error!(function = %name, %error, "unreadable record in etcd; ignored");
                None
            }
        });
        let known = record.map(|record| {
            let (replicas, global_queues) = record.policy_facts();
            Known { replicas, global_queues, record, revision: change.revision }
        });
        let serving = known.as_ref().filter(|k| k.record.serving().is_some()).map(|k| (k.record.clone(), k.replicas));
        let removal = known.as_ref().and_then(|k| k.record.removed);
        match known {
            Some(known) => self.records.write().insert(name.to_string(), known),
            None => self.records.write().remove(name),
        };
        match serving {
            Some((record, replicas)) => self.place(name, &record, replicas).await,
            // Removed (tombstone) or gone: keep the data unless the removal said otherwise.
            None => self.stop_serving(name, removal.is_none_or(|r| r.keep_data)).await,
        }
    }

    /// Serves `record` here if this node hosts the function, else stops serving it.
    async fn place(&self, name: &str, record: &FunctionRecord, replicas: u32) {
        if !self.hosts(name, replicas) {
            return self.stop_serving(name, true).await;
        }
        if let Err(error) = self.install(name, record).await {
            return tracing::error!(function = name, version = record.live, %error, "cannot install");
        }
        match self.registry.apply_config(name, &record.config).await {
            Ok(()) => self.apply_policy(name, record.policy.as_deref()).await,
            Err(error) => tracing::error!(function = name, %error, "cannot apply the cluster's config"),
        }
    }

    /// Makes this node run what `record` says: its live version, and its canary if any,
    /// fetching and compiling only versions that do not run here yet.
    async fn install(&self, name: &str, record: &FunctionRecord) -> Result<(), ClusterError> {
        let live = record.serving().expect("only a serving record is installed");
        let policy = record.policy.as_deref();
        let runs = |deployment: &crate::registry::Deployment, v: &VersionRecord| {
            deployment.meta.version == v.version && deployment.meta.sha256 == v.sha256
        };
        let current = self.registry.lookup(name);
        let local_canary = current.as_ref().and_then(|d| d.canary.as_ref()).map(|c| c.meta.version);
        let stale = current.as_ref().is_none_or(|d| !runs(d, live));
        if stale && local_canary == Some(live.version) {
            self.registry.promote(name).await?;
            tracing::info!(function = name, version = live.version, "canary promoted by the cluster");
        } else if stale {
            let bytes = self.fetch_blob(&live.sha256).await?;
            self.registry.install(name, bytes, policy, live.version, &live.deployed_at, None).await?;
            self.applied_policies.lock().insert(name.to_string(), policy.map(str::to_string));
            tracing::info!(function = name, version = live.version, "installed from the cluster");
        }
        let local_canary =
            self.registry.lookup(name).and_then(|d| d.canary.as_ref().map(|c| (c.meta.version, c.percent)));
        let wanted = record.canary.map(|c| (c.version, c.percent));
        if wanted == local_canary {
            return Ok(());
        }
        match (record.canary, record.canary_version()) {
            // This node runs a canary the record no longer has.
            (None, _) => {
                self.registry.rollback(name, None).await?;
                tracing::info!(function = name, "canary dropped by the cluster");
            }
            (Some(split), Some(canary)) => {
                let bytes = self.fetch_blob(&canary.sha256).await?;
                let percent = Some(split.percent);
                self.registry.install(name, bytes, policy, canary.version, &canary.deployed_at, percent).await?;
                tracing::info!(
                    function = name,
                    version = canary.version,
                    ?percent,
                    "canary installed from the cluster"
                );
            }
            (Some(split), None) => {
                return Err(ClusterError::Versions(format!(
                    "the record's canary {} is not a kept version",
                    split.version
                )));
            }
        }
        Ok(())
    }

    /// Applies the record's uploaded policy here unless it is applied already.
    async fn apply_policy(&self, name: &str, policy: Option<&str>) {
        let applied = self.applied_policies.lock().get(name).cloned();
        if applied.as_ref().is_some_and(|a| a.as_deref() == policy) {
            return;
        }
        if let Some(text) = policy {
            match self.registry.set_policy(name, text, PolicyChange::Any).await {
                Ok(_) => tracing::info!(function = name, "cluster policy applied"),
                Err(error) => return tracing::error!(function = name, %error, "cluster policy refused here"),
            }
        }
        self.applied_policies.lock().insert(name.to_string(), policy.map(str::to_string));
    }

    /// Stops serving `name` here (removed from the cluster, or placed on other nodes).
    async fn stop_serving(&self, name: &str, keep_data: bool) {
        self.applied_policies.lock().remove(name);
        if self.registry.lookup(name).is_none() {
            return;
        }
        match self.registry.remove(name, keep_data).await {
            Ok(deleted) => tracing::info!(function = name, keep_data, keys_deleted = deleted, "no longer served here"),
            Err(error) => tracing::error!(function = name, %error, "could not remove"),
        }
        for hook in self.on_removed.lock().iter() {
            hook(name);
        }
    }

    /// Re-places every function with a replica count after a membership change.
    pub(in crate::cluster) async fn replace_functions(&self) {
        let placed: Vec<(String, FunctionRecord, u32)> = self
            .records
            .read()
            .iter()
            .filter(|(_, known)| known.replicas > 0 && known.record.serving().is_some())
            .map(|(name, known)| (name.clone(), known.record.clone(), known.replicas))
            .collect();
        for (name, record, replicas) in placed {
            self.place(&name, &record, replicas).await;
        }
    }
}
