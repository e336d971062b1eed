//! The on-disk layout of the registry, per function under `<data-dir>/functions/`:
//! `NAME/meta.json` names the live version and is the commit point of a deploy; `NAME/vN/`
//! holds that version's `component.wasm`, its pre-initialized `snapshot.wasm` (when the
//! component exports `init`) and precompiled `code.cwasm`; `NAME/policy.toml` is an uploaded
//! policy.
//!
//! This layout (with the rest of the data dir outside `kv/`) is the `registry` format of the
//! data dir, version `datadir::REGISTRY`: a change that an older build would misread bumps it.
//!
//! Invariant: a version directory is written under a staging name, fsynced and renamed before
//! `meta.json` names it, so a crash leaves either the old version or the new one.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Registry;
use crate::access::policy::Policy;
use crate::runtime::FunctionPre;
use crate::storage::{create_private_dir, sync_dir, write_durably};

/// What `GET /v1/functions/{name}` reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionMeta {
    pub name: String,
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    pub deployed_at: String,
    /// SHA-256 of the precompiled code, checked before it is loaded.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub code_sha256: String,
    /// SHA-256 of the pre-initialized snapshot, when the component exports `init`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_sha256: Option<String>,
    /// A newer version serving a share of callers (function-level `meta.json` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub canary: Option<CanarySplit>,
}

/// `ledge deploy --canary P%`: version `version` serves `percent` of callers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CanarySplit {
    pub version: u64,
    pub percent: u8,
}

/// A version loaded and ready to instantiate.
pub(super) struct LoadedVersion {
    pub meta: FunctionMeta,
    pub pre: FunctionPre,
}

