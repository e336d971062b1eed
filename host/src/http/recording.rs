//! Which runs are recorded at the edge: `[record]` (`errors`, `sample`), `ledge-record: 1` from
//! a caller who may read the function's traces, and the function's verification corpus
//! (`[record] keep_sample`; `record::corpus`: a few runs a second at most, routes the corpus
//! lacks first, kept only when the run succeeds). A WebSocket event is recorded like a request
//! (`socket_events.rs`), never for the corpus, which verification replays as HTTP requests.
//!
//! Invariants: `ledge-record: 1` from anyone but a manager of the function records nothing
//! more than `[record]` does; a trace ledge keeps on its own never holds a secret's value.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::App;
use crate::access::policy::RecordPolicy;
use crate::access::tokens::Caller;
use crate::record::trace::{CallerFacts, GuestFacts, Reason, RecordedRequest, Trace};
use crate::record::{Keep, Retention, Tape, Traces};
use crate::registry::{Chosen, Deployment};
use crate::telemetry::TraceCx;

/// The request header that asks for a recording.
pub const RECORD_HEADER: &str = "ledge-record";
/// The response header naming the trace of a recorded run.
pub const TRACE_HEADER: &str = "ledge-trace";

/// A run being recorded, and what the edge needs to know about it afterwards.
pub(super) struct Recording {
    pub tape: Arc<Tape>,
    /// The caller may read this function's traces (`None`: not checked yet).
    may_read: Option<bool>,
}

/// Marks a request ledge made itself (a queue delivery): its `ledge-*` headers are ledge's, for
/// the guest, and are recorded with it.
#[derive(Debug, Clone, Copy)]
pub(super) struct MadeByLedge;

/// Whether the caller asked for a recording (`ledge-record: 1`).
pub(super) fn asked<B>(request: &http::Request<B>) -> bool {
    request.headers().get(RECORD_HEADER).is_some_and(|value| value.as_bytes() == b"1")
}

/// Whether, and why, a run is recorded: asked for by a manager, drawn for the corpus (asked
/// only when the others do not apply), sampled, or kept should it fail.
pub(super) fn keep_of(policy: RecordPolicy, requested: bool, corpus: impl FnOnce() -> bool) -> Option<(Keep, Reason)> {
    let sampled = policy.sample > 0.0 && rand::random::<f64>() < policy.sample;
    Some(if requested {
        (Keep::Always, Reason::Requested)
    } else if corpus() {
        // The corpus draws apart from `sample` (which would otherwise leave it nothing at
        // 1.0): kept for it if the run succeeds, else as the failure or sample it also is.
        let failed = if sampled { Some(Reason::Sampled) } else { policy.errors.then_some(Reason::Error) };
        (Keep::Corpus { failed }, Reason::Corpus)
    } else if sampled {
        (Keep::Always, Reason::Sampled)
    } else if policy.errors {
        (Keep::OnFailure, Reason::Error)
    } else {
        return None;
    })
}

/// One run to record: what it runs and for whom, what it got, and why it is kept.
pub(super) struct RunToRecord<'a> {
    pub deployment: &'a Deployment,
    pub chosen: &'a Chosen<'a>,
    pub caller: &'a Caller,
    pub request: RecordedRequest,
    pub keep: (Keep, Reason),
    /// The OpenTelemetry trace the run is part of, if sampled there.
    pub otel_trace_id: Option<String>,
}

