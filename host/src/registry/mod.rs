//! The function registry: deployed components, durable in the data dir, and the live version
//! of each function. [`layout`] is the on-disk format, [`code`] loading compiled code,
//! [`start`] the start (the code loaded after the node listens), [`deploy`] the deploy pipeline,
//! [`versions`] the kept versions and canaries, [`canary`] which version a request runs and the
//! canary's record that `ledge promote` judges, [`policies`] how each function's effective
//! policy is found and kept current, [`config`] config and sealed secrets, [`routes`] host
//! routes, [`schedule`] cron schedules, [`consumers`] queue consumers. The fuzz targets' entry points (`fuzzing`) live here,
//! the lowest layer above everything they parse, compiled only for tests and with the
//! `fuzzing` feature.
//!
//! Layer: below the HTTP edge and the cluster (which call it), above the runtime (which it asks
//! to compile and prepare components), the guest bindings (a removed function's keys), access
//! and storage. Never imports from `http`, `cluster` or `cli`.
//!
//! Invariants:
//! - a deploy is visible only after its files and `meta.json` are fsynced; anything on disk not
//!   named by a `meta.json` is debris of an interrupted deploy and is removed at start;
//! - swapping the live version replaces one `Arc`: requests that already hold the old version
//!   finish on it, new requests get the new one;
//! - precompiled code is loaded only when its SHA-256 matches the one recorded at deploy, so a
//!   tampered artifact is recompiled from the component instead of being trusted;
//! - deploys, removals and policy changes are serialized by one lock; lookups never wait on it.
//!   A backup holds the same lock while it copies the functions' files, so it never sees one
//!   half changed.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ledge_kv::Db;
use thiserror::Error;

use crate::access::policy::{Ceilings, Policy, Route, UploadCeilings, is_valid_name};
use crate::guest_kv::delete_function_data;
use crate::runtime::concurrency::ConcurrencyLimit;
use crate::runtime::{GuestConfig, Runtime, ValidateError};
use crate::storage::{create_private_dir, sync_dir};
use config::SecretsKey;

pub mod canary;
pub mod code;
pub mod config;
pub mod consumers;
pub mod deploy;
/// The fuzz targets' entry points (`fuzz/`): compiled only for tests and with the `fuzzing`
/// feature, never into the release binary.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod layout;
pub mod policies;
pub mod routes;
pub mod schedule;
pub mod start;
pub mod versions;

use canary::CanaryRecord;
pub use canary::Chosen;
use code::CodeLoader;
pub use code::PreCell;
pub use layout::{CanarySplit, FunctionMeta, sha256_hex};
use policies::read_default_file;
pub use start::StartLoads;

/// A live function version, ready to instantiate.
pub struct Deployment {
    pub meta: FunctionMeta,
    pub pre: PreCell,
    pub policy: Arc<Policy>,
    /// Permits for live instances (`limits.max_concurrency`): one per function, shared by all
    /// its versions, so a redeploy never lets twice the limit run.
    pub concurrency: Arc<ConcurrencyLimit>,
    /// The function's configuration (`ledge config`), shared by its versions.
    pub config: Arc<GuestConfig>,
    /// A newer version serving a share of callers (`ledge deploy --canary`).
    pub canary: Option<Arc<Canary>>,
    /// No instance of this version has been started yet.
    unstarted: AtomicBool,
}

/// The canary of a deployment: its version, and the share of callers it serves.
pub struct Canary {
    pub meta: FunctionMeta,
    pub pre: PreCell,
    pub percent: u8,
    /// How often it and the live version failed since it started (`ledge promote`'s gate).
    pub record: CanaryRecord,
    unstarted: AtomicBool,
}

impl Deployment {
    /// A version under `policy`; `previous` is the function's live version, whose concurrency
    /// limit it takes over (adjusted to the new policy).
    fn new(meta: FunctionMeta, pre: PreCell, policy: Arc<Policy>, previous: Option<&Deployment>) -> Self {
        let concurrency = match previous {
            Some(previous) => {
                previous.concurrency.set(policy.max_concurrency);
                previous.concurrency.clone()
            }
            None => ConcurrencyLimit::new(policy.max_concurrency),
        };
        let config = previous.map(|p| p.config.clone()).unwrap_or_default();
        Deployment { meta, pre, policy, concurrency, config, canary: None, unstarted: AtomicBool::new(true) }
    }

    /// This deployment with `canary` (a version, its build and its share of callers), or none.
    fn with_canary(mut self, canary: Option<(FunctionMeta, PreCell, u8)>) -> Self {
        self.canary = canary.map(|(meta, pre, percent)| {
            let record = CanaryRecord::default();
            Arc::new(Canary { meta, pre, percent, record, unstarted: AtomicBool::new(true) })
        });
        self
    }

