//! Multi-version storage: an ordered concurrent index of keys, each with a chain of versions.
//!
//! Invariants:
//! - A chain is ordered by ascending `cstamp`; only committed versions are ever in a chain (a
//!   transaction buffers its writes and installs them in the serial commit section), so readers
//!   never meet an uncommitted version and aborts need no undo.
//! - Versions are installed, and keys are removed from the index, only while the commit lock is
//!   held. A reader may hold an [`Entry`] that a concurrent GC has just unlinked; that is harmless
//!   because GC unlinks a key only when its sole version is a tombstone every snapshot sees.
//! - Pruning keeps, for every snapshot at or above the GC horizon, the version it sees: the newest
//!   version with `cstamp <= horizon` and everything newer. Older versions are invisible to all.
//! - `pstamp`/`sstamp` on a version are the SSN stamps (η(V), π(V)); `sstamp == INF` means not yet
//!   overwritten. They are only written inside the commit section, but read by anyone, so they
//!   are atomics.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crossbeam_skiplist::SkipMap;
use parking_lot::Mutex;

/// "Infinity" for sstamps: the version has not been overwritten.
pub(crate) const INF: u64 = u64::MAX;

/// One committed version of a key.
#[derive(Debug)]
pub(crate) struct Version {
    /// Commit stamp of the transaction that created it.
    pub cstamp: u64,
    /// The value; `None` is a tombstone (the key was deleted).
    pub value: Option<Box<[u8]>>,
    /// η(V): the largest commit stamp of a committed (Serializable) reader.
    pub pstamp: AtomicU64,
    /// π(V): the sstamp of the transaction that overwrote it, or [`INF`].
    pub sstamp: AtomicU64,
}

impl Version {
    pub(crate) fn new(cstamp: u64, value: Option<Box<[u8]>>) -> Arc<Version> {
        Arc::new(Version { cstamp, value, pstamp: AtomicU64::new(cstamp), sstamp: AtomicU64::new(INF) })
    }
}

/// The version chain of one key, under a small per-key lock held only for a few instructions.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    versions: Mutex<Vec<Arc<Version>>>,
}

impl Chain {
    /// The version a snapshot at `snap` sees, if any.
    pub(crate) fn visible(&self, snap: u64) -> Option<Arc<Version>> {
        let v = self.versions.lock();
        v.iter().rev().find(|x| x.cstamp <= snap).cloned()
    }

    /// Whether a version committed after `snap` gives the key another existence than `snap`
    /// sees: an insert of a key it sees absent, or a delete of one it sees present, even if a
    /// later version undid it (insert, then delete). Each such version is a write the snapshot's
    /// reader did not see, so an r:w edge from that reader to its writer. The versions after
    /// any live snapshot are never pruned, so none is missed.
    pub(crate) fn existence_changed_after(&self, snap: u64) -> bool {
        let v = self.versions.lock();
        let after = v.partition_point(|x| x.cstamp <= snap);
        let before = after.checked_sub(1).is_some_and(|i| v[i].value.is_some());
        v[after..].iter().any(|x| x.value.is_some() != before)
    }

    /// The newest committed version.
    pub(crate) fn latest(&self) -> Option<Arc<Version>> {
        self.versions.lock().last().cloned()
    }

    /// Appends a version (caller holds the commit lock, so stamps arrive in order) and prunes what
    /// nobody at or above `horizon` can see. Returns the number of versions removed.
    pub(crate) fn install(&self, v: Arc<Version>, horizon: u64) -> usize {
        let mut chain = self.versions.lock();
        debug_assert!(chain.last().is_none_or(|l| l.cstamp < v.cstamp));
        chain.push(v);
        prune_locked(&mut chain, horizon)
    }

    /// Drops versions invisible to every snapshot at or above `horizon`.
    pub(crate) fn prune(&self, horizon: u64) -> usize {
        prune_locked(&mut self.versions.lock(), horizon)
    }

    /// Prunes to `horizon`; then if the chain is a lone tombstone that every snapshot at or
    /// above `horizon` sees, empties it and returns the tombstone's cstamp (the caller then
    /// unlinks the key; it holds the commit lock). Also returns how many versions went, counted
    /// under the chain's lock (a concurrent prune must not count them twice).
    fn take_dead(&self, horizon: u64) -> (usize, Option<u64>) {
        let mut chain = self.versions.lock();
        let mut removed = prune_locked(&mut chain, horizon);
        let dead = match chain.as_slice() {
            [v] if v.value.is_none() && v.cstamp <= horizon => Some(v.cstamp),
            _ => None,
        };
        if dead.is_some() {
            removed += chain.len();
            chain.clear();
        }
        (removed, dead)
    }
}

