//! Reading function records and publishing changes to them: what this node last saw of each
//! (the queries the edge answers from), and the compare-and-swap every control write goes
//! through.
//!
//! Invariants: version numbers are the cluster's: a record update is a compare-and-swap on the
//! record's `mod_revision`, retried on a concurrent change, so two deploys through two nodes get
//! two numbers; a record never grows past [`MAX_RECORD_BYTES`]; an update that names a blob
//! commits only while the blob's `meta` is stored.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::blobs::blob_meta_key;
use super::{FunctionRecord, MAX_RECORD_BYTES};
use crate::cluster::{Cluster, ClusterError};
use crate::etcd::Retry;
use crate::registry::{FunctionMeta, RegistryError, validate_name};

/// Attempts at a compare-and-swap on a record before giving up (concurrent writers).
const CAS_ATTEMPTS: usize = 8;

pub(super) fn record_key(name: &str) -> String {
    format!("/ledge/fn/{name}")
}

impl Cluster {
    /// `[placement] replicas` of a deployed function (not removed) as last seen.
    pub fn replicas_of(&self, name: &str) -> Option<u32> {
        self.records.read().get(name).filter(|k| k.record.serving().is_some()).map(|k| k.replicas)
    }

    /// The queues any deployed function's uploaded policy keeps in etcd (`[queues] global`),
    /// wherever it is placed.
    pub fn global_queues(&self) -> Vec<String> {
        let records = self.records.read();
        let serving = records.values().filter(|known| known.record.serving().is_some());
        let mut names: Vec<String> = serving.flat_map(|known| known.global_queues.iter().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// The live version's metadata of a deployed function as last seen.
    pub fn meta(&self, name: &str) -> Option<FunctionMeta> {
        self.records.read().get(name)?.record.meta(name)
    }

    /// `read` of the record of a deployed function (not removed) as last seen.
    pub(in crate::cluster) fn with_serving<T>(
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
    pub(super) async fn read_record(&self, name: &str) -> Result<(Option<FunctionRecord>, i64), ClusterError> {
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
    pub(in crate::cluster) async fn update_record(
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
}
