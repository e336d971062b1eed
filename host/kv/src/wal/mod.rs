//! Write-ahead log: what committers and the flusher share (the flusher's loop in [`flusher`],
//! the format in [`frame`], the file in [`segment`]).
//!
//! Invariants:
//! - Records are appended to the shared buffer inside the commit lock, so buffer order (and hence
//!   file order) equals cstamp order, and stamps strictly increase along the log.
//! - The flusher thread owns the segment file. It takes the whole buffer, writes it, fsyncs, then
//!   publishes `durable = last stamp in that buffer`: every commit with a stamp at or below
//!   `durable` is on disk. Many committers waiting on one flush share one fsync (group commit).
//!   The flusher gathers a group as large as the last one before it writes; a read-only commit
//!   waiting for a stamp in the buffer is one of the group, though it adds no record ([`Wait`]).
//! - The flusher allocates a segment's file `Options::wal_preallocate` bytes ahead of its
//!   batches and writes each batch at the segment's durable length ([`segment`]). Only the last
//!   segment may end in such zeros: a rotation cuts the old one at its last batch first, and a
//!   clean stop cuts the last.
//! - A rotation request (from a checkpoint) cuts the pending buffer at its current length: the
//!   records up to the checkpoint stamp go to the old segment, later ones to the new one.
//! - A full disk (ENOSPC, EDQUOT) does not kill the log: the flusher cuts the segment back to its
//!   durable length, keeps the batch, and retries it every [`flusher::STALL_RETRY`] until it fits; while it
//!   is stalled, new commits are refused before they install anything ([`Wal::refusal`]), and the
//!   commits in the stalled batch wait (they are acknowledged only once the retry makes them
//!   durable). Any other write or fsync error stops the log for good: after a failed fsync the
//!   kernel may have dropped the dirty pages, so nothing written could be trusted.

mod flusher;
mod frame;
mod segment;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

pub use frame::{FORMAT, OLDEST_FORMAT};
pub(crate) use frame::{
    MAX_PAYLOAD, data_end, encode, never_written, parse_segment_name, scan_segment, segment_path, unsupported_format,
};
pub(crate) use segment::create_segment;

use crate::error::TxError;

/// How many parked committers each woken one wakes in turn.
const WAKE_FANOUT: usize = 2;
/// In periodic mode, a buffer this large is flushed without waiting for the interval.
const PERIODIC_FLUSH_BYTES: usize = 4 << 20;

/// Who waits for a stamp to become durable, as the flusher gathering a group commit counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A read-only commit whose snapshot is not durable yet. It has no record in the log, yet the
    /// batch holding its snapshot releases it, and it will likely commit again after: one of
    /// that batch's group. Without counting it, a flusher gathering for the group waits out its
    /// whole window whenever the group's other members are such readers (SmallBank at 2
    /// threads timed out in 12% of its batches: 72 µs of gathering per 100 µs fsync).
    ReadOnlyCommit,
    /// A commit with a record (its append counted it), or a caller that is not a commit (a
    /// flush, a backup).
    Other,
}

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
    /// Read-only commits waiting for a stamp that only `pending` will make durable: members of
    /// the next group commit with no record in it ([`Wait::ReadOnlyCommit`]).
    pending_readers: usize,
    /// The last stamp of the batch the flusher is writing (or wrote last): a waiter for a stamp
    /// above it waits for `pending`.
    flushing_up_to: u64,
    /// When nonzero, the flusher sleeps until `pending_records + pending_readers` reaches it
    /// (1 = idle, waiting for anything; more = gathering a group commit).
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

impl WalState {
    /// Whether the flusher is waiting and what it waits for has arrived.
    fn group_gathered(&self) -> bool {
        self.flusher_wants > 0 && self.pending_records + self.pending_readers >= self.flusher_wants
    }

    /// The flusher takes `pending` to write it: returns its members (the commits it holds and
    /// the readers waiting for it) and starts counting for the next. A reader that registers
    /// from now on for a stamp in it waits for the batch in flight, not for the next.
    fn take_members(&mut self) -> usize {
        self.flushing_up_to = self.pending_last;
        std::mem::take(&mut self.pending_records) + std::mem::take(&mut self.pending_readers)
    }
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
            state: Mutex::new(WalState {
                durable,
                pending_last: durable,
                flushing_up_to: durable,
                segment,
                ..WalState::default()
            }),
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
        let wake = st.group_gathered() || st.pending.len() >= PERIODIC_FLUSH_BYTES;
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    /// Registers `waiter` for `stamp`, counting a read-only commit that waits for `pending` as a
    /// member of the next group (and waking the flusher if that completes the group it wants).
    fn register(&self, st: &mut WalState, stamp: u64, wait: Wait, waiter: Waiter) {
        st.waiters.push((stamp, waiter));
        if wait == Wait::ReadOnlyCommit && stamp > st.flushing_up_to {
            st.pending_readers += 1;
            if st.group_gathered() {
                self.work.notify_one();
            }
        }
    }

