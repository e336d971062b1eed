//! Cluster mode (`ledge serve --cluster URL[,URL...]`): control state in etcd, every node a
//! cache of it.
//!
//! etcd holds the control state under `/ledge/`: function records (`fn/NAME`: kept versions,
//! the live one, a canary, the uploaded policy, config with sealed secrets), components by
//! SHA-256 in chunks (`blob/SHA/`), the root key ring (`keys/ID`), revocations (`revoked/ID`),
//! the key that seals secrets (`secrets-key`), live nodes (`nodes/NAME`, and `applied/NAME`: the
//! revision up to which the node has applied records; each on its node's lease), the peer key
//! (`peer-key`), and global key-value data (`kv/`, its usage per keyspace in `kv-usage/`).
//!
//! Between nodes, besides proxying (`peers`): the node verifying a deploy fetches the
//! function's corpus from the nodes that host it (`corpus`) and, when it does not run the
//! function itself, compiles the live build from etcd (`control/live.rs`).
//!
//! Layer: beside the registry, which it drives; the HTTP edge calls it for control writes.
//!
//! Invariants:
//! - etcd is the commit point of every control change: a node publishes a change (a
//!   compare-and-swap on the record it read), then applies it like every other node does,
//!   from its watch; the node's own registry and data dir are a cache that lets it keep serving
//!   while etcd is away;
//! - followers re-list a prefix whenever their watch breaks (another endpoint, a compacted
//!   revision, etcd back from an outage), so a node that missed events catches up from the
//!   state, never from a log;
//! - while etcd cannot be reached, nodes serve what they last saw and refuse control writes
//!   with 503; `/readyz` says whether the node is in sync.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use thiserror::Error;

use crate::access::tokens::Authority;
use crate::etcd::{Etcd, EtcdError};
use crate::registry::{DeployError, PolicyError, Registry, RegistryError};

mod config;
pub mod control;
pub mod corpus;
mod follow;
pub mod members;
pub mod peers;
pub mod sockets;

pub use members::NodeInfo;

/// The root of every key ledge keeps in etcd.
pub const ROOT: &str = "/ledge/";

/// The file, beside the node's own secrets key, that caches the cluster's secrets key.
pub const SECRETS_KEY_CACHE: &str = "cluster-secrets.key";

