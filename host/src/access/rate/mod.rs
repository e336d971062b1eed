//! Rate limits: one process-wide GCRA limiter (the `governor` crate) keyed by scope and caller,
//! and the IETF `RateLimit-Policy` / `RateLimit` headers that advertise it.
//!
//! ```no_run
//! use std::time::Duration;
//! use ledge::access::policy::RateQuota;
//! use ledge::access::rate::RateLimiter;
//!
//! let limiter = RateLimiter::new(100_000);
//! let policy = RateQuota { quota: 100, window: Duration::from_secs(60), burst: 100 };
//! let token = ledge::access::caveats::parse_rate("10/s").unwrap();
//! let decision = limiter.check("hello", "token-id-or-client-ip", policy, &[token]);
//! for (name, value) in decision.headers() {
//!     println!("{name}: {value}"); // ratelimit-policy: "hello";q=100;w=60 ...
//! }
//! ```
//!
//! # Design
//!
//! - **One governor limiter per distinct quota.** A governor keyed limiter has a single quota, but
//!   callers of one function may be under different quotas (a token's `rate` caveat, a policy
//!   replaced at run time). So each distinct [`RateQuota`] gets its own keyed limiter, created on
//!   first use and cached, shared by every caller under that quota. Policy quotas and caveat
//!   quotas are cached apart, at most [`MAX_QUOTAS`] and [`MAX_CAVEAT_QUOTAS`] of them, so
//!   caveats, which token holders choose, never take a policy's place. A caller whose quota
//!   changes starts with a fresh bucket under the new quota.
//! - **Every quota is charged.** A request is charged against the policy's quota and against
//!   each `rate` caveat of its token, each in its own bucket, and runs only if all allow it; a
//!   caveat's burst is capped at the policy's. So attenuation only narrows: a caveat with a
//!   higher rate changes nothing, and a caveat nobody used before brings no fresh budget (the
//!   policy's bucket was charged all along).
//! - **No caveat limiter is dropped while it still limits anyone.** Making room for a new
//!   caveat quota drops a caveat limiter whose buckets are all full again (its latest stored
//!   arrival time has passed, even if a sweep, below, dropped the key that set it): every
//!   caller under it would find a full bucket anyway, so nothing is lost. If there is none,
//!   nothing is dropped and the request is refused (429, [`RateDecision::problem_detail`] says
//!   why, `Retry-After` until the first caveat limiter is idle). Otherwise anyone could attenuate a `rate = 1/h`
//!   token with 64 other rates (no key needed), cycle through them until the 1/h limiter was
//!   dropped, and get a fresh burst each time, while resetting other tokens' caveat limiters
//!   on the way. (A new policy quota drops the policy limiter tracking the fewest callers:
//!   policies are the operator's, and few.)
//! - **A token family holds at most [`MAX_FAMILY_CAVEATS`] caveat limiters busy.** Refusing
//!   new caveat quotas while the table is busy would let one family fill it (each attenuation
//!   a new rate) and refuse every other family's new rates. So each family (the caller: a
//!   token's root id) is charged for the caveat limiters it keeps busy, across every function:
//!   a request whose caveats would make it more than [`MAX_FAMILY_CAVEATS`] is refused (429,
//!   nothing charged but the policy's quota), and the rest of the table stays for others.
//!   Filling it takes [`MAX_CAVEAT_QUOTAS`] / [`MAX_FAMILY_CAVEATS`] families, that is root
//!   tokens, which only a key holder mints. The family table holds at most `max_keys / 4`
//!   families with a busy limiter (the idle ones are dropped to make room); a family that
//!   finds no room is not remembered, which weakens only this bound, never a rate.
//! - **Keys.** The key is a 64-bit keyed SipHash of `(scope, caller)` (random key per process), so
//!   a tracked caller costs 16 bytes of table (key and theoretical arrival time) however long its
//!   name. Two callers collide with probability about n²/2⁶⁵ (3·10⁻¹⁰ for 100,000 callers), and
//!   then share one budget; the random key stops anyone from choosing colliding names.
//! - **Memory bound.** At most [`MAX_QUOTAS`] + [`MAX_CAVEAT_QUOTAS`] limiters, `max_keys / 4`
//!   families of at most [`MAX_FAMILY_CAVEATS`] entries each, and `max_keys` keys. governor's own
//!   stores grow without bound unless pruned, and its `retain_recent` only drops keys whose
//!   bucket is full again. The state store here is this module's own (it implements governor's
//!   `StateStore`, so governor still does all the GCRA arithmetic) and counts keys across every
//!   quota's limiter:
//!   - once [`RateLimiter::tracked_keys`] reaches 7/8 of `max_keys`, the request that sees it runs
//!     a sweep: governor's `retain_recent` on every limiter, then, if still above 3/4 of
//!     `max_keys`, eviction of the keys whose bucket would refill soonest (smallest debt
//!     `tat - now`) down to 3/4. Evicting a key with debt d gives that caller at most d/T requests
//!     early (T = emission interval), so the least valuable state goes first;
//!   - a new key is never stored beyond `max_keys` (requests racing a sweep): such a caller is
//!     checked as a fresh caller and not remembered until the sweep has made room. This fails
//!     open for new callers for the length of one sweep, never for tracked ones, and keeps
//!     [`RateLimiter::tracked_keys`] `<= max_keys` at all times.
//!
//!   Sweeps cost O(`max_keys`) and happen at most once per `max_keys / 8` new keys: amortised a
//!   handful of operations per new key.
//!
//! # Header arithmetic (shared/notes/anchors.md, "RateLimit headers from GCRA")
//!
//! T = emission interval = window / quota, B = burst, tat = theoretical arrival time.
//! - `RateLimit-Policy: "<id>";q=B;w=<window in seconds, rounded up>`.
//! - Allowed: `r` = governor's `remaining_burst_capacity()` = floor(B - (tat - now) / T), and `t` =
//!   seconds until the bucket is full again = tat - now. governor keeps `tat` private, but from
//!   the formula for `r`, tat - now <= (B - r)·T; `t` is ceil((B - r)·T): at most one T late,
//!   never early (a client that waits `t` seconds finds the bucket full). `t` = 0 only when r = B.
//! - Refused: `r` = 0 and `t` = `Retry-After` = ceil(governor's `NotUntil::wait_time_from(now)`),
//!   at least 1.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use governor::clock::MonotonicClock;
use http::HeaderName;

