//! Randomized concurrent histories checked for serializability.
//!
//! Each committed transaction records its snapshot, what it read (key → the id of the
//! transaction whose write it saw, or absent) and what it wrote (put or delete). Every value
//! written is the writer's unique id, so a read that found a value identifies its version
//! exactly; a read that found the key absent saw the latest delete at or below its snapshot (or
//! no write yet), which the checker works out from the commit stamps: every commit at or below
//! a snapshot is installed when the snapshot is taken. From that, the checker builds the
//! dependency graph (w:w in commit-stamp order, w:r, r:w to the next writer) and looks for a
//! cycle; it also replays the writes in commit-stamp order on a `BTreeMap` and compares with the
//! database.
//!
//! Keys are deleted too, while GC unlinks tombstones all along: a reader or writer of a key
//! whose tombstone was unlinked finds no version at all, which is where lost edges have hidden.
//! A delete of a key already absent changes nothing a reader of the absence saw, and the engine
//! need not order the two (it does only while the tombstone is linked), so the checker counts a
//! run of deletes as one version (the first delete after a put, or none). A scan reads every key
//! of the key universe in its range, up to the last key it returned when its limit cut it, so
//! predicate dependencies become item dependencies. Some transactions write two keys, so a
//! deleter can also be another transaction's reader's writer (the shapes of the anomaly tests).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledge_kv::{Db, Durability, Isolation, Options};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// (key, id of the writer of the value read, or `None` when the key was absent).
type Reads = Vec<(Vec<u8>, Option<u64>)>;
/// (key, this transaction's id, whether it deleted the key).
type Writes = Vec<(Vec<u8>, u64, bool)>;

#[derive(Debug, Clone)]
struct Committed {
    id: u64,
    snapshot: u64,
    cstamp: u64,
    reads: Reads,
    writes: Writes,
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

fn writer_of(v: Option<Vec<u8>>) -> Option<u64> {
    v.map(|b| u64::from_le_bytes(b.try_into().expect("8-byte id")))
}

/// Runs one transaction's body; returns its reads and writes.
fn body(
    tx: &mut ledge_kv::Tx,
    rng: &mut StdRng,
    id: u64,
    nkeys: usize,
    scans: bool,
) -> Result<(Reads, Writes), ledge_kv::TxError> {
    // Some are one read and nothing else: read-only with one point read (of a version, or of
    // a key absent), which commits without certification.
    if rng.random_bool(0.15) {
        let k = rng.random_range(0..nkeys);
        let v = tx.get(&key(k))?;
        return Ok((vec![(key(k), writer_of(v))], Vec::new()));
    }
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    // Read two keys, write (or delete) one of them or a third: the write-skew shape.
    let a = rng.random_range(0..nkeys);
    let b = rng.random_range(0..nkeys);
    for k in [a, b] {
        let v = tx.get(&key(k))?;
        reads.push((key(k), writer_of(v)));
    }
    if scans && rng.random_bool(0.3) {
        let lo = rng.random_range(0..nkeys);
        let hi = (lo + 3).min(nkeys);
        let limit = if rng.random_bool(0.5) { usize::MAX } else { rng.random_range(1..=2) };
        let found = tx.scan(&key(lo), &key(hi), limit)?;
        // Cut by its limit, the scan observed the keys up to the last it returned.
        let observed_to = match found.last() {
            Some((last, _)) if found.len() == limit => last.clone(),
            _ => key(hi - 1),
        };
        let mut got: BTreeMap<Vec<u8>, Vec<u8>> = found.into_iter().collect();
        for i in (lo..hi).take_while(|&i| key(i) <= observed_to) {
            reads.push((key(i), writer_of(got.remove(&key(i)))));
        }
    }
    std::thread::yield_now();
    if rng.random_bool(0.85) {
        let w = if rng.random_bool(0.5) { a } else { rng.random_range(0..nkeys) };
        // Sometimes a second key too: a deleter that also writes what another transaction read.
        let second = rng.random_bool(0.25).then(|| rng.random_range(0..nkeys)).filter(|&c| c != w);
        for k in std::iter::once(w).chain(second) {
            let delete = rng.random_bool(0.3);
            if delete {
                tx.delete(&key(k))?;
            } else {
                tx.put(&key(k), &id.to_le_bytes())?;
            }
            writes.push((key(k), id, delete));
        }
    }
    Ok((reads, writes))
}

fn run_history(
    iso: Isolation,
    seed: u64,
    threads: usize,
    per_thread: usize,
    nkeys: usize,
) -> (Db, Vec<Committed>, u64, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options::default().durability(Durability::Periodic(Duration::from_millis(2)));
    let db = Db::open_with(dir.path(), opts).expect("open");
    let log = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    // Collect all along: tombstones every snapshot sees are unlinked mid-history.
    let collector = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut unlinked = 0;
            while !done.load(Ordering::Acquire) {
                let keys = db.stats().keys;
                db.gc();
                unlinked += keys.saturating_sub(db.stats().keys);
                std::thread::yield_now();
            }
            unlinked
        })
    };
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let db = db.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed * 1000 + t as u64);
                for n in 0..per_thread {
                    let id = ((t as u64 + 1) << 32) | (n as u64 + 1);
                    let mut tx = db.begin(iso);
                    let snapshot = tx.snapshot();
                    let Ok((reads, writes)) = body(&mut tx, &mut rng, id, nkeys, true) else {
                        continue;
                    };
                    if let Ok(cstamp) = tx.commit() {
                        log.lock().expect("log").push(Committed { id, snapshot, cstamp, reads, writes });
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker");
    }
    done.store(true, Ordering::Release);
    let unlinked = collector.join().expect("collector");
    let log = log.lock().expect("log").clone();
    (db, log, unlinked, dir)
}

