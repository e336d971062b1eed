//! A function with an expensive `init`: it builds a 2M-entry table once, at deploy. Requests
//! report how many times `init` ran in the state they started from, and a lookup into the
//! table; without pre-initialization they would see `init_runs=0` and an empty table.
use std::sync::atomic::{AtomicU32, Ordering};

use ledge_sdk::http::{Request, Response};

static INIT_RUNS: AtomicU32 = AtomicU32::new(0);
static mut TABLE: Vec<u64> = Vec::new();

fn build_table() {
    INIT_RUNS.fetch_add(1, Ordering::Relaxed);
    let table: Vec<u64> = (0..2_000_000u64).map(|n| n.wrapping_mul(n) ^ (n >> 3)).collect();
    // SAFETY: components are single-threaded; `init` runs before any request.
    unsafe { TABLE = table };
}

fn handle(req: Request) -> Response {
    let index: usize = req.path().trim_start_matches('/').parse().unwrap_or(0);
    // SAFETY: single-threaded; the table is only written by `init`.
    let (len, value) = unsafe {
        let table = &*std::ptr::addr_of!(TABLE);
        (table.len(), table.get(index).copied())
    };
    let runs = INIT_RUNS.fetch_add(0, Ordering::Relaxed);
    Response::text(format!("init_runs={runs} table_len={len} value={value:?}\n"))
}

ledge_sdk::init!(build_table);
ledge_sdk::http_handler!(handle);
