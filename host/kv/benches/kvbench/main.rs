//! `cargo bench -p ledge-kv --bench kvbench`: SmallBank and YCSB-A on ledge-kv (Snapshot and
//! Serializable) next to redb and fjall (its optimistic serializable transactions), plus
//! group-commit throughput against the raw fsync latency.
//!
//! Environment: `KVBENCH_SECS` (seconds per cell, default 2), `KVBENCH_ACCOUNTS` (SmallBank
//! accounts, default 10000), `KVBENCH_KEYS` (YCSB keys, default 100000), `KVBENCH_DIR` (where the
//! databases go; default the target tmp dir, which is on the same disk as the build),
//! `KVBENCH_ONLY` (comma list of `sb`, `sbfsync`, `sbhot`, `ycsb`, `group`; default all),
//! `KVBENCH_ENGINES` (comma list of `si`, `ssn`, `redb`, `fjall`; default all), `KVBENCH_ROUNDS`
//! (each cell's time is split into this many slices alternating between engines; default 5),
//! `KVBENCH_WAL_PREALLOCATE` (ledge-kv's `Options::wal_preallocate` in the tables, in bytes;
//! `0` grows the WAL with every write).
//!
//! Durability in the comparison tables: "relaxed" = ledge-kv `Periodic(10ms)` vs redb
//! `Durability::None` vs fjall `PersistMode::Buffer` (none fsyncs per commit); "fsync" =
//! ledge-kv `Fsync` (group commit) vs redb `Durability::Immediate` vs fjall
//! `PersistMode::SyncData` (every commit durable before it returns).

mod engines;
mod workloads;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ledge_kv::{Db, Isolation};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use engines::{Dur, Engine, engine_wanted, open_engine};
use workloads::{HOT_ACCOUNTS, Zipf, ck, sk, smallbank_tx, yk};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Cell {
    txs: u64,
    aborts: u64,
    /// Of the aborts, those by the SSN exclusion test (ledge-kv only).
    ssn_aborts: u64,
    secs: f64,
}

/// Runs every engine for `secs` in total, in `rounds` alternating slices, so that load from
/// elsewhere on a shared machine hits all engines alike.
fn interleaved(
    engines: &[Engine],
    threads: usize,
    secs: f64,
    rounds: u64,
    tx: impl Fn(&Engine, &mut SmallRng) -> u64 + Sync,
) -> Vec<Cell> {
    let mut cells: Vec<Cell> = engines.iter().map(|_| Cell { txs: 0, aborts: 0, ssn_aborts: 0, secs: 0.0 }).collect();
    for round in 0..rounds {
        for (e, cell) in engines.iter().zip(cells.iter_mut()) {
            let ssn_before = e.ssn_aborts();
            let c = run_threads(threads, secs / rounds as f64, |t, stop| {
                let mut rng = SmallRng::seed_from_u64(round * 1000 + t as u64 + 1);
                let (mut n, mut ab) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    ab += tx(e, &mut rng);
                    n += 1;
                }
                (n, ab)
            });
            cell.txs += c.txs;
            cell.aborts += c.aborts;
            cell.ssn_aborts += e.ssn_aborts() - ssn_before;
            cell.secs += c.secs;
        }
    }
    cells
}

