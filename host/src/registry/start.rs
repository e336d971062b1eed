//! The start: every deployed function is live at once, from its metadata, policy and config
//! (cheap), while the code itself is loaded by [`StartLoads`] once the node listens, smallest
//! builds first, or by a function's first request, whichever comes first (see [`super::code`]).
//!
//! Invariants:
//! - changes (deploys, removals, policies, config, rollbacks, backups) go on while the loads
//!   run: a load takes the change lock only to store code it recompiled, and only into the
//!   version it compiled (same number, bytes and deploy time); the end of the loads takes it
//!   too, and acts only on functions still live with the build the start found;
//! - a function whose code cannot be loaded is left undeployed once the loads end, as before
//!   (logged "cannot load function; redeploy it"; a cluster node installs it again from its
//!   record); until then a request for it gets 404;
//! - `/readyz` says ready only once the loads are over and counted.

use std::fs;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::code::{CodeLoader, PreCell};
use super::layout::{FunctionMeta, VERSION_FILE, prune_versions, version_dir_name, version_of};
use super::{Deployment, LoadReport, Registry};
use crate::access::policy::Policy;
use crate::storage::{sync_dir, write_durably};

/// The loads a start left for after the node listens ([`Registry::open`]).
pub struct StartLoads {
    /// The versions, with the size of their code (smallest loaded first).
    versions: Vec<(u64, String, PreCell)>,
    loader: CodeLoader,
    /// The registry's change lock, taken to store code recompiled on the way, and at the end.
    changes: Arc<tokio::sync::Mutex<()>>,
    /// How many loads may run at once, whoever started them.
    slots: Arc<Semaphore>,
    counts: Arc<LoadCounts>,
}

#[derive(Default)]
struct LoadCounts {
    precompiled: AtomicUsize,
    recompiled: AtomicUsize,
}

impl StartLoads {
    pub(super) fn new(loader: CodeLoader, changes: Arc<tokio::sync::Mutex<()>>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let slots = Arc::new(Semaphore::new(cores));
        StartLoads { versions: Vec::new(), loader, changes, slots, counts: Arc::default() }
    }

