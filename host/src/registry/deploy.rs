//! The deploy pipeline: validate, pre-initialize when asked, compile, store durably, then
//! swap the live version.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::layout::{LoadedVersion, kept_versions, prune_versions, store_version, version_dir_name};
use super::{
    CanarySplit, DeployError, Deployed, Deployment, FunctionMeta, PolicyChange, PreCell, Registry, RegistryError,
    sha256_hex, validate_name,
};
use crate::runtime::{FunctionPre, Runtime, ValidateError, preinit};

impl Registry {
    /// Validates, compiles, stores durably, then swaps the live version. A `policy` given with
    /// the component is checked first and applied together with it, or not at all. With
    /// `canary` (a percentage), the new version serves that share of callers and the live one
    /// the rest, until promoted or rolled back.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        policy: Option<&str>,
        who: PolicyChange,
        canary: Option<u8>,
    ) -> Result<Deployed, DeployError> {
        self.deploy_numbered(name, bytes, policy, who, canary, None).await
    }

    /// Installs `bytes` as version `number` (deployed at `deployed_at`), live or as a canary
    /// serving `canary` percent, with `policy` if given: how a cluster node applies a deploy
    /// that the cluster has numbered already.
    pub async fn install(
        &self,
        name: &str,
        bytes: Vec<u8>,
        policy: Option<&str>,
        number: u64,
        deployed_at: &str,
        canary: Option<u8>,
    ) -> Result<Deployed, DeployError> {
        let numbered = Some((number, deployed_at.to_string()));
        self.deploy_numbered(name, bytes, policy, PolicyChange::Any, canary, numbered).await
    }

    /// Validates, pre-initializes and compiles `bytes` without deploying them, and hands back
    /// the build ready to instantiate (deploy verification runs it); a deploy of the same bytes
    /// soon after reuses the work, and so does a check of the same bytes (`ledge verify` run
    /// again, then `ledge deploy --verify`). A cluster node checks a component so before it
    /// publishes it.
    pub async fn check_component(&self, bytes: Vec<u8>) -> Result<FunctionPre, DeployError> {
        let sha256 = sha256_hex(&bytes);
        if let Some(artifacts) = self.checked.lock().expect("checked components lock poisoned").get(&sha256) {
            return Ok(artifacts.pre.clone());
        }
        let (runtime, handle) = (self.runtime.clone(), tokio::runtime::Handle::current());
        let artifacts = tokio::task::spawn_blocking(move || build_artifacts(&runtime, &handle, &bytes))
            .await
            .map_err(|join| RegistryError::Io(io::Error::other(join.to_string())))??;
        let mut checked = self.checked.lock().expect("checked components lock poisoned");
        if checked.len() >= MAX_CHECKED {
            checked.clear();
        }
        let pre = artifacts.pre.clone();
        checked.insert(sha256, artifacts);
        Ok(pre)
    }

    async fn deploy_numbered(
        &self,
        name: &str,
        bytes: Vec<u8>,
        policy: Option<&str>,
        who: PolicyChange,
        canary: Option<u8>,
        numbered: Option<(u64, String)>,
    ) -> Result<Deployed, DeployError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let given_policy = policy.map(|text| self.check_upload(name, text, who)).transpose()?;
        let previous = self.lookup(name);
        super::versions::check_canary(canary, previous.is_some())?;
        let runtime = self.runtime.clone();
        let handle = tokio::runtime::Handle::current();
        let sha256 = sha256_hex(&bytes);
        let same_bytes = self.deployed_with(&sha256);
        let checked = self.checked.lock().expect("checked components lock poisoned").remove(&sha256);
        // Compiling (and pre-initializing) is CPU-bound for up to seconds: keep it off the
        // workers that serve requests. Bytes deployed already (under another name or as
        // another version) reuse that version's artifacts.
        let (bytes, artifacts) = tokio::task::spawn_blocking(move || {
            let reused = checked.or_else(|| same_bytes.and_then(|(dir, meta, pre)| {
                let artifacts = reuse_artifacts(&dir, &meta, pre)?;
                tracing::info!(from = %meta.name, version = meta.version, "reusing the code compiled for the same bytes");
                Some(artifacts)
            }));
            let artifacts = match reused {
                Some(artifacts) => Ok(artifacts),
                None => build_artifacts(&runtime, &handle, &bytes),
            };
            (bytes, artifacts)
        })
        .await
        .map_err(|join| RegistryError::Io(io::Error::other(join.to_string())))?;
        let Artifacts { snapshot, pre, code } = artifacts?;

        let dir = self.function_dir(name);
        // After a rollback the live version is not the newest: number after every kept one.
        let newest = match &previous {
            Some(previous) => {
                let kept = kept_versions(&dir).map_err(RegistryError::Io)?;
                let canary = previous.canary.as_ref().map_or(0, |c| c.meta.version);
                kept.into_iter().chain([previous.meta.version, canary]).max().unwrap_or(0)
            }
            None => 0,
        };
        let (version, deployed_at) =
            numbered.unwrap_or_else(|| (newest + 1, humantime::format_rfc3339_seconds(SystemTime::now()).to_string()));
        let meta = FunctionMeta {
            name: name.to_string(),
            version,
            sha256,
            size: bytes.len() as u64,
            deployed_at,
            code_sha256: sha256_hex(&code),
            snapshot_sha256: snapshot.as_deref().map(sha256_hex),
            canary: None,
        };
        // The commit point: the new version live, or the live one with the new one as canary.
        let commit = match (canary, &previous) {
            (Some(percent), Some(previous)) => {
                FunctionMeta { canary: Some(CanarySplit { version: meta.version, percent }), ..previous.meta.clone() }
            }
            _ => meta.clone(),
        };
        let stored = meta.clone();
        let policy_text = policy.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let files =
                [("component.wasm", Some(&bytes)), ("snapshot.wasm", snapshot.as_ref()), ("code.cwasm", Some(&code))];
            store_version(&dir, &stored, &files, policy_text.as_deref(), &commit)
        })
        .await
        .map_err(|join| RegistryError::Io(io::Error::other(join.to_string())))?
        .map_err(RegistryError::Io)?;

        let policy = match (given_policy, &previous) {
            (Some(given), _) => Arc::new(given),
            (None, Some(previous)) => previous.policy.clone(),
            (None, None) => {
                Arc::new(self.policy_for(name).map_err(|e| RegistryError::Io(io::Error::other(e.to_string())))?)
            }
        };
        let pre = PreCell::ready(LoadedVersion { meta: meta.clone(), pre });
        let deployment = match (canary, &previous) {
            (Some(percent), Some(previous)) => {
                let live = Deployment::new(previous.meta.clone(), previous.pre.clone(), policy, Some(previous));
                live.with_canary(Some((meta.clone(), pre, percent)))
            }
            _ => Deployment::new(meta.clone(), pre, policy, previous.as_deref()),
        };
        let needed: Vec<u64> = std::iter::once(deployment.meta.version)
            .chain(deployment.canary.as_ref().map(|c| c.meta.version))
            .collect();
        let policy = deployment.policy.clone();
        self.live.write().expect("registry lock poisoned").insert(name.to_string(), Arc::new(deployment));
        self.rebuild_routes();
        // In-flight requests keep older code alive through their `Arc`; only versions past
        // `[versions] keep` or `max_bytes` lose their files.
        if let Err(error) = prune_versions(&self.function_dir(name), &policy, &needed) {
            tracing::warn!(function = name, %error, "could not prune old versions");
        }
        tracing::info!(function = name, version = meta.version, size = meta.size, canary, "deployed");
        Ok(Deployed { created: meta.version == 1, meta })
    }
}

