//! Deploy verification (spec: `PUT /v1/functions/{name}?verify=N`, `POST
//! /v1/functions/{name}/verify`, `ledge deploy --verify`, `ledge verify`): before a new build
//! serves, recent real traffic of the function (its corpus, `[record] keep_sample`) is replayed
//! against it and against the live build, and what users and other systems would observe is
//! compared ([`compare`]).
//!
//! Both builds get the same world for a trace: a scratch engine seeded with the values the
//! recording read (`guest_kv::recorded`), and a verify tape (`record::tape`) answering clocks,
//! randomness, outbound requests and queue sends from the recording. Comparing with the live
//! build run so, rather than with the recording itself, keeps what the reconstruction cannot
//! know (a value another request changed mid-run) from passing for a change of the build: the
//! question is whether the new build does what the live one does with the same inputs. A trace
//! the live build itself cannot run through (it calls out to somewhere the recording never
//! went, say, because the recording came from an older version) is left unverified, never
//! counted as same.
//!
//! In a cluster, traces are kept on the node that ran them: the node verifying a deploy adds
//! the corpus of the other nodes that host the function, fetched through the peers
//! (`Cluster::peer_corpus`, a bounded wait; a peer that does not answer leaves its traces out),
//! and, when it does not run the function itself, compiles the live build from the cluster's
//! record (`Cluster::live_build`); the record is written only after the verification passed.
//!
//! - [`corpus`]: this node's corpus and the peers' merged, each trace once, distinct routes first;
//! - [`inputs`]: a run's request, limits and caller, rebuilt from the trace (also `ledge replay`'s);
//! - [`run`]: one run of a trace on one build, on its own scratch engine;
//! - [`compare`]: the first observable difference between two runs;
//! - [`report`]: what a verification found, and whether a deploy may go on ([`Refusal`]).
//!
//! Layer: between `http` (the deploy and verify routes) and `cluster` (the peers' corpus, the
//! live build of a function placed elsewhere); it uses the registry (the live build), the
//! runtime (a scratch runtime on the node's engine), `record` (the corpus and the verify tape)
//! and `guest_kv` (the recorded reads).
//!
//! Invariants:
//! - nothing live is touched: each run has a scratch engine of its own, no queues, no cluster,
//!   no network (see [`run`]); the network is used only to fetch the peers' corpus;
//! - one verification runs at a time on a node ([`Verifier`]): it is CPU a tenant asks for,
//!   bounded in traces ([`MAX_TRACES`]) and in time (a trace not verified by the deadline is
//!   reported unverified, never same);
//! - secrets come from the function's configuration on this node (on a cluster node that does
//!   not run it, from the cluster's record), as for a replay on a server: traces never hold
//!   their values.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::record::Traces;
use crate::record::trace::Trace;
use crate::registry::Registry;
use crate::runtime::{FunctionPre, GuestConfig, Runtime};

pub mod compare;
pub mod corpus;
pub mod inputs;
pub mod report;
pub mod run;

pub use report::{Accept, Diverged, Refusal, Report, Unverified};
use report::{TIMED_OUT, unverified};

/// The most traces one verification replays.
pub const MAX_TRACES: usize = 200;
/// How many traces a verification replays unless asked otherwise.
pub const DEFAULT_TRACES: usize = 50;
/// How long a verification may take unless asked otherwise, and at most.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs verifications, one at a time on this node.
pub struct Verifier {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    traces: Arc<Traces>,
    /// Cluster mode: the other nodes' corpus, and the live build of a function placed elsewhere.
    cluster: Option<Arc<Cluster>>,
    /// Where runs keep their scratch engines (emptied at start: a crash leaves no seed data).
    scratch: PathBuf,
    one_at_a_time: tokio::sync::Semaphore,
}

/// The node's one verification slot, held while a verification (compile included) runs.
pub struct Started<'a> {
    _slot: tokio::sync::SemaphorePermit<'a>,
}

/// The build a candidate is compared with, and the config its guests see.
type Live = (FunctionPre, Arc<GuestConfig>);

impl Verifier {
    pub fn new(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        traces: Arc<Traces>,
        cluster: Option<Arc<Cluster>>,
        scratch: PathBuf,
    ) -> std::io::Result<Verifier> {
        match std::fs::remove_dir_all(&scratch) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        crate::storage::create_private_dir(&scratch)?;
        let one_at_a_time = tokio::sync::Semaphore::new(1);
        Ok(Verifier { runtime, registry, traces, cluster, scratch, one_at_a_time })
    }

