//! Loading a version's compiled code ([`CodeLoader`]) and holding it until first use
//! ([`PreCell`]): at start the code is loaded after the node listens (see [`super::start`]).
//!
//! Invariants: a version's code is loaded once (whoever comes first starts the load, every
//! other caller waits for it without holding a thread); a load runs on a blocking thread, at
//! most as many at once as the start's slots (the machine's cores), so neither requests for
//! many unloaded functions nor many requests for one can take the node's threads or memory.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{Notify, Semaphore};

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
    /// point is read, changed and written). Only into the version it was compiled for: a
    /// function removed and deployed anew while it compiled has a `v1` of other bytes.
    pub(super) fn store(self) -> anyhow::Result<()> {
        let Recompiled { function_dir, version_dir, meta, code } = self;
        let same = |other: &FunctionMeta| {
            other.version == meta.version && other.sha256 == meta.sha256 && other.deployed_at == meta.deployed_at
        };
        let read = |path: PathBuf| -> Option<FunctionMeta> { serde_json::from_slice(&fs::read(path).ok()?).ok() };
        if !read(version_dir.join(VERSION_FILE)).is_some_and(|recorded| same(&recorded)) {
            return Ok(());
        }
        write_durably(&version_dir.join("code.cwasm"), &code)?;
        write_durably(&version_dir.join(VERSION_FILE), &serde_json::to_vec_pretty(&meta)?)?;
        // The commit point records the live version's digest too: keep it current, or every
        // start would recompile.
        if let Some(commit) = read(function_dir.join("meta.json")).filter(|commit| same(commit)) {
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
/// node runs, on first use for one found at start (see [`super::start`]).
#[derive(Clone)]
pub struct PreCell(Arc<PreCellInner>);

struct PreCellInner {
    /// The build, or `None` when it could not be loaded.
    loaded: OnceLock<Option<LoadedVersion>>,
    /// How to load it, until a caller starts the load.
    load: Mutex<Option<Deferred>>,
    /// Wakes the callers waiting for the load.
    done: Notify,
}

/// A build not loaded yet: how to load it, and the node's loads that may run at once (slots
/// shared by a start's cells).
struct Deferred {
    load: LoadFn,
    slots: Arc<Semaphore>,
}

impl PreCell {
    pub(super) fn ready(version: LoadedVersion) -> PreCell {
        PreCell::new(OnceLock::from(Some(version)), None)
    }

    pub(super) fn deferred(load: LoadFn, slots: Arc<Semaphore>) -> PreCell {
        PreCell::new(OnceLock::new(), Some(Deferred { load, slots }))
    }

    fn new(loaded: OnceLock<Option<LoadedVersion>>, load: Option<Deferred>) -> PreCell {
        PreCell(Arc::new(PreCellInner { loaded, load: Mutex::new(load), done: Notify::new() }))
    }

    /// The build if it is loaded; never waits (a start's builds are loaded by [`PreCell::load`]).
    pub fn get(&self) -> Option<&FunctionPre> {
        self.0.loaded.get()?.as_ref().map(|version| &version.pre)
    }

    /// Loads the build if nobody has yet, and waits for it; whether it could be loaded. The
    /// load runs on a blocking thread (it reads, hashes and maps the code, or recompiles it:
    /// never on a worker that serves requests), at most as many at once as the slots allow,
    /// and to its end even if every caller went away. Callers wait without holding a thread.
    pub async fn load(&self) -> bool {
        let inner = &self.0;
        // Every request asks: a loaded build answers without touching the waiters' list.
        if let Some(loaded) = inner.loaded.get() {
            return loaded.is_some();
        }
        loop {
            let done = inner.done.notified();
            tokio::pin!(done);
            // Listening before looking, so a load that ends in between still wakes this caller.
            done.as_mut().enable();
            if let Some(loaded) = inner.loaded.get() {
                return loaded.is_some();
            }
            let slots = inner.load.lock().expect("load lock poisoned").as_ref().map(|deferred| deferred.slots.clone());
            if let Some(slots) = slots {
                // A slot first: a caller that goes away while it waits has taken nothing.
                let slot = slots.acquire_owned().await;
                if let Some(Deferred { load, .. }) = inner.load.lock().expect("load lock poisoned").take() {
                    let cell = self.clone();
                    tokio::task::spawn_blocking(move || {
                        let _ = cell.0.loaded.set(load());
                        drop(slot);
                        cell.0.done.notify_waiters();
                    });
                }
            }
            done.await;
        }
    }

    /// What a load left, without waiting: `None` before a load ended, `Some(None)` when the
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::{FunctionMeta, PreCell, Recompiled, VERSION_FILE};

    fn meta(version: u64, sha256: &str, deployed_at: &str, code_sha256: &str) -> FunctionMeta {
        FunctionMeta {
            name: "f".into(),
            version,
            sha256: sha256.repeat(32),
            size: 1,
            deployed_at: deployed_at.into(),
            code_sha256: code_sha256.repeat(32),
            snapshot_sha256: None,
            canary: None,
        }
    }

    /// A function folder whose live `v1` (and commit point) is `recorded`.
    fn function_dir(recorded: &FunctionMeta) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v1")).unwrap();
        std::fs::write(dir.path().join("v1/code.cwasm"), b"code on disk").unwrap();
        std::fs::write(dir.path().join("v1").join(VERSION_FILE), serde_json::to_vec(recorded).unwrap()).unwrap();
        std::fs::write(dir.path().join("meta.json"), serde_json::to_vec(recorded).unwrap()).unwrap();
        dir
    }

    fn recompiled(dir: &std::path::Path, compiled_for: &FunctionMeta) -> Recompiled {
        Recompiled {
            function_dir: dir.to_path_buf(),
            version_dir: dir.join("v1"),
            meta: FunctionMeta { code_sha256: "ee".repeat(32), ..compiled_for.clone() },
            code: b"new code".to_vec(),
        }
    }

    fn read_meta(path: std::path::PathBuf) -> FunctionMeta {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn recompiled_code_is_stored_with_its_digest_in_the_version_it_was_compiled_for() {
        let live = meta(1, "ab", "2026-12-07T08:00:00Z", "cd");
        let dir = function_dir(&live);
        recompiled(dir.path(), &live).store().unwrap();
        assert_eq!(std::fs::read(dir.path().join("v1/code.cwasm")).unwrap(), b"new code");
        assert_eq!(read_meta(dir.path().join("v1").join(VERSION_FILE)).code_sha256, "ee".repeat(32));
        assert_eq!(read_meta(dir.path().join("meta.json")).code_sha256, "ee".repeat(32));
    }

    #[test]
    fn recompiled_code_never_lands_in_a_version_deployed_anew_under_the_same_number() {
        // Compiled for the old v1; the function was removed and deployed anew (another v1)
        // while it compiled.
        let old = meta(1, "ab", "2026-12-07T08:00:00Z", "cd");
        let new = meta(1, "12", "2026-12-07T08:00:05Z", "34");
        let dir = function_dir(&new);
        recompiled(dir.path(), &old).store().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("v1/code.cwasm")).unwrap(),
            b"code on disk",
            "the new v1's code stays"
        );
        assert_eq!(read_meta(dir.path().join("v1").join(VERSION_FILE)), new);
        assert_eq!(read_meta(dir.path().join("meta.json")), new);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deferred_build_is_loaded_once_whoever_asks_and_however_many_at_once() {
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let load = Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            // Long enough for every asker to arrive while the load runs.
            std::thread::sleep(std::time::Duration::from_millis(50));
            None
        });
        let cell = PreCell::deferred(load, Arc::new(Semaphore::new(1)));
        // One asker goes away at once: the load it may have started still ends.
        let impatient = cell.clone();
        drop(tokio::time::timeout(std::time::Duration::from_millis(1), async move { impatient.load().await }).await);
        let askers: Vec<_> = (0..8)
            .map(|_| {
                let cell = cell.clone();
                tokio::spawn(async move { cell.load().await })
            })
            .collect();
        for asker in askers {
            assert!(!asker.await.unwrap(), "a build that cannot be loaded is none for every asker");
        }
        assert!(cell.get().is_none() && matches!(cell.get_loaded(), Some(None)));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
