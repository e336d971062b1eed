//! Space accounting: the bytes of live data (key plus value of the newest version of every key
//! that is not deleted) per keyspace and in total, and the budgets commits are held to.
//!
//! A keyspace is whatever prefix [`crate::Options::keyspace_of`] names for a key (the host uses
//! one per function and per shared store). Old versions kept for open snapshots are not
//! counted: they are transient, bounded by how long transactions may live, and GC reclaims them.
//!
//! Invariants: the counts change only in the commit section, by exactly what each installed
//! commit adds and frees, so they always equal a recount of the store (recovery recounts);
//! a commit that would grow a keyspace past its quota, or the whole database past its budget,
//! is refused before anything is installed. A commit that frees space is never refused.

use std::collections::HashMap;

use crate::error::TxError;
use crate::mvcc::Store;

/// Names the keyspace of a key for accounting: the length of its keyspace prefix, or `None` for
/// a key outside every keyspace (it still counts in the total).
pub type KeyspaceOf = fn(&[u8]) -> Option<usize>;

/// Bytes one live entry occupies for accounting.
pub(crate) fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> i64 {
    value.map_or(0, |v| (key.len() + v.len()) as i64)
}

/// Live bytes per keyspace and in total. Guarded by the commit lock.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    by_keyspace: HashMap<Vec<u8>, u64>,
    total: u64,
    /// Keyspaces under this prefix are not held to the budget ([`crate::Options::unbudgeted_prefix`]).
    unbudgeted_prefix: Option<&'static [u8]>,
    /// Their bytes, part of `total`.
    unbudgeted: u64,
}

/// What one commit changes: bytes per keyspace and in total (negative frees).
#[derive(Debug, Default)]
pub(crate) struct Delta {
    by_keyspace: Vec<(Vec<u8>, i64)>,
    total: i64,
}

impl Delta {
    /// Records that `key` goes from `old` to `new` live bytes.
    pub(crate) fn add(&mut self, keyspace_of: Option<KeyspaceOf>, key: &[u8], old: i64, new: i64) {
        let change = new - old;
        if change == 0 {
            return;
        }
        self.total += change;
        let Some(len) = keyspace_of.and_then(|f| f(key)).filter(|&len| len <= key.len()) else { return };
        let keyspace = &key[..len];
        match self.by_keyspace.iter_mut().find(|(k, _)| k == keyspace) {
            Some((_, bytes)) => *bytes += change,
            None => self.by_keyspace.push((keyspace.to_vec(), change)),
        }
    }
}

impl Usage {
    /// Recounts a recovered store.
    pub(crate) fn count(
        store: &Store,
        keyspace_of: Option<KeyspaceOf>,
        unbudgeted_prefix: Option<&'static [u8]>,
    ) -> Usage {
        let mut delta = Delta::default();
        for entry in store.iter() {
            if let Some(latest) = entry.value().latest() {
                delta.add(keyspace_of, entry.key(), 0, entry_bytes(entry.key(), latest.value.as_deref()));
            }
        }
        let mut usage = Usage { unbudgeted_prefix, ..Usage::default() };
        usage.apply(&delta);
        usage
    }

    fn is_unbudgeted(&self, keyspace: &[u8]) -> bool {
        self.unbudgeted_prefix.is_some_and(|prefix| keyspace.starts_with(prefix))
    }

    /// Refuses `delta` if it grows a keyspace past its quota in `quotas` or the budgeted data
    /// (the total less the unbudgeted keyspaces) past `budget`.
    pub(crate) fn check(&self, delta: &Delta, quotas: &[(Vec<u8>, u64)], budget: u64) -> Result<(), TxError> {
        let unbudgeted: i64 = delta
            .by_keyspace
            .iter()
            .filter(|(keyspace, _)| self.is_unbudgeted(keyspace))
            .map(|(_, change)| change)
            .sum();
        let budgeted_change = delta.total - unbudgeted;
        if budgeted_change > 0 {
            let would_hold = self.total.saturating_sub(self.unbudgeted).saturating_add(budgeted_change as u64);
            if would_hold > budget {
                return Err(TxError::OutOfSpace { would_hold, max: budget });
            }
        }
        for (keyspace, change) in delta.by_keyspace.iter().filter(|(_, change)| *change > 0) {
            let Some((_, max)) = quotas.iter().find(|(k, _)| k == keyspace) else { continue };
            let would_hold = self.bytes(keyspace).saturating_add(*change as u64);
            if would_hold > *max {
                return Err(TxError::QuotaExceeded { keyspace: keyspace.clone(), would_hold, max: *max });
            }
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, delta: &Delta) {
        self.total = self.total.saturating_add_signed(delta.total);
        for (keyspace, change) in &delta.by_keyspace {
            if self.is_unbudgeted(keyspace) {
                self.unbudgeted = self.unbudgeted.saturating_add_signed(*change);
            }
            let bytes = self.by_keyspace.entry(keyspace.clone()).or_default();
            *bytes = bytes.saturating_add_signed(*change);
            if *bytes == 0 {
                self.by_keyspace.remove(keyspace);
            }
        }
    }

    pub(crate) fn bytes(&self, keyspace: &[u8]) -> u64 {
        self.by_keyspace.get(keyspace).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Every keyspace holding data, with its bytes, in key order.
    pub(crate) fn keyspaces(&self) -> Vec<(Vec<u8>, u64)> {
        let mut all: Vec<_> = self.by_keyspace.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        all
    }
}
