//! The start: every deployed function is live at once, from its metadata, policy and config
//! (cheap), while the code itself is loaded by [`StartLoads`] once the node listens, smallest
//! builds first, or by a function's first request, whichever comes first (see [`super::code`]).
//!
//! Invariants:
//! - while the start's loads run, the registry's change lock is held, so no deploy, removal,
//!   policy or config change, rollback or backup sees a function half loaded, and the files a
//!   load rewrites (a recompiled `code.cwasm`, its digest in `meta.json`) are never written
//!   beside a change;
//! - a function whose code cannot be loaded is left undeployed once the loads end, as before
//!   (logged "cannot load function; redeploy it"); until then a request for it gets 404;
//! - `/readyz` says ready only once the loads are over and counted.

use std::fs;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::code::{CodeLoader, Loaded, PreCell};
use super::layout::{FunctionMeta, VERSION_FILE, prune_versions, version_dir_name, version_of};
use super::{Deployment, LoadReport, Registry};
use crate::access::policy::Policy;
use crate::storage::{sync_dir, write_durably};

/// The loads a start left for after the node listens ([`Registry::open`]).
pub struct StartLoads {
    /// The versions, with the size of their code (smallest loaded first).
    versions: Vec<(u64, String, PreCell)>,
    loader: CodeLoader,
    counts: Arc<LoadCounts>,
    /// The change lock, taken before anyone else could.
    held: tokio::sync::OwnedMutexGuard<()>,
}

#[derive(Default)]
struct LoadCounts {
    precompiled: AtomicUsize,
    recompiled: AtomicUsize,
}

impl StartLoads {
    pub(super) fn new(loader: CodeLoader, held: tokio::sync::OwnedMutexGuard<()>) -> Self {
        StartLoads { versions: Vec::new(), loader, counts: Arc::default(), held }
    }

    /// A cell that loads `meta`'s version of `name` on first use.
    pub(super) fn defer(&mut self, name: &str, meta: FunctionMeta) -> PreCell {
        let code = self.loader.functions_dir.join(name).join(version_dir_name(meta.version)).join("code.cwasm");
        let size = fs::metadata(code).map_or(u64::MAX, |m| m.len());
        let (loader, counts, function) = (self.loader.clone(), self.counts.clone(), name.to_string());
        let cell = PreCell::deferred(Box::new(move || match loader.load_version(&function, meta) {
            Ok((version, loaded)) => {
                let count = match loaded {
                    Loaded::Precompiled => &counts.precompiled,
                    Loaded::Recompiled => &counts.recompiled,
                };
                count.fetch_add(1, Ordering::Relaxed);
                Some(version)
            }
            Err(error) => {
                tracing::error!(function = %function, error = %format!("{error:#}"), "cannot load function; redeploy it");
                None
            }
        }));
        self.versions.push((size, name.to_string(), cell.clone()));
        cell
    }

    /// Loads every version not loaded yet, smallest first (blocking); then leaves undeployed
    /// the functions that could not be loaded, records the digests of code recompiled on the
    /// way in their live versions, and lets changes through again.
    pub fn finish(mut self, registry: &Registry) -> LoadReport {
        self.versions.sort_by_key(|(size, _, _)| *size);
        let mut failed = Vec::new();
        let mut recompiled = Vec::new();
        for (_, name, cell) in &self.versions {
            match cell.loaded_version() {
                None => failed.push(name.clone()),
                Some(version) => recompiled.push((name.clone(), version.meta.clone())),
            }
        }
        self.loader.forget_shared();
        registry.settle_start_loads(&failed, &recompiled);
        drop(self.held);
        LoadReport {
            precompiled: self.counts.precompiled.load(Ordering::Relaxed),
            recompiled: self.counts.recompiled.load(Ordering::Relaxed),
        }
    }
}

impl Registry {
    /// Loads the version `meta.json` names (and its canary), removing debris of interrupted
    /// deploys and versions past `[versions] keep`.
    pub(super) fn load(
        &self,
        name: &str,
        policy: Arc<Policy>,
        loads: &mut StartLoads,
    ) -> anyhow::Result<Option<Deployment>> {
        let dir = self.function_dir(name);
        let meta: Option<FunctionMeta> = match fs::read(dir.join("meta.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error.into()),
        };
        let Some(meta) = meta else {
            // Never committed: debris of a first deploy that did not finish, policy included (a
            // later deploy of this name must not inherit it).
            fs::remove_dir_all(&dir)?;
            sync_dir(&self.functions_dir)?;
            return Ok(None);
        };
        let canary = meta.canary;
        let needed: Vec<u64> = std::iter::once(meta.version).chain(canary.map(|c| c.version)).collect();
        let mut removed = false;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kept = version_of(&entry.file_name().to_string_lossy())
                .is_some_and(|v| needed.contains(&v) || entry.path().join(VERSION_FILE).exists());
            if entry.file_type()?.is_dir() && !kept {
                fs::remove_dir_all(entry.path())?;
                removed = true;
            }
        }
        // The directory is synced only when it changed: a sync per function at every start
        // was most of a start with 10,000 functions.
        if prune_versions(&dir, &policy, &needed)? == 0 && removed {
            sync_dir(&dir)?;
        }
        let live_meta = FunctionMeta { canary: None, ..meta };
        let live_file = dir.join(version_dir_name(live_meta.version)).join(VERSION_FILE);
        if !live_file.exists() {
            // A data dir from before versions were kept: record the live one so it can be
            // rolled back to.
            write_durably(&live_file, &serde_json::to_vec_pretty(&live_meta)?)?;
        }
        let pre = loads.defer(name, live_meta.clone());
        let mut deployment = Deployment::new(live_meta, pre, policy, None).configured(self.load_config(name)?);
        if let Some(split) = canary {
            let meta = self.version_meta(name, split.version)?;
            let pre = loads.defer(name, meta.clone());
            deployment = deployment.with_canary(Some((meta, pre, split.percent)));
        }
        Ok(Some(deployment))
    }

    /// Whether the start's loads are still running.
    pub fn is_loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    /// The end of the start's loads (their lock still held): functions whose code could not be
    /// loaded leave, and live versions whose code was recompiled record its new digest (a
    /// rollback to them commits it).
    fn settle_start_loads(&self, failed: &[String], loaded: &[(String, FunctionMeta)]) {
        {
            let mut live = self.live.write().expect("registry lock poisoned");
            for name in failed {
                live.remove(name);
            }
            for (name, meta) in loaded {
                let Some(current) = live.get(name) else { continue };
                if current.meta.version == meta.version && current.meta.code_sha256 != meta.code_sha256 {
                    let recorded = FunctionMeta { code_sha256: meta.code_sha256.clone(), ..current.meta.clone() };
                    let updated = Arc::new(current.with_meta(recorded));
                    live.insert(name.clone(), updated);
                }
            }
        }
        if !failed.is_empty() {
            self.rebuild_routes();
        }
    }

    /// The start's loads are over and told (`/readyz` says ready from now on).
    pub fn mark_loaded(&self) {
        self.loading.store(false, Ordering::Release);
    }
}