/// A tape recording `run` ([`Tape::trace_id`] names its trace); the finished trace goes to
/// `traces` if it is kept. `max_memory` is the node's ceiling on guest memory.
pub(super) fn start(traces: &Traces, max_memory: u64, run: RunToRecord<'_>) -> Arc<Tape> {
    let RunToRecord { deployment, chosen, caller, request, keep: (keep, reason), otel_trace_id } = run;
    let policy = &deployment.policy;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let trace = Trace {
        function: chosen.meta.name.clone(),
        version: chosen.version,
        component_sha256: chosen.meta.sha256.clone(),
        runs_sha256: chosen.meta.snapshot_sha256.clone().unwrap_or_else(|| chosen.meta.sha256.clone()),
        ledge_version: env!("CARGO_PKG_VERSION").to_string(),
        recorded_on: std::env::consts::ARCH.to_string(),
        recorded_at_ms: now.as_millis() as u64,
        reason,
        request,
        facts: GuestFacts {
            caller: caller.token_id.as_ref().map(|_| CallerFacts {
                token_id: caller.token_id.clone(),
                caveats: caller.caveats.clone(),
                key_prefixes: caller.key_prefixes.clone(),
                read_only: caller.read_only,
            }),
            // Filled in only if the trace is kept (below): a config can be large.
            config: Vec::new(),
            memory_limit: policy.memory.min(max_memory),
            timeout_ms: policy.timeout.as_millis() as u64,
            max_body: policy.max_body,
            kv_stores: policy.kv_stores.clone(),
            kv_max_bytes: policy.kv_max_bytes,
        },
        ..Trace::default()
    };
    let retention = Retention {
        max_traces: policy.record.max_traces,
        max_bytes: policy.record.max_trace_bytes,
        keep_sample: policy.record.keep_sample,
    };
    let (config, sink) = (deployment.config.clone(), traces.sink(retention, otel_trace_id));
    let keep_with_config = Box::new(move |mut trace: Trace, bytes: usize| {
        // Secrets never reach a trace ledge keeps on its own: a run whose recording holds a
        // secret's value (a guest that answered or logged it) is not kept. One a manager
        // asked for (`ledge-record: 1`) is: they got the same bytes in the response. Not so
        // for a WebSocket event, whose guest may have sent them to other clients.
        if (trace.reason != Reason::Requested || trace.request.is_websocket_event())
            && let Some((key, _)) =
                config.secrets().find(|(_, value)| secret_forms(value).iter().any(|form| trace.holds(form)))
        {
            tracing::info!(function = %trace.function, secret = key, "trace not kept: it holds a secret's value");
            return;
        }
        trace.facts.config = config.recorded();
        sink(trace, bytes)
    });
    Tape::record(trace, keep, keep_with_config)
}

impl App {
    /// Starts recording this invocation when `[record]` or the caller asks for it.
    /// `authorization` is the caller's ledge token, if it presented one.
    pub(super) fn recording<B>(
        &self,
        request: &http::Request<B>,
        deployment: &Deployment,
        chosen: &Chosen<'_>,
        caller: &Caller,
        authorization: Option<&str>,
        path_and_query: &str,
    ) -> Option<Recording> {
        let name = chosen.meta.name.as_str();
        let may_read = asked(request).then(|| self.may_read_traces(authorization, name));
        let corpus = || {
            let keep_sample = deployment.policy.record.keep_sample;
            self.traces.draw_for_corpus(name, keep_sample, request.method().as_str(), path_and_query)
        };
        let keep = keep_of(deployment.policy.record, may_read == Some(true), corpus)?;
        let run = RunToRecord {
            deployment,
            chosen,
            caller,
            request: recorded_request(request, self.tls_of(request), path_and_query),
            keep,
            otel_trace_id: request.extensions().get::<TraceCx>().and_then(TraceCx::trace_id),
        };
        let tape = start(&self.traces, self.runtime.max_memory(), run);
        Some(Recording { tape, may_read })
    }

    /// The `ledge-trace` value for a finished run: its id, when the trace is kept and the caller
    /// may read it.
    pub(super) fn trace_header(
        &self,
        recording: &Recording,
        authorization: Option<&str>,
        name: &str,
    ) -> Option<String> {
        let may_read = || recording.may_read.unwrap_or_else(|| self.may_read_traces(authorization, name));
        (recording.tape.keeps() && may_read()).then(|| recording.tape.trace_id()).flatten()
    }
}

/// The forms a secret's value takes in a trace: as is, and as the tape writes a host call's
/// arguments (`show_bytes`: escaped, only its first 32 bytes when long; `{:?}`).
fn secret_forms(value: &str) -> Vec<Vec<u8>> {
    let bytes = value.as_bytes();
    let debug = format!("{value:?}");
    let mut forms = vec![
        bytes.to_vec(),
        bytes.escape_ascii().to_string().into_bytes(),
        bytes[..bytes.len().min(32)].escape_ascii().to_string().into_bytes(),
        debug.as_bytes()[1..debug.len() - 1].to_vec(),
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// The request head as the guest sees it: the ledge token already removed, and without a
/// caller's `ledge-*` headers, which the invoke handler removes once this is taken.
fn recorded_request<B>(request: &http::Request<B>, tls: bool, path_and_query: &str) -> RecordedRequest {
    let made_by_ledge = request.extensions().get::<MadeByLedge>().is_some();
    let authority = crate::runtime::request::guest_authority(request.uri(), request.headers());
    RecordedRequest {
        method: request.method().as_str().to_string(),
        scheme: if tls { "https" } else { "http" }.to_string(),
        authority,
        path_and_query: path_and_query.to_string(),
        // A caller's `ledge-*` headers never reach the guest; those of a request ledge made (a
        // queue delivery's) do, so a replay gives them to the guest as the run had them.
        headers: crate::record::headers_where(request.headers(), |name| made_by_ledge || !name.starts_with("ledge-")),
        body: Vec::new(),
        body_error: None,
    }
}