    /// The node's verification slot, if no verification holds it: one tenant's verification
    /// never queues another's behind it for minutes (the caller answers "busy" instead).
    pub fn try_start(&self) -> Option<Started<'_>> {
        self.one_at_a_time.try_acquire().ok().map(|slot| Started { _slot: slot })
    }

    /// Replays up to `traces` of `name`'s corpus (in a cluster, the other hosts' too) on
    /// `candidate` and on the live build, within `timeout` (fetching the corpus included; a
    /// trace is started only before the deadline, and runs to its own end, at most its policy's
    /// timeout). A function with no live build or no corpus verifies nothing.
    pub async fn verify(
        &self,
        _slot: &Started<'_>,
        name: &str,
        candidate: &FunctionPre,
        traces: usize,
        timeout: Duration,
    ) -> anyhow::Result<Report> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_TIMEOUT);
        // The live build here, when this node hosts the function (its code loaded).
        let local_live = match self.registry.lookup(name) {
            Some(live) if live.pre.load().await => live.pre.get().map(|pre| (pre.clone(), live.config.clone())),
            _ => None,
        };
        let cluster = self.cluster.as_ref().filter(|cluster| cluster.replicas_of(name).is_some());
        if local_live.is_none() && cluster.is_none() {
            return Ok(Report::default());
        }
        let limit = traces.min(MAX_TRACES);
        let local = {
            let (store, function) = (self.traces.clone(), name.to_string());
            tokio::task::spawn_blocking(move || store.corpus(&function, limit)).await??
        };
        let peers = match cluster {
            Some(cluster) => {
                tokio::time::timeout_at(deadline, cluster.peer_corpus(name, limit)).await.unwrap_or_default()
            }
            None => Vec::new(),
        };
        let corpus = corpus::merge(name, local, peers, limit);
        let mut report = Report::default();
        if corpus.is_empty() {
            return Ok(report);
        }
        let timed_out = |corpus: Vec<corpus::Entry>| corpus.into_iter().map(|e| unverified(e.id, TIMED_OUT)).collect();
        let live: Live = match (local_live, cluster) {
            (Some(live), _) => live,
            (None, Some(cluster)) => match tokio::time::timeout_at(deadline, cluster.live_build(name)).await {
                Err(_) => {
                    report.unverified = timed_out(corpus);
                    return Ok(report);
                }
                Ok(built) => match built? {
                    Some(live) => live,
                    None => return Ok(Report::default()),
                },
            },
            (None, None) => return Ok(report),
        };
        for entry in corpus {
            if tokio::time::Instant::now() >= deadline {
                report.unverified.push(unverified(entry.id, TIMED_OUT));
                continue;
            }
            // Not cut off at the deadline: a run ends by its own policy's timeout, and a run
            // abandoned midway would go on on its own task, past the node's one slot.
            let id = entry.id.clone();
            let compared = async {
                match entry.load(&self.traces).await? {
                    Some(trace) => self.compare(&trace, &live, candidate).await,
                    None => Ok(Compared::Unverified("pruned before it was verified".into())),
                }
            };
            match compared.await {
                Err(error) => report.unverified.push(unverified(id, &format!("{error:#}"))),
                Ok(Compared::Unverified(reason)) => report.unverified.push(unverified(id, &reason)),
                Ok(Compared::Same) => {
                    report.verified += 1;
                    report.same += 1;
                }
                Ok(Compared::Diverged { request, difference }) => {
                    report.verified += 1;
                    report.diverged.push(Diverged { id, request: Some(request), difference: Some(difference) });
                }
            }
        }
        Ok(report)
    }

    /// Runs `trace` on the live build and on `candidate` and compares them.
    async fn compare(&self, trace: &Trace, live: &Live, candidate: &FunctionPre) -> anyhow::Result<Compared> {
        let (live_pre, config) = live;
        let seeds = crate::guest_kv::recorded::reads(&trace.function, &trace.events);
        let reference = run::run(&self.runtime, &self.scratch, live_pre, trace, &seeds, config.clone()).await?;
        // The live build must answer the recording as it was answered (the corpus holds only
        // answered runs): otherwise the world was not rebuilt well enough to judge by.
        let answered = reference.output.failure.is_none()
            && reference.output.response.as_ref().map(|response| response.status) == Some(trace.status());
        let unfit = match (&reference.divergence, answered, reference.overflowed) {
            (Some(divergence), _, _) => {
                Some(format!("the live build does not run through this recording: {divergence}"))
            }
            (None, false, _) => Some("the live build does not answer this recording as it was answered".into()),
            (None, true, true) => Some("the run produces more than a verification compares".into()),
            (None, true, false) => None,
        };
        if let Some(reason) = unfit {
            return Ok(Compared::Unverified(reason));
        }
        // A trace the new build cannot run at all is a divergence, not a trace left out.
        let difference = match run::run(&self.runtime, &self.scratch, candidate, trace, &seeds, config.clone()).await {
            Ok(new) if new.overflowed && new.divergence.is_none() => {
                Some("the new build produces more than a verification compares".into())
            }
            Ok(new) => compare::first_difference(&reference, &new),
            Err(error) => Some(format!("the new build could not run it: {error:#}")),
        };
        Ok(match difference {
            None => Compared::Same,
            Some(difference) => {
                let request = format!("{} {}", trace.request.method, trace.request.path_and_query);
                Compared::Diverged { request, difference }
            }
        })
    }
}

enum Compared {
    Same,
    Diverged { request: String, difference: String },
    Unverified(String),
}
