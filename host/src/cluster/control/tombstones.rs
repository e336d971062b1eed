//! Deleting tombstones: a removed function's record stays in etcd as a tombstone (holding only
//! the removal) until every live node has applied it, then it is deleted, so that removed
//! functions do not pile up in etcd and in every listing. A node that was away meanwhile finds
//! the function missing from its next listing and stops serving it then (keeping its data).
//!
//! Invariants: a tombstone is deleted only once every live node (`nodes/NAME`) has published
//! an applied revision (`applied/NAME`, see `members.rs`) at or past the tombstone's, and only
//! while it is still the record (compared on its `mod_revision`: a deploy since wins); one node
//! deletes it, the live node that ranks first for the function.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::records::record_key;
use crate::cluster::Cluster;
use crate::cluster::follow::Follower;
use crate::cluster::members::APPLIED_PREFIX;
use crate::etcd::{EtcdError, Retry};

/// How often a node looks for tombstones to delete (a local check unless it has some).
const COLLECT_EVERY: Duration = Duration::from_secs(1);

impl Cluster {
    /// Deletes tombstones, round after round, until the cluster is dropped.
    pub(in crate::cluster) async fn keep_collecting(cluster: Weak<Cluster>) {
        loop {
            tokio::time::sleep(COLLECT_EVERY).await;
            let Some(strong) = cluster.upgrade() else { return };
            if let Err(error) = strong.collect_tombstones().await {
                tracing::debug!(%error, "tombstone collection skipped");
            }
        }
    }

    /// Deletes the tombstones this node is to delete that every live node has applied (what
    /// is left is tried again on the next round).
    async fn collect_tombstones(&self) -> Result<(), EtcdError> {
        let mine: Vec<(String, i64)> = self
            .records
            .read()
            .iter()
            .filter(|(_, known)| known.record.removed.is_some())
            .map(|(name, known)| (name.clone(), known.revision))
            .collect();
        let mine: Vec<(String, i64)> = mine
            .into_iter()
            .filter(|(name, _)| self.hosts_of(name, 1).first().is_some_and(|node| node.name == self.node))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let Some(everywhere) = self.applied_everywhere().await? else { return Ok(()) };
        for (name, revision) in mine.into_iter().filter(|(_, revision)| *revision <= everywhere) {
            let key = record_key(&name);
            // Safe to send again: a second delete fails the compare.
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then(vec![TxnOp::delete(key, None)]);
            if self.etcd.txn(Retry::Any, txn).await?.succeeded() {
                tracing::info!(function = %name, revision, "removal applied by every live node: tombstone deleted");
            }
        }
        Ok(())
    }

    /// The revision every live node has applied function records up to (`None` while a live
    /// node has published none).
    async fn applied_everywhere(&self) -> Result<Option<i64>, EtcdError> {
        let (_, nodes) = self.etcd.list(Follower::Nodes.prefix(), true).await?;
        let (_, applied) = self.etcd.list(APPLIED_PREFIX, false).await?;
        let applied: HashMap<&[u8], i64> = applied
            .iter()
            .filter_map(|kv| {
                let revision = std::str::from_utf8(kv.value()).ok()?.parse().ok()?;
                Some((kv.key().strip_prefix(APPLIED_PREFIX.as_bytes())?, revision))
            })
            .collect();
        let prefix = Follower::Nodes.prefix().as_bytes();
        let each = nodes.iter().map(|kv| kv.key().strip_prefix(prefix).and_then(|name| applied.get(name).copied()));
        Ok(each.collect::<Option<Vec<i64>>>().and_then(|revisions| revisions.into_iter().min()))
    }
}
