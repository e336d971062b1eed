//! The key tables behind [`super::RateLimiter`]: one governor limiter per distinct quota, a
//! state store of this module's own under each (so that the number of tracked keys is bounded
//! across all of them), and the sweep that keeps it so. The design is in the parent module's
//! docs.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

use super::{MAX_QUOTAS, QuotaKey, RateDecision, ceil_seconds, first_to_refuse};
use crate::access::policy::RateQuota;

/// Shards of one quota's key table (each behind its own mutex); a power of two.
const SHARDS: usize = 16;

/// The limiter, generic over governor's clock so that tests can move time by hand.
pub(super) struct Limiter<C: Clock> {
    buckets: RwLock<Buckets<C>>,
    shared: Arc<Shared>,
    /// Keys the (scope, caller) hash; random per process.
    hasher: RandomState,
    clock: C,
    /// Held by the one request running a sweep.
    sweeping: Mutex<()>,
    /// Sweep once this many keys are tracked (7/8 of `max_keys`)...
    sweep_at: usize,
    /// ...down to at most this many (3/4 of `max_keys`).
    keep: usize,
}

/// Who chose a quota. Token holders choose caveat quotas freely, so a flood of distinct caveats
/// may only ever evict other caveats' buckets, never a policy's: the policy's budget is the one
/// every request is charged against, and evicting it would hand out fresh budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    Policy,
    Caveat,
}

/// Every quota's limiter, by who chose the quota.
type Buckets<C> = HashMap<(Class, QuotaKey), Arc<Bucket<C>>>;

/// Counts shared by every quota's key table.
struct Shared {
    /// Keys tracked across all tables; never above `max_keys`.
    total: AtomicUsize,
    max_keys: usize,
}

impl Shared {
    /// Counts one more key, unless that would exceed `max_keys`.
    fn try_reserve(&self) -> bool {
        self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_keys).then_some(n + 1)).is_ok()
    }
}

impl<C: Clock + Clone> Limiter<C> {
    pub(super) fn with_clock(max_keys: usize, clock: C) -> Self {
        let max_keys = max_keys.max(1);
        Limiter {
            buckets: RwLock::new(HashMap::new()),
            shared: Arc::new(Shared { total: AtomicUsize::new(0), max_keys }),
            hasher: RandomState::new(),
            clock,
            sweeping: Mutex::new(()),
            sweep_at: (max_keys - max_keys / 8).max(1),
            keep: max_keys - max_keys / 4,
        }
    }

    pub(super) fn check(&self, scope: &str, caller: &str, policy: RateQuota, caveats: &[RateQuota]) -> RateDecision {
        let capped = caveats.iter().map(|c| (Class::Caveat, RateQuota { burst: c.burst.min(policy.burst), ..*c }));
        let quotas: Vec<(Class, RateQuota)> = std::iter::once((Class::Policy, policy)).chain(capped).collect();
        let key = self.hasher.hash_one((scope, caller));
        let decisions: Vec<RateDecision> = quotas
            .iter()
            .map(|&(class, quota)| {
                let quota = QuotaKey::from(quota);
                let (allowed, remaining, reset_seconds) = self.with_bucket(class, quota, |bucket| bucket.decide(key));
                RateDecision {
                    allowed,
                    policy_id: scope.to_owned(),
                    quota: quota.into(),
                    remaining,
                    reset_seconds,
                    retry_after_seconds: (!allowed).then_some(reset_seconds),
                }
            })
            .collect();
        if self.shared.total.load(Ordering::Relaxed) >= self.sweep_at {
            self.sweep();
        }
        first_to_refuse(decisions)
    }

    /// `Some(seconds to wait)` when one more request under `quota` would be refused now, without
    /// charging anything: for budgets charged only after the fact (failed authentications).
    pub(super) fn peek(&self, scope: &str, caller: &str, quota: RateQuota) -> Option<u64> {
        let key = self.hasher.hash_one((scope, caller));
        self.with_bucket(Class::Policy, QuotaKey::from(quota), |bucket| bucket.wait_before_next(key))
    }

    /// How many quotas have a limiter of their own now.
    #[cfg(test)]
    pub(super) fn quotas_cached(&self) -> usize {
        read(&self.buckets).len()
    }

    pub(super) fn tracked_keys(&self) -> usize {
        self.shared.total.load(Ordering::Acquire)
    }

    /// Runs `f` on the limiter for `quota`, creating it if needed (and dropping the one of the
    /// same class with the fewest tracked callers when [`MAX_QUOTAS`] of it are cached).
    fn with_bucket<R>(&self, class: Class, quota: QuotaKey, f: impl FnOnce(&Bucket<C>) -> R) -> R {
        if let Some(bucket) = read(&self.buckets).get(&(class, quota)) {
            return f(bucket);
        }
        let bucket = {
            let mut buckets = write(&self.buckets);
            match buckets.get(&(class, quota)) {
                Some(bucket) => Arc::clone(bucket),
                None => {
                    let same_class = buckets.iter().filter(|((c, _), _)| *c == class);
                    if same_class.clone().count() >= MAX_QUOTAS {
                        let victim = same_class.min_by_key(|(_, b)| b.shards.len.load(Ordering::Relaxed));
                        if let Some(victim) = victim.map(|(key, _)| *key) {
                            buckets.remove(&victim);
                        }
                    }
                    let bucket = Arc::new(Bucket::new(quota, &self.shared, self.clock.clone()));
                    buckets.insert((class, quota), Arc::clone(&bucket));
                    bucket
                }
            }
        };
        f(&bucket)
    }

