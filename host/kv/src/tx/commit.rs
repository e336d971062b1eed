//! The serial commit section: certification (first-committer-wins, phantoms, the SSN
//! exclusion test), installing the writes under one stamp, appending them to the WAL, and the
//! ticket that resolves once the commit is durable.
//!
//! Invariants: see the parent module; everything between taking and dropping the commit lock
//! is one atomic step for every other transaction.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Tx;
use crate::db::Shared;
use crate::error::TxError;
use crate::mvcc::Version;
use crate::options::{Durability, Isolation};
use crate::space::{Delta, entry_bytes};
use crate::stats::Counters;
use crate::wal::{self, Wait};

impl Tx {
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
        let wait = if self.writes.is_empty() { Wait::ReadOnlyCommit } else { Wait::Other };
        Ok(CommitTicket { shared: needs_wait.then(|| self.shared.clone()), cstamp, durable_needed, wait })
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
            // Phantoms: did a later commit insert or delete a key in a range we read? Any one
            // counts, even one undone since: an insert then a delete leave the key as absent as
            // we saw it, but the inserter still wrote after our read (an r:w edge to it).
            for r in &self.ranges {
                for e in s.store.range(Bound::Included(&r.start), r.end_bound()) {
                    if e.value().existence_changed_after(self.snapshot) {
                        return Err(TxError::Phantom { start: r.start.clone() });
                    }
                }
            }
            // SSN exclusion test.
            let mut pstamp = self.read_pstamp;
            for v in &overwritten {
                pstamp = pstamp.max(v.pstamp.load(Ordering::Acquire));
            }
            // GC may have unlinked a tombstone a write overwrites (the deleter → writer w:w
            // edge) or a read found absent (the deleter → reader w:r edge): the floor stands in
            // for the deleter's stamp.
            if writes_unlinked || !self.ranges.is_empty() {
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
    /// How the flusher counts this commit while it waits (a read-only one has no record).
    wait: Wait,
}

impl CommitTicket {
    /// The commit stamp this commit will report.
    pub fn stamp(&self) -> u64 {
        self.cstamp
    }

    /// Blocks the calling thread until the commit is durable.
    pub fn wait(self) -> Result<u64, TxError> {
        match &self.shared {
            Some(s) => s.wal.wait_durable(self.durable_needed, self.wait).map_err(TxError::Wal).map(|()| self.cstamp),
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
                let polled = s.wal.poll_durable(this.durable_needed, &mut this.wait, cx);
                polled.map(|r| r.map_err(TxError::Wal).map(|()| this.cstamp))
            }
            None => std::task::Poll::Ready(Ok(this.cstamp)),
        }
    }
}
