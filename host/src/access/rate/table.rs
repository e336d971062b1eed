//! The limiter behind [`super::RateLimiter`]: one governor limiter per distinct quota (each
//! with a key table of this module's own, [`super::bucket`]), each token family's share of the
//! caveat limiters ([`super::families`]), and the sweep that keeps the number of tracked keys
//! bounded. The design is in the parent module's docs.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, Reference};

use super::bucket::{Bucket, Outcome, Shared};
use super::families::{Families, TooMany};
use super::{MAX_CAVEAT_QUOTAS, MAX_FAMILY_CAVEATS, MAX_QUOTAS, QuotaKey, RateDecision, ceil_seconds, first_to_refuse};
use crate::access::policy::RateQuota;

/// The limiter, generic over governor's clock so that tests can move time by hand.
pub(super) struct Limiter<C: Clock> {
    buckets: RwLock<Buckets<C>>,
    families: Families,
    shared: Arc<Shared>,
    /// Keys the (scope, caller) hash; random per process.
    hasher: RandomState,
    clock: C,
    /// The clock reading that `families` counts nanoseconds from.
    origin: C::Instant,
    /// Held by the one request running a sweep.
    sweeping: Mutex<()>,
    /// Sweep once this many keys are tracked (7/8 of `max_keys`)...
    sweep_at: usize,
    /// ...down to at most this many (3/4 of `max_keys`).
    keep: usize,
}

/// Who chose a quota. Policy quotas and caveat quotas have tables of their own, so caveats, which
/// token holders choose freely, never take a policy's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    Policy,
    Caveat,
}

/// Every quota's limiter, by who chose the quota.
type Buckets<C> = HashMap<(Class, QuotaKey), Arc<Bucket<C>>>;

/// The detail of a refusal for want of a caveat limiter (every one is busy).
const NO_ROOM: &str = "every limiter for token `rate` caveats is busy, so a new rate cannot be tracked yet; retry \
                       later, or use a rate that other tokens use";

impl<C: Clock + Clone> Limiter<C> {
    pub(super) fn with_clock(max_keys: usize, clock: C) -> Self {
        let max_keys = max_keys.max(1);
        Limiter {
            buckets: RwLock::new(HashMap::new()),
            families: Families::new(max_keys / 4),
            shared: Arc::new(Shared { total: std::sync::atomic::AtomicUsize::new(0), max_keys }),
            hasher: RandomState::new(),
            origin: clock.now(),
            clock,
            sweeping: Mutex::new(()),
            sweep_at: (max_keys - max_keys / 8).max(1),
            keep: max_keys - max_keys / 4,
        }
    }

    pub(super) fn check(&self, scope: &str, caller: &str, policy: RateQuota, caveats: &[RateQuota]) -> RateDecision {
        let key = self.hasher.hash_one((scope, caller));
        let (policy_decision, _) = self.charge(scope, key, Class::Policy, QuotaKey::from(policy));
        let mut decisions = vec![policy_decision];
        if !caveats.is_empty() {
            decisions.extend(self.check_caveats(scope, caller, key, policy.burst, caveats));
        }
        if self.shared.total.load(Ordering::Relaxed) >= self.sweep_at {
            self.sweep();
        }
        // A refusal for want of room says so; otherwise the quota that refuses first.
        match decisions.iter().position(|d| d.detail.is_some()) {
            Some(crowded) => decisions.swap_remove(crowded),
            None => first_to_refuse(decisions),
        }
    }

    /// Charges each distinct caveat quota (its burst capped at `burst`, the policy's) in its own
    /// bucket, if the caller's family keeps at most [`MAX_FAMILY_CAVEATS`] caveat limiters busy
    /// with them; a single refusal otherwise, with nothing charged.
    fn check_caveats(
        &self,
        scope: &str,
        caller: &str,
        key: u64,
        burst: u32,
        caveats: &[RateQuota],
    ) -> Vec<RateDecision> {
        let mut quotas: Vec<QuotaKey> = Vec::with_capacity(caveats.len());
        for caveat in caveats {
            let quota = QuotaKey::from(RateQuota { burst: caveat.burst.min(burst), ..*caveat });
            if !quotas.contains(&quota) {
                quotas.push(quota);
            }
        }
        let ids: Vec<u64> = quotas.iter().map(|quota| self.hasher.hash_one(quota)).collect();
        let now = self.now();
        let charged = self.families.hold(self.hasher.hash_one(caller), now, &ids, || {
            let mut held = Vec::with_capacity(quotas.len());
            let decisions = quotas
                .iter()
                .zip(&ids)
                .map(|(&quota, &id)| {
                    let (decision, busy_for) = self.charge(scope, key, Class::Caveat, quota);
                    if let Some(busy_for) = busy_for {
                        held.push((id, now.saturating_add(u64::try_from(busy_for.as_nanos()).unwrap_or(u64::MAX))));
                    }
                    decision
                })
                .collect();
            (decisions, held)
        });
        charged.unwrap_or_else(|TooMany { wait }| {
            let detail = format!(
                "this token's family (its root token and every token narrowed from it) may keep at most \
                 {MAX_FAMILY_CAVEATS} distinct `rate` caveats busy at once, and this request would make more; \
                 retry later, or use fewer distinct rates"
            );
            vec![refusal(scope, quotas[0], Duration::from_nanos(wait), detail)]
        })
    }

