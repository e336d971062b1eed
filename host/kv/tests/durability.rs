//! Durability: SIGKILL crash rounds, torn and corrupt WAL, checkpoints, durability modes, GC.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledge_kv::{Db, Durability, Error, Isolation, Options};
use rand::Rng;

const CHILD_ENV: &str = "LEDGE_KV_CRASH_CHILD_DIR";
const CHILD_MODE_ENV: &str = "LEDGE_KV_CRASH_CHILD_MODE";
const CHILD_THREADS: u64 = 4;

fn periodic() -> Options {
    Options::default().durability(Durability::Periodic(Duration::from_millis(5)))
}

fn get(db: &Db, k: &str) -> Option<String> {
    db.begin(Isolation::Snapshot).get(k.as_bytes()).expect("get").map(|v| String::from_utf8(v).expect("utf8"))
}

fn get_u64(db: &Db, k: &str) -> u64 {
    get(db, k).map_or(0, |v| v.parse().expect("number"))
}

/// Writer `t`'s transaction number `n` sets `t/x`, `t/y` and `t/slot<n % 10>` to `n`.
fn child_commit(db: &Db, t: u64, n: u64) -> Result<u64, ledge_kv::TxError> {
    let mut tx = db.begin(Isolation::Serializable);
    let v = n.to_string();
    tx.put(format!("{t}/x").as_bytes(), v.as_bytes())?;
    tx.put(format!("{t}/y").as_bytes(), v.as_bytes())?;
    tx.put(format!("{t}/slot{}", n % 10).as_bytes(), v.as_bytes())?;
    tx.commit()
}

/// Not a test on its own: the body of the child process the crash test SIGKILLs (it runs it
/// with `--ignored`). It commits from several threads forever and prints `ack <thread> <n>`
/// after each acknowledged commit.
#[test]
#[ignore = "the crash test's child process; run only by crash_rounds"]
fn crash_child_process_entry() {
    let dir = std::env::var(CHILD_ENV).expect("run by crash_rounds, which names the data dir");
    let mut opts = Options::default().checkpoint_wal_bytes(32 << 10);
    if std::env::var(CHILD_MODE_ENV).as_deref() == Ok("periodic") {
        opts = opts.durability(Durability::Periodic(Duration::from_millis(20)));
    }
    let db = Db::open_with(Path::new(&dir), opts).expect("child open");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|t| {
            let db = db.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut n = get_u64(&db, &format!("{t}/x"));
                loop {
                    n += 1;
                    child_commit(&db, t, n).expect("child commit");
                    let mut o = out.lock().expect("stdout");
                    writeln!(o, "ack {t} {n}").expect("stdout");
                    o.flush().expect("stdout");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// `acked` = None: periodic mode, where acknowledged commits may be lost but only as a suffix.
fn check_invariants(db: &Db, acked: Option<&HashMap<u64, u64>>) {
    for t in 0..CHILD_THREADS {
        let x = get_u64(db, &format!("{t}/x"));
        let y = get_u64(db, &format!("{t}/y"));
        assert_eq!(x, y, "writer {t}: multi-key commit half applied");
        if let Some(acked) = acked {
            let a = acked.get(&t).copied().unwrap_or(0);
            assert!(x >= a, "writer {t}: acknowledged commit {a} lost (have {x})");
            assert!(x <= a + 1, "writer {t}: at most one unacknowledged commit in flight");
        }
        for j in 0..10u64 {
            let want = (1..=x).rev().find(|n| n % 10 == j).unwrap_or(0);
            assert_eq!(get_u64(db, &format!("{t}/slot{j}")), want, "writer {t} slot {j}");
        }
    }
}

#[test]
fn acknowledged_commits_survive_sigkill_and_nothing_is_half_applied() {
    crash_rounds(false);
}

#[test]
fn periodic_mode_loses_only_a_suffix_of_whole_commits_after_sigkill() {
    crash_rounds(true);
}

fn crash_rounds(periodic: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut rng = rand::rng();
    for round in 0..4 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child_process_entry", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(CHILD_MODE_ENV, if periodic { "periodic" } else { "fsync" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut it = line.split_whitespace();
                    if it.next() != Some("ack") {
                        continue;
                    }
                    let t: u64 = it.next().and_then(|s| s.parse().ok()).expect("thread");
                    let n: u64 = it.next().and_then(|s| s.parse().ok()).expect("n");
                    seen.lock().expect("seen").push((t, n));
                }
            })
        };
        // Wait for the child to get going, then kill it at a random point.
        let start = Instant::now();
        while seen.lock().expect("seen").len() < 20 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        let seen = seen.lock().expect("seen").clone();
        assert!(!seen.is_empty(), "round {round}: child acknowledged nothing");
        eprintln!("round {round}: {} acknowledged commits before SIGKILL", seen.len());
        for (t, n) in seen {
            let a = acked.entry(t).or_default();
            *a = (*a).max(n);
        }
        let db = Db::open(dir.path()).expect("reopen after crash");
        check_invariants(&db, (!periodic).then_some(&acked));
        // The next round continues from what survived, so ack numbers may repeat: reset to it.
        for t in 0..CHILD_THREADS {
            acked.insert(t, get_u64(&db, &format!("{t}/x")));
        }
        db.close().expect("close");
    }
}

fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("wal-")))
        .collect();
    v.sort();
    v
}

/// Commits `n` single-key transactions `k<i> = v<i>` and closes; returns the WAL segment.
fn ten_commits(dir: &Path, n: usize) -> PathBuf {
    let db = Db::open(dir).expect("open");
    for i in 0..n {
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).unwrap();
        tx.commit().unwrap();
    }
    db.close().unwrap();
    wal_segments(dir)
        .into_iter()
        .rev()
        .find(|p| fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .expect("a non-empty segment")
}

#[test]
fn a_torn_wal_tail_is_dropped_and_the_rest_recovers() {
    for cut in [1u64, 5, 17] {
        let dir = tempfile::tempdir().unwrap();
        let seg = ten_commits(dir.path(), 10);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - cut).unwrap();
        let db = Db::open(dir.path()).expect("open after torn tail");
        assert_eq!(get(&db, "k9"), None, "the torn record is dropped");
        assert_eq!(get(&db, "k8").as_deref(), Some("v8"));
        assert!(db.stats().recovered_torn_tail_bytes > 0);
        // New commits after recovery go on normally and survive another reopen.
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(b"after", b"1").unwrap();
        tx.commit().unwrap();
        db.close().unwrap();
        let db = Db::open(dir.path()).expect("second reopen");
        assert_eq!(get(&db, "after").as_deref(), Some("1"));
        assert_eq!(get(&db, "k8").as_deref(), Some("v8"));
    }
}

/// A file's length without its trailing zeros (0 for a file a checkpoint removed meanwhile).
fn data_end(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap_or_default();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last as u64 + 1)
}

#[test]
fn the_wal_writes_into_preallocated_space_and_its_zeros_are_no_torn_tail_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).expect("open");
    for i in 0..10 {
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).unwrap();
        tx.commit().unwrap();
    }
    // What a power failure now leaves: every commit was acknowledged, so it is on disk.
    let crashed = tempfile::tempdir().unwrap();
    for path in wal_segments(dir.path()) {
        fs::copy(&path, crashed.path().join(path.file_name().unwrap())).unwrap();
    }
    let segment = wal_segments(crashed.path()).pop().expect("a segment");
    let (len, logged) = (fs::metadata(&segment).unwrap().len(), data_end(&segment));
    assert!(len >= logged + (512 << 10), "the segment in use is preallocated: {len} bytes, {logged} logged");
    let recovered = Db::open(crashed.path()).expect("open after the crash");
    assert_eq!(recovered.stats().recovered_commits, 10);
    assert_eq!(recovered.stats().recovered_torn_tail_bytes, 0, "preallocated zeros are not a torn tail");
    assert_eq!(get(&recovered, "k9").as_deref(), Some("v9"));
    assert_eq!(fs::metadata(&segment).unwrap().len(), logged, "recovery cut the zeros");
    recovered.close().unwrap();
    // A clean stop leaves none.
    db.close().unwrap();
    for path in wal_segments(dir.path()) {
        assert_eq!(fs::metadata(&path).unwrap().len(), data_end(&path), "{} ends at its last batch", path.display());
    }
}

