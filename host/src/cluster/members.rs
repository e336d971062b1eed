//! Membership and placement: each node keeps `/ledge/nodes/NAME` on a lease it renews; the
//! live nodes are whatever those keys say. A function with `[placement] replicas = N` is
//! hosted by the N live nodes that rank highest for it by rendezvous (highest-random-weight)
//! hashing, so a node joining or leaving moves only the functions whose winners changed.
//!
//! On the same lease each node publishes `/ledge/applied/NAME`: the etcd revision up to which
//! it has applied function records, which tells when every live node has applied a removal
//! (`control/tombstones.rs`).
//!
//! Invariants: a node's keys live exactly as long as its lease (a node that stops renewing
//! disappears after [`LEASE_TTL_SECONDS`]); a name held by another live node (another
//! `node.id`) is refused at start; every node ranks with the same hash, so nodes that see the
//! same members agree on the hosts; a node publishes only revisions it has applied.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::follow::{Change, Listed};
use super::{Cluster, ROOT};
use crate::etcd::{REQUEST_TIMEOUT, Retry};

/// Seconds a node stays listed after it stops renewing its lease.
pub const LEASE_TTL_SECONDS: i64 = 5;

/// How often a node renews its lease and refreshes what it reports (functions, load).
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How often a node's report is rewritten even when its functions did not change (its load).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How often etcd's reachability is checked (what `/readyz` reports between watch events).
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// What `ledge nodes` lists for each live node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// How peers and clients reach it.
    pub address: String,
    /// The version and the commit of the ledge it runs (`ledge --version`), so that a rolling
    /// upgrade shows which node runs what. A node from before the commit was published has none.
    pub version: String,
    #[serde(default)]
    pub commit: String,
    /// Functions it serves.
    pub functions: usize,
    /// Guest instances running on it.
    pub load: i64,
    pub started_at: String,
    /// The node's identity across restarts.
    pub id: String,
}

fn node_key(name: &str) -> String {
    format!("{ROOT}nodes/{name}")
}

/// Where each live node publishes the revision up to which it has applied function records.
pub(super) const APPLIED_PREFIX: &str = "/ledge/applied/";

/// This node's identity: a random id kept in `<data-dir>/node.id`.
pub fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node.id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_string());
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random node id: {e}"))?;
    let id = hex::encode(bytes);
    crate::storage::write_durably(&path, id.as_bytes())?;
    Ok(id)
}

impl Cluster {
    /// Refuses to start under a name another live node holds (when etcd can be asked).
    pub(super) async fn check_name_is_free(&self) -> anyhow::Result<()> {
        let key = node_key(&self.node);
        let Ok(response) = self.etcd.get(key.clone(), None).await else {
            return Ok(()); // etcd away: checked when the node registers.
        };
        let holder = response.kvs().first().and_then(|kv| serde_json::from_slice::<NodeInfo>(kv.value()).ok());
        match holder {
            Some(holder) if holder.id != self.node_id => anyhow::bail!(
                "node name `{}` is held by another live node at {}; give --node-name",
                self.node,
                holder.address
            ),
            _ => Ok(()),
        }
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.node.clone(),
            address: self.advertise.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("LEDGE_COMMIT").to_string(),
            functions: self.registry.list().len(),
            load: (self.load)(),
            started_at: self.started_at.clone(),
            id: self.node_id.clone(),
        }
    }

    /// Live nodes, by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.read().values().cloned().collect()
    }

    pub(super) fn replace_nodes(&self, entries: &[Listed]) {
        let nodes: BTreeMap<String, NodeInfo> = entries
            .iter()
            .filter_map(|entry| Some((entry.name.clone(), serde_json::from_slice(&entry.value).ok()?)))
            .collect();
        let moved = placement_view(&self.nodes.read()) != placement_view(&nodes);
        *self.nodes.write() = nodes;
        if moved {
            self.placement_changed.notify_one();
        }
    }

    pub(super) fn apply_node_change(&self, change: Change<'_>) {
        let mut nodes = self.nodes.write();
        let before = placement_view(&nodes);
        match change.value.and_then(|value| serde_json::from_slice::<NodeInfo>(value).ok()) {
            Some(info) => nodes.insert(change.name.to_string(), info),
            None => nodes.remove(change.name),
        };
        if placement_view(&nodes) != before {
            self.placement_changed.notify_one();
        }
    }

    /// The live nodes that host a function with `replicas` (0: all), best ranked first.
    pub fn hosts_of(&self, name: &str, replicas: u32) -> Vec<NodeInfo> {
        let nodes = self.nodes.read();
        let mut ranked: Vec<(u64, &NodeInfo)> = nodes.values().map(|node| (weight(&node.name, name), node)).collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let count = if replicas == 0 { ranked.len() } else { (replicas as usize).min(ranked.len()) };
        ranked.into_iter().take(count).map(|(_, node)| node.clone()).collect()
    }

    /// Whether this node hosts a function with `replicas`. Before this node knows any member
    /// (etcd away since start), it hosts what it has.
    pub fn hosts(&self, name: &str, replicas: u32) -> bool {
        if replicas == 0 || !self.nodes.read().contains_key(&self.node) {
            return true;
        }
        self.hosts_of(name, replicas).iter().any(|node| node.name == self.node)
    }

    /// Scheduled runs happen once per cluster: on the best-ranked live host. Out of sync, a
    /// node runs none (another may be running them).
    pub(super) fn runs_schedules_of(&self, name: &str) -> bool {
        if !self.in_sync() {
            return false;
        }
        let replicas = self.replicas_of(name).unwrap_or(0);
        self.hosts_of(name, replicas).first().is_some_and(|node| node.name == self.node)
    }
}