impl Registry {
    /// A live version (or canary) deployed from the component with this SHA-256: its folder,
    /// metadata and instance template.
    fn deployed_with(&self, sha256: &str) -> Option<(PathBuf, FunctionMeta, FunctionPre)> {
        let live = self.live.read().expect("registry lock poisoned");
        live.values().find_map(|deployment| {
            let canary = deployment.canary.as_ref().map(|c| (&c.meta, &c.pre));
            let (meta, pre) =
                std::iter::once((&deployment.meta, &deployment.pre)).chain(canary).find(|(m, _)| m.sha256 == sha256)?;
            let dir = self.function_dir(&meta.name).join(version_dir_name(meta.version));
            Some((dir, meta.clone(), pre.get()?.clone()))
        })
    }
}

/// The artifacts of a version deployed from the same bytes, when its files are intact
/// (blocking). Compiled code and pre-initialization depend only on the bytes and this engine.
fn reuse_artifacts(dir: &Path, meta: &FunctionMeta, pre: FunctionPre) -> Option<Artifacts> {
    let code = std::fs::read(dir.join("code.cwasm")).ok().filter(|code| sha256_hex(code) == meta.code_sha256)?;
    let snapshot = match &meta.snapshot_sha256 {
        Some(expected) => {
            Some(std::fs::read(dir.join("snapshot.wasm")).ok().filter(|snapshot| &sha256_hex(snapshot) == expected)?)
        }
        None => None,
    };
    Some(Artifacts { snapshot, pre, code })
}

/// Components checked by [`Registry::check_component`] kept for their deploy; a bound on what
/// checks that never become deploys can hold.
pub(super) const MAX_CHECKED: usize = 4;

/// What a deploy produces from the uploaded bytes.
pub(super) struct Artifacts {
    /// The pre-initialized component, when the upload exports `init`.
    snapshot: Option<Vec<u8>>,
    pre: FunctionPre,
    code: Vec<u8>,
}

/// Validates, pre-initializes when asked, compiles and serializes (blocking).
fn build_artifacts(
    runtime: &Runtime,
    handle: &tokio::runtime::Handle,
    bytes: &[u8],
) -> Result<Artifacts, ValidateError> {
    let mut component = runtime.compile(bytes)?;
    runtime.check_static_limits(&component)?;
    let mut pre = runtime.prepare(&component)?;
    let snapshot = if preinit::wants_preinit(&component)? {
        let snapshot = handle.block_on(preinit::snapshot(runtime, bytes))?;
        component = runtime.compile(&snapshot)?;
        pre = runtime.prepare(&component)?;
        Some(snapshot)
    } else {
        None
    };
    handle.block_on(runtime.check_instantiation(&pre))?;
    let code =
        component.serialize().map_err(|e| ValidateError::Invalid(format!("cannot serialize compiled code: {e:#}")))?;
    Ok(Artifacts { snapshot, pre, code })
}
