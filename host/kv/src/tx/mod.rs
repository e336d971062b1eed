//! Transactions: buffered writes over a snapshot; `commit.rs` holds the serial commit section.
//!
//! Invariants:
//! - A transaction holds no lock between calls: its state is its snapshot stamp, its write
//!   buffer, and (Serializable) its read set and read ranges. So it is `Send + 'static` and may
//!   live across `.await`s.
//! - Reads see the snapshot plus the transaction's own buffered writes.
//! - Nothing becomes visible to others until commit installs all writes at once under the
//!   commit lock with one stamp: commits are atomic, and aborts need no undo.
//! - `commit` returns `Ok` in [`Durability::Fsync`] mode only after the WAL holds the commit
//!   durably; a read-only commit waits until its snapshot is durable, so no caller ever acts on
//!   data a crash could take back (other transactions may *see* a commit slightly before it is
//!   durable, as in early lock release; they cannot commit before it).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::Bound;
use std::sync::Arc;

use crate::db::Shared;
use crate::error::TxError;
use crate::mvcc::Version;
use crate::options::Isolation;
use crate::ssn::ReadRange;
use crate::stats::Counters;

mod commit;
pub use commit::CommitTicket;

/// The smallest key greater than every key starting with `prefix` (empty when none is): the
/// `end` for a [`Tx::scan`] over every key under `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// A key and its value, as returned by [`Tx::scan`].
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A transaction. Dropping it without committing aborts it.
#[derive(Debug)]
pub struct Tx {
    shared: Arc<Shared>,
    iso: Isolation,
    snapshot: u64,
    /// Buffered writes; `None` deletes.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Versions read (Serializable only).
    reads: Vec<Arc<Version>>,
    /// Ranges read, including point reads that found nothing (Serializable only).
    ranges: Vec<ReadRange>,
    /// max cstamp of versions read: the w:r part of η(T).
    read_pstamp: u64,
    /// Bytes of keys and values in `writes`.
    write_bytes: usize,
    /// Keyspace quotas this commit is held to ([`Tx::limit_keyspace`]).
    quotas: Vec<(Vec<u8>, u64)>,
    finished: bool,
}

impl Tx {
    pub(crate) fn new(shared: Arc<Shared>, iso: Isolation) -> Tx {
        let snapshot = shared.snapshots.register(&shared.visible);
        Tx {
            shared,
            iso,
            snapshot,
            writes: BTreeMap::new(),
            reads: Vec::new(),
            ranges: Vec::new(),
            read_pstamp: 0,
            write_bytes: 0,
            quotas: Vec::new(),
            finished: false,
        }
    }

    /// The snapshot stamp this transaction reads at.
    pub fn snapshot(&self) -> u64 {
        self.snapshot
    }

    /// Bytes of keys and values buffered for writing (an overwritten key counts once).
    pub fn write_bytes(&self) -> usize {
        self.write_bytes
    }

