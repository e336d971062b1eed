//! Kept traces, in the engine's system keyspace:
//! `sys/trace/ID/NNNN` the compressed trace in chunks of at most [`CHUNK`] bytes,
//! `sys/trace-list/FUNCTION/ID` its [`TraceMeta`] (JSON), `sys/trace-id/ID` its function,
//! and for a trace of the verification corpus `sys/trace-corpus/FUNCTION/ID` its route key.
//!
//! Invariants:
//! - a trace's keys are written in one transaction, so it is listed only once it is whole;
//! - ids sort by recording time, so retention drops the oldest first: per function at most
//!   `[record] max_traces` traces and `max_trace_bytes` bytes, the corpus counted apart
//!   (`keep_sample`; see `retention.rs`);
//! - the corpus's routes per function, which the [`Sampler`] draws by, are read from the
//!   engine at start and follow every store and eviction after;
//! - one writer thread compresses, stores (what is waiting, in one commit) and prunes; recording only hands it a finished trace
//!   through a bounded queue ([`QUEUE`]), so a flood of traces drops traces (counted), never
//!   requests, and never grows memory without bound;
//! - removing a function removes its traces, after every trace already queued for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use ledge_kv::{Db, Isolation, TxError};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use super::corpus::{self, Sampler};
use super::retention::{Kept, KeptTrace, Retention};
use super::trace::{self, Reason, Trace};
use ledge_kv::prefix_end;

/// Largest chunk of a stored trace (the engine's values are at most 1 MiB).
const CHUNK: usize = 512 << 10;
/// Finished traces waiting for the writer, and most bytes they may hold together.
const QUEUE: usize = 1024;
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// How long the writer gathers traces into one commit, and at most how many.
const GATHER: Duration = Duration::from_millis(10);
const BATCH: usize = 256;
/// Most bytes of traces stored in one transaction (the engine's limit is 16 MiB).
const BATCH_BYTES: usize = 8 << 20;
/// Most traces one listing returns (newest first).
pub const MAX_LISTED: usize = 1000;

/// What `ledge traces` shows of a trace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceMeta {
    pub id: String,
    pub function: String,
    pub version: u64,
    /// RFC 3339.
    pub recorded_at: String,
    pub status: u16,
    pub duration_us: u64,
    /// Bytes stored (compressed).
    pub size: u64,
    /// `error`, `sampled`, `requested` or `corpus`.
    pub reason: String,
    /// The run's route key: method and path with ids and query values stripped
    /// ([`corpus::route_key`]); empty in traces stored before it was kept.
    #[serde(default)]
    pub route: String,
    /// The OpenTelemetry trace id (32 hex digits) of the run, when it was exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel_trace_id: Option<String>,
    pub(super) chunks: u32,
}

/// A finished trace on its way to the writer.
struct Pending {
    trace: Box<Trace>,
    retention: Retention,
    /// What it holds, counted in the queue's bound.
    bytes: usize,
    /// The OpenTelemetry trace its run was part of, when it was exported.
    otel_trace_id: Option<String>,
}

enum Job {
    /// A trace, its retention, and the bytes it holds (counted in the queue's bound).
    Store(Pending),
    /// Delete every trace of the function, then answer.
    Forget(String, std::sync::mpsc::Sender<()>),
}

/// The node's kept traces.
pub struct Traces {
    pub(super) db: Db,
    jobs: SyncSender<Job>,
    /// Bytes of the traces in the queue.
    queued: Arc<AtomicUsize>,
    /// Traces not kept because the writer was behind (`ledge_traces_dropped_total`).
    dropped: Counter,
    /// The corpus draw, and the routes each function's corpus holds.
    sampler: Arc<Sampler>,
}

