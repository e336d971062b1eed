//! Transactions: buffered writes over a snapshot, and the serial commit section.
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
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::db::Shared;
use crate::error::TxError;
use crate::mvcc::Version;
use crate::options::{Durability, Isolation};
use crate::space::{Delta, entry_bytes};
use crate::ssn::ReadRange;
use crate::stats::Counters;
use crate::wal;

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
        let replaced = self.writes.get(key).map_or(0, size);
        let bytes = self.write_bytes - replaced + size(&value);
        let max = self.shared.opts.max_tx_bytes;
        if bytes > max {
            return Err(TxError::TooLarge { bytes, max });
        }
        self.write_bytes = bytes;
        self.writes.insert(key.to_vec(), value);
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

    /// Commits; returns the commit stamp (for a read-only transaction, its snapshot stamp or,
    /// if it had to be certified, a fresh stamp). In [`Durability::Fsync`] mode this blocks
    /// until the commit is durable (about one fsync); async callers use [`Tx::commit_async`].
    pub fn commit(self) -> Result<u64, TxError> {
        self.commit_async()?.wait()
    }

    /// Certifies and installs the commit without waiting for durability; the returned
    /// [`CommitTicket`] resolves (as a `Future`, or with [`CommitTicket::wait`]) once the
    /// commit is durable. Conflicts are reported here, before any waiting. The commit is
    /// acknowledged only when the ticket resolves to `Ok`.
    pub fn commit_async(mut self) -> Result<CommitTicket, TxError> {
        self.finished = true;
        let res = self.commit_inner();
        let c = &self.shared.counters;
        match &res {
            Ok(_) => Counters::bump(&c.committed, 1),
            Err(TxError::WriteConflict { .. }) => Counters::bump(&c.aborted_write_conflict, 1),
            Err(TxError::Unserializable { .. }) => Counters::bump(&c.aborted_ssn, 1),
            Err(TxError::Phantom { .. }) => Counters::bump(&c.aborted_phantom, 1),
            Err(_) => {}
        }
        let (cstamp, durable_needed) = res?;
        let needs_wait = matches!(self.shared.opts.durability, Durability::Fsync);
        Ok(CommitTicket { shared: needs_wait.then(|| self.shared.clone()), cstamp, durable_needed })
    }

    /// The serial commit section. Returns (the stamp to report, the stamp that must be durable).
    fn commit_inner(&mut self) -> Result<(u64, u64), TxError> {
        let s = self.shared.clone();
        let serializable = self.iso == Isolation::Serializable;
        // A read-only transaction of at most one point read needs no certification (`ssn.rs`
        // says why): a single `get` then costs what it costs under Snapshot, no commit lock.
        let one_point_read = match (self.reads.as_slice(), self.ranges.as_slice()) {
            ([], []) | ([_], []) => true,
            ([], [range]) => range.is_point(),
            _ => false,
        };
        let certify = serializable && !(self.writes.is_empty() && one_point_read);
        if self.writes.is_empty() && !certify {
            return Ok((self.snapshot, self.snapshot));
        }
        let bytes: usize =
            12 + self.writes.iter().map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len)).sum::<usize>();
        if bytes > wal::MAX_PAYLOAD {
            return Err(TxError::TooLarge { bytes, max: wal::MAX_PAYLOAD });
        }
        let horizon = s.snapshots.horizon();
        let mut st = s.commit.lock();
        if s.closed.load(Ordering::Acquire) {
            return Err(TxError::Closed);
        }
        if let Some(refused) = s.wal.refusal() {
            return Err(refused);
        }

        // First-committer-wins: the newest committed version must be the one we saw.
        let mut overwritten = Vec::with_capacity(self.writes.len());
        let mut space = Delta::default();
        let mut existence_changed = Vec::new();
        // A written key with no chain: GC may have unlinked its tombstone (and its stamps).
        let mut writes_unlinked = false;
        // One index lookup per written key, reused for the install below.
        let mut entries = Vec::with_capacity(self.writes.len());
        for (k, w) in &self.writes {
            let entry = s.store.get(k);
            writes_unlinked |= entry.is_none();
            let latest = entry.as_ref().and_then(|e| e.value().latest());
            entries.push(entry);
            let existed = match &latest {
                Some(l) if l.cstamp > self.snapshot => {
                    return Err(TxError::WriteConflict { key: k.clone() });
                }
                Some(l) => l.value.is_some(),
                None => false,
            };
            if existed != w.is_some() {
                existence_changed.push(k.as_slice());
            }
            let old = latest.as_ref().map_or(0, |l| entry_bytes(k, l.value.as_deref()));
            space.add(s.opts.keyspace_of, k, old, entry_bytes(k, w.as_deref()));
            overwritten.extend(latest);
        }
        st.usage.check(&space, &self.quotas, s.opts.max_live_bytes)?;

        let cstamp = st.next_stamp;
        let mut sstamp = cstamp;
        if serializable {
            // Phantoms: did a later commit insert or delete a key in a range we read?
            for r in &self.ranges {
                for e in s.store.range(Bound::Included(&r.start), r.end_bound()) {
                    let chain = e.value();
                    let Some(l) = chain.latest() else { continue };
                    if l.cstamp <= self.snapshot {
                        continue;
                    }
                    let before = chain.visible(self.snapshot).is_some_and(|v| v.value.is_some());
                    if before != l.value.is_some() {
                        return Err(TxError::Phantom { start: r.start.clone() });
                    }
                }
            }
            // SSN exclusion test.
            let mut pstamp = self.read_pstamp;
            for v in &overwritten {
                pstamp = pstamp.max(v.pstamp.load(Ordering::Acquire));
            }
            if writes_unlinked {
                pstamp = pstamp.max(s.store.unlinked_cstamp());
            }
            if !st.scans.is_empty() {
                for k in &existence_changed {
                    pstamp = pstamp.max(st.scans.max_covering(k));
                }
            }
            for v in &self.reads {
                sstamp = sstamp.min(v.sstamp.load(Ordering::Acquire));
            }
            if sstamp <= pstamp {
                return Err(TxError::Unserializable { sstamp, pstamp });
            }
            for v in &self.reads {
                v.pstamp.fetch_max(cstamp, Ordering::AcqRel);
            }
            if !self.ranges.is_empty() {
                st.scans.push(cstamp, std::mem::take(&mut self.ranges).into());
            }
        }

        if !self.writes.is_empty() {
            for v in &overwritten {
                v.sstamp.store(sstamp, Ordering::Release);
            }
            let mut pruned = 0;
            for ((k, w), entry) in self.writes.iter().zip(entries) {
                let v = Version::new(cstamp, w.as_deref().map(Box::from));
                pruned += s.store.install(entry, k, v, horizon);
                if w.is_none() {
                    s.tombstones.push(k.clone(), cstamp);
                }
            }
            Counters::bump(&s.counters.gc_pruned_versions, pruned as u64);
            let writes = &self.writes;
            s.wal.append(cstamp, |buf| {
                wal::encode(buf, cstamp, writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())))
            });
            s.visible.store(cstamp, Ordering::Release);
            st.usage.apply(&space);
        }
        st.next_stamp += 1;
        st.scans.prune(horizon);
        drop(st);

        let durable_needed = if self.writes.is_empty() { self.snapshot } else { cstamp };
        Ok((cstamp, durable_needed))
    }
}