    /// The keys this transaction deletes (buffered deletes, in key order).
    pub fn deleted_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.writes.iter().filter(|(_, value)| value.is_none()).map(|(key, _)| key.as_slice())
    }

    /// The isolation level.
    pub fn isolation(&self) -> Isolation {
        self.iso
    }

    fn check_key(&self, key: &[u8]) -> Result<(), TxError> {
        let max = self.shared.opts.max_key_len;
        if key.is_empty() || key.len() > max {
            return Err(TxError::KeyTooLarge { len: key.len(), max });
        }
        Ok(())
    }

    /// Holds this transaction's commit to at most `max_bytes` of live data in the keyspace
    /// `prefix` (as [`crate::Options::keyspace_of`] names it): a commit that would grow it past
    /// that fails with [`TxError::QuotaExceeded`]; one that shrinks or keeps it goes through.
    pub fn limit_keyspace(&mut self, prefix: &[u8], max_bytes: u64) {
        self.quotas.retain(|(k, _)| k != prefix);
        self.quotas.push((prefix.to_vec(), max_bytes));
    }

    /// Refuses to grow the read set past [`crate::Options::max_tx_reads`] by `more` entries.
    fn check_reads(&self, more: usize) -> Result<(), TxError> {
        let max = self.shared.opts.max_tx_reads;
        if self.iso == Isolation::Serializable && self.reads.len() + self.ranges.len() + more > max {
            return Err(TxError::TooManyReads { max });
        }
        Ok(())
    }

    /// Buffers one write, keeping the buffered bytes within [`crate::Options::max_tx_bytes`].
    fn buffer(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), TxError> {
        let size = |v: &Option<Vec<u8>>| key.len() + v.as_ref().map_or(0, Vec::len);
        let max = self.shared.opts.max_tx_bytes;
        // One search of the buffer, not a lookup and then an insert: a large transaction's keys
        // share long prefixes, and each comparison on the way is a `memcmp` (the trace writer,
        // 1,500 writes a commit, spent a fifth of its time here).
        let slot = self.writes.entry(key.to_vec());
        let replaced = match &slot {
            Entry::Occupied(buffered) => size(buffered.get()),
            Entry::Vacant(_) => 0,
        };
        let bytes = self.write_bytes - replaced + size(&value);
        if bytes > max {
            return Err(TxError::TooLarge { bytes, max });
        }
        self.write_bytes = bytes;
        *slot.or_insert(None) = value;
        Ok(())
    }

    fn track(&mut self, v: &Arc<Version>) {
        if self.iso == Isolation::Serializable {
            self.read_pstamp = self.read_pstamp.max(v.cstamp);
            self.reads.push(v.clone());
        }
    }

    /// Reads `key` at the snapshot (or this transaction's own write).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        self.check_key(key)?;
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        self.check_reads(1)?;
        let found = self.shared.store.get(key).and_then(|e| e.value().visible(self.snapshot));
        let value = match &found {
            Some(v) => {
                self.track(v);
                v.value.as_deref().map(<[u8]>::to_vec)
            }
            None => None,
        };
        if value.is_none() && self.iso == Isolation::Serializable {
            // Absence is a predicate read: an insert of this key by a concurrent committer is
            // an r:w edge that no version records.
            self.ranges.push(ReadRange { start: key.to_vec(), end: Bound::Included(key.to_vec()) });
        }
        Ok(value)
    }

    /// Buffers a write of `value` to `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        self.check_key(key)?;
        let max = self.shared.opts.max_value_len;
        if value.len() > max {
            return Err(TxError::ValueTooLarge { len: value.len(), max });
        }
        self.buffer(key, Some(value.to_vec()))
    }

    /// Buffers a delete of `key` (deleting an absent key is not an error).
    pub fn delete(&mut self, key: &[u8]) -> Result<(), TxError> {
        self.check_key(key)?;
        self.buffer(key, None)
    }

    /// Keys in `[start, end)` in key order, at most `limit`; an empty `end` means unbounded.
    pub fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>, TxError> {
        let end_b: Bound<&[u8]> = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
        let mut out: Vec<KeyValue> = Vec::new();
        if limit == 0 || (!end.is_empty() && start >= end) {
            return Ok(out);
        }
        let mut stored = self
            .shared
            .store
            .range(Bound::Included(start), end_b)
            .filter_map(|e| {
                let v = e.value().visible(self.snapshot)?;
                Some((e.key().clone(), v))
            })
            .peekable();
        let mut own = self.writes.range::<[u8], _>((Bound::Included(start), end_b)).peekable();
        let mut tracked = Vec::new();
        let (max_bytes, mut bytes) = (self.shared.opts.max_scan_bytes, 0);
        // Merge the snapshot with our own writes; own writes shadow stored versions.
        while out.len() < limit {
            if bytes > max_bytes {
                return Err(TxError::ScanTooLarge { max: max_bytes });
            }
            let take_own = match (stored.peek(), own.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((sk, _)), Some((ok, _))) => ok.as_slice() <= sk.as_slice(),
            };
            if take_own {
                let Some((k, w)) = own.next() else { break };
                if stored.peek().is_some_and(|(sk, _)| sk == k) {
                    stored.next();
                }
                if let Some(v) = w {
                    bytes += k.len() + v.len();
                    out.push((k.clone(), v.clone()));
                }
            } else {
                let Some((k, v)) = stored.next() else { break };
                if let Some(val) = &v.value {
                    bytes += k.len() + val.len();
                    out.push((k, val.to_vec()));
                }
                tracked.push(v);
            }
        }
        drop(stored);
        drop(own);
        if bytes > max_bytes {
            return Err(TxError::ScanTooLarge { max: max_bytes });
        }
        self.check_reads(tracked.len() + 1)?;
        if self.iso == Isolation::Serializable {
            for v in &tracked {
                self.track(v);
            }
            // Cut by the limit: only the part up to the last returned key was observed.
            let end = match out.last() {
                Some((k, _)) if out.len() == limit => Bound::Included(k.clone()),
                _ => end_b.map(<[u8]>::to_vec),
            };
            self.ranges.push(ReadRange { start: start.to_vec(), end });
        }
        Ok(out)
    }

    /// Aborts: discards the buffered writes.
    pub fn abort(self) {}
}

impl Drop for Tx {
    fn drop(&mut self) {
        // A transaction that wrote nothing has nothing to abort: dropping a read is not an abort.
        if !self.finished && !self.writes.is_empty() {
            Counters::bump(&self.shared.counters.aborted_by_caller, 1);
        }
        self.shared.snapshots.release(self.snapshot, &self.shared.visible);
    }
}
