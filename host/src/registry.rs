//! The function registry: deployed components, durable in the data dir, and the live version
//! of each function.
//!
//! On disk, per function: `functions/NAME/meta.json` names the live version and is the commit
//! point of a deploy; `functions/NAME/vN/` holds that version's `component.wasm` and
//! precompiled `code.cwasm`; `functions/NAME/policy.toml` is an uploaded policy.
//!
//! Invariants:
//! - a deploy is visible only after its files and `meta.json` are fsynced; anything on disk not
//!   named by a `meta.json` is debris of an interrupted deploy and is removed at start;
//! - swapping the live version replaces one `Arc`: requests that already hold the old version
//!   finish on it, new requests get the new one;
//! - precompiled code is loaded only when its SHA-256 matches the one recorded at deploy, so a
//!   tampered artifact is recompiled from the component instead of being trusted;
//! - deploys, removals and policy changes are serialized by one lock; lookups never wait on it.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::Semaphore;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::policy::{Policy, PolicyFile};
use crate::preinit;
use crate::runtime::{GuestState, Runtime, ValidateError};
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

/// A live function version, ready to instantiate.
pub struct Deployment {
    pub meta: FunctionMeta,
    pub pre: ProxyPre<GuestState>,
    pub policy: Arc<Policy>,
    /// Permits for live instances (`limits.max_concurrency`).
    pub concurrency: Arc<Semaphore>,
    /// No instance of this version has been started yet.
    unstarted: AtomicBool,
}

impl Deployment {
    fn new(meta: FunctionMeta, pre: ProxyPre<GuestState>, policy: Arc<Policy>) -> Self {
        let concurrency = Arc::new(Semaphore::new(policy.max_concurrency as usize));
        Deployment { meta, pre, policy, concurrency, unstarted: AtomicBool::new(true) }
    }

    /// The same version under another policy (its cold-start state carried over).
    fn with_policy(&self, policy: Policy) -> Deployment {
        // Instances running now hold permits of the old semaphore; a new limit applies to new
        // requests, as every policy change does.
        let concurrency = if policy.max_concurrency == self.policy.max_concurrency {
            self.concurrency.clone()
        } else {
            Arc::new(Semaphore::new(policy.max_concurrency as usize))
        };
        Deployment {
            meta: self.meta.clone(),
            pre: self.pre.clone(),
            policy: Arc::new(policy),
            concurrency,
            unstarted: AtomicBool::new(self.unstarted.load(Ordering::Relaxed)),
        }
    }

    /// True exactly once per version: for its first instance (a cold start).
    pub fn take_cold_start(&self) -> bool {
        self.unstarted.load(Ordering::Relaxed) && self.unstarted.swap(false, Ordering::Relaxed)
    }
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("no function named `{0}` is deployed")]
    NotFound(String),
    #[error("invalid function name `{0}`: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    InvalidName(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Error)]
pub enum DeployError {
    #[error("the component is larger than the upload limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the upload failed: {0}")]
    Upload(String),
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("invalid policy: {0}")]
    Invalid(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The result of a successful deploy.
pub struct Deployed {
    pub meta: FunctionMeta,
    /// No earlier version existed.
    pub created: bool,
}

pub struct Registry {
    functions_dir: PathBuf,
    policies_dir: Option<PathBuf>,
    default_policy: RwLock<Policy>,
    runtime: Arc<Runtime>,
    live: RwLock<HashMap<String, Arc<Deployment>>>,
    changes: tokio::sync::Mutex<()>,
}

/// How the functions found at start were loaded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub precompiled: usize,
    pub recompiled: usize,
}

pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let bytes = name.as_bytes();
    let valid = matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 63
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if valid { Ok(()) } else { Err(RegistryError::InvalidName(name.to_string())) }
}