impl Traces {
    /// Opens the store on `db` and starts its writer thread; `stored` and `dropped` count
    /// traces written and traces the writer was too far behind to take.
    pub fn start(db: Db, stored: Counter, dropped: Counter) -> std::io::Result<Arc<Traces>> {
        let (jobs, queue) = sync_channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let sampler = Arc::new(Sampler::default());
        // The corpus's routes, as stored: what the draw takes for covered.
        let mut routes: HashMap<String, HashMap<String, u32>> = HashMap::new();
        let mut tx = db.begin(Isolation::Snapshot);
        for (key, route) in
            tx.scan(CORPUS.as_bytes(), &prefix_end(CORPUS.as_bytes()), usize::MAX).map_err(std::io::Error::other)?
        {
            let key = String::from_utf8_lossy(&key);
            if let Some((function, _)) = key[CORPUS.len()..].split_once('/') {
                let route = String::from_utf8_lossy(&route).into_owned();
                *routes.entry(function.to_string()).or_default().entry(route).or_default() += 1;
            }
        }
        drop(tx);
        for (function, routes) in routes {
            sampler.set_routes(&function, routes);
        }
        let writer = Writer {
            db: db.clone(),
            kept: HashMap::new(),
            stored,
            dropped: dropped.clone(),
            queued: queued.clone(),
            sampler: sampler.clone(),
        };
        std::thread::Builder::new().name("ledge-traces".into()).spawn(move || writer.run(queue))?;
        Ok(Arc::new(Traces { db, jobs, queued, dropped, sampler }))
    }

    /// Whether this run of `function` is recorded for its corpus (`keep_sample` from its
    /// policy; 0 draws nothing): see [`Sampler::draw`].
    pub fn draw_for_corpus(&self, function: &str, keep_sample: u32, method: &str, path_and_query: &str) -> bool {
        self.sampler.draw(function, keep_sample, method, path_and_query)
    }

    /// Where a finished recording of `bytes` goes: the writer, unless its queue is full. Its
    /// listing names `otel_trace_id`, the OpenTelemetry trace of the run, when there is one.
    pub fn sink(&self, retention: Retention, otel_trace_id: Option<String>) -> Box<dyn FnOnce(Trace, usize) + Send> {
        let (jobs, queued, dropped) = (self.jobs.clone(), self.queued.clone(), self.dropped.clone());
        Box::new(move |trace, bytes| {
            let fits = queued.fetch_add(bytes, Ordering::AcqRel) + bytes <= MAX_QUEUED_BYTES;
            if fits
                && jobs
                    .try_send(Job::Store(Pending { trace: Box::new(trace), retention, bytes, otel_trace_id }))
                    .is_ok()
            {
                return;
            }
            queued.fetch_sub(bytes, Ordering::AcqRel);
            dropped.inc();
            tracing::debug!("trace writer behind; a trace was not kept");
        })
    }

    /// Removes every trace of `function` (after those queued for it are written).
    pub async fn forget(&self, function: &str) {
        self.sampler.forget(function);
        let (done, wait) = std::sync::mpsc::channel();
        let jobs = self.jobs.clone();
        let job = Job::Forget(function.to_string(), done);
        let _ = tokio::task::spawn_blocking(move || {
            if jobs.send(job).is_ok() {
                let _ = wait.recv();
            }
        })
        .await;
    }
}

/// Where the corpus's markers are: `sys/trace-corpus/FUNCTION/ID`, its route key.
pub(super) const CORPUS: &str = "sys/trace-corpus/";

pub(super) fn chunk_key(id: &str, n: u32) -> String {
    format!("sys/trace/{id}/{n:04}")
}

/// Trace ids: [`new_id`]'s 21 lowercase hex digits.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 21 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new trace id: milliseconds since the epoch, then 40 random bits; ids sort by time.
pub fn new_id(now_ms: u64) -> String {
    let random: u64 = rand::random::<u64>() & ((1 << 40) - 1);
    format!("{now_ms:011x}{random:010x}")
}

/// What the writer handles in one go: traces to store, then perhaps a removal.
#[derive(Default)]
struct Gathered {
    batch: Vec<Pending>,
    forget: Option<(String, std::sync::mpsc::Sender<()>)>,
}

impl Gathered {
    fn take(&mut self, job: Job) {
        match job {
            Job::Store(pending) => self.batch.push(pending),
            Job::Forget(function, done) => self.forget = Some((function, done)),
        }
    }

    /// Nothing more is taken: a removal waits, or a whole batch is here.
    fn full(&self) -> bool {
        self.forget.is_some() || self.batch.len() >= BATCH
    }