    /// Blocks until every commit up to `stamp` is durable.
    pub(crate) fn wait_durable(&self, stamp: u64, wait: Wait) -> Result<(), Arc<io::Error>> {
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
                    self.register(&mut st, stamp, wait, Waiter::Thread(me.clone()));
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

    /// Polls for `stamp` being durable, registering the task's waker if it is not yet. `wait`
    /// becomes [`Wait::Other`] once counted, so a task polled again is not counted twice.
    pub(crate) fn poll_durable(
        &self,
        stamp: u64,
        wait: &mut Wait,
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
        self.register(&mut st, stamp, *wait, Waiter::Task(cx.waker().clone()));
        *wait = Wait::Other;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_gathering(wants: usize) -> Wal {
        let wal = Wal::new(0, 1, 0);
        wal.state.lock().flusher_wants = wants;
        wal
    }

    fn register(wal: &Wal, stamp: u64, wait: Wait) {
        let mut st = wal.state.lock();
        wal.register(&mut st, stamp, wait, Waiter::Thread(std::thread::current()));
    }

    #[test]
    fn a_read_only_commit_waiting_for_the_buffer_completes_the_group() {
        let wal = wal_gathering(2);
        wal.append(1, |buf| buf.push(0));
        assert!(!wal.state.lock().group_gathered());
        register(&wal, 1, Wait::ReadOnlyCommit);
        let st = wal.state.lock();
        assert_eq!((st.pending_records, st.pending_readers), (1, 1));
        assert!(st.group_gathered());
    }

    #[test]
    fn a_reader_completing_the_group_wakes_the_gathering_flusher() {
        let wal = Arc::new(Wal::new(0, 1, 0));
        wal.append(1, |buf| buf.push(0));
        let flusher = {
            let wal = wal.clone();
            std::thread::spawn(move || {
                // As the flusher gathers: a long window, so only a wake-up ends it in time.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                let mut st = wal.state.lock();
                st.flusher_wants = 2;
                while !st.group_gathered() {
                    if wal.work.wait_until(&mut st, deadline).timed_out() {
                        return false;
                    }
                }
                true
            })
        };
        while wal.state.lock().flusher_wants == 0 {
            std::thread::yield_now();
        }
        register(&wal, 1, Wait::ReadOnlyCommit);
        assert!(flusher.join().unwrap(), "the flusher was woken, not left to its deadline");
    }

    #[test]
    fn taking_a_batch_hands_over_its_members_and_starts_the_next_count() {
        let wal = wal_gathering(2);
        wal.append(1, |buf| buf.push(0));
        register(&wal, 1, Wait::ReadOnlyCommit);
        let mut st = wal.state.lock();
        assert_eq!(st.take_members(), 2);
        assert_eq!((st.pending_records, st.pending_readers, st.flushing_up_to), (0, 0, 1));
        drop(st);
        // A reader of the batch now in flight is not one of the next group; one of a later
        // commit is.
        register(&wal, 1, Wait::ReadOnlyCommit);
        assert_eq!(wal.state.lock().pending_readers, 0);
        wal.append(2, |buf| buf.push(0));
        register(&wal, 2, Wait::ReadOnlyCommit);
        assert_eq!(wal.state.lock().pending_readers, 1);
    }

    #[test]
    fn a_writer_is_counted_once_by_its_append_and_not_again_when_it_waits() {
        let wal = wal_gathering(2);
        wal.append(1, |buf| buf.push(0));
        register(&wal, 1, Wait::Other);
        let st = wal.state.lock();
        assert_eq!((st.pending_records, st.pending_readers), (1, 0));
        assert!(!st.group_gathered());
    }

    #[test]
    fn a_task_polled_again_is_counted_once() {
        let wal = wal_gathering(3);
        wal.append(1, |buf| buf.push(0));
        let mut wait = Wait::ReadOnlyCommit;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..2 {
            assert!(wal.poll_durable(1, &mut wait, &mut cx).is_pending());
        }
        assert_eq!(wait, Wait::Other);
        assert_eq!(wal.state.lock().pending_readers, 1);
    }
}