#[test]
fn a_last_segment_of_a_header_and_preallocated_zeros_is_removed_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).expect("open");
    let mut tx = db.begin(Isolation::Snapshot);
    tx.put(b"k", b"v").unwrap();
    tx.commit().unwrap();
    db.close().unwrap();
    // What a crash leaves right after a rotation created and allocated the next segment,
    // before its first batch: a valid 20-byte header, then zeros.
    let last = wal_segments(dir.path()).pop().expect("a segment");
    let header = fs::read(&last).unwrap()[..20].to_vec();
    let name = last.file_name().unwrap().to_str().unwrap();
    let seq: u64 = name.trim_start_matches("wal-").trim_end_matches(".log").parse().unwrap();
    let empty = dir.path().join(format!("wal-{:020}.log", seq + 1));
    assert_ne!(empty, last);
    fs::write(&empty, [header, vec![0; 1 << 20]].concat()).unwrap();
    let recovered = Db::open(dir.path()).expect("open after the crash");
    assert!(!empty.exists(), "a segment that never got a record is removed, zeros and all");
    assert_eq!(recovered.stats().recovered_torn_tail_bytes, 0);
    assert_eq!(get(&recovered, "k").as_deref(), Some("v"));
    recovered.close().unwrap();
}

#[test]
fn a_flipped_byte_in_the_last_record_drops_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten_commits(dir.path(), 10);
    let mut b = fs::read(&seg).unwrap();
    let last = b.len() - 2;
    b[last] ^= 0x40;
    fs::write(&seg, &b).unwrap();
    let db = Db::open(dir.path()).expect("open");
    assert_eq!(get(&db, "k9"), None);
    assert_eq!(get(&db, "k8").as_deref(), Some("v8"));
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_reported_as_corruption() {
    // The segment header (20 bytes: magic, salt, checksum), then one batch per commit.
    for (at, reported) in [(2usize, 0u64), (10, 0), (18, 0), (22, 20), (26, 20), (40, 20)] {
        let dir = tempfile::tempdir().unwrap();
        let seg = ten_commits(dir.path(), 10);
        let mut b = fs::read(&seg).unwrap();
        b[at] ^= 0x01;
        fs::write(&seg, &b).unwrap();
        match Db::open(dir.path()) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, reported, "flip at {at}"),
            other => panic!("expected Corrupt for flip at {at}, got {other:?}"),
        }
    }
}

#[test]
fn checkpoints_truncate_the_wal_and_recovery_combines_checkpoint_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().checkpoint_wal_bytes(0);
    let db = Db::open_with(dir.path(), opts.clone()).unwrap();
    for i in 0..200 {
        let mut tx = db.begin(Isolation::Serializable);
        tx.put(format!("k{i:03}").as_bytes(), format!("a{i}").as_bytes()).unwrap();
        tx.commit().unwrap();
    }
    let mut tx = db.begin(Isolation::Snapshot);
    tx.delete(b"k000").unwrap();
    tx.commit().unwrap();
    let before = wal_segments(dir.path()).len();
    let stamp = db.checkpoint().unwrap();
    assert!(stamp >= 201);
    let segs = wal_segments(dir.path());
    assert_eq!(segs.len(), 1, "covered segments deleted (had {before})");
    for i in 100..150 {
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(format!("k{i:03}").as_bytes(), format!("b{i}").as_bytes()).unwrap();
        tx.delete(format!("k{:03}", i + 50).as_bytes()).unwrap();
        tx.commit().unwrap();
    }
    db.close().unwrap();
    let db = Db::open_with(dir.path(), opts).unwrap();
    assert_eq!(get(&db, "k000"), None);
    assert_eq!(get(&db, "k050").as_deref(), Some("a50"));
    assert_eq!(get(&db, "k120").as_deref(), Some("b120"));
    assert_eq!(get(&db, "k170"), None);
    assert_eq!(get(&db, "k199"), None);
    assert_eq!(get(&db, "k149").as_deref(), Some("b149"));
    let all = db.begin(Isolation::Snapshot).scan(b"", b"", usize::MAX).unwrap();
    assert_eq!(all.len(), 199 - 50);
    // Stamps keep increasing across restarts.
    let mut tx = db.begin(Isolation::Snapshot);
    tx.put(b"z", b"1").unwrap();
    assert!(tx.commit().unwrap() > stamp);
}