fn prune_locked(chain: &mut Vec<Arc<Version>>, horizon: u64) -> usize {
    // Index of the newest version every snapshot >= horizon can still see.
    match chain.iter().rposition(|v| v.cstamp <= horizon) {
        Some(i) if i > 0 => {
            chain.drain(..i);
            i
        }
        _ => 0,
    }
}

/// The ordered index of all keys.
#[derive(Debug, Default)]
pub(crate) struct Store {
    map: SkipMap<Vec<u8>, Chain>,
    /// Versions currently linked into chains (a gauge for GC tests and metrics).
    live_versions: AtomicI64,
    /// The largest cstamp of a tombstone unlinked by GC. A transaction that writes a key with
    /// no chain, or read a range (a key found absent included), takes it into its pstamp: the
    /// unlinked tombstone carried the w:w edge from the deleter to the next writer of the key,
    /// and the w:r edge from the deleter to a reader that now finds no version at all, which
    /// would be lost with it. (Its Serializable readers recorded the key as a read range: the
    /// phantom check and the scan log keep their r:w edges to a later insert.) A conservative
    /// floor, like the scan log's, and never above the GC horizon, so at or below every running
    /// transaction's snapshot.
    unlinked_cstamp: AtomicU64,
}

/// A handle to one key's chain; keeps it alive even if GC unlinks the key meanwhile.
pub(crate) type EntryRef<'a> = crossbeam_skiplist::map::Entry<'a, Vec<u8>, Chain>;

impl Store {
    pub(crate) fn get(&self, key: &[u8]) -> Option<EntryRef<'_>> {
        self.map.get(key)
    }

    /// Entries with keys in the given bounds, in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
    ) -> impl Iterator<Item = EntryRef<'a>> + 'a {
        self.map.range::<[u8], _>((start, end))
    }

    /// Installs a committed version into `entry` (the key's index entry if the caller already
    /// looked it up under the same commit lock; `None` finds it or creates it in one search of
    /// the index: recovery's replay, or a commit that found no entry and would only find none
    /// again). Caller holds the commit lock.
    pub(crate) fn install(&self, entry: Option<EntryRef<'_>>, key: &[u8], v: Arc<Version>, horizon: u64) -> usize {
        // Only committers insert keys and they are serialised, so no insert race here.
        let entry = entry.unwrap_or_else(|| self.map.get_or_insert_with(key.to_vec(), Chain::default));
        let pruned = entry.value().install(v, horizon);
        self.live_versions.fetch_add(1 - pruned as i64, Ordering::Relaxed);
        pruned
    }

    /// Prunes one chain outside the commit lock (the per-key lock suffices for pruning).
    pub(crate) fn prune_entry(&self, e: &EntryRef<'_>, horizon: u64) -> usize {
        let n = e.value().prune(horizon);
        self.live_versions.fetch_sub(n as i64, Ordering::Relaxed);
        n
    }

    /// Unlinks `key` if it is a tombstone nobody can see past (pruning its chain either way).
    /// Returns the number of versions removed. Caller holds the commit lock.
    pub(crate) fn remove_if_dead(&self, key: &[u8], horizon: u64) -> usize {
        let Some(e) = self.map.get(key) else {
            return 0;
        };
        let (removed, dead) = e.value().take_dead(horizon);
        self.live_versions.fetch_sub(removed as i64, Ordering::Relaxed);
        if let Some(cstamp) = dead {
            self.unlinked_cstamp.fetch_max(cstamp, Ordering::AcqRel);
            e.remove();
        }
        removed
    }

    /// The pstamp floor for a write to a key with no chain, or a range read (see
    /// `unlinked_cstamp`).
    pub(crate) fn unlinked_cstamp(&self) -> u64 {
        self.unlinked_cstamp.load(Ordering::Acquire)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.map.iter()
    }

    pub(crate) fn live_versions(&self) -> u64 {
        self.live_versions.load(Ordering::Relaxed).max(0) as u64
    }

    pub(crate) fn key_count(&self) -> usize {
        self.map.len()
    }
}