impl Registry {
    /// The recorded metadata of a kept version.
    pub(super) fn version_meta(&self, name: &str, version: u64) -> anyhow::Result<FunctionMeta> {
        let path = self.function_dir(name).join(version_dir_name(version)).join(VERSION_FILE);
        let bytes = fs::read(&path).map_err(|e| anyhow::anyhow!("version {version} of `{name}` is not kept: {e}"))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The component version `version` of `name` runs: its pre-initialized snapshot when it
    /// has one (what a replay must run), else the component as deployed.
    pub fn runnable_component(&self, name: &str, version: u64) -> Result<Vec<u8>, super::RegistryError> {
        let meta = self.version_meta(name, version).map_err(|e| super::RegistryError::Versions(format!("{e:#}")))?;
        let file = if meta.snapshot_sha256.is_some() { "snapshot.wasm" } else { "component.wasm" };
        Ok(fs::read(self.function_dir(name).join(version_dir_name(version)).join(file))?)
    }
}

/// Makes `meta` (the live version, and the canary if any) the function's commit point.
pub(super) fn commit_meta(dir: &Path, meta: &FunctionMeta) -> io::Result<()> {
    write_durably(&dir.join("meta.json"), &serde_json::to_vec_pretty(meta).map_err(io::Error::other)?)
}

/// Each kept version's own metadata, inside its folder.
pub(super) const VERSION_FILE: &str = "version.json";

pub(super) fn version_of(dir_name: &str) -> Option<u64> {
    dir_name.strip_prefix('v')?.parse().ok()
}

/// The versions kept in `dir`, oldest first.
pub(super) fn kept_versions(dir: &Path) -> io::Result<Vec<u64>> {
    let mut versions: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join(VERSION_FILE).exists())
        .filter_map(|entry| version_of(&entry.file_name().to_string_lossy()))
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Removes the oldest versions beyond `[versions] keep`, and then while the kept components
/// hold more than `[versions] max_bytes` together; never one of `needed` (live, canary).
pub(super) fn prune_versions(dir: &Path, policy: &Policy, needed: &[u64]) -> io::Result<usize> {
    let mut sized = Vec::new();
    for version in kept_versions(dir)? {
        let component = dir.join(version_dir_name(version)).join("component.wasm");
        sized.push((version, fs::metadata(component).map_or(0, |m| m.len())));
    }
    let pruned = versions_to_prune(&sized, policy.versions_keep, policy.versions_max_bytes, needed);
    for version in &pruned {
        fs::remove_dir_all(dir.join(version_dir_name(*version)))?;
    }
    if !pruned.is_empty() {
        sync_dir(dir)?;
    }
    Ok(pruned.len())
}

/// Which of `versions` (`(version, component bytes)`, oldest first) to drop, oldest first,
/// for at most `keep` of them holding at most `max_bytes`, never one of `needed`. The cluster's
/// records are pruned by the same rule.
pub fn versions_to_prune(versions: &[(u64, u64)], keep: u32, max_bytes: u64, needed: &[u64]) -> Vec<u64> {
    let (mut count, mut bytes) = (versions.len(), versions.iter().map(|(_, size)| size).sum::<u64>());
    let mut dropped = Vec::new();
    for &(version, size) in versions.iter().filter(|(version, _)| !needed.contains(version)) {
        if count <= keep.max(1) as usize && bytes <= max_bytes {
            break;
        }
        dropped.push(version);
        count -= 1;
        bytes -= size;
    }
    dropped
}

pub(super) fn version_dir_name(version: u64) -> String {
    format!("v{version}")
}

/// Writes a version directory under a temp name, fsyncs it, renames it into place, writes the
/// policy given with the deploy (if any), then commits with `meta.json`. If the commit fails,
/// the policy file is put back as it was.
pub(super) fn store_version(
    dir: &Path,
    meta: &FunctionMeta,
    files: &[(&str, Option<&Vec<u8>>)],
    policy: Option<&str>,
    commit: &FunctionMeta,
) -> io::Result<()> {
    create_private_dir(dir)?;
    let staging = dir.join(format!("{}.staging", version_dir_name(meta.version)));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    create_private_dir(&staging)?;
    for (file, bytes) in files {
        let Some(bytes) = bytes else { continue };
        let path = staging.join(file);
        fs::write(&path, bytes)?;
        fs::File::open(&path)?.sync_all()?;
    }
    let version_meta = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    fs::write(staging.join(VERSION_FILE), &version_meta)?;
    fs::File::open(staging.join(VERSION_FILE))?.sync_all()?;
    sync_dir(&staging)?;
    let final_dir = dir.join(version_dir_name(meta.version));
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&staging, &final_dir)?;
    sync_dir(dir)?;
    let policy_path = dir.join("policy.toml");
    let previous_policy = match policy {
        Some(text) => {
            let previous = fs::read(&policy_path).ok();
            write_durably(&policy_path, text.as_bytes())?;
            Some(previous)
        }
        None => None,
    };
    let committed = commit_meta(dir, commit);
    if committed.is_err()
        && let Some(previous) = previous_policy
    {
        let restored = match previous {
            Some(bytes) => write_durably(&policy_path, &bytes),
            None => fs::remove_file(&policy_path).and_then(|()| sync_dir(dir)),
        };
        if let Err(error) = restored {
            tracing::error!(%error, dir = %dir.display(), "could not restore the policy after a failed deploy");
        }
    }
    committed
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::versions_to_prune;

    #[test]
    fn the_oldest_versions_go_past_the_count_or_the_bytes_never_the_needed_ones() {
        let versions = [(1, 100), (2, 100), (3, 100), (4, 100)];
        assert_eq!(versions_to_prune(&versions, 10, 400, &[4]), Vec::<u64>::new());
        assert_eq!(versions_to_prune(&versions, 2, 400, &[4]), [1, 2]);
        assert_eq!(versions_to_prune(&versions, 10, 250, &[4]), [1, 2]);
        // The live version (1 after a rollback) and a canary stay, whatever they cost.
        assert_eq!(versions_to_prune(&versions, 10, 250, &[1, 4]), [2, 3]);
        assert_eq!(versions_to_prune(&versions, 1, 0, &[1, 4]), [2, 3]);
        // An 18 MB component keeps its default ten versions under the default budget.
        let python: Vec<(u64, u64)> = (1..=11).map(|v| (v, 18 << 20)).collect();
        let defaults = crate::access::policy::Policy::default();
        assert_eq!(versions_to_prune(&python, defaults.versions_keep, defaults.versions_max_bytes, &[11]), [1]);
    }
}
