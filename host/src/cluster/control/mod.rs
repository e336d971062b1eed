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
//!
//! This file holds the record itself (what etcd keeps under `fn/NAME`, and what a node keeps of
//! it); `records.rs` reads records and publishes changes to them, `blobs.rs` stores, fetches and
//! collects components (and keeps them under the cluster's budget), `deploy.rs` publishes
//! deploys, policies and removals, `versions.rs` shows versions and moves the live one and the
//! canary, `apply.rs` applies records on this node, `live.rs` compiles the live build of a
//! function placed elsewhere (for deploy verification here), `tombstones.rs` deletes the records of
//! removed functions once every live node has applied them, `keys.rs` shares the root key ring
//! and revocations, and `quotas.rs` gives global keyspaces their quotas.

use serde::{Deserialize, Serialize};

use crate::registry::config::ConfigEntries;
use crate::registry::layout::versions_to_prune;
use crate::registry::versions::Versions;
use crate::registry::{CanarySplit, FunctionMeta};

mod apply;
mod blobs;
mod deploy;
mod keys;
mod live;
mod quotas;
mod records;
mod tombstones;
mod versions;

pub use blobs::CHUNK_BYTES;
pub use quotas::serve_quotas;

/// Bytes of one function's record (kept versions, policy, config): under etcd's 1.5 MiB
/// request limit.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

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

/// A record as a node keeps it: with its placement parsed once, not per request, and the
/// revision it was written at.
pub(super) struct Known {
    pub(super) record: FunctionRecord,
    replicas: u32,
    /// The queues its uploaded policy keeps in etcd (`[queues] global`).
    global_queues: Vec<String>,
    revision: i64,
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

    /// Drops the oldest versions past `[versions] keep` and `max_bytes` (as a node prunes its
    /// files), never the live one or the canary.
    fn prune(&mut self, keep: u32, max_bytes: u64) {
        let needed: Vec<u64> = std::iter::once(self.live).chain(self.canary.map(|c| c.version)).collect();
        let sized: Vec<(u64, u64)> = self.versions.iter().map(|v| (v.version, v.size)).collect();
        let dropped = versions_to_prune(&sized, keep, max_bytes, &needed);
        self.versions.retain(|v| !dropped.contains(&v.version));
    }

    /// `[placement] replicas` of the uploaded policy (0: every node). Parses the policy: call
    /// once per record ([`Known`] keeps the result).
    /// What the cluster reads from the uploaded policy: its `[placement] replicas` and the
    /// queues it keeps in etcd (`[queues] global`).
    fn policy_facts(&self) -> (u32, Vec<String>) {
        let file = self.policy.as_deref().and_then(|text| crate::access::policy::PolicyFile::parse(text).ok());
        let replicas = file.as_ref().and_then(|file| file.placement.as_ref()?.replicas).unwrap_or(0);
        let global = file.and_then(|file| file.queues?.global).unwrap_or_default();
        (replicas, global.into_iter().map(|name| name.0).collect())
    }
}