    /// Takes what is waiting, without waiting for more.
    fn drain(&mut self, queue: &Receiver<Job>) {
        while !self.full()
            && let Ok(job) = queue.try_recv()
        {
            self.take(job);
        }
    }
}

/// The writer thread's state: per function, its kept traces oldest first (loaded on first use).
struct Writer {
    db: Db,
    kept: HashMap<String, Kept>,
    stored: Counter,
    dropped: Counter,
    queued: Arc<AtomicUsize>,
    sampler: Arc<Sampler>,
}

impl Writer {
    fn run(mut self, queue: Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            // Gather what arrives shortly after: one commit (one fsync) stores it all. The
            // writer sleeps through the gathering instead of waiting on the queue, so a
            // recording hands its trace over without waking it: waking it for every trace
            // cost each kept run about 10 µs of futex wakeups and context switches. It does
            // not sleep when a whole batch (or a removal) is waiting already.
            let mut gathered = Gathered::default();
            gathered.take(first);
            gathered.drain(&queue);
            if !gathered.full() {
                std::thread::sleep(GATHER);
                gathered.drain(&queue);
            }
            let Gathered { batch, forget } = gathered;
            if let Err(error) = self.store(&batch) {
                tracing::warn!(%error, "storing traces");
            }
            self.queued.fetch_sub(batch.iter().map(|pending| pending.bytes).sum(), Ordering::AcqRel);
            if let Some((function, done)) = forget {
                if let Err(error) = self.forget(&function) {
                    tracing::warn!(%error, function, "removing traces");
                }
                self.sampler.forget(&function);
                let _ = done.send(());
            }
        }
    }

    /// Stores the batch and prunes past each function's retention, in as few commits as the
    /// transaction size allows. On failure the cached lists are dropped and read again.
    fn store(&mut self, batch: &[Pending]) -> Result<(), TxError> {
        let outcome = self.try_store(batch);
        if outcome.is_err() {
            self.kept.clear();
        }
        outcome
    }

    fn try_store(&mut self, batch: &[Pending]) -> Result<(), TxError> {
        // The functions whose corpus changed: the draw learns their routes once committed.
        let mut corpora: Vec<String> = Vec::new();
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin(Isolation::Snapshot);
        let mut buffered = 0;
        let mut stored = 0;
        for Pending { trace, retention, otel_trace_id, .. } in batch {
            let compressed = trace::compress(trace);
            if compressed.len() > BATCH_BYTES {
                // Larger than one transaction may hold with its batch: never stored.
                tracing::warn!(function = %trace.function, bytes = compressed.len(), "trace too large to store");
                self.dropped.inc();
                continue;
            }
            if buffered + compressed.len() > BATCH_BYTES && buffered > 0 {
                std::mem::replace(&mut tx, self.db.begin(Isolation::Snapshot)).commit()?;
                buffered = 0;
            }
            buffered += compressed.len();
            let route = corpus::route_key(&trace.request.method, &trace.request.path_and_query);
            let in_corpus = trace.reason == Reason::Corpus;
            let meta = TraceMeta {
                id: trace.id.clone(),
                function: trace.function.clone(),
                version: trace.version,
                recorded_at: chrono::DateTime::from_timestamp_millis(trace.recorded_at_ms as i64)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default(),
                status: trace.status(),
                duration_us: trace.duration_us,
                size: compressed.len() as u64,
                reason: format!("{:?}", trace.reason).to_lowercase(),
                route: route.clone(),
                otel_trace_id: otel_trace_id.clone(),
                chunks: compressed.chunks(CHUNK).count() as u32,
            };
            for (n, chunk) in compressed.chunks(CHUNK).enumerate() {
                tx.put(chunk_key(&trace.id, n as u32).as_bytes(), chunk)?;
            }
            let meta_json = serde_json::to_vec(&meta).expect("metadata encodes");
            tx.put(format!("sys/trace-list/{}/{}", trace.function, trace.id).as_bytes(), &meta_json)?;
            tx.put(format!("sys/trace-id/{}", trace.id).as_bytes(), trace.function.as_bytes())?;
            if in_corpus {
                tx.put(format!("{CORPUS}{}/{}", trace.function, trace.id).as_bytes(), route.as_bytes())?;
            }
            stored += 1;
            let kept = self.kept(&trace.function)?;
            kept.push(KeptTrace {
                id: meta.id,
                size: meta.size,
                chunks: meta.chunks,
                corpus: in_corpus.then_some(route),
            });
            let mut corpus_changed = in_corpus;
            for victim in kept.over(*retention) {
                corpus_changed |= victim.corpus.is_some();
                delete(&mut tx, &trace.function, &victim)?;
            }
            if corpus_changed && !corpora.contains(&trace.function) {
                corpora.push(trace.function.clone());
            }
        }
        tx.commit()?;
        for function in corpora {
            let routes = self.kept.get(&function).map(Kept::routes).unwrap_or_default();
            self.sampler.set_routes(&function, routes);
        }
        self.stored.inc_by(stored);
        Ok(())
    }

    /// The function's kept traces (read from the engine on first use).
    fn kept(&mut self, function: &str) -> Result<&mut Kept, TxError> {
        if !self.kept.contains_key(function) {
            let prefix = format!("sys/trace-list/{function}/");
            let mut tx = self.db.begin(Isolation::Snapshot);
            let entries = tx.scan(prefix.as_bytes(), &prefix_end(prefix.as_bytes()), usize::MAX)?;
            let mut kept = Kept::default();
            for meta in entries.iter().filter_map(|(_, value)| serde_json::from_slice::<TraceMeta>(value).ok()) {
                let corpus = (meta.reason == "corpus").then_some(meta.route);
                kept.push(KeptTrace { id: meta.id, size: meta.size, chunks: meta.chunks, corpus });
            }
            self.kept.insert(function.to_string(), kept);
        }
        Ok(self.kept.get_mut(function).expect("inserted above"))
    }

    fn forget(&mut self, function: &str) -> Result<(), TxError> {
        let kept = std::mem::take(self.kept(function)?);
        self.kept.remove(function);
        let mut tx = self.db.begin(Isolation::Snapshot);
        for trace in &kept.traces {
            delete(&mut tx, function, trace)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Deletes one trace's keys in `tx`.
fn delete(tx: &mut ledge_kv::Tx, function: &str, trace: &KeptTrace) -> Result<(), TxError> {
    for n in 0..trace.chunks {
        tx.delete(chunk_key(&trace.id, n).as_bytes())?;
    }
    tx.delete(format!("sys/trace-list/{function}/{}", trace.id).as_bytes())?;
    if trace.corpus.is_some() {
        tx.delete(format!("{CORPUS}{function}/{}", trace.id).as_bytes())?;
    }
    tx.delete(format!("sys/trace-id/{}", trace.id).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn traces() -> (tempfile::TempDir, Arc<Traces>, Counter, Counter) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (stored, dropped) = (Counter::default(), Counter::default());
        let traces = Traces::start(db, stored.clone(), dropped.clone()).unwrap();
        (dir, traces, stored, dropped)
    }

    fn trace(id: &str) -> Trace {
        Trace { id: id.into(), function: "f".into(), ..Trace::default() }
    }

    const KEEP: Retention = Retention { max_traces: 10, max_bytes: 1 << 20, keep_sample: 3 };

    #[test]
    fn a_trace_over_the_queues_byte_bound_is_dropped_and_counted() {
        let (_dir, traces, stored, dropped) = traces();
        traces.sink(KEEP, None)(trace(&new_id(1)), MAX_QUEUED_BYTES + 1);
        assert_eq!(dropped.get(), 1);
        traces.sink(KEEP, None)(trace(&new_id(2)), 100);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored.get() < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!((stored.get(), dropped.get()), (1, 1));
        assert_eq!(traces.list(Some("f"), None, 10).unwrap().len(), 1);
        // What the queue held is given back once written: a full-size trace fits again.
        traces.sink(KEEP, None)(trace(&new_id(3)), MAX_QUEUED_BYTES);
        assert_eq!(dropped.get(), 1);
    }

    #[test]
    fn a_trace_too_large_for_one_transaction_is_counted_not_stored() {
        let (_dir, traces, stored, dropped) = traces();
        let mut large = trace(&new_id(1));
        // Incompressible: random bytes stay over the bound after deflate.
        large.request.body = vec![(0..BATCH_BYTES + 1024).map(|_| rand::random::<u8>()).collect()];
        traces.sink(KEEP, None)(large, 100);
        traces.sink(KEEP, None)(trace(&new_id(2)), 100);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored.get() + dropped.get() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!((stored.get(), dropped.get()), (1, 1));
        let listed = traces.list(Some("f"), None, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].id.starts_with("00000000002"));
    }

    fn corpus_trace(ms: u64, method: &str, path: &str) -> Trace {
        let mut trace = trace(&new_id(ms));
        trace.reason = Reason::Corpus;
        trace.request.method = method.into();
        trace.request.path_and_query = path.into();
        trace
    }

    /// Waits until the writer stored `count` traces in all.
    fn stored_by_then(stored: &Counter, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored.get() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stored.get(), count);
    }

    #[test]
    fn the_corpus_is_bounded_apart_keeps_rare_routes_and_is_read_again_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let stored = Counter::default();
        let traces = Traces::start(db.clone(), stored.clone(), Counter::default()).unwrap();
        // KEEP: 10 others, 3 corpus traces. One rare route among many runs of a common one.
        traces.sink(KEEP, None)(corpus_trace(1, "POST", "/orders?id=7"), 100);
        for ms in 2..=9 {
            traces.sink(KEEP, None)(corpus_trace(ms, "GET", &format!("/users/{ms}")), 100);
        }
        for ms in 10..=11 {
            traces.sink(KEEP, None)(trace(&new_id(ms)), 100);
        }
        stored_by_then(&stored, 11);
        let corpus = traces.corpus("f", 10).unwrap();
        let routes: Vec<&str> = corpus.iter().map(|m| m.route.as_str()).collect();
        assert_eq!(routes, ["GET /users/:id", "POST /orders?id", "GET /users/:id"], "distinct routes first");
        assert!(corpus[0].id.starts_with("00000000009") && corpus[2].id.starts_with("00000000008"), "{corpus:?}");
        assert!(corpus.iter().all(|m| m.reason == "corpus"));
        assert_eq!(traces.corpus("f", 1).unwrap().len(), 1);
        // The others are not evicted by the corpus, nor counted with it.
        let listed = traces.list(Some("f"), None, 100).unwrap();
        assert_eq!(listed.len(), 5);
        assert_eq!(listed.iter().filter(|m| m.reason == "error").count(), 2);
        let loaded = traces.load("f", &corpus[1].id).unwrap().expect("kept");
        assert_eq!((loaded.reason, loaded.request.method.as_str()), (Reason::Corpus, "POST"));
        assert!(traces.load("f", &new_id(99)).unwrap().is_none());
        // The draw knows both routes: neither is new.
        let sampler = &traces.sampler;
        assert!(sampler.draw("f", 3, "GET", "/"), "the first steady draw");
        assert!(!sampler.draw("f", 3, "GET", "/users/12") && !sampler.draw("f", 3, "POST", "/orders?id=8"));
        assert!(sampler.draw("f", 3, "PUT", "/orders"), "a new route is drawn");

        // A new start reads the corpus's routes back from the engine.
        drop(traces);
        let again = Traces::start(db, Counter::default(), Counter::default()).unwrap();
        assert!(again.sampler.draw("f", 3, "GET", "/"));
        assert!(!again.sampler.draw("f", 3, "GET", "/users/1"), "stored routes are not new after a restart");
        assert!(again.sampler.draw("f", 3, "PUT", "/orders"));
        assert_eq!(again.corpus("f", 10).unwrap().len(), 3);
    }

    #[test]
    fn a_listing_returns_the_newest_first_up_to_its_limit() {
        let (_dir, traces, stored, _) = traces();
        for ms in 1..=5 {
            traces.sink(KEEP, None)(trace(&new_id(ms)), 100);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored.get() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let listed = traces.list(Some("f"), None, 2).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].id.starts_with("00000000005") && listed[1].id.starts_with("00000000004"), "{listed:?}");
        assert_eq!(traces.function_of(&listed[0].id).unwrap().as_deref(), Some("f"));
        assert_eq!(traces.function_of("not-an-id").unwrap(), None);
    }
}
