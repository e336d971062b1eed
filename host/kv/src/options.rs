//! Configuration: isolation levels, durability modes and limits.

use std::sync::Arc;
use std::time::Duration;

use crate::fs::{Fs, RealFs};
use crate::space::KeyspaceOf;

/// Isolation level of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Snapshot isolation: reads see the snapshot taken at `begin`; write-write conflicts abort the
    /// later committer (first-committer-wins). Admits write skew and the read-only anomaly.
    Snapshot,
    /// Snapshot isolation certified by the Serial Safety Net plus scanned-range (phantom)
    /// validation: every committed history of Serializable transactions is conflict-serializable.
    Serializable,
}

/// When a commit counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `commit` returns only after the commit's WAL record is on stable storage. Concurrent
    /// committers share one fsync (group commit).
    Fsync,
    /// `commit` returns once the record is in the in-memory WAL buffer; a background thread writes
    /// and fsyncs the buffer every interval. A crash loses at most about one interval of commits,
    /// never a part of one.
    Periodic(Duration),
}

/// Options for [`crate::Db::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Durability mode; default [`Durability::Fsync`].
    pub durability: Durability,
    /// Write a checkpoint (and drop old WAL segments) once this many WAL bytes were written since
    /// the last one; `0` disables automatic checkpoints. Default 64 MiB.
    pub checkpoint_wal_bytes: u64,
    /// How far ahead of its writes the WAL allocates its segment file, in bytes: a commit's
    /// fdatasync then commits no change of the file's size. `0` grows the file with each write.
    /// Default 1 MiB.
    pub wal_preallocate: u64,
    /// Longest accepted key. Default 4 KiB.
    pub max_key_len: usize,
    /// Longest accepted value. Default 1 MiB.
    pub max_value_len: usize,
    /// How often the maintenance thread looks at checkpoint and GC work. Default 50 ms.
    pub maintenance_interval: Duration,
    /// Most bytes (keys plus values) one transaction may buffer for writing. Default 16 MiB.
    pub max_tx_bytes: usize,
    /// Most entries of one transaction's read set (versions read plus ranges and point misses
    /// recorded for certification). Default 100,000.
    pub max_tx_reads: usize,
    /// Most bytes (keys plus values) one scan may return. Default 4 MiB.
    pub max_scan_bytes: usize,
    /// How keys map to keyspaces for space accounting (see [`crate::KeyspaceOf`]); `None`
    /// counts only the total.
    pub keyspace_of: Option<KeyspaceOf>,
    /// Most bytes of live data the database may hold; commits that would grow past it fail
    /// with [`crate::TxError::OutOfSpace`]. Default unlimited.
    pub max_live_bytes: u64,
    /// Keyspaces under this prefix (the host's own records: revocations, kept traces) do not
    /// count toward `max_live_bytes`, so data in the others filling the budget never blocks a
    /// write there; they are still counted in the total and per keyspace (and held to their
    /// quotas). Default none.
    pub unbudgeted_prefix: Option<&'static [u8]>,
    /// The file system the database lives on: the real one, or a test's simulated disk.
    pub(crate) fs: Arc<dyn Fs>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Fsync,
            checkpoint_wal_bytes: 64 << 20,
            wal_preallocate: 1 << 20,
            max_key_len: 4 << 10,
            max_value_len: 1 << 20,
            maintenance_interval: Duration::from_millis(50),
            max_tx_bytes: 16 << 20,
            max_tx_reads: 100_000,
            max_scan_bytes: 4 << 20,
            keyspace_of: None,
            max_live_bytes: u64::MAX,
            unbudgeted_prefix: None,
            fs: Arc::new(RealFs),
        }
    }
}

impl Options {
    /// Sets the durability mode.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the checkpoint cadence in WAL bytes (`0` = never automatically).
    pub fn checkpoint_wal_bytes(mut self, n: u64) -> Self {
        self.checkpoint_wal_bytes = n;
        self
    }

    /// Sets how far ahead the WAL allocates its segment file (`0` = not at all).
    pub fn wal_preallocate(mut self, n: u64) -> Self {
        self.wal_preallocate = n;
        self
    }

    /// Sets how keys map to keyspaces for space accounting.
    pub fn keyspace_of(mut self, f: KeyspaceOf) -> Self {
        self.keyspace_of = Some(f);
        self
    }

    /// Sets the budget of live data in bytes.
    pub fn max_live_bytes(mut self, n: u64) -> Self {
        self.max_live_bytes = n;
        self
    }

    /// Exempts the keyspaces under `prefix` from the budget of live data.
    pub fn unbudgeted_prefix(mut self, prefix: &'static [u8]) -> Self {
        self.unbudgeted_prefix = Some(prefix);
        self
    }

    /// Sets the per-transaction bounds: buffered write bytes, read-set entries, bytes per scan.
    pub fn tx_limits(mut self, max_tx_bytes: usize, max_tx_reads: usize, max_scan_bytes: usize) -> Self {
        self.max_tx_bytes = max_tx_bytes;
        self.max_tx_reads = max_tx_reads;
        self.max_scan_bytes = max_scan_bytes;
        self
    }

    /// Sets the maintenance interval.
    pub fn maintenance_interval(mut self, d: Duration) -> Self {
        self.maintenance_interval = d;
        self
    }
}
