//! What the tape costs one run recorded only should it fail (`[record] errors`, the default):
//! the counter's four taped key-value calls (`begin`, `get`, `put`, `commit`) with the
//! arguments and summaries `guest_kv` writes for them, settled as not kept when the run ends.
//!
//! `cargo bench -p ledge --bench tape`. The engine is not involved: each call's live result
//! is a constant, so what is measured is the taping alone.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ledge::record::tape::{Keep, Tape, show_all, show_bytes};
use ledge::record::trace::Trace;

/// One counter run on a fresh tape, dropped unkept.
fn counter_run(key: &[u8], value: &[u8]) {
    let tape = Tape::record(Trace::default(), Keep::OnFailure, Box::new(|_, _| {}));
    tape.observe("ledge:platform/transactions.begin", || "Serializable".to_string(), "ok").unwrap();
    let got: Option<Vec<u8>> = tape
        .call(
            "ledge:platform/transactions.get",
            || show_bytes(key),
            |found: &Option<Vec<u8>>| found.as_ref().map_or_else(|| "none".into(), |value| show_bytes(value)),
            || Ok(Some(value.to_vec())),
        )
        .unwrap();
    black_box(got);
    tape.call("ledge:platform/transactions.put", || show_all(&[key, value]), |_: &()| "ok".into(), || Ok(())).unwrap();
    let stamp: u64 =
        tape.call("ledge:platform/transactions.commit", String::new, u64::to_string, || Ok(41_207)).unwrap();
    black_box(stamp);
    black_box(tape.settle(200));
}

fn bench(c: &mut Criterion) {
    c.bench_function("tape/counter_run_unkept", |b| b.iter(|| counter_run(black_box(b"hits"), black_box(b"41207"))));
    c.bench_function("tape/show_bytes_short", |b| b.iter(|| show_bytes(black_box(b"user:1042/cart"))));
    c.bench_function("tape/show_all_key_value", |b| b.iter(|| show_all(black_box(&[b"hits", b"41207"]))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
