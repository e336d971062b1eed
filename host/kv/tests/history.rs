//! Randomized concurrent histories checked for serializability.
//!
//! Each committed transaction records what it read (key → the id of the transaction whose write
//! it saw, or "initial" for a key never written) and what it wrote. Every value written is the
//! writer's unique id, so reads identify versions exactly. From that, the checker builds the
//! dependency graph (w:w in commit-stamp order, w:r, r:w to the next writer) and looks for a
//! cycle; it also replays the writes in commit-stamp order on a `BTreeMap` and compares with the
//! database.
//!
//! Half the keys may be deleted, while GC unlinks tombstones all along (that is where a lost
//! w:w edge once hid). An absent key then carries no id, so a deleter also writes the key's
//! marker (`d/KEY` = its id), and a transaction that finds a deletable key absent reads its
//! marker in the same snapshot: the latest delete it sees, or none (still "initial"). The
//! marker read is a real read, its dependencies included. A scan reads every key of the key
//! universe in its range the same way, so predicate dependencies become item dependencies.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledge_kv::{Db, Durability, Isolation, Options};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

const INITIAL: u64 = 0;

/// (key, id of the writer of the version read).
type Accesses = Vec<(Vec<u8>, u64)>;
/// (key, this transaction's id, whether it deleted the key).
type Writes = Vec<(Vec<u8>, u64, bool)>;

#[derive(Debug, Clone)]
struct Committed {
    id: u64,
    cstamp: u64,
    reads: Accesses,
    writes: Writes,
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

fn decode(v: Option<Vec<u8>>) -> u64 {
    v.map_or(INITIAL, |b| u64::from_le_bytes(b.try_into().expect("8-byte id")))
}

/// Keys with an even index may be deleted; the others only inserted and updated (so an absent
/// one is "initial" from one point read, the read that commits without certification).
fn deletable(k: usize) -> bool {
    k.is_multiple_of(2)
}

fn marker(k: usize) -> Vec<u8> {
    [b"d/".as_slice(), &key(k)].concat()
}

/// The version of key `k` the transaction sees, given what a read of it returned: its writer,
/// or for an absent deletable key the latest deleter its snapshot sees (read from the marker,
/// and recorded as a read of the marker too).
fn seen(
    tx: &mut ledge_kv::Tx,
    reads: &mut Accesses,
    k: usize,
    value: Option<Vec<u8>>,
) -> Result<(), ledge_kv::TxError> {
    let writer = match value {
        Some(v) => decode(Some(v)),
        None if deletable(k) => {
            let deleter = decode(tx.get(&marker(k))?);
            reads.push((marker(k), deleter));
            deleter
        }
        None => INITIAL,
    };
    reads.push((key(k), writer));
    Ok(())
}

/// Runs one transaction's body; returns its reads and writes.
fn body(
    tx: &mut ledge_kv::Tx,
    rng: &mut StdRng,
    id: u64,
    nkeys: usize,
    scans: bool,
) -> Result<(Accesses, Writes), ledge_kv::TxError> {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    // Some are one read and nothing else: read-only with one point read (of a version, or of
    // a key still absent), which commits without certification.
    if rng.random_bool(0.15) {
        let k = rng.random_range(0..nkeys);
        let v = tx.get(&key(k))?;
        seen(tx, &mut reads, k, v)?;
        return Ok((reads, writes));
    }
    // Read two keys, write one of them or a third: the write-skew shape.
    let a = rng.random_range(0..nkeys);
    let b = rng.random_range(0..nkeys);
    for k in [a, b] {
        let v = tx.get(&key(k))?;
        seen(tx, &mut reads, k, v)?;
    }
    if scans && rng.random_bool(0.3) {
        let lo = rng.random_range(0..nkeys);
        let hi = (lo + 3).min(nkeys);
        let mut got: BTreeMap<Vec<u8>, Vec<u8>> = tx.scan(&key(lo), &key(hi), usize::MAX)?.into_iter().collect();
        for i in lo..hi {
            let v = got.remove(&key(i));
            seen(tx, &mut reads, i, v)?;
        }
    }
    std::thread::yield_now();
    if rng.random_bool(0.85) {
        let w = if rng.random_bool(0.5) { a } else { rng.random_range(0..nkeys) };
        if deletable(w) && rng.random_bool(0.4) {
            tx.delete(&key(w))?;
            tx.put(&marker(w), &id.to_le_bytes())?;
            writes.push((key(w), id, true));
            writes.push((marker(w), id, false));
        } else {
            tx.put(&key(w), &id.to_le_bytes())?;
            writes.push((key(w), id, false));
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
                    let Ok((reads, writes)) = body(&mut tx, &mut rng, id, nkeys, true) else {
                        continue;
                    };
                    if let Ok(cstamp) = tx.commit() {
                        log.lock().expect("log").push(Committed { id, cstamp, reads, writes });
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

/// Builds the dependency graph and returns a cycle if there is one.
fn find_cycle(txs: &[Committed]) -> Option<Vec<u64>> {
    let idx: HashMap<u64, usize> = txs.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    // Version order per key: writers sorted by commit stamp.
    let mut writers: HashMap<&[u8], Vec<(u64, usize)>> = HashMap::new();
    for (i, t) in txs.iter().enumerate() {
        for (k, _, _) in &t.writes {
            writers.entry(k.as_slice()).or_default().push((t.cstamp, i));
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
        for (k, seen) in &t.reads {
            if *seen != INITIAL {
                let w = *idx.get(seen).expect("read a version of a committed transaction");
                if w != i {
                    edges[w].push(i); // w:r
                }
            }
            // r:w: the writer that installed the next version after the one read.
            let Some(ws) = writers.get(k.as_slice()) else {
                continue;
            };
            let next = if *seen == INITIAL {
                ws.first()
            } else {
                let pos = ws.iter().position(|&(_, w)| txs[w].id == *seen).expect("writer");
                ws.get(pos + 1)
            };
            if let Some(&(_, n)) = next
                && n != i
                && !own.contains(&k.as_slice())
            {
                edges[i].push(n);
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
        .map(|(k, v)| (k, decode(Some(v))))
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
