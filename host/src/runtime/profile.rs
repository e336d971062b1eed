//! Engine-wide settings and the sizing presets (`--profile`): how many instances, how much
//! linear memory, how much address space, and which allocator.

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
    /// Emit DWARF for guest code and register it with a native debugger (`ledge replay
    /// --debug`): breakpoints in a guest's source under gdb or lldb. Unoptimized code.
    pub debug_info: bool,
    /// Bytes the open key-value transactions of all instances may buffer for writing together
    /// (`--kv-write-buffers`); each instance's transactions share 16 MiB of it at most.
    pub kv_write_buffers: u64,
}

/// Memory and address-space sizing presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Servers: 256 pooled instances, 4 GiB reservations, 16 MiB kept resident per slot,
    /// 256 MiB of write buffers.
    Standard,
    /// ARM64 boards (39-bit address space, 1 GB RAM): 32 pooled instances, 128 MiB memories
    /// reserved exactly, 1 MiB kept resident, 64 MiB of write buffers. About 9 GiB of address
    /// space in all.
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
                debug_info: false,
                kv_write_buffers: 256 << 20,
            },
            Profile::Small => RuntimeOptions {
                pooling: true,
                max_instances: 32,
                max_memory: 128 << 20,
                keep_resident: 1 << 20,
                memory_reservation: Some(128 << 20),
                trust_precompiled: false,
                debug_info: false,
                kv_write_buffers: 64 << 20,
            },
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self::for_profile(Profile::Standard)
    }
}
