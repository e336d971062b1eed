//! Simulated power failures: the engine on a simulated disk ([`disk`]), crashed at chosen
//! operation counts, recovered, and checked against a model of what was acknowledged.
//!
//! Checks after every crash and recovery: opening succeeds (the model never destroys durable
//! bytes, so any `Corrupt` is false); the recovered state equals the state after some prefix of
//! the commits in stamp order (so no transaction is partly visible and nothing is reordered),
//! and that prefix includes every acknowledged commit (in `Periodic` mode: every commit a
//! successful [`crate::Db::flush`] covered, so only a suffix of whole commits is lost).
//!
//! Two workloads: `deterministic` runs up to three interleaved transactions from one thread, so
//! a seed reproduces everything (workload, flusher batches, crash point, tears); `concurrent`
//! runs committers on several threads with automatic checkpoints racing them, where the thread
//! interleaving is not reproducible; a failure prints the seed and the recorded operation log.
//!
//! Crash points per test run: [`DEFAULT_SEEDS`] seeds × rounds; `LEDGE_KV_SIM_SEEDS=N` (and
//! `LEDGE_KV_SIM_SEED=S` for one seed) choose others (`scripts/crashsim.sh` runs 10,000+).

mod crash;
mod disk;
mod full;
mod model;

/// Seeds per workload in a plain test run.
const DEFAULT_SEEDS: u64 = 60;

/// The seeds to run: `LEDGE_KV_SIM_SEED` alone, or `0..LEDGE_KV_SIM_SEEDS` (default `default`).
fn seeds(default: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().expect("a number"));
    match var("LEDGE_KV_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..var("LEDGE_KV_SIM_SEEDS").unwrap_or(default)).collect(),
    }
}
