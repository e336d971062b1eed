//! The wasm runtime: one [`Engine`] and [`Linker`] for the process, compilation and validation
//! of deployed components, and per-request instantiation.
//!
//! Invariants:
//! - every request gets a fresh `Store` and instance from the deployed version's `ProxyPre`
//!   (imports resolved once at deploy); nothing a guest does survives its request;
//! - a guest can only hurt itself: wall-clock time is bounded (one epoch ticker thread for the
//!   engine; guests yield at every tick so a busy loop never pins a worker), linear memory is
//!   capped by the policy, and a trap or a missing response becomes an [`InvokeError`];
//! - outbound HTTP is denied unless the function's policy lists the host.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ledge_kv::Db;
use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::guestlog::GuestLog;
use crate::kv::{Caller, KvAccess, KvBinding, KvCtx};
use crate::metrics::Metrics;
use crate::outbound::OutboundHooks;
use crate::policy::Policy;

/// How often the epoch ticker advances; the granularity of request timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);

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
    "wasi:keyvalue/store@0.2.0-draft2",
    "wasi:keyvalue/atomics@0.2.0-draft2",
    "wasi:keyvalue/batch@0.2.0-draft2",
    "ledge:platform/transactions@0.1",
    "ledge:platform/caller@0.1",
];

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots, reused between requests (fast; needs a large address space).
    Pooling,
    /// mmap per instance: the fallback when the pool cannot be reserved.
    OnDemand,
}

/// Engine-wide settings, fixed for the process lifetime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Try the pooling allocator first (falls back when the reservation fails).
    pub pooling: bool,
    /// Component instances that can be live at once (pooling slots).
    pub max_instances: u32,
    /// Largest linear memory any policy may grant, in bytes.
    pub max_memory: u64,
    /// Bytes of each pooled memory kept resident between requests (reset in place).
    pub keep_resident: usize,
    /// Accept precompiled artifacts at deploy (`--trust-precompiled`).
    pub trust_precompiled: bool,
    /// Virtual address space reserved per linear memory; `None` is wasmtime's default (4 GiB +
    /// guard on 64-bit hosts, bounds checks elided). Smaller reservations add bounds checks but
    /// fit small address spaces.
    pub memory_reservation: Option<u64>,
}

/// Memory and address-space sizing presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Servers: 256 pooled instances, 4 GiB reservations, 16 MiB kept resident per slot.
    Standard,
    /// ARM64 boards (39-bit address space, 1 GB RAM): 32 pooled instances, 128 MiB memories
    /// reserved exactly, 1 MiB kept resident. About 9 GiB of address space in all.
    Small,
}

impl RuntimeOptions {
    pub fn for_profile(profile: Profile) -> Self {
        match profile {
            Profile::Standard => RuntimeOptions {
                pooling: true,
                max_instances: 256,
                max_memory: 1 << 30,
                keep_resident: 16 << 20,
                memory_reservation: None,
                trust_precompiled: false,
            },
            Profile::Small => RuntimeOptions {
                pooling: true,
                max_instances: 32,
                max_memory: 128 << 20,
                keep_resident: 1 << 20,
                memory_reservation: Some(128 << 20),
                trust_precompiled: false,
            },
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self::for_profile(Profile::Standard)
    }
}

/// The process's wasm runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    allocator: Allocator,
    metrics: Arc<Metrics>,
    /// `None` for a runtime that only compiles (`ledge compile`): guests get no key-value access.
    db: Option<Db>,
    /// Accept precompiled artifacts (native code) at deploy.
    trust_precompiled: bool,
    /// The largest linear memory the engine is configured for.
    max_memory: u64,
}

/// One request's view of a deployed version.
pub struct Invocation<'a> {
    pub function: &'a str,
    pub pre: &'a ProxyPre<GuestState>,
    pub policy: &'a Policy,
    /// This is the version's first instance since deploy or start (a cold start).
    pub cold: bool,
    /// What the caller's token allows on top of the policy.
    pub caller: Caller,
    /// The function's concurrency permit, held until the instance is gone.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why a component cannot be deployed. Every variant is the uploader's to fix.
#[derive(Debug, Error)]
pub enum ValidateError {
    #[error("the upload is not a WebAssembly binary (it does not start with `\\0asm`)")]
    NotWasm,
    #[error(
        "the upload is a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("the upload is a WebAssembly binary of an unsupported version or layer")]
    UnknownBinaryVersion,
    #[error("the component is invalid: {0}")]
    Invalid(String),
    #[error("the component imports interfaces ledge does not provide: {}", .0.join(", "))]
    MissingImports(Vec<String>),
    #[error("the component's imports cannot be satisfied: {0}")]
    Unlinkable(String),
    #[error("the component does not export `wasi:http/incoming-handler@0.2.x`, so it cannot serve HTTP: {0}")]
    NotHttpProxy(String),
    #[error("pre-initialization failed: {0}")]
    BadInit(String),
    #[error("{0}")]
    Precompiled(String),
}