fn run_threads(threads: usize, secs: f64, f: impl Fn(usize, &AtomicBool) -> (u64, u64) + Sync) -> Cell {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (txs, aborts) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                let stop = &stop;
                s.spawn(move || f(t, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().expect("bench thread")).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    Cell { txs, aborts, ssn_aborts: 0, secs: start.elapsed().as_secs_f64() }
}
fn row(workload: &str, dur: &str, e: &Engine, threads: usize, c: &Cell) {
    let tps = c.txs as f64 / c.secs;
    let attempts = (c.txs + c.aborts).max(1) as f64;
    let rate = 100.0 * c.aborts as f64 / attempts;
    let ssn = 100.0 * c.ssn_aborts as f64 / attempts;
    println!(
        "| {workload:<9} | {dur:<7} | {:<12} | {threads:>7} | {tps:>12.0} | {rate:>5.2}% | {ssn:>9.3}% |",
        e.name()
    );
}

/// Writes 64 bytes and fdatasyncs, `n` times, each write after the last: at the end of a growing
/// file, or (as the WAL writes) into space allocated ahead; returns (mean, median) latency.
fn measure_fsync(dir: &Path, n: usize, preallocated: bool) -> (Duration, Duration) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let p = dir.join("fsync-probe");
    let f = OpenOptions::new().create(true).truncate(true).write(true).open(&p).expect("probe");
    if preallocated {
        // SAFETY: posix_fallocate on the open descriptor of `f`; no memory is involved.
        let allocated = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, ((n + 20) * 64) as libc::off_t) };
        assert_eq!(allocated, 0, "posix_fallocate");
    }
    let write = |i: usize| {
        f.write_all_at(&[7u8; 64], (i * 64) as u64).expect("write");
        f.sync_data().expect("fsync");
    };
    // Warm up: the first fsyncs of a new file also commit its creation (and its allocation).
    (0..20).for_each(write);
    let mut samples = Vec::with_capacity(n);
    for i in 20..20 + n {
        let t = Instant::now();
        write(i);
        samples.push(t.elapsed());
    }
    let _ = std::fs::remove_file(p);
    let mean = samples.iter().sum::<Duration>() / n as u32;
    samples.sort_unstable();
    (mean, samples[n / 2])
}

