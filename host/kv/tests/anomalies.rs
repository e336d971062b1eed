//! The classic isolation anomalies: each is impossible under `Serializable`; the tests also show
//! which ones `Snapshot` admits (write skew, predicate write skew, the read-only anomaly).

use std::time::Duration;

use ledge_kv::{Db, Durability, Isolation, Options, TxError};
use tempfile::TempDir;

use Isolation::{Serializable, Snapshot};

fn open() -> (TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options::default().durability(Durability::Periodic(Duration::from_millis(5)));
    let db = Db::open_with(dir.path(), opts).expect("open");
    (dir, db)
}

fn put_all(db: &Db, kvs: &[(&[u8], &[u8])]) {
    let mut tx = db.begin(Snapshot);
    for (k, v) in kvs {
        tx.put(k, v).expect("put");
    }
    tx.commit().expect("setup commit");
}

fn read(db: &Db, k: &[u8]) -> Option<Vec<u8>> {
    db.begin(Snapshot).get(k).expect("get")
}

fn num(v: Option<Vec<u8>>) -> i64 {
    v.map_or(0, |b| String::from_utf8_lossy(&b).parse().expect("number"))
}

fn s(n: i64) -> Vec<u8> {
    n.to_string().into_bytes()
}

#[test]
fn dirty_write_is_impossible_at_both_levels() {
    for iso in [Snapshot, Serializable] {
        let (_d, db) = open();
        let mut t1 = db.begin(iso);
        let mut t2 = db.begin(iso);
        t1.put(b"x", b"1").unwrap();
        t2.put(b"x", b"2").unwrap();
        t2.put(b"y", b"2").unwrap();
        t1.put(b"y", b"1").unwrap();
        t1.commit().unwrap();
        let e = t2.commit().unwrap_err();
        assert!(matches!(e, TxError::WriteConflict { .. }), "{iso:?}: {e}");
        assert!(e.is_retryable());
        assert_eq!(read(&db, b"x"), read(&db, b"y"), "{iso:?}");
    }
}

#[test]
fn aborted_reads_are_impossible_at_both_levels() {
    for iso in [Snapshot, Serializable] {
        let (_d, db) = open();
        put_all(&db, &[(b"x", b"0")]);
        let mut t1 = db.begin(iso);
        t1.put(b"x", b"1").unwrap();
        let mut t2 = db.begin(iso);
        assert_eq!(t2.get(b"x").unwrap(), Some(b"0".to_vec()));
        t1.abort();
        assert_eq!(t2.get(b"x").unwrap(), Some(b"0".to_vec()));
        t2.commit().unwrap();
        assert_eq!(read(&db, b"x"), Some(b"0".to_vec()));
    }
}

#[test]
fn intermediate_reads_are_impossible_at_both_levels() {
    for iso in [Snapshot, Serializable] {
        let (_d, db) = open();
        put_all(&db, &[(b"x", b"0")]);
        let mut t1 = db.begin(iso);
        t1.put(b"x", b"1").unwrap();
        let mut t2 = db.begin(iso);
        assert_eq!(t2.get(b"x").unwrap(), Some(b"0".to_vec()));
        t1.put(b"x", b"2").unwrap();
        // The writer sees its own latest write.
        assert_eq!(t1.get(b"x").unwrap(), Some(b"2".to_vec()));
        t1.commit().unwrap();
        assert_eq!(t2.get(b"x").unwrap(), Some(b"0".to_vec()));
        assert_eq!(read(&db, b"x"), Some(b"2".to_vec()));
    }
}

#[test]
fn lost_updates_are_impossible_at_both_levels() {
    for iso in [Snapshot, Serializable] {
        let (_d, db) = open();
        put_all(&db, &[(b"c", b"0")]);
        let mut t1 = db.begin(iso);
        let mut t2 = db.begin(iso);
        let a = num(t1.get(b"c").unwrap());
        let b = num(t2.get(b"c").unwrap());
        t1.put(b"c", &s(a + 1)).unwrap();
        t2.put(b"c", &s(b + 1)).unwrap();
        t1.commit().unwrap();
        assert!(t2.commit().unwrap_err().is_retryable());
        assert_eq!(num(read(&db, b"c")), 1, "{iso:?}");
    }
}

