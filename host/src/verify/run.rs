//! One run of a recorded trace on one build, for verification: a scratch engine seeded with what
//! the recording read, a verify tape answering the rest from the recording, and what the run
//! left behind ([`Observed`]).
//!
//! Invariants: the scratch engine lives in a temporary directory of its own under the node's
//! scratch folder, removed when the run is over; it holds the run's data to the trace's quota
//! (`[kv] max_bytes` per keyspace, as in production) and to [`MAX_SCRATCH_BYTES`] in all;
//! nothing the run does reaches the node's data, queues or network.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use ledge_kv::{Db, Isolation};

use super::inputs;
use crate::record::Tape;
use crate::record::tape::Effects;
use crate::record::trace::{Output, Trace};
use crate::runtime::concurrency::ConcurrencyLimit;
use crate::runtime::{FunctionPre, GuestConfig, Invocation, Runtime};

/// What one build did with a recorded trace's inputs.
pub struct Observed {
    pub output: Output,
    pub effects: Effects,
    /// The guest's data after the run (engine keys under `f/` and `s/`), seeds included, and
    /// as `None` each key a committed transaction deleted that is absent at the end: the
    /// scratch engine cannot show deleting a key the recording never read, which on the node
    /// deletes data.
    pub data: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The build asked for something the recording cannot answer.
    pub divergence: Option<String>,
    /// The run produced more than a verification keeps to compare.
    pub overflowed: bool,
}

/// The most data one run's scratch engine holds, seeds included.
const MAX_SCRATCH_BYTES: u64 = 256 << 20;

/// Runs `trace` on `pre`, against a scratch engine (in a folder under `scratch`) holding `seeds`.
pub async fn run(
    runtime: &Runtime,
    scratch: &Path,
    pre: &FunctionPre,
    trace: &Trace,
    seeds: &[(Vec<u8>, Vec<u8>)],
    config: Arc<GuestConfig>,
) -> anyhow::Result<Observed> {
    let scratch = tempfile::tempdir_in(scratch)?;
    let db = {
        let (dir, seeds) = (scratch.path().to_path_buf(), seeds.to_vec());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Db> {
            // A scratch engine need not survive a crash: no fsync per commit.
            let options = ledge_kv::Options::default()
                .keyspace_of(crate::guest_kv::keyspace_of)
                .max_live_bytes(MAX_SCRATCH_BYTES)
                .durability(ledge_kv::Durability::Periodic(std::time::Duration::from_secs(3600)));
            let db = Db::open_with(&dir, options)?;
            for batch in seeds.chunks(256) {
                let mut tx = db.begin(Isolation::Snapshot);
                for (key, value) in batch {
                    tx.put(key, value)?;
                }
                tx.commit()?;
            }
            Ok(db)
        })
        .await??
    };
    let runtime = runtime.with_scratch_kv(db.clone());
    let policy = inputs::policy(trace);
    let tape = Tape::verify(trace);
    let invocation = Invocation {
        function: &trace.function,
        pre,
        policy: &policy,
        cold: false,
        caller: inputs::caller(trace),
        permit: ConcurrencyLimit::new(1).try_acquire().expect("a fresh limit has a permit"),
        tls: trace.request.is_tls(),
        config,
        tape: Some(tape.clone()),
    };
    if let Ok(response) = runtime.invoke(invocation, inputs::request(trace)?, &trace.request.path_and_query).await {
        // The tape keeps the body (within its budget) as it passes; nothing is kept here.
        let mut body = response.into_body();
        while let Some(Ok(_)) = body.frame().await {}
    }
    settled(&tape, policy.timeout).await;
    let verified = tape.verified().expect("a verify tape");
    // Dumped and closed off the async workers: closing joins the engine's threads.
    let data = tokio::task::spawn_blocking(move || {
        let data = dump(&db);
        drop(db);
        drop(scratch);
        data
    })
    .await??;
    let mut data: BTreeMap<_, _> = data.into_iter().map(|(key, value)| (key, Some(value))).collect();
    for key in &verified.effects.deleted {
        data.entry(key.clone()).or_insert(None);
    }
    Ok(Observed {
        output: verified.output,
        effects: verified.effects,
        data,
        divergence: verified.divergence,
        overflowed: verified.overflowed,
    })
}

/// Waits until nothing but the caller holds `tape`: the instance may still be finishing on a
/// task of its own after its response, for at most the run's `timeout` and a second.
pub async fn settled(tape: &Arc<Tape>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(1);
    while Arc::strong_count(tape) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every guest key of the scratch engine (functions' own keyspaces and stores).
fn dump(db: &Db) -> anyhow::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut tx = db.begin(Isolation::Snapshot);
    let mut data = BTreeMap::new();
    for (start, end) in [(&b"f/"[..], &b"f0"[..]), (b"s/", b"s0")] {
        data.extend(tx.scan(start, end, usize::MAX)?);
    }
    Ok(data)
}
