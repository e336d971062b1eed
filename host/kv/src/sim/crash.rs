//! The crash tests: random workloads on the simulated disk, crashed at random operations.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::disk::{Image, SimDisk};
use super::model::{Model, Writes, read_all};
use crate::{Db, Durability, Isolation, Options, Tx};

/// Crash points per seed: each round recovers from the last crash, checks, works, and crashes.
const ROUNDS: u64 = 3;
/// Keys the workloads touch: few, so transactions conflict and overwrite each other.
const KEYS: u32 = 16;

fn dir() -> &'static Path {
    Path::new("/sim/db")
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    format!("k{:02}", rng.random_range(0..KEYS)).into_bytes()
}

/// Mostly small values; some span several sectors, so tears land inside them.
fn value(rng: &mut StdRng) -> Vec<u8> {
    let len = if rng.random_bool(0.1) { rng.random_range(600..3000) } else { rng.random_range(0..40) };
    (0..len).map(|_| rng.random()).collect()
}

fn options(disk: &SimDisk, durability: Durability, checkpoint_wal_bytes: u64) -> Options {
    let mut opts = Options::default()
        .durability(durability)
        .checkpoint_wal_bytes(checkpoint_wal_bytes)
        .maintenance_interval(Duration::from_millis(1));
    opts.fs = Arc::new(disk.clone());
    opts
}

/// One workload run on an open database until the disk crashes (or it is done).
type Workload = fn(&Db, &mut StdRng, &Mutex<Model>, bool);

/// Runs `ROUNDS` crash points from `seed`: each opens what the last crash left, checks it against
/// the model, runs the workload with a crash scheduled at a random operation, and keeps the image.
fn run_seed(seed: u64, periodic: bool, concurrent: bool, tally: &mut Tally) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let model = Mutex::new(Model::default());
    let mut image = Image::new();
    let workload: Workload = if concurrent { concurrent_workload } else { one_thread_workload };
    let durability = match (periodic, concurrent) {
        (false, _) => Durability::Fsync,
        // One thread: only explicit flushes write, so the run is reproducible.
        (true, false) => Durability::Periodic(Duration::from_secs(3600)),
        (true, true) => Durability::Periodic(Duration::from_millis(2)),
    };
    // Automatic checkpoints race the committers only in the concurrent workload.
    let checkpoint_wal_bytes = if concurrent { 4096 } else { 0 };
    for round in 0..=ROUNDS {
        let disk = SimDisk::new(rng.random(), &image);
        let last = round == ROUNDS;
        if !last {
            // Now and then during recovery itself; mostly somewhere in the workload.
            let at = if rng.random_bool(0.15) { rng.random_range(1..6) } else { rng.random_range(1..260) };
            disk.crash_at(at);
        }
        let fail = |what: String| {
            format!(
                "seed {seed} (periodic {periodic}, concurrent {concurrent}) round {round}: {what}\nlast operations:\n  {}",
                disk.log().join("\n  ")
            )
        };
        let db = match Db::open_with(dir(), options(&disk, durability, checkpoint_wal_bytes)) {
            Ok(db) => db,
            Err(_) if disk.crash_image().is_some() => {
                // Crashed while recovering: the next round recovers again from what is left.
                image = disk.crash_image().expect("checked");
                tally.in_recovery += 1;
                continue;
            }
            Err(e) => return Err(fail(format!("recovery failed: {e}"))),
        };
        let recovered = read_all(&db);
        model.lock().check_and_rebase(recovered).map_err(fail)?;
        if last {
            return db.close().map_err(|e| fail(format!("close failed: {e}")));
        }
        workload(&db, &mut rng, &model, periodic);
        match disk.crash_image() {
            Some(_) => tally.in_workload += 1,
            None => tally.after_workload += 1,
        }
        disk.crash_now();
        drop(db);
        image = disk.crash_image().expect("crashed");
    }
    Ok(())
}

/// Where the crashes of a run happened.
#[derive(Debug, Default)]
struct Tally {
    in_recovery: u64,
    in_workload: u64,
    /// The workload finished first: the crash hit whatever it left unsynced.
    after_workload: u64,
}

/// An open transaction and what it wrote.
struct Open {
    tx: Tx,
    writes: Writes,
}

