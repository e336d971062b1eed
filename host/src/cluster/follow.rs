//! Followers: each lists one prefix of etcd, applies the whole state, then watches it from the
//! listing's revision on. A broken watch (an endpoint gone, a compacted revision, an outage)
//! starts over with a fresh listing, so nothing depends on a log etcd may have compacted.
//! Listings are read in pages at one revision ([`crate::etcd::Etcd::list`]), so no prefix
//! outgrows what one reply from etcd may carry.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions};

use super::{Cluster, ROOT};
use crate::etcd::EtcdError;

pub const FOLLOWERS: usize = 6;

/// Pause before a follower tries again after its watch broke.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follower {
    Keys = 0,
    Revoked = 1,
    PeerKey = 2,
    Nodes = 3,
    SecretsKey = 4,
    Functions = 5,
}

impl Follower {
    pub const ALL: [Follower; FOLLOWERS] = [
        Follower::Keys,
        Follower::Revoked,
        Follower::PeerKey,
        Follower::Nodes,
        Follower::SecretsKey,
        Follower::Functions,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            Follower::Keys => "/ledge/keys/",
            Follower::Revoked => "/ledge/revoked/",
            Follower::PeerKey => "/ledge/peer-key",
            Follower::SecretsKey => super::config::SECRETS_KEY,
            Follower::Nodes => "/ledge/nodes/",
            Follower::Functions => "/ledge/fn/",
        }
    }
}

/// One change a watch delivered: the key's name below the prefix, its value (`None`:
/// deleted), and the revision it was made at.
pub struct Change<'a> {
    pub name: &'a str,
    pub value: Option<&'a [u8]>,
    pub revision: i64,
}

/// One key of a listing: its name below the prefix, its value, and its `mod_revision`.
pub struct Listed {
    pub name: String,
    pub value: Vec<u8>,
    pub revision: i64,
}

/// Follows `follower`'s prefix until the cluster is dropped.
pub async fn run(cluster: Weak<Cluster>, follower: Follower) {
    loop {
        let Some(strong) = cluster.upgrade() else { return };
        let outcome = follow_once(&strong, follower).await;
        strong.synced[follower as usize].store(false, Ordering::Relaxed);
        if let Err(error) = outcome {
            tracing::debug!(prefix = follower.prefix(), %error, "cluster follower restarting");
            strong.etcd.next_endpoint();
        }
        drop(strong);
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

async fn follow_once(cluster: &Arc<Cluster>, follower: Follower) -> Result<(), EtcdError> {
    let prefix = follower.prefix();
    let (revision, listing) = cluster.etcd.list(prefix, false).await?;
    let entries: Vec<Listed> = listing
        .into_iter()
        .filter_map(|kv| {
            let (name, revision) = (name_of(&kv, prefix)?, kv.mod_revision());
            Some(Listed { name, revision, value: kv.into_key_value().1 })
        })
        .collect();
    cluster.apply_listing(follower, &entries).await?;
    if follower == Follower::Functions {
        cluster.applied.send_replace(revision);
        // The functions whose code the start could not load leave when its loads end, which
        // may come after this listing found them live: install them again then. Not only
        // while the loads run: they may have ended between the listing and here.
        let weak = Arc::downgrade(cluster);
        let registry = cluster.registry.clone();
        tokio::spawn(async move {
            registry.loads_done().await;
            if let Some(cluster) = weak.upgrade() {
                cluster.reinstall_failed_loads().await;
            }
        });
    }
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut client = cluster.etcd.client();
    let mut stream = tokio::time::timeout(crate::etcd::REQUEST_TIMEOUT, client.watch(prefix, Some(options)))
        .await
        .map_err(|_| EtcdError::Unreachable("no answer to a watch".into()))?
        .map_err(|e| EtcdError::Unreachable(e.to_string()))?;
    cluster.synced[follower as usize].store(true, Ordering::Relaxed);
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = cluster.placement_changed.notified(), if follower == Follower::Functions => {
                cluster.replace_functions().await;
                continue;
            }
        };
        let Some(response) = message.map_err(|e| EtcdError::Unreachable(e.to_string()))? else {
            return Err(EtcdError::Unreachable("the watch ended".into()));
        };
        if response.canceled() {
            return Err(EtcdError::Refused(format!("watch cancelled: {}", response.cancel_reason())));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(name) = name_of(kv, prefix) else { continue };
            let value = (event.event_type() == EventType::Put).then(|| kv.value());
            cluster.apply_change(follower, Change { name: &name, value, revision: kv.mod_revision() }).await;
        }
        if follower == Follower::Functions
            && let Some(header) = response.header()
        {
            cluster.applied.send_replace(header.revision());
        }
    }
}

/// The part of a key after `prefix` (`ROOT`-relative for the single-key followers).
fn name_of(kv: &KeyValue, prefix: &str) -> Option<String> {
    let key = kv.key_str().ok()?;
    let name = key.strip_prefix(prefix).or_else(|| key.strip_prefix(ROOT))?;
    Some(name.to_string())
}

impl Cluster {
    /// Applies the whole state of a prefix (a fresh listing).
    async fn apply_listing(&self, follower: Follower, entries: &[Listed]) -> Result<(), EtcdError> {
        match follower {
            Follower::Functions => self.apply_function_listing(entries).await,
            Follower::Nodes => {
                self.replace_nodes(entries);
                Ok(())
            }
            Follower::Keys => self.sync_keys(entries).await,
            _ => {
                for entry in entries {
                    let change = Change { name: &entry.name, value: Some(&entry.value), revision: entry.revision };
                    self.apply_change(follower, change).await;
                }
                if entries.is_empty() {
                    match follower {
                        Follower::PeerKey => self.create_peer_key().await?,
                        Follower::SecretsKey => self.create_secrets_key().await?,
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }

    /// Applies one change a watch delivered.
    async fn apply_change(&self, follower: Follower, change: Change<'_>) {
        match follower {
            Follower::Functions => self.apply_function_change(change).await,
            Follower::Nodes => self.apply_node_change(change),
            Follower::Keys => {
                if let Some(secret) = change.value {
                    self.adopt_key(change.name, secret);
                }
            }
            Follower::Revoked => {
                if change.value.is_some() {
                    self.revoke_locally(change.name).await;
                }
            }
            Follower::PeerKey => self.set_peer_key(change.value),
            Follower::SecretsKey => self.adopt_secrets_key(change.value).await,
        }
    }
}
