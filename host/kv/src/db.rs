//! The database handle: open/recover, background threads, checkpoints, GC, close.
//!
//! Threads: one WAL flusher (group commit, see [`crate::wal`]) and one maintenance thread
//! (checkpoints when the WAL grows past [`Options::checkpoint_wal_bytes`], tombstone collection,
//! a periodic full GC sweep). Both hold an `Arc<Shared>`; the user-facing [`Db`] handles share
//! one `Arc<Handle>` whose `Drop` closes the database, so dropping the last `Db` flushes cleanly
//! even while transactions (which hold only `Arc<Shared>`) are still alive.
//!
//! Invariant: the commit lock serialises installs, WAL appends, stamp allocation, key unlinking
//! and checkpoint cuts; nothing holds it across I/O except the in-memory WAL append.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::checkpoint;
use crate::error::Error;
use crate::fs::{DirLock, Fs, RealFs};
use crate::gc::{Snapshots, Tombstones};
use crate::mvcc::Store;
use crate::options::{Isolation, Options};
use crate::recovery;
use crate::space::Usage;
use crate::ssn::ScanLog;
use crate::stats::{Counters, Stats};
use crate::tx::Tx;
use crate::wal::{self, Wait, Wal};

/// A database opened on this many WAL segments (left by as many runs since the last
/// checkpoint) checkpoints right away, whatever their size.
const CHECKPOINT_AFTER_SEGMENTS: usize = 16;

/// State guarded by the commit lock.
#[derive(Debug)]
pub(crate) struct CommitState {
    /// The next commit stamp to hand out.
    pub next_stamp: u64,
    /// Ranges read by committed Serializable transactions.
    pub scans: ScanLog,
    /// Live bytes per keyspace and in total.
    pub usage: Usage,
}

/// Everything transactions and background threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub opts: Options,
    pub store: Store,
    pub commit: Mutex<CommitState>,
    /// Stamp of the newest installed write commit: new snapshots start here.
    pub visible: AtomicU64,
    pub snapshots: Snapshots,
    pub tombstones: Tombstones,
    pub wal: Wal,
    pub counters: Counters,
    pub closed: AtomicBool,
    checkpointing: Mutex<()>,
    /// Wakes the maintenance thread early (close, explicit checkpoint requests).
    pub(crate) maint: (Mutex<bool>, Condvar),
}

/// The closing part of a [`Db`]; dropped when the last handle goes.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Holds the directory's lock until close.
    lock: Mutex<Option<DirLock>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        close_handle(self);
    }
}

/// A transactional key-value database. Cheap to clone; all clones share one engine.
#[derive(Debug, Clone)]
pub struct Db {
    handle: Arc<Handle>,
}

impl Db {
    /// Opens (creating if needed) the database in `dir` with default options: fsync per commit
    /// group.
    pub fn open(dir: &Path) -> Result<Db, Error> {
        Db::open_with(dir, Options::default())
    }