    /// This deployment with `config`.
    fn configured(mut self, config: Arc<GuestConfig>) -> Self {
        self.config = config;
        self
    }

    /// The same version under another configuration (its cold-start state carried over).
    fn with_config(&self, config: Arc<GuestConfig>) -> Deployment {
        self.with(self.meta.clone(), config)
    }

    /// The same version with its metadata as `meta` now records it.
    fn with_meta(&self, meta: FunctionMeta) -> Deployment {
        self.with(meta, self.config.clone())
    }

    fn with(&self, meta: FunctionMeta, config: Arc<GuestConfig>) -> Deployment {
        Deployment {
            meta,
            pre: self.pre.clone(),
            policy: self.policy.clone(),
            concurrency: self.concurrency.clone(),
            config,
            canary: self.canary.clone(),
            unstarted: AtomicBool::new(self.unstarted.load(Ordering::Relaxed)),
        }
    }

    /// The same version under another policy (its cold-start state carried over).
    fn with_policy(&self, policy: Policy) -> Deployment {
        let mut updated = Deployment::new(self.meta.clone(), self.pre.clone(), Arc::new(policy), Some(self));
        updated.unstarted.store(self.unstarted.load(Ordering::Relaxed), Ordering::Relaxed);
        updated.canary = self.canary.clone();
        updated
    }
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("no function named `{0}` is deployed")]
    NotFound(String),
    #[error("invalid function name `{0}`: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("{0}")]
    Versions(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Error)]
pub enum DeployError {
    #[error("the request body is larger than the limit of {limit} bytes for this route")]
    TooLarge { limit: u64 },
    #[error("reading the upload failed: {0}")]
    Upload(String),
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("invalid policy: {0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "only a manage token without an `fn` caveat may widen a policy, and this token may only tighten it; this policy widens {}",
        .0.iter().map(|field| format!("`{field}`")).collect::<Vec<_>>().join(", ")
    )]
    Widens(Vec<&'static str>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Which functions something applies to, by name.
type FunctionFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The result of a successful deploy.
pub struct Deployed {
    pub meta: FunctionMeta,
    /// No earlier version existed.
    pub created: bool,
}

/// Who is changing a function's policy: anyone may tighten it, only a manage token without
/// `fn` caveat may widen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    /// A manage token without `fn` caveats.
    Any,
    /// Any other token (confined to some functions, or deploy-only): widening fields are refused.
    OnlyTighten,
}

pub struct Registry {
    functions_dir: PathBuf,
    policies_dir: Option<PathBuf>,
    default_policy: RwLock<Policy>,
    /// What an uploaded policy may set at most (`[ceilings]` in `policies/default.toml`).
    upload_ceilings: RwLock<UploadCeilings>,
    /// What no policy may exceed (`--max-timeout`).
    ceilings: Ceilings,
    runtime: Arc<Runtime>,
    /// The engine holding the functions' keyspaces (removed with them); `None` in tests of the
    /// registry alone.
    db: Option<Db>,
    /// Seals the functions' secrets (the node's key, or in cluster mode the cluster's).
    secrets: RwLock<Arc<SecretsKey>>,
    live: RwLock<HashMap<String, Arc<Deployment>>>,
    /// Every function's `[[route]]`s, most specific first (rebuilt when policies change).
    routes: RwLock<Arc<Vec<(Route, String)>>>,
    /// Serializes every change to the functions' files (deploys, removals, policies, config,
    /// rollbacks); [`Registry::while_unchanged`] holds it to read them whole.
    changes: Arc<tokio::sync::Mutex<()>>,
    /// Loads versions' compiled code.
    code: CodeLoader,
    /// The start's loads are over ([`StartLoads`]); until then `/readyz` says not ready.
    loaded: tokio::sync::watch::Sender<bool>,
    /// The node stops: the start's loads end early.
    stop_loading: AtomicBool,
    /// The functions the start's loads left undeployed.
    failed_at_start: std::sync::Mutex<Vec<String>>,
    /// Components checked before a cluster publishes them, by SHA-256 (at most
    /// [`deploy::MAX_CHECKED`]).
    checked: std::sync::Mutex<HashMap<String, deploy::Artifacts>>,
    /// Whether this node runs a function's schedules (cluster mode: one node per function).
    schedules_here: std::sync::OnceLock<FunctionFilter>,
}

/// How the functions found at start were loaded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub precompiled: usize,
    pub recompiled: usize,
}

pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    if is_valid_name(name) { Ok(()) } else { Err(RegistryError::InvalidName(name.to_string())) }
}

