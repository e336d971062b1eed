//! Per-request store data: WASI, wasi-http with the outbound hooks, the resource table, the
//! memory cap and the key-value access of one guest run.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::guestlog::{GuestLog, GuestLogs};
use super::outbound::OutboundHooks;
use crate::guest_kv::{KvAccess, KvCtx};
use crate::record::Tape;
use crate::record::wasi::Taped;

/// A function's configuration as its guests see it: `wasi:config/store` and the environment.
#[derive(Default)]
pub struct GuestConfig {
    vars: WasiConfigVariables,
    env: Vec<(String, String)>,
    /// Keys whose values are secrets: a trace records their names, never their values.
    secrets: Vec<String>,
}

impl GuestConfig {
    pub fn new(pairs: Vec<(String, String)>, secrets: Vec<String>) -> Self {
        let vars = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        GuestConfig { vars, env: pairs, secrets }
    }

    /// The secrets' names and values (a kept trace must hold none of the values).
    pub fn secrets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env
            .iter()
            .filter(|(key, value)| !value.is_empty() && self.secrets.contains(key))
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// The entries as a trace keeps them: secrets by name only (`None`).
    pub fn recorded(&self) -> Vec<(String, Option<String>)> {
        self.env
            .iter()
            .map(|(key, value)| (key.clone(), (!self.secrets.contains(key)).then(|| value.clone())))
            .collect()
    }
}

/// Per-request store data.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundHooks,
    pub(super) memory: MemoryCap,
    config: Arc<GuestConfig>,
    kv: KvAccess,
    /// The run's recording or replay, if it has one.
    tape: Option<Arc<Tape>>,
}

impl GuestState {
    pub(super) fn new(
        function: &str,
        outbound: OutboundHooks,
        memory_cap: u64,
        kv: KvAccess,
        config: Arc<GuestConfig>,
        logs: GuestLogs,
        tape: Option<Arc<Tape>>,
    ) -> Self {
        GuestState {
            wasi: WasiCtx::builder()
                .stdout(GuestLog::new(function, "stdout", logs.clone(), tape.clone()))
                .stderr(GuestLog::new(function, "stderr", logs, tape.clone()))
                .envs(&config.env)
                .build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound,
            memory: MemoryCap::new(usize::try_from(memory_cap).unwrap_or(usize::MAX), tape.clone()),
            config,
            kv,
            tape,
        }
    }

    pub(super) fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::from(&self.config.vars)
    }

    pub(super) fn kv(&mut self) -> KvCtx<'_> {
        KvCtx { table: &mut self.table, access: &mut self.kv, tape: self.tape.as_deref() }
    }

    pub(super) fn taped_clocks(&mut self) -> Taped<'_, wasmtime_wasi::clocks::WasiClocksCtxView<'_>> {
        let live = wasmtime_wasi::clocks::WasiClocksCtxView { ctx: self.wasi.clocks(), table: &mut self.table };
        Taped { live, tape: self.tape.as_deref() }
    }

    pub(super) fn taped_random(&mut self) -> Taped<'_, &mut wasmtime_wasi::random::WasiRandomCtx> {
        Taped { live: self.wasi.random(), tape: self.tape.as_deref() }
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

/// Caps what one instance may hold: linear memory in all its memories together (the policy's
/// `memory`), table elements in all its tables together, and how many core instances, memories
/// and tables it may create. Remembers whether the memory cap was hit, so a trap caused by a
/// refused `memory.grow` is reported as what it is.
pub(super) struct MemoryCap {
    limit: usize,
    /// Bytes of linear memory the instance holds, over all its memories.
    used: usize,
    /// Table elements the instance holds, over all its tables.
    table_elements: usize,
    pub(super) hit: bool,
    /// A replay reports the memory size where it stops.
    tape: Option<Arc<Tape>>,
}

impl MemoryCap {
    pub(super) fn new(limit: usize, tape: Option<Arc<Tape>>) -> Self {
        MemoryCap { limit, used: 0, table_elements: 0, hit: false, tape: tape.filter(|tape| tape.is_replay()) }
    }
}

/// Table elements one instance may hold; generous for real programs, bounded for hostile ones.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Core instances, memories and tables one component instance may create. Real components
/// stay far below (a Rust component: 1 memory, a few tables; componentize-py: see the deploy
/// test); a crafted one would otherwise take many pool slots and many times the memory cap.
pub const MAX_CORE_INSTANCES: usize = 32;
pub const MAX_MEMORIES: usize = 2;
pub const MAX_TABLES: usize = 16;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used = total;
        if let Some(tape) = &self.tape {
            tape.memory(total as u64);
        }
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_sub(current).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}
