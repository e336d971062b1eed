//! Record and replay at the edge: which invocations are recorded (`[record]`, `ledge-record: 1`)
//! and the trace API.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/traces[?function=NAME][&limit=N]` | newest traces first (JSON) |
//! | `GET /v1/traces/{id}[?component=true]` | one trace file (with the component that ran) |
//! | `GET /v1/traces/{id}/component` | the component that ran |
//!
//! Besides `errors`, `sample` and `ledge-record`, a run may be drawn for the function's
//! verification corpus (`[record] keep_sample`; `record::corpus`): a few runs a second at
//! most, routes the corpus lacks first, kept only when the run succeeds.
//!
//! Invariants: traces hold request data and key-value contents, so every route needs a token
//! allowed `op manage` on the trace's function (listing all functions' traces: a manage token
//! without `fn` caveat); a trace id alone grants nothing. `ledge-trace` is only ever sent to a
//! caller who may read that trace. `ledge-record: 1` from anyone else records nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::{App, Problem, ResponseBody, json, method_not_allowed};
use crate::access::caveats::{self, Op};
use crate::access::tokens::Caller;
use crate::record::store::{MAX_LISTED, new_id};
use crate::record::trace::{CallerFacts, GuestFacts, Reason, RecordedRequest, Trace};
use crate::record::{Keep, Retention, Tape, TraceMeta, trace};
use crate::registry::{Chosen, Deployment};
use crate::telemetry::TraceCx;

/// The request header that asks for a recording.
pub const RECORD_HEADER: &str = "ledge-record";
/// The response header naming the trace of a recorded run.
pub const TRACE_HEADER: &str = "ledge-trace";

/// A run being recorded, and what the edge needs to know about it afterwards.
pub(super) struct Recording {
    pub tape: Arc<Tape>,
    pub id: String,
    /// The caller may read this function's traces (`None`: not checked yet).
    may_read: Option<bool>,
}

/// Marks a request ledge made itself (a queue delivery): its `ledge-*` headers are ledge's, for
/// the guest, and are recorded with it.
#[derive(Debug, Clone, Copy)]
pub(super) struct MadeByLedge;

#[derive(Serialize)]
struct ListReply {
    traces: Vec<TraceMeta>,
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
        let policy = deployment.policy.record;
        let asked = request.headers().get(RECORD_HEADER).is_some_and(|value| value.as_bytes() == b"1");
        let may_read = asked.then(|| self.may_read_traces(authorization, name));
        let sampled = policy.sample > 0.0 && rand::random::<f64>() < policy.sample;
        let (keep, reason) = if may_read == Some(true) {
            (Keep::Always, Reason::Requested)
        } else if self.traces.draw_for_corpus(name, policy.keep_sample, request.method().as_str(), path_and_query) {
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
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let id = new_id(now.as_millis() as u64);
        let trace = Trace {
            id: id.clone(),
            function: name.to_string(),
            version: chosen.version,
            component_sha256: chosen.meta.sha256.clone(),
            runs_sha256: chosen.meta.snapshot_sha256.clone().unwrap_or_else(|| chosen.meta.sha256.clone()),
            ledge_version: env!("CARGO_PKG_VERSION").to_string(),
            recorded_on: std::env::consts::ARCH.to_string(),
            recorded_at_ms: now.as_millis() as u64,
            reason,
            request: recorded_request(request, self.tls_of(request), path_and_query),
            facts: GuestFacts {
                caller: caller.token_id.as_ref().map(|_| CallerFacts {
                    token_id: caller.token_id.clone(),
                    caveats: caller.caveats.clone(),
                    key_prefixes: caller.key_prefixes.clone(),
                    read_only: caller.read_only,
                }),
                // Filled in only if the trace is kept (below): a config can be large.
                config: Vec::new(),
                memory_limit: deployment.policy.memory.min(self.runtime.max_memory()),
                timeout_ms: deployment.policy.timeout.as_millis() as u64,
                max_body: deployment.policy.max_body,
                kv_stores: deployment.policy.kv_stores.clone(),
                kv_max_bytes: deployment.policy.kv_max_bytes,
            },
            ..Trace::default()
        };
        let retention = Retention {
            max_traces: policy.max_traces,
            max_bytes: policy.max_trace_bytes,
            keep_sample: policy.keep_sample,
        };
        let otel_trace_id = request.extensions().get::<TraceCx>().and_then(TraceCx::trace_id);
        let (config, sink) = (deployment.config.clone(), self.traces.sink(retention, otel_trace_id));
        let keep_with_config = Box::new(move |mut trace: Trace, bytes: usize| {
            // Secrets never reach a trace ledge keeps on its own: a run whose recording holds a
            // secret's value (a guest that answered or logged it) is not kept. One a manager
            // asked for (`ledge-record: 1`) is: they got the same bytes in the response.
            if trace.reason != Reason::Requested
                && let Some((key, _)) =
                    config.secrets().find(|(_, value)| secret_forms(value).iter().any(|form| trace.holds(form)))
            {
                tracing::info!(function = %trace.function, secret = key, "trace not kept: it holds a secret's value");
                return;
            }
            trace.facts.config = config.recorded();
            sink(trace, bytes)
        });
        let tape = Tape::record(trace, keep, keep_with_config);
        Some(Recording { tape, id, may_read })
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
        (recording.tape.keeps() && may_read()).then(|| recording.id.clone())
    }