use crate::access::policy::RateQuota;
use table::Limiter;

mod bucket;
mod families;
mod table;

/// What one token may do to the admin API: generous for deploy scripts, bounded for a leaked
/// token in a loop.
pub const ADMIN_QUOTA: RateQuota = RateQuota { quota: 50, window: Duration::from_secs(1), burst: 100 };

/// Failed authentications one client address (an IPv6 /64) may cause: 30 a minute, in bursts of
/// up to 30. Past it the server answers 429 without verifying anything, so a stream of forged
/// tokens cannot make it compute signatures without bound.
pub const AUTH_FAILURE_QUOTA: RateQuota = RateQuota { quota: 30, window: Duration::from_secs(60), burst: 30 };

/// The most distinct policy quotas with a limiter of their own.
pub const MAX_QUOTAS: usize = 64;

/// The most distinct token `rate` caveat quotas with a limiter of their own (an idle one costs
/// about a kilobyte).
pub const MAX_CAVEAT_QUOTAS: usize = 256;

/// The most caveat limiters one token family may keep busy at once (its buckets in them not
/// yet full again), across every function.
pub const MAX_FAMILY_CAVEATS: usize = 8;

/// The rate-limit key of an anonymous caller: its IPv4 address, or the /64 of its IPv6 address
/// (one host usually holds a whole /64, so keying single IPv6 addresses would let it rotate
/// through billions of fresh budgets).
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The largest RFC 9651 sf-integer (15 digits).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// Process-wide GCRA limiter (governor), keyed by (scope, caller).
///
/// `Send + Sync`: share it with an `Arc`. Invariant: [`RateLimiter::tracked_keys`] never exceeds
/// the `max_keys` given to [`RateLimiter::new`] (see the module docs for how).
pub struct RateLimiter {
    inner: Limiter<MonotonicClock>,
}

impl RateLimiter {
    /// A limiter that tracks at most `max_keys` (scope, caller) keys across all quotas (the
    /// server uses 100,000; at least 1).
    pub fn new(max_keys: usize) -> Self {
        RateLimiter { inner: Limiter::with_clock(max_keys, MonotonicClock) }
    }

