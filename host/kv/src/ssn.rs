//! Serial Safety Net bookkeeping and scanned-range (phantom) validation.
//!
//! The certifier runs in the serial commit section (one short lock, as the SSN notes allow), so
//! every stamp it reads belongs to a transaction that has already committed; the parallel,
//! latch-free commit of ERMIA is not needed for correctness.
//!
//! Per transaction T (`Serializable` only):
//! - `pstamp` η(T) = max of: cstamps of versions T read (w:r), pstamps of versions T overwrites
//!   (w:w and r:w through their committed readers), and cstamps of committed scanners whose range
//!   covers a key T inserts or deletes (r:w through a predicate; SSN alone misses these).
//! - `sstamp` π(T) = min of: T's cstamp and the sstamps of versions T read that were overwritten
//!   by a transaction that committed before T.
//! - Abort if `sstamp <= pstamp`. Then: readers' versions get `pstamp = max(pstamp, cstamp)`,
//!   overwritten versions get `sstamp = π(T)`.
//!
//! Phantoms: a scan records `[start, end)` (or `[start, last returned key]` when it was cut by
//! the limit), and a point read that found nothing records `[key, key]`. At commit, if a key
//! inside such a range changed existence (inserted or deleted) by a commit after T's snapshot, T
//! aborts with [`crate::TxError::Phantom`]. Committed ranges go into [`ScanLog`] so that a later
//! inserter sees its r:w predecessor; entries older than the GC horizon are folded into one
//! conservative floor stamp.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

/// A range a transaction read: `start` inclusive, `end` as recorded.
#[derive(Debug, Clone)]
pub(crate) struct ReadRange {
    pub start: Vec<u8>,
    pub end: Bound<Vec<u8>>,
}

impl ReadRange {
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice()
            && match &self.end {
                Bound::Unbounded => true,
                Bound::Included(e) => key <= e.as_slice(),
                Bound::Excluded(e) => key < e.as_slice(),
            }
    }

    pub(crate) fn end_bound(&self) -> Bound<&[u8]> {
        match &self.end {
            Bound::Unbounded => Bound::Unbounded,
            Bound::Included(e) => Bound::Included(e.as_slice()),
            Bound::Excluded(e) => Bound::Excluded(e.as_slice()),
        }
    }
}

/// Ranges read by recently committed Serializable transactions, with their cstamps.
#[derive(Debug, Default)]
pub(crate) struct ScanLog {
    entries: VecDeque<(u64, Arc<[ReadRange]>)>,
    /// The largest cstamp among entries already folded away.
    floor: u64,
}

impl ScanLog {
    pub(crate) fn push(&mut self, cstamp: u64, ranges: Arc<[ReadRange]>) {
        self.entries.push_back((cstamp, ranges));
    }

    /// The largest cstamp of a committed scanner that may have read the absence or presence of
    /// `key` (a lower bound on nothing, an upper bound on the truth: conservative).
    pub(crate) fn max_covering(&self, key: &[u8]) -> u64 {
        self.entries
            .iter()
            .rev()
            .find(|(_, rs)| rs.iter().any(|r| r.contains(key)))
            .map_or(self.floor, |(c, _)| (*c).max(self.floor))
    }

    /// Folds entries below the horizon into the floor. Every active transaction's snapshot is at
    /// or above the horizon, so the floor only matters to one whose sstamp fell below its own
    /// snapshot, where being conservative costs an occasional extra abort.
    pub(crate) fn prune(&mut self, horizon: u64) {
        while let Some((c, _)) = self.entries.front() {
            if *c >= horizon {
                break;
            }
            self.floor = self.floor.max(*c);
            self.entries.pop_front();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.floor == 0
    }
}
