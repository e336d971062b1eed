#!/usr/bin/env python3
"""Groups a flat `perf report` of a server into the parts a request's CPU goes to (kernel
networking, scheduling, memory; wasmtime's instantiation, host calls and slot reset; the
allocator; hyper; tokio; guest code; the rest), by symbol name. Used by scripts/profile.sh.

    perf_groups.py PERF_DATA [TOP]    (TOP: also list the TOP largest ungrouped symbols)
"""
import collections
import re
import subprocess
import sys

# First match wins; kernel groups apply to kernel symbols only, the others to user symbols.
GROUPS = [
    ("kernel: TCP/IP and sockets", True,
     r"tcp|inet|skb|sock|ip_|__dev|net_|napi|loopback|sk_|sendto|recvfrom|writev|copy_user|_copy_to|"
     r"_copy_from|csum|nf_|neigh|dst_|__netif|process_backlog|fib_|__check_object|__virt_addr|"
     r"check_heap|kmem_cache|kmalloc|kfree|alloc_pages|__slab|rmqueue|free_unref|page_frag"),
    ("kernel: scheduling, wakeups, futex, epoll, syscalls", True,
     r"sched|task_switch|schedule|futex|wake|ep_|epoll|enqueue|dequeue|update_curr|select_task|"
     r"pick_next|__switch_to|hrtimer|tick|idle|ttwu|raw_spin|irq|do_syscall|entry_SYSCALL|"
     r"syscall_exit|syscall_return|rcu|ktime|clock|fget|fdget|fput|apic|native_|smp_call|"
     r"x86_indirect|fpu|fpregs"),
    ("kernel: memory (PAGEMAP_SCAN reset, faults, mappings)", True,
     r"pagemap|walk_|page_|pte|pmd|pgd|pud|mm_|vma|mmap|madvise|fault|mt_find|mas_|zap|tlb|lru|"
     r"folio|memcg"),
    ("wasmtime: instantiation", False,
     r"Instantiator|instantiate|OwnedImports|store_invariant|func_loc|lookup_vmdef|allocate_instance|"
     r"Instance::new|InstancePre|get_func_ref|ModuleRegistry|push_export|resource_type|InstanceType|"
     r"allocate_module|index_allocator|TryVec|MemoryImage|ComponentInstance|VMFunc|Imports|"
     r"MemoryPool::allocate|TablePool::allocate|StoreData::new"),
    ("wasmtime: store drop and slot reset", False,
     r"deallocate|OwnedInstance.*Drop|StoreInner.*Drop|StoreOpaque.*Drop|reset|decommit"),
    ("wasmtime and WASI: host calls, fibers, lifting and lowering", False,
     r"fiber|AsyncWasmCallState|LowerContext|LiftContext|options_memory|ResourceTable|resource_table|"
     r"HostResource|HandleTable|component_resource|on_fiber|block_on|HostFunc|trampoline|array_call|"
     r"catch_unwind|wasmtime_wasi|store_opaque|bforest|HostFn|typed::L|linear_lower|linear_lift|Func::call"),
    ("malloc/free, memcpy, memset", False, r"mi_|malloc|free|memmove|memcpy|memset|memcmp|realloc|finish_grow"),
    ("hyper, http", False, r"hyper|http::|httparse|HeaderMap|header|bytes::"),
    ("tokio", False, r"tokio|mio"),
]


def main():
    data = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    report = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "-F", "overhead,dso,sym", "--stdio",
         "-g", "none"],
        capture_output=True, text=True, check=True).stdout
    groups = collections.Counter()
    ungrouped = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
        if not m:
            continue
        share, dso, kind, symbol = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        kernel = kind == "k"
        if not kernel and (dso.endswith(".cwasm") or "wasm[" in symbol):
            groups["guest code"] += share
            continue
        for name, for_kernel, pattern in GROUPS:
            if for_kernel == kernel and re.search(pattern, symbol):
                groups[name] += share
                break
        else:
            groups["other kernel" if kernel else "other user code (the embedder's own, and the rest)"] += share
            ungrouped[symbol] += share
    for name, share in groups.most_common():
        print(f"  {share:5.1f}%  {name}")
    for symbol, share in ungrouped.most_common(top):
        print(f"           {share:5.2f}%  {symbol[:100]}")


if __name__ == "__main__":
    main()
