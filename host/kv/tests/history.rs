//! Randomized concurrent histories checked for serializability.
//!
//! Each committed transaction records what it read (key → the id of the transaction whose write
//! it saw, or "initial" for an absent key) and what it wrote. Every value written is the writer's
//! unique id, so reads identify versions exactly. From that, the checker builds the dependency
//! graph (w:w in commit-stamp order, w:r, r:w to the next writer) and looks for a cycle; it also
//! replays the writes in commit-stamp order on a `BTreeMap` and compares with the database.
//! The workload only inserts and updates (no deletes), so a scan reads every key of the key
//! universe in its range (present ones at their writer, absent ones at "initial"): predicate
//! dependencies become ordinary item dependencies.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledge_kv::{Db, Durability, Isolation, Options};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

const INITIAL: u64 = 0;

/// (key, id of the writer of the version read or written).
type Accesses = Vec<(Vec<u8>, u64)>;

#[derive(Debug, Clone)]
struct Committed {
    id: u64,
    cstamp: u64,
    reads: Vec<(Vec<u8>, u64)>,
    writes: Vec<(Vec<u8>, u64)>,
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

fn decode(v: Option<Vec<u8>>) -> u64 {
    v.map_or(INITIAL, |b| u64::from_le_bytes(b.try_into().expect("8-byte id")))
}

/// Runs one transaction's body; returns its reads and writes.
fn body(
    tx: &mut ledge_kv::Tx,
    rng: &mut StdRng,
    id: u64,
    nkeys: usize,
    scans: bool,
) -> Result<(Accesses, Accesses), ledge_kv::TxError> {
    // Some are one read and nothing else: read-only with one point read (of a version, or of
    // a key still absent), which commits without certification.
    if rng.random_bool(0.15) {
        let k = rng.random_range(0..nkeys);
        let v = tx.get(&key(k))?;
        return Ok((vec![(key(k), decode(v))], Vec::new()));
    }
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    // Read two keys, write one of them or a third: the write-skew shape.
    let a = rng.random_range(0..nkeys);
    let b = rng.random_range(0..nkeys);
    for k in [a, b] {
        let v = tx.get(&key(k))?;
        reads.push((key(k), decode(v)));
    }
    if scans && rng.random_bool(0.3) {
        let lo = rng.random_range(0..nkeys);
        let hi = (lo + 3).min(nkeys);
        let got: BTreeMap<Vec<u8>, u64> =
            tx.scan(&key(lo), &key(hi), usize::MAX)?.into_iter().map(|(k, v)| (k, decode(Some(v)))).collect();
        for i in lo..hi {
            reads.push((key(i), got.get(&key(i)).copied().unwrap_or(INITIAL)));
        }
    }
    std::thread::yield_now();
    if rng.random_bool(0.85) {
        let w = if rng.random_bool(0.5) { a } else { rng.random_range(0..nkeys) };
        tx.put(&key(w), &id.to_le_bytes())?;
        writes.push((key(w), id));
    }
    // Drop reads satisfied by our own write (they are not dependencies).
    Ok((reads, writes))
}

fn run_history(
    iso: Isolation,
    seed: u64,
    threads: usize,
    per_thread: usize,
    nkeys: usize,
) -> (Db, Vec<Committed>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options::default().durability(Durability::Periodic(Duration::from_millis(2)));
    let db = Db::open_with(dir.path(), opts).expect("open");
    let log = Arc::new(Mutex::new(Vec::new()));
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
    let log = log.lock().expect("log").clone();
    (db, log, dir)
}

/// Builds the dependency graph and returns a cycle if there is one.
fn find_cycle(txs: &[Committed]) -> Option<Vec<u64>> {
    let idx: HashMap<u64, usize> = txs.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    // Version order per key: writers sorted by commit stamp.
    let mut writers: HashMap<&[u8], Vec<(u64, usize)>> = HashMap::new();
    for (i, t) in txs.iter().enumerate() {
        for (k, _) in &t.writes {
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
        let own: Vec<&[u8]> = t.writes.iter().map(|(k, _)| k.as_slice()).collect();
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
        for (k, v) in &t.writes {
            model.insert(k.clone(), *v);
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
    let mut committed = 0;
    for seed in 0..6 {
        let (db, txs, _d) = run_history(Isolation::Serializable, seed, 4, 400, 8);
        committed += txs.len();
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
}

#[test]
fn the_checker_finds_a_cycle_in_snapshot_histories() {
    for seed in 0..40 {
        let (db, txs, _d) = run_history(Isolation::Snapshot, seed, 4, 400, 6);
        check_model(&db, &txs);
        if let Some(c) = find_cycle(&txs) {
            eprintln!("seed {seed}: cycle of {} transactions under Snapshot: {c:x?}", c.len());
            return;
        }
    }
    panic!("no write-skew cycle found under Snapshot in 40 histories");
}
