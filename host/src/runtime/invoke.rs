//! One request on a fresh instance: the guest's view of the request (path, authority, body
//! capped at the policy's limit), the run under the policy's timeout, and the classification of
//! every way it can fail into an [`InvokeError`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime::{PoolConcurrencyLimitError, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use bytes::Bytes;
use http_body_util::Full;

use super::concurrency::Permit;
use super::request::guest_request;
use super::{FunctionPre, GuestConfig, GuestState, InvokeError, Runtime};
use crate::access::policy::Policy;
use crate::access::tokens::Caller;
use crate::guest_kv::KvAccess;
use crate::metrics::Metrics;
use crate::record::Tape;
use crate::record::trace::RecordedResponse;
use crate::telemetry::{TraceCx, names};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// One request's view of a deployed version.
pub struct Invocation<'a> {
    pub function: &'a str,
    pub pre: &'a FunctionPre,
    pub policy: &'a Policy,
    /// This is the version's first instance since deploy or start (a cold start).
    pub cold: bool,
    /// What the caller's token allows on top of the policy.
    pub caller: Caller,
    /// The function's concurrency permit, held until the instance is gone.
    pub permit: Permit,
    /// The request came over TLS: the guest sees scheme `https`.
    pub tls: bool,
    /// The function's configuration.
    pub config: Arc<GuestConfig>,
    /// Record this run onto (or replay it from) this tape.
    pub tape: Option<Arc<Tape>>,
}

impl Runtime {
    /// Runs one request on a fresh instance. `path_and_query` is what the guest sees. With a
    /// tape, the run's response and failure go onto it too.
    pub async fn invoke<B>(
        &self,
        invocation: Invocation<'_>,
        request: http::Request<B>,
        path_and_query: &str,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(tape) = invocation.tape.clone() else {
            return self.run(invocation, request, path_and_query).await.map(|(response, _)| response);
        };
        match self.run(invocation, request, path_and_query).await {
            Ok((response, Settled(true))) => Ok(response),
            Ok((response, Settled(false))) => {
                let (parts, body) = response.into_parts();
                let body = body.map_frame(move |frame| {
                    if let Some(chunk) = frame.data_ref() {
                        tape.response_chunk(chunk);
                    }
                    frame
                });
                Ok(http::Response::from_parts(parts, body.boxed_unsync()))
            }
            Err(error) => {
                tape.fail(error.kind(), &error.to_string());
                Err(error)
            }
        }
    }

    /// The run, and whether it settled its tape (a settled recording takes no more output).
    async fn run<B>(
        &self,
        invocation: Invocation<'_>,
        request: http::Request<B>,
        path_and_query: &str,
    ) -> Result<(http::Response<HyperOutgoingBody>, Settled), InvokeError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let policy = invocation.policy;
        let Some(handler) = invocation.pre.http_handler().cloned() else { return Err(InvokeError::NoHttpHandler) };
        let head_only = request.method() == http::Method::HEAD;
        // A body without a declared length is cut off at the cap; whatever the guest answers
        // then, the client gets a 413.
        let overflowed = Arc::new(AtomicBool::new(false));
        let scheme = if invocation.tls { Scheme::Https } else { Scheme::Http };
        let recording = invocation.tape.clone().filter(|tape| !tape.is_replay());
        let trace = request.extensions().get::<TraceCx>().cloned().unwrap_or_default();
        let request = guest_request(request, &scheme, path_and_query, policy.max_body, overflowed.clone(), recording)?;
        let mut store = self.instance_store(&invocation, &trace);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let mut http = store.data_mut().http();
        let guest_request = http.new_incoming_request(scheme, request).map_err(host_error)?;
        let outparam = http.new_response_outparam(sender).map_err(host_error)?;
        let pre = invocation.pre.instance_pre().clone();
        let timeout = policy.timeout;
        let metrics = self.metrics.clone();
        let (function, cold) = (invocation.function.to_string(), invocation.cold);
        // The guest runs on the request's own task (no hop to another thread) until it sets its
        // response; if it is still running then, it moves to a task of its own so it can keep
        // streaming the body after the head is sent. The timeout bounds the whole run.
        let permit = invocation.permit;
        let mut run = Box::pin(async move {
            let _permit = permit;
            let _live = LiveInstance::new(&metrics);
            let run = async {
                let started = Instant::now();
                let span =
                    trace.child(names::INSTANTIATE, SpanKind::Internal, || vec![KeyValue::new("ledge.cold", cold)]);
                let instance = pre.instantiate_async(&mut store).await;
                if let Err(error) = &instance {
                    span.fail(error);
                }
                span.end();
                let proxy = handler.load(&mut store, &instance?)?;
                metrics.observe_instantiation(&function, cold, started.elapsed());
                proxy.wasi_http_incoming_handler().call_handle(&mut store, guest_request, outparam).await
            };
            let outcome = tokio::time::timeout(timeout, run).await;
            (outcome, store.data().memory.hit)
        });
        let mut receiver = receiver;
        let mut finished = None;
        let outcome = tokio::select! {
            outcome = &mut receiver => outcome,
            ended = &mut run => {
                finished = Some(ended);
                (&mut receiver).await
            }
        };
        if overflowed.load(Ordering::Relaxed) {
            return Err(InvokeError::BodyTooLarge { limit: policy.max_body });
        }
        let response = match outcome {
            Ok(response) => response,
            Err(_) => {
                let (outcome, hit_memory_limit) = match finished {
                    Some(ended) => ended,
                    None => run.await,
                };
                if overflowed.load(Ordering::Relaxed) {
                    return Err(InvokeError::BodyTooLarge { limit: policy.max_body });
                }
                if hit_memory_limit {
                    return Err(InvokeError::MemoryLimit { limit: self.memory_cap(policy) });
                }
                return match outcome {
                    Err(_elapsed) => Err(InvokeError::Timeout(timeout)),
                    Ok(Ok(())) => Err(InvokeError::NoResponse),
                    Ok(Err(error)) if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                        Err(InvokeError::PoolExhausted)
                    }
                    Ok(Err(error)) => Err(InvokeError::Trap(describe_failure(&error))),
                };
            }
        };
        // The head as the guest set it (sending it whole adds `content-length`).
        if let (Some(tape), Ok(response)) = (&invocation.tape, &response) {
            let headers = crate::record::headers(response.headers());
            tape.response(RecordedResponse { status: response.status().as_u16(), headers });
        }
        // Most functions return right after they set the response: give the guest a moment
        // to finish here rather than on a task of its own.
        if finished.is_none() && !head_only {
            finished = tokio::time::timeout(FINISH_GRACE, &mut run).await.ok();
        }
        if finished.is_none() {
            let tape = invocation.tape.clone();
            tokio::spawn(async move {
                // The head is out: a failure now only shows in the trace.
                if let ((Ok(Err(error)), _), Some(tape)) = (run.await, tape) {
                    tape.fail("trap", &describe_failure(&error));
                }
            });
        }
        match response {
            Ok(response) if finished.is_some() && !head_only => {
                let response = whole(response).await?;
                // The guest returned cleanly and its body is whole: a recording kept only on
                // failure is settled, and stops taking the output down.
                let mut settled = Settled(false);
                if let (Some(tape), Some((Ok(Ok(())), false))) = (&invocation.tape, &finished) {
                    settled = Settled(tape.settle(response.status().as_u16()));
                }
                Ok((response, settled))
            }
            Ok(response) => Ok((response, Settled(false))),
            Err(code) => Err(InvokeError::Trap(format!("the function answered with error code {code:?}"))),
        }
    }
}