/// The rendezvous weight of `node` for `function`: the same on every node.
fn weight(node: &str, function: &str) -> u64 {
    let digest = Sha256::new().chain_update(node).chain_update([0]).chain_update(function).finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What placement depends on: the names of the live nodes.
fn placement_view(nodes: &BTreeMap<String, NodeInfo>) -> Vec<String> {
    nodes.keys().cloned().collect()
}

/// Keeps this node's membership key alive: a lease, renewed every [`RENEW_EVERY`], with the
/// node's report rewritten on it; a lost lease (etcd away longer than its TTL) is replaced.
pub(super) async fn keep_membership(cluster: Weak<Cluster>) {
    loop {
        let Some(strong) = cluster.upgrade() else { return };
        if let Err(error) = hold_lease(&strong).await {
            tracing::debug!(%error, "cluster membership lost; registering again");
        }
        drop(strong);
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn hold_lease(cluster: &Cluster) -> anyhow::Result<()> {
    let lease_id = cluster.etcd.lease_grant(LEASE_TTL_SECONDS).await?.id();
    let (mut keeper, mut renewals) =
        tokio::time::timeout(REQUEST_TIMEOUT, cluster.etcd.client().lease_keep_alive(lease_id)).await??;
    let key = node_key(&cluster.node);
    // What was last written, and when: the key is rewritten when the node's functions change,
    // and every REPORT_EVERY for its load, not on every renewal (each write is a quorum write
    // every node's watch receives).
    let mut written: Option<(NodeInfo, Instant)> = None;
    // The applied revision last published on this lease.
    let mut published = None;
    loop {
        let info = cluster.info();
        let stale =
            written.as_ref().is_none_or(|(last, at)| last.functions != info.functions || at.elapsed() >= REPORT_EVERY);
        if stale && cluster.register(&key, &info, lease_id).await? {
            written = Some((info, Instant::now()));
        }
        if written.is_some() {
            published = cluster.publish_applied(lease_id, published).await;
        }
        let renewed = tokio::time::timeout(REQUEST_TIMEOUT, async {
            keeper.keep_alive().await?;
            renewals.message().await
        })
        .await??;
        if renewed.is_none_or(|r| r.ttl() <= 0) {
            anyhow::bail!("lease {lease_id:x} expired");
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

impl Cluster {
    /// Writes this node's report on its lease, unless another live node holds the name; says
    /// whether it wrote.
    async fn register(&self, key: &str, info: &NodeInfo, lease_id: i64) -> anyhow::Result<bool> {
        let current = self.etcd.get(key, None).await?;
        let (seen, holder) = match current.kvs().first() {
            Some(kv) => (kv.mod_revision(), serde_json::from_slice::<NodeInfo>(kv.value()).ok()),
            None => (0, None),
        };
        // The key is ours when absent or written by this node (same id) before.
        if holder.as_ref().is_some_and(|h| h.id != self.node_id) {
            tracing::error!(node = %self.node, "another live node holds this node's name; waiting for it to go");
            return Ok(false);
        }
        let put = TxnOp::put(key, serde_json::to_vec(info)?, Some(PutOptions::new().with_lease(lease_id)));
        let txn = Txn::new().when(vec![Compare::mod_revision(key, CompareOp::Equal, seen)]).and_then(vec![put]);
        Ok(self.etcd.txn(Retry::Any, txn).await?.succeeded())
    }

    /// Publishes, on this node's lease, the revision up to which it has applied function
    /// records, when it moved since `published`; returns what is published now.
    async fn publish_applied(&self, lease_id: i64, published: Option<i64>) -> Option<i64> {
        let applied = *self.applied.borrow();
        if applied == 0 || published == Some(applied) {
            return published;
        }
        let key = format!("{APPLIED_PREFIX}{}", self.node);
        match self.etcd.put(key, applied.to_string(), Some(PutOptions::new().with_lease(lease_id))).await {
            Ok(_) => Some(applied),
            Err(error) => {
                tracing::debug!(%error, "could not publish the applied revision");
                published
            }
        }
    }
}

/// Checks every [`HEALTH_EVERY`] that etcd answers a linearizable read.
pub(super) async fn check_health(cluster: Weak<Cluster>) {
    loop {
        let Some(strong) = cluster.upgrade() else { return };
        let reached = strong.etcd.get("/ledge/health", None).await.is_ok();
        strong.reachable.store(reached, Ordering::Relaxed);
        drop(strong);
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hosts of each function among `nodes`, `replicas` each, ranked as the cluster ranks.
    fn placement(nodes: &[&str], functions: usize, replicas: usize) -> Vec<Vec<String>> {
        (0..functions)
            .map(|f| {
                let function = format!("fn-{f}");
                let mut ranked: Vec<&str> = nodes.to_vec();
                ranked.sort_by_key(|node| std::cmp::Reverse(weight(node, &function)));
                ranked.into_iter().take(replicas).map(str::to_string).collect()
            })
            .collect()
    }

    #[test]
    fn a_joining_node_moves_only_the_functions_it_wins() {
        let before = placement(&["a", "b", "c"], 300, 1);
        let after = placement(&["a", "b", "c", "d"], 300, 1);
        let moved: Vec<usize> = (0..300).filter(|i| before[*i] != after[*i]).collect();
        assert!(moved.iter().all(|i| after[*i] == ["d"]), "a function moved between old nodes");
        // About a quarter moves to the new node (rendezvous spreads evenly).
        assert!((40..110).contains(&moved.len()), "{} of 300 moved", moved.len());
    }

    #[test]
    fn a_leaving_node_moves_only_its_functions() {
        let before = placement(&["a", "b", "c"], 300, 2);
        let after = placement(&["a", "c"], 300, 2);
        for (old, new) in before.iter().zip(&after) {
            if !old.contains(&"b".to_string()) {
                assert_eq!(old, new, "a function not hosted by the leaving node moved");
            }
        }
    }

    #[test]
    fn weights_are_the_same_on_every_node() {
        // A fixed value: every build of ledge must rank nodes the same way.
        assert_eq!(weight("a", "hello"), weight("a", "hello"));
        assert_ne!(weight("a", "hello"), weight("b", "hello"));
        assert_ne!(weight("ab", "c"), weight("a", "bc"), "the separator keeps names apart");
    }

    #[test]
    fn a_record_from_a_node_that_publishes_no_commit_still_lists() {
        // What a node from before the commit was published writes under `nodes/NAME`.
        let older = r#"{"name":"a","address":"http://10.0.0.1:8080","version":"0.1.0","functions":2,
            "load":0,"started_at":"2026-01-01T00:00:00Z","id":"ab12"}"#;
        let node: NodeInfo = serde_json::from_str(older).unwrap();
        assert_eq!((node.version.as_str(), node.commit.as_str()), ("0.1.0", ""));
        let json = serde_json::to_value(NodeInfo { commit: "0123456789ab".into(), ..node }).unwrap();
        assert_eq!(
            (&json["version"], &json["commit"]),
            (&serde_json::json!("0.1.0"), &serde_json::json!("0123456789ab"))
        );
    }
}
