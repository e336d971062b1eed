//! The wasm runtime: one [`Engine`] and [`Linker`] for the process, compilation and validation
//! of deployed components ([`validate`]), per-request instantiation ([`invoke`]), and what a
//! guest gets: its view of the request ([`request`]), its per-request state and limits
//! ([`guest`]), its stdout/stderr in the log ([`guestlog`]) and in its function's live log
//! ([`logs`], also fed the request lines by the HTTP edge and the scheduler), the outbound HTTP
//! allow-list ([`outbound`]), pre-initialized snapshots ([`preinit`]). [`ValidateError`], why a
//! component cannot be deployed, is shared by validation and pre-initialization;
//! [`InvokeError`], why a run failed, by invocation and the request view.
//!
//! Layer: below the HTTP edge and the registry (which call it), above [`crate::guest_kv`] (the
//! key-value capabilities it links into every instance) and [`crate::access`] (whose policy
//! and verified caller it applies), and [`crate::record`] (the tape its WASI clocks, random
//! and outbound HTTP go through). Never imports from `http`, `cluster`, `registry` or `cli`.
//!
//! Invariants:
//! - every request gets a fresh `Store` and instance from the deployed version's `FunctionPre`
//!   (imports resolved once at deploy); nothing a guest does survives its request;
//! - a guest can only hurt itself: wall-clock time is bounded (one epoch ticker thread for the
//!   engine; guests yield at every tick so a busy loop never pins a worker), linear memory is
//!   capped by the policy, and a trap or a missing response becomes an [`InvokeError`];
//! - outbound HTTP is denied unless the function's policy lists the host.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ledge_kv::Db;
use thiserror::Error;
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::access::policy::Policy;
use crate::guest_kv::KvAccess;
use crate::metrics::Metrics;
use crate::record::Tape;
use crate::telemetry::TraceCx;
use guestlog::GuestLogs;
use logs::Logs;

pub mod concurrency;
pub mod events;
pub mod guest;
pub mod guestlog;
pub mod invoke;
pub mod logs;
pub mod outbound;
pub mod preinit;
pub mod prepared;
pub mod profile;
pub mod request;
pub mod validate;

pub use guest::{GuestConfig, GuestState};
pub use invoke::Invocation;
pub use prepared::FunctionPre;
pub use profile::{Allocator, Profile, RuntimeOptions};

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
    #[error(
        "the component exports neither `wasi:http/incoming-handler@0.2.x` nor `ledge:platform/websocket-handler@0.1.x`, so it serves nothing: {0}"
    )]
    NoHandler(String),
    #[error("pre-initialization failed: {0}")]
    BadInit(String),
    #[error("{0}")]
    Precompiled(String),
    #[error("the component exceeds a per-component limit: {0}")]
    Limits(String),
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
    #[error("the function serves WebSockets only: open one (Upgrade: websocket)")]
    NoHttpHandler,
}

impl InvokeError {
    /// The failure's kind as a trace names it.
    pub fn kind(&self) -> &'static str {
        match self {
            InvokeError::BodyTooLarge { .. } => "body-too-large",
            InvokeError::Timeout(_) => "timeout",
            InvokeError::MemoryLimit { .. } => "memory",
            InvokeError::Trap(_) => "trap",
            InvokeError::NoResponse => "no-response",
            InvokeError::NoHttpHandler => "no-handler",
            InvokeError::PoolExhausted | InvokeError::BadRequest(_) | InvokeError::Host(_) => "host",
        }
    }

    /// The HTTP status this failure answers with.
    pub fn status(&self) -> u16 {
        match self {
            InvokeError::BodyTooLarge { .. } => 413,
            InvokeError::Timeout(_) => 504,
            InvokeError::PoolExhausted => 503,
            InvokeError::BadRequest(_) => 400,
            InvokeError::NoHttpHandler => 426,
            InvokeError::MemoryLimit { .. } | InvokeError::Trap(_) | InvokeError::NoResponse | InvokeError::Host(_) => {
                500
            }
        }
    }
}

