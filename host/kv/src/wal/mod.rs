//! Write-ahead log: the group-commit flusher (format in [`frame`]).
//!
//! Invariants:
//! - Records are appended to the shared buffer inside the commit lock, so buffer order (and hence
//!   file order) equals cstamp order, and stamps strictly increase along the log.
//! - The flusher thread owns the segment file. It takes the whole buffer, writes it, fsyncs, then
//!   publishes `durable = last stamp in that buffer`: every commit with a stamp at or below
//!   `durable` is on disk. Many committers waiting on one flush share one fsync (group commit).
//! - The flusher allocates a segment's file `Options::wal_preallocate` bytes ahead of its
//!   batches and writes each batch at the segment's durable length ([`segment`]). Only the last
//!   segment may end in such zeros: a rotation cuts the old one at its last batch first, and a
//!   clean stop cuts the last.
//! - A rotation request (from a checkpoint) cuts the pending buffer at its current length: the
//!   records up to the checkpoint stamp go to the old segment, later ones to the new one.
//! - A full disk (ENOSPC, EDQUOT) does not kill the log: the flusher cuts the segment back to its
//!   durable length, keeps the batch, and retries it every [`STALL_RETRY`] until it fits; while it
//!   is stalled, new commits are refused before they install anything ([`Wal::refusal`]), and the
//!   commits in the stalled batch wait (they are acknowledged only once the retry makes them
//!   durable). Any other write or fsync error stops the log for good: after a failed fsync the
//!   kernel may have dropped the dirty pages, so nothing written could be trusted.

mod frame;
mod segment;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

pub use frame::{FORMAT, OLDEST_FORMAT};
pub(crate) use frame::{
    MAX_PAYLOAD, data_end, encode, never_written, parse_segment_name, scan_segment, segment_path, unsupported_format,
};
use segment::Progress;
pub(crate) use segment::{Segment, create_segment};

use crate::error::TxError;
use crate::fs::{Fs, is_out_of_space};
use crate::options::Durability;
use crate::stats::Counters;

/// How many parked committers each woken one wakes in turn.
const WAKE_FANOUT: usize = 2;
/// Longest a flusher waits to grow a group commit.
const MAX_GATHER: Duration = Duration::from_millis(2);
/// How long a flusher waits for the committers of its last batch, in units of that batch's
/// write and fsync time (at most [`MAX_GATHER`]). Each fsync costs the flusher CPU as well as
/// time (about 60 µs of a 2-core VM's CPU per fdatasync, whatever it carries), and every
/// flush wakes its group, so larger groups leave more CPU to the committers. On such a VM,
/// ledge's counter function (32 connections, one durable transaction per request) ran at
/// 0.87x and 0.83x of hello's requests/s with a wait of four fsyncs against 0.75x and 0.77x
/// with two (two runs of 4 interleaved rounds, medians; one fsync 0.68x, half 0.76x, eight
/// and sixteen 0.81x), at 19 commits per fsync.
/// A lone committer never waits (the wait is for a group the last batch predicts).
const GATHER_FSYNCS: u32 = 4;
/// In periodic mode, a buffer this large is flushed without waiting for the interval.
const PERIODIC_FLUSH_BYTES: usize = 4 << 20;
/// How often a flusher stalled on a full disk tries its batch again.
const STALL_RETRY: Duration = Duration::from_millis(100);

/// Someone waiting for a stamp to become durable.
#[derive(Debug)]
enum Waiter {
    /// A thread blocked in [`Wal::wait_durable`].
    Thread(std::thread::Thread),
    /// A task awaiting a [`crate::CommitTicket`].
    Task(std::task::Waker),
}

impl Waiter {
    fn wake(self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Task(w) => w.wake(),
        }
    }
}