    /// Checks one request and charges it. `scope` is e.g. the function name or "admin";
    /// `caller` is the token id or the client address. The request is charged against `policy`
    /// and against each of `caveats` (the token's `rate` caveats), each in a bucket of its own;
    /// a caveat's burst is capped at the policy's, so attenuation only ever narrows. It is
    /// allowed only if every one allows it; the decision advertised is the quota that refuses
    /// first (the refusing one with the longest wait, else the one with the fewest requests
    /// left).
    pub fn check(&self, scope: &str, caller: &str, policy: RateQuota, caveats: &[RateQuota]) -> RateDecision {
        self.inner.check(scope, caller, policy, caveats)
    }

    /// Charges one failed attempt against `quota` (failed authentications per client address,
    /// [`AUTH_FAILURE_QUOTA`]); the decision says whether it was still within budget.
    pub fn charge(&self, scope: &str, caller: &str, quota: RateQuota) -> RateDecision {
        self.inner.check(scope, caller, quota, &[])
    }

    /// `Some(seconds)` when `caller` has no budget left under `quota` right now; charges
    /// nothing. Used before work that only failures pay for (verifying a token's signature).
    pub fn exhausted(&self, scope: &str, caller: &str, quota: RateQuota) -> Option<u64> {
        self.inner.peek(scope, caller, quota)
    }

    /// Number of keys currently tracked (for tests/metrics).
    pub fn tracked_keys(&self) -> usize {
        self.inner.tracked_keys()
    }
}

/// The outcome of [`RateLimiter::check`], with everything needed for the headers.
#[derive(Debug, Clone, PartialEq)]
pub struct RateDecision {
    /// Whether the request may go ahead; if not, answer 429 and do not run the guest.
    pub allowed: bool,
    /// The policy's name in the headers: the scope ("admin" or the function name).
    pub policy_id: String,
    /// The quota that was applied (advertised as q = burst, w = window in seconds).
    pub quota: RateQuota,
    /// `r`: requests left in the burst after this one (0 when refused).
    pub remaining: u32,
    /// `t`: when allowed, ceil(seconds until the bucket is full again), 0 if it is full; when
    /// refused, the same as `retry_after_seconds`.
    pub reset_seconds: u64,
    /// `Retry-After` in seconds when refused (ceil of the wait, at least 1, and equal to
    /// `reset_seconds`, so never earlier than `t`); `None` when allowed.
    pub retry_after_seconds: Option<u64>,
    /// For a refusal that no spent budget explains (too many distinct `rate` caveats), why:
    /// see [`RateDecision::problem_detail`]. `None` otherwise.
    pub detail: Option<String>,
}

/// The IETF headers' names, made once (a name given as a string is parsed on every use).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl RateDecision {
    /// The detail of a 429 for this refusal: that `quota`'s limit is reached, or [`Self::detail`].
    pub fn problem_detail(&self) -> String {
        match &self.detail {
            Some(detail) => detail.clone(),
            None => format!("rate limit of {} reached; retry later", self.quota),
        }
    }

    /// The two IETF headers as (name, value) pairs, RFC 9651 structured fields per
    /// draft-ietf-httpapi-ratelimit-headers, e.g. ("ratelimit-policy", "\"fn\";q=100;w=60") and
    /// ("ratelimit", "\"fn\";r=42;t=3"), plus ("retry-after", "N") when refused.
    ///
    /// The policy id is an sf-string: `"` and `\` are escaped, and characters outside printable
    /// ASCII (which an sf-string cannot hold) become `_`.
    pub fn headers(&self) -> Vec<(HeaderName, String)> {
        let id = sf_string(&self.policy_id);
        let window = ceil_seconds(self.quota.window).max(1);
        let mut headers = vec![
            (RATELIMIT_POLICY, format!("{id};q={};w={window}", self.quota.burst)),
            (RATELIMIT, format!("{id};r={};t={}", self.remaining, self.reset_seconds.min(SF_INTEGER_MAX))),
        ];
        if let Some(seconds) = self.retry_after_seconds {
            headers.push((http::header::RETRY_AFTER, seconds.to_string()));
        }
        headers
    }
}

