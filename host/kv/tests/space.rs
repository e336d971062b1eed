//! Bounds a hostile transaction meets: buffered write bytes, read-set size, bytes per scan;
//! space accounting per keyspace and in total, quotas and the database budget, all counted
//! exactly and recounted by recovery.

use ledge_kv::{Db, Isolation, Options, TxError};

/// Keys `ks/NAME/...` belong to keyspace `ks/NAME/`.
fn keyspace_of(key: &[u8]) -> Option<usize> {
    let first = key.iter().position(|&b| b == b'/')?;
    let second = key[first + 1..].iter().position(|&b| b == b'/')?;
    Some(first + second + 2)
}

fn open_with(opts: Options) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), opts.keyspace_of(keyspace_of)).unwrap();
    (dir, db)
}

fn put(db: &Db, key: &str, len: usize) -> Result<u64, TxError> {
    let mut tx = db.begin(Isolation::Serializable);
    tx.limit_keyspace(b"ks/a/", 10_000);
    tx.put(key.as_bytes(), &vec![1; len])?;
    tx.commit()
}

#[test]
fn a_transaction_cannot_buffer_more_than_its_write_budget() {
    let (_d, db) = open_with(Options::default().tx_limits(4096, 100, 1 << 20));
    let mut tx = db.begin(Isolation::Snapshot);
    tx.put(b"c", &[7; 10]).unwrap();
    tx.commit().unwrap();
    let mut tx = db.begin(Isolation::Snapshot);
    tx.put(b"a", &[0; 2000]).unwrap();
    // Overwriting the same key replaces its bytes instead of adding to them.
    tx.put(b"a", &[0; 2000]).unwrap();
    tx.put(b"b", &[0; 2000]).unwrap();
    let refused = tx.put(b"c", &[0; 200]).unwrap_err();
    assert!(matches!(refused, TxError::TooLarge { max: 4096, .. }), "{refused:?}");
    assert!(!refused.is_retryable());
    // The refusal left the budget as it was: 4,002 bytes buffered, so 91 more still fit.
    tx.put(b"d", &[0; 90]).unwrap();
    // What was buffered before the refusal still commits, and the refused write left nothing
    // in it (not even a tombstone over the committed value).
    tx.commit().unwrap();
    let mut read = db.begin(Isolation::Snapshot);
    assert_eq!(read.get(b"b").unwrap().map(|v| v.len()), Some(2000));
    assert_eq!(read.get(b"c").unwrap(), Some(vec![7; 10]));
    assert_eq!(read.get(b"d").unwrap().map(|v| v.len()), Some(90));
}

#[test]
fn a_serializable_read_set_is_bounded_and_a_snapshot_one_is_not_recorded() {
    let (_d, db) = open_with(Options::default().tx_limits(1 << 20, 100, 1 << 20));
    let mut tx = db.begin(Isolation::Serializable);
    for i in 0..100 {
        tx.get(format!("absent/{i}").as_bytes()).unwrap();
    }
    assert!(matches!(tx.get(b"absent/100"), Err(TxError::TooManyReads { max: 100 })));
    assert!(matches!(tx.scan(b"", b"", 10), Err(TxError::TooManyReads { max: 100 })));
    let mut snapshot = db.begin(Isolation::Snapshot);
    for i in 0..1000 {
        snapshot.get(format!("absent/{i}").as_bytes()).unwrap();
    }
}

#[test]
fn one_scan_returns_at_most_its_byte_budget() {
    let (_d, db) = open_with(Options::default().tx_limits(1 << 20, 1000, 10_000));
    let mut tx = db.begin(Isolation::Snapshot);
    for i in 0..20 {
        tx.put(format!("k{i:02}").as_bytes(), &[0; 997]).unwrap();
    }
    tx.commit().unwrap();
    let mut tx = db.begin(Isolation::Serializable);
    assert_eq!(tx.scan(b"", b"", 9).unwrap().len(), 9, "9 entries of 1000 bytes fit");
    assert!(matches!(tx.scan(b"", b"", 20), Err(TxError::ScanTooLarge { max: 10_000 })));
}