    /// A cell that loads `meta`'s version of `name` on first use.
    pub(super) fn defer(&mut self, name: &str, meta: FunctionMeta) -> PreCell {
        let code = self.loader.functions_dir.join(name).join(version_dir_name(meta.version)).join("code.cwasm");
        let size = fs::metadata(code).map_or(u64::MAX, |m| m.len());
        let (loader, changes, counts) = (self.loader.clone(), self.changes.clone(), self.counts.clone());
        let function = name.to_string();
        let cell = PreCell::deferred(
            Box::new(move || {
                let load = || {
                    let (version, recompiled) = loader.load_version(&function, meta)?;
                    let count = match recompiled {
                        None => &counts.precompiled,
                        Some(recompiled) => {
                            // On the load's blocking thread; no holder of the lock waits for a load.
                            let _change = changes.blocking_lock();
                            recompiled.store()?;
                            &counts.recompiled
                        }
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    anyhow::Ok(version)
                };
                // A panic in a load (a bug, or wasmtime's) fails this function, not the start.
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("loading its code panicked")));
                loaded
                .inspect_err(|error| {
                    tracing::error!(function = %function, error = %format!("{error:#}"), "cannot load function; redeploy it")
                })
                .ok()
            }),
            self.slots.clone(),
        );
        self.versions.push((size, name.to_string(), cell.clone()));
        cell
    }

    /// Loads every version still live and not loaded yet, smallest first, until the node
    /// stops; then, under the change lock, leaves undeployed the functions still live with a
    /// build that could not be loaded, and records the digests of code recompiled on the way.
    pub async fn finish(mut self, registry: &Registry) -> LoadReport {
        self.versions.sort_by_key(|(size, _, _)| *size);
        for (_, name, cell) in &self.versions {
            if registry.start_loads_stopped() {
                break;
            }
            // A version replaced or removed since the start needs no code.
            if registry.serves(name, cell) {
                cell.load().await;
            }
        }
        self.loader.forget_shared();
        let _change = self.changes.lock().await;
        registry.settle_start_loads(&self.versions);
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
        // Everything that can fail first: a function that does not go live loads no code.
        let config = self.load_config(name)?;
        let canary =
            canary.map(|split| anyhow::Ok((self.version_meta(name, split.version)?, split.percent))).transpose()?;
        let pre = loads.defer(name, live_meta.clone());
        let deployment = Deployment::new(live_meta, pre, policy, None).configured(config);
        let canary = canary.map(|(meta, percent)| (meta.clone(), loads.defer(name, meta), percent));
        Ok(Some(deployment.with_canary(canary)))
    }

    /// Whether the start's loads are still running.
    pub fn is_loading(&self) -> bool {
        !*self.loaded.borrow()
    }

    /// Waits until the start's loads are over (a cluster node then installs again from etcd
    /// the functions whose code could not be loaded).
    pub async fn loads_done(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|done| *done).await;
    }

    /// The node is stopping: the start's loads end after the one under way.
    pub fn stop_start_loads(&self) {
        self.stop_loading.store(true, Ordering::Relaxed);
    }

    fn start_loads_stopped(&self) -> bool {
        self.stop_loading.load(Ordering::Relaxed)
    }

    /// Whether `cell` is the build of `name`'s live version or canary.
    fn serves(&self, name: &str, cell: &PreCell) -> bool {
        self.lookup(name).is_some_and(|current| {
            current.pre.same(cell) || current.canary.as_ref().is_some_and(|canary| canary.pre.same(cell))
        })
    }

    /// The functions the start's loads left undeployed (their code could not be loaded), handed
    /// out once: a cluster node installs them again from their records.
    pub fn take_failed_at_start(&self) -> Vec<String> {
        std::mem::take(&mut *self.failed_at_start.lock().expect("failed loads lock poisoned"))
    }

    /// The end of the start's loads (the change lock held): each function still live with a
    /// build they loaded (a change since may have replaced it) leaves if that build could not
    /// be loaded, or records the digest of its code if it was recompiled (a rollback to it
    /// commits that digest).
    fn settle_start_loads(&self, versions: &[(u64, String, PreCell)]) {
        let mut removed = Vec::new();
        {
            let mut live = self.live.write().expect("registry lock poisoned");
            for (_, name, cell) in versions {
                let Some(current) = live.get(name).filter(|current| current.pre.same(cell)) else { continue };
                match cell.get_loaded() {
                    Some(Some(version)) if version.meta.code_sha256 != current.meta.code_sha256 => {
                        let code_sha256 = version.meta.code_sha256.clone();
                        let updated = current.with_meta(FunctionMeta { code_sha256, ..current.meta.clone() });
                        live.insert(name.clone(), Arc::new(updated));
                    }
                    Some(None) => {
                        live.remove(name);
                        removed.push(name.clone());
                    }
                    // Loaded as recorded, or never loaded (the node stops).
                    Some(Some(_)) | None => {}
                }
            }
            // A canary whose build could not be loaded takes its function with it, as at a start
            // that loaded everything first.
            let failed_canaries: Vec<String> = live
                .iter()
                .filter(|(_, deployment)| {
                    deployment.canary.as_ref().is_some_and(|canary| {
                        versions
                            .iter()
                            .any(|(_, _, cell)| canary.pre.same(cell) && matches!(cell.get_loaded(), Some(None)))
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in failed_canaries {
                live.remove(&name);
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            self.rebuild_routes();
        }
        *self.failed_at_start.lock().expect("failed loads lock poisoned") = removed;
    }

    /// The start's loads are over and counted (`/readyz` says ready from now on).
    pub fn mark_loaded(&self) {
        self.loaded.send_replace(true);
    }
}