/// Why an invocation failed.
#[derive(Debug, Error)]
pub enum InvokeError {
    #[error("the request body is larger than this function's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the function did not finish within its time limit of {0:?}")]
    Timeout(Duration),
    #[error("the function hit its memory limit of {limit} bytes")]
    MemoryLimit { limit: u64 },
    #[error("the function trapped: {0}")]
    Trap(String),
    #[error("every instance slot of this server is in use; retry shortly")]
    PoolExhausted,
    #[error("the function returned without sending a response")]
    NoResponse,
    #[error("the request cannot be passed to the function: {0}")]
    BadRequest(String),
    #[error("host failure while running the function: {0}")]
    Host(String),
}

impl Runtime {
    /// Builds the engine (pooling when the address-space reservation succeeds) and the linker,
    /// and starts the epoch ticker.
    pub fn new(options: &RuntimeOptions, metrics: Arc<Metrics>, db: Option<Db>) -> anyhow::Result<Self> {
        let (engine, allocator) = if options.pooling {
            match Engine::new(&Self::config(options, Allocator::Pooling)) {
                Ok(engine) => (engine, Allocator::Pooling),
                Err(error) => {
                    tracing::warn!(error = %error, "pooling allocator unavailable (address-space reservation failed); using on-demand allocation");
                    (
                        Engine::new(&Self::config(options, Allocator::OnDemand)).map_err(anyhow_from)?,
                        Allocator::OnDemand,
                    )
                }
            }
        } else {
            (Engine::new(&Self::config(options, Allocator::OnDemand)).map_err(anyhow_from)?, Allocator::OnDemand)
        };
        tracing::info!(allocator = ?allocator, "wasm engine ready");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow_from)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow_from)?;
        crate::kv::bindings::PlatformHost::add_to_linker::<GuestState, KvBinding>(&mut linker, GuestState::kv)
            .map_err(anyhow_from)?;
        spawn_epoch_ticker(&engine);
        Ok(Runtime {
            engine,
            linker,
            allocator,
            metrics,
            db,
            trust_precompiled: options.trust_precompiled,
            max_memory: options.max_memory,
        })
    }

    fn config(options: &RuntimeOptions, allocator: Allocator) -> Config {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.memory_init_cow(true);
        if let Some(reservation) = options.memory_reservation {
            config.memory_reservation(reservation).memory_guard_size(64 << 10).memory_reservation_for_growth(0);
        }
        if allocator == Allocator::Pooling {
            let instances = options.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(16))
                .total_memories(instances.saturating_mul(2))
                .total_tables(instances.saturating_mul(4))
                .total_stacks(instances)
                .max_memory_size(usize::try_from(options.max_memory).unwrap_or(usize::MAX))
                // Reset used slots in place instead of unmapping them: per-request
                // madvise/refault (and the TLB-shootdown IPIs it causes) is what dominates
                // `wasmtime serve`. With PAGEMAP_SCAN (Linux 6.7+) only the pages a request
                // dirtied are reset, so a large resident budget costs nothing when unused.
                .linear_memory_keep_resident(options.keep_resident)
                .table_keep_resident(options.keep_resident.min(1 << 20))
                .pagemap_scan(Enabled::Auto);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        config
    }

    /// The engine every component of this process is compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with everything ledge provides to guests.
    pub fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }

    /// A fresh store for one guest run under `policy`: memory capped, and yielding to the
    /// executor at every epoch tick so a spinning guest shares its worker thread and can be
    /// cancelled by a timeout at the next tick.
    pub fn guest_store(&self, function: &str, policy: &Policy, kv: KvAccess) -> Store<GuestState> {
        let mut store = Store::new(&self.engine, GuestState::new(function, policy, self.memory_cap(policy), kv));
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// A policy's memory limit, capped by what this engine can give (the profile's maximum).
    fn memory_cap(&self, policy: &Policy) -> u64 {
        policy.memory.min(self.max_memory)
    }

    /// Which allocator the probe settled on.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

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
        let initialized = if crate::preinit::wants_preinit(&component)? {
            crate::preinit::snapshot(self, bytes).await?
        } else {
            bytes.to_vec()
        };
        let mut config = Self::config(options, Allocator::OnDemand);
        config.target(target).map_err(anyhow_from)?;
        let engine = Engine::new(&config).map_err(anyhow_from)?;
        engine.precompile_component(&initialized).map_err(anyhow_from)
    }

    /// Resolves the component's imports once, so requests only instantiate.
    pub fn prepare(&self, component: &Component) -> Result<ProxyPre<GuestState>, ValidateError> {
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
        ProxyPre::new(pre).map_err(|error| ValidateError::NotHttpProxy(format!("{error:#}")))
    }

    /// Runs one request on a fresh instance. `path_and_query` is what the guest sees.
    pub async fn invoke(
        &self,
        invocation: Invocation<'_>,
        request: http::Request<Incoming>,
        path_and_query: &str,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError> {
        let policy = invocation.policy;
        // A body without a declared length is cut off at the cap; whatever the guest answers
        // then, the client gets a 413.
        let overflowed = Arc::new(AtomicBool::new(false));
        let request = guest_request(request, path_and_query, policy.max_body, overflowed.clone())?;
        let kv = match &self.db {
            Some(db) => KvAccess::new(db.clone(), invocation.function, policy, invocation.caller.clone()),
            None => KvAccess::none(),
        };
        let mut store = self.guest_store(invocation.function, policy, kv);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let mut http = store.data_mut().http();
        let guest_request = http.new_incoming_request(Scheme::Http, request).map_err(host_error)?;
        let outparam = http.new_response_outparam(sender).map_err(host_error)?;
        let pre = invocation.pre.clone();
        let timeout = policy.timeout;
        let metrics = self.metrics.clone();
        let (function, cold) = (invocation.function.to_string(), invocation.cold);
        // The guest runs in its own task so it can keep streaming the body after the response
        // head is sent; the timeout bounds the whole run, body included.
        let permit = invocation.permit;
        let task = tokio::spawn(async move {
            let _permit = permit;
            let _live = LiveInstance::new(&metrics);
            let run = async {
                let started = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                metrics.observe_instantiation(&function, cold, started.elapsed());
                proxy.wasi_http_incoming_handler().call_handle(&mut store, guest_request, outparam).await
            };
            let outcome = tokio::time::timeout(timeout, run).await;
            (outcome, store.data().memory.hit)
        });

        let outcome = receiver.await;
        if overflowed.load(Ordering::Relaxed) {
            return Err(InvokeError::BodyTooLarge { limit: policy.max_body });
        }
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(InvokeError::Trap(format!("the function answered with error code {code:?}"))),
            Err(_) => {
                let (outcome, hit_memory_limit) = task.await.map_err(|join| InvokeError::Host(join.to_string()))?;
                if overflowed.load(Ordering::Relaxed) {
                    return Err(InvokeError::BodyTooLarge { limit: policy.max_body });
                }
                if hit_memory_limit {
                    return Err(InvokeError::MemoryLimit { limit: self.memory_cap(policy) });
                }
                match outcome {
                    Err(_elapsed) => Err(InvokeError::Timeout(timeout)),
                    Ok(Ok(())) => Err(InvokeError::NoResponse),
                    Ok(Err(error)) if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                        Err(InvokeError::PoolExhausted)
                    }
                    Ok(Err(error)) => Err(InvokeError::Trap(describe_failure(&error))),
                }
            }
        }
    }
}

