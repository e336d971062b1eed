//! A function with an expensive `init`: it builds a 2M-entry table once, at deploy. Requests
//! report how many times `init` ran in the state they started from, and a lookup into the
//! table; without pre-initialization they would see `init_runs=0` and an empty table.
//! `/scribble` overwrites one entry in each of 1,000 separate pages of the table and
//! `/check` counts the entries that differ from what `init` built: every request starts from
//! the snapshot, so a check never sees a scribble.
use std::sync::atomic::{AtomicU32, Ordering};

use ledge_sdk::http::{Request, Response};

static INIT_RUNS: AtomicU32 = AtomicU32::new(0);
static mut TABLE: Vec<u64> = Vec::new();

fn build_table() {
    INIT_RUNS.fetch_add(1, Ordering::Relaxed);
    let table: Vec<u64> = (0..2_000_000u64).map(entry).collect();
    // SAFETY: components are single-threaded; `init` runs before any request.
    unsafe { TABLE = table };
}

fn entry(n: u64) -> u64 {
    n.wrapping_mul(n) ^ (n >> 3)
}

/// Entries apart of two scribbled ones: 8 KiB, so no two scribbles share or touch a page.
const SCRIBBLE_STRIDE: usize = 1024;

/// Entries of the table that differ from what `init` built.
fn wrong_entries() -> usize {
    // SAFETY: single-threaded; the table is only written by `init` and `/scribble`.
    let table = unsafe { &*std::ptr::addr_of!(TABLE) };
    table.iter().enumerate().filter(|(n, e)| **e != entry(*n as u64)).count()
}

fn handle(req: Request) -> Response {
    match req.path() {
        "/scribble" => {
            // SAFETY: single-threaded; this instance's own copy of the table.
            let table = unsafe { &mut *std::ptr::addr_of_mut!(TABLE) };
            let scribbled = table.iter_mut().step_by(SCRIBBLE_STRIDE).take(1000).map(|e| *e = !*e).count();
            return Response::text(format!("scribbled={scribbled} wrong={}\n", wrong_entries()));
        }
        "/check" => return Response::text(format!("wrong={}\n", wrong_entries())),
        _ => {}
    }
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
