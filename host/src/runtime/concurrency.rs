//! A function's limit on live instances (`limits.max_concurrency`), one per function for its
//! whole life: redeploys and policy changes adjust it instead of replacing it.
//!
//! Invariant: at no moment do more instances of a function run than its current limit allows,
//! counting the ones started under an earlier, higher limit: lowering the limit takes away free
//! permits at once and the rest as running instances finish (their permits are not returned).

use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Permits for the live instances of one function.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    state: Mutex<Limit>,
    /// Instances alive now, and a wake-up for whoever waits for none ([`ConcurrencyLimit::idle`]).
    running: AtomicUsize,
    stopped: Notify,
}

#[derive(Debug)]
struct Limit {
    current: u32,
    /// Permits still held by running instances that must not come back (a lowered limit).
    owed: u32,
}

/// One live instance's permit; given back (or kept, while the limit is being lowered) on drop.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<ConcurrencyLimit>,
}

impl ConcurrencyLimit {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(ConcurrencyLimit {
            permits: Arc::new(Semaphore::new(limit as usize)),
            state: Mutex::new(Limit { current: limit, owed: 0 }),
            running: AtomicUsize::new(0),
            stopped: Notify::new(),
        })
    }

    /// A permit if an instance may start now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.running.fetch_add(1, Ordering::AcqRel);
        Some(Permit { permit: Some(permit), limit: self.clone() })
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        self.state.lock().current
    }

    /// Resolves once no instance is alive (for a removal that must not race in-flight writes).
    pub async fn idle(&self) {
        loop {
            let stopped = self.stopped.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            stopped.await;
        }
    }

    /// Changes the limit for instances started from now on.
    pub fn set(&self, limit: u32) {
        let mut state = self.state.lock();
        if limit >= state.current {
            let more = limit - state.current;
            let repaid = more.min(state.owed);
            state.owed -= repaid;
            self.permits.add_permits((more - repaid) as usize);
        } else {
            let fewer = state.current - limit;
            let taken = self.permits.forget_permits(fewer as usize) as u32;
            state.owed += fewer - taken;
        }
        state.current = limit;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limit.state.lock();
        if state.owed > 0 {
            state.owed -= 1;
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
        // Otherwise the permit goes back to the semaphore as it drops.
        drop(state);
        if self.limit.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.limit.stopped.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_the_limit_holds_back_permits_of_running_instances() {
        let limit = ConcurrencyLimit::new(4);
        let running: Vec<Permit> = (0..4).map(|_| limit.try_acquire().unwrap()).collect();
        limit.set(2);
        let mut running = running.into_iter();
        drop(running.next());
        drop(running.next());
        assert!(limit.try_acquire().is_none(), "two still run: the new limit of 2 is reached");
        drop(running.next());
        let one = limit.try_acquire().expect("one of two");
        assert!(limit.try_acquire().is_none());
        drop(one);
        drop(running);
        let both: Vec<Permit> = (0..2).map(|_| limit.try_acquire().unwrap()).collect();
        assert!(limit.try_acquire().is_none());
        drop(both);
        limit.set(3);
        let three: Vec<Permit> = (0..5).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(three.len(), 3);
    }

    #[test]
    fn raising_the_limit_first_cancels_what_is_owed() {
        let limit = ConcurrencyLimit::new(2);
        let held: Vec<Permit> = (0..2).map(|_| limit.try_acquire().unwrap()).collect();
        limit.set(1);
        limit.set(2);
        assert!(limit.try_acquire().is_none(), "both still run under a limit of 2");
        drop(held);
        let again: Vec<Permit> = (0..2).map(|_| limit.try_acquire().unwrap()).collect();
        assert!(limit.try_acquire().is_none());
        assert_eq!(again.len(), 2);
    }
}
