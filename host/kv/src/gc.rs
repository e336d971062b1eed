//! Garbage collection: the oldest active snapshot (the horizon) and the sweeps that use it.
//!
//! Invariants:
//! - Every live snapshot (a transaction's, or a checkpoint's) is registered in `active` from the
//!   moment its stamp is chosen until it ends; the stamp is read under the same lock, so a
//!   horizon computed under it never passes a snapshot that is about to be registered.
//! - `horizon` only grows and never exceeds the oldest registered snapshot; every later snapshot
//!   is at least the visible stamp the horizon was computed from. Versions older than the newest
//!   one at or below the horizon are invisible to everybody and may be pruned.
//! - Old versions are pruned on every install (so hot keys stay short) and by a periodic full
//!   sweep (for keys written once while an old snapshot was open). Tombstoned keys are unlinked
//!   from the index under the commit lock once their tombstone is at or below the horizon.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Registry of active snapshots.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    active: Mutex<BTreeMap<u64, usize>>,
    horizon: AtomicU64,
}

impl Snapshots {
    pub(crate) fn new(start: u64) -> Snapshots {
        Snapshots { active: Mutex::default(), horizon: AtomicU64::new(start) }
    }

    /// Registers a snapshot at the current visible stamp and returns it.
    pub(crate) fn register(&self, visible: &AtomicU64) -> u64 {
        let mut m = self.active.lock();
        let s = visible.load(Ordering::Acquire);
        *m.entry(s).or_default() += 1;
        s
    }

    /// Ends a snapshot and advances the horizon.
    pub(crate) fn release(&self, s: u64, visible: &AtomicU64) {
        let mut m = self.active.lock();
        if let Some(n) = m.get_mut(&s) {
            *n -= 1;
            if *n == 0 {
                m.remove(&s);
            }
        }
        let h = match m.first_key_value() {
            Some((&oldest, _)) => oldest,
            None => visible.load(Ordering::Acquire),
        };
        self.horizon.fetch_max(h, Ordering::AcqRel);
    }

    /// Recomputes the horizon (used when no transaction ends for a while).
    pub(crate) fn refresh(&self, visible: &AtomicU64) -> u64 {
        let m = self.active.lock();
        let h = match m.first_key_value() {
            Some((&oldest, _)) => oldest,
            None => visible.load(Ordering::Acquire),
        };
        self.horizon.fetch_max(h, Ordering::AcqRel);
        self.horizon()
    }

    /// Every active snapshot is at or above this stamp.
    pub(crate) fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::Acquire)
    }

    /// Number of active snapshots.
    pub(crate) fn active(&self) -> usize {
        self.active.lock().values().sum()
    }
}

/// Keys whose latest version was a tombstone when written, waiting to be unlinked.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    queue: Mutex<Vec<(Vec<u8>, u64)>>,
}

impl Tombstones {
    pub(crate) fn push(&self, key: Vec<u8>, cstamp: u64) {
        self.queue.lock().push((key, cstamp));
    }

    /// Takes the entries whose tombstone is at or below `horizon`; the rest stay queued.
    pub(crate) fn take_ready(&self, horizon: u64) -> Vec<Vec<u8>> {
        let mut q = self.queue.lock();
        let (ready, rest): (Vec<_>, Vec<_>) = q.drain(..).partition(|(_, s)| *s <= horizon);
        *q = rest;
        ready.into_iter().map(|(k, _)| k).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.lock().len()
    }
}
