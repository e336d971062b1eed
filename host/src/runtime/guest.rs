//! Per-request store data: WASI, wasi-http with the outbound hooks, the resource table, the
//! memory cap and the key-value access of one guest run.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::guestlog::GuestLog;
use super::outbound::OutboundHooks;
use crate::access::policy::Policy;
use crate::guest_kv::{KvAccess, KvCtx};

/// Per-request store data.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundHooks,
    pub(super) memory: MemoryCap,
    kv: KvAccess,
}

impl GuestState {
    pub(super) fn new(function: &str, policy: &Policy, memory_cap: u64, kv: KvAccess) -> Self {
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

    pub(super) fn kv(&mut self) -> KvCtx<'_> {
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
pub(super) struct MemoryCap {
    limit: usize,
    pub(super) hit: bool,
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