impl Registry {
    /// Opens the registry under `data_dir` (blocking): every deployed function is live at
    /// once, its code loaded by the [`StartLoads`] handed back (run them once the node listens)
    /// or by its first request, whichever comes first. A policy file that does not parse stops
    /// the start: serving with a silently ignored policy would be worse.
    pub fn open(
        data_dir: &Path,
        policies_dir: Option<&Path>,
        ceilings: Ceilings,
        runtime: Arc<Runtime>,
        db: Option<Db>,
        secrets: SecretsKey,
    ) -> anyhow::Result<(Registry, StartLoads)> {
        let functions_dir = data_dir.join("functions");
        create_private_dir(&functions_dir)?;
        let default_file = policies_dir.map_or_else(PathBuf::new, |dir| dir.join("default.toml"));
        let (default_policy, upload_ceilings) = read_default_file(&default_file, &ceilings)?;
        let changes = Arc::new(tokio::sync::Mutex::new(()));
        let code = CodeLoader::new(functions_dir.clone(), runtime.clone());
        let mut loads = StartLoads::new(code.clone(), changes.clone());
        let registry = Registry {
            functions_dir,
            policies_dir: policies_dir.map(Path::to_path_buf),
            default_policy: RwLock::new(default_policy),
            upload_ceilings: RwLock::new(upload_ceilings),
            ceilings,
            runtime,
            db,
            secrets: RwLock::new(Arc::new(secrets)),
            live: RwLock::new(HashMap::new()),
            routes: RwLock::default(),
            changes,
            code,
            loaded: tokio::sync::watch::Sender::new(false),
            stop_loading: AtomicBool::new(false),
            failed_at_start: std::sync::Mutex::default(),
            checked: std::sync::Mutex::new(HashMap::new()),
            schedules_here: std::sync::OnceLock::new(),
        };
        let mut live = HashMap::new();
        for entry in fs::read_dir(&registry.functions_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() {
                continue;
            }
            let policy = Arc::new(registry.policy_for(&name)?);
            // One function that cannot be loaded (damaged files, an artifact this build cannot
            // run) must not keep the others down: it is reported and left undeployed.
            match registry.load(&name, policy, &mut loads) {
                Ok(Some(deployment)) => {
                    live.insert(name, Arc::new(deployment));
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(function = %name, error = %format!("{error:#}"), "cannot load function; redeploy it")
                }
            }
        }
        *registry.live.write().expect("registry lock poisoned") = live;
        registry.rebuild_routes();
        Ok((registry, loads))
    }

    fn function_dir(&self, name: &str) -> PathBuf {
        self.functions_dir.join(name)
    }

    /// Runs `read` on a blocking thread while no change to the functions' files (deploy,
    /// removal, policy, config, rollback) is under way, so it sees each function whole, as of
    /// one moment (a backup copies them so). Changes wait until it returns; requests do not.
    /// The lock goes with `read`: it is held until `read` returns even if the caller stops
    /// waiting.
    pub async fn while_unchanged<T: Send + 'static>(&self, read: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let held = self.changes.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let result = read();
            drop(held);
            result
        })
        .await
        .map_err(|join| io::Error::other(join.to_string()))
    }

    pub fn lookup(&self, name: &str) -> Option<Arc<Deployment>> {
        self.live.read().expect("registry lock poisoned").get(name).cloned()
    }

    pub fn list(&self) -> Vec<FunctionMeta> {
        let live = self.live.read().expect("registry lock poisoned");
        let mut metas: Vec<FunctionMeta> = live.values().map(|d| d.meta.clone()).collect();
        metas.sort_by(|a, b| a.name.cmp(&b.name));
        metas
    }

    /// Removes a function: first its commit point, then its files, then (unless `keep_data`)
    /// its keyspace. Returns the number of keys deleted.
    pub async fn remove(&self, name: &str, keep_data: bool) -> Result<u64, RegistryError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        if self.lookup(name).is_none() {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        let dir = self.function_dir(name);
        fs::remove_file(dir.join("meta.json"))?;
        sync_dir(&dir)?;
        let removed = self.live.write().expect("registry lock poisoned").remove(name);
        self.rebuild_routes();
        // Instances already running may still commit: let them finish (each is bounded by its
        // timeout) so that nothing they write outlives the deleted keyspace.
        if let Some(removed) = removed
            && !keep_data
            && tokio::time::timeout(self.ceilings.max_timeout, removed.concurrency.idle()).await.is_err()
        {
            tracing::warn!(function = name, "instances still running after the timeout ceiling; deleting anyway");
        }
        fs::remove_dir_all(&dir)?;
        sync_dir(&self.functions_dir)?;
        let deleted = match (&self.db, keep_data) {
            (Some(db), false) => {
                let (db, name) = (db.clone(), name.to_string());
                tokio::task::spawn_blocking(move || delete_function_data(&db, &name))
                    .await
                    .map_err(|join| io::Error::other(join.to_string()))?
                    .map_err(|error| io::Error::other(format!("deleting the keyspace: {error}")))?
            }
            _ => 0,
        };
        tracing::info!(function = name, keep_data, keys_deleted = deleted, "removed");
        Ok(deleted)
    }
}
