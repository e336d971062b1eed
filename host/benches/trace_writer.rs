//! What the trace writer costs each kept run: a counter run's trace (its four taped key-value
//! calls, the request, the response) stored by `record::Traces` as a function keeping every run
//! does it, at the default retention (1,000 traces) and past it, so that each new trace also
//! evicts the oldest. The traces are made beforehand and handed over in whole batches; what is
//! counted is the CPU time the process's other threads (the writer, the engine's flusher and
//! maintenance) spend until the writer has stored them, on an engine in a temporary directory,
//! each batch one durable commit: what a kept run costs a node's cores besides its request.
//! A second bench times the engine's part that grows with the batch: buffering its writes in
//! the transaction.
//!
//! `cargo bench -p ledge --bench trace_writer`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ledge::record::tape::{Keep, Tape};
use ledge::record::trace::{Output, RecordedRequest, RecordedResponse, Trace};
use ledge::record::{Retention, Traces};
use prometheus_client::metrics::counter::Counter;

#[path = "common/counter_calls.rs"]
mod counter_calls;
use counter_calls::tape_counter_calls;

/// ledge's allocator (`main.rs`): the writer frees what request threads allocated.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The writer's batch: handed over whole, it stores without waiting to gather more.
const BATCH: usize = 256;
const RETENTION: Retention = Retention { max_traces: 1000, max_bytes: 64 << 20, keep_sample: 20 };

/// One kept counter run's trace, as the tape hands it to its sink.
fn counter_trace(hits: u64) -> (Trace, usize) {
    let kept = Arc::new(Mutex::new(None));
    let into = kept.clone();
    let trace = Trace {
        function: "counter".into(),
        version: 1,
        recorded_at_ms: 1_796_000_000_000 + hits,
        request: RecordedRequest {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "127.0.0.1:8080".into(),
            path_and_query: "/fn/counter/".into(),
            headers: vec![("user-agent".into(), b"wrk".to_vec()), ("host".into(), b"127.0.0.1:8080".to_vec())],
            ..RecordedRequest::default()
        },
        output: Output {
            response: Some(RecordedResponse {
                status: 200,
                headers: vec![("content-type".into(), b"text/plain".to_vec())],
            }),
            body: format!("{hits}\n").into_bytes(),
            ..Output::default()
        },
        ..Trace::default()
    };
    let recording =
        Tape::record(trace, Keep::Always, Box::new(move |trace, bytes| *into.lock().unwrap() = Some((trace, bytes))));
    tape_counter_calls(&recording, b"hits", hits.to_string().as_bytes(), hits);
    drop(recording);
    kept.lock().unwrap().take().expect("a trace kept always reaches its sink")
}

/// Hands `traces` to the writer a batch at a time, each once the last is stored.
fn store_all(traces: &Traces, stored: &Counter, batch: Vec<(Trace, usize)>) {
    let mut batch = batch.into_iter().peekable();
    while batch.peek().is_some() {
        let target = stored.get() + batch.len().min(BATCH) as u64;
        for (trace, bytes) in batch.by_ref().take(BATCH) {
            traces.sink(RETENTION, None)(trace, bytes);
        }
        while stored.get() < target {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// CPU time of every thread of this process but the calling one: the trace writer, and the
/// engine's flusher and maintenance threads, whose work the writer's commits cause
/// (`/proc/self/task/*/schedstat`, nanoseconds on a CPU).
fn cpu_of_other_threads() -> Duration {
    // SAFETY: gettid takes no arguments and cannot fail.
    let me = unsafe { libc::gettid() }.to_string();
    let nanos = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| task.ok())
        .filter(|task| task.file_name().to_str() != Some(me.as_str()))
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = ledge_kv::Db::open(dir.path()).unwrap();
    let (stored, dropped) = (Counter::default(), Counter::default());
    let traces = Traces::start(db, stored.clone(), dropped.clone()).unwrap();
    let mut hits = 0;
    let mut make = |n: usize| -> Vec<(Trace, usize)> {
        (0..n)
            .map(|_| {
                hits += 1;
                counter_trace(hits)
            })
            .collect()
    };
    // Past the retention from the start: every trace stored below evicts one.
    store_all(&traces, &stored, make(RETENTION.max_traces as usize + BATCH));
    let mut group = c.benchmark_group("trace_writer");
    group.sample_size(20);
    // Timed by the CPU the storing took, not the time it took, which adds the bench's waits
    // for each batch (and swung by a third between runs).
    group.bench_function("counter_trace_kept_cpu", |b| {
        b.iter_custom(|iters| {
            // Whole batches only: a partial one would wait out the writer's gathering window.
            let whole = (iters as usize).div_ceil(BATCH) * BATCH;
            let batch = make(whole);
            let before = cpu_of_other_threads();
            store_all(&traces, &stored, batch);
            (cpu_of_other_threads() - before).mul_f64(iters as f64 / whole as f64)
        })
    });
    // The engine's side alone: one batch's puts buffered in a transaction (the keys a batch of
    // traces writes: chunk, listing, id), not committed.
    let keys: Vec<[String; 3]> = (0..BATCH as u64)
        .map(|n| {
            let id = format!("{:011x}{:010x}", 1_796_000_000_000 + n, n * 7919);
            [format!("sys/trace/{id}/0000"), format!("sys/trace-list/counter/{id}"), format!("sys/trace-id/{id}")]
        })
        .collect();
    let engine = tempfile::tempdir().unwrap();
    let db = ledge_kv::Db::open(engine.path()).unwrap();
    group.bench_function("batch_puts_buffered", |b| {
        b.iter(|| {
            let mut tx = db.begin(ledge_kv::Isolation::Snapshot);
            for key in keys.iter().flatten() {
                tx.put(key.as_bytes(), b"value").unwrap();
            }
            tx
        })
    });
    group.finish();
    assert_eq!(dropped.get(), 0, "the writer dropped traces: the bench handed over more than its queue holds");
}

criterion_group!(benches, bench);
criterion_main!(benches);
