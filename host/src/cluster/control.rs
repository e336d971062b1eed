//! Functions in the cluster: their records in etcd, components stored by SHA-256, the writes
//! a node publishes (deploy, policy, removal, rollback) and how every node applies them.
//!
//! Invariants:
//! - a record names only components whose blob is complete: a deploy uploads the chunks, then
//!   the blob's `meta`, then commits the record in a transaction that checks the `meta` is
//!   still there (a garbage collection running beside it cannot leave a dangling record);
//! - version numbers are the cluster's: a record update is a compare-and-swap on the record's
//!   `mod_revision`, so two deploys through two nodes get two numbers;
//! - a blob is deleted only when no record refers to it, in a transaction that checks that no
//!   record changed since the records were read;
//! - a node installs a component only after its SHA-256 matches the record's.

use std::collections::{HashMap, HashSet};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::etcd::{EtcdError, Retry};
use super::follow::Change;
use super::{Cluster, ClusterError};
use crate::registry::config::ConfigEntries;
use crate::registry::versions::{Versions, check_canary};
use crate::registry::{CanarySplit, Deployed, FunctionMeta, PolicyChange, RegistryError, sha256_hex, validate_name};

/// Bytes per stored chunk of a component: under etcd's 1.5 MiB request limit with room for the
/// request's own framing.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bytes of one function's record (kept versions, policy, config): under etcd's 1.5 MiB
/// request limit.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Attempts at a compare-and-swap on a record before giving up (concurrent writers).
const CAS_ATTEMPTS: usize = 8;

/// A function as the cluster knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The live version.
    pub live: u64,
    /// A newer version serving a share of callers (`ledge deploy --canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySplit>,
    /// Kept versions, oldest first (the live one among them).
    pub versions: Vec<VersionRecord>,
    /// The uploaded policy, if any (else each node's policy files apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `ledge config` entries, secrets sealed under the cluster's secrets key.
    #[serde(default, skip_serializing_if = "ConfigEntries::is_empty")]
    pub config: ConfigEntries,
    /// Set when the function was removed (a tombstone, so that nodes that were away remove it
    /// too, and know whether to keep its data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Removal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    pub deployed_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    pub keep_data: bool,
}

/// A stored component's index, written after its chunks.
#[derive(Debug, Serialize, Deserialize)]
struct BlobMeta {
    size: u64,
    chunks: u32,
}

fn record_key(name: &str) -> String {
    format!("/ledge/fn/{name}")
}

fn blob_prefix(sha256: &str) -> String {
    format!("/ledge/blob/{sha256}/")
}

fn blob_meta_key(sha256: &str) -> String {
    format!("{}meta", blob_prefix(sha256))
}

fn chunk_key(sha256: &str, index: u32) -> String {
    format!("{}c{index:05}", blob_prefix(sha256))
}

impl VersionRecord {
    fn meta(&self, name: &str) -> FunctionMeta {
        FunctionMeta {
            name: name.to_string(),
            version: self.version,
            sha256: self.sha256.clone(),
            size: self.size,
            deployed_at: self.deployed_at.clone(),
            code_sha256: String::new(),
            snapshot_sha256: None,
            canary: None,
        }
    }
}

/// A record as a node keeps it: with its placement parsed once, not per request.
pub(super) struct Known {
    pub(super) record: FunctionRecord,
    replicas: u32,
}

impl FunctionRecord {
    /// The live version's entry.
    pub fn live_version(&self) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == self.live)
    }

    /// Serving: not removed, with a live version.
    pub(super) fn serving(&self) -> Option<&VersionRecord> {
        if self.removed.is_some() { None } else { self.live_version() }
    }

    /// The metadata a node reports for the live version.
    pub fn meta(&self, name: &str) -> Option<FunctionMeta> {
        Some(self.serving()?.meta(name))
    }

    /// The canary's entry, if there is one.
    fn canary_version(&self) -> Option<&VersionRecord> {
        let canary = self.canary?;
        self.versions.iter().find(|v| v.version == canary.version)
    }

    /// What `ledge versions` shows.
    fn versions(&self, name: &str) -> Versions {
        Versions { live: self.live, canary: self.canary, kept: self.versions.iter().map(|v| v.meta(name)).collect() }
    }

    /// Drops the oldest versions past `keep`, never the live one or the canary.
    fn prune(&mut self, keep: usize) {
        let needed = [Some(self.live), self.canary.map(|c| c.version)];
        while self.versions.len() > keep {
            let Some(oldest) = self.versions.iter().position(|v| !needed.contains(&Some(v.version))) else { break };
            self.versions.remove(oldest);
        }
    }

    /// `[placement] replicas` of the uploaded policy (0: every node). Parses the policy: call
    /// once per record ([`Known`] keeps the result).
    fn replicas(&self) -> u32 {
        self.policy
            .as_deref()
            .and_then(|text| crate::access::policy::PolicyFile::parse(text).ok())
            .and_then(|file| file.placement.and_then(|p| p.replicas))
            .unwrap_or(0)
    }
}