#[test]
fn read_skew_is_impossible_at_both_levels() {
    for iso in [Snapshot, Serializable] {
        let (_d, db) = open();
        put_all(&db, &[(b"x", b"50"), (b"y", b"50")]);
        let mut t1 = db.begin(iso);
        let x = num(t1.get(b"x").unwrap());
        let mut t2 = db.begin(iso);
        t2.put(b"x", b"25").unwrap();
        t2.put(b"y", b"75").unwrap();
        t2.commit().unwrap();
        let y = num(t1.get(b"y").unwrap());
        assert_eq!(x + y, 100, "{iso:?}");
        t1.commit().unwrap();
    }
}

/// Two doctors on call; each goes off call if the other is still on call.
fn write_skew(iso: Isolation) -> (Result<u64, TxError>, Result<u64, TxError>, Db, TempDir) {
    let (d, db) = open();
    put_all(&db, &[(b"alice", b"1"), (b"bob", b"1")]);
    let mut t1 = db.begin(iso);
    let mut t2 = db.begin(iso);
    let on1 = num(t1.get(b"alice").unwrap()) + num(t1.get(b"bob").unwrap());
    let on2 = num(t2.get(b"alice").unwrap()) + num(t2.get(b"bob").unwrap());
    assert_eq!((on1, on2), (2, 2));
    t1.put(b"alice", b"0").unwrap();
    t2.put(b"bob", b"0").unwrap();
    let r1 = t1.commit();
    let r2 = t2.commit();
    (r1, r2, db, d)
}

#[test]
fn write_skew_is_admitted_by_snapshot_and_prevented_by_serializable() {
    let (r1, r2, db, _d) = write_skew(Snapshot);
    assert!(r1.is_ok() && r2.is_ok(), "SI admits write skew");
    assert_eq!(num(read(&db, b"alice")) + num(read(&db, b"bob")), 0);

    let (r1, r2, db, _d) = write_skew(Serializable);
    assert!(r1.is_ok());
    let e = r2.unwrap_err();
    assert!(matches!(e, TxError::Unserializable { .. }), "{e}");
    assert!(e.is_retryable());
    assert_eq!(num(read(&db, b"alice")) + num(read(&db, b"bob")), 1);
}

/// "At most one booking in the room": each transaction scans the room's range, sees it empty,
/// and inserts a booking.
fn predicate_skew(iso: Isolation) -> (Result<u64, TxError>, Result<u64, TxError>, Db, TempDir) {
    let (d, db) = open();
    put_all(&db, &[(b"room1/", b"header"), (b"room2/x", b"other")]);
    let mut t1 = db.begin(iso);
    let mut t2 = db.begin(iso);
    assert_eq!(t1.scan(b"room1/a", b"room1/z", 10).unwrap().len(), 0);
    assert_eq!(t2.scan(b"room1/a", b"room1/z", 10).unwrap().len(), 0);
    t1.put(b"room1/alice", b"9am").unwrap();
    t2.put(b"room1/bob", b"9am").unwrap();
    let r1 = t1.commit();
    let r2 = t2.commit();
    (r1, r2, db, d)
}

#[test]
fn write_skew_through_scans_is_admitted_by_snapshot_and_prevented_by_serializable() {
    let (r1, r2, db, _d) = predicate_skew(Snapshot);
    assert!(r1.is_ok() && r2.is_ok(), "SI admits predicate write skew");
    assert_eq!(db.begin(Snapshot).scan(b"room1/a", b"room1/z", 10).unwrap().len(), 2);

    let (r1, r2, db, _d) = predicate_skew(Serializable);
    assert!(r1.is_ok());
    let e = r2.unwrap_err();
    assert!(matches!(e, TxError::Phantom { .. }), "{e}");
    assert!(e.is_retryable());
    assert_eq!(db.begin(Snapshot).scan(b"room1/a", b"room1/z", 10).unwrap().len(), 1);
}

