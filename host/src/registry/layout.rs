//! The on-disk layout of the registry, per function under `<data-dir>/functions/`:
//! `NAME/meta.json` names the live version and is the commit point of a deploy; `NAME/vN/`
//! holds that version's `component.wasm`, its pre-initialized `snapshot.wasm` (when the
//! component exports `init`) and precompiled `code.cwasm`; `NAME/policy.toml` is an uploaded
//! policy.
//!
//! Invariant: a version directory is written under a staging name, fsynced and renamed before
//! `meta.json` names it, so a crash leaves either the old version or the new one.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::{Deployment, LoadReport, Registry};
use crate::access::policy::Policy;
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
}

impl Registry {
    /// Loads the version `meta.json` names, removing debris of interrupted deploys.
    pub(super) fn load(
        &self,
        name: &str,
        policy: Arc<Policy>,
        report: &mut LoadReport,
    ) -> anyhow::Result<Option<Deployment>> {
        let dir = self.function_dir(name);
        let meta: Option<FunctionMeta> = match fs::read(dir.join("meta.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error.into()),
        };
        let Some(mut meta) = meta else {
            // Never committed: debris of a first deploy that did not finish, policy included (a
            // later deploy of this name must not inherit it).
            fs::remove_dir_all(&dir)?;
            sync_dir(&self.functions_dir)?;
            return Ok(None);
        };
        let live_version = version_dir_name(meta.version);
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() && file_name != live_version {
                fs::remove_dir_all(entry.path())?;
            }
        }
        let version_dir = dir.join(version_dir_name(meta.version));
        let component = match self.load_precompiled(&version_dir, &meta) {
            Ok(component) => {
                report.precompiled += 1;
                tracing::info!(function = name, version = meta.version, "loaded precompiled artifact");
                component
            }
            Err(reason) => {
                tracing::warn!(function = name, version = meta.version, %reason, "recompiling function");
                let (file, expected) = match &meta.snapshot_sha256 {
                    Some(snapshot) => ("snapshot.wasm", snapshot),
                    None => ("component.wasm", &meta.sha256),
                };
                let bytes = fs::read(version_dir.join(file))?;
                anyhow::ensure!(
                    &sha256_hex(&bytes) == expected,
                    "{file} of function `{name}` does not match its recorded SHA-256; redeploy it"
                );
                let component = self.runtime.compile(&bytes)?;
                let code = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                write_durably(&version_dir.join("code.cwasm"), &code)?;
                meta.code_sha256 = sha256_hex(&code);
                write_durably(&dir.join("meta.json"), &serde_json::to_vec_pretty(&meta)?)?;
                report.recompiled += 1;
                component
            }
        };
        let pre = self.runtime.prepare(&component)?;
        Ok(Some(Deployment::new(meta, pre, policy, None).configured(self.load_config(name)?)))
    }

    fn load_precompiled(&self, version_dir: &Path, meta: &FunctionMeta) -> Result<Component, String> {
        let path = version_dir.join("code.cwasm");
        let bytes = fs::read(&path).map_err(|e| format!("precompiled code unreadable: {e}"))?;
        if sha256_hex(&bytes) != meta.code_sha256 {
            return Err("precompiled code does not match its recorded SHA-256".into());
        }
        drop(bytes);
        // SAFETY: the file is ledge's own output (its digest matches the one recorded when ledge
        // wrote it), and wasmtime itself rejects code from another wasmtime build or config.
        unsafe { Component::deserialize_file(self.runtime.engine(), &path) }
            .map_err(|e| format!("precompiled code is not valid for this engine: {e}"))
    }
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
    let committed = write_durably(&dir.join("meta.json"), &serde_json::to_vec_pretty(meta).map_err(io::Error::other)?);
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
