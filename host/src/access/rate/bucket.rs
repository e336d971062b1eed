//! One quota's limiter: governor's GCRA over a key table of this module's own (so that the
//! number of tracked keys is counted across every quota's table, and the table knows when its
//! last bucket is full again). The design is in the parent module's docs.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

use super::{QuotaKey, ceil_seconds, lock};

/// Shards of one quota's key table (each behind its own mutex); a power of two.
const SHARDS: usize = 16;

/// Counts shared by every quota's key table.
pub(super) struct Shared {
    /// Keys tracked across all tables; never above `max_keys`.
    pub(super) total: AtomicUsize,
    pub(super) max_keys: usize,
}

impl Shared {
    /// Counts one more key, unless that would exceed `max_keys`.
    fn try_reserve(&self) -> bool {
        self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_keys).then_some(n + 1)).is_ok()
    }
}

/// What one check did to one caller's bucket.
pub(super) struct Outcome {
    pub(super) allowed: bool,
    /// `r`: requests left in the burst (0 when refused).
    pub(super) remaining: u32,
    /// `t`, or `Retry-After` when refused, in whole seconds.
    pub(super) reset_seconds: u64,
    /// At least the time until this caller's bucket is full again (tat - now), at most one T
    /// more: how long the caller keeps this limiter busy.
    pub(super) busy_for: Duration,
}

/// One quota's governor limiter and its key table.
pub(super) struct Bucket<C: Clock> {
    pub(super) limiter: governor::RateLimiter<u64, Store, C, StateInformationMiddleware>,
    pub(super) shards: Arc<Shards>,
    /// T in nanoseconds.
    period: Duration,
    burst: u32,
    /// A clock reading taken just after governor's limiter took its own: "now" in governor's
    /// time frame is at least `clock.now() - start`, never less, so a test of `tat <= now`
    /// made with it errs towards "not yet" by nanoseconds.
    start: C::Instant,
}

impl<C: Clock> Bucket<C> {
    /// `watch_busy`: keep [`Self::busy_for`] (for caveat limiters: one atomic read per request,
    /// and a write when the caller's arrival time is the latest yet).
    pub(super) fn new(quota: QuotaKey, shared: &Arc<Shared>, clock: C, watch_busy: bool) -> Self {
        let shards = Arc::new(Shards {
            maps: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            len: AtomicUsize::new(0),
            shared: Arc::clone(shared),
            drop_below: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            watch_busy,
        });
        let limiter = governor::RateLimiter::new(quota.governor_quota(), Store(Arc::clone(&shards)), clock);
        let start = limiter.clock().now();
        Bucket { limiter, shards, period: quota.period(), burst: quota.burst, start }
    }

    /// What one request of the caller whose key is `key` gets (and charges).
    pub(super) fn decide(&self, key: u64) -> Outcome {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                // tat - now <= (B - r)·T: see the module docs.
                let until_full = self.period.saturating_mul(self.burst - remaining);
                Outcome { allowed: true, remaining, reset_seconds: ceil_seconds(until_full), busy_for: until_full }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                // Refused: now < tat - tau, and the bucket is full at tat = earliest + tau.
                let busy_for = wait.saturating_add(self.period.saturating_mul(self.burst - 1));
                Outcome { allowed: false, remaining: 0, reset_seconds: ceil_seconds(wait).max(1), busy_for }
            }
        }
    }

    /// governor's test without the update: a request at `now` is allowed when
    /// `now >= tat - tau`, with tau = T·(B - 1).
    pub(super) fn wait_before_next(&self, key: u64) -> Option<u64> {
        let tat = *self.shards.shard(key).get(&key)?;
        let now = self.now();
        let tau = self.period.saturating_mul(self.burst.saturating_sub(1)).as_nanos() as u64;
        let earliest = tat.saturating_sub(tau);
        (now < earliest).then(|| ceil_seconds(Duration::from_nanos(earliest - now)).max(1))
    }

    /// How long until every bucket this limiter tracks is full again (zero when they all are):
    /// until then dropping the limiter would hand someone a fresh budget. Made with
    /// `watch_busy`; otherwise always zero.
    pub(super) fn busy_for(&self) -> Duration {
        Duration::from_nanos(self.shards.busy_until.load(Ordering::Acquire).saturating_sub(self.now()))
    }

    /// The arrival time (in this limiter's frame, as of the last `retain_recent`) at or below
    /// which a key's bucket is full: governor's `drop_below` (now - T) plus T.
    pub(super) fn full_at(&self) -> u64 {
        self.shards.drop_below.load(Ordering::Acquire).saturating_add(self.period.as_nanos() as u64)
    }

    /// Now in nanoseconds of governor's frame, give or take (less) a few.
    fn now(&self) -> u64 {
        self.limiter.clock().now().duration_since(self.start).as_u64()
    }
}