#[test]
fn a_phantom_inserted_after_the_scanner_committed_still_closes_no_cycle() {
    // T1 scans an empty range and writes y; T2 reads y and inserts into T1's range. T1 commits
    // first; T2's insert is an r:w successor of T1 and T2 read y before T1's write: a cycle.
    for iso in [Snapshot, Serializable] {
        let (_d, db) = open();
        put_all(&db, &[(b"y", b"0")]);
        let mut t1 = db.begin(iso);
        let mut t2 = db.begin(iso);
        assert!(t1.scan(b"r/", b"r0", 100).unwrap().is_empty());
        assert_eq!(t2.get(b"y").unwrap(), Some(b"0".to_vec()));
        t1.put(b"y", b"1").unwrap();
        t2.put(b"r/new", b"1").unwrap();
        t1.commit().unwrap();
        let r2 = t2.commit();
        match iso {
            Snapshot => assert!(r2.is_ok()),
            Serializable => assert!(r2.unwrap_err().is_retryable()),
        }
    }
}

#[test]
fn reading_an_absent_key_is_protected_against_a_later_insert() {
    let (_d, db) = open();
    put_all(&db, &[(b"y", b"0")]);
    let mut t1 = db.begin(Serializable);
    let mut t2 = db.begin(Serializable);
    assert_eq!(t1.get(b"x").unwrap(), None);
    assert_eq!(t2.get(b"y").unwrap(), Some(b"0".to_vec()));
    t1.put(b"y", b"1").unwrap();
    t2.put(b"x", b"1").unwrap();
    t2.commit().unwrap();
    let e = t1.commit().unwrap_err();
    assert!(e.is_retryable(), "{e}");
}

/// Outcomes of T1, T2, T3 and what T3 saw.
type ReadOnlyOutcome = (Result<u64, TxError>, Result<u64, TxError>, Result<u64, TxError>, (i64, i64));

/// Fekete, O'Neil, O'Neil (2004): checking X and savings Y start at 0. T2 withdraws 10 from
/// X with an overdraft penalty of 1 if X + Y would go negative; T1 deposits 20 into Y; read-only
/// T3 reports both after T1 commits and before T2 does.
fn read_only_anomaly(iso: Isolation, t3_first: bool) -> ReadOnlyOutcome {
    let (_d, db) = open();
    put_all(&db, &[(b"X", b"0"), (b"Y", b"0")]);
    let mut t2 = db.begin(iso);
    let x = num(t2.get(b"X").unwrap());
    let y = num(t2.get(b"Y").unwrap());
    let mut t1 = db.begin(iso);
    let y1 = num(t1.get(b"Y").unwrap());
    t1.put(b"Y", &s(y1 + 20)).unwrap();
    let r1 = t1.commit();
    let mut t3 = db.begin(iso);
    let seen = (num(t3.get(b"X").unwrap()), num(t3.get(b"Y").unwrap()));
    let penalty = if x + y - 10 < 0 { 1 } else { 0 };
    t2.put(b"X", &s(x - 10 - penalty)).unwrap();
    let (r2, r3) = if t3_first {
        let r3 = t3.commit();
        (t2.commit(), r3)
    } else {
        let r2 = t2.commit();
        (r2, t3.commit())
    };
    (r1, r2, r3, seen)
}

#[test]
fn the_read_only_anomaly_is_admitted_by_snapshot_and_prevented_by_serializable() {
    for t3_first in [true, false] {
        let (r1, r2, r3, seen) = read_only_anomaly(Snapshot, t3_first);
        assert!(r1.is_ok() && r2.is_ok() && r3.is_ok(), "SI admits it");
        assert_eq!(seen, (0, 20), "T3 saw the deposit but not the withdrawal");

        let (r1, r2, r3, _) = read_only_anomaly(Serializable, t3_first);
        assert!(r1.is_ok());
        let aborted = [&r2, &r3].iter().filter(|r| r.is_err()).count();
        assert_eq!(aborted, 1, "exactly one of T2 / T3 must abort (t3_first={t3_first})");
        for r in [r2, r3] {
            if let Err(e) = r {
                assert!(matches!(e, TxError::Unserializable { .. }), "{e}");
            }
        }
    }
}