    /// Brings the tracked keys down to `keep`: governor's `retain_recent` first (keys whose
    /// bucket is full again), then the keys with the smallest debt. One sweep at a time; a
    /// request that finds one running goes on without waiting.
    fn sweep(&self) {
        let Ok(_sweeping) = self.sweeping.try_lock() else { return };
        if self.shared.total.load(Ordering::Acquire) < self.sweep_at {
            return; // another request swept meanwhile
        }
        let buckets: Vec<Arc<Bucket<C>>> = read(&self.buckets).values().cloned().collect();
        for bucket in &buckets {
            bucket.limiter.retain_recent();
        }
        let total = self.shared.total.load(Ordering::Acquire);
        if total <= self.keep {
            return;
        }
        // debt = tat - (time at which the bucket is full), in each limiter's own time frame.
        let mut debts = Vec::with_capacity(total);
        for bucket in &buckets {
            let full_at = bucket.full_at();
            bucket.shards.for_each(|tat| debts.push(tat.saturating_sub(full_at)));
        }
        let excess = (total - self.keep).min(debts.len());
        if excess == 0 {
            return;
        }
        let (below, threshold, _) = debts.select_nth_unstable(excess - 1);
        let threshold = *threshold;
        // Keys strictly below the threshold all go; of those at it, only as many as needed.
        let mut at_threshold = excess - below.iter().filter(|&&debt| debt < threshold).count();
        for bucket in &buckets {
            let full_at = bucket.full_at();
            bucket.shards.remove_where(|tat| {
                let debt = tat.saturating_sub(full_at);
                if debt < threshold {
                    true
                } else if debt == threshold && at_threshold > 0 {
                    at_threshold -= 1;
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// One quota's governor limiter and its key table.
struct Bucket<C: Clock> {
    limiter: governor::RateLimiter<u64, Store, C, StateInformationMiddleware>,
    shards: Arc<Shards>,
    /// T in nanoseconds.
    period: Duration,
    burst: u32,
    /// The clock reading governor's time frame starts at (taken together with the limiter's own,
    /// nanoseconds apart): where `peek` places "now" among the stored arrival times.
    start: C::Instant,
}

impl<C: Clock> Bucket<C> {
    fn new(quota: QuotaKey, shared: &Arc<Shared>, clock: C) -> Self {
        let shards = Arc::new(Shards {
            maps: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            len: AtomicUsize::new(0),
            shared: Arc::clone(shared),
            drop_below: AtomicU64::new(0),
        });
        let start = clock.now();
        Bucket {
            limiter: governor::RateLimiter::new(quota.governor_quota(), Store(Arc::clone(&shards)), clock),
            shards,
            period: quota.period(),
            burst: quota.burst,
            start,
        }
    }

    /// (allowed, r, t) for one request of the caller whose key is `key`.
    fn decide(&self, key: u64) -> (bool, u32, u64) {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                // tat - now <= (B - r)·T: see the module docs.
                let until_full = self.period.saturating_mul(self.burst - remaining);
                (true, remaining, ceil_seconds(until_full))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                (false, 0, ceil_seconds(wait).max(1))
            }
        }
    }

    /// governor's test without the update: a request at `now` is allowed when
    /// `now >= tat - tau`, with tau = T·(B - 1).
    fn wait_before_next(&self, key: u64) -> Option<u64> {
        let tat = *self.shards.shard(key).get(&key)?;
        let now = self.limiter.clock().now().duration_since(self.start).as_u64();
        let tau = self.period.saturating_mul(self.burst.saturating_sub(1)).as_nanos() as u64;
        let earliest = tat.saturating_sub(tau);
        (now < earliest).then(|| ceil_seconds(Duration::from_nanos(earliest - now)).max(1))
    }

    /// The arrival time (in this limiter's frame, as of the last `retain_recent`) at or below
    /// which a key's bucket is full: governor's `drop_below` (now - T) plus T.
    fn full_at(&self) -> u64 {
        self.shards.drop_below.load(Ordering::Acquire).saturating_add(self.period.as_nanos() as u64)
    }
}

/// Identity hasher: keys are already SipHash values.
#[derive(Default)]
struct KeyHasher(u64);

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
struct Shards {
    maps: Box<[Mutex<Map>]>,
    len: AtomicUsize,
    shared: Arc<Shared>,
    /// governor's `drop_below` (its now - T) at the last `retain_recent`.
    drop_below: AtomicU64,
}

impl Shards {
    fn shard(&self, key: u64) -> MutexGuard<'_, Map> {
        // The top bits pick the shard; the map's buckets use the low ones.
        let index = (key >> (u64::BITS - SHARDS.trailing_zeros())) as usize % self.maps.len();
        lock(&self.maps[index])
    }

    fn for_each(&self, mut f: impl FnMut(u64)) {
        for map in &self.maps {
            lock(map).values().for_each(|&tat| f(tat));
        }
    }

    /// Removes the keys whose arrival time satisfies `drop`, and gives back memory that a
    /// shrunken shard no longer needs.
    fn remove_where(&self, mut drop: impl FnMut(u64) -> bool) {
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
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.shared.total.fetch_sub(*self.len.get_mut(), Ordering::AcqRel);
    }
}

/// governor's view of a [`Shards`]: the limiter owns this, the sweep keeps the other `Arc`.
struct Store(Arc<Shards>);

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
                Ok(outcome)
            }
            Entry::Vacant(entry) => {
                let (outcome, tat) = f(None)?;
                // At `max_keys`, a new caller is checked as fresh but not remembered until a
                // sweep makes room (see the module docs).
                if self.0.shared.try_reserve() {
                    entry.insert(tat.as_u64());
                    self.0.len.fetch_add(1, Ordering::AcqRel);
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

// The maps behind these locks hold plain integers and stay consistent whatever a panicking
// holder was doing, so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
