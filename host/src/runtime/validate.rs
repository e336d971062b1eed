//! Deploy-time validation: is the upload a component (not a core module, not garbage), can
//! every import be satisfied, does it export a handler (`wasi:http/incoming-handler`, the
//! WebSocket handlers, or both: `prepared.rs`); compilation, and
//! precompiled artifacts for other nodes (`ledge compile`).
//!
//! Invariant: a refused component gets a [`ValidateError`] that is the uploader's to fix and
//! names every missing import at once.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::guest::{MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLES};
use super::invoke::describe_failure;
use super::{Allocator, FunctionPre, Runtime, RuntimeOptions, ValidateError, anyhow_from};
use crate::access::policy::Policy;
use crate::guest_kv::KvAccess;
use crate::telemetry::TraceCx;

/// How long the deploy-time instantiation may take.
const TRIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Interfaces ledge links, as `package/interface@compatible-version`. Deploy checks every import
/// against this list first so that a refused component's error names *all* missing imports,
/// not only the first one the linker trips on.
const PROVIDED_INTERFACES: &[&str] = &[
    "wasi:io/error@0.2",
    "wasi:io/poll@0.2",
    "wasi:io/streams@0.2",
    "wasi:clocks/monotonic-clock@0.2",
    "wasi:clocks/wall-clock@0.2",
    "wasi:random/random@0.2",
    "wasi:random/insecure@0.2",
    "wasi:random/insecure-seed@0.2",
    "wasi:cli/environment@0.2",
    "wasi:cli/exit@0.2",
    "wasi:cli/stdin@0.2",
    "wasi:cli/stdout@0.2",
    "wasi:cli/stderr@0.2",
    "wasi:cli/terminal-input@0.2",
    "wasi:cli/terminal-output@0.2",
    "wasi:cli/terminal-stdin@0.2",
    "wasi:cli/terminal-stdout@0.2",
    "wasi:cli/terminal-stderr@0.2",
    "wasi:filesystem/types@0.2",
    "wasi:filesystem/preopens@0.2",
    "wasi:sockets/network@0.2",
    "wasi:sockets/instance-network@0.2",
    "wasi:sockets/tcp@0.2",
    "wasi:sockets/tcp-create-socket@0.2",
    "wasi:sockets/udp@0.2",
    "wasi:sockets/udp-create-socket@0.2",
    "wasi:sockets/ip-name-lookup@0.2",
    "wasi:http/types@0.2",
    "wasi:http/outgoing-handler@0.2",
    "wasi:config/store@0.2.0-rc.1",
    "wasi:keyvalue/store@0.2.0-draft2",
    "wasi:keyvalue/atomics@0.2.0-draft2",
    "wasi:keyvalue/batch@0.2.0-draft2",
    "ledge:platform/transactions@0.1",
    "ledge:platform/caller@0.1",
    "ledge:platform/queues@0.1",
    "ledge:platform/websocket@0.1",
];

impl Runtime {
    /// Checks the binary's header and compiles it (CPU-heavy: call from a blocking thread).
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, ValidateError> {
        if bytes.starts_with(b"\x7fELF") {
            return self.load_precompiled(bytes);
        }
        match bytes.get(0..8) {
            Some([0, b'a', b's', b'm', 0x01, 0, 0, 0]) => return Err(ValidateError::CoreModule),
            Some([0, b'a', b's', b'm', 0x0d, 0, 0x01, 0]) => {}
            Some([0, b'a', b's', b'm', ..]) => return Err(ValidateError::UnknownBinaryVersion),
            _ => return Err(ValidateError::NotWasm),
        }
        Component::new(&self.engine, bytes).map_err(|error| ValidateError::Invalid(format!("{error:#}")))
    }

    /// A component precompiled elsewhere (`ledge compile`): native code, so only accepted from
    /// operators who said they trust their deployers with it (`--trust-precompiled`).
    fn load_precompiled(&self, bytes: &[u8]) -> Result<Component, ValidateError> {
        if !self.trust_precompiled {
            return Err(ValidateError::Precompiled(
                "this server does not accept precompiled artifacts (start it with --trust-precompiled); deploy the .wasm component instead".into(),
            ));
        }
        // SAFETY: the operator opted in to running deployers' native code; wasmtime still
        // refuses artifacts for another target, wasmtime build or engine configuration.
        unsafe { Component::deserialize(&self.engine, bytes) }.map_err(|error| {
            ValidateError::Precompiled(format!("the artifact was not compiled for this node (target, wasmtime version and profile must match): {error:#}"))
        })
    }

    /// Compiles `bytes` (pre-initializing it when it exports `init`) for another node's
    /// `target` triple and profile; returns the artifact a node of that kind deploys as it is.
    pub async fn compile_for(&self, bytes: &[u8], target: &str, options: &RuntimeOptions) -> anyhow::Result<Vec<u8>> {
        let component = self.compile(bytes)?;
        self.prepare(&component)?;
        let initialized = if super::preinit::wants_preinit(&component)? {
            super::preinit::snapshot(self, bytes).await?
        } else {
            bytes.to_vec()
        };
        let mut config = Self::config(options, Allocator::OnDemand);
        config.target(target).map_err(anyhow_from)?;
        let engine = Engine::new(&config).map_err(anyhow_from)?;
        engine.precompile_component(&initialized).map_err(anyhow_from)
    }

