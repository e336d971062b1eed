//! The sampler: spans under a span of this process follow their parent; a span that starts a
//! trace here, or continues a caller's or a peer's, gets the environment's sampler's decision
//! (`OTEL_TRACES_SAMPLER`, parent-based always-on by default) and then the cap on new traces.
//!
//! Why a cap: a caller's `traceparent` with the sampled flag asks a parent-based sampler to
//! export, so anonymous callers could otherwise make a node export as fast as they can send.
//! Why a share of it per function: the cap is one budget for the node, and one function's
//! callers must not use up every other function's traces; a function gets at most a quarter.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use opentelemetry::trace::{Link, SamplingDecision, SamplingResult, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Config, ShouldSample};
use prometheus_client::metrics::counter::Counter;

#[derive(Clone, Debug)]
pub struct Capped {
    inner: Box<dyn ShouldSample>,
    node: Arc<DefaultDirectRateLimiter>,
    /// Keyed by the span's `ledge.function` (names of deployed functions only, so bounded).
    function: Arc<DefaultKeyedRateLimiter<String>>,
    dropped: Counter,
}

impl Capped {
    /// At most `per_second` new traces a second on the node (bursts of as many), and a quarter
    /// of that for any one function; what the cap refuses is counted in `dropped`.
    pub fn new(per_second: NonZeroU32, dropped: Counter) -> Self {
        let share = NonZeroU32::new(per_second.get() / 4).unwrap_or(NonZeroU32::MIN);
        Capped {
            inner: Config::default().sampler,
            node: Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
            function: Arc::new(RateLimiter::keyed(Quota::per_second(share))),
            dropped,
        }
    }

    /// Whether a new trace of the span with `attributes` fits under the caps.
    fn admits(&self, attributes: &[KeyValue]) -> bool {
        let function = attributes.iter().find(|kv| kv.key.as_str() == "ledge.function");
        let share = function.is_none_or(|kv| self.function.check_key(&kv.value.as_str().into_owned()).is_ok());
        share && self.node.check().is_ok()
    }
}

impl ShouldSample for Capped {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context.map(|cx| cx.span().span_context().clone()).filter(|p| p.is_valid());
        if let Some(parent) = parent.as_ref().filter(|parent| !parent.is_remote()) {
            let decision = if parent.is_sampled() { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop };
            return SamplingResult { decision, attributes: Vec::new(), trace_state: parent.trace_state().clone() };
        }
        let result = self.inner.should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if result.decision == SamplingDecision::RecordAndSample && !self.admits(attributes) {
            self.dropped.inc();
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: result.trace_state,
            };
        }
        result
    }
}
