//! Kept versions, rollback and canaries: `ledge versions`, `ledge rollback NAME [VERSION]`,
//! `ledge promote NAME` (its gate on the canary's record is in `canary.rs`).
//!
//! Invariants: a rollback or promotion loads code that was compiled at deploy (no recompile
//! unless the artifact no longer matches), commits the new state with `meta.json`, then swaps
//! it in one step: the next request runs the version chosen. The function's policy, config
//! and concurrency limit are the function's, not a version's: they stay as they are.

use std::sync::Arc;

use serde::Serialize;

use super::canary::{Gate, Judgement};
use super::layout::{commit_meta, kept_versions};
use super::{CanarySplit, Deployment, FunctionMeta, PreCell, Registry, RegistryError, validate_name};

/// What `GET /v1/functions/{name}/versions` reports.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Versions {
    pub live: u64,
    pub canary: Option<CanarySplit>,
    /// Every kept version, oldest first.
    pub kept: Vec<FunctionMeta>,
}

/// What `POST /v1/functions/{name}/promote` answers: the versions, and the judgement of the
/// canary's record.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Promoted {
    #[serde(flatten)]
    pub versions: Versions,
    pub judged: Judgement,
}

/// A canary of `percent` may be deployed: 1% to 99%, and only beside a live version.
pub fn check_canary(percent: Option<u8>, has_live: bool) -> Result<(), RegistryError> {
    let Some(percent) = percent else { return Ok(()) };
    let why = match (has_live, (1..=99).contains(&percent)) {
        (true, true) => return Ok(()),
        (false, _) => "a first deploy has nothing to split with",
        (true, false) => "give 1% to 99%",
    };
    Err(RegistryError::Versions(format!("cannot deploy a canary of {percent}%: {why}")))
}

impl Registry {
    pub fn versions(&self, name: &str) -> Result<Versions, RegistryError> {
        validate_name(name)?;
        let current = self.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let kept = kept_versions(&self.function_dir(name))?
            .into_iter()
            .filter_map(|version| self.version_meta(name, version).ok())
            .collect();
        let canary = current.canary.as_ref().map(|c| CanarySplit { version: c.meta.version, percent: c.percent });
        Ok(Versions { live: current.meta.version, canary, kept })
    }

    /// With a canary and no `version`: drops the canary. Else makes `version` (default: the
    /// newest kept version older than the live one) live, dropping any canary.
    pub async fn rollback(&self, name: &str, version: Option<u64>) -> Result<Versions, RegistryError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let current = self.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let target = match (version, &current.canary) {
            (None, Some(_)) => current.meta.version,
            (Some(version), _) => version,
            (None, None) => kept_versions(&self.function_dir(name))?
                .into_iter()
                .filter(|v| *v < current.meta.version)
                .max()
                .ok_or_else(|| {
                    RegistryError::Versions(format!("`{name}` has no kept version older than {}", current.meta.version))
                })?,
        };
        self.make_live(name, &current, target).await?;
        tracing::info!(function = name, version = target, "rolled back");
        drop(_change);
        self.versions(name)
    }

    /// Makes the canary the live version, unjudged: how a cluster node applies a promotion.
    pub async fn promote(&self, name: &str) -> Result<Versions, RegistryError> {
        Ok(self.promote_judged(name, None).await?.0)
    }

    /// `ledge promote`: with a `gate`, judges the canary's record first, under the same lock
    /// (so the canary judged is the one promoted), and refuses while it fails too often.
    pub async fn promote_judged(
        &self,
        name: &str,
        gate: Option<Gate>,
    ) -> Result<(Versions, Option<Judgement>), RegistryError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let current = self.lookup(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        let canary = current
            .canary
            .as_ref()
            .ok_or_else(|| RegistryError::Versions(format!("`{name}` has no canary to promote")))?
            .meta
            .version;
        let judged = gate.and_then(|gate| current.judge_canary(gate)).map(Judgement::refusal).transpose()?;
        self.make_live(name, &current, canary).await?;
        tracing::info!(function = name, version = canary, "canary promoted");
        drop(_change);
        Ok((self.versions(name)?, judged))
    }

    /// Commits `version` as the live one (no canary) and swaps it in.
    async fn make_live(&self, name: &str, current: &Arc<Deployment>, version: u64) -> Result<(), RegistryError> {
        let loaded = if version == current.meta.version {
            None
        } else {
            let meta = self.version_meta(name, version).map_err(|e| RegistryError::Versions(format!("{e:#}")))?;
            let cannot =
                |e: anyhow::Error| RegistryError::Versions(format!("version {version} cannot be loaded: {e:#}"));
            let (loaded, recompiled) = self.code.load_version(name, meta).map_err(cannot)?;
            if let Some(recompiled) = recompiled {
                recompiled.store().map_err(cannot)?;
            }
            Some(loaded)
        };
        let (meta, pre) = match loaded {
            Some(loaded) => (loaded.meta.clone(), PreCell::ready(loaded)),
            None => (FunctionMeta { canary: None, ..current.meta.clone() }, current.pre.clone()),
        };
        commit_meta(&self.function_dir(name), &meta)?;
        let deployment = Deployment::new(meta, pre, current.policy.clone(), Some(current));
        self.live.write().expect("registry lock poisoned").insert(name.to_string(), Arc::new(deployment));
        Ok(())
    }
}
