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

use std::collections::HashSet;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::etcd::{EtcdError, Retry};
use super::follow::Change;
use super::{Cluster, ClusterError};
use crate::registry::{Deployed, FunctionMeta, PolicyChange, RegistryError, sha256_hex, validate_name};

/// Bytes per stored chunk of a component: under etcd's 1.5 MiB request limit with room for the
/// request's own framing.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Attempts at a compare-and-swap on a record before giving up (concurrent writers).
const CAS_ATTEMPTS: usize = 8;

/// A function as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The live version.
    pub live: u64,
    /// Kept versions, oldest first (the live one among them).
    pub versions: Vec<VersionRecord>,
    /// The uploaded policy, if any (else each node's policy files apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
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
    record: FunctionRecord,
    replicas: u32,
}

impl FunctionRecord {
    /// The live version's entry.
    pub fn live_version(&self) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == self.live)
    }

    /// Serving: not removed, with a live version.
    fn serving(&self) -> Option<&VersionRecord> {
        if self.removed.is_some() { None } else { self.live_version() }
    }

    /// The metadata a node reports for the live version.
    pub fn meta(&self, name: &str) -> Option<FunctionMeta> {
        Some(self.serving()?.meta(name))
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
    async fn update_record(
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
        if canary.is_some() {
            return Err(ClusterError::NotInCluster("a canary deploy"));
        }
        if let Some(text) = policy {
            self.registry.check_policy(name, text, who).await?;
        }
        // One round trip first, so that an etcd outage is refused before seconds of compiling.
        self.read_record(name).await?;
        let sha256 = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        self.registry.check_component(bytes.clone()).await?;
        self.store_blob(&sha256, &bytes).await?;
        drop(bytes);
        let keep = self.registry.lookup(name).map_or(10, |d| d.policy.versions_keep).max(1) as usize;
        let deployed_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let (record, revision) = self
            .update_record(name, Some(&sha256), |current| {
                let mut record =
                    current.unwrap_or(FunctionRecord { live: 0, versions: Vec::new(), policy: None, removed: None });
                let version = record.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
                record.versions.push(VersionRecord {
                    version,
                    sha256: sha256.clone(),
                    size,
                    deployed_at: deployed_at.clone(),
                });
                record.live = version;
                let excess = record.versions.len().saturating_sub(keep);
                record.versions.drain(..excess);
                if let Some(text) = policy {
                    record.policy = Some(text.to_string());
                }
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await?;
        self.collect_blobs().await;
        let live = record.meta(name).expect("a deploy makes a version live");
        let meta = self.registry.lookup(name).map(|d| d.meta.clone()).filter(|m| m.version == live.version);
        Ok(Deployed { created: live.version == 1, meta: meta.unwrap_or(live) })
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

    /// Makes a kept version live again (default: the newest older than the live one).
    pub async fn rollback(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<crate::registry::versions::Versions, ClusterError> {
        validate_name(name)?;
        let (record, revision) = self
            .update_record(name, None, |current| {
                let mut record = current.ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
                let target = match version {
                    Some(version) => version,
                    None => record.versions.iter().map(|v| v.version).filter(|v| *v < record.live).max().ok_or_else(
                        || ClusterError::Versions(format!("`{name}` has no kept version older than {}", record.live)),
                    )?,
                };
                if !record.versions.iter().any(|v| v.version == target) {
                    return Err(ClusterError::Versions(format!("`{name}` keeps no version {target}")));
                }
                record.live = target;
                Ok(record)
            })
            .await?;
        self.wait_applied(revision).await?;
        let kept = record.versions.iter().map(|v| v.meta(name)).collect();
        Ok(crate::registry::versions::Versions { live: record.live, canary: None, kept })
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
        let applied = known.as_ref().map(|k| (k.record.serving().cloned(), k.record.policy.clone(), k.replicas));
        let removal = known.as_ref().and_then(|k| k.record.removed);
        match known {
            Some(known) => self.records.write().insert(name.to_string(), known),
            None => self.records.write().remove(name),
        };
        match applied {
            Some((Some(live), policy, replicas)) => self.place(name, &live, policy.as_deref(), replicas).await,
            // Removed (tombstone) or gone: keep the data unless the removal said otherwise.
            _ => self.stop_serving(name, removal.is_none_or(|r| r.keep_data)).await,
        }
    }

    /// Serves the live version of `name` here if this node hosts it, else stops serving it.
    async fn place(&self, name: &str, live: &VersionRecord, policy: Option<&str>, replicas: u32) {
        if self.hosts(name, replicas) {
            self.install(name, live, policy).await
        } else {
            self.stop_serving(name, true).await
        }
    }

    /// Makes `live` this node's live version of `name` with `policy`, fetching and compiling
    /// the component unless it already runs here.
    async fn install(&self, name: &str, live: &VersionRecord, policy: Option<&str>) {
        let current = self.registry.lookup(name);
        let same = current
            .as_ref()
            .is_some_and(|d| d.meta.version == live.version && d.meta.sha256 == live.sha256 && d.canary.is_none());
        let applied_policy = self.applied_policies.lock().get(name).cloned();
        if same {
            if let Some(text) =
                policy.filter(|text| applied_policy.as_ref().is_none_or(|a| a.as_deref() != Some(*text)))
            {
                match self.registry.set_policy(name, text, PolicyChange::Any).await {
                    Ok(_) => tracing::info!(function = name, "cluster policy applied"),
                    Err(error) => tracing::error!(function = name, %error, "cluster policy refused here"),
                }
            }
            self.applied_policies.lock().insert(name.to_string(), policy.map(str::to_string));
            return;
        }
        let bytes = match self.fetch_blob(&live.sha256).await {
            Ok(bytes) => bytes,
            Err(error) => {
                return tracing::error!(function = name, version = live.version, %error, "cannot fetch the component");
            }
        };
        match self.registry.install(name, bytes, policy, live.version, &live.deployed_at).await {
            Ok(_) => {
                self.applied_policies.lock().insert(name.to_string(), policy.map(str::to_string));
                tracing::info!(function = name, version = live.version, "installed from the cluster");
            }
            Err(error) => tracing::error!(function = name, version = live.version, %error, "cannot install"),
        }
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
        let placed: Vec<(String, VersionRecord, Option<String>, u32)> = self
            .records
            .read()
            .iter()
            .filter(|(_, known)| known.replicas > 0)
            .filter_map(|(name, known)| {
                let live = known.record.serving()?.clone();
                Some((name.clone(), live, known.record.policy.clone(), known.replicas))
            })
            .collect();
        for (name, live, policy, replicas) in placed {
            self.place(&name, &live, policy.as_deref(), replicas).await;
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