impl Registry {
    /// Opens the registry under `data_dir`, loading every deployed function (blocking).
    /// A policy file that does not parse stops the start: serving with a silently ignored
    /// policy would be worse.
    pub fn open(
        data_dir: &Path,
        policies_dir: Option<&Path>,
        runtime: Arc<Runtime>,
    ) -> anyhow::Result<(Registry, LoadReport)> {
        let functions_dir = data_dir.join("functions");
        create_private_dir(&functions_dir)?;
        let default_policy = match policies_dir.map(|dir| dir.join("default.toml")) {
            Some(path) if path.exists() => read_policy_file(&path)?.resolve(&Policy::default()),
            _ => Policy::default(),
        };
        let registry = Registry {
            functions_dir,
            policies_dir: policies_dir.map(Path::to_path_buf),
            default_policy: RwLock::new(default_policy),
            runtime,
            live: RwLock::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
        };
        let mut report = LoadReport::default();
        let mut live = HashMap::new();
        for entry in fs::read_dir(&registry.functions_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() {
                continue;
            }
            let policy = Arc::new(registry.policy_for(&name)?);
            // One function that cannot be loaded (a damaged component, an artifact this build
            // cannot run) must not keep the others down: it is reported and left undeployed.
            match registry.load(&name, policy, &mut report) {
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
        Ok((registry, report))
    }

    fn function_dir(&self, name: &str) -> PathBuf {
        self.functions_dir.join(name)
    }

    /// The effective policy: uploaded, else `policies/NAME.toml`, else the default.
    fn default_policy(&self) -> Policy {
        self.default_policy.read().expect("policy lock poisoned").clone()
    }

    /// Reads the policy files again and applies what changed to new requests. A file that does
    /// not parse is reported and ignored: the policy it would have replaced stays in force.
    pub async fn reload_policies(&self) {
        let _change = self.changes.lock().await;
        if let Some(path) = self.policies_dir.as_ref().map(|dir| dir.join("default.toml")) {
            let parsed = if path.exists() {
                read_policy_file(&path).map(|f| f.resolve(&Policy::default()))
            } else {
                Ok(Policy::default())
            };
            match parsed {
                Ok(policy) => *self.default_policy.write().expect("policy lock poisoned") = policy,
                Err(error) => return tracing::error!(%error, "policy file refused; keeping the policies in force"),
            }
        }
        let mut live = self.live.write().expect("registry lock poisoned");
        for (name, deployment) in live.iter_mut() {
            match self.policy_for(name) {
                Ok(policy) if policy != *deployment.policy => {
                    tracing::info!(function = %name, "policy changed");
                    *deployment = Arc::new(deployment.with_policy(policy));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(function = %name, %error, "policy file refused; keeping the function's policy")
                }
            }
        }
    }

    /// Reloads policies whenever a file in the policies directory changes.
    pub fn spawn_policy_watcher(self: &Arc<Self>) {
        let Some(dir) = self.policies_dir.clone() else { return };
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = policy_files_state(&dir);
            loop {
                tokio::time::sleep(POLICY_WATCH_INTERVAL).await;
                let Some(registry) = registry.upgrade() else { return };
                let now = policy_files_state(&dir);
                if now != seen {
                    seen = now;
                    registry.reload_policies().await;
                }
            }
        });
    }

    fn policy_for(&self, name: &str) -> anyhow::Result<Policy> {
        let uploaded = self.function_dir(name).join("policy.toml");
        let file = self.policies_dir.as_ref().map(|dir| dir.join(format!("{name}.toml")));
        for path in [Some(uploaded), file].into_iter().flatten() {
            if path.exists() {
                return Ok(read_policy_file(&path)?.resolve(&self.default_policy()));
            }
        }
        Ok(self.default_policy())
    }

    /// Loads the version `meta.json` names, removing debris of interrupted deploys.
    fn load(&self, name: &str, policy: Arc<Policy>, report: &mut LoadReport) -> anyhow::Result<Option<Deployment>> {
        let dir = self.function_dir(name);
        let meta: Option<FunctionMeta> = match fs::read(dir.join("meta.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error.into()),
        };
        let live_version = meta.as_ref().map(|m| version_dir_name(m.version));
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() && Some(&file_name) != live_version.as_ref() {
                fs::remove_dir_all(entry.path())?;
            }
        }
        let Some(mut meta) = meta else {
            return Ok(None);
        };
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
        Ok(Some(Deployment::new(meta, pre, policy)))
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

    pub fn lookup(&self, name: &str) -> Option<Arc<Deployment>> {
        self.live.read().expect("registry lock poisoned").get(name).cloned()
    }

    pub fn list(&self) -> Vec<FunctionMeta> {
        let live = self.live.read().expect("registry lock poisoned");
        let mut metas: Vec<FunctionMeta> = live.values().map(|d| d.meta.clone()).collect();
        metas.sort_by(|a, b| a.name.cmp(&b.name));
        metas
    }

    /// Validates, compiles, stores durably, then swaps the live version.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<Deployed, DeployError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let runtime = self.runtime.clone();
        let handle = tokio::runtime::Handle::current();
        // Compiling (and pre-initializing) is CPU-bound for up to seconds: keep it off the
        // workers that serve requests.
        let (bytes, artifacts) = tokio::task::spawn_blocking(move || {
            let artifacts = build_artifacts(&runtime, &handle, &bytes);
            (bytes, artifacts)
        })
        .await
        .map_err(|join| RegistryError::Io(io::Error::other(join.to_string())))?;
        let Artifacts { snapshot, pre, code } = artifacts?;

        let previous = self.lookup(name);
        let meta = FunctionMeta {
            name: name.to_string(),
            version: previous.as_ref().map_or(1, |p| p.meta.version + 1),
            sha256: sha256_hex(&bytes),
            size: bytes.len() as u64,
            deployed_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            code_sha256: sha256_hex(&code),
            snapshot_sha256: snapshot.as_deref().map(sha256_hex),
        };
        let dir = self.function_dir(name);
        let stored = meta.clone();
        tokio::task::spawn_blocking(move || {
            let files =
                [("component.wasm", Some(&bytes)), ("snapshot.wasm", snapshot.as_ref()), ("code.cwasm", Some(&code))];
            store_version(&dir, &stored, &files)
        })
        .await
        .map_err(|join| RegistryError::Io(io::Error::other(join.to_string())))?
        .map_err(RegistryError::Io)?;

        let policy = match &previous {
            Some(previous) => previous.policy.clone(),
            None => Arc::new(self.policy_for(name).map_err(|e| RegistryError::Io(io::Error::other(e.to_string())))?),
        };
        let deployment = Arc::new(Deployment::new(meta.clone(), pre, policy));
        self.live.write().expect("registry lock poisoned").insert(name.to_string(), deployment);
        if let Some(previous) = previous {
            // In-flight requests keep the old code alive through their `Arc`; the files go now.
            let old = self.function_dir(name).join(version_dir_name(previous.meta.version));
            if let Err(error) = fs::remove_dir_all(&old) {
                tracing::warn!(function = name, %error, "could not remove the previous version's files");
            }
        }
        tracing::info!(function = name, version = meta.version, size = meta.size, "deployed");
        Ok(Deployed { created: meta.version == 1, meta })
    }