    /// Opens (creating if needed) the database in `dir`: recovers the latest checkpoint and
    /// replays the WAL, truncating a torn tail.
    pub fn open_with(dir: &Path, opts: Options) -> Result<Db, Error> {
        let fs = opts.fs.clone();
        fs.create_dir_all(dir)?;
        let lock = fs.lock(dir)?;
        let recovering = std::time::Instant::now();
        let rec = recovery::recover(&*fs, dir)?;
        let recovery_micros = recovering.elapsed().as_micros() as u64;
        let segment = wal::create_segment(&*fs, dir, rec.next_segment)?;
        let last = rec.last_stamp;
        let usage = Usage::count(&rec.store, opts.keyspace_of, opts.unbudgeted_prefix);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            store: rec.store,
            commit: Mutex::new(CommitState { next_stamp: last + 1, scans: ScanLog::default(), usage }),
            visible: AtomicU64::new(last),
            snapshots: Snapshots::new(last),
            tombstones: Tombstones::default(),
            wal: Wal::new(last, rec.next_segment, opts.wal_preallocate),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            checkpointing: Mutex::new(()),
            maint: (Mutex::new(false), Condvar::new()),
            opts,
        });
        Counters::bump(&shared.counters.recovered_torn_tail_bytes, rec.truncated_bytes);
        Counters::bump(&shared.counters.recovered_wal_bytes, rec.wal_bytes);
        Counters::bump(&shared.counters.recovered_commits, rec.wal_commits);
        Counters::bump(&shared.counters.recovery_micros, recovery_micros);
        // The log replayed now counts toward the next checkpoint, and many segments (every open
        // starts one) call for one at once: a node that restarts often must not replay an
        // ever longer log.
        let limit = shared.opts.checkpoint_wal_bytes;
        let due = limit > 0 && rec.wal_segments >= CHECKPOINT_AFTER_SEGMENTS;
        shared.wal.bytes_since_checkpoint.store(if due { limit } else { rec.wal_bytes }, Ordering::Relaxed);
        let s = shared.clone();
        let dir_owned = dir.to_path_buf();
        let flusher = std::thread::Builder::new()
            .name("ledge-kv-wal".into())
            .spawn(move || s.wal.run_flusher(&*s.opts.fs, &dir_owned, segment, s.opts.durability, &s.counters))?;
        let s = shared.clone();
        let maint = std::thread::Builder::new().name("ledge-kv-maint".into()).spawn(move || maintenance(&s))?;
        Ok(Db {
            handle: Arc::new(Handle {
                shared,
                threads: Mutex::new(vec![flusher, maint]),
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// Starts a transaction reading the latest committed snapshot.
    pub fn begin(&self, iso: Isolation) -> Tx {
        Tx::new(self.handle.shared.clone(), iso)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        let s = &self.handle.shared;
        s.counters.snapshot(s.store.live_versions(), s.store.key_count() as u64, s.snapshots.active() as u64)
    }

    /// Bytes of live data (keys plus values) per keyspace, in key order, as
    /// [`Options::keyspace_of`] names them; keyspaces holding nothing are left out.
    pub fn keyspace_bytes(&self) -> Vec<(Vec<u8>, u64)> {
        self.handle.shared.commit.lock().usage.keyspaces()
    }

    /// Bytes of live data in one keyspace.
    pub fn bytes_in(&self, keyspace: &[u8]) -> u64 {
        self.handle.shared.commit.lock().usage.bytes(keyspace)
    }

    /// Bytes of live data in the whole database.
    pub fn live_bytes(&self) -> u64 {
        self.handle.shared.commit.lock().usage.total()
    }

    /// The directory this database lives in.
    pub fn path(&self) -> &Path {
        &self.handle.shared.dir
    }

    /// Writes a checkpoint now and deletes the WAL segments it covers. Returns its stamp.
    pub fn checkpoint(&self) -> Result<u64, Error> {
        checkpoint_now(&self.handle.shared)
    }

    /// Writes a checkpoint if commits were logged since the last one (what [`Db::checkpoint`]
    /// does, for a database about to close: the next open then replays no WAL). Returns the
    /// checkpoint's stamp, or `None` when the WAL held nothing new.
    pub fn checkpoint_if_behind(&self) -> Result<Option<u64>, Error> {
        if self.handle.shared.wal.bytes_since_checkpoint.load(Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        self.checkpoint().map(Some)
    }

    /// Makes every commit so far durable now, whatever the durability mode (in
    /// [`crate::Durability::Periodic`] mode commits are otherwise written once per interval).
    pub fn flush(&self) -> Result<(), Error> {
        let s = &self.handle.shared;
        let stamp = s.visible.load(Ordering::Acquire);
        s.wal.request_flush();
        s.wal.wait_durable(stamp, Wait::Other).map_err(Error::WalFailed)
    }

    /// Writes a consistent image of the database (every commit up to one stamp, in the
    /// checkpoint format) to `out` while commits go on; returns that stamp. Only durable commits
    /// are in it. [`Db::restore`] makes a new database from it.
    pub fn backup(&self, out: impl Write) -> Result<u64, Error> {
        let s = &self.handle.shared;
        let stamp = s.snapshots.register(&s.visible);
        let written = s.wal.wait_durable(stamp, Wait::Other).map_err(Error::WalFailed).and_then(|()| {
            checkpoint::write_image(out, stamp, image_entries(s, stamp))?.flush()?;
            Ok(stamp)
        });
        s.snapshots.release(stamp, &s.visible);
        written
    }

    /// Makes `dir` a database holding exactly the image [`Db::backup`] wrote, after verifying
    /// it; returns its stamp. Refuses a directory that already holds a database.
    pub fn restore(dir: &Path, image: &[u8]) -> Result<u64, Error> {
        let stamp = checkpoint::parse(image, Path::new("(backup image)"))?.stamp;
        let fs = RealFs;
        fs.create_dir_all(dir)?;
        let _lock = fs.lock(dir)?;
        let existing = fs.list(dir)?;
        if existing
            .iter()
            .any(|n| wal::parse_segment_name(n).is_some() || checkpoint::parse_checkpoint_name(n).is_some())
        {
            return Err(Error::NotEmpty(dir.to_path_buf()));
        }
        checkpoint::install_image(&fs, dir, stamp, image)?;
        Ok(stamp)
    }

    /// Runs a full GC pass now: prunes every chain to the horizon and unlinks dead tombstones.
    /// Returns the number of versions removed.
    pub fn gc(&self) -> usize {
        full_gc(&self.handle.shared)
    }

    /// Flushes the WAL, stops the background threads and releases the directory. Further
    /// commits fail with [`crate::TxError::Closed`]. Idempotent; dropping the last handle does
    /// the same.
    pub fn close(&self) -> Result<(), Error> {
        close_handle(&self.handle);
        match self.handle.shared.wal.failure() {
            Some(e) => Err(Error::WalFailed(e)),
            None => Ok(()),
        }
    }
}

fn close_handle(h: &Handle) {
    let s = &h.shared;
    {
        // Under the commit lock: no commit can append after the flusher's final flush.
        let _c = s.commit.lock();
        s.closed.store(true, Ordering::Release);
    }
    s.wal.shutdown();
    *s.maint.0.lock() = true;
    s.maint.1.notify_all();
    let threads: Vec<_> = h.threads.lock().drain(..).collect();
    for t in threads {
        // A panicked background thread has nothing left to clean up; keep closing.
        let _ = t.join();
    }
    h.lock.lock().take();
}

/// Background loop: checkpoints on WAL growth, tombstone collection, periodic full GC.
fn maintenance(s: &Shared) {
    let mut ticks = 0u64;
    loop {
        {
            let mut stop = s.maint.0.lock();
            if !*stop {
                s.maint.1.wait_for(&mut stop, s.opts.maintenance_interval);
            }
            if *stop {
                return;
            }
        }
        ticks += 1;
        let limit = s.opts.checkpoint_wal_bytes;
        if limit > 0 && s.wal.bytes_since_checkpoint.load(Ordering::Relaxed) >= limit {
            // A failed checkpoint leaves the old one and the WAL in place; try again later.
            let _ = checkpoint_now(s);
        }
        collect_tombstones(s);
        // A full sweep walks every key: only when chains hold noticeably more versions than
        // there are keys (cold keys overwritten while an old snapshot was open).
        if ticks.is_multiple_of(40) && s.store.live_versions() > s.store.key_count() as u64 * 5 / 4 + 1024 {
            full_gc(s);
        }
    }
}

/// Unlinks queued tombstoned keys that every snapshot sees as deleted; counts the versions it
/// removes in `gc_pruned_versions` and returns them.
pub(crate) fn collect_tombstones(s: &Shared) -> usize {
    if s.tombstones.len() == 0 {
        return 0;
    }
    let h = s.snapshots.refresh(&s.visible);
    let ready = s.tombstones.take_ready(h);
    if ready.is_empty() {
        return 0;
    }
    let _c = s.commit.lock();
    let removed = ready.iter().map(|k| s.store.remove_if_dead(k, h)).sum();
    Counters::bump(&s.counters.gc_pruned_versions, removed as u64);
    removed
}

fn full_gc(s: &Shared) -> usize {
    let h = s.snapshots.refresh(&s.visible);
    let mut n = 0;
    for e in s.store.iter() {
        n += s.store.prune_entry(&e, h);
    }
    Counters::bump(&s.counters.gc_pruned_versions, n as u64);
    n + collect_tombstones(s)
}

/// Writes a checkpoint of the state at the current visible stamp, then drops covered segments.
fn checkpoint_now(s: &Shared) -> Result<u64, Error> {
    // One checkpoint at a time (the maintenance thread and `Db::checkpoint` may race).
    let _one = s.checkpointing.lock();
    if s.closed.load(Ordering::Acquire) {
        return Err(Error::Closed);
    }
    // Cut: the snapshot stamp and the segment switch happen together under the commit lock, so
    // every record <= stamp lands in a segment older than the new one.
    let (stamp, new_seg) = {
        let _c = s.commit.lock();
        let stamp = s.snapshots.register(&s.visible);
        (stamp, s.wal.request_rotate())
    };
    let res = (|| {
        s.wal.wait_segment(new_seg).map_err(Error::WalFailed)?;
        checkpoint::write(&*s.opts.fs, &s.dir, stamp, image_entries(s, stamp))?;
        s.wal.bytes_since_checkpoint.store(0, Ordering::Relaxed);
        delete_covered(&*s.opts.fs, &s.dir, stamp, new_seg)?;
        Counters::bump(&s.counters.checkpoints, 1);
        Ok(stamp)
    })();
    s.snapshots.release(stamp, &s.visible);
    res
}

/// The live entries of the state at `stamp`, in key order, as a checkpoint stores them.
fn image_entries(s: &Shared, stamp: u64) -> impl Iterator<Item = (u64, Vec<u8>, Box<[u8]>)> + '_ {
    s.store.iter().filter_map(move |e| {
        let v = e.value().visible(stamp)?;
        let val = v.value.clone()?;
        Some((v.cstamp, e.key().clone(), val))
    })
}

/// Deletes segments older than `new_seg` and checkpoints older than `stamp`.
fn delete_covered(fs: &dyn Fs, dir: &Path, stamp: u64, new_seg: u64) -> Result<(), Error> {
    for name in fs.list(dir)? {
        let old_seg = wal::parse_segment_name(&name).is_some_and(|q| q < new_seg);
        let old_ckpt = checkpoint::parse_checkpoint_name(&name).is_some_and(|q| q < stamp);
        if old_seg || old_ckpt {
            fs.remove(&dir.join(name))?;
        }
    }
    fs.sync_dir(dir)?;
    Ok(())
}