/// A key's writers in commit-stamp order: (cstamp, index of the transaction, whether it deleted).
type Writers = [(u64, usize, bool)];

/// For a read that found the key absent at `snapshot`: the position of the version it saw (the
/// first delete after a put; `None` when no put came before) and the position of the first
/// writer after the snapshot.
fn absence_seen(ws: &Writers, snapshot: u64) -> (Option<usize>, usize) {
    let after = ws.partition_point(|&(cstamp, _, _)| cstamp <= snapshot);
    assert!(after == 0 || ws[after - 1].2, "read as absent a key whose latest write at its snapshot put a value");
    let mut start = after;
    while start > 0 && ws[start - 1].2 {
        start -= 1;
    }
    ((start > 0).then_some(start), after)
}

/// Builds the dependency graph and returns a cycle if there is one.
fn find_cycle(txs: &[Committed]) -> Option<Vec<u64>> {
    let mut writers: HashMap<&[u8], Vec<(u64, usize, bool)>> = HashMap::new();
    for (i, t) in txs.iter().enumerate() {
        for (k, _, deleted) in &t.writes {
            writers.entry(k.as_slice()).or_default().push((t.cstamp, i, *deleted));
        }
    }
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); txs.len()];
    for ws in writers.values_mut() {
        ws.sort_unstable();
        for w in ws.windows(2) {
            edges[w[0].1].push(w[1].1); // w:w
        }
    }
    for (i, t) in txs.iter().enumerate() {
        let own: Vec<&[u8]> = t.writes.iter().map(|(k, _, _)| k.as_slice()).collect();
        for (k, read) in &t.reads {
            let ws = writers.get(k.as_slice()).map_or(&[][..], Vec::as_slice);
            let (seen, next) = match read {
                Some(id) => {
                    let pos = ws.iter().position(|&(_, w, _)| txs[w].id == *id).expect("read a committed write");
                    // The value read is the latest write at or below the snapshot.
                    assert!(ws[pos].0 <= t.snapshot, "read a write committed after the snapshot");
                    assert!(ws.get(pos + 1).is_none_or(|&(c, _, _)| c > t.snapshot), "read a stale write");
                    (Some(pos), ws.get(pos + 1))
                }
                // The next write the absence did not see is the next put: deletes in between
                // leave the key as absent as it was.
                None => {
                    let (seen, after) = absence_seen(ws, t.snapshot);
                    (seen, ws[after..].iter().find(|&&(_, _, deleted)| !deleted))
                }
            };
            if let Some(pos) = seen
                && ws[pos].1 != i
            {
                edges[ws[pos].1].push(i); // w:r
            }
            if let Some(&(_, n, _)) = next
                && n != i
                && !own.contains(&k.as_slice())
            {
                edges[i].push(n); // r:w
            }
        }
    }
    // Iterative DFS with colours.
    let mut colour = vec![0u8; txs.len()];
    let mut parent = vec![usize::MAX; txs.len()];
    for root in 0..txs.len() {
        if colour[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        colour[root] = 1;
        while let Some(&mut (v, ref mut e)) = stack.last_mut() {
            if let Some(&u) = edges[v].get(*e) {
                *e += 1;
                if colour[u] == 1 {
                    let mut cyc = vec![txs[u].id];
                    let mut x = v;
                    while x != u {
                        cyc.push(txs[x].id);
                        x = parent[x];
                    }
                    return Some(cyc);
                }
                if colour[u] == 0 {
                    colour[u] = 1;
                    parent[u] = v;
                    stack.push((u, 0));
                }
            } else {
                colour[v] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// Replays committed writes in stamp order and compares with the database.
fn check_model(db: &Db, txs: &[Committed]) {
    let mut sorted: Vec<&Committed> = txs.iter().filter(|t| !t.writes.is_empty()).collect();
    sorted.sort_by_key(|t| t.cstamp);
    for w in sorted.windows(2) {
        assert!(w[0].cstamp < w[1].cstamp, "commit stamps of writers are unique");
    }
    let mut model = BTreeMap::new();
    for t in sorted {
        for (k, v, deleted) in &t.writes {
            if *deleted {
                model.remove(k);
            } else {
                model.insert(k.clone(), *v);
            }
        }
    }
    let actual: BTreeMap<Vec<u8>, u64> = db
        .begin(Isolation::Snapshot)
        .scan(b"", b"", usize::MAX)
        .expect("scan")
        .into_iter()
        .map(|(k, v)| (k, writer_of(Some(v)).expect("a value")))
        .collect();
    assert_eq!(actual, model);
}

#[test]
fn serializable_histories_have_no_dependency_cycle_and_match_a_serial_model() {
    // Many short histories: a cycle through a key GC unlinked mid-history needs a narrow
    // interleaving, and 40 of them found the one the engine once let through in every run.
    let (mut committed, mut unlinked) = (0, 0);
    for seed in 0..40 {
        let (db, txs, keys_unlinked, _d) = run_history(Isolation::Serializable, seed, 4, 400, 8);
        committed += txs.len();
        unlinked += keys_unlinked;
        if let Some(c) = find_cycle(&txs) {
            panic!("cycle under Serializable (seed {seed}): {c:x?}");
        }
        check_model(&db, &txs);
        let st = db.stats();
        eprintln!(
            "seed {seed}: {} committed, aborts: {} ww, {} ssn, {} phantom",
            txs.len(),
            st.aborted_write_conflict,
            st.aborted_ssn,
            st.aborted_phantom
        );
        assert!(st.aborted_ssn + st.aborted_write_conflict + st.aborted_phantom > 0 || txs.len() == 1600);
    }
    assert!(committed > 1000, "enough transactions committed to mean something: {committed}");
    assert!(unlinked > 0, "GC unlinked deleted keys during the histories");
}

#[test]
fn the_checker_finds_a_cycle_in_snapshot_histories() {
    for seed in 0..40 {
        let (db, txs, _, _d) = run_history(Isolation::Snapshot, seed, 4, 400, 6);
        check_model(&db, &txs);
        if let Some(c) = find_cycle(&txs) {
            eprintln!("seed {seed}: cycle of {} transactions under Snapshot: {c:x?}", c.len());
            return;
        }
    }
    panic!("no write-skew cycle found under Snapshot in 40 histories");
}