/// Of the decisions for one request, the one to act on and advertise: a refusal with the
/// longest wait, else the allowance with the fewest requests left (on ties the later refill).
fn first_to_refuse(decisions: Vec<RateDecision>) -> RateDecision {
    let refusal = decisions.iter().filter(|d| !d.allowed).max_by_key(|d| d.reset_seconds);
    let tightest = || decisions.iter().min_by_key(|d| (d.remaining, std::cmp::Reverse(d.reset_seconds)));
    refusal.or_else(tightest).cloned().unwrap_or_else(|| unreachable!("the policy's quota is always checked"))
}

/// A [`RateQuota`], normalised (quota, burst >= 1; window >= 1ns) and hashable: the cache key
/// of the governor limiter for that quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct QuotaKey {
    quota: u32,
    window: Duration,
    burst: u32,
}

impl From<RateQuota> for QuotaKey {
    fn from(q: RateQuota) -> Self {
        QuotaKey { quota: q.quota.max(1), window: q.window.max(Duration::from_nanos(1)), burst: q.burst.max(1) }
    }
}

impl From<QuotaKey> for RateQuota {
    fn from(q: QuotaKey) -> Self {
        RateQuota { quota: q.quota, window: q.window, burst: q.burst }
    }
}

impl QuotaKey {
    /// T, the emission interval: window / quota, at least 1ns.
    fn period(&self) -> Duration {
        (self.window / self.quota).max(Duration::from_nanos(1))
    }

    fn governor_quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        // `with_period` is `None` only for a zero period, and `period()` is at least 1ns.
        Quota::with_period(self.period()).unwrap_or(Quota::per_second(NonZeroU32::MIN)).allow_burst(burst)
    }
}

// The maps behind these locks hold plain integers and stay consistent whatever a panicking
// holder was doing, so a poisoned lock is used as it is.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rounds up to whole seconds, capped at the largest sf-integer.
fn ceil_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).min(SF_INTEGER_MAX)
}

