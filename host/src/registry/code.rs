//! Loading a version's compiled code ([`CodeLoader`]) and holding it until first use
//! ([`PreCell`]): at start the code is loaded after the node listens (see [`super::start`]).
//!
//! Invariant: a version's code is loaded once. [`PreCell`] is a `OnceLock`: whoever comes
//! first loads, and every other caller waits for that load.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::component::Component;

use super::layout::{FunctionMeta, LoadedVersion, VERSION_FILE, commit_meta, sha256_hex, version_dir_name};
use crate::runtime::{FunctionPre, Runtime};
use crate::storage::write_durably;

/// A version's code compiled again from its component (the precompiled code was missing,
/// damaged or built for another engine), to be stored for the next start.
pub(super) struct Recompiled {
    function_dir: PathBuf,
    version_dir: PathBuf,
    /// The version's metadata with the new code's digest.
    meta: FunctionMeta,
    code: Vec<u8>,
}

impl Recompiled {
    /// Stores the code and its digest (blocking; the caller holds the change lock: the commit
    /// point is read, changed and written).
    pub(super) fn store(self) -> anyhow::Result<()> {
        let Recompiled { function_dir, version_dir, meta, code } = self;
        write_durably(&version_dir.join("code.cwasm"), &code)?;
        write_durably(&version_dir.join(VERSION_FILE), &serde_json::to_vec_pretty(&meta)?)?;
        // The commit point records the live version's digest too: keep it current, or every
        // start would recompile.
        let commit: Option<FunctionMeta> =
            fs::read(function_dir.join("meta.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(commit) = commit.filter(|commit| commit.version == meta.version) {
            let updated = FunctionMeta { code_sha256: meta.code_sha256.clone(), ..commit };
            commit_meta(&function_dir, &updated)?;
        }
        Ok(())
    }
}

/// Loads versions' compiled code from the functions' folders.
#[derive(Clone)]
pub(super) struct CodeLoader {
    pub(super) functions_dir: PathBuf,
    runtime: Arc<Runtime>,
    /// Code loaded and prepared during the start, by its SHA-256: functions deployed from the
    /// same bytes share it. `None` once the start's loads end, so removed functions' code is
    /// not kept alive.
    shared: Arc<Mutex<Option<HashMap<String, FunctionPre>>>>,
}

impl CodeLoader {
    pub(super) fn new(functions_dir: PathBuf, runtime: Arc<Runtime>) -> Self {
        CodeLoader { functions_dir, runtime, shared: Arc::new(Mutex::new(Some(HashMap::new()))) }
    }

    /// Loads one version (blocking): its precompiled code when the digest matches, else
    /// recompiled. The version's metadata comes back with the digest of the code it runs; code
    /// recompiled comes back too, for the caller to store under the change lock.
    pub(super) fn load_version(
        &self,
        name: &str,
        mut meta: FunctionMeta,
    ) -> anyhow::Result<(LoadedVersion, Option<Recompiled>)> {
        meta.canary = None;
        // Many functions deployed from the same bytes share one verified, mapped copy of the
        // code, prepared once (the linker's type check of every import, the costliest part
        // of loading a function whose code is already compiled).
        let cached =
            self.shared.lock().expect("code cache poisoned").as_ref().and_then(|c| c.get(&meta.code_sha256).cloned());
        if let Some(pre) = cached {
            tracing::info!(function = name, version = meta.version, "loaded precompiled artifact");
            return Ok((LoadedVersion { meta, pre }, None));
        }
        let function_dir = self.functions_dir.join(name);
        let version_dir = function_dir.join(version_dir_name(meta.version));
        let (component, recompiled) = match self.load_precompiled(&version_dir, &meta) {
            Ok(component) => {
                tracing::info!(function = name, version = meta.version, "loaded precompiled artifact");
                (component, None)
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
                meta.code_sha256 = sha256_hex(&code);
                (component, Some(Recompiled { function_dir, version_dir, meta: meta.clone(), code }))
            }
        };
        let pre = self.runtime.prepare(&component)?;
        if let Some(cache) = self.shared.lock().expect("code cache poisoned").as_mut() {
            cache.insert(meta.code_sha256.clone(), pre.clone());
        }
        Ok((LoadedVersion { meta, pre }, recompiled))
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

    /// Stops sharing code between loads (the start's loads are over).
    pub(super) fn forget_shared(&self) {
        self.shared.lock().expect("code cache poisoned").take();
    }
}

pub(super) type LoadFn = Box<dyn FnOnce() -> Option<LoadedVersion> + Send>;

/// A version's build, ready to instantiate: at once for a version deployed or loaded while the
/// node runs, on first use for one found at start (see the module docs).
#[derive(Clone)]
pub struct PreCell(Arc<PreCellInner>);

struct PreCellInner {
    /// The build, or `None` when it could not be loaded.
    loaded: OnceLock<Option<LoadedVersion>>,
    /// How to load it, until someone has.
    load: Mutex<Option<LoadFn>>,
}

impl PreCell {
    pub(super) fn ready(version: LoadedVersion) -> PreCell {
        PreCell(Arc::new(PreCellInner { loaded: OnceLock::from(Some(version)), load: Mutex::new(None) }))
    }

    pub(super) fn deferred(load: LoadFn) -> PreCell {
        PreCell(Arc::new(PreCellInner { loaded: OnceLock::new(), load: Mutex::new(Some(load)) }))
    }

    /// The build if it is loaded; never waits (a start's builds are loaded by [`PreCell::load`]).
    pub fn get(&self) -> Option<&FunctionPre> {
        self.0.loaded.get()?.as_ref().map(|version| &version.pre)
    }

    /// Loads the build if nobody has yet, on a blocking thread: a load reads, hashes and maps
    /// the code, or recompiles it, which must never hold a worker that serves requests.
    /// Whether the build could be loaded.
    pub async fn load(&self) -> bool {
        if let Some(loaded) = self.0.loaded.get() {
            return loaded.is_some();
        }
        let cell = self.clone();
        tokio::task::spawn_blocking(move || cell.load_blocking().is_some()).await.unwrap_or(false)
    }

    /// The build, loaded here if nobody has (blocking: never on a worker that serves requests).
    pub(super) fn load_blocking(&self) -> Option<&LoadedVersion> {
        let inner = &self.0;
        inner
            .loaded
            .get_or_init(|| {
                let load = inner.load.lock().expect("load lock poisoned").take();
                load.and_then(|load| load())
            })
            .as_ref()
    }

    /// What a load left, without waiting: `None` before anyone loaded, `Some(None)` when the
    /// build could not be loaded.
    pub(super) fn get_loaded(&self) -> Option<Option<&LoadedVersion>> {
        self.0.loaded.get().map(Option::as_ref)
    }

    /// Whether `self` and `other` are the same cell (one version's build, not a copy).
    pub(super) fn same(&self, other: &PreCell) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::PreCell;

    #[test]
    fn a_deferred_build_is_loaded_once_whoever_asks_and_however_many_at_once() {
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let cell = PreCell::deferred(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            // Long enough for every asker to arrive while the load runs.
            std::thread::sleep(std::time::Duration::from_millis(50));
            None
        }));
        let barrier = Arc::new(Barrier::new(8));
        let askers: Vec<_> = (0..8)
            .map(|_| {
                let (cell, barrier) = (cell.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cell.load_blocking().is_none()
                })
            })
            .collect();
        for asker in askers {
            assert!(asker.join().unwrap(), "a build that cannot be loaded is none for every asker");
        }
        assert!(cell.get().is_none() && cell.load_blocking().is_none());
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