/// Up to three transactions open at once, interleaved by one thread, at both isolation levels,
/// with scans, deletes, checkpoints, GC and (periodic mode) flushes between them.
fn one_thread_workload(db: &Db, rng: &mut StdRng, model: &Mutex<Model>, periodic: bool) {
    let mut open: Vec<Open> = Vec::new();
    for _ in 0..300 {
        let pick = rng.random_range(0..100);
        if open.is_empty() || (pick < 15 && open.len() < 3) {
            let iso = if rng.random_bool(0.5) { Isolation::Serializable } else { Isolation::Snapshot };
            open.push(Open { tx: db.begin(iso), writes: Writes::new() });
            continue;
        }
        let i = rng.random_range(0..open.len());
        match pick {
            0..=59 => operate(&mut open[i], rng),
            60..=84 => {
                let Open { tx, writes } = open.swap_remove(i);
                if !commit(tx, writes, model, periodic) {
                    return;
                }
            }
            85..=88 => drop(open.swap_remove(i)),
            89..=92 => {
                let Ok(_) = db.checkpoint() else { return };
            }
            93..=95 => {
                db.gc();
            }
            _ if periodic => {
                let covered = model.lock().newest();
                if db.flush().is_err() {
                    return;
                }
                model.lock().ack(covered);
            }
            _ => {}
        }
    }
}

/// One read, write, delete or scan; refusals (limits) are left to the commit.
fn operate(open: &mut Open, rng: &mut StdRng) {
    let k = key(rng);
    match rng.random_range(0..10) {
        0..=2 => drop(open.tx.get(&k)),
        3..=6 => {
            let v = value(rng);
            if open.tx.put(&k, &v).is_ok() {
                open.writes.insert(k, Some(v));
            }
        }
        7 => {
            if open.tx.delete(&k).is_ok() {
                open.writes.insert(k, None);
            }
        }
        _ => {
            let end = key(rng);
            let (start, end) = if k <= end { (k, end) } else { (end, k) };
            drop(open.tx.scan(&start, &end, 8));
        }
    }
}

/// Commits; records the commit in the model and, once durable, its acknowledgement. False once
/// the disk is gone.
fn commit(tx: Tx, writes: Writes, model: &Mutex<Model>, periodic: bool) -> bool {
    match tx.commit_async() {
        Ok(ticket) => {
            let stamp = ticket.stamp();
            let wrote = !writes.is_empty();
            model.lock().committed(stamp, writes);
            match ticket.wait() {
                Ok(_) if wrote && !periodic => {
                    model.lock().ack(stamp);
                    true
                }
                Ok(_) => true,
                Err(_) => false,
            }
        }
        Err(e) => e.is_retryable(),
    }
}

/// Three committer threads on the same keys, automatic checkpoints racing them.
fn concurrent_workload(db: &Db, rng: &mut StdRng, model: &Mutex<Model>, periodic: bool) {
    std::thread::scope(|s| {
        for _ in 0..3 {
            let mut rng = StdRng::seed_from_u64(rng.random());
            s.spawn(move || {
                for _ in 0..80 {
                    let iso = if rng.random_bool(0.5) { Isolation::Serializable } else { Isolation::Snapshot };
                    let mut open = Open { tx: db.begin(iso), writes: Writes::new() };
                    for _ in 0..rng.random_range(1..4) {
                        operate(&mut open, &mut rng);
                    }
                    if !commit(open.tx, open.writes, model, periodic) {
                        return;
                    }
                    if periodic && rng.random_bool(0.2) {
                        let covered = model.lock().newest();
                        if db.flush().is_err() {
                            return;
                        }
                        model.lock().ack(covered);
                    }
                }
            });
        }
    });
}

fn run_all(periodic: bool, concurrent: bool) {
    let seeds = super::seeds(super::DEFAULT_SEEDS);
    let mut tally = Tally::default();
    let failures: Vec<String> =
        seeds.iter().filter_map(|&seed| run_seed(seed, periodic, concurrent, &mut tally).err()).collect();
    println!(
        "crash simulation (periodic {periodic}, concurrent {concurrent}): {} seeds, {} crash points \
         ({} in recovery, {} in the workload, {} after it), {} failures",
        seeds.len(),
        tally.in_recovery + tally.in_workload + tally.after_workload,
        tally.in_recovery,
        tally.in_workload,
        tally.after_workload,
        failures.len()
    );
    assert!(failures.is_empty(), "{} of {} seeds failed; first:\n{}", failures.len(), seeds.len(), failures[0]);
}

#[test]
fn fsync_commits_survive_power_failures_one_thread() {
    run_all(false, false);
}

#[test]
fn periodic_commits_lose_only_a_suffix_one_thread() {
    run_all(true, false);
}

#[test]
fn fsync_commits_survive_power_failures_concurrent() {
    run_all(false, true);
}

#[test]
fn periodic_commits_lose_only_a_suffix_concurrent() {
    run_all(true, true);
}
