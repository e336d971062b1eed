//! Counters the host exports as metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A point-in-time copy of the database's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Transactions committed (read-only ones included).
    pub committed: u64,
    /// Aborts by first-committer-wins write conflicts.
    pub aborted_write_conflict: u64,
    /// Aborts by the SSN exclusion test.
    pub aborted_ssn: u64,
    /// Aborts by scanned-range (phantom) validation.
    pub aborted_phantom: u64,
    /// Transactions with buffered writes dropped or aborted by the caller without committing
    /// (a read-only transaction that ends without a commit is not counted).
    pub aborted_by_caller: u64,
    /// WAL fsyncs performed.
    pub wal_fsyncs: u64,
    /// Total nanoseconds spent in WAL fsyncs.
    pub wal_fsync_nanos: u64,
    /// WAL bytes written since open.
    pub wal_bytes: u64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    /// Versions currently linked into version chains.
    pub live_versions: u64,
    /// Keys in the index (tombstoned keys not yet collected included).
    pub keys: u64,
    /// Versions pruned by GC since open.
    pub gc_pruned_versions: u64,
    /// Transactions (and checkpoints) currently holding a snapshot.
    pub active_snapshots: u64,
    /// Bytes of torn WAL tail dropped by recovery when this database was opened.
    pub recovered_torn_tail_bytes: u64,
    /// WAL bytes recovery replayed when this database was opened (every segment since the last
    /// checkpoint, up to its last whole batch).
    pub recovered_wal_bytes: u64,
    /// Times the WAL could not allocate a segment's space ahead (a full disk, a file system
    /// without it) and went on growing the file instead, until the next segment.
    pub wal_allocation_failures: u64,
    /// Commits past the last checkpoint that recovery replayed when this database was opened.
    pub recovered_commits: u64,
    /// How long recovery (checkpoint and WAL) took when this database was opened, in µs.
    pub recovery_micros: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub committed: AtomicU64,
    pub aborted_write_conflict: AtomicU64,
    pub aborted_ssn: AtomicU64,
    pub aborted_phantom: AtomicU64,
    pub aborted_by_caller: AtomicU64,
    pub wal_fsyncs: AtomicU64,
    pub wal_fsync_nanos: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_allocation_failures: AtomicU64,
    pub checkpoints: AtomicU64,
    pub gc_pruned_versions: AtomicU64,
    pub recovered_torn_tail_bytes: AtomicU64,
    pub recovered_wal_bytes: AtomicU64,
    pub recovered_commits: AtomicU64,
    pub recovery_micros: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self, live_versions: u64, keys: u64, active_snapshots: u64) -> Stats {
        Stats {
            committed: self.committed.load(Relaxed),
            aborted_write_conflict: self.aborted_write_conflict.load(Relaxed),
            aborted_ssn: self.aborted_ssn.load(Relaxed),
            aborted_phantom: self.aborted_phantom.load(Relaxed),
            aborted_by_caller: self.aborted_by_caller.load(Relaxed),
            wal_fsyncs: self.wal_fsyncs.load(Relaxed),
            wal_fsync_nanos: self.wal_fsync_nanos.load(Relaxed),
            wal_bytes: self.wal_bytes.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            live_versions,
            keys,
            gc_pruned_versions: self.gc_pruned_versions.load(Relaxed),
            active_snapshots,
            recovered_torn_tail_bytes: self.recovered_torn_tail_bytes.load(Relaxed),
            recovered_wal_bytes: self.recovered_wal_bytes.load(Relaxed),
            wal_allocation_failures: self.wal_allocation_failures.load(Relaxed),
            recovered_commits: self.recovered_commits.load(Relaxed),
            recovery_micros: self.recovery_micros.load(Relaxed),
        }
    }
}
