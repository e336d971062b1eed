//! Serial Safety Net bookkeeping and scanned-range (phantom) validation.
//!
//! The certifier runs in the serial commit section (one short lock, as the SSN notes allow), so
//! every stamp it reads belongs to a transaction that has already committed; the parallel,
//! latch-free commit of ERMIA is not needed for correctness.
//!
//! Per transaction T (`Serializable` only):
//! - `pstamp` η(T) = max of: cstamps of versions T read (w:r), pstamps of versions T overwrites
//!   (w:w and r:w through their committed readers), and cstamps of committed scanners whose range
//!   covers a key T inserts or deletes (r:w through a predicate; SSN alone misses these). When T
//!   writes a key with no version, or read a range (a key found absent included), also the
//!   largest cstamp of a tombstone GC unlinked: the deleter's w:w edge to T's write, or its w:r
//!   edge to T's read, went with the tombstone (`Store::unlinked_cstamp`).
//! - `sstamp` π(T) = min of: T's cstamp and the sstamps of versions T read that were overwritten
//!   by a transaction that committed before T.
//! - Abort if `sstamp <= pstamp`. Then: readers' versions get `pstamp = max(pstamp, cstamp)`,
//!   overwritten versions get `sstamp = π(T)`.
//!
//! A read-only transaction that made one point read (of one version, or of a key with no
//! version at all; a tombstone read records both, and is certified) is not certified: it
//! commits as under Snapshot, leaving no pstamp or scan behind. It cannot close a cycle: its
//! only edges are w:r from the writer W of what it read and r:w to the next writer U of that
//! same key (for a key read as absent, the next insert), and W → U is a w:w edge or a path of
//! them (through deletes of the absent key in between), so it can always be placed right after
//! W; and since it
//! changes no stamp, the others' history is as if it never ran, which SSN keeps serializable.
//! (Two reads, or a scan, can close a cycle: the read-only anomaly.)
//!
//! Phantoms: a scan records `[start, end)` (or `[start, last returned key]` when it was cut by
//! the limit), and a point read that found nothing records `[key, key]`. At commit, if any
//! commit after T's snapshot changed the existence of a key inside such a range (inserted or
//! deleted it), T aborts with [`crate::TxError::Phantom`], even when a later commit undid it: an
//! insert then a delete leave the key as T saw it, but the inserter still wrote after T's read.
//! A delete of a key already absent changes no existence: T, having read the absence, is not
//! ordered before it once the tombstone is unlinked (it reads the same in either order; while
//! the tombstone is linked, its stamps order them anyway).
//! Committed ranges go into [`ScanLog`] so that a later inserter sees its r:w predecessor;
//! entries older than the GC horizon are folded into one conservative floor stamp.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

/// A range a transaction read: `start` inclusive, `end` as recorded.
#[derive(Debug, Clone)]
pub(crate) struct ReadRange {
    pub start: Vec<u8>,
    pub end: Bound<Vec<u8>>,
}

impl ReadRange {
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice()
            && match &self.end {
                Bound::Unbounded => true,
                Bound::Included(e) => key <= e.as_slice(),
                Bound::Excluded(e) => key < e.as_slice(),
            }
    }

    /// A point read that found nothing (`[key, key]`), not a scan.
    pub(crate) fn is_point(&self) -> bool {
        matches!(&self.end, Bound::Included(end) if *end == self.start)
    }

    pub(crate) fn end_bound(&self) -> Bound<&[u8]> {
        match &self.end {
            Bound::Unbounded => Bound::Unbounded,
            Bound::Included(e) => Bound::Included(e.as_slice()),
            Bound::Excluded(e) => Bound::Excluded(e.as_slice()),
        }
    }
}

/// Ranges read by recently committed Serializable transactions, as the function "largest
/// cstamp of a committed scanner whose range covers this key".
///
/// Commits are serial, so every range pushed carries a larger cstamp than all before it: a push
/// simply assigns its cstamp over its range. The function is kept piecewise constant in a
/// `BTreeMap` from the start of each piece to its value, so a push and a lookup cost
/// O(log pieces) (plus the pieces a push covers, each removed once): a long-running
/// transaction that pins the horizon makes the log longer, never the commit section slower
/// per lookup. Entries older than the GC horizon are folded into one conservative floor stamp.
#[derive(Debug, Default)]
pub(crate) struct ScanLog {
    /// Piece start → cstamp over `[start, next start)`; keys before the first piece are 0.
    pieces: BTreeMap<Vec<u8>, u64>,
    /// The cstamps pushed and not yet folded, oldest first.
    live: VecDeque<u64>,
    /// The largest cstamp among pushes already folded away.
    floor: u64,
    /// Pieces after the last clean-up: the next one runs when the map has doubled.
    pieces_after_sweep: usize,
}

