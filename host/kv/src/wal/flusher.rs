//! The flusher thread: gathers committers' frames into group commits, writes and fsyncs each
//! batch into the open segment (through [`super::segment`]), publishes what is durable and
//! wakes its committers; rotates segments for checkpoints and waits out a full disk.
//!
//! Invariants: the invariants of [`super`] that name the flusher; in short, `durable` only
//! moves to the last stamp of a batch once that batch is written and synced, and a batch a
//! full disk refused is kept and retried, never dropped.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::segment::{Progress, Segment};
use super::{PERIODIC_FLUSH_BYTES, Wal};
use crate::fs::{Fs, is_out_of_space};
use crate::options::Durability;
use crate::stats::Counters;

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
/// How often a flusher stalled on a full disk tries its batch again.
const STALL_RETRY: Duration = Duration::from_millis(100);

impl Wal {
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
                    // Group commit: the committers of the last batch (the read-only ones that
                    // waited for it before it was taken included) plus those that queued
                    // during its fsync are likely to commit again soon; give them up to
                    // [`GATHER_FSYNCS`] fsyncs to join this batch instead of paying for the
                    // next.
                    let deadline = Instant::now() + gather_for;
                    while batch_target > 1
                        && st.pending_records + st.pending_readers < batch_target
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
            let batch_members = st.take_members();
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
            batch_target = batch_members + st.pending_records + st.pending_readers;
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