impl Runtime {
    /// The store of one run of `invocation`: its key-value access (queues and WebSockets
    /// included), WASI, outbound hooks and limits, traced as a child of `trace`.
    pub(super) fn instance_store(&self, invocation: &Invocation<'_>, trace: &TraceCx) -> wasmtime::Store<GuestState> {
        let kv = match &self.db {
            Some(db) => KvAccess::new(
                db.clone(),
                self.global_kv.clone(),
                invocation.function,
                invocation.policy,
                invocation.caller.clone(),
                &self.kv_write_buffers,
            )
            .with_queues(self.queues.clone(), self.global_queues.clone())
            .verified_by(invocation.tape.clone())
            .with_websockets(self.websockets.clone())
            .traced(trace.clone()),
            None => KvAccess::none(),
        };
        self.guest_store(
            invocation.function,
            invocation.policy,
            kv,
            invocation.config.clone(),
            invocation.tape.clone(),
            trace.clone(),
        )
    }
}

/// Whether a run settled its tape ([`Tape::settle`]).
struct Settled(bool);

/// How long a response waits for its guest to return before its head goes out alone. A guest
/// returns microseconds after it answers; the margin covers a busy machine. A guest that keeps
/// writing its body pays this once, before its head.
const FINISH_GRACE: Duration = Duration::from_millis(5);

/// The response of a guest that has returned, its body complete: it goes out with
/// `content-length`, in the same write as the head (one syscall instead of a head, a chunk
/// and a terminator). A body the guest left broken (it trapped while writing it) gets an error
/// instead of a truncated answer, since no byte has gone out yet.
async fn whole(response: http::Response<HyperOutgoingBody>) -> Result<http::Response<HyperOutgoingBody>, InvokeError> {
    if matches!(response.status().as_u16(), 100..=199 | 204 | 304) {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|code| InvokeError::Trap(format!("the function's response body failed: {code:?}")))?;
    if collected.trailers().is_some() {
        // Trailers need chunked encoding: send them as they came.
        let frames = futures::stream::iter(collected_frames(collected));
        return Ok(http::Response::from_parts(parts, http_body_util::StreamBody::new(frames).boxed_unsync()));
    }
    let bytes = collected.to_bytes();
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
    Ok(http::Response::from_parts(parts, Full::new(bytes).map_err(|never| match never {}).boxed_unsync()))
}

/// The frames of a collected body: its data, then its trailers.
fn collected_frames(
    collected: http_body_util::Collected<Bytes>,
) -> Vec<Result<http_body::Frame<Bytes>, wasmtime_wasi_http::Error>> {
    let trailers = collected.trailers().cloned();
    let mut frames = vec![Ok(http_body::Frame::data(collected.to_bytes()))];
    frames.extend(trailers.map(|t| Ok(http_body::Frame::trailers(t))));
    frames
}

/// Counts an instance in the `live_instances` gauge for as long as it lives.
struct LiveInstance<'a>(&'a Metrics);

impl<'a> LiveInstance<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.live_instances.inc();
        LiveInstance(metrics)
    }
}

impl Drop for LiveInstance<'_> {
    fn drop(&mut self) {
        self.0.live_instances.dec();
    }
}

/// What a guest failure was, for the caller: the trap if there is one, else the error's
/// outermost message (the full chain goes to the debug log).
pub fn describe_failure(error: &wasmtime::Error) -> String {
    tracing::debug!(error = ?error, "guest failure");
    match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.to_string(),
    }
}

fn host_error(error: wasmtime::Error) -> InvokeError {
    InvokeError::Host(format!("{error:#}"))
}