impl Cluster {
    /// `[placement] replicas` of a deployed function (not removed) as last seen.
    pub fn replicas_of(&self, name: &str) -> Option<u32> {
        self.records.read().get(name).filter(|k| k.record.serving().is_some()).map(|k| k.replicas)
    }

    /// The live version's metadata of a deployed function as last seen.
    pub fn meta(&self, name: &str) -> Option<FunctionMeta> {
        self.records.read().get(name)?.record.meta(name)
    }

    /// `ledge versions` of a deployed function as last seen.
    pub fn versions(&self, name: &str) -> Result<Versions, ClusterError> {
        self.with_serving(name, |record| record.versions(name))
    }

    /// `read` of the record of a deployed function (not removed) as last seen.
    pub(super) fn with_serving<T>(
        &self,
        name: &str,
        read: impl FnOnce(&FunctionRecord) -> T,
    ) -> Result<T, ClusterError> {
        validate_name(name)?;
        let records = self.records.read();
        let record = records.get(name).map(|k| &k.record).filter(|r| r.serving().is_some());
        Ok(read(record.ok_or_else(|| RegistryError::NotFound(name.to_string()))?))
    }

    /// Every deployed function's metadata, by name.
    pub fn list(&self) -> Vec<FunctionMeta> {
        let records = self.records.read();
        let mut metas: Vec<FunctionMeta> = records.iter().filter_map(|(name, known)| known.record.meta(name)).collect();
        metas.sort_by(|a, b| a.name.cmp(&b.name));
        metas
    }

