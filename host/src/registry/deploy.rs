//! The deploy pipeline: validate, pre-initialize when asked, compile, store durably, then
//! swap the live version.

use std::fs;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::layout::{store_version, version_dir_name};
use super::{
    DeployError, Deployed, Deployment, FunctionMeta, PolicyChange, Registry, RegistryError, sha256_hex, validate_name,
};
use crate::runtime::{GuestState, Runtime, ValidateError, preinit};

impl Registry {
    /// Validates, compiles, stores durably, then swaps the live version. A `policy` given with
    /// the component is checked first and applied together with it, or not at all.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        policy: Option<&str>,
        who: PolicyChange,
    ) -> Result<Deployed, DeployError> {
        validate_name(name)?;
        let _change = self.changes.lock().await;
        let given_policy = policy.map(|text| self.check_upload(name, text, who)).transpose()?;
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
        let policy_text = policy.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let files =
                [("component.wasm", Some(&bytes)), ("snapshot.wasm", snapshot.as_ref()), ("code.cwasm", Some(&code))];
            store_version(&dir, &stored, &files, policy_text.as_deref())
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
        let deployment = Arc::new(Deployment::new(meta.clone(), pre, policy, previous.as_deref()));
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