fn main() {
    let secs = env_u64("KVBENCH_SECS", 2) as f64;
    let accounts = env_u64("KVBENCH_ACCOUNTS", 10_000);
    let keys = env_u64("KVBENCH_KEYS", 100_000);
    let base: PathBuf = std::env::var("KVBENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvbench"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("kvbench: {secs}s per cell, {cpus} CPUs, dir {}", base.display());
    println!(
        "SmallBank: {accounts} accounts, 25% of account picks from {HOT_ACCOUNTS} hot accounts (SB-hot: 90%); YCSB-A: {keys} keys, 100-byte values, 50/50 read/update, zipfian 0.99"
    );
    println!();
    println!("| workload  | durable | engine       | threads |       txns/s | aborts | SSN aborts |");
    println!("|-----------|---------|--------------|---------|--------------|--------|------------|");
    let only = std::env::var("KVBENCH_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let rounds = env_u64("KVBENCH_ROUNDS", 5).max(1);
    // (workload label, durability, probability that an account pick is one of the hot accounts)
    let smallbanks = [
        ("SmallBank", Dur::Relaxed, "relaxed", "sb", 0.25),
        ("SmallBank", Dur::Fsync, "fsync", "sbfsync", 0.25),
        ("SB-hot", Dur::Relaxed, "relaxed", "sbhot", 0.9),
    ];
    for (label, dur, dname, part, hot) in smallbanks {
        if !want(part) {
            continue;
        }
        let engines: Vec<Engine> = (0..4)
            .filter(|&k| engine_wanted(k))
            .map(|kind| {
                let e = open_engine(kind, &base.join(format!("sb{kind}")), dur);
                e.load((0..accounts).flat_map(|a| {
                    [(ck(a), 10_000i64.to_le_bytes().to_vec()), (sk(a), 10_000i64.to_le_bytes().to_vec())]
                }));
                e
            })
            .collect();
        for threads in [1, 2] {
            let cells = interleaved(&engines, threads, secs, rounds, |e, rng| smallbank_tx(e, rng, accounts, hot));
            for (e, c) in engines.iter().zip(&cells) {
                row(label, dname, e, threads, c);
            }
        }
    }
    if want("ycsb") {
        let zipf = Zipf::new(keys);
        let engines: Vec<Engine> = (0..4)
            .filter(|&k| engine_wanted(k))
            .map(|kind| {
                let e = open_engine(kind, &base.join(format!("y{kind}")), Dur::Relaxed);
                e.load((0..keys).map(|i| (yk(i), vec![b'v'; 100])));
                e
            })
            .collect();
        for threads in [1, 2] {
            let cells = interleaved(&engines, threads, secs, rounds, |e, rng| {
                let k = yk(zipf.next(rng).min(keys - 1));
                if rng.random_bool(0.5) {
                    e.exec(true, &mut |o| o.get(&k).map(|_| ()))
                } else {
                    let v = [rng.random::<u8>(); 100];
                    e.exec(false, &mut |o| o.put(&k, &v))
                }
            });
            for (e, c) in engines.iter().zip(&cells) {
                row("YCSB-A", "relaxed", e, threads, c);
            }
        }
    }

    println!();
    let dir = base.join("gc");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    if want("group") {
        group_commit(&dir, secs);
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Durable commits/s at 1, 8 and 64 committers, against raw fsync latency measured before and
/// after (the disk is shared, so its latency drifts; the faster probe sets the ceiling, which is
/// the conservative choice for the ratio).
fn group_commit(dir: &Path, secs: f64) {
    let growing = measure_fsync(dir, 300, false);
    let before = measure_fsync(dir, 300, true);
    let mut rows = Vec::new();
    for committers in [1usize, 8, 64] {
        // Blocking API: one OS thread per committer, each parked for its fsync.
        let db = Db::open(&dir.join(format!("c{committers}"))).expect("open");
        let c = run_threads(committers, secs, |t, stop| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut tx = db.begin(Isolation::Snapshot);
                tx.put(format!("w{t}/{}", n % 16).as_bytes(), &[1u8; 32]).expect("put");
                tx.commit().expect("commit");
                n += 1;
            }
            (n, 0)
        });
        rows.push(group_row("threads", committers, &c, &db));
    }
    for committers in [1usize, 8, 64] {
        // Async API (how the host's tokio tasks commit): committers are tasks spread over
        // at most 2 OS threads, each awaiting its CommitTicket.
        let db = Db::open(&dir.join(format!("a{committers}"))).expect("open");
        let threads = committers.min(2);
        let per_thread = committers / threads;
        let c = run_threads(threads, secs, |t, stop| {
            let tasks = (0..per_thread).map(|i| {
                let db = &db;
                async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut tx = db.begin(Isolation::Snapshot);
                        tx.put(format!("w{t}.{i}/{}", n % 16).as_bytes(), &[1u8; 32]).expect("put");
                        tx.commit_async().expect("commit").await.expect("durable");
                        n += 1;
                    }
                    n
                }
            });
            let n: u64 = futures::executor::block_on(futures::future::join_all(tasks)).into_iter().sum();
            (n, 0)
        });
        rows.push(group_row("tasks", committers, &c, &db));
    }
    let after = measure_fsync(dir, 300, true);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "raw fsync (64-byte write into preallocated space + fdatasync, as the WAL writes; 300 runs each): before mean {:.1} us / median {:.1} us, after mean {:.1} us / median {:.1} us; at the end of a growing file mean {:.1} us / median {:.1} us",
        us(before.0),
        us(before.1),
        us(after.0),
        us(after.1),
        us(growing.0),
        us(growing.1)
    );
    let ceiling = 1.0 / before.0.min(after.0).as_secs_f64();
    println!("one fsync per commit allows {ceiling:.0} commits/s (from the faster mean)");
    println!();
    println!(
        "| committers | as      | durable commits/s | commits per fsync | WAL fsync avg | vs raw-fsync ceiling | vs 1 committer |"
    );
    println!(
        "|------------|---------|-------------------|-------------------|---------------|----------------------|----------------|"
    );
    let single = rows.first().map_or(1.0, |r| r.2);
    for (kind, committers, cps, per_fsync, fsync_us) in rows {
        println!(
            "| {committers:>10} | {kind:<7} | {cps:>17.0} | {per_fsync:>17.1} | {fsync_us:>10.1} us | {:>19.1}x | {:>13.1}x |",
            cps / ceiling,
            cps / single
        );
    }
}

/// One row of the group-commit table: commits/s, commits per fsync and the mean fsync (µs);
/// closes `db`.
fn group_row(kind: &'static str, committers: usize, c: &Cell, db: &Db) -> (&'static str, usize, f64, f64, f64) {
    let st = db.stats();
    db.close().expect("close");
    let fsyncs = st.wal_fsyncs.max(1) as f64;
    (kind, committers, c.txs as f64 / c.secs, c.txs as f64 / fsyncs, st.wal_fsync_nanos as f64 / fsyncs / 1e3)
}