    /// One request of `key` under `quota`: its decision, and how long it keeps the limiter busy
    /// (at least, at most one T more; `None` when no limiter could be had: then it is refused).
    fn charge(&self, scope: &str, key: u64, class: Class, quota: QuotaKey) -> (RateDecision, Option<Duration>) {
        match self.with_bucket(class, quota, |bucket| bucket.decide(key)) {
            Ok(Outcome { allowed, remaining, reset_seconds, busy_for }) => {
                let decision = RateDecision {
                    allowed,
                    policy_id: scope.to_owned(),
                    quota: quota.into(),
                    remaining,
                    reset_seconds,
                    retry_after_seconds: (!allowed).then_some(reset_seconds),
                    detail: None,
                };
                (decision, Some(busy_for))
            }
            Err(wait) => (refusal(scope, quota, wait, NO_ROOM.to_owned()), None),
        }
    }

    /// `Some(seconds to wait)` when one more request under `quota` would be refused now, without
    /// charging anything: for budgets charged only after the fact (failed authentications).
    pub(super) fn peek(&self, scope: &str, caller: &str, quota: RateQuota) -> Option<u64> {
        let key = self.hasher.hash_one((scope, caller));
        match self.with_bucket(Class::Policy, QuotaKey::from(quota), |bucket| bucket.wait_before_next(key)) {
            Ok(wait) => wait,
            Err(wait) => Some(ceil_seconds(wait).max(1)),
        }
    }

    /// How many quotas have a limiter of their own now.
    #[cfg(test)]
    pub(super) fn quotas_cached(&self) -> usize {
        read(&self.buckets).len()
    }

    /// How many token families keep a caveat limiter busy now.
    #[cfg(test)]
    pub(super) fn busy_families(&self) -> usize {
        self.families.len()
    }

    pub(super) fn tracked_keys(&self) -> usize {
        self.shared.total.load(Ordering::Acquire)
    }

    /// Nanoseconds since this limiter was made.
    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.origin).as_u64()
    }

    /// Runs `f` on the limiter for `quota`, creating it if needed. When [`MAX_QUOTAS`] of its
    /// class ([`MAX_CAVEAT_QUOTAS`] for caveats) are cached, one of them must go first: for
    /// policies the one tracking the fewest callers; for caveats one whose buckets are all full
    /// again, which loses nothing, and failing that none: `Err(wait)`, until one is idle.
    fn with_bucket<R>(&self, class: Class, quota: QuotaKey, f: impl FnOnce(&Bucket<C>) -> R) -> Result<R, Duration> {
        if let Some(bucket) = read(&self.buckets).get(&(class, quota)) {
            return Ok(f(bucket));
        }
        let bucket = {
            let mut buckets = write(&self.buckets);
            match buckets.get(&(class, quota)) {
                Some(bucket) => Arc::clone(bucket),
                None => {
                    let limit = match class {
                        Class::Policy => MAX_QUOTAS,
                        Class::Caveat => MAX_CAVEAT_QUOTAS,
                    };
                    if buckets.keys().filter(|(c, _)| *c == class).count() >= limit {
                        let victim = victim(&buckets, class)?;
                        buckets.remove(&victim);
                    }
                    let watch_busy = class == Class::Caveat;
                    let bucket = Arc::new(Bucket::new(quota, &self.shared, self.clock.clone(), watch_busy));
                    buckets.insert((class, quota), Arc::clone(&bucket));
                    bucket
                }
            }
        };
        Ok(f(&bucket))
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

/// The limiter of `class` to drop for a new one (see [`Limiter::with_bucket`]), or how long
/// until one of them may go.
fn victim<C: Clock>(buckets: &Buckets<C>, class: Class) -> Result<(Class, QuotaKey), Duration> {
    let same = || buckets.iter().filter(move |((c, _), _)| *c == class);
    match class {
        Class::Policy => {
            let fewest = same().min_by_key(|(_, bucket)| bucket.shards.len.load(Ordering::Relaxed));
            fewest.map(|(key, _)| *key).ok_or(Duration::ZERO)
        }
        Class::Caveat => match same().map(|(key, bucket)| (bucket.busy_for(), key)).min_by_key(|(busy, _)| *busy) {
            Some((busy_for, key)) if busy_for.is_zero() => Ok(*key),
            busy => Err(busy.map(|(busy_for, _)| busy_for).unwrap_or_default()),
        },
    }
}

/// A refusal for want of room, `wait` long at least.
fn refusal(scope: &str, quota: QuotaKey, wait: Duration, detail: String) -> RateDecision {
    let seconds = ceil_seconds(wait).max(1);
    RateDecision {
        allowed: false,
        policy_id: scope.to_owned(),
        quota: quota.into(),
        remaining: 0,
        reset_seconds: seconds,
        retry_after_seconds: Some(seconds),
        detail: Some(detail),
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