/// Where a range's end falls among keys: `Some(k)` = just before `k`, `None` = past every key.
fn end_position(end: &Bound<Vec<u8>>) -> Option<Vec<u8>> {
    match end {
        Bound::Unbounded => None,
        Bound::Excluded(e) => Some(e.clone()),
        // The smallest key after `e` is `e` followed by a zero byte.
        Bound::Included(e) => Some([e.as_slice(), &[0]].concat()),
    }
}

impl ScanLog {
    pub(crate) fn push(&mut self, cstamp: u64, ranges: Arc<[ReadRange]>) {
        for range in ranges.iter() {
            self.assign(&range.start, end_position(&range.end), cstamp);
        }
        self.live.push_back(cstamp);
    }

    /// Sets the function to `value` over `[start, end)`.
    fn assign(&mut self, start: &[u8], end: Option<Vec<u8>>, value: u64) {
        if end.as_deref().is_some_and(|end| end <= start) {
            return;
        }
        let after = end.as_ref().map(|end| (end.clone(), self.value_at(end)));
        let covered: Vec<Vec<u8>> = match &end {
            Some(end) => self.pieces.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end.as_slice()))),
            None => self.pieces.range::<[u8], _>((Bound::Included(start), Bound::Unbounded)),
        }
        .map(|(key, _)| key.clone())
        .collect();
        for key in covered {
            self.pieces.remove(&key);
        }
        self.pieces.insert(start.to_vec(), value);
        if let Some((end, previous)) = after {
            self.pieces.entry(end).or_insert(previous);
        }
    }

    fn value_at(&self, key: &[u8]) -> u64 {
        self.pieces.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back().map_or(0, |(_, v)| *v)
    }

    /// The largest cstamp of a committed scanner that may have read the absence or presence of
    /// `key` (a lower bound on nothing, an upper bound on the truth: conservative).
    pub(crate) fn max_covering(&self, key: &[u8]) -> u64 {
        self.value_at(key).max(self.floor)
    }

    /// Folds entries below the horizon into the floor. Every active transaction's snapshot is at
    /// or above the horizon, so the floor only matters to one whose sstamp fell below its own
    /// snapshot, where being conservative costs an occasional extra abort.
    pub(crate) fn prune(&mut self, horizon: u64) {
        while let Some(&c) = self.live.front() {
            if c >= horizon {
                break;
            }
            self.floor = self.floor.max(c);
            self.live.pop_front();
        }
        if self.pieces.len() > 2 * self.pieces_after_sweep + 64 {
            self.sweep();
        }
    }

    /// Drops what the floor makes redundant: pieces at or below it read as the floor anyway, so
    /// they become 0 and merge with their neighbours. Amortised O(1) per push: it runs when the
    /// map has doubled since the last sweep.
    fn sweep(&mut self) {
        let floor = self.floor;
        let mut previous = 0;
        self.pieces.retain(|_, value| {
            if *value <= floor {
                *value = 0;
            }
            let keep = *value != previous;
            previous = *value;
            keep
        });
        self.pieces_after_sweep = self.pieces.len();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty() && self.floor == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition the piecewise map must agree with: newest covering range, or the floor.
    struct Naive(Vec<(u64, ReadRange)>, u64);

    impl Naive {
        fn max_covering(&self, key: &[u8]) -> u64 {
            self.0.iter().rev().find(|(_, r)| r.contains(key)).map_or(self.1, |(c, _)| (*c).max(self.1))
        }
    }

    #[test]
    fn the_piecewise_log_agrees_with_the_definition() {
        // A small deterministic generator: keys from a tiny alphabet make overlaps common.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let key =
            |next: &mut dyn FnMut(u64) -> u64| -> Vec<u8> { (0..=next(3)).map(|_| b"abc"[next(3) as usize]).collect() };
        let mut log = ScanLog::default();
        let mut naive = Naive(Vec::new(), 0);
        for cstamp in 1..=3000u64 {
            let start = key(&mut next);
            let end = match next(4) {
                0 => Bound::Unbounded,
                1 => Bound::Included(start.clone()),
                2 => Bound::Included(key(&mut next)),
                _ => Bound::Excluded(key(&mut next)),
            };
            let range = ReadRange { start, end };
            log.push(cstamp, Arc::from(vec![range.clone()]));
            naive.0.push((cstamp, range));
            if cstamp % 7 == 0 {
                let horizon = cstamp.saturating_sub(next(50));
                log.prune(horizon);
                naive.1 = naive.0.iter().map(|(c, _)| *c).filter(|c| *c < horizon).max().unwrap_or(0).max(naive.1);
                naive.0.retain(|(c, _)| *c >= horizon);
            }
            for _ in 0..4 {
                let probe = key(&mut next);
                assert_eq!(log.max_covering(&probe), naive.max_covering(&probe), "key {probe:?} at {cstamp}");
            }
        }
        assert!(log.pieces.len() <= 2 * log.pieces_after_sweep + 64, "swept: {}", log.pieces.len());
    }
}
