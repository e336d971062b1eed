//! Components stored in etcd by SHA-256 (`blob/SHA/`): chunks under etcd's request limit,
//! then a `meta` that marks the blob complete; read back, collected when no record refers to
//! them, and kept under the cluster's budget (`--cluster-max-artifact-bytes`).
//!
//! Invariants:
//! - a blob is complete once its `meta` is stored: the chunks are written first, `meta` last;
//! - a component read back is used only when its size and SHA-256 match;
//! - a blob is deleted only when no record refers to it, in a transaction that checks that no
//!   record changed since the records were read;
//! - a new component is refused when it would bring the components kept past the budget (one
//!   stored already costs nothing).

use std::collections::{HashMap, HashSet};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::FunctionRecord;
use crate::cluster::{Cluster, ClusterError};
use crate::etcd::{EtcdError, Retry};
use crate::registry::{RegistryError, sha256_hex};

/// Bytes per stored chunk of a component: under etcd's 1.5 MiB request limit with room for the
/// request's own framing.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A stored component's index, written after its chunks.
#[derive(Debug, Serialize, Deserialize)]
struct BlobMeta {
    size: u64,
    chunks: u32,
}

fn blob_prefix(sha256: &str) -> String {
    format!("/ledge/blob/{sha256}/")
}

pub(super) fn blob_meta_key(sha256: &str) -> String {
    format!("{}meta", blob_prefix(sha256))
}

fn chunk_key(sha256: &str, index: u32) -> String {
    format!("{}c{index:05}", blob_prefix(sha256))
}

impl Cluster {
    /// Refuses a component that would bring the components stored in etcd (as last seen) past
    /// the cluster's budget; one stored already costs nothing.
    pub(super) fn check_artifact_budget(&self, sha256: &str, size: u64) -> Result<(), ClusterError> {
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

    /// Stores a component by SHA-256 unless it is there already: chunks first, `meta` last.
    pub(super) async fn store_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), ClusterError> {
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
    pub(super) async fn ensure_blob_stored(&self, sha256: &str) -> Result<(), ClusterError> {
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
    pub(super) async fn fetch_blob(&self, sha256: &str) -> Result<Vec<u8>, EtcdError> {
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
    pub(super) async fn collect_blobs(&self) {
        if let Err(error) = self.try_collect_blobs().await {
            tracing::debug!(%error, "component collection skipped");
        }
    }

    async fn try_collect_blobs(&self) -> Result<(), EtcdError> {
        let (seen, records) = self.etcd.list("/ledge/fn/", false).await?;
        let referenced: HashSet<String> = records
            .iter()
            .filter_map(|kv| serde_json::from_slice::<FunctionRecord>(kv.value()).ok())
            .filter(|record| record.removed.is_none())
            .flat_map(|record| record.versions.into_iter().map(|v| v.sha256))
            .collect();
        drop(records);
        let (_, metas) = self.etcd.list("/ledge/blob/", true).await?;
        let stored: HashSet<String> = metas
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
}