/// A read-only transaction of one point read is placed right after the writer of what it read,
/// so it is never certified: it leaves no stamp that would refuse a later writer. U reads X,
/// then Y overwrites X (so U must come before Y); read-only T reads V (or finds W absent) and
/// commits; then U overwrites V (or inserts W). T, U, Y is a serial order, so U must commit.
/// Had T been certified, V's pstamp (or the scan log) would hold T's cstamp, above U's sstamp
/// (Y's), and U would be refused for nothing.
#[test]
fn a_read_only_transaction_of_one_point_read_commits_and_refuses_no_later_writer() {
    for absent in [false, true] {
        let (_d, db) = open();
        put_all(&db, &[(b"X", b"0"), (b"V", b"0")]);
        let mut u = db.begin(Serializable);
        num(u.get(b"X").unwrap());
        let mut y = db.begin(Serializable);
        y.put(b"X", b"1").unwrap();
        y.commit().expect("Y commits");
        let mut t = db.begin(Serializable);
        let key: &[u8] = if absent { b"W" } else { b"V" };
        assert_eq!(t.get(key).unwrap().is_none(), absent);
        t.commit().expect("one read commits");
        u.put(key, b"2").unwrap();
        u.commit().unwrap_or_else(|e| panic!("U commits after a one-read transaction (absent={absent}): {e}"));
        assert_eq!(read(&db, key), Some(b"2".to_vec()));
    }
}

/// A deleted key whose tombstone GC unlinked still orders its next writer after the deleter.
/// A reads y; D deletes k and writes y (A → D); U reads x; A writes x (U → A) and ends; GC
/// unlinks k's tombstone; U writes k (D → U): the cycle U → A → D → U. U must be refused as
/// it would be with the tombstone still there, not commit because the chain is gone.
#[test]
fn a_key_unlinked_by_gc_still_orders_its_next_writer_after_the_deleter() {
    for collect in [false, true] {
        let (_d, db) = open();
        put_all(&db, &[(b"k", b"1"), (b"x", b"0"), (b"y", b"0")]);
        let mut a = db.begin(Serializable);
        num(a.get(b"y").unwrap());
        let mut d = db.begin(Serializable);
        d.delete(b"k").unwrap();
        d.put(b"y", b"1").unwrap();
        d.commit().expect("D commits");
        let mut u = db.begin(Serializable);
        num(u.get(b"x").unwrap());
        a.put(b"x", b"1").unwrap();
        a.commit().expect("A commits");
        if collect {
            let live = db.stats().live_versions;
            db.gc();
            assert!(db.stats().live_versions < live, "GC unlinked k's tombstone");
        }
        u.put(b"k", b"2").unwrap();
        let refused = u.commit().unwrap_err();
        assert!(matches!(refused, TxError::Unserializable { .. }), "collect={collect}: {refused}");
        assert_eq!(read(&db, b"k"), None);
    }
}

#[test]
fn a_reader_of_a_key_unlinked_by_gc_still_follows_the_deleter() {
    // Z reads y, D deletes k and writes y (Z before D); A reads w, Z writes w (A before Z); T
    // reads x and finds k deleted (D before T), A writes x (T before A): the cycle T, A, Z, D.
    // Unlinked by GC, k's tombstone no longer tells T's commit that it read D's write.
    for collect in [false, true] {
        let (_d, db) = open();
        put_all(&db, &[(b"k", b"0"), (b"x", b"0"), (b"y", b"0"), (b"w", b"0")]);
        let mut z = db.begin(Serializable);
        num(z.get(b"y").unwrap());
        let mut d = db.begin(Serializable);
        d.delete(b"k").unwrap();
        d.put(b"y", b"1").unwrap();
        d.commit().expect("D commits");
        let mut a = db.begin(Serializable);
        num(a.get(b"w").unwrap());
        z.put(b"w", b"1").unwrap();
        z.commit().expect("Z commits");
        let mut t = db.begin(Serializable);
        num(t.get(b"x").unwrap());
        if collect {
            let keys = db.stats().keys;
            db.gc();
            assert_eq!(db.stats().keys, keys - 1, "GC unlinked k");
        }
        assert_eq!(t.get(b"k").unwrap(), None);
        a.put(b"x", b"1").unwrap();
        a.commit().expect("A commits");
        let refused = t.commit().unwrap_err();
        assert!(matches!(refused, TxError::Unserializable { .. }), "collect={collect}: {refused}");
    }
}

