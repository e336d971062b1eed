//! The workloads: SmallBank's six transaction types over checking and savings accounts (with
//! a hotspot), and YCSB-A's keys drawn by a zipfian generator.

use rand::Rng;
use rand::rngs::SmallRng;

use crate::engines::{Engine, Step};

/// Size of SmallBank's hotspot.
pub(crate) const HOT_ACCOUNTS: u64 = 10;

fn i64v(v: Option<Vec<u8>>) -> i64 {
    v.and_then(|b| b.try_into().ok()).map_or(0, i64::from_le_bytes)
}

pub(crate) fn ck(a: u64) -> Vec<u8> {
    format!("c{a:08}").into_bytes()
}

pub(crate) fn sk(a: u64) -> Vec<u8> {
    format!("s{a:08}").into_bytes()
}

/// Runs one SmallBank transaction; returns the retryable aborts it took.
pub(crate) fn smallbank_tx(e: &Engine, rng: &mut SmallRng, accounts: u64, hot: f64) -> u64 {
    let acct = |rng: &mut SmallRng| {
        if rng.random_bool(hot) { rng.random_range(0..HOT_ACCOUNTS) } else { rng.random_range(0..accounts) }
    };
    let a = acct(rng);
    let mut b = acct(rng);
    if b == a {
        b = (a + 1) % accounts;
    }
    let amount = rng.random_range(1..100) as i64;
    let pick = rng.random_range(0..100);
    match pick {
        // Balance 15%
        0..15 => e.exec(true, &mut |o| {
            let _ = i64v(o.get(&sk(a))?) + i64v(o.get(&ck(a))?);
            Ok(())
        }),
        // DepositChecking 15%
        15..30 => e.exec(false, &mut |o| {
            let c = i64v(o.get(&ck(a))?);
            o.put(&ck(a), &(c + amount).to_le_bytes())
        }),
        // TransactSavings 15%
        30..45 => e.exec(false, &mut |o| {
            let s = i64v(o.get(&sk(a))?);
            o.put(&sk(a), &(s + amount).to_le_bytes())
        }),
        // Amalgamate 15%
        45..60 => e.exec(false, &mut |o| {
            let total = i64v(o.get(&sk(a))?) + i64v(o.get(&ck(a))?);
            let cb = i64v(o.get(&ck(b))?);
            o.put(&sk(a), &0i64.to_le_bytes())?;
            o.put(&ck(a), &0i64.to_le_bytes())?;
            o.put(&ck(b), &(cb + total).to_le_bytes())
        }),
        // WriteCheck 25%
        60..85 => e.exec(false, &mut |o| {
            let s = i64v(o.get(&sk(a))?);
            let c = i64v(o.get(&ck(a))?);
            let debit = if s + c < amount { amount + 1 } else { amount };
            o.put(&ck(a), &(c - debit).to_le_bytes())
        }),
        // SendPayment 15%
        _ => e.exec(false, &mut |o| {
            let ca = i64v(o.get(&ck(a))?);
            if ca < amount {
                return Err(Step::User);
            }
            let cb = i64v(o.get(&ck(b))?);
            o.put(&ck(a), &(ca - amount).to_le_bytes())?;
            o.put(&ck(b), &(cb + amount).to_le_bytes())
        }),
    }
}

/// YCSB-style zipfian generator (Gray et al.), theta 0.99, over `n` items.
pub(crate) struct Zipf {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    pub(crate) fn new(n: u64) -> Zipf {
        let theta = 0.99;
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        let nf = n as f64;
        Zipf {
            n: nf,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    pub(crate) fn next(&self, rng: &mut SmallRng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        (self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
    }
}

pub(crate) fn yk(i: u64) -> Vec<u8> {
    // Scatter hot items over the key space like YCSB's hashed keys.
    format!("user{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).into_bytes()
}