/// Counts an instance in the `live_instances` gauge for as long as it lives.
struct LiveInstance<'a>(&'a Metrics);

impl<'a> LiveInstance<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.live_instances.inc();
        LiveInstance(metrics)
    }
}

impl Drop for LiveInstance<'_> {
    fn drop(&mut self) {
        self.0.live_instances.dec();
    }
}

fn is_provided(import: &str) -> bool {
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

/// What a guest failure was, for the caller: the trap if there is one, else the error's
/// outermost message (the full chain goes to the debug log).
pub fn describe_failure(error: &wasmtime::Error) -> String {
    tracing::debug!(error = ?error, "guest failure");
    match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.to_string(),
    }
}

fn host_error(error: wasmtime::Error) -> InvokeError {
    InvokeError::Host(format!("{error:#}"))
}

fn anyhow_from(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
}

/// Rewrites the request to what the guest sees: `/{rest}?query` on the original authority,
/// with the body capped at the policy's limit.
fn guest_request(
    request: http::Request<Incoming>,
    path_and_query: &str,
    max_body: u64,
    overflowed: Arc<AtomicBool>,
) -> Result<
    http::Request<impl http_body::Body<Data = bytes::Bytes, Error = wasmtime_wasi_http::Error> + use<>>,
    InvokeError,
> {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return Err(InvokeError::BodyTooLarge { limit: max_body });
    }
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|error| InvokeError::BadRequest(error.to_string()))?;
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit).map_err(move |error| {
        if error.is::<http_body_util::LengthLimitError>() {
            overflowed.store(true, Ordering::Relaxed);
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max_body))
        } else {
            wasmtime_wasi_http::Error::InternalError(Some(error.to_string()))
        }
    });
    Ok(http::Request::from_parts(parts, body))
}

fn spawn_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("ledge-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// Per-request store data.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundHooks,
    memory: MemoryCap,
    kv: KvAccess,
}

impl GuestState {
    fn new(function: &str, policy: &Policy, memory_cap: u64, kv: KvAccess) -> Self {
        GuestState {
            wasi: WasiCtx::builder()
                .stdout(GuestLog::new(function, "stdout"))
                .stderr(GuestLog::new(function, "stderr"))
                .build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundHooks::new(policy.outbound_allow.clone()),
            memory: MemoryCap { limit: usize::try_from(memory_cap).unwrap_or(usize::MAX), hit: false },
            kv,
        }
    }

    fn kv(&mut self) -> KvCtx<'_> {
        KvCtx { table: &mut self.table, access: &mut self.kv }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// Caps linear memory per instance and remembers whether the cap was hit, so a trap caused by
/// a refused `memory.grow` is reported as what it is.
struct MemoryCap {
    limit: usize,
    hit: bool,
}

/// Table elements one instance may hold; generous for real programs, bounded for hostile ones.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
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