#[test]
fn quotas_refuse_growth_but_never_shrinking_and_count_exactly() {
    let (dir, db) = open_with(Options::default());
    put(&db, "ks/a/1", 4000).unwrap();
    put(&db, "ks/a/2", 4000).unwrap();
    assert_eq!(db.bytes_in(b"ks/a/"), 2 * (6 + 4000));
    let refused = put(&db, "ks/a/3", 4000).unwrap_err();
    assert!(matches!(refused, TxError::QuotaExceeded { max: 10_000, .. }), "{refused:?}");
    assert!(refused.to_string().contains("ks/a/"), "{refused}");
    // Another keyspace is not held to `ks/a/`'s quota.
    put(&db, "ks/b/1", 9000).unwrap();
    // Overwriting with a smaller value and deleting free space; both go through at the quota.
    put(&db, "ks/a/1", 10).unwrap();
    let mut tx = db.begin(Isolation::Serializable);
    tx.limit_keyspace(b"ks/a/", 1);
    tx.delete(b"ks/a/2").unwrap();
    tx.commit().unwrap();
    assert_eq!(db.bytes_in(b"ks/a/"), 6 + 10);
    assert_eq!(db.live_bytes(), (6 + 10) + (6 + 9000));
    assert_eq!(db.keyspace_bytes(), vec![(b"ks/a/".to_vec(), 16), (b"ks/b/".to_vec(), 9006)]);
    // Recovery recounts from the data: the same figures.
    drop(db);
    let db = Db::open_with(dir.path(), Options::default().keyspace_of(keyspace_of)).unwrap();
    assert_eq!(db.keyspace_bytes(), vec![(b"ks/a/".to_vec(), 16), (b"ks/b/".to_vec(), 9006)]);
}

#[test]
fn the_database_budget_refuses_growth_past_it() {
    let (_d, db) = open_with(Options::default().max_live_bytes(5000));
    put(&db, "ks/b/1", 3000).unwrap();
    let refused = put(&db, "ks/c/1", 3000).unwrap_err();
    assert!(matches!(refused, TxError::OutOfSpace { max: 5000, .. }), "{refused:?}");
    assert_eq!(db.live_bytes(), 3006);
}

#[test]
fn concurrent_writers_never_push_a_keyspace_past_its_quota() {
    let (_d, db) = open_with(Options::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut committed = 0;
                for i in 0..50 {
                    if put(&db, &format!("ks/a/{t}-{i}"), 500).is_ok() {
                        committed += 1;
                    }
                }
                committed
            })
        })
        .collect();
    let committed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let stored = db.begin(Isolation::Snapshot).scan(b"ks/a/", b"ks/a0", 1000).unwrap();
    assert_eq!(stored.len(), committed);
    let bytes = db.bytes_in(b"ks/a/");
    assert!(bytes <= 10_000 && committed > 10, "{committed} commits, {bytes} bytes");
    assert_eq!(bytes, stored.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>());
}

#[test]
fn dropping_a_read_only_transaction_is_not_an_abort() {
    let (_d, db) = open_with(Options::default());
    for _ in 0..10 {
        let mut tx = db.begin(Isolation::Snapshot);
        tx.get(b"k").unwrap();
    }
    let mut writer = db.begin(Isolation::Snapshot);
    writer.put(b"k", b"v").unwrap();
    drop(writer);
    assert_eq!(db.stats().aborted_by_caller, 1);
}

#[test]
fn unbudgeted_keyspaces_are_never_refused_for_the_budget_and_do_not_use_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::default().keyspace_of(keyspace_of).max_live_bytes(1000).unbudgeted_prefix(b"sys/");
    let db = Db::open_with(dir.path(), options()).unwrap();
    put(&db, "ks/b/full", 990).unwrap();
    let refused = put(&db, "ks/b/more", 10).unwrap_err();
    assert!(matches!(refused, TxError::OutOfSpace { .. }), "{refused:?}");
    // The budget is full of ordinary data; the system keyspace still takes writes, and they
    // leave the budget as it was.
    put(&db, "sys/revoked/0123", 500).unwrap();
    put(&db, "sys/trace/1", 500).unwrap();
    assert_eq!(db.live_bytes(), (9 + 990) + (16 + 500) + (11 + 500), "still counted in the total");
    put(&db, "ks/b/full", 900).unwrap_or_else(|e| panic!("shrinking frees budget: {e}"));
    put(&db, "ks/b/more", 50).unwrap();
    // Recovery recounts the same split.
    drop(db);
    let db = Db::open_with(dir.path(), options()).unwrap();
    let refused = put(&db, "ks/b/third", 100).unwrap_err();
    assert!(matches!(refused, TxError::OutOfSpace { .. }), "{refused:?}");
    put(&db, "sys/revoked/4567", 100).unwrap();
}