    /// Refuses a component that would take more than one instance's share of the pool: too many
    /// linear memories or tables, counted statically before anything else is checked. (Core
    /// instances are counted by the pool when compiling, and by [`Runtime::check_instantiation`].)
    pub fn check_static_limits(&self, component: &Component) -> Result<(), ValidateError> {
        let Some(needs) = component.resources_required() else {
            return Err(ValidateError::Limits(
                "it instantiates core modules it imports, so its needs cannot be bounded".into(),
            ));
        };
        if needs.num_memories as usize > MAX_MEMORIES {
            return Err(ValidateError::Limits(format!(
                "it defines {} linear memories; at most {MAX_MEMORIES} are allowed",
                needs.num_memories
            )));
        }
        if needs.num_tables as usize > MAX_TABLES {
            return Err(ValidateError::Limits(format!(
                "it defines {} tables; at most {MAX_TABLES} are allowed",
                needs.num_tables
            )));
        }
        Ok(())
    }

    /// Instantiates the component once, under the same limits as a request: catches too many
    /// core instances whatever the allocator, and a start function that traps or never returns.
    pub async fn check_instantiation(&self, pre: &FunctionPre) -> Result<(), ValidateError> {
        let mut store = self.guest_store(
            "(deploy check)",
            &Policy::default(),
            KvAccess::none(),
            Arc::default(),
            None,
            TraceCx::default(),
        );
        match tokio::time::timeout(TRIAL_TIMEOUT, pre.instance_pre().instantiate_async(&mut store)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if format!("{error:#}").contains("count too high") => Err(ValidateError::Limits(format!(
                "it creates more than {MAX_CORE_INSTANCES} core instances ({})",
                describe_failure(&error)
            ))),
            Ok(Err(error)) => {
                Err(ValidateError::Invalid(format!("instantiating it failed: {}", describe_failure(&error))))
            }
            Err(_) => Err(ValidateError::Invalid(format!(
                "instantiating it did not finish within {TRIAL_TIMEOUT:?} (a start function that never returns?)"
            ))),
        }
    }

    /// Resolves the component's imports once, so requests only instantiate.
    pub fn prepare(&self, component: &Component) -> Result<FunctionPre, ValidateError> {
        let missing: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .filter(|name| !is_provided(name))
            .collect();
        if !missing.is_empty() {
            return Err(ValidateError::MissingImports(missing));
        }
        let pre =
            self.linker.instantiate_pre(component).map_err(|error| ValidateError::Unlinkable(format!("{error:#}")))?;
        FunctionPre::new(pre)
    }
}

pub(crate) fn is_provided(import: &str) -> bool {
    let (interface, version) = import.split_once('@').unwrap_or((import, ""));
    let compatible = semver_compatible_prefix(version);
    PROVIDED_INTERFACES.iter().any(|provided| {
        let (p_interface, p_version) = provided.split_once('@').unwrap_or((provided, ""));
        p_interface == interface && p_version == compatible
    })
}

/// `0.2.3` → `0.2`, `1.4.0` → `1`, `0.0.7` → `0.0.7`: versions wasmtime's linker treats as one.
fn semver_compatible_prefix(version: &str) -> &str {
    let parts: Vec<&str> = version.split('.').collect();
    match parts.as_slice() {
        // Pre-releases (`0.2.0-draft2`) match only themselves.
        _ if version.contains('-') => version,
        [major, ..] if *major != "0" => major,
        ["0", minor, ..] if *minor != "0" => &version[..2 + minor.len()],
        _ => version,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ledge_kv::Db;

    use super::*;

    #[test]
    fn imports_match_by_semver_compatible_version() {
        assert!(is_provided("wasi:http/types@0.2.0"));
        assert!(is_provided("wasi:http/types@0.2.12"));
        assert!(!is_provided("wasi:http/types@0.3.0-rc-2025-09-16"));
        assert!(is_provided("wasi:keyvalue/store@0.2.0-draft2"));
        assert!(!is_provided("wasi:keyvalue/store@0.2.0-draft"));
        assert!(!is_provided("acme:thing/store@1.0.0"));
        assert_eq!(semver_compatible_prefix("1.4.0"), "1");
        assert_eq!(semver_compatible_prefix("0.2.3"), "0.2");
        assert_eq!(semver_compatible_prefix("0.0.7"), "0.0.7");
    }

    #[test]
    fn headers_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let runtime =
            Runtime::new(&RuntimeOptions { pooling: false, ..Default::default() }, Arc::default(), Some(db)).unwrap();
        assert!(matches!(runtime.compile(b"garbage!"), Err(ValidateError::NotWasm)));
        assert!(matches!(runtime.compile(b"\0asm\x01\0\0\0"), Err(ValidateError::CoreModule)));
        assert!(matches!(runtime.compile(b"\0asm\x0d\0\x01\0\xff"), Err(ValidateError::Invalid(_))));
    }
}