#[derive(Debug, Default)]
struct WalState {
    /// Frames appended by committers and not yet taken by the flusher.
    pending: Vec<u8>,
    /// Stamp of the last record in `pending`.
    pending_last: u64,
    /// Every commit with a stamp at or below this is durable.
    durable: u64,
    /// Sequence number of the segment the flusher is writing.
    segment: u64,
    /// Set by a checkpoint: switch segments after the first `cut` bytes of `pending` (the
    /// records at or below the checkpoint stamp; later ones go to the new segment).
    rotate: Option<usize>,
    shutdown: bool,
    /// Records in `pending`.
    pending_records: usize,
    /// When nonzero, the flusher sleeps until `pending_records` reaches it (1 = idle, waiting
    /// for anything; more = gathering a group commit).
    flusher_wants: usize,
    failed: Option<Arc<io::Error>>,
    /// Set while the disk is full: the flusher retries, new commits are refused.
    stalled: Option<Arc<io::Error>>,
    /// Set by [`Wal::request_flush`]: write what is pending now, whatever the durability mode.
    flush_now: bool,
    /// The flusher thread has returned.
    exited: bool,
    /// Committers parked until the given stamp is durable.
    waiters: Vec<(u64, Waiter)>,
}

/// The WAL's shared state between committers, the flusher and checkpoints.
#[derive(Debug)]
pub(crate) struct Wal {
    state: Mutex<WalState>,
    /// Wakes the flusher.
    work: Condvar,
    /// Wakes committers waiting for durability (and checkpoints waiting for a rotation).
    flushed: Condvar,
    /// Bytes written since the last checkpoint (the checkpoint trigger).
    pub bytes_since_checkpoint: AtomicU64,
    /// Mirror of `WalState::durable` for the lock-free fast path of committers.
    durable: AtomicU64,
    /// Committers whose commits are durable, still to be unparked.
    to_wake: Mutex<Vec<Waiter>>,
    /// How far ahead of its batches the flusher allocates a segment's space (0: not at all;
    /// `Options::wal_preallocate`; why in [`segment`]). On ext4 on a 2-core VM, a 200-byte
    /// write and fdatasync took a median 80-88 µs in allocated space against 116-134 µs at
    /// the end of a growing file (3,000 of each, alternated). A crash leaves up to this many
    /// zeros.
    preallocate: u64,
}

impl Wal {
    pub(crate) fn new(durable: u64, segment: u64, preallocate: u64) -> Wal {
        Wal {
            state: Mutex::new(WalState { durable, pending_last: durable, segment, ..WalState::default() }),
            work: Condvar::new(),
            flushed: Condvar::new(),
            bytes_since_checkpoint: AtomicU64::new(0),
            durable: AtomicU64::new(durable),
            to_wake: Mutex::new(Vec::new()),
            preallocate,
        }
    }