/// Default bytes of components kept in etcd: half of etcd's default 2 GiB quota, leaving the
/// rest to global key-value data and the other control state.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// How long a control write waits for this node to have applied it.
const APPLY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("{0}; this node keeps serving what it has, but control changes need etcd: retry when it is back")]
    Unavailable(#[from] EtcdError),
    #[error("the change was published but this node did not apply it within {0:?}; check `ledge functions`")]
    NotApplied(Duration),
    #[error("{0}")]
    Versions(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Config(#[from] crate::registry::config::ConfigError),
}

/// Something to run with a function's name.
type NameHook = Box<dyn Fn(&str) + Send + Sync>;

/// What a node needs to join: where etcd is, who this node is, how peers reach it.
pub struct JoinOptions {
    pub etcd: Arc<Etcd>,
    pub node: String,
    pub advertise: String,
    pub data_dir: PathBuf,
    /// Where the cluster's secrets key is cached ([`SECRETS_KEY_CACHE`]).
    pub secrets_cache: PathBuf,
    /// Bytes of components the cluster may keep in etcd.
    pub max_artifact_bytes: u64,
    /// The node's global key-value data: its keyspaces' quotas come from the registry.
    pub global_kv: Option<Arc<crate::guest_kv::global::GlobalStore>>,
}

pub struct Cluster {
    pub node: String,
    /// `ledge-node: NODE`, the header every function response carries (built once).
    pub node_header: http::HeaderValue,
    pub advertise: String,
    etcd: Arc<Etcd>,
    registry: Arc<Registry>,
    authority: Arc<Authority>,
    data_dir: PathBuf,
    secrets_cache: PathBuf,
    max_artifact_bytes: u64,
    /// The cluster's secrets key is adopted: secrets may be sealed.
    secrets_ready: AtomicBool,
    /// This node's identity across restarts (a random id kept in the data dir): a node name
    /// already held by another live node is refused.
    node_id: String,
    /// When this node joined (RFC 3339), as `ledge nodes` shows it.
    started_at: String,
    /// Function records as last seen in etcd (tombstones of removed functions included).
    records: RwLock<HashMap<String, control::Known>>,
    /// Live nodes as last seen in etcd.
    nodes: RwLock<BTreeMap<String, NodeInfo>>,
    /// The policy text last applied here per function (so an unchanged one is not re-applied).
    applied_policies: parking_lot::Mutex<HashMap<String, Option<String>>>,
    /// The etcd revision up to which function records are applied on this node.
    applied: tokio::sync::watch::Sender<i64>,
    /// Each follower has listed its prefix and is watching it.
    synced: [AtomicBool; follow::FOLLOWERS],
    /// The last health check reached etcd.
    reachable: AtomicBool,
    /// The peer key: signs the client address a proxying node passes on.
    peer_key: RwLock<Option<ring::hmac::Key>>,
    /// Wakes the function follower to re-place functions after a membership change.
    placement_changed: tokio::sync::Notify,
    /// Hooks run when a function stops being served here (logs, traces).
    on_removed: parking_lot::Mutex<Vec<NameHook>>,
    /// Live instances on this node (the load `ledge nodes` shows).
    load: Box<dyn Fn() -> i64 + Send + Sync>,
    /// Proxies requests to the nodes that host a function.
    peer_client: reqwest::Client,
    /// What uploaded policies say (routes, public), parsed once per applied revision (`peers`).
    uploaded_facts: parking_lot::Mutex<Option<peers::UploadedFacts>>,
    /// Calls on other nodes' WebSocket connections in flight (`sockets`).
    socket_calls: sockets::InFlight,
}

impl Cluster {
    /// Joins: connects (lazily), then follows etcd in the background. Never waits for etcd: a
    /// node restarting during an outage serves what its data dir holds.
    pub async fn join(
        options: JoinOptions,
        registry: Arc<Registry>,
        authority: Arc<Authority>,
        load: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> anyhow::Result<Arc<Cluster>> {
        let etcd = options.etcd;
        check_node_name(&options.node).map_err(anyhow::Error::msg)?;
        let node_id = members::node_id(&options.data_dir)?;
        let node_header = http::HeaderValue::from_str(&options.node)?;
        let cluster = Arc::new(Cluster {
            node_header,
            node: options.node,
            advertise: options.advertise,
            etcd,
            registry,
            authority,
            data_dir: options.data_dir,
            secrets_cache: options.secrets_cache,
            max_artifact_bytes: options.max_artifact_bytes,
            secrets_ready: AtomicBool::new(false),
            node_id,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            records: RwLock::default(),
            nodes: RwLock::default(),
            applied_policies: Default::default(),
            applied: tokio::sync::watch::channel(0).0,
            synced: Default::default(),
            reachable: AtomicBool::new(false),
            peer_key: RwLock::new(None),
            placement_changed: tokio::sync::Notify::new(),
            on_removed: Default::default(),
            load: Box::new(load),
            peer_client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            uploaded_facts: Default::default(),
            socket_calls: Default::default(),
        });
        cluster.check_name_is_free().await?;
        if let Some(store) = &options.global_kv {
            control::serve_quotas(store, &cluster.registry);
        }
        let weak = Arc::downgrade(&cluster);
        cluster.registry.run_schedules_where(move |name| weak.upgrade().is_some_and(|c| c.runs_schedules_of(name)));
        for follower in follow::Follower::ALL {
            tokio::spawn(follow::run(Arc::downgrade(&cluster), follower));
        }
        tokio::spawn(members::keep_membership(Arc::downgrade(&cluster)));
        tokio::spawn(members::check_health(Arc::downgrade(&cluster)));
        tokio::spawn(Cluster::keep_collecting(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    /// The HTTP client for requests to other nodes.
    pub fn peer_client(&self) -> &reqwest::Client {
        &self.peer_client
    }

    /// Runs `hook` with a function's name whenever this node stops serving it.
    pub fn on_removed(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        self.on_removed.lock().push(Box::new(hook));
    }

    /// In sync with etcd: reachable, and every follower has listed and is watching.
    pub fn in_sync(&self) -> bool {
        self.reachable.load(Ordering::Relaxed) && self.synced.iter().all(|s| s.load(Ordering::Relaxed))
    }

    /// What `/readyz` says about the cluster when the node is not in sync.
    pub fn sync_state(&self) -> String {
        let followers: Vec<&str> = follow::Follower::ALL
            .iter()
            .filter(|f| !self.synced[**f as usize].load(Ordering::Relaxed))
            .map(|f| f.prefix())
            .collect();
        format!(
            "etcd {}; not yet in sync: {}",
            if self.reachable.load(Ordering::Relaxed) { "reachable" } else { "unreachable" },
            if followers.is_empty() { "-".to_string() } else { followers.join(", ") }
        )
    }

    /// Waits until this node has applied function records up to `revision`.
    async fn wait_applied(&self, revision: i64) -> Result<(), ClusterError> {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(APPLY_WAIT, applied.wait_for(|seen| *seen >= revision))
            .await
            .map_err(|_| ClusterError::NotApplied(APPLY_WAIT))?
            .map_err(|_| ClusterError::NotApplied(APPLY_WAIT))?;
        Ok(())
    }
}

/// A node name: 1 to 63 ASCII letters, digits, `.`, `-` or `_` (it goes into etcd keys and the
/// `ledge-node` and `ledge-peer` headers).
pub fn check_node_name(name: &str) -> Result<String, String> {
    let valid = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!("node name `{name}`: use 1 to 63 letters, digits, '.', '-' or '_' (give --node-name)"))
    }
}

/// `http://` or `https://` with a host: what `--cluster` and `--advertise` take.
pub fn check_url(url: &str) -> Result<String, String> {
    let parsed: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match (parsed.scheme_str(), parsed.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(url.trim_end_matches('/').to_string()),
        _ => Err(format!("`{url}`: give http://HOST:PORT or https://HOST:PORT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_and_urls_are_checked() {
        assert_eq!(check_node_name("edge-1.lab_2").unwrap(), "edge-1.lab_2");
        for bad in ["", "a;b", "with space", "ünïcode", &"n".repeat(64)] {
            assert!(check_node_name(bad).unwrap_err().contains("--node-name"), "{bad:?}");
        }
        assert_eq!(check_url("http://10.0.0.5:2379/").unwrap(), "http://10.0.0.5:2379");
        assert!(check_url("10.0.0.5:2379").is_err());
        assert!(check_url("ftp://x").is_err());
    }
}