#[test]
fn an_insert_undone_before_the_reader_of_the_absent_key_commits_still_orders_the_reader_first() {
    // B reads x, A overwrites it (B before A); C reads A's x (A before C) and finds k absent;
    // B inserts k and X deletes it again before C commits. k is as absent as C saw it, but B
    // wrote it after C's read (C before B): the cycle A, C, B.
    let (_d, db) = open();
    put_all(&db, &[(b"x", b"0")]);
    let mut b = db.begin(Serializable);
    assert_eq!(num(b.get(b"x").unwrap()), 0);
    let mut a = db.begin(Serializable);
    a.put(b"x", b"1").unwrap();
    a.commit().expect("A commits");
    let mut c = db.begin(Serializable);
    assert_eq!(num(c.get(b"x").unwrap()), 1);
    assert_eq!(c.get(b"k").unwrap(), None);
    b.put(b"k", b"b").unwrap();
    b.commit().expect("B commits");
    let mut x = db.begin(Serializable);
    x.delete(b"k").unwrap();
    x.commit().expect("X commits");
    let refused = c.commit().unwrap_err();
    assert!(matches!(refused, TxError::Phantom { .. }), "{refused}");
}

#[test]
fn transactions_read_their_own_writes_in_gets_and_scans() {
    let (_d, db) = open();
    put_all(&db, &[(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")]);
    let mut tx = db.begin(Serializable);
    tx.put(b"b", b"20").unwrap();
    tx.delete(b"c").unwrap();
    tx.put(b"bb", b"new").unwrap();
    assert_eq!(tx.get(b"b").unwrap(), Some(b"20".to_vec()));
    assert_eq!(tx.get(b"c").unwrap(), None);
    let all = tx.scan(b"a", b"", 100).unwrap();
    let keys: Vec<_> = all.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, vec![&b"a"[..], b"b", b"bb", b"d"]);
    assert_eq!(all[1].1, b"20");
    let limited = tx.scan(b"a", b"d", 2).unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(tx.scan(b"b", b"c", 100).unwrap().len(), 2);
    tx.commit().unwrap();
    assert_eq!(read(&db, b"c"), None);
    assert_eq!(read(&db, b"bb"), Some(b"new".to_vec()));
}

#[test]
fn limits_and_closed_databases_give_non_retryable_errors() {
    let (_d, db) = open();
    let mut tx = db.begin(Snapshot);
    let e = tx.put(b"", b"v").unwrap_err();
    assert!(!e.is_retryable());
    let e = tx.put(&vec![b'k'; 5000], b"v").unwrap_err();
    assert!(matches!(e, TxError::KeyTooLarge { .. }));
    let e = tx.put(b"k", &vec![0; 2 << 20]).unwrap_err();
    assert!(matches!(e, TxError::ValueTooLarge { .. }));
    tx.put(b"k", b"v").unwrap();
    db.close().unwrap();
    let e = tx.commit().unwrap_err();
    assert!(matches!(e, TxError::Closed) && !e.is_retryable());
}

#[test]
fn stats_count_commits_and_aborts_by_reason() {
    let (r1, r2, db, _d) = write_skew(Serializable);
    assert!(r1.is_ok() && r2.is_err());
    let st = db.stats();
    assert_eq!(st.aborted_ssn, 1);
    assert_eq!(st.committed, 2); // setup + t1
    assert_eq!(st.active_snapshots, 0);
}