    /// Whether `authorization` carries a token allowed `op manage` on `name`.
    fn may_read_traces(&self, authorization: Option<&str>, name: &str) -> bool {
        let facts = caveats::Request {
            op: Op::Manage,
            function: Some(name),
            queue: None,
            method: "GET",
            path: "/v1/traces",
            now: SystemTime::now(),
        };
        authorization.is_some() && self.authority.verify(authorization, &facts).is_ok()
    }

    /// `/v1/traces` and below; `rest` is what follows `/v1/traces`.
    pub(super) async fn traces(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        rest: &str,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        if method != Method::GET {
            return Err(method_not_allowed("GET"));
        }
        let query = Query::parse(request.uri().query());
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            [""] => {
                if let Some(name) = &query.function {
                    crate::registry::validate_name(name)?;
                }
                if let Some(id) = query.otel_trace.as_ref().filter(|id| !is_otel_trace_id(id)) {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("otel_trace `{id}` is not an OpenTelemetry trace id (32 hex digits, not all zero)"),
                    ));
                }
                let caller = self.authorize(&request, Op::Manage, query.function.as_deref(), peer)?;
                self.charge_admin(&caller)?;
                let (traces, function, otel_trace) = (self.traces.clone(), query.function.clone(), query.otel_trace);
                let limit = query.limit.unwrap_or(100).min(MAX_LISTED);
                let listed =
                    tokio::task::spawn_blocking(move || traces.list(function.as_deref(), otel_trace.as_deref(), limit))
                        .await
                        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("listing traces: {e}")))?;
                Ok(json(StatusCode::OK, &ListReply { traces: listed }))
            }
            [id] => {
                let (function, compressed, version, caller) = self.trace_of(&request, id, peer).await?;
                let component = if query.component { Some(self.component_of(&function, version, id)?) } else { None };
                let file = trace::encode(&compressed, component.as_deref());
                // A trace holds request data and key-value contents: say who took it.
                super::audit::audit("trace-export", &function, &caller, Ok::<_, std::convert::Infallible>(id));
                Ok(super::body::full(StatusCode::OK, "application/vnd.ledge.trace", file))
            }
            [id, "component"] => {
                let (function, _, version, _) = self.trace_of(&request, id, peer).await?;
                let component = self.component_of(&function, version, id)?;
                Ok(super::body::full(StatusCode::OK, "application/wasm", component))
            }
            _ => Err(Problem::new(StatusCode::NOT_FOUND, "no such trace route")),
        }
    }

    /// Trace `id` (its function, stored bytes and version), for a caller who may read it.
    async fn trace_of<B>(
        &self,
        request: &http::Request<B>,
        id: &str,
        peer: SocketAddr,
    ) -> Result<(String, Vec<u8>, u64, Caller), Problem> {
        // Prove a valid token before saying whether the trace exists.
        let facts = caveats::Request {
            op: Op::Manage,
            function: None,
            queue: None,
            method: "GET",
            path: request.uri().path(),
            now: SystemTime::now(),
        };
        // Any answer but "valid, yet not for every function" (403) comes before the lookup, so it
        // cannot depend on whether the trace exists (a 401, or a 429 once the address has used up
        // its failed authentications).
        let checked = self.authenticate(super::authorization(request), &facts, peer);
        if let Err(problem) = &checked
            && problem.status != 403
        {
            return Err(checked.expect_err("checked above"));
        }
        let not_found = || Problem::new(StatusCode::NOT_FOUND, format!("no trace `{id}`"));
        let traces = self.traces.clone();
        let owned = id.to_string();
        let function = tokio::task::spawn_blocking(move || traces.function_of(&owned))
            .await
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading traces: {e}")))?
            .ok_or_else(not_found)?;
        // A caller who may not read the trace learns nothing from the answer: not whether it
        // exists, nor whose it is.
        let caller = self.authorize(request, Op::Manage, Some(&function), peer).map_err(|_| not_found())?;
        self.charge_admin(&caller)?;
        let (traces, owned, name) = (self.traces.clone(), id.to_string(), function.clone());
        let (meta, compressed) = tokio::task::spawn_blocking(move || traces.get(&name, &owned))
            .await
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading traces: {e}")))?
            .ok_or_else(not_found)?;
        Ok((function, compressed, meta.version, caller))
    }

    fn component_of(&self, function: &str, version: u64, id: &str) -> Result<Vec<u8>, Problem> {
        self.registry.runnable_component(function, version).map_err(|_| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "version {version} of `{function}`, which trace `{id}` ran, is no longer kept; replay it with --against FILE.wasm"
                ),
            )
        })
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
        headers: crate::record::headers(request.headers())
            .into_iter()
            .filter(|(name, _)| made_by_ledge || !name.starts_with("ledge-"))
            .collect(),
        body: Vec::new(),
        body_error: None,
    }
}

/// `?function=NAME&limit=N&component=true`.
/// A W3C trace id: 32 lowercase hex digits, not all zero.
fn is_otel_trace_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')
}

#[derive(Default)]
struct Query {
    function: Option<String>,
    /// Only the recordings of this OpenTelemetry trace (32 hex digits).
    otel_trace: Option<String>,
    limit: Option<usize>,
    component: bool,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut parsed = Query::default();
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("function", name)) => parsed.function = Some(name.to_string()),
                Some(("limit", n)) => parsed.limit = n.parse().ok(),
                Some(("otel_trace", id)) => parsed.otel_trace = Some(id.to_ascii_lowercase()),
                Some(("component", value)) => parsed.component = value == "true" || value == "1",
                _ => {}
            }
        }
        parsed
    }
}
