//! A full disk: commits fail cleanly, nothing is corrupted, and the database goes on once space
//! returns, without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::disk::{Image, SimDisk};
use super::model::read_all;
use crate::{Db, Isolation, Options, TxError};

fn open(disk: &SimDisk) -> Db {
    // Preallocated space a few batches long: the disk fills with the WAL's allocation failing
    // first, then its writes.
    let mut opts = Options::default().checkpoint_wal_bytes(0).wal_preallocate(512);
    opts.fs = Arc::new(disk.clone());
    Db::open_with(Path::new("/sim/full"), opts).expect("open")
}

fn put(db: &Db, key: &str, value: &[u8]) -> Result<u64, TxError> {
    let mut tx = db.begin(Isolation::Serializable);
    tx.put(key.as_bytes(), value)?;
    tx.commit()
}

/// Commits probes without waiting for durability until one is refused because the disk is
/// full (bounded); returns the error, the refused key, and the keys that were accepted first.
fn probe_until_refused(db: &Db) -> (TxError, String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut accepted = Vec::new();
    for i in 0.. {
        let key = format!("probe{i}");
        let mut tx = db.begin(Isolation::Serializable);
        tx.put(key.as_bytes(), b"x").expect("put");
        match tx.commit_async() {
            Err(e @ TxError::DiskFull(_)) => return (e, key, accepted),
            Ok(_installed) => accepted.push(key),
            Err(other) => panic!("unexpected refusal: {other}"),
        }
        assert!(Instant::now() < deadline, "commits were never refused");
        std::thread::sleep(Duration::from_millis(5));
    }
    unreachable!("the loop returns or panics")
}

/// Recovers what a crash now would leave and returns its state.
fn crash_and_recover(disk: &SimDisk, seed: u64) -> (Db, super::model::State) {
    disk.crash_now();
    let image: Image = disk.crash_image().expect("crashed");
    let db = open(&SimDisk::new(seed, &image));
    let state = read_all(&db);
    (db, state)
}

#[test]
fn a_full_disk_refuses_commits_cleanly_and_they_resume_when_space_returns() {
    let disk = SimDisk::new(1, &Image::new());
    let db = open(&disk);
    put(&db, "before", b"kept").expect("room for the first commit");
    disk.set_capacity(disk.used() + 100);

    // This commit's WAL batch does not fit: the flusher stalls, and the commit is acknowledged
    // only once it is durable.
    let big = vec![7u8; 4000];
    let stalled = std::thread::scope(|s| {
        let waiting = s.spawn(|| put(&db, "big", &big));
        let (error, refused, accepted) = probe_until_refused(&db);
        assert!(error.to_string().contains("disk is full"), "a clear error: {error}");
        assert!(!waiting.is_finished(), "the stalled commit is not acknowledged while the disk is full");
        assert!(!read_all(&db).contains_key(refused.as_bytes()), "a refused commit installs nothing");
        disk.set_capacity(usize::MAX);
        (waiting.join().expect("committer"), refused, accepted)
    });
    let (stalled, refused, accepted) = stalled;
    stalled.expect("the stalled commit completes once space returns");
    assert!(db.stats().wal_allocation_failures > 0, "the WAL's allocation ahead failed first, and was counted");
    put(&db, "after", b"works").expect("commits are accepted again");

    let (db, state) = crash_and_recover(&disk, 2);
    assert_eq!(state.get(&b"before"[..]).map(Vec::as_slice), Some(&b"kept"[..]));
    assert_eq!(state.get(&b"big"[..]), Some(&big));
    assert_eq!(state.get(&b"after"[..]).map(Vec::as_slice), Some(&b"works"[..]));
    assert!(!state.contains_key(refused.as_bytes()), "a refused commit left nothing behind");
    assert!(accepted.iter().all(|k| state.contains_key(k.as_bytes())), "commits queued behind the stall were kept");
    db.close().expect("close");
}

#[test]
fn a_failed_fsync_on_a_full_disk_is_retried_from_memory() {
    let disk = SimDisk::new(3, &Image::new());
    let db = open(&disk);
    disk.fail_next_sync();
    put(&db, "k", b"v").expect("acknowledged after the retry");
    let (db, state) = crash_and_recover(&disk, 4);
    assert_eq!(state.get(&b"k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
    db.close().expect("close");
}

#[test]
fn a_checkpoint_on_a_full_disk_fails_leaves_no_file_and_succeeds_later() {
    let disk = SimDisk::new(5, &Image::new());
    let db = open(&disk);
    for i in 0..20 {
        put(&db, &format!("k{i}"), &[i; 300]).expect("commit");
    }
    disk.set_capacity(disk.used() + 1000);
    let failed = db.checkpoint().expect_err("no room for a checkpoint");
    assert!(matches!(failed, crate::Error::Io(ref e) if crate::fs::is_out_of_space(e)), "{failed}");
    let leftovers = disk.names();
    assert!(leftovers.iter().all(|n| !n.contains("ckpt-")), "no partial checkpoint left: {leftovers:?}");

    disk.set_capacity(usize::MAX);
    db.checkpoint().expect("a checkpoint once space returns");
    let (db, state) = crash_and_recover(&disk, 6);
    assert_eq!(state.len(), 20);
    db.close().expect("close");
}