/// How often the epoch ticker advances; the granularity of request timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);

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
    /// This node's addresses, which outbound requests never reach unless a policy names them.
    own_addresses: Arc<[IpAddr]>,
    /// Where guest output goes besides the host's log (`ledge logs`).
    logs: Arc<Logs>,
    /// Cluster mode: global key-value data in etcd.
    global_kv: Option<Arc<crate::guest_kv::global::GlobalStore>>,
    /// The node's write budget, shared by the open transactions of every instance.
    kv_write_buffers: Arc<crate::guest_kv::budget::Pool>,
    /// The node's queues, which guests send to, and in cluster mode the global ones.
    queues: Option<Arc<crate::queue::Queues>>,
    global_queues: Option<Arc<crate::guest_kv::global_queues::GlobalQueues>>,
    /// The node's WebSocket connections, which guests send to.
    websockets: Option<Arc<crate::websocket::Hub>>,
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
        wasmtime_wasi_config::add_to_linker(&mut linker, GuestState::config).map_err(anyhow_from)?;
        crate::guest_kv::bindings::PlatformHost::add_to_linker::<GuestState, crate::guest_kv::KvBinding>(
            &mut linker,
            GuestState::kv,
        )
        .map_err(anyhow_from)?;
        // Clocks and randomness go through the run's tape (record and replay).
        linker.allow_shadowing(true);
        crate::record::wasi::add_to_linker(&mut linker, GuestState::taped_clocks, GuestState::taped_random)
            .map_err(anyhow_from)?;
        linker.allow_shadowing(false);
        spawn_epoch_ticker(&engine);
        Ok(Runtime {
            engine,
            linker,
            allocator,
            metrics,
            db,
            trust_precompiled: options.trust_precompiled,
            max_memory: options.max_memory,
            own_addresses: Arc::from([]),
            logs: Arc::default(),
            global_kv: None,
            kv_write_buffers: crate::guest_kv::budget::Pool::new(options.kv_write_buffers),
            queues: None,
            global_queues: None,
            websockets: None,
        })
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The functions' live logs.
    pub fn logs(&self) -> &Arc<Logs> {
        &self.logs
    }

    /// Tells the runtime which addresses are this node's own (see [`outbound`]).
    pub fn with_own_addresses(mut self, addresses: Vec<IpAddr>) -> Self {
        self.own_addresses = addresses.into();
        self
    }

    /// Gives guests the cluster's global stores (cluster mode).
    pub fn with_global_kv(mut self, store: Arc<crate::guest_kv::global::GlobalStore>) -> Self {
        self.global_kv = Some(store);
        self
    }

    /// Lets guests send to the node's queues (and in cluster mode to the global ones).
    pub fn with_queues(
        mut self,
        queues: Arc<crate::queue::Queues>,
        global: Option<Arc<crate::guest_kv::global_queues::GlobalQueues>>,
    ) -> Self {
        self.queues = Some(queues);
        self.global_queues = global;
        self
    }

    /// Lets guests reach their functions' WebSocket connections.
    pub fn with_websockets(mut self, hub: Arc<crate::websocket::Hub>) -> Self {
        self.websockets = Some(hub);
        self
    }

    fn config(options: &RuntimeOptions, allocator: Allocator) -> Config {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.memory_init_cow(true);
        if options.debug_info {
            config.debug_info(true).cranelift_opt_level(wasmtime::OptLevel::None);
        }
        if let Some(reservation) = options.memory_reservation {
            config.memory_reservation(reservation).memory_guard_size(64 << 10).memory_reservation_for_growth(0);
        }
        if allocator == Allocator::Pooling {
            let instances = options.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::default();
            // Per-component limits keep one component from taking more than its share of the
            // slots below (the store's limiter enforces the same numbers without the pool).
            pool.total_component_instances(instances)
                .max_core_instances_per_component(guest::MAX_CORE_INSTANCES as u32)
                .max_memories_per_component(guest::MAX_MEMORIES as u32)
                .max_tables_per_component(guest::MAX_TABLES as u32)
                .total_core_instances(instances.saturating_mul(16))
                .total_memories(instances.saturating_mul(guest::MAX_MEMORIES as u32))
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

    /// This runtime with `db` as its only key-value engine: no cluster, no queues, its own
    /// metrics. The same engine and linker, so code compiled for this runtime runs on it; for
    /// runs that must not touch the node's data (deploy verification).
    pub fn with_scratch_kv(&self, db: Db) -> Runtime {
        Runtime {
            engine: self.engine.clone(),
            linker: self.linker.clone(),
            allocator: self.allocator,
            metrics: Arc::default(),
            db: Some(db),
            trust_precompiled: false,
            max_memory: self.max_memory,
            own_addresses: self.own_addresses.clone(),
            logs: self.logs.clone(),
            global_kv: None,
            kv_write_buffers: self.kv_write_buffers.clone(),
            queues: None,
            global_queues: None,
            websockets: None,
        }
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
    pub fn guest_store(
        &self,
        function: &str,
        policy: &Policy,
        kv: KvAccess,
        config: Arc<GuestConfig>,
        tape: Option<Arc<Tape>>,
        trace: TraceCx,
    ) -> Store<GuestState> {
        let outbound = outbound::OutboundHooks::new(
            policy.outbound_allow.clone(),
            self.own_addresses.clone(),
            tape.clone(),
            trace.clone(),
        );
        let logs = GuestLogs { logs: self.logs.clone(), trace };
        let state = GuestState::new(function, outbound, self.memory_cap(policy), kv, config, logs, tape);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// A policy's memory limit, capped by what this engine can give (the profile's maximum).
    fn memory_cap(&self, policy: &Policy) -> u64 {
        policy.memory.min(self.max_memory)
    }

    /// The largest linear memory any guest of this engine gets.
    pub fn max_memory(&self) -> u64 {
        self.max_memory
    }

    /// Which allocator the probe settled on.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }
}

pub(crate) fn anyhow_from(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
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
