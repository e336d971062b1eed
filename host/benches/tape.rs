//! What the tape costs one run recorded only should it fail (`[record] errors`, the default):
//! the counter's four taped key-value calls (`begin`, `get`, `put`, `commit`) with the
//! arguments and summaries `guest_kv` writes for them, settled as not kept when the run ends.
//!
//! `cargo bench -p ledge --bench tape`. The engine is not involved: each call's live result
//! is a constant, so what is measured is the taping alone (through `guest_kv::taped`, as the
//! host calls go).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ledge::record::tape::{Keep, Tape, show_all, show_bytes};
use ledge::record::trace::Trace;

#[path = "common/counter_calls.rs"]
mod counter_calls;
use counter_calls::tape_counter_calls;

/// One counter run on a fresh tape, dropped unkept: each call through `guest_kv::taped` with the
/// arguments `guest_kv::transactions` writes for it.
fn counter_run(key: &[u8], value: &[u8]) {
    let recording = Tape::record(Trace::default(), Keep::OnFailure, Box::new(|_, _| {}));
    tape_counter_calls(&recording, key, value, 41_207);
    black_box(recording.settle(200));
}

fn bench(c: &mut Criterion) {
    c.bench_function("tape/counter_run_unkept", |b| b.iter(|| counter_run(black_box(b"hits"), black_box(b"41207"))));
    c.bench_function("tape/show_bytes_short", |b| b.iter(|| show_bytes(black_box(b"user:1042/cart"))));
    c.bench_function("tape/show_all_key_value", |b| b.iter(|| show_all(black_box(&[b"hits", b"41207"]))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
