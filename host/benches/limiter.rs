//! Cost of one `RateLimiter::check`, and the memory held by its keys.
//!
//! `cargo bench -p ledge --bench limiter`. Cases: (a) one hot key; (b) 100,000 distinct keys
//! round-robin, all tracked (max_keys = 200,000); (c) 1,000,000 distinct keys round-robin with
//! the server's max_keys = 100,000, so sweeps and evictions run all the time. Before the
//! criterion cases, one pass of 1,000,000 distinct callers over a fresh limiter (max_keys =
//! 100,000) prints the resident-set growth.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ledge::access::policy::RateQuota;
use ledge::access::rate::RateLimiter;

const QUOTA: RateQuota = RateQuota { quota: 100, window: Duration::from_secs(60), burst: 100 };

/// Resident set size of this process in bytes (VmRSS in /proc/self/status).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}

fn callers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)).collect()
}

fn rss_report(names: &[String]) {
    let before = rss_bytes();
    let limiter = RateLimiter::new(100_000);
    let start = Instant::now();
    for name in names {
        black_box(limiter.check("fn", name, QUOTA, &[]));
    }
    let elapsed = start.elapsed();
    let after = rss_bytes();
    println!(
        "rss: 1,000,000 distinct callers, max_keys = 100,000: tracked {} keys, RSS grew {:.1} MiB \
         ({} -> {} bytes), {:.0} ns/check over the pass",
        limiter.tracked_keys(),
        after.saturating_sub(before) as f64 / (1 << 20) as f64,
        before,
        after,
        elapsed.as_nanos() as f64 / names.len() as f64,
    );
}

fn bench(c: &mut Criterion) {
    let million = callers(1_000_000);
    rss_report(&million);

    let hot = RateLimiter::new(100_000);
    let loose = RateQuota { quota: u32::MAX, window: Duration::from_secs(1), burst: u32::MAX };
    c.bench_function("check/hot_key_allowed", |b| b.iter(|| hot.check("fn", "10.0.0.1", black_box(loose), &[])));
    c.bench_function("check/hot_key_refused", |b| b.iter(|| hot.check("fn", "10.0.0.2", black_box(QUOTA), &[])));

    let limiter = RateLimiter::new(200_000);
    let names = &million[..100_000];
    let mut i = 0;
    c.bench_function("check/100k_keys_round_robin", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            limiter.check("fn", &names[i], black_box(QUOTA), &[])
        })
    });
    println!("100k case: tracked {} keys", limiter.tracked_keys());

    let limiter = RateLimiter::new(100_000);
    let mut i = 0;
    c.bench_function("check/1m_keys_round_robin_max_keys_100k", |b| {
        b.iter(|| {
            i = (i + 1) % million.len();
            limiter.check("fn", &million[i], black_box(QUOTA), &[])
        })
    });
    println!("1M case: tracked {} keys", limiter.tracked_keys());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