#[test]
fn a_checkpoint_before_close_leaves_the_next_open_no_log_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().checkpoint_wal_bytes(0);
    let db = Db::open_with(dir.path(), opts.clone()).unwrap();
    assert_eq!(db.checkpoint_if_behind().unwrap(), None, "a fresh database has nothing to checkpoint");
    for i in 0..100 {
        let mut tx = db.begin(Isolation::Serializable);
        tx.put(format!("k{i:03}").as_bytes(), format!("v{i}").as_bytes()).unwrap();
        tx.commit().unwrap();
    }
    let stamp = db.checkpoint_if_behind().unwrap().expect("100 commits logged since the last checkpoint");
    assert!(stamp >= 100);
    assert_eq!(db.checkpoint_if_behind().unwrap(), None, "nothing logged since");
    db.close().unwrap();
    let db = Db::open_with(dir.path(), opts.clone()).unwrap();
    assert_eq!(get(&db, "k099").as_deref(), Some("v99"));
    assert_eq!(db.begin(Isolation::Snapshot).scan(b"", b"", usize::MAX).unwrap().len(), 100);
    assert_eq!(db.stats().recovered_commits, 0, "the open replayed no log");
    assert_eq!(db.checkpoint_if_behind().unwrap(), None, "and has nothing to checkpoint");
    // Without the checkpoint, the next open replays what was logged, and says so.
    for i in 0..30 {
        let mut tx = db.begin(Isolation::Serializable);
        tx.put(format!("n{i:03}").as_bytes(), b"x").unwrap();
        tx.commit().unwrap();
    }
    db.close().unwrap();
    let db = Db::open_with(dir.path(), opts).unwrap();
    let stats = db.stats();
    assert_eq!(stats.recovered_commits, 30);
    assert!(stats.recovered_wal_bytes > 30 * 4, "{stats:?}");
    assert_eq!(db.begin(Isolation::Snapshot).scan(b"", b"", usize::MAX).unwrap().len(), 130);
}

#[test]
fn automatic_checkpoints_keep_the_wal_small() {
    let dir = tempfile::tempdir().unwrap();
    let opts = periodic().checkpoint_wal_bytes(16 << 10).maintenance_interval(Duration::from_millis(5));
    let db = Db::open_with(dir.path(), opts.clone()).unwrap();
    for i in 0..3000u32 {
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(format!("k{}", i % 300).as_bytes(), &[i as u8; 200]).unwrap();
        tx.commit().unwrap();
    }
    // The maintenance thread checkpoints on its own; wait (bounded) until it has caught up.
    // The log's bytes, without the zeros preallocated past the last batch of the segment in use.
    let on_disk = || -> u64 { wal_segments(dir.path()).iter().map(|p| data_end(p)).sum() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while (db.stats().checkpoints == 0 || on_disk() > db.stats().wal_bytes / 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Measured before close: closing may start a fresh segment, which is not what this checks.
    let (st, wal_bytes) = (db.stats(), on_disk());
    db.close().unwrap();
    assert!(st.checkpoints > 0);
    assert!(wal_bytes <= st.wal_bytes / 2, "WAL is {wal_bytes} of {} bytes written", st.wal_bytes);
    let db = Db::open_with(dir.path(), opts).unwrap();
    let mut tx = db.begin(Isolation::Snapshot);
    assert_eq!(tx.get(b"k299").unwrap(), Some(vec![2999u32 as u8; 200]));
}

#[test]
fn fsync_mode_shares_fsyncs_between_concurrent_committers() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let mut tx = db.begin(Isolation::Snapshot);
                    tx.put(format!("{t}/{i}").as_bytes(), b"v").unwrap();
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = db.stats();
    assert_eq!(st.committed, 400);
    // 16 committers at once: group commit must share fsyncs (on average at least two commits per
    // fsync); one fsync per commit would be 400.
    assert!(st.wal_fsyncs > 0 && st.wal_fsyncs < 200, "fsyncs were not shared: {st:?}");
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.begin(Isolation::Snapshot).scan(b"", b"", usize::MAX).unwrap().len(), 400);
}

#[test]
fn periodic_mode_acknowledges_without_waiting_and_flushes_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), Options::default().durability(Durability::Periodic(Duration::from_secs(3600))))
        .unwrap();
    for i in 0..500 {
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(format!("k{i}").as_bytes(), b"v").unwrap();
        tx.commit().unwrap();
    }
    // An hour-long interval: nothing has been fsynced yet.
    assert_eq!(db.stats().wal_fsyncs, 0);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.begin(Isolation::Snapshot).scan(b"", b"", usize::MAX).unwrap().len(), 500);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert!(matches!(Db::open(dir.path()), Err(Error::Locked(_))));
    db.close().unwrap();
    Db::open(dir.path()).expect("open after close");
}