    /// Appends one encoded commit. Must be called with the commit lock held (stamp order).
    pub(crate) fn append(&self, cstamp: u64, frame_writer: impl FnOnce(&mut Vec<u8>)) {
        let mut st = self.state.lock();
        frame_writer(&mut st.pending);
        st.pending_last = cstamp;
        st.pending_records += 1;
        // Wake the flusher only when what it waits for has arrived, or a periodic buffer grew
        // large: a wakeup per commit would cost a context switch per commit.
        let wake = (st.flusher_wants > 0 && st.pending_records >= st.flusher_wants)
            || st.pending.len() >= PERIODIC_FLUSH_BYTES;
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    /// Blocks until every commit up to `stamp` is durable.
    pub(crate) fn wait_durable(&self, stamp: u64) -> Result<(), Arc<io::Error>> {
        if self.durable.load(Ordering::Acquire) >= stamp {
            return Ok(());
        }
        // Park rather than wait on a condvar: a condvar wakeup needs the state mutex again, so
        // 64 woken committers would file through it one context switch at a time. Unparked
        // threads need no lock and run in parallel.
        let me = std::thread::current();
        let mut registered = false;
        loop {
            {
                let mut st = self.state.lock();
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                if st.durable >= stamp {
                    return Ok(());
                }
                if st.exited {
                    // The flusher is gone: nothing will ever make `stamp` durable.
                    return Err(Arc::new(io::Error::other("WAL closed before commit was durable")));
                }
                if !registered {
                    st.waiters.push((stamp, Waiter::Thread(me.clone())));
                    registered = true;
                }
            }
            std::thread::park();
            if self.durable.load(Ordering::Acquire) >= stamp {
                self.help_wake();
                return Ok(());
            }
        }
    }

    /// Polls for `stamp` being durable, registering the task's waker if it is not yet.
    pub(crate) fn poll_durable(
        &self,
        stamp: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Arc<io::Error>>> {
        use std::task::Poll;
        if self.durable.load(Ordering::Acquire) >= stamp {
            self.help_wake();
            return Poll::Ready(Ok(()));
        }
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if st.durable >= stamp {
            return Poll::Ready(Ok(()));
        }
        if st.exited {
            return Poll::Ready(Err(Arc::new(io::Error::other("WAL closed before commit was durable"))));
        }
        st.waiters.push((stamp, Waiter::Task(cx.waker().clone())));
        Poll::Pending
    }

    /// Wakes up to [`WAKE_FANOUT`] committers whose commits are durable. The flusher starts the
    /// wake-up and every woken committer continues it, so a group of N wakes in about
    /// log(N) rounds spread over all cores instead of N sequential unparks by the flusher.
    fn help_wake(&self) {
        let batch: Vec<Waiter> = {
            let mut q = self.to_wake.lock();
            let n = q.len().min(WAKE_FANOUT);
            q.drain(..n).collect()
        };
        for t in batch {
            t.wake();
        }
    }

    /// Wakes every queued committer (before the flusher sleeps, or when it exits), so that a
    /// wake-up chain broken by a committer that left early strands nobody.
    fn wake_all(&self) {
        let all = std::mem::take(&mut *self.to_wake.lock());
        for t in all {
            t.wake();
        }
    }

    /// The failure that stopped the flusher, if any.
    pub(crate) fn failure(&self) -> Option<Arc<io::Error>> {
        self.state.lock().failed.clone()
    }

    /// Why a commit must be refused now, before it installs anything: the log failed for good,
    /// or the disk is full.
    pub(crate) fn refusal(&self) -> Option<TxError> {
        let st = self.state.lock();
        match (&st.failed, &st.stalled) {
            (Some(e), _) => Some(TxError::Wal(e.clone())),
            (None, Some(e)) => Some(TxError::DiskFull(e.clone())),
            (None, None) => None,
        }
    }

    /// Asks the flusher to write and fsync what is pending now (periodic mode waits otherwise).
    pub(crate) fn request_flush(&self) {
        self.state.lock().flush_now = true;
        self.work.notify_one();
    }

    /// Asks the flusher to start a new segment after the records pending now; returns the
    /// sequence number that segment will have. Cheap: call it under the commit lock.
    pub(crate) fn request_rotate(&self) -> u64 {
        let mut st = self.state.lock();
        st.rotate = Some(st.pending.len());
        self.work.notify_one();
        st.segment + 1
    }

    /// Waits until the flusher writes to segment `target` (or later).
    pub(crate) fn wait_segment(&self, target: u64) -> Result<(), Arc<io::Error>> {
        let mut st = self.state.lock();
        while st.segment < target {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.shutdown {
                return Err(Arc::new(io::Error::other("WAL closed during rotation")));
            }
            self.flushed.wait(&mut st);
        }
        Ok(())
    }

    /// Tells the flusher to write what is pending and exit.
    pub(crate) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.work.notify_all();
    }

    /// The flusher thread's body. Owns the open segment file.
    pub(crate) fn run_flusher(
        &self,
        fs: &dyn Fs,
        dir: &Path,
        mut segment: Segment,
        durability: Durability,
        counters: &Counters,
    ) {
        let mut spare = Vec::new();
        let mut batch_target = 0;
        let mut gather_for = Duration::ZERO;
        let mut st = self.state.lock();
        loop {
            match durability {
                Durability::Fsync => {
                    if st.pending.is_empty() && st.rotate.is_none() && !st.shutdown {
                        drop(st);
                        self.wake_all();
                        st = self.state.lock();
                    }
                    while st.pending.is_empty() && st.rotate.is_none() && !st.shutdown {
                        st.flusher_wants = 1;
                        self.work.wait(&mut st);
                        st.flusher_wants = 0;
                    }
                    // Group commit: the committers of the last batch plus those that queued
                    // during its fsync are likely to commit again soon; give them up to
                    // [`GATHER_FSYNCS`] fsyncs to join this batch instead of paying for the next.
                    let deadline = Instant::now() + gather_for;
                    while batch_target > 1
                        && st.pending_records < batch_target
                        && st.rotate.is_none()
                        && !st.shutdown
                        && Instant::now() < deadline
                    {
                        st.flusher_wants = batch_target;
                        self.work.wait_until(&mut st, deadline);
                        st.flusher_wants = 0;
                    }
                }
                Durability::Periodic(every) => {
                    // Let commits accumulate for one interval (a rotation or shutdown cuts it short).
                    let deadline = Instant::now() + every;
                    while st.rotate.is_none()
                        && !st.shutdown
                        && !st.flush_now
                        && st.pending.len() < PERIODIC_FLUSH_BYTES
                        && Instant::now() < deadline
                    {
                        self.work.wait_until(&mut st, deadline);
                    }
                }
            }
            if st.failed.is_some() {
                return;
            }
            let shutdown = st.shutdown;
            let rotate = st.rotate.take();
            st.flush_now = false;
            let next_seq = st.segment + 1;
            std::mem::swap(&mut st.pending, &mut spare);
            let last = st.pending_last;
            let batch_records = std::mem::take(&mut st.pending_records);
            drop(st);
            let started = Instant::now();

            let mut progress = Progress::default();
            let res = loop {
                match self.flush(
                    fs,
                    dir,
                    &mut segment,
                    &spare,
                    rotate.map(|cut| (cut, next_seq)),
                    &mut progress,
                    counters,
                ) {
                    Err(e) if is_out_of_space(&e) => {
                        let mut st = self.state.lock();
                        if st.shutdown {
                            break Err(e);
                        }
                        st.stalled = Some(Arc::new(e));
                        self.work.wait_for(&mut st, STALL_RETRY);
                    }
                    res => break res,
                }
            };
            spare.clear();

            st = self.state.lock();
            batch_target = batch_records + st.pending_records;
            gather_for = (started.elapsed() * GATHER_FSYNCS).min(MAX_GATHER);
            st.stalled = None;
            match res {
                Ok(()) => {
                    st.durable = st.durable.max(last);
                    if rotate.is_some() {
                        st.segment = next_seq;
                    }
                }
                Err(e) => st.failed = Some(Arc::new(e)),
            }
            self.durable.store(st.durable, Ordering::Release);
            let exit = st.failed.is_some() || (shutdown && st.pending.is_empty());
            if exit {
                st.shutdown = true;
                st.exited = true;
            }
            let durable = st.durable;
            let mut ready = Vec::new();
            let (go, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut st.waiters).into_iter().partition(|(s, _)| exit || *s <= durable);
            st.waiters = keep;
            ready.extend(go.into_iter().map(|(_, w)| w));
            drop(st);
            if exit {
                self.to_wake.lock().extend(ready);
                self.wake_all();
                self.flushed.notify_all();
                // A clean stop leaves no preallocated zeros for the next start to cut (it would
                // cut them anyway, as after a crash).
                let _ = segment.trim(fs);
                return;
            }
            // Anyone still queued from the previous round had its chain broken by a committer
            // that left early: wake those directly, so nobody waits more than one extra round.
            let stale = std::mem::replace(&mut *self.to_wake.lock(), ready);
            for t in stale {
                t.wake();
            }
            self.help_wake();
            // Checkpoints waiting for a rotation use the condvar.
            self.flushed.notify_all();
            st = self.state.lock();
        }
    }
}