    /// Reads a record and its `mod_revision` (0 when absent) from etcd.
    async fn read_record(&self, name: &str) -> Result<(Option<FunctionRecord>, i64), ClusterError> {
        let key = record_key(name);
        let response = self.etcd.get(key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else { return Ok((None, 0)) };
        let record = serde_json::from_slice(kv.value())
            .map_err(|e| RegistryError::Versions(format!("the cluster's record of `{name}` is unreadable: {e}")))?;
        Ok((Some(record), kv.mod_revision()))
    }

    /// Publishes `change` to a function's record (a compare-and-swap, retried on a concurrent
    /// change), requiring `blob` to be stored when given; returns the new record and the
    /// revision it was committed at.
    pub(super) async fn update_record(
        &self,
        name: &str,
        blob: Option<&str>,
        mut change: impl FnMut(Option<FunctionRecord>) -> Result<FunctionRecord, ClusterError>,
    ) -> Result<(FunctionRecord, i64), ClusterError> {
        let key = record_key(name);
        for _ in 0..CAS_ATTEMPTS {
            let (current, seen) = self.read_record(name).await?;
            let record = change(current.filter(|r| r.removed.is_none()))?;
            let value = serde_json::to_vec(&record).map_err(|e| RegistryError::Io(std::io::Error::other(e)))?;
            if value.len() > MAX_RECORD_BYTES {
                return Err(ClusterError::TooLarge(format!(
                    "the cluster's record of `{name}` would take {} bytes, over its limit of {MAX_RECORD_BYTES} (its policy and config values count toward it)",
                    value.len()
                )));
            }
            let mut compares = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, seen)];
            if let Some(sha256) = blob {
                compares.push(Compare::version(blob_meta_key(sha256), CompareOp::Greater, 0));
            }
            let txn = Txn::new().when(compares).and_then(vec![TxnOp::put(key.clone(), value, None)]);
            let response = self.etcd.txn(Retry::Unsent, txn.clone()).await?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                return Ok((record, revision));
            }
            if let Some(sha256) = blob {
                // The blob may have been collected between its upload and this commit.
                self.ensure_blob_stored(sha256).await?;
            }
        }
        Err(RegistryError::Versions(format!("`{name}` is being changed concurrently; retry")).into())
    }

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
        if let Some(text) = policy {
            self.registry.check_policy(name, text, who).await?;
        }
        // One round trip first, so that an etcd outage is refused before seconds of compiling.
        self.read_record(name).await?;
        let sha256 = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        self.check_artifact_budget(&sha256, size)?;
        self.registry.check_component(bytes.clone()).await?;
        self.store_blob(&sha256, &bytes).await?;
        drop(bytes);
        let keep = self.registry.lookup(name).map_or(10, |d| d.policy.versions_keep).max(1) as usize;
        let deployed_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let (record, revision) = self
            .update_record(name, Some(&sha256), |current| {
                check_canary(canary, current.is_some())?;
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
                record.prune(keep);
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

    /// Refuses a component that would bring the components stored in etcd (as last seen) past
    /// the cluster's budget; one stored already costs nothing.
    fn check_artifact_budget(&self, sha256: &str, size: u64) -> Result<(), ClusterError> {
        let records = self.records.read();
        let stored: HashMap<&str, u64> = records
            .values()
            .filter(|known| known.record.removed.is_none())
            .flat_map(|known| known.record.versions.iter().map(|v| (v.sha256.as_str(), v.size)))
            .collect();
        let total = stored.values().sum::<u64>() + size;
        if stored.contains_key(sha256) || total <= self.max_artifact_bytes {
            return Ok(());
        }
        Err(ClusterError::TooLarge(format!(
            "storing this component ({size} bytes) would bring the components kept in etcd to {total} bytes, over the cluster's budget of {} bytes (--cluster-max-artifact-bytes); remove functions or keep fewer versions ([versions] keep)",
            self.max_artifact_bytes
        )))
    }

    /// Publishes a function's uploaded policy.
    pub async fn set_policy(&self, name: &str, text: &str, who: PolicyChange) -> Result<(), ClusterError> {
        validate_name(name)?;
        self.registry.check_policy(name, text, who).await?;
        let (_, revision) = self
            .update_record(name, None, |current| {
                let mut record = current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                record.policy = Some(text.to_string());
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await
    }

    /// Removes a function from every node (a tombstone record).
    pub async fn remove(&self, name: &str, keep_data: bool) -> Result<(), ClusterError> {
        validate_name(name)?;
        let (_, revision) = self
            .update_record(name, None, |current| {
                let mut record = current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                record.removed = Some(Removal { keep_data });
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await?;
        self.collect_blobs().await;
        Ok(())
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

    /// Stores a component by SHA-256 unless it is there already: chunks first, `meta` last.
    async fn store_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), ClusterError> {
        let meta_key = blob_meta_key(sha256);
        let present = self.etcd.get(meta_key.clone(), None).await?;
        if !present.kvs().is_empty() {
            return Ok(());
        }
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let key = chunk_key(sha256, index as u32);
            // A put of the same bytes is idempotent: safe to send again.
            self.etcd.put(key.clone(), chunk.to_vec(), None).await?;
        }
        let meta = serde_json::to_vec(&BlobMeta { size: bytes.len() as u64, chunks: chunks.len() as u32 })
            .map_err(|e| RegistryError::Io(std::io::Error::other(e)))?;
        self.etcd.put(meta_key.clone(), meta.clone(), None).await?;
        Ok(())
    }

    /// After a failed commit: the blob must be stored again if it was collected meanwhile.
    async fn ensure_blob_stored(&self, sha256: &str) -> Result<(), ClusterError> {
        let meta_key = blob_meta_key(sha256);
        let present = self.etcd.get(meta_key.clone(), None).await?;
        if present.kvs().is_empty() {
            return Err(RegistryError::Versions(
                "the uploaded component was collected before its deploy committed; deploy again".into(),
            )
            .into());
        }
        Ok(())
    }

    /// Reads a component back, checking its size and SHA-256.
    async fn fetch_blob(&self, sha256: &str) -> Result<Vec<u8>, EtcdError> {
        let meta_key = blob_meta_key(sha256);
        let response = self.etcd.get(meta_key.clone(), None).await?;
        let meta: BlobMeta = response
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok())
            .ok_or_else(|| EtcdError::Refused(format!("component {sha256} is not stored in the cluster")))?;
        let mut bytes = Vec::with_capacity(meta.size as usize);
        for index in 0..meta.chunks {
            let key = chunk_key(sha256, index);
            let response = self.etcd.get(key.clone(), None).await?;
            let chunk = response
                .kvs()
                .first()
                .ok_or_else(|| EtcdError::Refused(format!("chunk {index} of {sha256} is missing")))?;
            bytes.extend_from_slice(chunk.value());
        }
        if bytes.len() as u64 != meta.size || sha256_hex(&bytes) != sha256 {
            return Err(EtcdError::Refused(format!(
                "component {sha256} read from the cluster does not match its hash"
            )));
        }
        Ok(bytes)
    }

    /// Deletes stored components no record refers to. Best effort: a failure leaves them for
    /// the next change.
    async fn collect_blobs(&self) {
        if let Err(error) = self.try_collect_blobs().await {
            tracing::debug!(%error, "component collection skipped");
        }
    }

    async fn try_collect_blobs(&self) -> Result<(), EtcdError> {
        let records = self.etcd.get("/ledge/fn/", Some(GetOptions::new().with_prefix())).await?;
        let seen = records.header().map_or(0, |h| h.revision());
        let referenced: HashSet<String> = records
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<FunctionRecord>(kv.value()).ok())
            .filter(|record| record.removed.is_none())
            .flat_map(|record| record.versions.into_iter().map(|v| v.sha256))
            .collect();
        let metas = self.etcd.get("/ledge/blob/", Some(GetOptions::new().with_prefix().with_keys_only())).await?;
        let stored: HashSet<String> = metas
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix("/ledge/blob/")?.split('/').next().map(str::to_string))
            .collect();
        for sha256 in stored.difference(&referenced) {
            let unchanged = Compare::mod_revision("/ledge/fn/", CompareOp::Less, seen + 1).with_prefix();
            let delete = TxnOp::delete(blob_prefix(sha256), Some(etcd_client::DeleteOptions::new().with_prefix()));
            let txn = Txn::new().when(vec![unchanged]).and_then(vec![delete]);
            let response = self.etcd.txn(Retry::Any, txn.clone()).await?;
            if !response.succeeded() {
                return Ok(()); // A record changed: the next change collects.
            }
            tracing::info!(sha256 = %sha256, "stored component collected");
        }
        Ok(())
    }

    /// Applies a fresh listing of every record: removes what the cluster no longer has, then
    /// applies each record.
    pub(super) async fn apply_function_listing(&self, entries: &[(String, Vec<u8>)]) -> Result<(), EtcdError> {
        let listed: HashSet<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
        let local: Vec<String> = self.registry.list().into_iter().map(|m| m.name).collect();
        for name in local.iter().filter(|name| !listed.contains(name.as_str())) {
            // Deployed here before this node joined, unknown to the cluster: stop serving it,
            // keep its data.
            tracing::warn!(function = %name, "not deployed in the cluster; no longer served here (data kept)");
            self.records.write().remove(name);
            self.stop_serving(name, true).await;
        }
        for (name, value) in entries {
            self.apply_function_change(Change { name, value: Some(value) }).await;
        }
        Ok(())
    }

    /// Applies one record (or its deletion) a watch delivered.
    pub(super) async fn apply_function_change(&self, change: Change<'_>) {
        let name = change.name;
        let record = change.value.and_then(|value| match serde_json::from_slice::<FunctionRecord>(value) {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::error!(function = %name, %error, "unreadable record in etcd; ignored");
                None
            }
        });
        let known = record.map(|record| Known { replicas: record.replicas(), record });
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
    pub(super) async fn replace_functions(&self) {
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

    /// Publishes a revocation, then records it here at once.
    pub async fn revoke(&self, token_id: &str) -> Result<(), ClusterError> {
        let key = format!("/ledge/revoked/{token_id}");
        self.etcd.put(key.clone(), b"revoked".to_vec(), None).await?;
        self.revoke_locally(token_id).await;
        Ok(())
    }

    /// Records a revocation in this node's engine (so it holds while etcd is away).
    pub(super) async fn revoke_locally(&self, token_id: &str) {
        let authority = self.authority.clone();
        let id = token_id.to_string();
        let outcome =
            tokio::task::spawn_blocking(move || if authority.is_revoked(&id) { Ok(()) } else { authority.revoke(&id) })
                .await;
        if let Ok(Err(error)) | Err(error) = outcome.map_err(|e| e.to_string()) {
            tracing::error!(token_id, %error, "could not record a revocation");
        }
    }

    /// Adopts the cluster's root keys, and publishes this node's own (put-if-absent: the first
    /// writer of an id wins, so every node ends with the same ring).
    pub(super) async fn sync_keys(&self, entries: &[(String, Vec<u8>)]) -> Result<(), EtcdError> {
        for (id, secret) in entries {
            self.adopt_key(id, secret);
        }
        let local =
            crate::access::tokens::key_secrets(&self.data_dir).map_err(|e| EtcdError::Refused(e.to_string()))?;
        for (id, secret) in local.into_iter().filter(|(id, _)| !entries.iter().any(|(listed, _)| listed == id)) {
            let key = format!("/ledge/keys/{id}");
            let txn = Txn::new()
                .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(key.clone(), secret.into_bytes(), None::<PutOptions>)]);
            self.etcd.txn(Retry::Any, txn.clone()).await?;
        }
        Ok(())
    }

    pub(super) fn adopt_key(&self, id: &str, secret: &[u8]) {
        let secret = String::from_utf8_lossy(secret);
        if let Err(error) = self.authority.adopt_key(&self.data_dir, id, &secret) {
            tracing::error!(key_id = id, %error, "cannot adopt the cluster's root key");
        }
    }
}