#[test]
fn version_chains_stay_short_under_100k_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), periodic()).unwrap();
    let mut max_live = 0;
    for i in 0..100_000u32 {
        let mut tx = db.begin(Isolation::Serializable);
        let k = [b'k', (i % 4) as u8];
        let _ = tx.get(&k).unwrap();
        tx.put(&k, &i.to_le_bytes()).unwrap();
        tx.commit().unwrap();
        if i % 1000 == 0 {
            max_live = max_live.max(db.stats().live_versions);
        }
    }
    let st = db.stats();
    assert!(max_live <= 12, "live versions grew to {max_live}");
    assert!(st.live_versions <= 12, "{st:?}");
    assert!(st.gc_pruned_versions >= 99_000);
}

#[test]
fn an_open_snapshot_pins_versions_until_it_ends_and_dead_tombstones_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), periodic()).unwrap();
    let mut w = db.begin(Isolation::Snapshot);
    w.put(b"k", b"0").unwrap();
    w.commit().unwrap();
    let mut old = db.begin(Isolation::Snapshot);
    for i in 1..=100u32 {
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(b"k", &i.to_le_bytes()).unwrap();
        tx.commit().unwrap();
    }
    assert!(db.stats().live_versions >= 100);
    assert_eq!(old.get(b"k").unwrap(), Some(b"0".to_vec()));
    drop(old);
    db.gc();
    assert_eq!(db.stats().live_versions, 1);

    let mut tx = db.begin(Isolation::Snapshot);
    for i in 0..50u32 {
        tx.put(&i.to_le_bytes(), b"x").unwrap();
    }
    tx.commit().unwrap();
    let mut tx = db.begin(Isolation::Snapshot);
    for i in 0..50u32 {
        tx.delete(&i.to_le_bytes()).unwrap();
    }
    tx.commit().unwrap();
    db.gc();
    let st = db.stats();
    assert_eq!(st.keys, 1, "only k is left: {st:?}");
    assert_eq!(st.live_versions, 1);
}

#[test]
fn async_commits_share_fsyncs_and_resolve_only_when_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let tasks = (0..32u32).map(|t| {
        let db = db.clone();
        async move {
            for i in 0..10u32 {
                let mut tx = db.begin(Isolation::Serializable);
                tx.put(format!("{t}/{i}").as_bytes(), b"v").unwrap();
                let ticket = tx.commit_async().unwrap();
                let stamp = ticket.stamp();
                assert_eq!(ticket.await.unwrap(), stamp);
            }
        }
    });
    futures::executor::block_on(futures::future::join_all(tasks));
    let st = db.stats();
    assert_eq!(st.committed, 320);
    assert!(st.wal_fsyncs < 320, "32 concurrent tasks shared fsyncs: {st:?}");
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.begin(Isolation::Snapshot).scan(b"", b"", usize::MAX).unwrap().len(), 320);
}

/// Waits (bounded) for the maintenance thread's first checkpoint.
fn wait_for_checkpoint(db: &Db) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.stats().checkpoints == 0 {
        assert!(Instant::now() < deadline, "no checkpoint happened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_log_of_earlier_runs_counts_toward_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().checkpoint_wal_bytes(16 << 10).maintenance_interval(Duration::from_millis(5));
    let run = |from: usize| {
        let db = Db::open_with(dir.path(), opts()).expect("open");
        for i in from..from + 10 {
            let mut tx = db.begin(Isolation::Snapshot);
            tx.put(format!("k{i}").as_bytes(), &[7u8; 1000]).unwrap();
            tx.commit().unwrap();
        }
        db
    };
    let first = run(0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(first.stats().checkpoints, 0, "10 KB of log is under the 16 KB cadence");
    first.close().unwrap();
    drop(first);
    let second = run(10);
    wait_for_checkpoint(&second);
    second.close().unwrap();
}

#[test]
fn a_node_that_restarts_often_checkpoints_instead_of_piling_up_segments() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let db =
            Db::open_with(dir.path(), Options::default().maintenance_interval(Duration::from_millis(5))).expect("open");
        let mut tx = db.begin(Isolation::Snapshot);
        tx.put(format!("k{i}").as_bytes(), b"v").unwrap();
        tx.commit().unwrap();
        if wal_segments(dir.path()).len() > 16 {
            wait_for_checkpoint(&db);
        }
        db.close().unwrap();
    }
    assert!(wal_segments(dir.path()).len() <= 17, "segments: {}", wal_segments(dir.path()).len());
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(get(&db, "k0").as_deref(), Some("v"));
    assert_eq!(get(&db, "k19").as_deref(), Some("v"));
}