/// `text` as an RFC 9651 sf-string.
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::caveats::parse_rate;
    use governor::clock::FakeRelativeClock;

    fn per(quota: u32, window_secs: u64) -> RateQuota {
        RateQuota { quota, window: Duration::from_secs(window_secs), burst: quota }
    }

    fn fake(max_keys: usize) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limiter::with_clock(max_keys, clock.clone()), clock)
    }

    /// Resident set size of this process in bytes (VmRSS in /proc/self/status).
    fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    #[test]
    fn the_limiter_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<RateLimiter>();
        shared::<RateDecision>();
    }

    #[test]
    fn a_burst_beyond_the_quota_is_refused_with_retry_after_at_least_t_and_at_least_one() {
        let (limiter, _clock) = fake(1000);
        let quota = per(10, 60); // T = 6s
        for _ in 0..10 {
            assert!(limiter.check("fn", "alice", quota, &[]).allowed);
        }
        let refused = limiter.check("fn", "alice", quota, &[]);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        let retry = refused.retry_after_seconds.unwrap();
        assert!(retry >= refused.reset_seconds && refused.reset_seconds >= 1, "{refused:?}");
        assert_eq!(retry, 6);
        // A real clock: the same holds.
        let real = RateLimiter::new(1000);
        let quota = per(3, 1);
        let decisions: Vec<_> = (0..4).map(|_| real.check("fn", "bob", quota, &[])).collect();
        assert!(decisions[..3].iter().all(|d| d.allowed));
        let refused = &decisions[3];
        assert!(!refused.allowed);
        assert!(refused.retry_after_seconds.unwrap() >= refused.reset_seconds && refused.reset_seconds >= 1);
    }

    #[test]
    fn remaining_counts_down_and_t_counts_up_to_a_full_window() {
        let (limiter, _clock) = fake(1000);
        let quota = per(100, 60); // T = 0.6s
        let first = limiter.check("fn", "alice", quota, &[]);
        assert_eq!((first.remaining, first.reset_seconds), (99, 1));
        let second = limiter.check("fn", "alice", quota, &[]);
        assert_eq!((second.remaining, second.reset_seconds), (98, 2)); // ceil(1.2)
        for _ in 0..97 {
            limiter.check("fn", "alice", quota, &[]);
        }
        let last = limiter.check("fn", "alice", quota, &[]);
        assert!(last.allowed);
        assert_eq!((last.remaining, last.reset_seconds), (0, 60));
        assert!(!limiter.check("fn", "alice", quota, &[]).allowed);
    }

    #[test]
    fn waiting_t_seconds_finds_the_bucket_full_again() {
        let (limiter, clock) = fake(1000);
        let quota = per(5, 10); // T = 2s
        let mut last = None;
        for _ in 0..3 {
            last = Some(limiter.check("fn", "alice", quota, &[]));
        }
        let last = last.unwrap();
        assert_eq!((last.remaining, last.reset_seconds), (2, 6));
        clock.advance(Duration::from_secs(last.reset_seconds));
        let after = limiter.check("fn", "alice", quota, &[]);
        assert_eq!(after.remaining, 4, "{after:?}");
    }

    #[test]
    fn after_retry_after_seconds_the_caller_is_allowed_again() {
        let (limiter, clock) = fake(1000);
        let quota = per(2, 5); // T = 2.5s
        limiter.check("fn", "alice", quota, &[]);
        limiter.check("fn", "alice", quota, &[]);
        let refused = limiter.check("fn", "alice", quota, &[]);
        assert_eq!(refused.retry_after_seconds, Some(3));
        clock.advance(Duration::from_secs(2));
        assert!(!limiter.check("fn", "alice", quota, &[]).allowed);
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check("fn", "alice", quota, &[]).allowed);
    }

    #[test]
    fn two_callers_have_independent_budgets() {
        let (limiter, _clock) = fake(1000);
        let quota = per(2, 60);
        assert!(limiter.check("fn", "alice", quota, &[]).allowed);
        assert!(limiter.check("fn", "alice", quota, &[]).allowed);
        assert!(!limiter.check("fn", "alice", quota, &[]).allowed);
        let bob = limiter.check("fn", "bob", quota, &[]);
        assert!(bob.allowed);
        assert_eq!(bob.remaining, 1);
        // The same caller in another scope has its own budget too.
        assert!(limiter.check("other", "alice", quota, &[]).allowed);
        assert_eq!(limiter.tracked_keys(), 3);
    }

    #[test]
    fn every_quota_is_charged_and_the_first_to_refuse_is_advertised() {
        let (limiter, _clock) = fake(1000);
        let policy = per(100, 60);
        let token = parse_rate("10/m").unwrap();
        let decision = limiter.check("fn", "alice", policy, &[token]);
        assert_eq!((decision.quota, decision.remaining), (token, 9));
        // A caveat with a higher rate still may not burst past the policy's burst.
        let wide = parse_rate("5999/h").unwrap();
        let capped = limiter.check("fn", "bob", policy, &[wide]);
        assert_eq!(capped.quota, policy, "the policy's 99 left is fewer than the caveat's");
        for _ in 0..99 {
            assert!(limiter.check("fn", "bob", policy, &[wide]).allowed);
        }
        let refused = limiter.check("fn", "bob", policy, &[wide]);
        assert!(!refused.allowed && refused.quota.burst == 100, "{refused:?}");
        // Fresh caveats give no fresh budget: the policy's bucket was charged every time.
        for n in 1..=5 {
            let other = parse_rate(&format!("{n}/h")).unwrap();
            assert!(!limiter.check("fn", "bob", policy, &[other]).allowed);
        }
        // Two caveats: both are charged; the one refusing first is advertised.
        let (one, two) = (parse_rate("2/m").unwrap(), parse_rate("3/h").unwrap());
        assert_eq!(limiter.check("fn", "carol", policy, &[one, two]).quota, one);
        assert!(limiter.check("fn", "carol", policy, &[one, two]).allowed);
        let third = limiter.check("fn", "carol", policy, &[one, two]);
        assert!(!third.allowed && third.quota == RateQuota { burst: 2, ..one }, "{third:?}");
    }

    #[test]
    fn caveat_churn_never_evicts_a_policys_bucket() {
        let (limiter, _clock) = fake(100_000);
        let policy = per(3, 3600);
        for _ in 0..3 {
            assert!(limiter.check("fn", "mallory", policy, &[]).allowed);
        }
        for n in 1..=(MAX_QUOTAS as u32 * 2) {
            let caveat = RateQuota { quota: n, window: Duration::from_secs(7200), burst: 1 };
            assert!(!limiter.check("fn", "mallory", policy, &[caveat]).allowed, "caveat {n}");
        }
    }

    /// `n` per `secs` seconds, bursting to 1: busy for `secs / n` after one request.
    fn slow(n: u32, secs: u64) -> RateQuota {
        RateQuota { quota: n, window: Duration::from_secs(secs), burst: 1 }
    }

    #[test]
    fn a_caveat_limiter_that_still_limits_someone_is_never_dropped_to_make_room() {
        let (limiter, clock) = fake(100_000);
        let policy = per(1_000_000, 1);
        let hourly = slow(1, 3600);
        assert!(limiter.check("fn", "alice", policy, &[hourly]).allowed);
        assert!(!limiter.check("fn", "alice", policy, &[hourly]).allowed);
        // Other families fill every other caveat limiter, each kept busy for two hours or more.
        for i in 0..MAX_CAVEAT_QUOTAS as u64 - 1 {
            let family = format!("family-{}", i as usize / MAX_FAMILY_CAVEATS);
            assert!(limiter.check("fn", &family, policy, &[slow(1, 7200 + i)]).allowed, "{i}");
        }
        assert_eq!(limiter.quotas_cached(), 1 + MAX_CAVEAT_QUOTAS);
        // A new rate finds no room: refused, saying why, and nothing is dropped.
        let crowded = limiter.check("fn", "bob", policy, &[slow(5, 60)]);
        assert!(!crowded.allowed && crowded.detail.as_deref().is_some_and(|d| d.contains("busy")), "{crowded:?}");
        assert_eq!(crowded.retry_after_seconds, Some(3600), "until alice's limiter is idle");
        assert!(crowded.problem_detail().contains("retry later"));
        assert!(!limiter.check("fn", "alice", policy, &[hourly]).allowed, "alice's 1/h bucket was kept");
        let family = limiter.check("fn", "family-0", policy, &[slow(1, 7200)]);
        assert!(!family.allowed && family.detail.is_none(), "{family:?}");
        // Once alice's bucket is full again her limiter is idle, and dropping it loses nothing.
        clock.advance(Duration::from_secs(3600));
        assert!(limiter.check("fn", "bob", policy, &[slow(5, 60)]).allowed);
        assert!(!limiter.check("fn", "family-0", policy, &[slow(1, 7200)]).allowed, "the others were kept");
        assert_eq!(limiter.quotas_cached(), 1 + MAX_CAVEAT_QUOTAS);
    }

    #[test]
    fn a_flood_of_distinct_caveats_from_one_family_is_refused_and_resets_nobody() {
        let (limiter, clock) = fake(100_000);
        let policy = per(1_000_000, 1);
        let hourly = slow(1, 3600);
        let carol = per(5, 3600);
        for _ in 0..2 {
            assert!(limiter.check("fn", "carol", policy, &[carol]).allowed);
        }
        for scope in ["fn", "other"] {
            assert!(limiter.check(scope, "mallory", policy, &[hourly]).allowed);
        }
        let mut refused_for_the_family = 0;
        for round in 0..3 {
            for n in 2..=(MAX_CAVEAT_QUOTAS as u32 + 70) {
                // Another function of the same family counts too.
                let scope = if n % 2 == 0 { "fn" } else { "other" };
                let decision = limiter.check(scope, "mallory", policy, &[hourly, slow(n, 3600)]);
                assert!(!decision.allowed, "round {round}, {n}/h: {decision:?}");
                refused_for_the_family += usize::from(decision.detail.is_some_and(|d| d.contains("family")));
            }
        }
        assert!(refused_for_the_family > 3 * MAX_CAVEAT_QUOTAS, "{refused_for_the_family}");
        // The policy's limiter, carol's, and the family's share: the flood made no others.
        assert_eq!(limiter.quotas_cached(), 2 + MAX_FAMILY_CAVEATS);
        let next = limiter.check("fn", "carol", policy, &[carol]);
        assert_eq!((next.allowed, next.remaining), (true, 2), "carol's budget is untouched");
        // Once its buckets are full again the family may use other rates.
        clock.advance(Duration::from_secs(3600));
        assert!(limiter.check("fn", "mallory", policy, &[hourly, slow(1000, 3600)]).allowed);
        assert!(!limiter.check("fn", "mallory", policy, &[hourly]).allowed);
        // A token with more distinct rates than a family may hold is refused outright.
        let many: Vec<RateQuota> = (1..=MAX_FAMILY_CAVEATS as u32 + 1).map(|n| slow(n, 60)).collect();
        let refused = limiter.check("fn", "dave", policy, &many);
        assert!(!refused.allowed && refused.detail.is_some(), "{refused:?}");
    }

    #[test]
    fn the_family_table_stays_bounded() {
        let (limiter, _clock) = fake(1000);
        let policy = per(1_000_000, 1);
        for i in 0..5000 {
            limiter.check("fn", &format!("family-{i}"), policy, &[slow(1, 3600)]);
            assert!(limiter.busy_families() <= 1000 / 4 + 16, "{}", limiter.busy_families());
            assert!(limiter.tracked_keys() <= 1000);
        }
        assert!(limiter.busy_families() >= 200, "{}", limiter.busy_families());
    }

    #[test]
    fn ipv6_callers_are_keyed_by_their_64() {
        let key = |text: &str| client_key(text.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(key("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn peeking_at_a_budget_charges_nothing() {
        let (limiter, clock) = fake(1000);
        let quota = per(2, 60);
        assert_eq!(limiter.peek("auth", "10.0.0.1", quota), None);
        limiter.check("auth", "10.0.0.1", quota, &[]);
        assert_eq!(limiter.peek("auth", "10.0.0.1", quota), None);
        limiter.check("auth", "10.0.0.1", quota, &[]);
        for _ in 0..5 {
            assert_eq!(limiter.peek("auth", "10.0.0.1", quota), Some(30));
        }
        clock.advance(Duration::from_secs(30));
        assert_eq!(limiter.peek("auth", "10.0.0.1", quota), None);
        assert!(limiter.check("auth", "10.0.0.1", quota, &[]).allowed);
    }

    #[test]
    fn parse_rate_accepts_n_per_second_minute_or_hour_and_rejects_the_rest() {
        assert_eq!(parse_rate("10/s"), Ok(RateQuota { quota: 10, window: Duration::from_secs(1), burst: 10 }));
        assert_eq!(parse_rate("5/m"), Ok(per(5, 60)));
        assert_eq!(parse_rate("1000/h"), Ok(per(1000, 3600)));
        for bad in ["", "10", "/s", "0/s", "-1/s", "+1/s", "1.5/s", "10/d", "10/ s", " 10/s", "10/sec", "99999999999/s"]
        {
            let error = parse_rate(bad).unwrap_err();
            assert!(error.contains("invalid rate"), "{bad}: {error}");
        }
    }

    #[test]
    fn headers_are_valid_structured_fields() {
        let (limiter, _clock) = fake(1000);
        let quota = per(2, 60);
        let allowed = limiter.check("fn", "alice", quota, &[]);
        let headers = allowed.headers();
        assert_eq!(
            headers,
            vec![(RATELIMIT_POLICY, "\"fn\";q=2;w=60".to_string()), (RATELIMIT, "\"fn\";r=1;t=30".to_string())]
        );
        limiter.check("fn", "alice", quota, &[]);
        let refused = limiter.check("fn", "alice", quota, &[]);
        let headers = refused.headers();
        assert_eq!(headers[2], (http::header::RETRY_AFTER, "30".to_string()));
        // Awkward ids and sub-second windows still give valid fields.
        let odd = RateQuota { quota: 5, window: Duration::from_millis(500), burst: 7 };
        let awkward = limiter.check("a \"quoted\" \\ naïve fn", "alice", odd, &[]);
        for decision in [&allowed, &refused, &awkward] {
            let headers = decision.headers();
            for (name, value) in &headers[..2] {
                let list: sfv::List =
                    sfv::Parser::new(value).parse().unwrap_or_else(|e| panic!("{name}: {value}: {e}"));
                let [sfv::ListEntry::Item(item)] = list.as_slice() else { panic!("{name}: {value}") };
                let sfv::BareItem::String(id) = &item.bare_item else { panic!("{name}: {value}") };
                let expected_id: String = decision
                    .policy_id
                    .chars()
                    .map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '_' })
                    .collect();
                assert_eq!(id.as_str(), expected_id);
                let int = |key: &str| match item.params.get(key) {
                    Some(sfv::BareItem::Integer(n)) => i64::from(*n),
                    other => panic!("{name}: {value}: {key} = {other:?}"),
                };
                if *name == RATELIMIT_POLICY {
                    assert_eq!(int("q"), i64::from(decision.quota.burst));
                    assert!(int("w") >= 1);
                } else {
                    assert_eq!(int("r"), i64::from(decision.remaining));
                    assert_eq!(int("t"), decision.reset_seconds as i64);
                }
            }
        }
        assert!(awkward.headers()[0].1.ends_with(";q=7;w=1"), "{:?}", awkward.headers());
    }

    #[test]
    fn tracked_keys_stay_within_max_keys_after_200k_distinct_callers() {
        let (limiter, clock) = fake(10_000);
        let quota = per(100, 60);
        // A busy caller keeps its state through the sweeps: its debt is the largest.
        for _ in 0..50 {
            limiter.check("fn", "busy", quota, &[]);
        }
        for i in 0..200_000u32 {
            limiter.check("fn", &i.to_string(), quota, &[]);
            assert!(limiter.tracked_keys() <= 10_000);
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(10));
            }
        }
        assert!(limiter.tracked_keys() >= 7_500, "{}", limiter.tracked_keys());
        assert!(limiter.check("fn", "busy", quota, &[]).remaining < 99);
    }

    #[test]
    fn idle_keys_go_first_and_full_buckets_are_forgotten() {
        let (limiter, clock) = fake(1000);
        let quota = per(10, 1); // T = 100ms, full again 1s after a burst
        for i in 0..800 {
            limiter.check("fn", &i.to_string(), quota, &[]);
        }
        assert_eq!(limiter.tracked_keys(), 800);
        clock.advance(Duration::from_secs(5));
        for i in 0..100 {
            limiter.check("fn", &format!("new-{i}"), quota, &[]);
        }
        // The 875th key started a sweep, which dropped every key whose bucket was full again.
        assert!(limiter.tracked_keys() <= 100, "{}", limiter.tracked_keys());
    }

    #[test]
    fn at_most_max_quotas_limiters_are_kept() {
        let (limiter, _clock) = fake(1000);
        for quota in 1..=(MAX_QUOTAS as u32 + 20) {
            assert!(limiter.check("fn", "alice", per(quota, 60), &[]).allowed);
        }
        assert!(limiter.quotas_cached() <= MAX_QUOTAS);
        assert!(limiter.tracked_keys() <= MAX_QUOTAS);
    }

    /// 1,000,000 distinct callers with max_keys = 100,000: at most 100,000 keys tracked and the
    /// resident set grows by less than 64 MiB. The resident set is the whole process's, so the
    /// measurement runs in a process of its own: this test binary again, running this test
    /// alone (the other tests, running beside it in one process, grew it past the bound).
    #[test]
    fn one_million_distinct_callers_stay_under_max_keys_and_grow_rss_by_less_than_64_mib() {
        const ALONE: &str = "LEDGE_RSS_TEST_ALONE";
        if std::env::var_os(ALONE).is_none() {
            let name = "access::rate::tests::one_million_distinct_callers_stay_under_max_keys_and_grow_rss_by_less_than_64_mib";
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--test-threads=1", "--nocapture"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let told = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && told.contains("1 passed"),
                "{told}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        const CAP: u64 = 64 << 20;
        let limiter = RateLimiter::new(100_000);
        let quota = per(100, 60);
        let before = rss_bytes();
        let mut caller = String::new();
        for i in 0..1_000_000u32 {
            use std::fmt::Write;
            caller.clear();
            write!(caller, "{i}").unwrap();
            limiter.check("fn", &caller, quota, &[]);
        }
        let grown = rss_bytes().saturating_sub(before);
        assert!(limiter.tracked_keys() <= 100_000);
        assert!(grown < CAP, "RSS grew by {grown} bytes");
    }
}