    /// Removes a function: first its commit point, then its files.
    pub async fn remove(&self, name: &str) -> Result<(), RegistryError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        if self.lookup(name).is_none() {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        let dir = self.function_dir(name);
        fs::remove_file(dir.join("meta.json"))?;
        sync_dir(&dir)?;
        self.live.write().expect("registry lock poisoned").remove(name);
        fs::remove_dir_all(&dir)?;
        sync_dir(&self.functions_dir)?;
        tracing::info!(function = name, "removed");
        Ok(())
    }

    /// Stores an uploaded policy and applies it to new requests at once.
    pub async fn set_policy(&self, name: &str, text: &str) -> Result<Policy, PolicyError> {
        validate_name(name)?;
        let file = PolicyFile::parse(text).map_err(PolicyError::Invalid)?;
        let policy = file.resolve(&self.default_policy());
        let _change = self.changes.lock().await;
        let dir = self.function_dir(name);
        create_private_dir(&dir).map_err(RegistryError::Io)?;
        write_durably(&dir.join("policy.toml"), text.as_bytes()).map_err(RegistryError::Io)?;
        let mut live = self.live.write().expect("registry lock poisoned");
        if let Some(current) = live.get(name).cloned() {
            live.insert(name.to_string(), Arc::new(current.with_policy(policy.clone())));
        }
        Ok(policy)
    }
}

fn version_dir_name(version: u64) -> String {
    format!("v{version}")
}

/// What a deploy produces from the uploaded bytes.
struct Artifacts {
    /// The pre-initialized component, when the upload exports `init`.
    snapshot: Option<Vec<u8>>,
    pre: ProxyPre<GuestState>,
    code: Vec<u8>,
}

/// Validates, pre-initializes when asked, compiles and serializes (blocking).
fn build_artifacts(
    runtime: &Runtime,
    handle: &tokio::runtime::Handle,
    bytes: &[u8],
) -> Result<Artifacts, ValidateError> {
    let mut component = runtime.compile(bytes)?;
    let mut pre = runtime.prepare(&component)?;
    let snapshot = if preinit::wants_preinit(&component)? {
        let snapshot = handle.block_on(preinit::snapshot(runtime, bytes))?;
        component = runtime.compile(&snapshot)?;
        pre = runtime.prepare(&component)?;
        Some(snapshot)
    } else {
        None
    };
    let code =
        component.serialize().map_err(|e| ValidateError::Invalid(format!("cannot serialize compiled code: {e:#}")))?;
    Ok(Artifacts { snapshot, pre, code })
}

/// Writes a version directory under a temp name, fsyncs it, renames it into place, then
/// commits with `meta.json`.
fn store_version(dir: &Path, meta: &FunctionMeta, files: &[(&str, Option<&Vec<u8>>)]) -> io::Result<()> {
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
    write_durably(&dir.join("meta.json"), &serde_json::to_vec_pretty(meta).map_err(io::Error::other)?)
}

/// How often the policies directory is checked for changes.
const POLICY_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Names, sizes and modification times of the policy files: what the watcher compares.
fn policy_files_state(dir: &Path) -> Vec<(std::ffi::OsString, u64, Option<SystemTime>)> {
    let mut state: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let metadata = entry.metadata().ok()?;
            Some((entry.file_name(), metadata.len(), metadata.modified().ok()))
        })
        .collect();
    state.sort();
    state
}

fn read_policy_file(path: &Path) -> anyhow::Result<PolicyFile> {
    let text = fs::read_to_string(path)?;
    PolicyFile::parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