/// A commit that is installed and waits to become durable. Await it (it is a `Future` that
/// needs no particular runtime: the WAL flusher wakes it) or call [`CommitTicket::wait`].
/// Dropping it does not undo the commit; it only gives up waiting for the acknowledgement.
#[derive(Debug)]
#[must_use = "a commit is acknowledged only when its ticket resolves"]
pub struct CommitTicket {
    /// `None` when nothing needs waiting for (periodic durability).
    shared: Option<Arc<Shared>>,
    cstamp: u64,
    durable_needed: u64,
}

impl CommitTicket {
    /// The commit stamp this commit will report.
    pub fn stamp(&self) -> u64 {
        self.cstamp
    }

    /// Blocks the calling thread until the commit is durable.
    pub fn wait(self) -> Result<u64, TxError> {
        match &self.shared {
            Some(s) => s.wal.wait_durable(self.durable_needed).map_err(TxError::Wal).map(|()| self.cstamp),
            None => Ok(self.cstamp),
        }
    }
}

impl std::future::Future for CommitTicket {
    type Output = Result<u64, TxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        match &this.shared {
            Some(s) => {
                s.wal.poll_durable(this.durable_needed, cx).map(|r| r.map_err(TxError::Wal).map(|()| this.cstamp))
            }
            None => std::task::Poll::Ready(Ok(this.cstamp)),
        }
    }
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