/// Identity hasher: keys are already SipHash values.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Key hash → theoretical arrival time (nanoseconds since the limiter's start).
type Map = HashMap<u64, u64, BuildHasherDefault<KeyHasher>>;

/// One quota's key table. Invariant: `len` is the sum of the shards' lengths, and each of those
/// keys is counted once in `shared.total` (given back on removal and on drop).
pub(super) struct Shards {
    maps: Box<[Mutex<Map>]>,
    pub(super) len: AtomicUsize,
    shared: Arc<Shared>,
    /// governor's `drop_below` (its now - T) at the last `retain_recent`.
    drop_below: AtomicU64,
    /// The latest arrival time ever stored: once it has passed, every bucket is full again.
    busy_until: AtomicU64,
    /// Whether `busy_until` is kept.
    watch_busy: bool,
}

impl Shards {
    fn shard(&self, key: u64) -> MutexGuard<'_, Map> {
        // The top bits pick the shard; the map's buckets use the low ones.
        let index = (key >> (u64::BITS - SHARDS.trailing_zeros())) as usize % self.maps.len();
        lock(&self.maps[index])
    }

    pub(super) fn for_each(&self, mut f: impl FnMut(u64)) {
        for map in &self.maps {
            lock(map).values().for_each(|&tat| f(tat));
        }
    }

    /// Removes the keys whose arrival time satisfies `drop`, and gives back memory that a
    /// shrunken shard no longer needs.
    pub(super) fn remove_where(&self, mut drop: impl FnMut(u64) -> bool) {
        for map in &self.maps {
            let mut map = lock(map);
            let before = map.len();
            map.retain(|_, tat| !drop(*tat));
            let removed = before - map.len();
            if removed > 0 {
                self.len.fetch_sub(removed, Ordering::AcqRel);
                self.shared.total.fetch_sub(removed, Ordering::AcqRel);
            }
            if map.capacity() > 4 * map.len().max(256) {
                let keep = 2 * map.len();
                map.shrink_to(keep);
            }
        }
    }

    /// Notes a stored arrival time. A busy limiter's latest one is rarely beaten, so this is
    /// mostly a read of a shared line.
    fn stored(&self, tat: u64) {
        if self.watch_busy && tat > self.busy_until.load(Ordering::Relaxed) {
            self.busy_until.fetch_max(tat, Ordering::AcqRel);
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.shared.total.fetch_sub(*self.len.get_mut(), Ordering::AcqRel);
    }
}

/// governor's view of a [`Shards`]: the limiter owns this, the sweep keeps the other `Arc`.
pub(super) struct Store(Arc<Shards>);

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.0.shard(*key);
        match map.entry(*key) {
            Entry::Occupied(mut entry) => {
                let (outcome, tat) = f(Some(Nanos::from(*entry.get())))?;
                entry.insert(tat.as_u64());
                self.0.stored(tat.as_u64());
                Ok(outcome)
            }
            Entry::Vacant(entry) => {
                let (outcome, tat) = f(None)?;
                // At `max_keys`, a new caller is checked as fresh but not remembered until a
                // sweep makes room (see the module docs).
                if self.0.shared.try_reserve() {
                    entry.insert(tat.as_u64());
                    self.0.len.fetch_add(1, Ordering::AcqRel);
                    self.0.stored(tat.as_u64());
                }
                Ok(outcome)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.0.drop_below.store(drop_below, Ordering::Release);
        self.0.remove_where(|tat| tat <= drop_below);
    }

    fn shrink_to_fit(&self) {
        for map in &self.0.maps {
            lock(map).shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.0.len.load(Ordering::Acquire)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
